"""Faults against the real llama-server: crashes (with and without a restart policy), a
stranger's server on our port, and files written where nobody asked.

docs/reliability.md lists every fault the SDK survives and the test that proves it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import keep_forever, patch_spawn

import rocm_infer
import rocm_infer.server as server_module
from rocm_infer import RestartPolicy, ServerExitedError, TextModel

pytestmark = pytest.mark.integration

LONG = {"max_tokens": 6000, "ignore_eos": True}
# Under this address-space limit llama-server runs the tiny model with its default context, but
# its KV cache for a million-token context (about 490 MB) cannot be allocated.
MEMORY_LIMIT_KIB = 400_000
TOO_BIG_CONTEXT = 1_000_000


async def kill_mid_stream(model: TextModel) -> tuple[ServerExitedError, float]:
    """SIGKILL the server while a stream is running; the error and how long it took to arrive."""
    assert model.server is not None and model.server.pid is not None
    pid = model.server.pid
    killed_at = 0.0
    with pytest.raises(ServerExitedError) as info:
        count = 0
        async for _ in model.generate("tell me a story", **LONG):
            count += 1
            if count == 3:
                killed_at = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
    return info.value, time.perf_counter() - killed_at


async def kill_idle(model: TextModel) -> None:
    assert model.server is not None and model.server.pid is not None
    os.kill(model.server.pid, signal.SIGKILL)
    assert await model.server.wait_exited(10) == -signal.SIGKILL


def every_call(model: TextModel) -> list[Callable[[], Awaitable[Any]]]:
    """One call of each kind a user makes."""
    return [
        lambda: model.generate("x", max_tokens=2).collect(),
        lambda: model.chat([{"role": "user", "content": "hi"}], max_tokens=2).collect(),
        lambda: model.tokenize("hello"),
        lambda: model.detokenize([5, 6]),
        lambda: model.batch_generate(["a", "b"], max_tokens=2),
        lambda: model.classify(["a"]),
    ]


async def test_killed_mid_stream_raises_server_exited_and_every_later_call_too(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    async with rocm_infer.load_model(tiny_model_path) as model:
        err, elapsed = await kill_mid_stream(model)
        assert elapsed < 1.0, f"ServerExitedError took {elapsed:.2f}s"
        assert err.returncode == -signal.SIGKILL
        assert "model loaded" in err.output_tail  # llama-server's own last lines
        assert model.err is err
        for call in every_call(model):
            with pytest.raises(ServerExitedError) as again:
                await call()
            assert again.value is err
        assert model.restarts == 0


async def test_restart_policy_starts_the_server_again_within_its_limit(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    policy = RestartPolicy(max_restarts=2, window=600)
    async with rocm_infer.load_model(tiny_model_path, restart=policy) as model:
        assert model.server is not None
        first_pid, first_key = model.server.pid, model.server._api_key

        # The stream that was running is not retried: it raises the crash.
        err, _ = await kill_mid_stream(model)
        assert model.err is err

        # The next call starts llama-server again and goes on.
        stream = model.generate("hello", max_tokens=5, ignore_eos=True)
        assert len([t async for t in stream]) == 5
        assert model.restarts == 1 and model.err is None
        assert model.server.pid not in (None, first_pid) and model.server.running
        assert model.server._api_key != first_key  # a fresh key for every process

        # A crash while idle: the next (non-streaming) call restarts it too.
        await kill_idle(model)
        assert await model.tokenize("hello")
        assert model.restarts == 2

        # Past the limit the crash is final, as without a policy.
        await kill_idle(model)
        for call in every_call(model):
            with pytest.raises(ServerExitedError):
                await call()
        assert model.restarts == 2


async def test_concurrent_calls_after_a_crash_share_one_restart(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, restart=True, parallel_slots=4) as model:
        await kill_idle(model)
        texts = await asyncio.gather(*(model.generate(f"p{i}", max_tokens=3).collect() for i in range(8)))
        assert len(texts) == 8 and all(texts)
        assert model.restarts == 1


async def test_a_failed_restart_raises_its_start_error_and_leaves_nothing(
    tiny_model_path: Path, tmp_path: Path, no_leaked_servers: None
) -> None:
    model_copy = tmp_path / "model.gguf"
    model_copy.write_bytes(tiny_model_path.read_bytes())
    async with rocm_infer.load_model(model_copy, restart=True) as model:
        model_copy.write_bytes(b"GGUF" + b"\0" * 64)  # corrupt it under the running server
        await kill_idle(model)
        with pytest.raises(rocm_infer.ServerStartError) as info:
            await model.tokenize("x")
        assert info.value.returncode not in (None, 0)
        assert model.err is info.value


class Stranger:
    """Someone else's llama-server-like server holding a port: healthy, another model, any key."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        return web.json_response({"model_path": "/someone/else.gguf", "total_slots": 1})


