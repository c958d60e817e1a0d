"""What a peer address may look like, for PeerClient, PeerPool and the CLI alike.

One rule: ``HOST:PORT`` (what ``PeerServer.start`` returns), ``http://HOST:PORT``
or ``https://HOST:PORT``. A bare ``HOST:PORT`` means ``https://`` when TLS is
configured and ``http://`` otherwise. The port is always required (there is no
default port to fall back to silently), and any other scheme is refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import ValidationError

_FORMS = "use HOST:PORT, http://HOST:PORT or https://HOST:PORT"


def peer_url(address: str, *, tls: bool) -> str:
    """``address`` as the URL to connect to; ValidationError when it breaks the rule."""
    if not isinstance(address, str):
        raise ValidationError(f"a peer address is a string, not {type(address).__name__}; {_FORMS}")
    scheme, separator, rest = address.partition("://")
    if separator:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValidationError(
                f"`{address}` has scheme {scheme}://, which a peer does not speak "
                f"(gRPC runs over HTTP/2); {_FORMS}"
            )
        url = f"{scheme}://{rest}"
    else:
        url = f"{'https' if tls else 'http'}://{address}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "http://[::1": an unclosed IPv6 bracket
        raise ValidationError(
            f"`{address}` is not a valid peer address ({exc}); {_FORMS}"
        ) from None
    try:
        port = parts.port
    except ValueError:
        raise ValidationError(f"`{address}` has an invalid port; {_FORMS}") from None
    if not parts.hostname:
        raise ValidationError(f"`{address}` names no host; {_FORMS}")
    if port is None:
        raise ValidationError(
            f"`{address}` names no port; {_FORMS} (e.g. 127.0.0.1:50051: the port the peer "
            "listens on, which its serving line shows)"
        )
    return url
