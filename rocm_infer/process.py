"""One child process from spawn to reap: what every supervised binary (llama-server, rpc-server) shares.

:class:`ChildProcess` starts a binary with ``asyncio.create_subprocess_exec``
(arguments as a list, never a shell; stdin closed; stdout and stderr merged
into one pipe that :class:`~rocm_infer.output.OutputTail` drains until EOF),
tracks it with :mod:`rocm_infer.reaper` from the moment it exists until it is
reaped, and stops it: SIGTERM, a bounded wait, SIGKILL, reap, with the kill
and the reap surviving cancellation (``terminate``), or synchronously where
nothing can be awaited (``stop_now``). What makes a process *ready* (an HTTP
health check, a TCP connect) is its owner's business.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

import anyio

from . import reaper
from .output import OutputTail

__all__ = ["ChildProcess"]

# Longest wait, once the process is gone, for the output drain to read the pipe to its end
# (a grandchild may hold the pipe open: then the rest is dropped).
_DRAIN_AFTER_EXIT = 3.0


class ChildProcess:
    """A started child process, its output tail, and how it ends.

    ``name`` is what log lines call it ("llama-server"); ``tail_lines`` how
    many of its last output lines :attr:`output_tail` keeps; ``log`` the
    logger its lines go to at DEBUG. ``on_exit(returncode)``, when given, is
    called in the event loop once the process has been reaped, whoever ended
    it (not when the loop is closing under it).
    """

    __slots__ = ("name", "output", "_log", "_process", "_exit_task", "_drain_task", "_on_exit")

    def __init__(
        self, name: str, tail_lines: int, log: logging.Logger, on_exit: Callable[[int], None] | None = None
    ) -> None:
        self.name = name
        self.output = OutputTail(tail_lines, log)
        self._log = log
        self._process: asyncio.subprocess.Process | None = None
        self._exit_task: asyncio.Task[int] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._on_exit = on_exit

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped, else None."""
        return self._process.returncode if self._process is not None else None

    @property
    def exited(self) -> bool:
        """Whether the process has ended (and been reaped)."""
        return self._exit_task is not None and self._exit_task.done()

    @property
    def output_tail(self) -> str:
        return self.output.text

    async def spawn(
        self, binary: str, argv: Sequence[str], env: Mapping[str, str], preexec: Callable[[], None] | None
    ) -> int:
        """Start ``binary`` with ``argv``; its pid. OSError if it cannot be run."""
        self._process = await asyncio.create_subprocess_exec(
            binary,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            preexec_fn=preexec,
        )
        pid = self._process.pid
        reaper.track(pid)
        assert self._process.stdout is not None
        self._drain_task = asyncio.create_task(self.output.drain(self._process.stdout, pid))
        self._exit_task = asyncio.create_task(self._process.wait())
        self._exit_task.add_done_callback(self._exited)
        return pid

    def _exited(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():  # the loop is ending, not the process: it stays tracked
            return
        if self._process is not None:
            reaper.untrack(self._process.pid)
        if self._on_exit is not None:
            self._on_exit(task.result())

    async def wait_exited(self, within: float | None) -> int | None:
        """Wait up to ``within`` seconds (None: for ever) for the process to end; its exit status or None."""
        if self._exit_task is None:
            return None
        with contextlib.suppress(builtins.TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._exit_task), within)
        return None

    async def wait_for_exit_or(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep until the process ends, ``event`` is set, or ``seconds`` pass."""
        assert self._exit_task is not None
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({self._exit_task, woken}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def terminate(self, stop_timeout: float) -> None:
        """SIGTERM, up to ``stop_timeout`` seconds, SIGKILL, reap; the kill and the reap survive
        cancellation (and a second one), and the output is read to its end."""
        process = self._process
        if process is None:
            return
        try:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), stop_timeout)
                except builtins.TimeoutError:
                    self._log.warning(
                        "%s pid %d ignored SIGTERM for %gs; killing it", self.name, process.pid, stop_timeout
                    )
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
                reaper.untrack(process.pid)
                if self._drain_task is not None:
                    # The pipe reaches EOF once the process is gone; bound it in case a
                    # grandchild kept the pipe open.
                    with anyio.move_on_after(_DRAIN_AFTER_EXIT):
                        await asyncio.shield(self._drain_task)
                    self._drain_task.cancel()

    @property
    def stoppable(self) -> bool:
        """Whether the process runs and is still ours to signal (tracked: not reaped by anyone)."""
        process = self._process
        return process is not None and process.returncode is None and reaper.tracked(process.pid)

    def stop_now(self) -> bool:
        """Stop the process synchronously (SIGTERM, up to a second, SIGKILL), for where nothing can be
        awaited; asyncio's child watcher reaps it. False if there was nothing of ours to stop."""
        if not self.stoppable:
            return False  # (untracked: reaped already, by the exit hook or the loop; the pid may be reused)
        assert self._process is not None
        reaper.stop_pids([self._process.pid], reap=False)
        reaper.untrack(self._process.pid)  # gone: the exit hook must never signal this pid (it may be reused)
        return True

    def loop_of_exit(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that watches the process (None before it is started)."""
        return self._exit_task.get_loop() if self._exit_task is not None else None
