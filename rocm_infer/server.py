"""The llama-server process: start it, watch it, stop it.

:class:`LlamaServer` runs one llama-server with ``asyncio.create_subprocess_exec``
(arguments as a list, never a shell) bound to 127.0.0.1 on a port the kernel
picked, with a fresh random API key, and waits until GET /health answers
``{"status": "ok"}``. Its output is read all the time into a bounded tail
(and the ``rocm_infer.server`` logger at DEBUG), so the pipe never fills and
errors can say what llama-server printed last.

The API key reaches llama-server through its ``LLAMA_API_KEY`` environment
variable rather than ``--api-key``: the effect is the same, but the key does
not show in ``ps`` output, which every local user can read.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import collections
import contextlib
import ctypes
import functools
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio

from .client import JSON, LlamaServerClient
from .errors import APIConnectionError, APIError, ModelClosedError, RocmInferError, ServerStartError
from .types import LoadProgress, LoadStage

__all__ = ["LlamaServer", "strip_log_prefix"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"

# Lines llama-server prints when it is (nearly) ready: seeing one makes the
# health check run at once instead of at the next poll.
_READY_HINTS = (b"model loaded", b"listening on")
# The line llama-server prints once it serves requests: its own ready moment (see listening_at).
_LISTENING = b"listening on"
# Longest wait, on stop, for slots to go idle before SIGTERM (see _wait_idle).
_IDLE_BEFORE_STOP = 1.0
# Longest line kept in the output tail; the rest of a longer line is dropped.
_MAX_TAIL_LINE = 2000
# The line llama-server prints when its port was taken between our choosing it and it binding it.
_BIND_FAILED = "couldn't bind"
# Log lines that start a start-up stage, in the order llama-server prints them.
_STAGE_LINES: tuple[tuple[bytes, LoadStage], ...] = (
    (b"loading model", "loading"),
    (b"load_tensors:", "loading"),
    (b"llama_context:", "initializing"),
    (b"load_model: initializing", "initializing"),
    (b"warming up", "initializing"),
)
_STAGE_ORDER: dict[LoadStage, int] = {"starting": 0, "loading": 1, "initializing": 2, "ready": 3}
# Longest a single /health request may take during start-up before the next poll.
_HEALTH_REQUEST_TIMEOUT = 5.0


# Processes started and not yet reaped. If the interpreter exits with some still
# running (a model never closed, a loop that ended first), an exit hook stops them.
_running: set[int] = set()
_exit_hook_installed = False
_EXIT_GRACE = 1.0


def _track(pid: int) -> None:
    global _exit_hook_installed
    if not _exit_hook_installed:  # installed on first use: no import-time side effects
        atexit.register(_stop_all_at_exit)
        _exit_hook_installed = True
    _running.add(pid)


def _untrack(pid: int) -> None:
    _running.discard(pid)


def _stop_all_at_exit() -> None:
    """SIGTERM every llama-server still running, SIGKILL those alive after a grace period, reap all."""
    pids = sorted(_running)
    if not pids:
        return
    logger.warning("stopping llama-server pid(s) %s at exit: a model was not closed", pids)
    _stop_pids(pids, reap=True)
    _running.clear()


def _stop_pids(pids: Collection[int], *, reap: bool) -> None:
    """SIGTERM ``pids``, wait up to ``_EXIT_GRACE`` seconds for them to exit, SIGKILL the rest.

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
    """Wait up to ``_EXIT_GRACE`` seconds for ``pids`` to exit; those still running."""
    flags = os.WEXITED | os.WNOHANG | (0 if reap else os.WNOWAIT)
    deadline = time.monotonic() + _EXIT_GRACE
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


# stop() tasks that stop_now() scheduled, kept referenced until they finish.
_finishing: set[asyncio.Task[int | None]] = set()


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


def _die_with_parent() -> Callable[[], None] | None:
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


class _ProcessActivity:
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


