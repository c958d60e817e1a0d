"""What a peer can run, as ``ListSteps`` answers (``PeerClient.list_steps``,
``blazen-peer steps ADDR``); a :class:`PeerPool` routes on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from . import _native

__all__ = ["HealthStatus", "PeerSteps", "StepInfo", "WorkflowInfo"]

HealthStatus = Literal["SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN"]
"""What ``grpc.health.v1.Health`` answered for a peer."""


@dataclass(frozen=True)
class StepInfo:
    """A step registered on a peer."""

    id: str
    accepts: tuple[str, ...]
    #: Most calls running at once across the peer's runs; None: unlimited.
    max_concurrency: int | None = None
    #: Calls holding one of those slots when the peer answered.
    in_use: int = 0
    #: How long one attempt may run; None: no limit of its own.
    timeout_secs: float | None = None
    #: Attempts in all (1: no retries).
    attempts: int = 1


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow declared on a peer: the steps a request naming no steps runs."""

    name: str
    step_ids: tuple[str, ...]


@dataclass(frozen=True)
class PeerSteps:
    """A peer's registered steps and declared workflows (both sorted)."""

    node_id: str
    steps: tuple[StepInfo, ...]
    workflows: tuple[WorkflowInfo, ...]
    draining: bool
    #: Placement labels the peer declares (``PeerServer(labels=...)``); empty
    #: for a peer without, or one that does not report them.
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def step_ids(self) -> frozenset[str]:
        """Ids of every registered step."""
        return frozenset(step.id for step in self.steps)

    def can_run(self, workflow_name: str, step_ids: Sequence[str]) -> bool:
        """True when this peer has every step a request would run: ``step_ids``,
        or the declared steps of ``workflow_name`` when ``step_ids`` is empty."""
        if step_ids:
            return self.step_ids.issuperset(step_ids)
        for workflow in self.workflows:
            if workflow.name == workflow_name:
                return self.step_ids.issuperset(workflow.step_ids)
        return False

    @staticmethod
    def _from_native(native: _native.StepListing) -> PeerSteps:
        return PeerSteps(
            node_id=native.node_id,
            steps=tuple(
                StepInfo(
                    step.id,
                    tuple(step.accepts),
                    max_concurrency=step.max_concurrency,
                    in_use=step.in_use,
                    timeout_secs=step.timeout_secs,
                    attempts=step.attempts,
                )
                for step in native.steps
            ),
            workflows=tuple(
                WorkflowInfo(workflow.name, tuple(workflow.step_ids))
                for workflow in native.workflows
            ),
            draining=native.draining,
            labels=dict(native.labels),
        )
