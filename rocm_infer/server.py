"""The llama-server process: start it, watch it, stop it.

:class:`LlamaServer` runs one llama-server with ``asyncio.create_subprocess_exec``
(arguments as a list, never a shell) bound to 127.0.0.1 on a port the kernel
picked, with a fresh random API key, and waits until GET /health answers
``{"status": "ok"}``. Its output is read all the time into a bounded tail
(:mod:`rocm_infer.output`), so the pipe never fills and errors can say what
llama-server printed last. What it was started with is
one frozen :class:`ServerSpec`; a respawn is a new server from the same spec.

The API key reaches llama-server through its ``LLAMA_API_KEY`` environment
variable rather than ``--api-key``: the effect is the same, but the key does
not show in ``ps`` output, which every local user can read. Every other
``LLAMA_ARG_*`` variable the parent inherited is dropped (see
:func:`clean_environment`): llama-server reads them as command-line
arguments, so a user's shell would otherwise silently change every server.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType

import anyio

from . import defaults, reaper
from .client import JSON, LlamaServerClient
from .defaults import HOST
from .errors import APIConnectionError, APIError, ModelClosedError, RocmInferError, ServerStartError
from .process import ChildProcess
from .startup import StartupProgress, strip_log_prefix
from .types import LoadProgress

__all__ = ["LlamaServer", "ServerSpec", "ServerState", "clean_environment", "free_port", "strip_log_prefix"]

logger = logging.getLogger(__name__)

# Longest wait, on stop, for slots to go idle before SIGTERM (see _wait_idle).
_IDLE_BEFORE_STOP = 1.0
# The line llama-server prints when its port was taken between our choosing it and it binding it.
_BIND_FAILED = "couldn't bind"
# Longest a single /health request may take during start-up before the next poll.
_HEALTH_REQUEST_TIMEOUT = 5.0
_SLIVER = 0.1  # seconds: a health poll given less than this is not a poll that went unanswered

# Environment variables llama-server reads as settings. Inherited ones are dropped
# (LoadConfig.env sets them on purpose); the names dropped are logged once each.
_SETTING_PREFIX = "LLAMA_ARG_"
_API_KEY_VARIABLE = "LLAMA_API_KEY"
_dropped_logged: set[str] = set()


def clean_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables llama-server reads as its settings.

    llama-server takes every ``LLAMA_ARG_*`` variable as a command-line
    argument (``LLAMA_ARG_CTX_SIZE``, ``LLAMA_ARG_N_GPU_LAYERS`` …) and
    ``LLAMA_API_KEY`` as its key, so an inherited one would silently change a
    server the SDK configured. They are removed here, and the names (never the
    values) are logged at INFO the first time each is dropped. Set them on
    purpose with ``LoadConfig(env={...})``, which is applied after this.
    """
    dropped = sorted(k for k in environ if k.startswith(_SETTING_PREFIX) or k == _API_KEY_VARIABLE)
    if not dropped:
        return dict(environ)
    new = [name for name in dropped if name not in _dropped_logged]
    if new:
        _dropped_logged.update(new)
        logger.info(
            "not passing %s from this environment to llama-server (it would read them as settings); "
            "use LoadConfig(env={...}) to set them on purpose",
            ", ".join(new),
        )
    return {k: v for k, v in environ.items() if k not in dropped}


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """Everything a llama-server is started with; a respawn reuses it as it is.

    ``binary`` is the llama-server executable and ``args`` the arguments that
    describe the model (``-m``, ``-c`` …); the supervisor adds host, port and
    API key itself. ``env`` is the process's whole environment (``None``: this
    process's, through :func:`clean_environment`). ``model_path``, when given,
    is what the server's ``/props`` must name for the server that answers to
    count as ours; ``model_size`` (bytes) lets progress report a fraction
    while the weights load. The timeouts are in seconds (see
    :class:`LlamaServer`); their defaults are :mod:`rocm_infer.defaults`.
    """

    binary: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = field(default=None, hash=False)
    model_path: str | None = None
    model_size: int | None = None
    startup_timeout: float = defaults.STARTUP_TIMEOUT
    max_startup_time: float = defaults.MAX_STARTUP_TIME
    stop_timeout: float = defaults.STOP_TIMEOUT
    health_interval: float = 0.1
    start_attempts: int = defaults.START_ATTEMPTS
    tail_lines: int = defaults.TAIL_LINES
    idle_timeout: float | None = defaults.IDLE_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        if self.env is not None:
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def environment(self, api_key: str) -> dict[str, str]:
        """The child's environment: ``env`` (or a clean copy of ours) plus the API key."""
        env = dict(self.env) if self.env is not None else clean_environment(os.environ)
        env[_API_KEY_VARIABLE] = api_key
        return env