async def test_a_port_taken_by_a_stranger_is_retried_and_the_stranger_never_used(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, no_leaked_servers: None
) -> None:
    stranger = Stranger()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stranger.handle)
    site = TestServer(app, host="127.0.0.1", port=0)
    await site.start_server()
    real_free_port = server_module.free_port
    handed_out: list[int] = []

    def taken_first(host: str = server_module.HOST) -> int:
        # The first port "chosen" is the stranger's, as if it had bound it right after we chose it.
        port = real_free_port(host) if handed_out else site.port
        assert port is not None
        handed_out.append(port)
        return port

    monkeypatch.setattr(server_module, "free_port", taken_first)
    try:
        async with rocm_infer.load_model(tiny_model_path) as model:
            assert model.server is not None
            assert model.server.port != site.port and len(handed_out) == 2
            assert "couldn't bind" not in model.server.output_tail
            assert await model.generate("hello", max_tokens=3).collect()
    finally:
        await site.close()
    # It was asked (so the check ran) and found not to be ours: nothing was ever posted to it.
    assert "GET /health" in stranger.requests
    assert not any(r.startswith("POST") for r in stranger.requests)


# -- 403: a key the server knows but will not serve ------------------------------------------------


def assert_key_never_shown(error: BaseException, key: str) -> None:
    assert key not in str(error) and key not in repr(error)
    assert key not in repr(getattr(error, "body", None))


async def test_a_403_from_llama_server_is_an_api_error_with_its_status(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    # llama-server answers 403 for features it was started without (here GET /tools), after it
    # accepted the key: the one 403 it sends itself.
    async with rocm_infer.load_model(tiny_model_path) as model:
        assert model.server is not None
        with pytest.raises(rocm_infer.APIError) as info:
            await model.client.request_json("GET", "/tools")
        assert type(info.value) is rocm_infer.APIError
        assert (info.value.status, info.value.type, info.value.message) == (
            403,
            "feature_disabled",
            "this feature is disabled",
        )
        assert_key_never_shown(info.value, model.server._api_key)
        assert await model.generate("hello", max_tokens=2).collect()  # a refusal, not a broken model


class Gatekeeper:
    """A llama-server behind a proxy that lets the key read the server's settings, not generate."""

    FORBIDDEN = {"error": {"code": 403, "message": "Forbidden: this key may not generate", "type": "permission_error"}}

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.keys: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        self.keys.add(request.headers.get("Authorization", ""))
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.path == "/props":
            return web.json_response({"model_path": "/elsewhere/model.gguf", "total_slots": 1})
        return web.json_response(self.FORBIDDEN, status=403)


async def test_a_403_is_an_api_error_with_its_status_never_retried_and_never_showing_the_key() -> None:
    gatekeeper = Gatekeeper()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gatekeeper.handle)
    site = TestServer(app, host="127.0.0.1", port=0)
    await site.start_server()
    key = "sk-" + "k3y" * 12
    try:
        async with rocm_infer.connect(f"http://127.0.0.1:{site.port}", api_key=key) as model:
            stream = model.generate("hello", max_tokens=4)
            with pytest.raises(rocm_infer.APIError) as streamed:
                await stream.collect()
            with pytest.raises(rocm_infer.APIError) as requested:
                await model.tokenize("hello")
            chat = model.chat([{"role": "user", "content": "hi"}], max_tokens=4)
            with pytest.raises(rocm_infer.APIError) as chatted:
                await chat.collect()
    finally:
        await site.close()
    for error in (streamed.value, requested.value, chatted.value):
        assert type(error) is rocm_infer.APIError
        assert (error.status, error.type) == (403, "permission_error")
        assert "this key may not generate" in str(error)
        assert_key_never_shown(error, key)
    assert stream.finish_reason == chat.finish_reason == "error" and stream.error is streamed.value
    assert gatekeeper.keys == {f"Bearer {key}"}  # the key was sent, just never shown
    # Each refused request was sent once: a 403 is an answer, not a server still loading (503).
    posts = [r for r in gatekeeper.requests if r.startswith("POST")]
    assert len(posts) == 3 and len(set(posts)) == 3, gatekeeper.requests


