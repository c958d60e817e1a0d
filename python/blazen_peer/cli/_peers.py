"""``serve --peers FILE``: the peer directory, read from a JSON file.

The file maps node ids (or addresses, with their scheme) to an address, or to
an entry naming how to reach that peer::

    {
      "node-a": "http://10.0.0.5:7443",
      "gpu-1": {"address": "https://10.0.0.6:7443", "token_env": "GPU1_TOKEN",
                "tls_ca": "ca.pem", "tls_cert": "client.crt", "tls_key": "client.key"}
    }

Tokens come from environment variables, never from the file itself, so the
file can be shared and checked in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..directory import PeerLink
from ..errors import ValidationError
from ..tls import ClientTls

_ENTRY_KEYS = {"address", "token_env", "tls_ca", "tls_cert", "tls_key", "tls_domain"}


def load_peer_directory(path: str) -> dict[str, PeerLink]:
    """The entries of the JSON file at ``path``; ValidationError saying what is wrong."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValidationError(f"--peers {path}: cannot read it: {exc}") from None
    except ValueError as exc:
        raise ValidationError(f"--peers {path}: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"--peers {path}: expected an object of node id -> entry")
    return {str(key): _link(path, str(key), entry) for key, entry in raw.items()}


def _link(path: str, key: str, entry: Any) -> PeerLink:
    if isinstance(entry, str):
        return PeerLink(entry)
    where = f"--peers {path}, entry {key!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
        raise ValidationError(f"{where}: give an address, or an object with an 'address'")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ValidationError(
            f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_ENTRY_KEYS)}"
        )
    token = None
    if "token_env" in entry:
        token = os.environ.get(entry["token_env"])
        if not token:
            raise ValidationError(f"{where}: environment variable {entry['token_env']} is not set")
    tls = None
    if "tls_ca" in entry:
        tls = ClientTls.from_pem(
            ca=entry["tls_ca"],
            cert=entry.get("tls_cert"),
            key=entry.get("tls_key"),
            domain=entry.get("tls_domain"),
        )
    elif "tls_cert" in entry or "tls_key" in entry:
        raise ValidationError(f"{where}: tls_cert and tls_key need tls_ca")
    return PeerLink(entry["address"], token=token, tls=tls)