def strip_log_prefix(line: str) -> str:
    """A llama-server log line without its time and level prefix:
    ``0.00.004.392 I srv    load_model: loading model 'x'`` → ``load_model: loading model 'x'``."""
    parts = line.split(None, 3)
    if len(parts) == 4 and parts[0][:1].isdigit() and len(parts[1]) == 1:
        return parts[3]
    return line.strip()


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """One supervised llama-server process.

    ``binary`` is the llama-server executable and ``args`` the arguments that
    describe the model (``-m``, ``-c`` …); the supervisor adds host, port and
    API key itself. ``env`` is the process's whole environment (``None``: this
    process's environment).

    :meth:`start` raises :class:`~rocm_infer.errors.ServerStartError` (with
    ``returncode`` and ``output_tail``) if the process exits during start-up,
    stalls, or takes too long, and leaves no process behind.
    ``startup_timeout`` is a stall timeout: it counts seconds without any sign
    of progress (a new output line, or on Linux CPU time, memory or bytes read
    moving in ``/proc``), so a big model that loads for minutes is not killed
    early while a hung binary is; ``max_startup_time`` caps the whole start-up
    regardless. ``on_progress`` is called with a
    :class:`~rocm_infer.types.LoadProgress` as start-up moves on (in the event
    loop: it must not block; an exception it raises fails the start).
    ``model_path``, when given, is what the server's ``/props`` must name
    (``model_path``) for the server that answers to count as ours; with or
    without it, ``/props`` must accept our API key. ``model_size`` (bytes)
    lets progress report a fraction while the weights load. ``listening_at``
    is the ``time.monotonic()`` at which the output drain read llama-server's
    own "listening on" line (its ready moment; None before), so the time
    start-up adds after it can be measured.

    When the process exits because its port was taken between our
    choosing it and its binding it, start() tries again on a fresh port (up to
    ``start_attempts`` in all); any other early exit (a corrupt model, a bad
    flag) fails at once, since a retry would only fail the same way, slower.
    :meth:`stop` waits up to a second for busy slots to go idle, sends
    SIGTERM, waits ``stop_timeout`` seconds, then SIGKILL, and always reaps; it
    is idempotent and finishes its work even if the calling task is cancelled.
    """

    def __init__(
        self,
        binary: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        max_startup_time: float = 1800.0,
        stop_timeout: float = 5.0,
        health_interval: float = 0.1,
        start_attempts: int = 3,
        tail_lines: int = 100,
        idle_timeout: float | None = 120.0,
        model_path: str | None = None,
        model_size: int | None = None,
        on_progress: Callable[[LoadProgress], object] | None = None,
    ) -> None:
        self.binary = binary
        self.args = tuple(args)
        self._env = dict(env) if env is not None else None
        self.startup_timeout = startup_timeout
        self.max_startup_time = max_startup_time
        self.model_path = model_path
        self.model_size = model_size
        self.on_progress = on_progress
        self.stop_timeout = stop_timeout
        self.health_interval = health_interval
        self.start_attempts = start_attempts
        self._idle_timeout = idle_timeout
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._process: asyncio.subprocess.Process | None = None
        self._exit_task: asyncio.Task[int] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set by output that makes a /health poll worthwhile
        self._client: LlamaServerClient | None = None
        self._api_key = secrets.token_urlsafe(32)
        self.port: int | None = None
        self.props: JSON | None = None  # /props, read when start-up checked the server is ours
        # time.monotonic() when the output drain read llama-server's "listening on" line.
        self.listening_at: float | None = None
        self._stopping = False
        self._stopped = False
        # Start-up progress, fed by _drain (output lines) and _wait_healthy (/proc).
        self._launched = 0.0
        self._last_activity = 0.0
        self._stage: LoadStage = "starting"
        self._stage_line = ""
        self._fraction: float | None = None
        self._reported: tuple[LoadStage, float | None] | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self.pid}" if self._process else "not started"
        return f"LlamaServer({os.path.basename(self.binary)!r}, port={self.port}, {state})"

    # -- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped, else None."""
        return self._process.returncode if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None and not self._stopped

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ModelClosedError("llama-server has not been started")
        return f"http://{HOST}:{self.port}"

    @property
    def client(self) -> LlamaServerClient:
        """The HTTP client for this server, authenticated with its API key."""
        if self._client is None:
            raise ModelClosedError("llama-server has not been started")
        return self._client

    @property
    def output_tail(self) -> str:
        """The last lines llama-server printed."""
        return "\n".join(self._tail)

    async def wait_exited(self, within: float) -> int | None:
        """Wait up to ``within`` seconds for the process to end; its exit status or None."""
        if self._exit_task is None:
            return None
        # builtins.TimeoutError: what wait_for raises (the SDK's APITimeoutError is only a subclass of it).
        with contextlib.suppress(builtins.TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._exit_task), within)
        return None

    # -- start -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start llama-server and return once it is healthy and ours. See the class docs."""
        if self._process is not None:
            raise RuntimeError("LlamaServer.start() was already called")
        began = time.monotonic()
        try:
            for attempt in range(1, self.start_attempts + 1):
                await self._spawn()
                try:
                    await self._wait_healthy(began + self.max_startup_time)
                except ServerStartError as exc:
                    if attempt < self.start_attempts and _BIND_FAILED in exc.output_tail:
                        logger.info("llama-server could not bind port %s; retrying on a fresh port", self.port)
                        await self._reset()
                        continue
                    raise
                self._set_stage("ready", "healthy")
                self._report_progress()
                logger.info(
                    "llama-server pid %d ready on port %d in %.2fs", self.pid, self.port, time.monotonic() - began
                )
                return
        except BaseException:
            await self.stop()
            raise

    def respawn(self) -> LlamaServer:
        """A new, unstarted LlamaServer with this one's binary, arguments and
        settings; it gets its own port and API key when started."""
        return LlamaServer(
            self.binary,
            self.args,
            env=self._env,
            startup_timeout=self.startup_timeout,
            max_startup_time=self.max_startup_time,
            stop_timeout=self.stop_timeout,
            health_interval=self.health_interval,
            start_attempts=self.start_attempts,
            tail_lines=self._tail.maxlen or 100,
            idle_timeout=self._idle_timeout,
            model_path=self.model_path,
            model_size=self.model_size,
            on_progress=self.on_progress,
        )

    async def _spawn(self) -> None:
        self.port = free_port()
        env = dict(self._env if self._env is not None else os.environ)
        env["LLAMA_API_KEY"] = self._api_key
        argv = [*self.args, "--host", HOST, "--port", str(self.port)]
        self._launched = self._last_activity = time.monotonic()
        self._stage, self._stage_line, self._fraction, self._reported = "starting", "", None, None
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            raise ServerStartError(f"could not run llama-server {self.binary!r}: {exc}") from exc
        logger.info("started llama-server pid %d on %s:%d", self._process.pid, HOST, self.port)
        logger.debug("llama-server argv: %s %s", self.binary, " ".join(argv))
        self._wake.clear()
        assert self._process.stdout is not None
        self._drain_task = asyncio.create_task(self._drain(self._process.stdout, self._process.pid))
        self._exit_task = asyncio.create_task(self._process.wait())
        self._exit_task.add_done_callback(self._on_exit)
        _track(self._process.pid)
        self._client = LlamaServerClient(self.base_url, api_key=self._api_key, idle_timeout=self._idle_timeout)

    async def _wait_healthy(self, hard_deadline: float) -> None:
        assert self._exit_task is not None and self._client is not None and self._process is not None
        activity = _ProcessActivity(self._process.pid)
        signature: tuple[int, ...] | None = None
        last_status = "no answer yet"
        while True:
            if self._exit_task.done():
                raise await self._start_error("llama-server exited during start-up")
            sample = activity.sample()
            if sample is not None:
                if sample[0] != signature:
                    signature = sample[0]
                    self._last_activity = time.monotonic()
                if self._stage == "loading" and self.model_size:
                    self._fraction = max(self._fraction or 0.0, min(sample[1] / self.model_size, 1.0))
            self._report_progress()
            deadline = min(self._last_activity + self.startup_timeout, hard_deadline)
            try:
                # A server that accepts but never answers must not outlast the deadline.
                async with asyncio.timeout(max(min(deadline - time.monotonic(), _HEALTH_REQUEST_TIMEOUT), 0.01)):
                    health = await self._client.health()
                    if health.get("status") == "ok":
                        problem = await self._not_ours()
                        if problem is None:
                            return
                        last_status = problem
                    else:
                        last_status = f"/health answered {health!r}"
            except APIError as exc:
                if exc.status != 503:
                    raise await self._start_error(f"llama-server /health answered {exc}") from exc
                last_status = "loading the model (503)"
            except APIConnectionError:
                last_status = "not accepting connections yet"
            except builtins.TimeoutError:  # also the SDK's own APITimeoutError
                last_status = "/health did not answer"
            now = time.monotonic()
            deadline = min(self._last_activity + self.startup_timeout, hard_deadline)
            if now >= deadline:
                if now >= hard_deadline:
                    why = f"within max_startup_time={self.max_startup_time:g}s"
                else:
                    why = f"within {self.startup_timeout:g}s of its last sign of progress"
                raise await self._start_error(f"llama-server did not become healthy {why} (last: {last_status})")
            # Sleep until the next poll, the process exiting, or a line that makes a poll worthwhile.
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait(
                    {self._exit_task, wake},
                    timeout=min(self.health_interval, deadline - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                wake.cancel()
            self._wake.clear()

    async def _not_ours(self) -> str | None:
        """None if the healthy server on our port is the one we started, else why it is not.

        /health needs no API key, so a stranger's server that took the port
        between our choosing it and llama-server binding it would pass it:
        /props must accept our key and, when we know it, name our model.
        """
        assert self._client is not None
        try:
            props = await self._client.props()
        except APIError as exc:
            if exc.status in (401, 403):
                return f"the server on port {self.port} rejects our API key: it is not ours"
            raise
        if self.model_path is not None and props.get("model_path") != self.model_path:
            return f"the server on port {self.port} serves {props.get('model_path')!r}: it is not ours"
        self.props = props
        return None

    def _set_stage(self, stage: LoadStage, line: str) -> bool:
        """Move on to ``stage`` if it is later than the current one; whether it moved."""
        if _STAGE_ORDER[stage] <= _STAGE_ORDER[self._stage]:
            return False
        self._stage, self._stage_line = stage, line
        if stage in ("initializing", "ready") and self.model_size:
            self._fraction = 1.0  # the weights are read
        return True

    def _report_progress(self) -> None:
        """Call on_progress if the stage or the fraction (to 1%) moved since the last call."""
        if self.on_progress is None:
            return
        fraction = None if self._fraction is None else round(self._fraction, 2)
        if (self._stage, fraction) == self._reported:
            return
        self._reported = (self._stage, fraction)
        self.on_progress(LoadProgress(self._stage, fraction, time.monotonic() - self._launched, self._stage_line))

    async def _start_error(self, message: str) -> ServerStartError:
        """Stop the process and build the error, with its exit code and last output."""
        await self._terminate()
        returncode = self.returncode
        if returncode is not None:
            message = f"{message} (exit code {returncode})"
        return ServerStartError(message, returncode=returncode, output_tail=self.output_tail)

    async def _reset(self) -> None:
        await self._terminate()
        if self._client is not None:
            await self._client.aclose()
        self._client = None
        self._process = None
        self._exit_task = None
        self._drain_task = None
        self._tail.clear()
        self.props = None
        self.listening_at = None

    # -- output ----------------------------------------------------------------------------------

    async def _drain(self, stream: asyncio.StreamReader, pid: int) -> None:
        """Read the process output until EOF, keeping the last lines (each cut to
        ``_MAX_TAIL_LINE`` characters, so the tail stays small whatever is printed)."""
        partial = b""
        overlong = False  # inside a line already cut: drop bytes until its end
        debug = logger.isEnabledFor(logging.DEBUG)
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if overlong and lines:
                lines.pop(0)  # the end of the line that was already cut
                overlong = False
            if len(partial) > _MAX_TAIL_LINE:
                if not overlong:
                    lines.append(partial)
                overlong = True
                partial = b""
            for raw in lines:
                line = raw[:_MAX_TAIL_LINE].rstrip(b"\r").decode("utf-8", "replace")
                if len(raw) > _MAX_TAIL_LINE:
                    line += " [...]"
                if self.listening_at is None and _LISTENING in raw:
                    # Also after start-up: the health check can finish before this line is read.
                    self.listening_at = time.monotonic()
                if self._stage != "ready":
                    self._on_startup_line(raw, line)
                self._tail.append(line)
                if debug:
                    logger.debug("llama-server[%d]: %s", pid, line)
        if partial and not overlong:
            self._tail.append(partial[:_MAX_TAIL_LINE].decode("utf-8", "replace"))

    def _on_startup_line(self, raw: bytes, line: str) -> None:
        """A line printed during start-up: a sign of progress, maybe a new stage or a ready hint."""
        self._last_activity = time.monotonic()
        for marker, stage in _STAGE_LINES:
            if marker in raw:
                if self._set_stage(stage, strip_log_prefix(line)):
                    self._wake.set()
                break
        if any(hint in raw for hint in _READY_HINTS):
            self._wake.set()

    def _on_exit(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():  # the loop is ending, not the process: it stays tracked
            return
        if self._process is not None:
            _untrack(self._process.pid)
        if self._stopping:
            return
        if self._stage != "ready":
            # start() reports it, with the exit code and output, as a ServerStartError.
            logger.info("llama-server pid %s exited during start-up with code %s", self.pid, task.result())
            return
        logger.warning("llama-server pid %s exited unexpectedly with code %s", self.pid, task.result())

    # -- stop ------------------------------------------------------------------------------------

    async def _terminate(self) -> None:
        """SIGTERM, bounded wait, SIGKILL, reap; the kill and the reap survive cancellation."""
        process = self._process
        if process is None:
            return
        self._stopping = True
        try:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), self.stop_timeout)
                except builtins.TimeoutError:
                    logger.warning(
                        "llama-server pid %d ignored SIGTERM for %gs; killing it", process.pid, self.stop_timeout
                    )
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
                _untrack(process.pid)
                if self._drain_task is not None:
                    # The pipe reaches EOF once the process is gone; bound it in case a
                    # grandchild kept the pipe open.
                    with anyio.move_on_after(1.0):
                        await asyncio.shield(self._drain_task)
                    self._drain_task.cancel()

    async def _wait_idle(self, within: float) -> None:
        """Give slots whose clients just went away a moment to notice.

        llama-server does not exit on SIGTERM while a slot is still processing
        (it was seen waiting until SIGKILL), and a slot notices a closed
        connection only at its next token, so stop() waits, briefly and
        bounded, for every slot to be idle before sending SIGTERM.
        """
        if self._client is None or self._process is None or self._process.returncode is not None:
            return
        with anyio.move_on_after(within), contextlib.suppress(RocmInferError):
            while True:
                slots = await self._client.slots()
                if not isinstance(slots, list) or not any(
                    isinstance(slot, dict) and slot.get("is_processing") for slot in slots
                ):
                    return
                await asyncio.sleep(0.005)

    def stop_now(self, why: str = "a model was dropped without close()") -> None:
        """Stop the process synchronously: SIGTERM, up to a second, then SIGKILL.

        For where nothing can be awaited: a finalizer (a
        :class:`~rocm_infer.model.TextModel` dropped without being closed).
        Called in a running event loop, it also schedules :meth:`stop` there
        to reap the process and close the HTTP client; elsewhere the client
        is left as it is. ``why`` starts the warning it logs. Use ``await
        stop()`` wherever you can.
        """
        process = self._process
        if process is None or self._stopped or process.returncode is not None or process.pid not in _running:
            return  # (untracked: reaped already, by the exit hook or the loop; the pid may be reused)
        self._stopping = True  # this exit is expected: _on_exit must not warn about it
        logger.warning("%s: stopping its llama-server pid %d", why, process.pid)
        _stop_pids([process.pid], reap=False)  # asyncio's child watcher reaps it
        _untrack(process.pid)  # gone: the exit hook must never signal this pid (it may be reused)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._exit_task is not None and self._exit_task.get_loop() is loop:
            task = loop.create_task(self.stop())
            _finishing.add(task)
            task.add_done_callback(_finishing.discard)

    async def stop(self) -> int | None:
        """Stop llama-server (see the class docs) and return its exit status. Idempotent."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        try:
            try:
                await self._wait_idle(_IDLE_BEFORE_STOP)
            finally:
                await self._terminate()  # also when cancelled while waiting
        finally:
            if self._client is not None:
                with anyio.CancelScope(shield=True):
                    await self._client.aclose()
        if self._process is not None:
            logger.info("llama-server pid %d stopped (exit code %s)", self._process.pid, self._process.returncode)
        return self.returncode

    async def __aenter__(self) -> LlamaServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
