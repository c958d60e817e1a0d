"""blazen-peer: run Python sub-workflows on another machine over gRPC.

Register steps with :func:`step` on the machine that should run them, serve
them with :class:`PeerServer`, and call them from elsewhere with
:class:`PeerClient`. :class:`Workflow` runs the same steps in-process.
"""

import atexit
import logging

from ._native import ENVELOPE_VERSION, close_python_gate
from .client import ParentRun, PeerClient, RemoteRefDescriptor, SubWorkflowResponse
from .context import Context, PeerIdentity
from .directory import PeerLink
from .errors import (
    AuthenticationError,
    EncodeError,
    EnvelopeVersionError,
    MessageTooLargeError,
    PeerBusyError,
    PeerError,
    PeerTimeoutError,
    PeerUnsupportedError,
    PlacementError,
    QuotaExceededError,
    RefNotFoundError,
    RefOriginError,
    TlsError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    ValidationError,
    WorkflowError,
)
from .events import Event, GenericEvent, StartEvent, StopEvent, event_type_name
from .listing import HealthStatus, PeerSteps, StepInfo, WorkflowInfo
from .pool import PeerPool, PeerStatus
from .refs import RefInfo, RefLifetime, SessionRefRegistry, SessionRefs, register_ref_codec
from .remote_ref import RemoteRef
from .server import PeerServer, ServerStats, UploadStats
from .steps import (
    Retry,
    Step,
    register_step,
    register_workflow,
    registered_step_ids,
    registered_workflows,
    step,
    unregister_step,
)
from .streaming import SubWorkflowBlockingStream, SubWorkflowStream
from .tls import ClientTls, ServerTls
from .usage import ModelUsage, RunUsage, UsageEvent
from .workflow import Workflow, WorkflowHandler

# Runtime threads must be out of Python before the interpreter finalizes.
atexit.register(close_python_gate)
# A library's records reach only the handlers its application configured: without
# this, Python's last-resort handler would print every WARNING to stderr.
logging.getLogger("blazen_peer").addHandler(logging.NullHandler())

__all__ = [
    "ENVELOPE_VERSION",
    "AuthenticationError",
    "ClientTls",
    "Context",
    "EncodeError",
    "EnvelopeVersionError",
    "Event",
    "GenericEvent",
    "HealthStatus",
    "MessageTooLargeError",
    "ModelUsage",
    "ParentRun",
    "PeerBusyError",
    "PeerClient",
    "PeerError",
    "PeerIdentity",
    "PeerLink",
    "PeerPool",
    "PeerServer",
    "PeerStatus",
    "PeerSteps",
    "PeerTimeoutError",
    "PeerUnsupportedError",
    "PlacementError",
    "QuotaExceededError",
    "RefInfo",
    "RefLifetime",
    "RefNotFoundError",
    "RefOriginError",
    "RemoteRef",
    "RemoteRefDescriptor",
    "Retry",
    "RunUsage",
    "ServerStats",
    "ServerTls",
    "SessionRefRegistry",
    "SessionRefs",
    "StartEvent",
    "Step",
    "StepInfo",
    "StopEvent",
    "SubWorkflowBlockingStream",
    "SubWorkflowResponse",
    "SubWorkflowStream",
    "TlsError",
    "TransportError",
    "UnknownStepError",
    "UnknownWorkflowError",
    "UploadStats",
    "UsageEvent",
    "ValidationError",
    "Workflow",
    "WorkflowError",
    "WorkflowHandler",
    "WorkflowInfo",
    "event_type_name",
    "register_ref_codec",
    "register_step",
    "register_workflow",
    "registered_step_ids",
    "registered_workflows",
    "step",
    "unregister_step",
]
