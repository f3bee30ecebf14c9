"""How far a starting llama-server has got, and whether it is still making progress.

:class:`StartupProgress` turns llama-server's output lines and, on Linux, what
``/proc/<pid>`` says of its CPU time, memory and bytes read into stages
(``starting`` → ``loading`` → ``initializing`` → ``ready``), a fraction of
the weights read, and the time of the last sign of life, which the start-up
stall timeout counts from. It reports to ``on_progress`` when the stage or
the fraction moves. No I/O but reading ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from .types import LoadProgress, LoadStage

__all__ = ["ProcessActivity", "StartupProgress", "strip_log_prefix"]

# Log lines that start a start-up stage, in the order llama-server prints them.
_STAGE_LINES: tuple[tuple[bytes, LoadStage], ...] = (
    (b"loading model", "loading"),
    (b"load_tensors:", "loading"),
    (b"llama_context:", "initializing"),
    (b"load_model: initializing", "initializing"),
    (b"warming up", "initializing"),
)
_STAGE_ORDER: dict[LoadStage, int] = {"starting": 0, "loading": 1, "initializing": 2, "ready": 3}
# Lines llama-server prints when it is (nearly) ready: seeing one makes the
# health check run at once instead of at the next poll.
_READY_HINTS = (b"model loaded", b"listening on")


def strip_log_prefix(line: str) -> str:
    """A llama-server log line without its time and level prefix:
    ``0.00.004.392 I srv    load_model: loading model 'x'`` → ``load_model: loading model 'x'``."""
    parts = line.split(None, 3)
    if len(parts) == 4 and parts[0][:1].isdigit() and len(parts[1]) == 1:
        return parts[3]
    return line.strip()


class ProcessActivity:
    """Signs of life of a starting llama-server, read from ``/proc/<pid>`` (Linux).

    llama-server prints nothing while it reads the weights, which for a big
    model on a slow disk takes minutes; but its CPU time, its resident memory
    and the bytes it has read all move while it works. A process whose
    numbers stand still (and which prints nothing) is stalled. Elsewhere, or
    if ``/proc`` cannot be read, :meth:`sample` returns None and only output
    counts as activity.
    """

    __slots__ = ("_pid", "_available")

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._available = os.path.isdir(f"/proc/{pid}")

    def sample(self) -> tuple[tuple[int, ...], int] | None:
        """(a signature that changes while the process works, bytes of files it has read or mapped)."""
        if not self._available:
            return None
        try:
            with open(f"/proc/{self._pid}/stat", "rb") as f:
                # Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
                fields = f.read().rsplit(b")", 1)[1].split()
            cpu = int(fields[11]) + int(fields[12])
            rss_file = rss_anon = 0
            with open(f"/proc/{self._pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"RssFile:"):
                        rss_file = int(line.split()[1]) * 1024
                    elif line.startswith(b"RssAnon:"):
                        rss_anon = int(line.split()[1]) * 1024
            read_chars = 0
            with contextlib.suppress(OSError), open(f"/proc/{self._pid}/io", "rb") as f:
                for line in f:
                    if line.startswith(b"rchar:"):
                        read_chars = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            self._available = False
            return None
        return (cpu, rss_file, rss_anon, read_chars), max(rss_file, read_chars)


class StartupProgress:
    """Stage, fraction and last sign of life of one start-up attempt.

    ``model_size`` (bytes) lets the fraction of the weights read be
    estimated while loading. ``on_progress`` is called with a
    :class:`~rocm_infer.types.LoadProgress` when the stage or the fraction (to
    1%) moves; an exception it raises propagates to whoever fed the progress
    (and so fails the start).
    """

    __slots__ = (
        "_model_size",
        "_on_progress",
        "_activity",
        "_signature",
        "launched",
        "last_activity",
        "stage",
        "_stage_line",
        "_fraction",
        "_reported",
    )

    def __init__(self, model_size: int | None, on_progress: Callable[[LoadProgress], object] | None) -> None:
        self._model_size = model_size
        self._on_progress = on_progress
        self._activity: ProcessActivity | None = None
        self._signature: tuple[int, ...] | None = None
        self.launched = self.last_activity = time.monotonic()
        self.stage: LoadStage = "starting"
        self._stage_line = ""
        self._fraction: float | None = None
        self._reported: tuple[LoadStage, float | None] | None = None

    def begin(self, pid: int | None = None) -> None:
        """A new attempt starts now (``pid``, once the process exists, is watched in /proc)."""
        self.launched = self.last_activity = time.monotonic()
        self.stage, self._stage_line, self._fraction, self._reported = "starting", "", None, None
        self._activity = ProcessActivity(pid) if pid is not None else None
        self._signature = None

    @property
    def ready(self) -> bool:
        return self.stage == "ready"

    def on_line(self, raw: bytes, line: str) -> bool:
        """A line printed during start-up; True if it makes a /health poll worthwhile now."""
        self.last_activity = time.monotonic()
        wake = False
        for marker, stage in _STAGE_LINES:
            if marker in raw:
                wake = self.set_stage(stage, strip_log_prefix(line))
                break
        return wake or any(hint in raw for hint in _READY_HINTS)

    def sample(self) -> None:
        """Read /proc: any movement is a sign of life; bytes read estimate the fraction loaded."""
        if self._activity is None:
            return
        sample = self._activity.sample()
        if sample is None:
            return
        if sample[0] != self._signature:
            self._signature = sample[0]
            self.last_activity = time.monotonic()
        if self.stage == "loading" and self._model_size:
            self._fraction = max(self._fraction or 0.0, min(sample[1] / self._model_size, 1.0))

    def set_stage(self, stage: LoadStage, line: str) -> bool:
        """Move on to ``stage`` if it is later than the current one; whether it moved."""
        if _STAGE_ORDER[stage] <= _STAGE_ORDER[self.stage]:
            return False
        self.stage, self._stage_line = stage, line
        if stage in ("initializing", "ready") and self._model_size:
            self._fraction = 1.0  # the weights are read
        return True

    def report(self) -> None:
        """Call on_progress if the stage or the fraction (to 1%) moved since the last call."""
        if self._on_progress is None:
            return
        fraction = None if self._fraction is None else round(self._fraction, 2)
        if (self.stage, fraction) == self._reported:
            return
        self._reported = (self.stage, fraction)
        self._on_progress(LoadProgress(self.stage, fraction, time.monotonic() - self.launched, self._stage_line))