async def test_nothing_is_written_under_home(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leaked_servers: None
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("LLAMA_CACHE", raising=False)
    async with rocm_infer.load_model(tiny_model_path) as model:
        await model.generate("hello", max_tokens=3).collect()
        await model.chat([{"role": "user", "content": "hi"}], max_tokens=3).collect()
    assert list(home.rglob("*")) == []


# -- a Jupyter kernel restart ----------------------------------------------------------------------


async def _kernel_output(client: Any, code: str) -> str:
    """Run ``code`` in the kernel and return what it printed (fails on an error)."""
    printed: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            printed.append("\n".join(msg["content"]["traceback"]))

    reply = await client.execute_interactive(code, output_hook=hook, timeout=60)
    assert reply["content"]["status"] == "ok", "".join(printed)
    return "".join(printed)


def _gone_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` has exited (a zombie counts) within ``seconds``; looked at at least once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("now", [False, True], ids=["restart", "restart-now-kills-the-kernel"])
async def test_a_jupyter_kernel_restart_leaves_no_server(tiny_model_path: Path, now: bool) -> None:
    """A model loaded with top-level await and never closed; then the kernel restarts.

    A kernel that shuts down terminates the processes of its process group, and jupyter_client's
    "restart now" SIGKILLs that group; but rocm_infer starts llama-server in a session (and so a
    process group) of its own, out of their reach, and each case leaves one safeguard alone on
    the job. A normal restart ends the kernel process normally; its model is kept referenced for
    good and its server has no parent-death signal, so neither a finalizer nor the kernel's death
    can stop the server: only the exit hook can.
    A restart with now=True SIGKILLs the kernel: no hook runs, only the parent-death signal can.
    """
    from jupyter_client.manager import AsyncKernelManager

    spawn = patch_spawn(parent_death_signal=now)
    load = f"model = await rocm_infer.load_model({str(tiny_model_path)!r})\nprint(model.server.pid)\n"
    if not now:
        load += keep_forever("model") + "\n"
    manager = AsyncKernelManager(kernel_name="python3")
    await manager.start_kernel()
    client = manager.client()
    client.start_channels()
    pid = None
    try:
        await client.wait_for_ready(timeout=60)
        printed = await _kernel_output(client, spawn + "import rocm_infer\n" + load)
        pid = int(printed.split()[-1])
        assert not _gone_within(pid, 0.1)
        assert os.getpgid(pid) == pid  # out of the kernel's process group: rocm_infer's own
        await manager.restart_kernel(now=now)
        assert await asyncio.to_thread(_gone_within, pid, 5.0), f"llama-server {pid} outlived the kernel"
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)
        if pid is not None and not _gone_within(pid, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # what a failure left: not for the next test to find


# -- a server that stops sending, start-up failures of the real binary ------------------------------


async def test_a_server_that_goes_silent_mid_stream_times_out_and_the_model_lives_on(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    """SIGSTOP freezes the real llama-server mid-stream: the connection stays open, nothing arrives."""
    async with rocm_infer.load_model(tiny_model_path, idle_timeout=2.0) as model:
        assert model.server is not None and model.server.pid is not None
        pid = model.server.pid
        stream = model.generate("tell me a story", **LONG)
        try:
            with pytest.raises(rocm_infer.APITimeoutError) as info:
                count = 0
                async for _ in stream:
                    count += 1
                    if count == 3:
                        os.kill(pid, signal.SIGSTOP)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert isinstance(info.value, TimeoutError)  # the builtin, too
        assert "sent nothing for 2s" in str(info.value)
        assert stream.finish_reason == "error" and stream.error is info.value
        assert model.err is None  # the stream's error, not the model's: it is not dead
        # A silent server is not a dead one: the response was closed, the slot frees, the model works.
        deadline = time.monotonic() + 5
        while any(s["is_processing"] for s in await model.client.slots()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not any(s["is_processing"] for s in await model.client.slots())
        assert await model.generate("hello", max_tokens=3).collect()


async def test_a_bad_flag_fails_the_start_with_llama_servers_own_words(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    with pytest.raises(rocm_infer.ServerStartError) as info:
        await rocm_infer.load_model(tiny_model_path, extra_args=["--no-such-flag"])
    assert info.value.returncode not in (None, 0)
    assert "--no-such-flag" in info.value.output_tail
    assert "exited during start-up" in str(info.value)


async def test_a_model_too_big_for_the_memory_it_may_use_fails_the_start(
    tiny_model_path: Path, tmp_path: Path, server_binary: str, no_leaked_servers: None
) -> None:
    """The real llama-server under an address-space limit that its context cannot fit into."""
    limited = tmp_path / "llama-server-limited"
    limited.write_text(f'#!/bin/sh\nulimit -v {MEMORY_LIMIT_KIB}\nexec "{server_binary}" "$@"\n')
    limited.chmod(0o755)
    async with rocm_infer.load_model(tiny_model_path, server_path=str(limited)) as model:
        assert await model.generate("hello", max_tokens=2).collect()  # the limit alone is no fault
    with pytest.raises(rocm_infer.ServerStartError) as info:
        await rocm_infer.load_model(tiny_model_path, server_path=str(limited), context_len=TOO_BIG_CONTEXT)
    assert info.value.returncode not in (None, 0)
    # "failed to allocate buffer for kv cache" or "std::bad_alloc", by where the limit bites first.
    assert "failed to initialize the context" in info.value.output_tail, info.value.output_tail


# -- docs/reliability.md ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_reliability_table_exists() -> None:
    """docs/reliability.md names the test behind every row: each name must be a real test."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    named: list[tuple[str, str]] = []
    module = ""
    # "`test_x.py::test_a`, `::test_b`": a bare "::name" belongs to the module named before it.
    for file, name in re.findall(r"`(test_\w+\.py)?::(test_\w+)", text):
        module = file or module
        named.append((module, name))
    assert len(named) > 40
    missing = []
    for file, name in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        if name not in tests:
            missing.append(f"{file}::{name}")
    assert missing == []
