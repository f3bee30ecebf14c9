"""llama.cpp RPC workers: RpcWorker and `rocm-infer rpc-worker`, splitting the tiny model in the real llama-server."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rocm_infer
from rocm_infer.rpc import RPC_SERVER_NAMES, RPC_SERVER_PATH_ENV, RpcWorker, find_rpc_server
from rocm_infer.server import ServerState

PROMPT = "Once upon a time"
COMMAND = shutil.which("rocm-infer", path=os.path.dirname(sys.executable))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ignored_signals(pid: int) -> int:
    """The mask of signals process ``pid`` ignores (SigIgn in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))


# -- without a process ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7"])
def test_a_worker_refuses_an_address_other_than_loopback_unless_told(host: str) -> None:
    with pytest.raises(ValueError, match="no authentication"):
        RpcWorker(host=host)
    worker = RpcWorker(host=host, insecure_allow_remote=True, port=50052)
    assert worker.argv(50052)[:2] == ["--host", host]


def test_a_worker_checks_its_settings_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="IPv4 address"):
        RpcWorker(host="localhost")
    for port in (-1, 65536):
        with pytest.raises(ValueError, match="port"):
            RpcWorker(port=port)
    with pytest.raises(RuntimeError, match="start"):
        _ = RpcWorker().address
    worker = RpcWorker(devices="CPU,ROCm0", threads=3, cache=True)
    assert worker.argv(7) == [
        "--host",
        "127.0.0.1",
        "--port",
        "7",
        "--threads",
        "3",
        "--device",
        "CPU,ROCm0",
        "--cache",
    ]
    assert RpcWorker(port=9).address == "127.0.0.1:9"


def test_the_rpc_server_binary_is_found_next_to_llama_server(
    server_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RPC_SERVER_PATH_ENV, raising=False)
    found = find_rpc_server()
    assert os.path.dirname(found) == os.path.dirname(os.path.realpath(server_binary))
    assert os.path.basename(found) in RPC_SERVER_NAMES and os.access(found, os.X_OK)
    not_executable = tmp_path / "ggml-rpc-server"
    not_executable.write_text("")
    monkeypatch.setenv(RPC_SERVER_PATH_ENV, str(not_executable))
    with pytest.raises(rocm_infer.BinaryNotFoundError, match=RPC_SERVER_PATH_ENV):
        find_rpc_server()
    assert find_rpc_server(found) == found  # an explicit path wins over the variable


# -- against the real rpc-server and llama-server -------------------------------------------------


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_two_workers_hold_the_split_model_and_it_says_what_a_local_load_says(
    tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rocm_infer.load_model(tiny_model_path, context_len=512, threads=1) as local:
        expected = await local.generate(PROMPT, max_tokens=24).collect()
    caplog.set_level(logging.DEBUG, logger="rocm_infer.server")
    async with RpcWorker(threads=1) as w1, RpcWorker(threads=1) as w2:
        assert w1.running and w2.running and w1.address != w2.address
        # rpc-server replies with plain send(): a client gone mid-reply must not kill it with SIGPIPE.
        assert ignored_signals(w1.pid or 0) & (1 << (signal.SIGPIPE - 1))
        async with rocm_infer.load_model(
            tiny_model_path,
            context_len=512,
            threads=1,
            rpc_servers=[w1.address, w2.address],
            extra_args=["--verbosity", "4"],  # the load_tensors lines that say where each layer went
        ) as split:
            assert await split.generate(PROMPT, max_tokens=24).collect() == expected
        said = caplog.text
        # Both workers are devices that hold weights; nothing but the input embeddings stays on the CPU.
        assert "offloaded 3/3 layers to GPU" in said
        for worker in (w1, w2):
            assert f"[{worker.address}] model buffer size" in said
        assert "Accepted client connection" in w1.output_tail  # its banner and log, once it served a client
    assert w1.state is ServerState.STOPPED and not alive(w1.pid or 0) and not alive(w2.pid or 0)


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_a_worker_killed_mid_stream_makes_llama_server_abort_and_the_stream_say_so(
    tiny_model_path: Path,
) -> None:
    async with RpcWorker(threads=1) as w1, RpcWorker(threads=1) as w2:
        async with rocm_infer.load_model(
            tiny_model_path, context_len=8192, threads=1, rpc_servers=[w1.address, w2.address]
        ) as model:
            server = model.server
            assert server is not None
            stream = model.generate(PROMPT, max_tokens=4000, ignore_eos=True)
            received = 0
            with pytest.raises(rocm_infer.ServerExitedError) as raised:
                async for _ in stream:
                    received += 1
                    if received == 32:
                        os.kill(w2.pid or 0, signal.SIGKILL)
            # llama-server has no way to go on without a device: ggml aborts the whole process.
            assert 32 <= received < 4000
            assert raised.value.returncode == -signal.SIGABRT
            assert "Remote RPC server crashed" in raised.value.output_tail
            assert stream.finish_reason == "error" and isinstance(model.err, rocm_infer.ServerExitedError)
            with pytest.raises(rocm_infer.ServerExitedError):
                model.generate(PROMPT)
        assert w2.state is ServerState.EXITED and w2.returncode == -signal.SIGKILL
        assert w1.running  # the other worker outlives its client
    assert not alive(server.pid or 0) and not alive(w1.pid or 0)


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_llama_server_with_a_worker_that_is_not_there_fails_to_start(tiny_model_path: Path) -> None:
    async with RpcWorker(threads=1) as gone:
        address = gone.address
    with pytest.raises(rocm_infer.ServerStartError, match="exited during start-up") as raised:
        await rocm_infer.load_model(tiny_model_path, context_len=512, threads=1, rpc_servers=[address])
    assert f"Failed to connect to {address}" in raised.value.output_tail


async def test_a_port_someone_else_listens_on_is_not_mistaken_for_the_worker() -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        worker = RpcWorker(port=port, threads=1)
        started = time.monotonic()
        with pytest.raises(rocm_infer.ServerStartError, match="exited during start-up") as raised:
            await worker.start()
        # It said why, and was not fooled into waiting for the whole start-up timeout.
        assert "Failed to create server socket" in raised.value.output_tail
        assert time.monotonic() - started < 10
    assert worker.pid is not None and not alive(worker.pid) and worker.state is ServerState.STOPPED


async def test_cancelling_a_start_leaves_no_worker_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # The start may not finish on its own before the cancel arrives: it never sees its socket.
    monkeypatch.setattr(rocm_infer.rpc, "_listens_on", lambda pid, port: False)
    worker = RpcWorker(threads=1)
    task = asyncio.create_task(worker.start())
    while worker.pid is None:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)  # rpc-server runs and answers: start() is polling for its socket
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(worker.pid)


# -- the command line -------------------------------------------------------------------------------


def test_the_rpc_worker_command_serves_until_ctrl_c() -> None:
    assert COMMAND is not None
    process = subprocess.Popen(
        [COMMAND, "rpc-worker", "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        address = process.stdout.readline().strip()
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1", process.stderr.read()
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        note = process.stderr.readline()
        pid = int(note.split("rpc-server pid ")[1].split()[0])
        assert alive(pid) and f"rpc_servers=['{address}'" in note
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert not alive(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_the_rpc_worker_command_refuses_a_public_address_without_the_flag() -> None:
    assert COMMAND is not None
    result = subprocess.run(
        [COMMAND, "rpc-worker", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: rocm-infer rpc-worker")
    assert "no authentication" in result.stderr and "--insecure-allow-remote" in result.stderr
