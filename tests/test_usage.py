"""LLM usage and cost (``ctx.emit_usage``): totals in the response, streamed
UsageEvents, and totals that add up across machines: node-c emits, a step on
node-b emits and delegates to node-c, and the test (the parent) sees the sum."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from blazen_peer import (
    Context,
    PeerClient,
    RunUsage,
    StartEvent,
    StopEvent,
    UsageEvent,
    Workflow,
    register_step,
)
from conftest import POLICY_PEER, PeerProcess, start_peer_process

pytestmark = pytest.mark.timeout(120)

# What the steps of tests/policy_peer.py emit.
LLM = (100, 50, 0.00025)  # usage::llm: gpt-4o-mini
EMBED = (7, 0, 0.0001)  # usage::embed_def, twice: embed-small
OWN = (1000, 200, 0.003)  # usage::delegate itself: claude-haiku


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PeerProcess]]:
    directory: Path = tmp_path_factory.mktemp("usage")
    peers = {
        node: start_peer_process(directory / f"{node}.txt", "--node-id", node, script=POLICY_PEER)
        for node in ("node-b", "node-c")
    }
    yield peers
    for peer in peers.values():
        assert peer.stop() == 0, peer.stderr()


@pytest.fixture
async def to_b(chain: dict[str, PeerProcess]) -> AsyncIterator[PeerClient]:
    client = await PeerClient.connect(chain["node-b"].address, node_id="parent")
    yield client
    await client.close()


def by_model(usage: RunUsage) -> dict[str, tuple[int, int, int]]:
    return {
        used.model: (used.input_tokens, used.output_tokens, used.calls) for used in usage.by_model
    }


async def test_a_runs_usage_comes_back_with_its_response(to_b: PeerClient) -> None:
    resp = await to_b.invoke_sub_workflow("llm", ["usage::llm"], {})
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (100, 50)
    assert resp.usage.cost_usd == pytest.approx(0.00025)
    assert by_model(resp.usage) == {"gpt-4o-mini": (100, 50, 1)}
    # A def step's usage counts the same way.
    resp = await to_b.invoke_sub_workflow("embed", ["usage::embed_def"], {})
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (14, 0)
    assert resp.usage.cost_usd == pytest.approx(0.0002)
    assert by_model(resp.usage) == {"embed-small": (14, 0, 2)}


async def test_usage_rolls_up_from_c_through_b_to_the_parent(
    to_b: PeerClient, chain: dict[str, PeerProcess]
) -> None:
    resp = await to_b.invoke_sub_workflow(
        "delegate", ["usage::delegate"], {"next": chain["node-c"].address}
    )
    assert resp.result == "delegated"
    expected_in = OWN[0] + LLM[0] + 2 * EMBED[0]
    expected_out = OWN[1] + LLM[1] + 2 * EMBED[1]
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (expected_in, expected_out)
    assert resp.usage.cost_usd == pytest.approx(OWN[2] + LLM[2] + 2 * EMBED[2])
    assert by_model(resp.usage) == {
        "claude-haiku": (1000, 200, 1),
        "gpt-4o-mini": (100, 50, 1),
        "embed-small": (14, 0, 2),
    }
    # A def step delegating with the blocking client rolls up too.
    resp = await to_b.invoke_sub_workflow(
        "delegate", ["usage::delegate_def"], {"next": chain["node-c"].address}
    )
    assert by_model(resp.usage) == {"gpt-4o-mini": (100, 50, 1)}


async def test_a_streaming_run_streams_its_usage_events(
    to_b: PeerClient, chain: dict[str, PeerProcess]
) -> None:
    stream = to_b.stream_sub_workflow(
        "delegate", ["usage::delegate"], {"next": chain["node-c"].address}
    )
    events = [event async for event in stream]
    usage_events = [event for event in events if isinstance(event, UsageEvent)]
    assert [(e.provider, e.model, e.prompt_tokens) for e in usage_events] == [
        ("anthropic", "claude-haiku", 1000)
    ]
    assert usage_events[0].run_id  # filled with the emitting run's id
    assert events[-1].result == "delegated"  # type: ignore[attr-defined]
    assert stream.response is not None
    assert stream.response.usage.input_tokens == OWN[0] + LLM[0] + 2 * EMBED[0]


async def test_a_local_run_keeps_totals_of_its_steps_and_its_remote_calls(
    step_ids: Callable[[str], str], chain: dict[str, PeerProcess]
) -> None:
    async def orchestrate(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.emit_usage(UsageEvent(provider="openai", model="o3", prompt_tokens=5, cost_usd=0.5))
        async with await PeerClient.connect(chain["node-c"].address, node_id="local") as client:
            await client.run_remote_workflow("llm", ["usage::llm"], {})
        return StopEvent(result="done")

    orchestrate_id = step_ids("orchestrate")
    register_step(orchestrate_id, orchestrate)
    handler = await Workflow("local-usage", [orchestrate_id]).run()
    assert await handler == "done"
    assert handler.usage.input_tokens == 5 + LLM[0]
    assert handler.usage.cost_usd == pytest.approx(0.5 + LLM[2])