class ServerState(enum.Enum):
    """Where a :class:`LlamaServer` is in its life."""

    NEW = "not started"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"  # died on its own after it was ready
    STOPPING = "stopping"
    STOPPED = "stopped"


# Clean-ups that stop_now() scheduled, kept referenced until they finish.
_finishing: set[asyncio.Task[None]] = set()


class LlamaServer:
    """One supervised llama-server process.

    Made from a :class:`ServerSpec` (:meth:`from_spec`) or from its fields
    (``LlamaServer(binary, args, startup_timeout=...)``).

    :meth:`start` raises :class:`~rocm_infer.errors.ServerStartError` (with
    ``returncode`` and ``output_tail``) if the process exits during start-up,
    stalls, or takes too long, and leaves no process behind, also when the
    calling task is cancelled at any point of it. ``startup_timeout`` is a
    stall timeout: it counts seconds without any sign of progress (a new
    output line, or on Linux CPU time, memory or bytes read moving in
    ``/proc``), so a big model that loads for minutes is not killed early
    while a hung binary is; ``max_startup_time`` caps the whole start-up
    regardless. ``on_progress`` is called with a
    :class:`~rocm_infer.types.LoadProgress` as start-up moves on (in the event
    loop: it must not block; an exception it raises fails the start). With or
    without ``model_path``, ``/props`` must accept our API key for the server
    that answers to count as ours. ``listening_at`` is the
    ``time.monotonic()`` at which the output drain read llama-server's own
    "listening on" line (its ready moment; None before), so the time start-up
    adds after it can be measured.

    When the process exits because its port was taken between our
    choosing it and its binding it, start() tries again on a fresh port (up to
    ``start_attempts`` in all); any other early exit (a corrupt model, a bad
    flag) fails at once, since a retry would only fail the same way, slower.
    :meth:`stop` waits up to a second for busy slots to go idle, sends
    SIGTERM, waits ``stop_timeout`` seconds, then SIGKILL, and always reaps; it
    is idempotent and finishes its work even if the calling task is cancelled,
    twice.

    (One class of some length on purpose: starting, watching and stopping share
    the process, its port and key, and the order in which they may happen;
    progress, output and the reaper are their own modules.)
    """

    def __init__(
        self,
        binary: str,
        args: Sequence[str] = (),
        *,
        on_progress: Callable[[LoadProgress], object] | None = None,
        **settings: object,
    ) -> None:
        self.spec = ServerSpec(binary, tuple(args), **settings)  # type: ignore[arg-type]
        self.on_progress = on_progress
        self._state = ServerState.NEW
        self._child = self._new_child()
        self._wake = asyncio.Event()  # set by output that makes a /health poll worthwhile
        self._client: LlamaServerClient | None = None
        self._api_key = secrets.token_urlsafe(32)
        self._progress = StartupProgress(self.spec.model_size, on_progress)
        self.port: int | None = None
        self.props: JSON | None = None  # /props, read when start-up checked the server is ours

    @classmethod
    def from_spec(cls, spec: ServerSpec, *, on_progress: Callable[[LoadProgress], object] | None = None) -> LlamaServer:
        """A new, unstarted server for ``spec``."""
        return cls(spec.binary, spec.args, on_progress=on_progress, **_spec_settings(spec))

    def respawn(self) -> LlamaServer:
        """A new, unstarted LlamaServer from this one's spec; it gets its own
        port and API key when started."""
        return LlamaServer.from_spec(self.spec, on_progress=self.on_progress)

    def __repr__(self) -> str:
        where = f"pid={self.pid}, " if self.pid is not None else ""
        return f"LlamaServer({os.path.basename(self.spec.binary)!r}, port={self.port}, {where}{self._state.value})"

    # -- state -----------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def binary(self) -> str:
        return self.spec.binary

    @property
    def args(self) -> tuple[str, ...]:
        return self.spec.args

    @property
    def model_path(self) -> str | None:
        return self.spec.model_path

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped, else None."""
        return self._child.returncode

    @property
    def running(self) -> bool:
        return self._state is ServerState.RUNNING and self.returncode is None

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
        return self._child.output_tail

    @property
    def listening_at(self) -> float | None:
        """``time.monotonic()`` when the output drain read llama-server's "listening on" line."""
        return self._child.output.listening_at

    async def output_through_startup(self, within: float = 2.0) -> str:
        """The output tail once the drain has read llama-server's "listening on" line (all it printed
        while starting), waiting up to ``within`` seconds for it."""
        await self._child.output.wait_listening(within)
        return self.output_tail

    async def wait_exited(self, within: float) -> int | None:
        """Wait up to ``within`` seconds for the process to end; its exit status or None."""
        return await self._child.wait_exited(within)

    # -- start -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start llama-server and return once it is healthy and ours. See the class docs."""
        if self._state is not ServerState.NEW:
            raise RuntimeError("LlamaServer.start() was already called")
        self._state = ServerState.STARTING
        began = time.monotonic()
        try:
            for attempt in range(1, self.spec.start_attempts + 1):
                await self._spawn()
                try:
                    await self._wait_healthy(began + self.spec.max_startup_time)
                except ServerStartError as exc:
                    if attempt < self.spec.start_attempts and _BIND_FAILED in exc.output_tail:
                        logger.info("llama-server could not bind port %s; retrying on a fresh port", self.port)
                        await self._reset()
                        continue
                    raise
                self._state = ServerState.RUNNING
                self._progress.set_stage("ready", "healthy")
                self._progress.report()
                logger.info(
                    "llama-server pid %d ready on port %d in %.2fs", self.pid, self.port, time.monotonic() - began
                )
                return
        except BaseException:
            await self.stop()
            raise

    async def _spawn(self) -> None:
        self.port = free_port()
        argv = [*self.spec.args, "--host", HOST, "--port", str(self.port)]
        self._progress.begin()
        try:
            pid = await self._child.spawn(
                self.spec.binary, argv, self.spec.environment(self._api_key), reaper.die_with_parent()
            )
        except OSError as exc:
            raise ServerStartError(f"could not run llama-server {self.spec.binary!r}: {exc}") from exc
        self._progress.begin(pid)
        logger.info("started llama-server pid %d on %s:%d", pid, HOST, self.port)
        logger.debug("llama-server argv: %s %s", self.spec.binary, " ".join(argv))
        self._wake.clear()
        self._child.output.on_line = self._on_startup_line
        self._client = LlamaServerClient(self.base_url, api_key=self._api_key, idle_timeout=self.spec.idle_timeout)

    async def _wait_healthy(self, hard_deadline: float) -> None:
        assert self._client is not None
        progress = self._progress
        startup_timeout = self.spec.startup_timeout
        last_status = "no answer yet"
        while True:
            if self._child.exited:
                raise await self._start_error("llama-server exited during start-up")
            progress.sample()
            progress.report()
            deadline = min(progress.last_activity + startup_timeout, hard_deadline)
            # A server that accepts but never answers must not outlast the deadline.
            limit = max(min(deadline - time.monotonic(), _HEALTH_REQUEST_TIMEOUT), 0.01)
            try:
                async with asyncio.timeout(limit):
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
                # A poll the deadline left only a sliver of time says nothing of the server
                # (a loaded machine can take that long to be refused): keep what the last says.
                if limit >= _SLIVER or last_status == "no answer yet":
                    last_status = "/health did not answer"
            now = time.monotonic()
            deadline = min(progress.last_activity + startup_timeout, hard_deadline)
            if now >= deadline:
                if now >= hard_deadline:
                    why = f"within max_startup_time={self.spec.max_startup_time:g}s"
                else:
                    why = f"within {startup_timeout:g}s of its last sign of progress"
                raise await self._start_error(f"llama-server did not become healthy {why} (last: {last_status})")
            # Sleep until the next poll, the process exiting, or a line that makes a poll worthwhile.
            await self._child.wait_for_exit_or(self._wake, min(self.spec.health_interval, deadline - now))
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
        if self.spec.model_path is not None and props.get("model_path") != self.spec.model_path:
            return f"the server on port {self.port} serves {props.get('model_path')!r}: it is not ours"
        self.props = props
        return None

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
        self._child = self._new_child()
        self.props = None

    def _new_child(self) -> ChildProcess:
        return ChildProcess("llama-server", self.spec.tail_lines, logger, self._on_exit)

    # -- output ----------------------------------------------------------------------------------

    def _on_startup_line(self, raw: bytes, line: str) -> None:
        """A line printed while starting: progress, and maybe a reason to poll /health now."""
        if self._progress.ready:
            self._child.output.on_line = None
        elif self._progress.on_line(raw, line):
            self._wake.set()

    def _on_exit(self, returncode: int) -> None:
        if self._state is ServerState.STARTING:
            # start() reports it, with the exit code and output, as a ServerStartError.
            logger.info("llama-server pid %s exited during start-up with code %s", self.pid, returncode)
        elif self._state is ServerState.RUNNING:
            self._state = ServerState.EXITED
            logger.warning("llama-server pid %s exited unexpectedly with code %s", self.pid, returncode)

    # -- stop ------------------------------------------------------------------------------------

    async def _terminate(self) -> None:
        """SIGTERM, bounded wait, SIGKILL, reap; the kill and the reap survive cancellation."""
        await self._child.terminate(self.spec.stop_timeout)

    async def _wait_idle(self, within: float) -> None:
        """Give slots whose clients just went away a moment to notice.

        llama-server does not exit on SIGTERM while a slot is still processing
        (it was seen waiting until SIGKILL), and a slot notices a closed
        connection only at its next token, so stop() waits, briefly and
        bounded, for every slot to be idle before sending SIGTERM.
        """
        if self._client is None or self.pid is None or self.returncode is not None:
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
        Called in a running event loop, it also schedules the rest of
        :meth:`stop` there (reap the process, close the HTTP client);
        elsewhere the client is left as it is. ``why`` starts the warning it
        logs. Use ``await stop()`` wherever you can.
        """
        if self._state in (ServerState.STOPPING, ServerState.STOPPED) or not self._child.stoppable:
            return  # (untracked: reaped already, by the exit hook or the loop; the pid may be reused)
        self._state = ServerState.STOPPING  # this exit is expected: _on_exit must not warn about it
        logger.warning("%s: stopping its llama-server pid %s", why, self.pid)
        self._child.stop_now()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._child.loop_of_exit() is loop:
            task = loop.create_task(self._finish_stop())
            _finishing.add(task)
            task.add_done_callback(_finishing.discard)

    async def stop(self) -> int | None:
        """Stop llama-server (see the class docs) and return its exit status. Idempotent."""
        if self._state in (ServerState.STOPPING, ServerState.STOPPED):
            return self.returncode
        self._state = ServerState.STOPPING
        try:
            await self._wait_idle(_IDLE_BEFORE_STOP)
        finally:
            await self._finish_stop()  # also when cancelled while waiting
        if self.pid is not None:
            logger.info("llama-server pid %d stopped (exit code %s)", self.pid, self.returncode)
        return self.returncode

    async def _finish_stop(self) -> None:
        """Terminate and reap the process, close the client: stop() after the idle wait."""
        try:
            await self._terminate()
        finally:
            if self._client is not None:
                with anyio.CancelScope(shield=True):
                    await self._client.aclose()
            self._state = ServerState.STOPPED

    async def __aenter__(self) -> LlamaServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _spec_settings(spec: ServerSpec) -> dict[str, object]:
    """The spec's fields other than binary and args, as LlamaServer's keyword arguments."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("binary", "args")}
