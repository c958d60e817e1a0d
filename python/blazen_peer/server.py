"""Serving registered steps to other machines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType

from . import _native
from ._auth import resolve_token
from .errors import ValidationError
from .refs import SessionRefRegistry
from .tls import ServerTls

__all__ = ["PeerServer"]


def _server_tokens(token: str | Sequence[str] | None) -> list[str]:
    """Accepted tokens: one, several (while rotating), or ``$BLAZEN_PEER_TOKEN``."""
    if token is None or isinstance(token, str):
        resolved = resolve_token(token)
        return [] if resolved is None else [resolved]
    return list(token)


class PeerServer:
    """A peer that runs registered steps for remote callers.

    ``await server.start("127.0.0.1:0")`` serves in the background on the
    calling event loop (``async def`` steps run on that loop) and returns the
    bound address; ``await server.serve(address)`` serves until cancelled.
    A server serves once.

    Security: with ``token`` (default ``$BLAZEN_PEER_TOKEN``) every call must carry
    it (a list accepts any of several, for rotation); with ``tls`` the peer serves
    TLS, and mutual TLS when ``tls`` has a client CA. A non-loopback address with
    neither is refused unless ``insecure=True``.
    Limits: ``max_message_bytes`` per message, ``max_concurrent_runs`` (beyond it
    callers get PeerBusyError), ``max_json_depth`` for inputs; HTTP/2 keepalive
    pings every ``keepalive_interval_secs`` (None: never).
    """

    def __init__(
        self,
        node_id: str,
        *,
        default_timeout_secs: float = 300.0,
        session_refs: SessionRefRegistry | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls: ServerTls | None = None,
        token: str | Sequence[str] | None = None,
        insecure: bool = False,
        max_concurrent_runs: int = 1024,
        max_json_depth: int = 100,
        keepalive_interval_secs: float | None = 30.0,
        keepalive_timeout_secs: float = 20.0,
    ) -> None:
        if tls is not None and not isinstance(tls, ServerTls):
            raise ValidationError(
                "tls must be a ServerTls (ServerTls.from_pem(cert=..., key=...)), "
                f"not {type(tls).__name__}"
            )
        self._ref = _native.PeerServer(
            node_id,
            default_timeout_secs,
            session_refs._ref if session_refs is not None else None,
            max_message_bytes,
            max_concurrent_runs=max_concurrent_runs,
            max_json_depth=max_json_depth,
            tls=tls._native if tls is not None else None,
            tokens=_server_tokens(token),
            insecure=insecure,
            keepalive_interval_secs=keepalive_interval_secs,
            keepalive_timeout_secs=keepalive_timeout_secs,
        )
        self._tls = tls
        self._session_refs = (
            session_refs
            if session_refs is not None
            else SessionRefRegistry._wrap(self._ref.session_refs)
        )
        self._address: str | None = None

    @property
    def session_refs(self) -> SessionRefRegistry:
        """The registry this server's runs keep session refs in."""
        return self._session_refs

    @property
    def node_id(self) -> str:
        """The id this peer reports in results and errors."""
        return self._ref.node_id

    @property
    def address(self) -> str | None:
        """The bound ``HOST:PORT`` while serving, else None."""
        return self._address if self._ref.serving else None

    async def start(self, address: str = "127.0.0.1:0") -> str:
        """Binds ``address`` (port 0 picks a free port) and returns the bound ``HOST:PORT``."""
        self._address = await self._ref.start(address, asyncio.get_running_loop())
        return self._address

    async def serve(self, address: str) -> None:
        """Serves until the calling task is cancelled, then stops."""
        await self.start(address)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await asyncio.shield(self.stop())

    def serve_blocking(self, address: str) -> None:
        """Serves on a new event loop in this thread until interrupted (Ctrl-C)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ValidationError(
                "serve_blocking() was called from a running event loop; "
                "use `await server.serve(address)` there instead"
            )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.serve(address))

    async def stop(self) -> None:
        """Stops serving and waits for in-flight calls. Idempotent."""
        await self._ref.stop()

    async def __aenter__(self) -> PeerServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"PeerServer({self.node_id!r}, address={self.address!r})"
