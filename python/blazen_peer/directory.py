"""The peers a server's steps may fetch session refs from, as its operator set them.

``PeerServer(peers={"node-a": PeerLink("https://10.0.0.5:7443", tls=..., token=...)})``:
a step holding a :class:`RemoteRef` of node-a fetches it with
``await ctx.session_refs.fetch(handle)`` over a connection made from this entry,
and only from it. A handle names its origin but carries no credentials, and
its address is used only to find an entry keyed by that address: a handle
claiming to be node-a at another address still reaches node-a's configured
address, so a request can never send this peer's credentials elsewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._address import peer_url
from .errors import (
    AuthenticationError,
    PeerUnsupportedError,
    RefOriginError,
    TlsError,
    TransportError,
    ValidationError,
)
from .refs import decode_ref_value
from .remote_ref import RemoteRef
from .tls import ClientTls

if TYPE_CHECKING:
    from .client import PeerClient

__all__ = ["PeerLink"]

# What reaching or asking an origin can fail with, besides the ref being gone.
_UNREACHABLE = (TransportError, TlsError, AuthenticationError, PeerUnsupportedError)


@dataclass(frozen=True)
class PeerLink:
    """How this peer reaches another one: its address, and the TLS config and
    token to use there (``token=None``: ``$BLAZEN_PEER_TOKEN``, as for
    ``PeerClient.connect``)."""

    address: str
    token: str | None = None
    tls: ClientTls | None = None

    def __repr__(self) -> str:
        # Never shows the token.
        return f"PeerLink({self.address!r}, tls={self.tls is not None})"


def _entry_key(key: str, link: PeerLink) -> str:
    """Node ids stay as they are; addresses (written with a scheme) are normalised
    the way a client normalises what it connects to."""
    return peer_url(key, tls=link.tls is not None) if "://" in key else key


class PeerDirectory:
    """A server's :class:`PeerLink` entries by node id or address, and one
    client per entry, connected on first use and closed with the server."""

    def __init__(self, node_id: str, peers: Mapping[str, PeerLink | str]) -> None:
        self._node_id = node_id
        self._links: dict[str, PeerLink] = {}
        for key, link in peers.items():
            if isinstance(link, str):
                link = PeerLink(link)
            if not isinstance(link, PeerLink) or not isinstance(key, str):
                raise ValidationError(
                    f"peers maps a node id or address to a PeerLink or an address, got "
                    f"{key!r}: {link!r}"
                )
            # Checked now, so a bad entry fails at startup, not in a step.
            link = PeerLink(peer_url(link.address, tls=link.tls is not None), link.token, link.tls)
            self._links[_entry_key(key, link)] = link
        self._clients: dict[str, PeerClient] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._links)

    def link_for(self, ref: RemoteRef) -> PeerLink:
        """The entry for the ref's origin, by node id, else by address."""
        link = self._links.get(ref.origin_node_id)
        if link is None and "://" in ref.origin_address:
            try:
                link = self._links.get(peer_url(ref.origin_address, tls=False))
            except ValidationError:
                link = None
        if link is None:
            raise RefOriginError(
                f"node `{self._node_id}` may not fetch ref {ref.key} from node "
                f"`{ref.origin_node_id}` at {ref.origin_address}: neither is in its peer "
                "directory; add one to PeerServer(peers=...) (or `serve --peers FILE`)",
                origin_node_id=ref.origin_node_id,
                origin_address=ref.origin_address,
            )
        return link

    async def fetch(self, ref: RemoteRef) -> Any:
        """The value ``ref`` names, from its origin."""
        from .client import PeerClient

        link = self.link_for(ref)
        client = self._cached(link)
        try:
            if client is None:
                client = self._keep(
                    link,
                    await PeerClient.connect(
                        link.address, node_id=self._node_id, token=link.token, tls=link.tls
                    ),
                )
            fetched = await client._ref.fetch(str(ref.key))
        except _UNREACHABLE as exc:
            raise self._unreachable(ref, link, exc) from exc
        return decode_ref_value(fetched.type_tag or ref.type_tag, fetched.data)

    def fetch_blocking(self, ref: RemoteRef) -> Any:
        """:meth:`fetch` for ``def`` steps (worker threads)."""
        from .client import PeerClient

        link = self.link_for(ref)
        client = self._cached(link)
        try:
            if client is None:
                client = self._keep(
                    link,
                    PeerClient.connect_blocking(
                        link.address, node_id=self._node_id, token=link.token, tls=link.tls
                    ),
                )
            fetched = client._ref.fetch_blocking(str(ref.key))
        except _UNREACHABLE as exc:
            raise self._unreachable(ref, link, exc) from exc
        return decode_ref_value(fetched.type_tag or ref.type_tag, fetched.data)

    def close(self) -> None:
        """Closes the clients; a later fetch connects again."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close_blocking()

    def _cached(self, link: PeerLink) -> PeerClient | None:
        with self._lock:
            return self._clients.get(link.address)

    def _keep(self, link: PeerLink, client: PeerClient) -> PeerClient:
        """The cached client for ``link``: ``client``, or the one another step
        connected meanwhile (``client`` is then closed)."""
        with self._lock:
            kept = self._clients.setdefault(link.address, client)
        if kept is not client:
            client.close_blocking()
        return kept

    def _unreachable(self, ref: RemoteRef, link: PeerLink, exc: Exception) -> RefOriginError:
        return RefOriginError(
            f"node `{self._node_id}` could not fetch ref {ref.key} from node "
            f"`{ref.origin_node_id}` at {link.address} (its peer directory entry): {exc}",
            origin_node_id=ref.origin_node_id,
            origin_address=link.address,
        )
