"""Tests for rocm_infer.server.LlamaServer, the llama-server process supervisor.

Faults the real llama-server cannot be made to produce (ignoring SIGTERM, never
becoming healthy, losing the port race, flooding its output …) come from small
fake binaries: Python scripts written into ``tmp_path``. Every fake appends its
pid (and the port it was given) to ``runs.txt`` so a test can check how often it
ran and that every process it started is gone.

Each test checks what the SDK raised *and* that no process is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import keep_forever, llama_server_pids, patch_spawn

import rocm_infer.server as server_module
from rocm_infer.errors import APIError, ServerStartError
from rocm_infer.process import ChildProcess
from rocm_infer.server import HOST, LlamaServer
from rocm_infer.types import LoadProgress

# -- helpers ---------------------------------------------------------------------------------------

# Prelude of every fake: parse --host/--port like llama-server, record the run.
_PRELUDE = """\
import http.server, json, os, signal, sys, time
ARGV = sys.argv[1:]
HOST = ARGV[ARGV.index("--host") + 1]
PORT = int(ARGV[ARGV.index("--port") + 1])
RUNS = {runs!r}
with open(RUNS, "a") as f:
    f.write(f"{{os.getpid()}} {{PORT}}\\n")
RUN = sum(1 for _ in open(RUNS))  # 1 on the first run, 2 on the second …


def serve(status=lambda: 200, ready_line=None):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = status()
            body = {{"status": "ok"}} if code == 200 else {{"error": {{"code": code, "message": "Loading model",
                                                                        "type": "unavailable_error"}}}}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer((HOST, PORT), Health)  # listening from here on
    if ready_line:
        print(ready_line, flush=True)
    httpd.serve_forever()

