"""Steps for tests/test_metrics.py, served by `blazen-peer serve`: one that
succeeds, one that fails, one that outlives its deadline and one that keeps a
session ref of a known size."""

from __future__ import annotations

import asyncio

from blazen_peer import Context, RefLifetime, StartEvent, StopEvent, step

REF_BYTES = 1000


@step("metrics::ok")
def ok(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result="ok")


@step("metrics::boom")
def boom(ctx: Context, ev: StartEvent) -> StopEvent:
    raise ValueError("boom")


@step("metrics::slow")
async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(60)
    return StopEvent(result="late")


@step("metrics::keep")
async def keep(ctx: Context, ev: StartEvent) -> StopEvent:
    key = await ctx.session_refs.insert(bytes(REF_BYTES), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result=str(key))
