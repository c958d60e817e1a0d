"""Context: identity of a run and its state (public keys exported, `_` keys private)."""

import gc
import warnings
from collections.abc import Callable
from typing import Any

from blazen_peer import (
    Context,
    EncodeError,
    PeerClient,
    StartEvent,
    StopEvent,
    Workflow,
    register_step,
)


async def run_one(step_ids: Callable[[str], str], fn: Callable[..., Any], **inputs: Any) -> Any:
    wf = Workflow("ctx-test", [register_step(step_ids(fn.__name__), fn)])
    handler = await wf.run(**inputs)
    return handler, await handler.result()


async def test_public_and_private_keys(step_ids: Callable[[str], str]) -> None:
    private = object()

    async def uses_state(ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.set("language", "en")
        await ctx.set("numbers", [1, 2, 3])
        await ctx.set("_model", private)
        return StopEvent(
            result={
                "language": await ctx.get("language"),
                "numbers": await ctx.get("numbers"),
                "model_is_same_object": await ctx.get("_model") is private,
                "missing": await ctx.get("missing"),
                "default": await ctx.get("missing", "fallback"),
                "exported": ctx.exported_state(),
            }
        )

    handler, result = await run_one(step_ids, uses_state)
    assert result == {
        "language": "en",
        "numbers": [1, 2, 3],
        "model_is_same_object": True,
        "missing": None,
        "default": "fallback",
        "exported": {"language": "en", "numbers": [1, 2, 3]},
    }
    assert handler.state == {"language": "en", "numbers": [1, 2, 3]}


async def test_public_values_are_stored_as_json_copies(step_ids: Callable[[str], str]) -> None:
    async def mutates(ctx: Context, ev: StartEvent) -> StopEvent:
        value = {"items": [1]}
        await ctx.set("value", value)
        value["items"].append(2)
        stored = await ctx.get("value")
        await ctx.set("value", 5)  # a later set replaces the earlier value
        return StopEvent(result={"stored": stored, "replaced": await ctx.get("value")})

    _, result = await run_one(step_ids, mutates)
    assert result == {"stored": {"items": [1]}, "replaced": 5}


async def test_sync_steps_use_set_sync_and_get_sync(step_ids: Callable[[str], str]) -> None:
    def sync_state(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.set_sync("count", 2)
        ctx.set_sync("_private", {"any": object})
        return StopEvent(result=[ctx.get_sync("count"), ctx.get_sync("_private")["any"] is object])

    handler, result = await run_one(step_ids, sync_state)
    assert result == [2, True]
    assert handler.state == {"count": 2}


async def test_set_without_await_in_a_def_step_stores_the_value(
    step_ids: Callable[[str], str],
) -> None:
    # The mistake of issue 14: `ctx.set` is documented as `await ctx.set(...)`, and a
    # def step cannot await. The value must be stored anyway, with no warning.
    def forgets_await(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.set("count", 3)
        ctx.set("_private", ev.data)
        return StopEvent(result=[ctx.get_sync("count"), ctx.get_sync("_private")])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "coroutine was never awaited" would fail the test
        handler, result = await run_one(step_ids, forgets_await, document="d")
        gc.collect()
    assert result == [3, {"document": "d"}]
    assert handler.state == {"count": 3}


async def test_set_without_await_raises_for_a_non_json_value(
    step_ids: Callable[[str], str],
) -> None:
    def stores_object(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            ctx.set("bad", object())
        except EncodeError as exc:
            return StopEvent(result=str(exc))
        return StopEvent(result="no error")

    _, message = await run_one(step_ids, stores_object)
    assert "state key 'bad'" in message


async def test_non_json_public_value_raises_encode_error_in_the_step(
    step_ids: Callable[[str], str],
) -> None:
    async def stores_object(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            await ctx.set("bad", object())
        except EncodeError as exc:
            return StopEvent(result=str(exc))
        return StopEvent(result="no error")

    _, message = await run_one(step_ids, stores_object)
    assert "state key 'bad'" in message
    assert "not JSON-serializable" in message
    assert "starting with '_'" in message


async def test_state_is_per_run(step_ids: Callable[[str], str]) -> None:
    async def counts(ctx: Context, ev: StartEvent) -> StopEvent:
        count = await ctx.get("count", 0)
        await ctx.set("count", count + 1)
        return StopEvent(result=await ctx.get("count"))

    wf = Workflow("per-run", [register_step(step_ids("counts"), counts)])
    assert [await (await wf.run()).result() for _ in range(3)] == [1, 1, 1]


async def test_identity_of_a_local_run(step_ids: Callable[[str], str]) -> None:
    async def identity(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(
            result={
                "run_id": ctx.run_id,
                "node_id": ctx.node_id,
                "workflow_name": ctx.workflow_name,
                "cancelled": ctx.cancelled,
                "repr": repr(ctx),
            }
        )

    handler, result = await run_one(step_ids, identity)
    assert result["run_id"] == handler.run_id == handler.context.run_id
    assert result["node_id"] == "local"
    assert result["workflow_name"] == "ctx-test"
    assert result["cancelled"] is False
    assert result["repr"] == f"Context(run_id={handler.run_id!r}, node_id='local')"
    # Once the run ended its context says so (long sync steps poll this).
    assert handler.context.cancelled is True


async def test_state_set_on_the_peer_comes_back_in_the_response(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow(
        "analyze-pipeline", ["my_app::analyze", "my_app::summarize"], {"document": "a"}
    )
    assert response.state == {"language": "en"}
