"""LLM usage and cost, as the engine reports them: steps emit
:class:`UsageEvent` (wire name ``blazen::UsageEvent``, the engine's fields) with
``ctx.emit_usage``; a run keeps the totals (:class:`RunUsage`), which travel in
its response and add up across the peers a run delegates to."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from . import _native
from .events import Event

__all__ = ["ModelUsage", "RunUsage", "UsageEvent"]


class UsageEvent(Event, event_type="blazen::UsageEvent"):
    """One provider call's usage: the fields of the engine's
    ``blazen_events::UsageEvent``, so peers in other languages read it as theirs.

    ``run_id`` left empty is filled with the emitting run's id.
    """

    provider: str
    model: str
    #: ``"Llm"``, ``"Embedding"``, ``"ImageGen"``, ... or ``{"Custom": "name"}``.
    modality: Any = "Llm"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_count: int = 0
    audio_seconds: float = 0.0
    video_seconds: float = 0.0
    cost_usd: float | None = None
    latency_ms: int = 0
    run_id: str = ""


@dataclass(frozen=True)
class ModelUsage:
    """A run's usage of one provider and model."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    #: Usage records counted.
    calls: int


@dataclass(frozen=True)
class RunUsage:
    """A run's usage totals, the sub-runs it delegated to included; all zero for
    a run that reported none (and for a response from a peer that does not
    report usage)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    #: Per ``(provider, model)``.
    by_model: tuple[ModelUsage, ...] = ()

    @staticmethod
    def _from_native(native: _native.UsageTotals) -> RunUsage:
        return RunUsage(
            input_tokens=native.input_tokens,
            output_tokens=native.output_tokens,
            cost_usd=native.cost_usd,
            by_model=tuple(
                ModelUsage(
                    provider=used.provider,
                    model=used.model,
                    input_tokens=used.input_tokens,
                    output_tokens=used.output_tokens,
                    total_tokens=used.total_tokens,
                    cost_usd=used.cost_usd,
                    calls=used.calls,
                )
                for used in native.by_model
            ),
        )


_WITHIN_RUN: contextvars.ContextVar[_native.RunContext | None] = contextvars.ContextVar(
    "blazen_peer_within_run", default=None
)
"""The run whose step is executing here: a PeerClient call made from it adds the
sub-run's usage to it. Set by the step bridge for each step call."""


def within_run() -> _native.RunContext | None:
    """The run of the step executing in this task or thread, if any."""
    return _WITHIN_RUN.get()
