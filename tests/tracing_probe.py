"""Both ends of a traced call, each in its own process with its own
OpenTelemetry SDK, exporting finished spans as JSON lines to a file::

    python tests/tracing_probe.py serve SPANS_FILE   # prints LISTENING HOST:PORT; EOF stops it
    python tests/tracing_probe.py call ADDRESS SPANS_FILE

`call` runs `my_app::analyze` + `my_app::summarize`, then `test::boom` (which
fails), each inside a span named "parent", and prints the trace context the
peer's step reported seeing (step `trace::seen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._path.open("a") as out:
            for span in spans:
                assert span.context is not None
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "kind": span.kind.name,
                            "trace_id": f"{span.context.trace_id:032x}",
                            "span_id": f"{span.context.span_id:016x}",
                            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                            "status": span.status.status_code.name,
                            "attributes": dict(span.attributes or {}),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


def install(path: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)


async def serve(spans: Path) -> None:
    install(spans)
    sys.path.insert(0, str(Path(__file__).parent))
    import peer_app  # noqa: F401  (registers the README steps and test::boom)
    from blazen_peer import Context, PeerServer, StartEvent, StopEvent, step

    @step("trace::seen", accepts=[StartEvent])
    async def seen(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ctx.trace_context)

    server = PeerServer("traced-peer")
    print(f"LISTENING {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


async def call(address: str, spans: Path) -> None:
    install(spans)
    from blazen_peer import PeerClient, WorkflowError

    tracer = trace.get_tracer("tracing_probe")
    async with await PeerClient.connect(address, node_id="traced-caller") as client:
        with tracer.start_as_current_span("parent"):
            await client.run_remote_workflow(
                "analyze", ["my_app::analyze", "my_app::summarize"], {"document": "a b c"}
            )
        with tracer.start_as_current_span("parent"), contextlib.suppress(WorkflowError):
            await client.run_remote_workflow("boom", ["test::boom"], {})
        with tracer.start_as_current_span("parent"):
            print(json.dumps(await client.run_remote_workflow("seen", ["trace::seen"], {})))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(Path(sys.argv[2])))
    else:
        asyncio.run(call(sys.argv[2], Path(sys.argv[3])))
