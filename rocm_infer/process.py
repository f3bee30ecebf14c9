"""One child process from spawn to reap: what every supervised binary (llama-server, rpc-server) shares.

:class:`ChildProcess` starts a binary with ``asyncio.create_subprocess_exec``
(arguments as a list, never a shell; stdin closed; stdout and stderr merged
into one pipe that :class:`~rocm_infer.output.OutputTail` drains until EOF;
in a session and process group of its own), tracks it with
:mod:`rocm_infer.reaper` from the moment it exists until it is reaped, and
stops it and whatever it started: SIGTERM to the group, a bounded wait,
SIGKILL to the group, reap, with the kill and the reap surviving cancellation
(``terminate``), or synchronously where nothing can be awaited (``stop_now``).
What makes a process *ready* (an HTTP health check, a TCP connect) is its
owner's business.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import signal
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
        """Start ``binary`` with ``argv``; its pid. OSError if it cannot be run.

        A cancellation that comes while asyncio connects the child's pipes waits
        for the spawn to finish, so the process is ours (tracked, its output
        drained) when the cancellation goes on and the owner stops it the usual
        way, SIGTERM first. Cancelled in there, asyncio itself would SIGKILL the
        child and then wait for its pipes to close, which a grandchild holding
        them (a wrapper script that does not ``exec``) puts off for as long as
        it lives.
        """
        spawning = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                binary,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                preexec_fn=preexec,
                start_new_session=True,  # its own process group, for terminate() to signal
            )
        )
        try:
            process = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
                self._watch(await spawning)
            raise
        return self._watch(process)

    def _watch(self, process: asyncio.subprocess.Process) -> int:
        """Track the started ``process``, drain its output and watch for its exit; its pid."""
        self._process = process
        pid = process.pid
        reaper.track(pid)
        assert process.stdout is not None
        self._drain_task = asyncio.create_task(self.output.drain(process.stdout, pid))
        self._exit_task = asyncio.create_task(process.wait())
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
        cancellation (and a second one), and the output is read to its end.

        The signals go to the process's group (it leads one: see :meth:`spawn`), so what it
        started goes too: a wrapper script's llama-server, or a grandchild that holds the
        output pipe, which asyncio waits for before it calls the process ended.
        """
        process = self._process
        if process is None:
            return
        try:
            if not self.exited:
                self._signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self._exit(), stop_timeout)
                except builtins.TimeoutError:
                    self._log.warning(
                        "%s pid %d (or a process it started) ignored SIGTERM for %gs; killing it",
                        self.name,
                        process.pid,
                        stop_timeout,
                    )
        finally:
            with anyio.CancelScope(shield=True):
                if not self.exited:
                    self._signal(signal.SIGKILL)
                # The pipe reaches EOF once the group is gone; bound the wait for it in case a
                # process that left the group keeps it open.
                with anyio.move_on_after(_DRAIN_AFTER_EXIT):
                    await self._exit()
                if process.returncode is None:  # not even reaped yet: the SIGKILL is on its way
                    await self._exit()
                reaper.untrack(process.pid)
                if self._drain_task is not None:
                    with anyio.move_on_after(_DRAIN_AFTER_EXIT):
                        await asyncio.shield(self._drain_task)
                    self._drain_task.cancel()

    async def _exit(self) -> int:
        assert self._exit_task is not None
        return await asyncio.shield(self._exit_task)

    def _signal(self, signum: int) -> None:
        """Send ``signum`` to the process's group. Called only before the exit is seen: the
        process is unreaped, or something in its group still holds its pipe, so the group
        id is still the process's own and cannot name anyone else's."""
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

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
