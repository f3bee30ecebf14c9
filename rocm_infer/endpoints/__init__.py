"""One adapter per llama-server endpoint: the request body it takes, the events it sends back.

* :mod:`~rocm_infer.endpoints.completion` — native ``/completion`` (``generate``).
* :mod:`~rocm_infer.endpoints.chat` — ``/v1/chat/completions`` (``chat``): content,
  reasoning and tool-call deltas.

Each adapter is protocol logic without I/O: it is fed the decoded JSON events
of one response and appends :class:`~rocm_infer.types.Token` values; a new
kind of delta touches one adapter.
"""

from __future__ import annotations

from .base import EventAdapter
from .chat import ChatAdapter
from .completion import CompletionAdapter

__all__ = ["ChatAdapter", "CompletionAdapter", "EventAdapter"]
