"""The steps ``blazen-peer demo`` serves as node-b: the README's two-step pipeline.

The one copy of the README's ``peer_b.py`` event and steps: ``examples/peer_b.py``
imports them from here (the examples are not part of the installed package), and
tests/test_readme_examples.py checks that the README's block defines the same.

Serve it yourself with ``blazen-peer serve blazen_peer.cli._demo_peer --listen ... --node-id ...``.
"""

from __future__ import annotations

from ..context import Context
from ..events import Event, StartEvent, StopEvent
from ..steps import register_workflow, step

WORKFLOW = "analyze-pipeline"


class Analyzed(Event, event_type="my_app.Analyzed"):
    words: int
    document: str


@step("my_app::analyze")
async def analyze(ctx: Context, ev: StartEvent) -> Analyzed:
    await ctx.set("language", "en")  # exported state, returned to the caller
    return Analyzed(words=len(ev.document.split()), document=ev.document)


@step("my_app::summarize")
def summarize(ctx: Context, ev: Analyzed) -> StopEvent:  # a plain def step runs in a worker thread
    return StopEvent(result={"words": ev.words, "summary": ev.document[:40]})


STEP_IDS = [analyze.id, summarize.id]
register_workflow(WORKFLOW, STEP_IDS)
