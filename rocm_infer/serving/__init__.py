"""Serving many models and many servers: :class:`ModelPool`, :class:`Router`, ``rocm-infer serve``.

* :mod:`~rocm_infer.serving.pool` — many models on one machine, loaded on
  demand (:mod:`~rocm_infer.serving.eviction`: which to unload, a pure
  function; :mod:`~rocm_infer.serving.memory`: what a model needs).
* :mod:`~rocm_infer.serving.router` — many llama-servers behind one API
  (:mod:`~rocm_infer.serving.policies`: the policies, prefix hashing, the
  ejection and backoff state machine, all pure).
* :mod:`~rocm_infer.serving.serve` — the OpenAI-compatible server for a pool or
  a router (needs the ``fastapi`` extra; not imported here).
"""

from __future__ import annotations

from .policies import (
    POLICIES,
    Backoff,
    EndpointState,
    Policy,
    RequestKey,
    least_loaded,
    prefix_affinity,
    round_robin,
)
from .pool import LeasedStream, LoadedModel, ModelKind, ModelPool, ModelSpec, PoolBusyError
from .router import Endpoint, EndpointLike, Router

__all__ = [
    "Backoff",
    "Endpoint",
    "EndpointLike",
    "EndpointState",
    "LeasedStream",
    "LoadedModel",
    "ModelKind",
    "ModelPool",
    "ModelSpec",
    "POLICIES",
    "Policy",
    "PoolBusyError",
    "RequestKey",
    "Router",
    "least_loaded",
    "prefix_affinity",
    "round_robin",
]
