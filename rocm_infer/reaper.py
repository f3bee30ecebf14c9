"""No llama-server outlives its owner: the exit hook, the parent-death signal, synchronous stops.

Every supervised process is tracked from spawn to reap. If the interpreter
exits with some still running (a model never closed, a loop that ended
first), an exit hook SIGTERMs them, SIGKILLs those still alive after a grace
period, and reaps them. On Linux the kernel also SIGKILLs the child when this
process dies in a way no hook sees (SIGKILL, a crash): ``PR_SET_PDEATHSIG``,
set between fork and exec. :func:`stop_pids` is the same escalation for where
nothing can be awaited (a finalizer, a model closed from another event loop).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["EXIT_GRACE", "die_with_parent", "stop_pids", "track", "tracked", "untrack"]

logger = logging.getLogger(__name__)

# Seconds a synchronous stop waits after SIGTERM before SIGKILL.
EXIT_GRACE = 1.0

# Processes started and not yet reaped.
_running: set[int] = set()
_exit_hook_installed = False


def track(pid: int) -> None:
    """Record a started process; the exit hook stops it if it is still tracked at exit."""
    global _exit_hook_installed
    if not _exit_hook_installed:  # installed on first use: no import-time side effects
        atexit.register(_stop_all_at_exit)
        _exit_hook_installed = True
    _running.add(pid)


def untrack(pid: int) -> None:
    """Forget a process that was reaped (its pid may be reused: never signal it again)."""
    _running.discard(pid)


def tracked(pid: int) -> bool:
    """Whether ``pid`` is a process this module still owns."""
    return pid in _running


def _stop_all_at_exit() -> None:
    """SIGTERM every llama-server still running, SIGKILL those alive after a grace period, reap all."""
    pids = sorted(_running)
    if not pids:
        return
    logger.warning("stopping llama-server pid(s) %s at exit: a model was not closed", pids)
    stop_pids(pids, reap=True)
    _running.clear()


def stop_pids(pids: Collection[int], *, reap: bool) -> None:
    """SIGTERM ``pids``, wait up to :data:`EXIT_GRACE` seconds for them to exit, SIGKILL the rest.

    Synchronous, for where nothing can be awaited (the exit hook, a finalizer). With
    ``reap`` the processes are reaped here; without it they are only waited for, and
    left for asyncio's child watcher to reap and report as usual.
    """
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    left = _wait_gone(pids, reap=reap)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(left, reap=reap)


def _wait_gone(pids: Collection[int], *, reap: bool) -> set[int]:
    """Wait up to :data:`EXIT_GRACE` seconds for ``pids`` to exit; those still running."""
    flags = os.WEXITED | os.WNOHANG | (0 if reap else os.WNOWAIT)
    deadline = time.monotonic() + EXIT_GRACE
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                exited = os.waitid(os.P_PID, pid, flags) is not None
            except ChildProcessError:  # reaped already (by asyncio's child watcher)
                exited = True
            if exited:
                left.discard(pid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return left


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.cache
def _prctl() -> Any:
    """libc's prctl, on Linux; None elsewhere or if it cannot be found."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when this process dies.

    Linux only (prctl PR_SET_PDEATHSIG): it covers what no exit hook can, a
    parent killed with SIGKILL or crashing. Elsewhere None: a normal exit is
    still covered by the exit hook, a killed parent is not.
    """
    prctl = _prctl()  # resolved here, in the parent, not after fork
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
