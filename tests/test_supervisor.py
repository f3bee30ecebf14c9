"""The supervisor against the real llama-server: every call through one place that restarts
and translates, streams that read from the live server, a close that survives a second
cancellation, and a child environment the user's shell does not change."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest

import rocm_infer
from rocm_infer import ServerExitedError
from rocm_infer.server import ServerState
from rocm_infer.supervisor import ModelState

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie is not running: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_environment(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


async def test_a_stream_made_before_a_restart_reads_from_the_new_server(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    async with rocm_infer.load_model(tiny_model_path, restart=True) as model:
        assert model.server is not None and model.server.pid is not None
        early = model.generate("once upon a time", max_tokens=4, ignore_eos=True)  # made while healthy
        first_pid = model.server.pid
        os.kill(first_pid, signal.SIGKILL)
        assert await model.server.wait_exited(10) == -signal.SIGKILL
        assert await model.tokenize("hello")  # another call restarts it
        assert model.restarts == 1 and model.server.pid != first_pid
        # The early stream was never iterated: it goes to the live server, not the dead one's client.
        tokens = [t async for t in early]
        assert len(tokens) == 4 and early.finish_reason == "length" and early.error is None
        assert model.err is None and model.restarts == 1


async def test_a_stream_made_before_a_crash_restarts_the_server_itself(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    async with rocm_infer.load_model(tiny_model_path, restart=True) as model:
        assert model.server is not None and model.server.pid is not None
        early = model.generate("hello", max_tokens=3, ignore_eos=True)
        os.kill(model.server.pid, signal.SIGKILL)
        await model.server.wait_exited(10)
        result = await early  # its first read finds the server dead: the policy restarts it
        assert result.finish_reason == "length" and len(result.tokens) == 3
        assert model.restarts == 1


async def stopped(pid: int) -> None:
    """Until every thread of ``pid`` is stopped (SIGSTOP is delivered to each thread on its own)."""
    deadline = time.monotonic() + 10
    while any(
        Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
        for tid in os.listdir(f"/proc/{pid}/task")
    ):
        assert time.monotonic() < deadline, f"llama-server {pid} did not stop"
        await asyncio.sleep(0.01)


async def test_a_request_the_server_dies_under_is_a_server_exited_error(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    # tokenize and detokenize go through the same funnel as streams: a connection that
    # breaks because the server died is its death, not a connection error.
    async with rocm_infer.load_model(tiny_model_path) as model:
        assert model.server is not None and model.server.pid is not None
        pid = model.server.pid
        os.kill(pid, signal.SIGSTOP)  # the request is sent and waits for an answer
        await stopped(pid)
        call = asyncio.create_task(model.tokenize("the cat sat on the mat"))
        await asyncio.sleep(0.2)
        assert not call.done()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ServerExitedError) as info:
            await call
        assert info.value.returncode == -signal.SIGKILL
        assert model.err is info.value
        with pytest.raises(ServerExitedError) as again:
            await model.detokenize([1, 2])
        assert again.value is info.value


async def test_a_close_cancelled_twice_still_stops_and_reaps_the_server(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    model = await rocm_infer.load_model(tiny_model_path)
    assert model.server is not None and model.server.pid is not None
    pid = model.server.pid
    # A stream keeps a slot busy, so close() spends its time in the stop's idle wait and SIGTERM.
    stream = model.generate("tell me a story", max_tokens=100_000, ignore_eos=True)
    await stream.__anext__()
    closing = asyncio.create_task(model.close())
    while model.server.state is not ServerState.STOPPING:
        await asyncio.sleep(0)
    closing.cancel()  # as Starlette and asyncio.timeout do: a native cancel, and then another
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert model.closed and model.server.returncode is not None
    assert not alive(pid), "the server outlived a twice-cancelled close()"
    assert model.server.state is ServerState.STOPPED
    assert stream.finish_reason == "error"


async def test_inherited_llama_arg_variables_are_not_passed_to_llama_server(
    tiny_model_path: Path, no_leaked_servers: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # llama-server reads LLAMA_ARG_* as command-line arguments: these would set 1 slot and rename the model.
    monkeypatch.setenv("LLAMA_ARG_N_PARALLEL", "1")
    monkeypatch.setenv("LLAMA_ARG_ALIAS", "from-the-shell")
    monkeypatch.setenv("LLAMA_API_KEY", "the-users-own-key")
    with caplog.at_level(logging.INFO, logger="rocm_infer.server"):
        async with rocm_infer.load_model(tiny_model_path) as model:
            assert model.server is not None and model.server.pid is not None
            env = child_environment(model.server.pid)
            props = await model.client.props()
    assert "LLAMA_ARG_N_PARALLEL" not in env and "LLAMA_ARG_ALIAS" not in env
    assert env["LLAMA_API_KEY"] != "the-users-own-key"  # the supervisor's own key
    assert model.info.parallel_slots == props["total_slots"] != 1
    assert props.get("model_alias") != "from-the-shell"
    dropped = [r.getMessage() for r in caplog.records if "not passing" in r.getMessage()]
    assert dropped and "LLAMA_ARG_ALIAS" in dropped[0] and "LLAMA_ARG_N_PARALLEL" in dropped[0]
    assert "from-the-shell" not in dropped[0] and "the-users-own-key" not in dropped[0]  # names, never values


async def test_llama_arg_variables_set_on_purpose_reach_llama_server(
    tiny_model_path: Path, no_leaked_servers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_ARG_ALIAS", "from-the-shell")
    async with rocm_infer.load_model(
        tiny_model_path, env={"LLAMA_ARG_N_PARALLEL": "2", "LLAMA_ARG_ALIAS": "on-purpose"}
    ) as model:
        props = await model.client.props()
        assert model.info.parallel_slots == 2 == props["total_slots"]
        assert props.get("model_alias") == "on-purpose"


async def test_the_models_state_and_err_say_what_the_supervisor_knows(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    model = await rocm_infer.load_model(tiny_model_path)
    try:
        assert model._supervisor.state is ModelState.OPEN and model.err is None
        assert model.server is not None and model.server.pid is not None
        os.kill(model.server.pid, signal.SIGKILL)
        await model.server.wait_exited(10)
        assert model._supervisor.state is ModelState.DEAD
        assert isinstance(model.err, ServerExitedError) and "dead" in repr(model)
    finally:
        await model.close()
    assert model._supervisor.state is ModelState.CLOSED
    assert isinstance(model.err, rocm_infer.ModelClosedError) and "closed" in repr(model)
