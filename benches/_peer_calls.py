"""Our side of the benchmarks: the calls made to a _noop_peer.py process."""

from __future__ import annotations

from _measure import check_echo, payload
from blazen_peer import PeerClient

# Same ids as _noop_peer.py (not imported: importing it would start a peer).
NOOP = ["bench::noop"]
CHAIN = [f"bench::chain::{i}" for i in range(10)]
TIMEOUT_SECS = 30


class PeerCalls:
    def __init__(self, client: PeerClient, echo: list[str]) -> None:
        self._client = client
        self._echo = echo

    @classmethod
    async def connect(cls, address: str, echo: list[str] = NOOP) -> PeerCalls:
        """A client of the peer at ``address``; ``echo`` names the peer's echo step
        (the published Rust crate's server registers its own)."""
        client = await PeerClient.connect(f"http://{address}", node_id="bench-client")
        return cls(client, echo)

    async def call(self, seq: int) -> None:
        """run_remote_workflow of the one trivial step."""
        got = await self._client.run_remote_workflow("noop", self._echo, payload(seq), TIMEOUT_SECS)
        check_echo(seq, got)

    async def chain(self, seq: int) -> None:
        """One ten-step workflow: the input passes through every link of the chain."""
        got = await self._client.run_remote_workflow("chain", CHAIN, payload(seq), TIMEOUT_SECS)
        check_echo(seq, got)

    async def ten_calls(self, seq: int) -> None:
        """What the ten-step workflow replaces: ten one-step calls, one after another."""
        for _ in CHAIN:
            await self.call(seq)

    async def close(self) -> None:
        await self._client.close()
