"""``blazen-peer steps``: what a peer can run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..listing import PeerSteps, StepInfo
from ._common import check_client_tls_options, connect, print_json


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    connection: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "steps",
        parents=[common, connection],
        help="list the steps and workflows a peer serves",
        description="Lists the steps (with the event types each accepts) and the declared "
        "workflows of the peer at ADDR.",
    )
    parser.add_argument("address", metavar="ADDR", help="HOST:PORT or URL of the peer")
    parser.set_defaults(run=run, default_log_level="WARNING", validate=check_client_tls_options)


async def run(args: argparse.Namespace) -> int:
    async with await connect(args) as client:
        listing = await client.list_steps()
    if args.json:
        print_json(as_json(listing))
    else:
        print("\n".join(as_text(listing)), flush=True)
    return 0


def as_json(listing: PeerSteps) -> dict[str, object]:
    return {
        "node_id": listing.node_id,
        "draining": listing.draining,
        "labels": listing.labels,
        "steps": [
            {"id": step.id, "accepts": list(step.accepts), **_limits(step)}
            for step in listing.steps
        ],
        "workflows": [
            {"name": workflow.name, "step_ids": list(workflow.step_ids)}
            for workflow in listing.workflows
        ],
    }


def _limits(step: StepInfo) -> dict[str, object]:
    """A step's limits, only those it has (most steps have none)."""
    limits: dict[str, object] = {}
    if step.max_concurrency is not None:
        limits.update(max_concurrency=step.max_concurrency, in_use=step.in_use)
    if step.timeout_secs is not None:
        limits["timeout_secs"] = step.timeout_secs
    if step.attempts > 1:
        limits["attempts"] = step.attempts
    return limits


def _limits_text(step: StepInfo) -> str:
    parts = []
    if step.max_concurrency is not None:
        parts.append(f"{step.in_use}/{step.max_concurrency} running")
    if step.timeout_secs is not None:
        parts.append(f"timeout {step.timeout_secs:g}s")
    if step.attempts > 1:
        parts.append(f"{step.attempts} attempts")
    return f"  ({', '.join(parts)})" if parts else ""


def as_text(listing: PeerSteps) -> list[str]:
    lines = [f"node {listing.node_id}{' (draining)' if listing.draining else ''}"]
    if listing.labels:
        lines.append("labels " + " ".join(f"{k}={v}" for k, v in sorted(listing.labels.items())))
    lines.append("")
    rows = [(s.id, ", ".join(s.accepts) + _limits_text(s)) for s in listing.steps]
    lines += _table(("STEP", "ACCEPTS"), rows)
    if listing.workflows:
        rows = [(w.name, " -> ".join(w.step_ids)) for w in listing.workflows]
        lines += ["", *_table(("WORKFLOW", "STEPS"), rows)]
    return lines


def _table(header: tuple[str, str], rows: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(cell) for cell, _ in [header, *rows])
    return [f"{left:<{width}}  {right}".rstrip() for left, right in [header, *rows]]
