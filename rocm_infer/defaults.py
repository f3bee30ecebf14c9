"""Every default setting of the SDK, once.

``LoadConfig``, ``GenerateConfig``, the server spec and the HTTP client read
their defaults from here, so a default is changed in one place and the
documentation (docs/configuration.md, checked by a test) names these values.
"""

from __future__ import annotations

__all__ = [
    "CONNECT_TIMEOUT",
    "CONTEXT_CAP",
    "HOST",
    "IDLE_TIMEOUT",
    "MAX_STARTUP_TIME",
    "MAX_TOKENS",
    "REQUEST_TIMEOUT",
    "START_ATTEMPTS",
    "STARTUP_TIMEOUT",
    "STOP_TIMEOUT",
    "TAIL_LINES",
    "UNAVAILABLE_TIMEOUT",
    "default_threads",
]

import os

# The address every supervised llama-server binds: loopback only.
HOST = "127.0.0.1"

# Context window when LoadConfig.context_len is 0: the model's trained context, capped here.
CONTEXT_CAP = 4096
# Tokens one generation may produce when the caller does not say (GenerateConfig.max_tokens).
MAX_TOKENS = 256

# Start-up: seconds without any sign of progress, seconds in all, attempts (a port taken under us).
STARTUP_TIMEOUT = 60.0
MAX_STARTUP_TIME = 1800.0
START_ATTEMPTS = 3
# Stop: seconds between SIGTERM and SIGKILL.
STOP_TIMEOUT = 5.0
# Lines of llama-server's output kept for error messages.
TAIL_LINES = 100

# HTTP: seconds a non-streaming request may take, a connection may take to open, a stream may stay
# silent, and a 503 (still loading) is retried for.
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT: float | None = 120.0
UNAVAILABLE_TIMEOUT = 30.0


def default_threads() -> int:
    """CPU threads for llama-server when ``LoadConfig.threads`` is 0.

    llama-server's own default takes every core, which on a machine whose
    cores the client (and everything else) shares stalls generation: a
    thread that is descheduled holds up every other one at each barrier.
    One core is left free on machines with more than two; on one or two
    cores, one thread. The cores are those this process may run on
    (``os.sched_getaffinity``, so containers and ``taskset`` are honoured).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)
