"""The parent side of deploy/kubernetes: a PeerPool over the headless Service.

One address whose DNS name resolves to every ready peer pod; the pool makes one
member per IP, re-resolves it so new pods join, checks each peer's health and
steps, balances calls by in-flight count and fails over calls that never
started on a peer that died or is draining.

Environment (defaults match the manifests):
    BLAZEN_PEERS    https://blazen-peers.ml.svc.cluster.local:7443
    BLAZEN_NODE_ID  parent
    BLAZEN_TLS_DIR  /etc/blazen/tls (ca.crt, tls.crt, tls.key from cert-manager);
                    empty: plaintext, for a local try against a loopback peer:
        BLAZEN_PEERS=http://127.0.0.1:7443 BLAZEN_TLS_DIR= python deploy/parent.py

Usage: python parent.py [TEXT ...]
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from blazen_peer import ClientTls, PeerPool

DEFAULT_PEERS = "https://blazen-peers.ml.svc.cluster.local:7443"
DEFAULT_TLS_DIR = "/etc/blazen/tls"
DEFAULT_TEXTS = (
    "peers run the steps",
    "the parent only routes",
    "which pod answered?",
    "a rolling update drains each peer",
)


def client_tls(tls_dir: str) -> ClientTls | None:
    """The CA the peers' certificates chain to, and this parent's client certificate.

    The peers' certificate is checked against the DNS name of BLAZEN_PEERS (the
    Service name, which the Certificate carries), not against each pod's IP."""
    if not tls_dir:
        return None
    directory = Path(tls_dir)
    return ClientTls.from_pem(
        ca=directory / "ca.crt",
        cert=directory / "tls.crt",
        key=directory / "tls.key",
        domain=None,
    )


async def main(texts: list[str]) -> None:
    async with await PeerPool.connect(
        os.environ.get("BLAZEN_PEERS", DEFAULT_PEERS),
        node_id=os.environ.get("BLAZEN_NODE_ID", "parent"),
        tls=client_tls(os.environ.get("BLAZEN_TLS_DIR", DEFAULT_TLS_DIR)),
        token=None,  # mTLS authenticates; add a token (--token-env on the peers) as a 2nd factor
        probe_interval_secs=2.0,
    ) as pool:
        await pool.wait_for_healthy(1, timeout_secs=30.0)
        for peer in pool.peers:
            print(f"peer {peer.node_id} at {peer.address}: healthy={peer.healthy}", flush=True)
        # embed is a pure function, so a call cut off mid-run may run again on
        # another peer (idempotent=True); leave it False for steps with side effects.
        results: list[Any] = await asyncio.gather(
            *(
                pool.run_remote_workflow(
                    "embed", ["my_app::embed"], {"text": text}, idempotent=True
                )
                for text in texts
            )
        )
        for text, result in zip(texts, results, strict=True):
            print(f"{text!r}: {result}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or list(DEFAULT_TEXTS)))