"""

# A fake that starts at once and serves /health 200.
HEALTHY = "serve()\n"


def make_fake(tmp_path: Path, body: str, name: str = "fake-llama-server") -> str:
    """Write an executable fake llama-server running ``body`` after the prelude."""
    path = tmp_path / name
    runs = str(tmp_path / "runs.txt")
    path.write_text(f"#!{sys.executable}\n" + _PRELUDE.format(runs=runs) + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def runs(tmp_path: Path) -> list[tuple[int, int]]:
    """(pid, port) of every run of the fake so far."""
    file = tmp_path / "runs.txt"
    if not file.exists():
        return []
    return [(int(pid), int(port)) for pid, port in (line.split() for line in file.read_text().splitlines())]


def is_gone(pid: int) -> bool:
    """True if ``pid`` no longer exists (it has been reaped, not merely a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_gone(*pids: int | None) -> None:
    for pid in pids:
        assert pid is not None
        assert is_gone(pid), f"process {pid} is still there (state: {_proc_state(pid)})"


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then ppid, pgrp ...),
    or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _proc_state(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[0] if fields is not None else "gone"


def assert_all_runs_gone(tmp_path: Path) -> None:
    recorded = runs(tmp_path)
    assert recorded, "the fake never ran"
    assert_gone(*(pid for pid, _ in recorded))


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            if len(address) == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
            else:
                raw = bytes.fromhex(address)
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


async def wait_for_pid(server: LlamaServer) -> int:
    """Wait until ``server`` has spawned its process and return the pid."""
    for _ in range(500):
        if server.pid is not None:
            return server.pid
        await asyncio.sleep(0.01)
    raise AssertionError("the server process was never spawned")


# -- the real llama-server -------------------------------------------------------------------------


@pytest.fixture
def real_args(tiny_model_path: Path) -> list[str]:
    return ["--model", str(tiny_model_path), "--ctx-size", "2048"]


@pytest.mark.integration
async def test_real_server_lifecycle(
    server_binary: str, real_args: list[str], no_leaked_servers: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rocm_infer")
    server = LlamaServer(server_binary, real_args)
    key = server._api_key
    assert key and len(key) >= 32
    assert "not started" in repr(server)
    assert not server.running and server.pid is None and server.returncode is None
    assert await server.wait_exited(0.01) is None

    await server.start()
    try:
        assert server.running
        assert server.pid is not None and server.pid > 0
        assert server.pid in llama_server_pids(server_binary)
        assert server.returncode is None
        assert server.port is not None
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        # Bound on loopback only, never on all interfaces.
        assert listening_addresses(server.port) == {"127.0.0.1"}
        assert await server.client.health() == {"status": "ok"}
        props = await server.client.props()
        assert props["model_path"] == real_args[1]
        assert await server.wait_exited(0.05) is None  # still running

        # Without the key, the protected endpoints refuse; /health is public.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.base_url}/props") as response:
                assert response.status == 401
            async with session.get(f"{server.base_url}/props", headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            async with session.post(f"{server.base_url}/completion", json={"prompt": "hi", "n_predict": 1}) as r:
                assert r.status == 401
            async with session.get(f"{server.base_url}/health") as response:
                assert response.status == 200

        # An API error from the authenticated client does not leak the key either.
        with pytest.raises(APIError) as excinfo:
            await server.client.request_json("GET", "/no-such-endpoint")
        assert excinfo.value.status == 404
        assert key not in str(excinfo.value) and key not in repr(excinfo.value)

        assert f"pid={server.pid}" in repr(server)
        assert server.output_tail  # llama-server printed its start-up log
        for text in (repr(server), repr(server.client), server.output_tail):
            assert key not in text
    finally:
        code = await server.stop()

    pid = server.pid
    assert code is not None and code == server.returncode
    assert not server.running
    assert_gone(pid)
    assert "stopped" in repr(server)
    assert server.client.closed
    # Idempotent.
    assert await server.stop() == code
    assert await server.wait_exited(0.01) == code
    assert key not in caplog.text
    assert key not in repr(server) and key not in server.output_tail


@pytest.mark.integration
async def test_real_server_key_in_environment_not_cmdline(
    server_binary: str, real_args: list[str], no_leaked_servers: None
) -> None:
    async with LlamaServer(server_binary, real_args) as server:
        assert server.running
        key = server._api_key
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert key.encode() not in b" ".join(argv)
        assert b"--api-key" not in argv
        # The argv is the caller's args plus host and port, as separate arguments.
        assert [a.decode() for a in argv[1:] if a] == [*real_args, "--host", HOST, "--port", str(server.port)]
        with open(f"/proc/{server.pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert f"LLAMA_API_KEY={key}".encode() in environ
        pid = server.pid
    assert server.returncode is not None
    assert_gone(pid)


@pytest.mark.integration
async def test_real_server_env_is_the_whole_environment(
    server_binary: str, real_args: list[str], no_leaked_servers: None
) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ROCM_INFER_TEST_MARKER": "yes"}
    async with LlamaServer(server_binary, real_args, env=env) as server:
        with open(f"/proc/{server.pid}/environ", "rb") as f:
            environ = {e.partition(b"=")[0].decode() for e in f.read().split(b"\0") if e}
        assert environ == {"PATH", "ROCM_INFER_TEST_MARKER", "LLAMA_API_KEY"}
    assert env == {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ROCM_INFER_TEST_MARKER": "yes"}


@pytest.mark.integration
async def test_real_server_corrupt_gguf(server_binary: str, tmp_path: Path, no_leaked_servers: None) -> None:
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(64) + b"garbage" * 100)
    server = LlamaServer(server_binary, ["--model", str(bad), "--ctx-size", "2048"], startup_timeout=60)
    with pytest.raises(ServerStartError) as excinfo:
        await server.start()
    err = excinfo.value
    assert err.returncode is not None and err.returncode != 0
    assert "exited during start-up" in str(err)
    assert "failed to load model" in err.output_tail
    assert str(bad) in err.output_tail
    assert server._api_key not in str(err)
    assert not server.running
    assert_gone(server.pid)
    assert await server.stop() == err.returncode  # stopping again is harmless


@pytest.mark.integration
async def test_start_twice_is_an_error(server_binary: str, real_args: list[str], no_leaked_servers: None) -> None:
    async with LlamaServer(server_binary, real_args) as server:
        with pytest.raises(RuntimeError, match="already"):
            await server.start()
        assert server.running


# -- start-up failures (fake binaries) -------------------------------------------------------------


async def test_exits_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    binary = make_fake(
        tmp_path,
        """
        print("fake: reading the model", flush=True)
        print("fake: error: out of cheese", flush=True)
        sys.exit(3)
        """,
    )
    server = LlamaServer(binary, ["--model", "x.gguf"], startup_timeout=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerStartError) as excinfo:
        await server.start()
    assert loop.time() - started < 10  # failed fast, not at the 30 s deadline
    err = excinfo.value
    assert err.returncode == 3
    assert server.returncode == 3
    assert "exited during start-up" in str(err) and "exit code 3" in str(err)
    assert "fake: reading the model" in err.output_tail
    assert "fake: error: out of cheese" in err.output_tail
    assert "out of cheese" in str(err)  # the output is part of the message too
    assert server._api_key not in str(err)
    assert len(runs(tmp_path)) == 1  # not retried: not a bind failure
    assert not server.running
    assert_all_runs_gone(tmp_path)
    assert_gone(server.pid)
    # The error says it all: no warning of an "unexpected" exit on the side (a script would print it).
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_binary_that_cannot_run(tmp_path: Path) -> None:
    not_exec = tmp_path / "llama-server"
    not_exec.write_text("#!/bin/sh\n")  # no execute bit
    server = LlamaServer(str(not_exec), [])
    with pytest.raises(ServerStartError, match="could not run llama-server") as excinfo:
        await server.start()
    assert excinfo.value.returncode is None
    assert isinstance(excinfo.value.__cause__, OSError)
    assert server.pid is None and not server.running


async def start_until_timeout(tmp_path: Path, body: str) -> tuple[LlamaServer, ServerStartError]:
    """Start a fake that never gets healthy with startup_timeout=1; the server and its error."""
    server = LlamaServer(make_fake(tmp_path, body), [], startup_timeout=1, stop_timeout=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerStartError) as excinfo:
        await server.start()
    # Bounded by startup_timeout, not by anything slower (e.g. a 30 s request timeout).
    assert loop.time() - started < 10
    return server, excinfo.value


async def test_never_healthy_times_out(tmp_path: Path) -> None:
    server, err = await start_until_timeout(tmp_path, "print('loading forever', flush=True)\ntime.sleep(3600)\n")
    assert "did not become healthy within 1s of its last sign of progress" in str(err)
    assert "not accepting connections" in str(err)
    assert err.returncode == -signal.SIGTERM  # it was stopped by the supervisor
    assert "loading forever" in err.output_tail
    assert not server.running
    assert_all_runs_gone(tmp_path)


_ACCEPTS_BUT_NEVER_ANSWERS = """
import socket
listener = socket.socket()
listener.bind((HOST, PORT))
listener.listen(16)
held = []
while True:
    held.append(listener.accept()[0])  # read nothing, answer nothing
"""


async def test_health_that_never_answers_still_times_out(tmp_path: Path) -> None:
    _, err = await start_until_timeout(tmp_path, _ACCEPTS_BUT_NEVER_ANSWERS)
    assert "did not become healthy within 1s of its last sign of progress (last: /health did not answer)" in str(err)
    assert_all_runs_gone(tmp_path)


async def test_health_answers_error_status(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, "serve(lambda: 500)\n")
    server = LlamaServer(binary, [], startup_timeout=30)
    with pytest.raises(ServerStartError, match="/health answered") as excinfo:
        await server.start()
    assert isinstance(excinfo.value.__cause__, APIError)
    assert excinfo.value.__cause__.status == 500
    assert_all_runs_gone(tmp_path)


async def test_health_503_then_ok(tmp_path: Path) -> None:
    binary = make_fake(
        tmp_path,
        """
        COUNT = os.path.join(os.path.dirname(RUNS), "health.txt")

        def status():
            with open(COUNT, "a") as f:
                f.write("x")
            # Loading the model for the first few polls.
            return 503 if os.path.getsize(COUNT) <= 5 else 200

        serve(status)
        """,
    )
    server = LlamaServer(binary, [], startup_timeout=30, health_interval=0.05)
    await server.start()
    try:
        assert server.running
        assert len((tmp_path / "health.txt").read_text()) >= 6  # waited through the 503s
        assert await server.client.health() == {"status": "ok"}
    finally:
        await server.stop()
    assert len(runs(tmp_path)) == 1
    assert_all_runs_gone(tmp_path)


async def test_ready_line_triggers_health_check_at_once(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, "serve(ready_line='main: model loaded')\n")
    # A health interval far longer than the test: only the "model loaded" hint gets it polled again.
    server = LlamaServer(binary, [], startup_timeout=30, health_interval=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with server:
        assert server.running
    assert loop.time() - started < 10
    assert_all_runs_gone(tmp_path)


async def test_listening_at_is_when_the_listening_line_was_read(tmp_path: Path) -> None:
    line = "0.00.113.704 I srv  llama_server: listening on http://127.0.0.1:8080"
    binary = make_fake(tmp_path, f"serve(ready_line={line!r})\n")
    server = LlamaServer(binary, [], startup_timeout=30)
    assert server.listening_at is None
    began = time.monotonic()
    async with server:
        # Start-up may finish before the line is read (the drain reads it all the same).
        while server.listening_at is None:
            await asyncio.sleep(0.01)
        assert began <= server.listening_at <= time.monotonic()
    silent = LlamaServer(make_fake(tmp_path, HEALTHY, name="silent"), [], startup_timeout=30)
    async with silent:
        await asyncio.sleep(0.05)
        assert silent.listening_at is None


# -- port races ------------------------------------------------------------------------------------

_BIND_FAILS = """
print("main: loading model", flush=True)
print(f"couldn't bind HTTP server socket, hostname: {HOST}, port: {PORT}", flush=True)
sys.exit(1)
"""


async def test_bind_failure_is_retried_on_a_fresh_port(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, f"if RUN == 1:\n{textwrap.indent(_BIND_FAILS, '    ')}\nserve()\n")
    server = LlamaServer(binary, [], startup_timeout=30)
    await server.start()
    try:
        assert server.running
        recorded = runs(tmp_path)
        assert len(recorded) == 2
        (first_pid, _first_port), (second_pid, second_port) = recorded
        assert server.pid == second_pid
        assert server.port == second_port
        assert_gone(first_pid)
        assert await server.client.health() == {"status": "ok"}
        assert "couldn't bind" not in server.output_tail  # the tail is the current process's
    finally:
        await server.stop()
    assert_all_runs_gone(tmp_path)


async def test_bind_failure_every_time(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, _BIND_FAILS)
    server = LlamaServer(binary, [], startup_timeout=30, start_attempts=3)
    with pytest.raises(ServerStartError) as excinfo:
        await server.start()
    err = excinfo.value
    assert err.returncode == 1
    assert "couldn't bind HTTP server socket" in err.output_tail
    assert f"port: {server.port}" in err.output_tail
    assert len(runs(tmp_path)) == 3
    assert not server.running
    assert_all_runs_gone(tmp_path)


# -- output ----------------------------------------------------------------------------------------


async def test_large_output_is_drained_and_tail_is_bounded(tmp_path: Path) -> None:
    binary = make_fake(
        tmp_path,
        """
        out = sys.stdout.buffer
        for i in range(80_000):  # ~4 MB of lines
            out.write(b"log line %06d " % i + b"." * 32 + b"\\n")
        out.write(b"x" * 1_000_000)  # one 1 MB line without a newline
        out.write(b"\\n\\xff\\xfe invalid utf-8 \\r\\n")
        out.write(b"last line before serving\\n")
        out.flush()
        serve()
        """,
    )
    server = LlamaServer(binary, [], startup_timeout=60, tail_lines=10)
    await server.start()  # would hang forever if nobody read the pipe
    try:
        assert server.running
        # The drain task reads concurrently with the health check: let it catch up.
        for _ in range(200):
            if "last line before serving" in server.output_tail:
                break
            await asyncio.sleep(0.05)
        tail = server.output_tail
        lines = tail.split("\n")
        assert len(lines) <= 10
        assert len(tail) <= 10 * 65536 + 10
        assert lines[-1] == "last line before serving"
        assert "\ufffd" in tail  # undecodable bytes are replaced, not fatal
        assert "\r" not in tail
    finally:
        await server.stop()
    assert_all_runs_gone(tmp_path)


async def test_output_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, "for i in range(50):\n    print(f'line {i}', flush=True)\nsys.exit(2)\n")
    server = LlamaServer(binary, [], tail_lines=5)
    with pytest.raises(ServerStartError) as excinfo:
        await server.start()
    assert excinfo.value.output_tail.split("\n") == [f"line {i}" for i in range(45, 50)]
    assert excinfo.value.returncode == 2
    assert_all_runs_gone(tmp_path)


# -- stopping --------------------------------------------------------------------------------------

_IGNORES_SIGTERM = """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
serve()
"""


async def test_sigterm_ignored_is_killed(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, _IGNORES_SIGTERM)
    server = LlamaServer(binary, [], startup_timeout=30, stop_timeout=0.5)
    await server.start()
    assert server.running
    pid = server.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.ensure_future(server.stop())
    try:
        # Bounded here, not by the test timeout: a stop() that never escalates waits forever.
        await asyncio.wait({stopping}, timeout=10)
        assert stopping.done(), "stop() did not end a process that ignores SIGTERM"
    finally:
        if not stopping.done():
            os.kill(pid, signal.SIGKILL)
            await stopping
    code = stopping.result()
    assert 0.4 < loop.time() - started < 5
    assert code == -signal.SIGKILL
    assert server.returncode == -signal.SIGKILL
    assert not server.running
    assert_gone(pid)
    assert await server.stop() == -signal.SIGKILL


async def test_sigterm_honoured_is_not_killed(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, HEALTHY)
    server = LlamaServer(binary, [], startup_timeout=30, stop_timeout=10)
    await server.start()
    pid = server.pid
    assert await server.stop() == -signal.SIGTERM
    assert_gone(pid)


async def test_stop_before_start(tmp_path: Path) -> None:
    server = LlamaServer(make_fake(tmp_path, HEALTHY), [])
    assert await server.stop() is None
    assert await server.stop() is None
    assert runs(tmp_path) == []


# -- cancellation ----------------------------------------------------------------------------------


async def cancel_start(
    tmp_path: Path, body: str, stop_timeout: float, *, after_line: str | None = None
) -> tuple[LlamaServer, int]:
    """Start a fake that never gets healthy, cancel start() while it waits (once it has printed
    ``after_line``, if given); the server and its pid."""
    server = LlamaServer(make_fake(tmp_path, body), [], startup_timeout=60, stop_timeout=stop_timeout)
    task = asyncio.create_task(server.start())
    pid = await wait_for_pid(server)
    await asyncio.sleep(0.3)
    for _ in range(1000):
        if after_line is None or after_line in server.output_tail:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return server, pid


async def test_cancel_start(tmp_path: Path) -> None:
    server, pid = await cancel_start(tmp_path, "time.sleep(3600)\n", stop_timeout=2)
    assert not server.running
    assert server.returncode is not None
    assert_gone(pid)
    assert_all_runs_gone(tmp_path)


async def test_cancel_start_of_process_ignoring_sigterm(tmp_path: Path) -> None:
    body = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring SIGTERM', flush=True)\ntime.sleep(3600)\n"
    # Cancelled before the fake has set its handler (a slow interpreter start), SIGTERM would end it.
    server, pid = await cancel_start(tmp_path, body, stop_timeout=0.3, after_line="ignoring SIGTERM")
    assert server.returncode == -signal.SIGKILL
    assert_gone(pid)


async def test_cancel_stop_still_kills_and_reaps(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, _IGNORES_SIGTERM)
    server = LlamaServer(binary, [], startup_timeout=30, stop_timeout=30)
    await server.start()
    pid = server.pid
    task = asyncio.create_task(server.stop())
    await asyncio.sleep(0.3)  # stop() has sent SIGTERM and waits up to 30 s for an exit
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancelling the wait did not leave the process behind: it was killed and reaped.
    assert server.returncode == -signal.SIGKILL
    assert_gone(pid)
    assert server.client.closed
    assert await server.stop() == -signal.SIGKILL


def assert_dead(pid: int) -> None:
    """``pid`` has ended: gone, or a zombie its new parent has yet to reap (for an orphaned grandchild)."""
    state = _proc_state(pid)
    assert state in ("gone", "Z"), f"process {pid} is still running (state: {state})"


def running_in_group(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that are still running (not ended, nor zombies)."""
    found = []
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _fork_a_grandchild() -> None:
    """A preexec_fn: fork a process that sleeps for ten minutes holding the child's output pipe.
    It exists before the spawn returns, and it is in the child's process group."""
    if os.fork() == 0:
        os.closerange(3, 1 << 16)  # all but the output pipe (the spawn waits for its exec pipe to close)
        os.execv("/bin/sleep", ["sleep", "600"])


async def test_a_spawn_cancelled_while_the_pipes_connect_is_stopped_not_left_hanging() -> None:
    # Cancelled inside create_subprocess_exec, asyncio itself SIGKILLs the child and waits for its pipes,
    # which the grandchild holds for ten minutes. ChildProcess lets the spawn finish instead.
    child = ChildProcess("fake", 10, logging.getLogger("test"))
    task = asyncio.create_task(child.spawn("/bin/sleep", ["600"], dict(os.environ), _fork_a_grandchild))
    await asyncio.sleep(0)  # the spawn has begun
    task.cancel()
    async with asyncio.timeout(20):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert child.pid is not None and child.stoppable  # started, ours, and still running
    pid = child.pid
    async with asyncio.timeout(20):
        await child.terminate(stop_timeout=5)
    assert child.returncode == -signal.SIGTERM
    assert_gone(pid)
    assert running_in_group(pid) == []  # the grandchild went with it


async def test_stopping_a_wrapper_script_stops_what_it_started(tmp_path: Path) -> None:
    # A wrapper that runs the real program without exec: SIGTERM to the script alone would leave the
    # program running, holding the output pipe (and asyncio waiting for it).
    started = tmp_path / "started"
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {started}\nwait\n")
    wrapper.chmod(0o755)
    server = LlamaServer(str(wrapper), [], startup_timeout=60, stop_timeout=5)
    task = asyncio.create_task(server.start())
    for _ in range(1000):
        if started.exists() and started.read_text().strip():
            break
        await asyncio.sleep(0.01)
    program = int(started.read_text())
    task.cancel()
    async with asyncio.timeout(20):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.returncode == -signal.SIGTERM  # the script went at SIGTERM, not SIGKILL
    assert_gone(server.pid)
    assert_dead(program)


async def test_async_with_stops_on_error(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, HEALTHY)
    with pytest.raises(ZeroDivisionError):
        async with LlamaServer(binary, [], startup_timeout=30) as server:
            pid = server.pid
            1 / 0  # noqa: B018
    assert server.returncode is not None
    assert_gone(pid)


# -- SIGKILL where nothing can be awaited: the exit hook, stop_now(), close() from another loop ---

# Ignores SIGTERM, and answers /health and /props (naming the --model it was given), so that
# load_model takes it for its llama-server. Only a SIGKILL ends it.
_STUBBORN = """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
MODEL = ARGV[ARGV.index("--model") + 1] if "--model" in ARGV else None


class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = {"status": "ok"}
        else:
            body = {"model_path": MODEL, "total_slots": 1, "default_generation_settings": {"n_ctx": 512}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


http.server.HTTPServer((HOST, PORT), Api).serve_forever()
"""

_STATE = """
def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, as a user's script does; its output, whatever it exits with."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)


def kill_leftovers(tmp_path: Path) -> None:
    """SIGKILL every run of the fake still alive: a failed test must not leave one behind."""
    for pid, _ in runs(tmp_path):
        if not is_gone(pid) and _proc_state(pid) != "Z":
            os.kill(pid, signal.SIGKILL)


# The model is never closed and can never be collected, and the parent-death signal is off:
# when the interpreter exits, only the exit hook can stop the server, and only its SIGKILL can.
_EXITS_WITH_A_STUBBORN_SERVER = (
    patch_spawn(parent_death_signal=False)
    + f"""
import asyncio, sys
import rocm_infer


async def main():
    model = await rocm_infer.load_model(sys.argv[1], server_path=sys.argv[2])
    print(model.server.pid, flush=True)
    {keep_forever("model")}


asyncio.run(main())
"""
)


def test_the_exit_hook_kills_a_server_that_ignores_sigterm(tmp_path: Path, tiny_model_path: Path) -> None:
    binary = make_fake(tmp_path, _STUBBORN)
    try:
        result = run_python(_EXITS_WITH_A_STUBBORN_SERVER, str(tiny_model_path), binary)
        assert result.returncode == 0, result.stderr
        pid = int(result.stdout)
        assert [p for p, _ in runs(tmp_path)] == [pid]
        assert f"stopping llama-server pid(s) [{pid}] at exit" in result.stderr
        # Gone and reaped as the interpreter exited: SIGTERM was ignored, the SIGKILL a second later was not.
        assert_gone(pid)
    finally:
        kill_leftovers(tmp_path)


async def test_stop_now_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    # stop_timeout=30: the stop() that stop_now() schedules cannot be what kills it within this test.
    server = LlamaServer(make_fake(tmp_path, _STUBBORN), [], startup_timeout=30, stop_timeout=30)
    await server.start()  # healthy: the fake set its SIGTERM handler before it listened
    pid = server.pid
    assert pid is not None
    try:
        began = time.monotonic()
        server.stop_now("a test stops it now")
        # Dead as stop_now() returns (left for asyncio's child watcher to reap).
        assert _proc_state(pid) in ("Z", "gone")
        assert time.monotonic() - began < 5
        assert await server.wait_exited(10) == -signal.SIGKILL
        assert_gone(pid)
    finally:
        kill_leftovers(tmp_path)
        await server.stop()


_CLOSED_FROM_ANOTHER_LOOP = (
    _STATE
    + """
import asyncio, sys
import rocm_infer

model = asyncio.run(rocm_infer.load_model(sys.argv[1], server_path=sys.argv[2]))  # a loop that then closes
pid = model.server.pid
asyncio.run(model.close())  # from another loop: signals and a bounded wait, no HTTP
print(pid, state(pid), flush=True)
"""
)


def test_a_model_closed_from_another_loop_kills_a_server_that_ignores_sigterm(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    binary = make_fake(tmp_path, _STUBBORN)
    try:
        result = run_python(_CLOSED_FROM_ANOTHER_LOOP, str(tiny_model_path), binary)
        assert result.returncode == 0, result.stderr
        pid, state = result.stdout.split()
        assert [p for p, _ in runs(tmp_path)] == [int(pid)]
        assert "a model was closed from another event loop" in result.stderr
        assert state in ("Z", "gone"), f"still running (state {state}) after close() returned"
        assert_gone(int(pid))
    finally:
        kill_leftovers(tmp_path)


# -- exit watching ---------------------------------------------------------------------------------


async def test_wait_exited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    binary = make_fake(tmp_path, HEALTHY)
    server = LlamaServer(binary, [], startup_timeout=30)
    assert await server.wait_exited(0.01) is None  # not started
    await server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert await server.wait_exited(0.1) is None  # still running
        assert await server.wait_exited(0) is None
        os.kill(pid, signal.SIGKILL)
        assert await server.wait_exited(10) == -signal.SIGKILL
        assert server.returncode == -signal.SIGKILL
        assert not server.running
        assert_gone(pid)
        assert "exited unexpectedly" in caplog.text
    finally:
        code = await server.stop()
    assert code == -signal.SIGKILL


async def test_wait_exited_is_not_cancelled_by_its_timeout(tmp_path: Path) -> None:
    """A wait that times out must not cancel the underlying exit watch."""
    binary = make_fake(tmp_path, HEALTHY)
    async with LlamaServer(binary, [], startup_timeout=30) as server:
        for _ in range(3):
            assert await server.wait_exited(0.01) is None
        assert server.running
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert await server.wait_exited(10) == -signal.SIGKILL
    assert_gone(pid)


# -- start-up progress: a stall timeout with a hard cap --------------------------------------------

_PRINTS_PROGRESS_THEN_SERVES = """
for i in range(12):
    print(f"load_tensors: step {i}", flush=True)
    time.sleep(0.2)
serve()
"""


async def test_a_slow_start_that_prints_progress_is_not_killed(tmp_path: Path) -> None:
    # 2.4 s of start-up against startup_timeout=1: a fixed timeout would have killed it.
    server = LlamaServer(make_fake(tmp_path, _PRINTS_PROGRESS_THEN_SERVES), [], startup_timeout=1)
    async with server:
        assert server.running
    assert_all_runs_gone(tmp_path)


_WORKS_SILENTLY_THEN_SERVES = """
end = time.monotonic() + 2.5
while time.monotonic() < end:
    pass  # busy (its CPU time moves in /proc) but printing nothing
serve()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="activity is read from /proc")
async def test_a_silent_start_that_keeps_working_is_not_killed(tmp_path: Path) -> None:
    server = LlamaServer(make_fake(tmp_path, _WORKS_SILENTLY_THEN_SERVES), [], startup_timeout=1)
    async with server:
        assert server.running
    assert_all_runs_gone(tmp_path)


async def test_max_startup_time_caps_a_start_that_never_ends(tmp_path: Path) -> None:
    body = "while True:\n    print('load_tensors: still going', flush=True)\n    time.sleep(0.2)\n"
    server = LlamaServer(make_fake(tmp_path, body), [], startup_timeout=1, max_startup_time=2, stop_timeout=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerStartError) as excinfo:
        await server.start()
    # Past the 1 s stall timeout (progress kept it alive), stopped by the 2 s cap.
    assert 2 <= loop.time() - started < 15
    assert "did not become healthy within max_startup_time=2s" in str(excinfo.value)
    assert "still going" in excinfo.value.output_tail
    assert excinfo.value.returncode == -signal.SIGTERM
    assert_all_runs_gone(tmp_path)


_READS_ITS_MODEL = """
print("0.00.004.392 I srv    load_model: loading model 'weights'", flush=True)
with open(ARGV[ARGV.index("--model") + 1], "rb") as f:
    while f.read(1 << 20):
        time.sleep(0.02)
print("0.00.005.000 I llama_context: constructing llama_context", flush=True)
serve(ready_line="main: model loaded")
"""

_STAGES = ["starting", "loading", "initializing", "ready"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fraction is read from /proc")
async def test_on_progress_reports_stages_and_the_fraction_of_the_model_read(tmp_path: Path) -> None:
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"\0" * (40 << 20))  # 40 reads of 1 MiB, 20 ms apart
    seen: list[LoadProgress] = []
    server = LlamaServer(
        make_fake(tmp_path, _READS_ITS_MODEL),
        ["--model", str(weights)],
        startup_timeout=30,
        model_size=weights.stat().st_size,
        on_progress=seen.append,
    )
    async with server:
        pass
    stages = [p.stage for p in seen]
    assert stages[0] == "starting" and stages[-1] == "ready"
    assert [_STAGES.index(s) for s in stages] == sorted(_STAGES.index(s) for s in stages)
    loading = [p for p in seen if p.stage == "loading"]
    assert loading and loading[0].message == "load_model: loading model 'weights'"
    fractions = [p.fraction for p in loading]
    assert all(f is not None and 0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions)  # type: ignore[type-var]
    assert len(set(fractions)) >= 3, fractions  # it moved while the file was read
    assert seen[-1].fraction == 1.0
    assert [p.elapsed for p in seen] == sorted(p.elapsed for p in seen)
    assert_all_runs_gone(tmp_path)


async def test_an_exception_in_on_progress_fails_the_start_and_stops_the_server(tmp_path: Path) -> None:
    def broken(progress: LoadProgress) -> None:
        raise RuntimeError("the progress bar broke")

    server = LlamaServer(make_fake(tmp_path, HEALTHY), [], startup_timeout=30, on_progress=broken)
    with pytest.raises(RuntimeError, match="progress bar broke"):
        await server.start()
    assert not server.running
    assert_gone(server.pid)  # it may not even have got as far as recording its run


# -- the server that answers must be ours ----------------------------------------------------------


class Stranger:
    """Someone else's server that holds a port: healthy, with its own model."""

    def __init__(self, props_status: int) -> None:
        self.props_status = props_status
        self.requests: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.path == "/props" and self.props_status == 200:
            return web.json_response({"model_path": "/someone/else.gguf", "total_slots": 1})
        if self.props_status == 403:  # a key it knows of, but may not use (a proxy's rule, say)
            forbidden = {"error": {"code": 403, "message": "Forbidden", "type": "permission_error"}}
            return web.json_response(forbidden, status=403)
        return web.json_response({"error": {"code": 401, "message": "Invalid API Key"}}, status=401)


@pytest.mark.parametrize("props_status", [200, 401, 403], ids=["other-model", "other-key", "key-forbidden"])
async def test_a_strangers_server_on_our_port_is_never_taken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, props_status: int
) -> None:
    stranger = Stranger(props_status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stranger.handle)
    site = TestServer(app, host=HOST, port=0)
    await site.start_server()
    try:
        assert site.port is not None
        monkeypatch.setattr(server_module, "free_port", lambda host=HOST: site.port)
        # Our process never binds (as when it lost the port race and is slow to exit).
        binary = make_fake(tmp_path, "time.sleep(3600)\n")
        # A stall timeout of 2 s: a loaded machine may take most of a second to start the fake.
        server = LlamaServer(binary, [], startup_timeout=2, stop_timeout=2, model_path="/ours.gguf")
        with pytest.raises(ServerStartError) as excinfo:
            await server.start()
    finally:
        await site.close()
    assert "it is not ours" in str(excinfo.value)
    assert server.props is None
    assert set(stranger.requests) == {"GET /health", "GET /props"}  # nothing was ever sent to it
    assert_all_runs_gone(tmp_path)


async def test_a_server_that_names_our_model_is_accepted_and_its_props_kept(tmp_path: Path) -> None:
    body = """
    import http.server
    class Props(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps({"status": "ok", "model_path": "/ours.gguf"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    http.server.HTTPServer((HOST, PORT), Props).serve_forever()
    """
    async with LlamaServer(make_fake(tmp_path, body), [], startup_timeout=30, model_path="/ours.gguf") as server:
        assert server.props is not None and server.props["model_path"] == "/ours.gguf"
    assert_all_runs_gone(tmp_path)
