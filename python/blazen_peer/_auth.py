"""Where tokens come from, and the warning for tokens sent in the clear."""

from __future__ import annotations

import ipaddress
import logging
import os
from urllib.parse import urlsplit

TOKEN_ENV = "BLAZEN_PEER_TOKEN"

_logger = logging.getLogger("blazen_peer")
_warned_plaintext: set[str] = set()


def resolve_token(token: str | None) -> str | None:
    """``token`` if given, else ``$BLAZEN_PEER_TOKEN`` (an empty variable counts as unset)."""
    if token is not None:
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_token_in_clear(address: str, token: str | None) -> None:
    """Logs once per host when a token would cross a network unencrypted."""
    if token is None:
        return
    parts = urlsplit(address)
    host = parts.hostname or ""
    if parts.scheme != "http" or is_loopback_host(host) or host in _warned_plaintext:
        return
    _warned_plaintext.add(host)
    _logger.warning(
        "sending the peer token to %s over plaintext HTTP/2: anyone on the path can read "
        "and reuse it; use an https:// address with tls=ClientTls.from_pem(...)",
        address,
    )
