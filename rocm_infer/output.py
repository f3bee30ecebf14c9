"""What a llama-server prints: read all the time, kept as a bounded tail of lines.

:class:`OutputTail` drains a process's stdout (stderr merged) until EOF so the
pipe never fills, keeps its last lines (each cut to a bounded length, so the
tail stays small whatever is printed) for error messages, notes the moment
llama-server says it is listening, and hands every line to a callback (the
start-up progress) while one is set. Lines go to the logger it is given
(the server's, ``rocm_infer.server``) at DEBUG.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

__all__ = ["OutputTail"]

# The line llama-server prints once it serves requests: its own ready moment (see listening_at).
_LISTENING = b"listening on"
# Longest line kept in the tail; the rest of a longer line is dropped.
_MAX_LINE = 2000


class OutputTail:
    """The last ``lines`` lines a process printed, and when it said it was listening.

    ``listening_at`` is the ``time.monotonic()`` at which the drain read
    llama-server's "listening on" line (None before). ``on_line(raw, line)``,
    while set, sees every line as it is read.
    """

    __slots__ = ("_lines", "_listening", "_log", "listening_at", "on_line")

    def __init__(self, lines: int, log: logging.Logger) -> None:
        self._log = log
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._listening = asyncio.Event()
        self.listening_at: float | None = None
        self.on_line: Callable[[bytes, str], None] | None = None

    @property
    def text(self) -> str:
        return "\n".join(self._lines)

    def clear(self) -> None:
        """Forget everything (a new attempt of the same server)."""
        self._lines.clear()
        self._listening = asyncio.Event()
        self.listening_at = None

    async def wait_listening(self, within: float) -> None:
        """Wait up to ``within`` seconds for the "listening on" line to have been read."""
        try:
            await asyncio.wait_for(self._listening.wait(), within)
        except TimeoutError:
            pass

    async def drain(self, stream: asyncio.StreamReader, pid: int) -> None:
        """Read ``stream`` until EOF, line by line, into the tail."""
        partial = b""
        overlong = False  # inside a line already cut: drop bytes until its end
        log = self._log
        debug = log.isEnabledFor(logging.DEBUG)
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if overlong and lines:
                lines.pop(0)  # the end of the line that was already cut
                overlong = False
            if len(partial) > _MAX_LINE:
                if not overlong:
                    lines.append(partial)
                overlong = True
                partial = b""
            for raw in lines:
                line = raw[:_MAX_LINE].rstrip(b"\r").decode("utf-8", "replace")
                if len(raw) > _MAX_LINE:
                    line += " [...]"
                if self.listening_at is None and _LISTENING in raw:
                    # Also after start-up: the health check can finish before this line is read.
                    self.listening_at = time.monotonic()
                    self._listening.set()
                if self.on_line is not None:
                    self.on_line(raw, line)
                self._lines.append(line)
                if debug:
                    log.debug("llama-server[%d]: %s", pid, line)
        if partial and not overlong:
            self._lines.append(partial[:_MAX_LINE].decode("utf-8", "replace"))
