"""TLS settings for peers: mutual TLS with certificates from PEM files or bytes.

Everything is read and checked when the object is built, so a missing file, a
bad PEM or a key that does not match its certificate raises :class:`TlsError`
naming the file, before any connection is attempted.
"""

from __future__ import annotations

import os
from typing import Union

from . import _native
from .errors import TlsError

__all__ = ["ClientTls", "PemSource", "ServerTls"]

#: A path to a PEM file, or the PEM content itself as bytes.
PemSource = Union[str, "os.PathLike[str]", bytes]


def _read(source: PemSource, role: str) -> tuple[str, bytes]:
    """``(name for messages, PEM bytes)``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{role} bytes>", bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TlsError(
            f"{role} must be a path to a PEM file or the PEM bytes, not {type(source).__name__}"
        )
    path = os.fspath(source)
    try:
        with open(path, "rb") as pem:
            return path, pem.read()
    except OSError as err:
        raise TlsError(f"cannot read {role} file {path!r}: {err.strerror or err}") from err


class ServerTls:
    """A peer server's certificate and key; with ``client_ca``, mutual TLS:
    every client must present a certificate signed by that CA."""

    def __init__(self, native: _native.ServerTls) -> None:
        self._native = native

    @classmethod
    def from_pem(
        cls, *, cert: PemSource, key: PemSource, client_ca: PemSource | None = None
    ) -> ServerTls:
        """Reads and checks the certificate chain, its private key and the optional client CA."""
        return cls(
            _native.ServerTls(
                _read(cert, "certificate"),
                _read(key, "key"),
                _read(client_ca, "client CA") if client_ca is not None else None,
            )
        )

    @property
    def requires_client_certificates(self) -> bool:
        """True for mutual TLS (a ``client_ca`` was given)."""
        return self._native.requires_client_certificates

    def __repr__(self) -> str:
        return f"ServerTls(mutual={self.requires_client_certificates})"


class ClientTls:
    """The CA a client trusts for the peer's certificate; with ``cert`` and
    ``key``, the client's own certificate for mutual TLS. ``domain`` is the name
    the peer's certificate must carry when it differs from the address's host."""

    def __init__(
        self,
        native: _native.ClientTls,
        sources: tuple[tuple[str, bytes], tuple[tuple[str, bytes], tuple[str, bytes]] | None]
        | None = None,
        domain: str | None = None,
    ) -> None:
        self._native = native
        # Kept so a pool can make the same config for another name (with_domain).
        self._sources = sources
        self.domain = domain

    def with_domain(self, domain: str) -> ClientTls:
        """The same CA and client certificate, checking the peer's certificate
        for ``domain``; a pool uses it for members it found by resolving a name."""
        if self.domain is not None or self._sources is None:
            return self
        ca, identity = self._sources
        return ClientTls(_native.ClientTls(ca, identity, domain), self._sources, domain)

    @classmethod
    def from_pem(
        cls,
        *,
        ca: PemSource,
        cert: PemSource | None = None,
        key: PemSource | None = None,
        domain: str | None = None,
    ) -> ClientTls:
        """Reads and checks the CA, and the client certificate and key when given."""
        if (cert is None) != (key is None):
            raise TlsError(
                "pass both cert= and key= for a client certificate, or neither for server-only TLS"
            )
        identity = (
            (_read(cert, "certificate"), _read(key, "key"))
            if cert is not None and key is not None
            else None
        )
        ca_pem = _read(ca, "CA")
        return cls(_native.ClientTls(ca_pem, identity, domain), (ca_pem, identity), domain)

    def __repr__(self) -> str:
        return "ClientTls()"
