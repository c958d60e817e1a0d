"""The steps a fleet peer serves: `blazen-peer serve my_steps` imports this module.

Importing it registers the steps; the pool routes a call to any peer whose
registry has every step the call names. Replace the bodies with your own code.
Load heavy things (a model, an index) once at import time, not in the step:
the peer imports the module before it starts serving, so readiness only turns
green once the model is loaded (raise the startupProbe's budget for big ones).

Try it without a cluster (loopback, no TLS):
    cd deploy && blazen-peer serve my_steps --listen 127.0.0.1:7443 --node-id local
"""

from __future__ import annotations

import hashlib
import math

from blazen_peer import Context, StartEvent, StopEvent, step

DIMENSIONS = 8


def _toy_embedding(text: str) -> list[float]:
    """A deterministic stand-in for a model: hashed bag of words, L2-normalised."""
    vector = [0.0] * DIMENSIONS
    for word in text.lower().split():
        digest = hashlib.blake2b(word.encode(), digest_size=2).digest()
        vector[digest[0] % DIMENSIONS] += 1.0 if digest[1] % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [round(x / norm, 4) for x in vector]


@step("my_app::embed")
async def embed(ctx: Context, ev: StartEvent) -> StopEvent:
    """Input {"text": ...}; result: the vector and which pod computed it."""
    return StopEvent(result={"vector": _toy_embedding(ev.text), "served_by": ctx.node_id})


@step("my_app::classify")
def classify(ctx: Context, ev: StartEvent) -> StopEvent:  # a plain def step runs in a thread
    """Input {"text": ...}; result: a label. Blocking (CPU/GPU) code belongs in def steps."""
    label = "question" if ev.text.rstrip().endswith("?") else "statement"
    return StopEvent(result={"label": label, "served_by": ctx.node_id})
