"""rocm_infer.integrations.fastapi and examples/fastapi_app.py, served by a real uvicorn on
127.0.0.1 and a free port, against a real llama-server; the OpenAI route is driven by the
official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fastapi import FastAPI
from serve_in_process import serving
from starlette.requests import Request
from test_examples import run_script

import rocm_infer
from rocm_infer.integrations.fastapi import (
    _WRITES_PER_PAUSE,
    SSEEvent,
    TokenStreamResponse,
    get_model,
    load_models,
    loaded_models,
    model_dependency,
    model_lifespan,
)
from rocm_infer.sse import ServerSentEvent, SSEDecoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import fastapi_app  # noqa: E402

pytestmark = pytest.mark.integration


@dataclass
class Service:
    url: str
    model: rocm_infer.TextModel


@pytest.fixture
async def service(tiny_model_path: Path, no_leaked_servers: None) -> AsyncIterator[Service]:
    """The example app under uvicorn: 4 llama-server slots of 2048 tokens."""
    app = fastapi_app.create_app(tiny_model_path, parallel_slots=4, context_len=8192)
    async with serving(app) as url:
        yield Service(url, loaded_models(app)["default"])


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
    decoder = SSEDecoder()
    async for chunk in response.content.iter_any():
        for event in decoder.feed(chunk):
            yield event


async def generate_over_http(http: aiohttp.ClientSession, url: str, **body: Any) -> list[ServerSentEvent]:
    async with http.post(f"{url}/generate", json=body) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return [event async for event in sse_events(response)]


async def idle(model: rocm_infer.TextModel) -> bool:
    return not any(slot["is_processing"] for slot in await model.client.slots())


# -- POST /generate ------------------------------------------------------------------------------


async def test_generate_streams_each_token_then_the_end(service: Service) -> None:
    direct = service.model.generate("Once upon a time", max_tokens=16)
    expected = [(t.id, t.text) async for t in direct]
    async with aiohttp.ClientSession() as http:
        events = await generate_over_http(http, service.url, prompt="Once upon a time", max_tokens=16)
    assert [e.event for e in events] == ["token"] * len(expected) + ["end"]
    assert [(d["id"], d["text"]) for d in map(json.loads, (e.data for e in events[:-1]))] == expected
    end = json.loads(events[-1].data)
    assert end["finish_reason"] == direct.finish_reason
    assert direct.metrics is not None and end["metrics"]["generated_tokens"] == direct.metrics.generated_tokens


async def test_an_error_mid_stream_is_an_error_event(service: Service) -> None:
    too_long = "word " * 3000  # more than a slot's 2048 tokens
    async with aiohttp.ClientSession() as http:
        events = await generate_over_http(http, service.url, prompt=too_long, max_tokens=4)
    assert [e.event for e in events] == ["error"]
    assert json.loads(events[0].data)["error"]["type"] == "ContextLengthError"


async def test_a_bad_option_is_refused_before_streaming(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{service.url}/generate", json={"prompt": "x", "max_tokens": 0}) as response:
            assert response.status == 400
            assert "max_tokens must be >= 1" in (await response.json())["error"]["message"]


async def test_twenty_concurrent_clients_each_get_their_own_generation(service: Service) -> None:
    prompts = [f"Story number {i}:" for i in range(20)]
    expected = await service.model.batch_generate(prompts, max_tokens=24)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(generate_over_http(http, service.url, prompt=p, max_tokens=24) for p in prompts)
        )
    for events, want in zip(results, expected, strict=True):
        assert events[-1].event == "end"
        assert "".join(json.loads(e.data)["text"] for e in events[:-1]) == want.text
        assert json.loads(events[-1].data)["finish_reason"] == want.finish_reason
    assert await idle(service.model)


async def disconnect_mid_stream(http: aiohttp.ClientSession, service: Service, max_tokens: int) -> float:
    """Read 20 tokens of a long generation, drop the connection: seconds until every slot is idle."""
    body = {"prompt": "Tell me everything", "max_tokens": max_tokens, "ignore_eos": True}
    response = await http.post(f"{service.url}/generate", json=body)
    received = 0
    async for event in sse_events(response):
        received += event.event == "token"
        if received == 20:
            break
    assert not await idle(service.model)
    response.close()  # the client goes away: the TCP connection is dropped
    disconnected = time.perf_counter()
    while not await idle(service.model):
        await asyncio.sleep(0.001)
    return time.perf_counter() - disconnected


async def test_a_client_that_disconnects_mid_stream_frees_its_slot_within_a_second(
    service: Service, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    max_tokens = 2000  # fills the slot: the generation would go on for seconds
    server = service.model.server
    assert server is not None
    # Every stream the app makes stays referenced, as a handler that kept one would: only the
    # disconnect closing it can stop llama-server, not the finalizer of a stream the app dropped.
    kept: list[rocm_infer.TokenStream] = []
    generate = service.model.generate

    def generate_and_keep(*args: Any, **kwargs: Any) -> rocm_infer.TokenStream:
        kept.append(generate(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(service.model, "generate", generate_and_keep)
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            elapsed = await disconnect_mid_stream(http, service, max_tokens)
            print(f"disconnect -> every llama-server slot idle: {elapsed * 1000:.1f} ms")
            assert elapsed < 1.0
    # llama-server's own account: each task was cancelled, long before max_tokens.
    async with asyncio.timeout(5):
        while server.output_tail.count("stop: cancel task") < 5:
            await asyncio.sleep(0.01)
    released = [int(n) for n in re.findall(r"stop processing: n_tokens = (\d+)", server.output_tail)]
    assert len(released) >= 5 and all(n < max_tokens // 2 for n in released[-5:]), released
    assert len(kept) == 5 and all(stream.finish_reason == "cancelled" for stream in kept)
    # The server noticed each lost connection at once, not after a burst of writes into it.
    assert "socket.send() raised exception" not in caplog.text


# -- the OpenAI-compatible route, with the official client ---------------------------------------

MESSAGES: list[Any] = [{"role": "user", "content": "What is a GPU?"}]


async def test_the_openai_client_works_unchanged(service: Service) -> None:
    direct = service.model.chat(MESSAGES, max_tokens=12)
    expected = await direct.collect()
    assert expected and direct.metrics is not None
    async with openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0) as client:
        assert [m.id for m in (await client.models.list()).data] == ["default"]

        reply = await client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=12)
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == direct.finish_reason
        assert reply.usage is not None and reply.usage.completion_tokens == direct.metrics.generated_tokens

        stream = await client.chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
        parts: list[str] = []
        roles: list[str] = []
        finish_reasons: list[str] = []
        usage = None
        async with stream:
            async for chunk in stream:
                assert chunk.object == "chat.completion.chunk" and chunk.model == "default"
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    parts.append(choice.delta.content or "")
                    roles += [choice.delta.role] if choice.delta.role else []
                    finish_reasons += [choice.finish_reason] if choice.finish_reason else []
    assert "".join(parts) == expected
    assert roles == ["assistant"] and finish_reasons == [direct.finish_reason]
    assert usage is not None and usage.completion_tokens == direct.metrics.generated_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_openai_client_errors(service: Service) -> None:
    too_long = [{"role": "user", "content": "word " * 3000}]
    async with openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="default", messages=too_long, max_tokens=4)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="default",
            messages=too_long,  # type: ignore[arg-type]
            max_tokens=4,
            stream=True,
        )
        with pytest.raises(openai.APIError, match="context"):
            async for _ in stream:
                pass
    assert await idle(service.model)


# -- the lifespan and the dependency -------------------------------------------------------------


@pytest.mark.usefixtures("no_leaked_servers")
async def test_the_lifespan_loads_models_at_start_up_and_closes_them_at_shutdown(tiny_model_path: Path) -> None:
    app = FastAPI(
        lifespan=model_lifespan(
            default=tiny_model_path,
            small=lambda: rocm_infer.load_model(tiny_model_path, parallel_slots=2),
        )
    )
    with pytest.raises(RuntimeError, match="no models are loaded"):
        loaded_models(app)
    async with serving(app):
        models = dict(loaded_models(app))
        assert list(models) == ["default", "small"]
        assert all(m.server is not None and m.server.running for m in models.values())
        assert models["small"].info.parallel_slots == 2
    assert all(m.closed and m.server is not None and not m.server.running for m in models.values())
    with pytest.raises(RuntimeError, match="no models are loaded"):
        loaded_models(app)


@pytest.mark.usefixtures("no_leaked_servers")
async def test_a_model_that_fails_to_load_closes_those_loaded_before_it(tiny_model_path: Path, tmp_path: Path) -> None:
    app = FastAPI()
    with pytest.raises(rocm_infer.ModelNotFoundError):
        async with load_models(app, first=tiny_model_path, second=tmp_path / "missing.gguf"):
            pytest.fail("must not start")
    with pytest.raises(RuntimeError):
        loaded_models(app)
    failing = FastAPI(lifespan=model_lifespan(default=tmp_path / "missing.gguf"))
    with pytest.raises(RuntimeError, match="did not start"):
        async with serving(failing):
            pass


@pytest.mark.usefixtures("no_leaked_servers")
async def test_the_dependency_hands_over_the_named_model(tiny_model_path: Path) -> None:
    app = FastAPI()
    request = Request({"type": "http", "app": app})
    with pytest.raises(RuntimeError, match="no models are loaded"):
        get_model(request)
    async with load_models(app, default=tiny_model_path) as models:
        assert get_model(request) is models["default"]
        with pytest.raises(RuntimeError, match="no model named 'chat' is loaded; loaded: \\['default'\\]"):
            model_dependency("chat")(request)
        with pytest.raises(RuntimeError, match="already has models"):
            async with load_models(app, other=tiny_model_path):
                pass


def test_bad_model_sources_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        model_lifespan()
    with pytest.raises(TypeError, match="model 'default': expected a path"):
        model_lifespan(default=42)  # type: ignore[arg-type]


def test_sse_event_encoding() -> None:
    assert SSEEvent("[DONE]").encode() == b"data: [DONE]\n\n"
    assert SSEEvent({"text": "é"}, "token").encode() == 'event: token\ndata: {"text": "é"}\n\n'.encode()
    assert SSEEvent("two\nlines").encode() == b"data: two\ndata: lines\n\n"
    decoded = SSEDecoder().feed(SSEEvent("two\nlines", "x").encode())
    assert decoded == [ServerSentEvent("two\nlines", "x")]


def test_importing_rocm_infer_imports_no_framework() -> None:
    code = "import sys, rocm_infer, rocm_infer.integrations; print(sorted({'fastapi', 'starlette'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_fastapi_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n    import rocm_infer.integrations.fastapi\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "rocm_infer's fastapi extra" in out and "pip install fastapi uvicorn" in out


@pytest.mark.usefixtures("no_leaked_servers")
def test_the_example_runs_as_the_docs_say(tiny_model_path: Path) -> None:
    # README and docs/fastapi.md: `python examples/fastapi_app.py` serves $ROCM_INFER_MODEL until
    # Ctrl-C; curl and the openai client talk to it.
    script = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"
    env = {**os.environ, "ROCM_INFER_MODEL": str(tiny_model_path)}
    app = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stderr is not None
        seen = []
        for line in app.stderr:
            seen.append(line)
            if started := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        else:
            pytest.fail("".join(seen))
        url = started.group(1)
        request = urllib.request.Request(
            f"{url}/generate", json.dumps({"prompt": "Once upon a time", "max_tokens": 4}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = [e for e in SSEDecoder().feed(response.read()) if e.event]
        assert [e.event for e in events] == ["token"] * 4 + ["end"]
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            messages: Any = [{"role": "user", "content": "Hi"}]
            reply = client.chat.completions.create(model="default", messages=messages, max_tokens=4)
        assert reply.usage is not None and reply.usage.completion_tokens == 4
    finally:
        app.send_signal(signal.SIGINT)  # Ctrl-C
        assert app.wait(timeout=60) == 0
        if app.stderr:
            app.stderr.close()


@pytest.mark.usefixtures("no_leaked_servers")
def test_the_disconnect_benchmark_runs(tiny_model_path: Path) -> None:
    # Figures are not checked here (timings belong to benchmark runs): only that the script still works.
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "http_disconnect_to_idle.py"
    assert "HTTP disconnect -> all slots idle, 1 rounds" in run_script(script, str(tiny_model_path), "--rounds", "1")


def test_module_all_names_exist() -> None:
    import rocm_infer.integrations.fastapi as module

    assert module.__all__ == sorted(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)


async def test_a_burst_of_tokens_lets_the_disconnect_through_within_a_few_writes() -> None:
    # Tokens that came in one network read are sent without waiting on anything; the response
    # must still let the loop run every few writes, or a client that went away is only noticed
    # after the whole burst (asyncio warns from the fifth write into a closed socket). The burst
    # is an iterator that never waits: a real server cannot be made to send 1,000 at once.
    class Stream:
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    async def burst() -> AsyncIterator[bytes]:
        for i in range(1000):
            yield b"data: %d\n\n" % i

    bodies: list[bytes] = []
    disconnected_after: list[int] = []
    first_body = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await first_body.wait()
        disconnected_after.append(len(bodies))
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            bodies.append(message["body"])
            first_body.set()

    stream = Stream()
    response = TokenStreamResponse(stream, burst())  # type: ignore[arg-type]
    await response({"type": "http", "method": "GET", "path": "/"}, receive, send)
    assert stream.closed
    assert disconnected_after and len(bodies) - disconnected_after[0] <= _WRITES_PER_PAUSE
    assert len(bodies) < 1000
