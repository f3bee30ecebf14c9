"""rocm_infer.Router over real llama-servers on loopback: spreading load, failover before the first
token, ejection and re-admission after a restart, prefix affinity, its lifetime, and the OpenAI
routes serving a router."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fastapi import FastAPI
from serve_in_process import serving

import rocm_infer
import rocm_infer.serving.router as router_module
from rocm_infer import (
    APIConnectionError,
    Endpoint,
    ModelClosedError,
    ProtocolError,
    Router,
    ServerExitedError,
    TextModel,
)
from rocm_infer.integrations.openai_api import openai_router
from rocm_infer.server import free_port
from rocm_infer.serving import Backoff

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leaked_servers")]

LONG: dict[str, Any] = {"max_tokens": 1000, "ignore_eos": True}
SHORT: dict[str, Any] = {"max_tokens": 8, "ignore_eos": True}


async def eventually(condition: Callable[[], bool], within: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not come true in {within:g}s"
        await asyncio.sleep(0.02)


def served(router: Router) -> list[int]:
    return [state.served for state in router.endpoints()]


@contextlib.asynccontextmanager
async def models(path: Path, count: int, **options: Any) -> AsyncIterator[list[TextModel]]:
    async with contextlib.AsyncExitStack() as stack:
        loaded = await asyncio.gather(*(rocm_infer.load_model(path, threads=1, **options) for _ in range(count)))
        for model in loaded:
            stack.push_async_callback(model.close)
        yield list(loaded)


async def test_a_killed_endpoint_fails_only_its_own_streams_and_is_readmitted_after_its_restart(
    tiny_model_path: Path,
) -> None:
    # Streams long enough that none can end before the sixth has started, however busy the machine
    # (1,000 tokens took 0.5 s, and one did end before the kill): each one must still be running then.
    longer = {**LONG, "max_tokens": 4000}
    async with models(tiny_model_path, 3, restart=True, parallel_slots=4, context_len=4 * 4096) as three:
        reference = await three[0].generate("once", **SHORT)
        router = Router(three, poll_interval=0.1, backoff=Backoff(first=1.5, cap=1.5))
        async with router:
            # Six long streams, each started before the next: least_loaded puts two on each server.
            streams = [router.generate(f"story {n}", **longer) for n in range(6)]
            for stream in streams:
                await anext(stream)
            assert [s.in_flight for s in router.endpoints()] == [2, 2, 2]

            victim = three[1]
            assert victim.server is not None and victim.server.pid is not None
            old_url, old_pid = victim.client.base_url, victim.server.pid
            os.kill(old_pid, signal.SIGKILL)
            reading = [asyncio.create_task(stream.collect()) for stream in streams]
            await eventually(lambda: not router.endpoints()[1].healthy, within=10, what="the ejection")

            # While it is out, new requests go to the other two, and every one is answered.
            before = served(router)
            answers = await asyncio.gather(*(router.generate("once", **SHORT) for _ in range(8)))
            assert all(a.text == reference.text and len(a.tokens) == 8 for a in answers)
            after = served(router)
            assert after[1] == before[1] == 0
            assert after[0] + after[2] - before[0] - before[2] == 8

            # Its two streams raised; the other four ran to the end, none cut and none doubled.
            results = await asyncio.gather(*reading, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert len(failed) == 2 and all(isinstance(e, ServerExitedError) for e in failed), failed
            done = [s for s in streams if s.error is None]
            assert len(done) == 4 and all(s.finish_reason == "length" for s in done)
            assert all(s.metrics is not None and s.metrics.generated_tokens == 4000 for s in done)
            states = router.endpoints()
            assert [s.in_flight for s in states] == [0, 0, 0]
            assert states[0].served + states[2].served == 4 + 8 and states[1].served == 0
            assert states[1].failures >= 1

            # The health check restarts it (its restart policy), and it takes requests again.
            await eventually(lambda: router.endpoints()[1].healthy, what="the re-admission")
            assert victim.restarts == 1 and victim.server.pid != old_pid
            assert router.endpoints()[1].url == victim.client.base_url != old_url
            again = [await router.generate("once", **SHORT) for _ in range(3)]
            assert all(a.text == reference.text for a in again)
            assert router.endpoints()[1].served >= 1
            assert sum(served(router)) == 4 + 8 + 3


class _ExternalServer:
    """A llama-server the test runs itself, by URL with an API key, on a port it keeps across restarts."""

    def __init__(self, binary: str, model: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = secrets.token_urlsafe(16)
        self._argv = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port)]
        self._argv += ["--threads", "1", "-c", "2048", "-np", "2"]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "LLAMA_API_KEY": self.key}
        devnull = asyncio.subprocess.DEVNULL
        self.process = await asyncio.create_subprocess_exec(*self._argv, env=env, stdout=devnull, stderr=devnull)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/health", headers=headers) as response:
                        if response.status == 200:
                            return
                assert self.process.returncode is None, "the external llama-server exited"
                await asyncio.sleep(0.05)
        raise AssertionError("the external llama-server did not become healthy")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def external(server_binary: str, tiny_model_path: Path) -> AsyncIterator[_ExternalServer]:
    server = _ExternalServer(server_binary, tiny_model_path)
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


async def test_a_url_endpoint_that_refuses_fails_over_and_is_readmitted_when_its_server_is_back(
    tiny_model_path: Path, external: _ExternalServer
) -> None:
    async with models(tiny_model_path, 1) as (local,):
        # Long polls: the router learns of the death from the request itself.
        router = Router([Endpoint(external.url, api_key=external.key), local], "round_robin", poll_interval=30)
        async with router:
            attached = router.endpoints()[0]
            assert attached.url == external.url and attached.healthy
            first = await router.generate("once", **SHORT)  # request 0: round robin's first, the URL
            assert served(router) == [1, 0]

            # Killed mid-stream: that stream raises, for the router cannot see the process.
            stream = router.generate("story", **LONG)  # request 1: the local model
            other = router.generate("story", **LONG)  # request 2: the URL again
            await anext(stream)
            await anext(other)
            await external.kill()
            with pytest.raises((APIConnectionError, ProtocolError)):
                await other.collect()
            assert (await stream).metrics.generated_tokens == 1000
            assert not router.endpoints()[0].healthy

            # Refused at once (connection refused): every request goes to the local model meanwhile.
            for _ in range(3):
                assert (await router.generate("once", **SHORT)).text == first.text
            assert served(router)[0] == 1

            # Started again on the same port: the backed-off health check lets it back in.
            await external.start()
            await eventually(lambda: router.endpoints()[0].healthy, what="the re-admission")
            await router.generate("once", **SHORT)
            await router.generate("once", **SHORT)
            assert served(router)[0] == 2
        # The router attached to the URL, so it closed that client; the caller's model is still open.
        assert not local.closed
        assert (await local.generate("once", **SHORT)).text == first.text


async def test_a_dead_url_is_failed_over_on_the_first_request_before_any_poll_notices(
    tiny_model_path: Path, external: _ExternalServer
) -> None:
    async with models(tiny_model_path, 1) as (local,):
        router = Router([(external.url, external.key), local], "round_robin", poll_interval=30)
        async with router:
            await external.kill()
            assert router.endpoints()[0].healthy  # nothing has looked since
            stream = router.generate("once", **SHORT)
            completion = await stream
            assert len(completion.tokens) == 8 and stream.error is None
            dead, alive = router.endpoints()
            assert not dead.healthy and dead.failures == 1 and dead.served == 0
            assert alive.served == 1
            # Non-streaming calls fail over alike: a router of text models has no embeddings to give.
            with pytest.raises(TypeError, match="no embedding model endpoints"):
                await router.embed("text")


class _Loading:
    """A server that is healthy at connect and then answers every generation 503, as a llama-server
    that is reloading its model does."""

    def __init__(self) -> None:
        self.refused = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.path == "/props":
            return web.json_response({"model_path": "/elsewhere/model.gguf", "total_slots": 1})
        self.refused += 1
        return web.json_response(
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, status=503
        )


async def test_a_503_moves_the_request_to_the_next_endpoint_at_once(tiny_model_path: Path) -> None:
    loading = _Loading()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", loading.handle)
    site = TestServer(app, host="127.0.0.1", port=0)
    await site.start_server()
    try:
        async with models(tiny_model_path, 1) as (local,):
            router = Router([str(site.make_url("")), local], "round_robin", poll_interval=30)
            async with router:
                started = time.perf_counter()
                stream = router.chat([{"role": "user", "content": "hi"}], **SHORT)
                assert len((await stream).tokens) == 8
                assert time.perf_counter() - started < 5  # not the client's 30 s of 503 retries
                assert loading.refused == 1
                refusing, answering = router.endpoints()
                assert not refusing.healthy and refusing.failures == 1 and answering.served == 1
    finally:
        await site.close()


async def test_every_endpoint_refusing_raises_the_last_ones_error(tiny_model_path: Path) -> None:
    async with models(tiny_model_path, 2) as (a, b):
        async with Router([a, b], poll_interval=30) as router:
            stream = router.generate("once", **SHORT)  # made while both are alive
            for model in (a, b):
                assert model.server is not None and model.server.pid is not None
                os.kill(model.server.pid, signal.SIGKILL)
                assert await model.server.wait_exited(10) is not None
            with pytest.raises(ServerExitedError) as info:
                await stream
            assert info.value is b.err  # each endpoint was tried once; the error is the last one's
            assert [(s.healthy, s.failures) for s in router.endpoints()] == [(False, 1), (False, 1)]
            # Now generate() itself raises: no text endpoint can be used, and none restarts.
            with pytest.raises(ServerExitedError):
                router.generate("once", **SHORT)


async def test_least_loaded_sees_other_clients_on_an_endpoint_through_its_slots(tiny_model_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            rocm_infer.load_model(tiny_model_path, threads=1, parallel_slots=2, context_len=2 * 4096)
        )
        # b does not report its slots: the router goes by its own count there, and keeps it in.
        b = await stack.enter_async_context(
            rocm_infer.load_model(tiny_model_path, threads=1, parallel_slots=2, extra_args=("--no-slots",))
        )
        router = await stack.enter_async_context(Router([a, b], poll_interval=0.05))
        # Not through the router, and long enough (a busy machine polls late) to be running when polled.
        direct = a.generate("story", **{**LONG, "max_tokens": 4000})
        await anext(direct)
        await eventually(lambda: router.endpoints()[0].busy_elsewhere == 1, what="the /slots poll")
        state, other = router.endpoints()
        assert state.slots == 2 and state.slots_busy == 1 and state.in_flight == 0 and state.load == 1
        assert other.healthy and other.slots == 0 and other.load == 0
        await router.generate("once", **SHORT)
        assert served(router) == [0, 1]
        await direct.aclose()
        await eventually(lambda: router.endpoints()[0].busy_elsewhere == 0, what="the next poll")
        assert router.endpoints()[1].healthy and router.endpoints()[1].failures == 0


async def test_a_request_that_fails_on_its_own_account_is_not_moved(tiny_model_path: Path) -> None:
    async with models(tiny_model_path, 2, context_len=256, parallel_slots=1) as pair:
        async with Router(pair, poll_interval=30) as router:
            with pytest.raises(rocm_infer.ContextLengthError):
                await router.generate(" ".join(["word"] * 400), max_tokens=4)
            assert [(s.healthy, s.failures, s.in_flight) for s in router.endpoints()] == [(True, 0, 0)] * 2


async def test_closing_an_endpoint_model_ends_its_routed_streams_and_takes_it_out(tiny_model_path: Path) -> None:
    async with models(tiny_model_path, 2) as (a, b):
        async with Router([a, b], poll_interval=30) as router:
            stream = router.generate("story", **LONG)
            await anext(stream)
            assert router.endpoints()[0].in_flight == 1
            await a.close()
            with pytest.raises(ModelClosedError):
                await stream.collect()
            assert router.endpoints()[0].in_flight == 0
            # The next request finds it closed and goes to b; a is out from then on.
            assert len((await router.generate("once", **SHORT)).tokens) == 8
            assert served(router) == [0, 1] and not router.endpoints()[0].healthy


async def conversation_cache(router: Router, conversations: int, turns: int, tag: str) -> list[list[int]]:
    """Chat ``turns`` turns in each conversation, one conversation after the other; the cached
    prompt tokens llama-server reported for every turn."""
    cached: list[list[int]] = []
    for n in range(conversations):
        history: list[Any] = [{"role": "system", "content": f"{tag}: conversation {n} of the test"}]
        cached.append([])
        for turn in range(turns):
            history.append({"role": "user", "content": f"turn {turn}: tell me about the sea and ships {n}"})
            reply = await router.chat(history, max_tokens=12, ignore_eos=True)
            assert reply.metrics is not None
            cached[-1].append(reply.metrics.cached_tokens)
            history.append(reply.message)
    return cached


async def test_only_a_policy_that_reads_prefixes_has_requests_hashed(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hashing a long conversation costs more than the rest of routing it: least_loaded and round_robin
    # never read the prefixes, so a router with one of them computes none; any other policy gets them.
    seen: list[tuple[int, ...]] = []

    def first(states: Any, key: Any) -> Any:
        seen.append(key.prefixes)
        return states[0]

    prompt = "word " * 60  # 300 characters: two blocks
    conversation = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    async with models(tiny_model_path, 1) as (model,):
        async with Router([model], first, poll_interval=30) as router:
            await router.generate(prompt, **SHORT)
            await router.chat(conversation + [{"role": "user", "content": "and?"}], **SHORT)
        assert [len(prefixes) for prefixes in seen] == [2, 3]

        hashed: list[str] = []
        monkeypatch.setattr(router_module, "prompt_prefixes", lambda *a, **k: hashed.append("prompt") or (1,))
        monkeypatch.setattr(router_module, "message_prefixes", lambda *a, **k: hashed.append("messages") or (1,))
        for policy in ("least_loaded", "round_robin"):
            async with Router([model], policy, poll_interval=30) as router:
                assert len((await router.generate(prompt, **SHORT)).tokens) == 8
                assert len((await router.chat(conversation + [{"role": "user", "content": "and?"}], **SHORT)).tokens)
        assert hashed == []
        async with Router([model], "prefix_affinity", poll_interval=30) as router:
            await router.generate(prompt, **SHORT)
            await router.chat(conversation, **SHORT)
        assert hashed == ["prompt", "messages"]


async def test_prefix_affinity_keeps_conversations_on_the_server_that_holds_them(tiny_model_path: Path) -> None:
    async with models(tiny_model_path, 2, parallel_slots=2, context_len=4096) as pair:
        async with Router(pair, "prefix_affinity", poll_interval=30) as router:
            affinity = await conversation_cache(router, 2, 4, "affinity")
            # Each conversation stayed on one server, and the two went to different ones.
            assert sorted(served(router)) == [4, 4]
        async with Router(pair, "round_robin", poll_interval=30) as router:
            rotated = await conversation_cache(router, 2, 4, "round robin")
    # Every later turn found the turn before it in its server's cache; round robin, only the one before that.
    assert all(later > earlier for cached in affinity for earlier, later in itertools.pairwise(cached)), affinity
    assert all(rotated[n][1] < affinity[n][1] for n in range(2)), (affinity, rotated)
    assert sum(map(sum, affinity)) > sum(map(sum, rotated)), (affinity, rotated)


async def test_closing_the_router_ends_its_streams_and_leaves_the_callers_models_open(tiny_model_path: Path) -> None:
    async with models(tiny_model_path, 2) as pair:
        router = Router(pair, poll_interval=0.05)
        with pytest.raises(RuntimeError, match="not started"):
            router.generate("once")

        async with router:
            with pytest.raises(TypeError):
                router.generate(42)  # type: ignore[arg-type]  # the model's own checks, before any request
            # Streams closed, cancelled or dropped mid-way leave nothing in flight.
            closing = router.generate("story", **LONG)
            await anext(closing)
            await closing.aclose()
            task = asyncio.create_task(router.generate("story", **LONG).collect())
            await eventually(lambda: sum(s.in_flight for s in router.endpoints()) == 1, what="the stream's start")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            dropped = router.generate("story", **LONG)
            await anext(dropped)
            del dropped
            assert [s.in_flight for s in router.endpoints()] == [0, 0]
            assert sum(served(router)) == 3  # the caller stopped each of them: served, not failed

            held = router.generate("story", **LONG)
            await anext(held)
        with pytest.raises(ModelClosedError, match="router was closed"):
            await held.collect()
        with pytest.raises(ModelClosedError):
            router.generate("once")
        with pytest.raises(ModelClosedError):
            await router.start()
        assert not any(model.closed for model in pair)
        assert [len((await model.generate("once", **SHORT)).tokens) for model in pair] == [8, 8]


async def test_a_router_dropped_unclosed_warns(tiny_model_path: Path) -> None:
    async with models(tiny_model_path, 1) as (local,):
        router = Router([local])
        await router.start()
        with pytest.warns(ResourceWarning, match="unclosed router"):
            del router
            await asyncio.sleep(0)


async def test_an_endpoint_is_a_model_a_url_or_a_url_and_key_and_never_twice(tiny_model_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Router([])
    with pytest.raises(TypeError, match="not a single one"):
        Router("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="twice"):
        Router(["http://127.0.0.1:1/", Endpoint("http://127.0.0.1:1")])
    with pytest.raises(ValueError, match="unknown routing policy"):
        Router(["http://127.0.0.1:1"], "fastest")
    with pytest.raises(ValueError, match="http"):
        Endpoint("127.0.0.1:1")
    assert "secret" not in repr(Endpoint("http://127.0.0.1:1", api_key="secret"))
    pending = rocm_infer.load_model(tiny_model_path)
    with pytest.raises(TypeError, match="await"):
        Router([pending])  # type: ignore[list-item]
    pending.close()
    # No endpoint reachable at all: start raises why, and leaves nothing open.
    router = Router([f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(APIConnectionError):
        await router.start()
    assert router.closed


async def test_the_openai_routes_serve_a_router_for_chat_and_embeddings(
    tiny_model_path: Path, embedding_model_path: Path
) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    async with contextlib.AsyncExitStack() as stack:
        pair = await stack.enter_async_context(models(tiny_model_path, 2))
        encoders = await asyncio.gather(
            *(rocm_infer.load_embedding_model(embedding_model_path, threads=1) for _ in range(2))
        )
        for encoder in encoders:
            stack.push_async_callback(encoder.close)
        victim, encoder = encoders
        routers = {
            "chat": await stack.enter_async_context(Router(pair, poll_interval=30)),
            "embed": await stack.enter_async_context(Router([victim, encoder], poll_interval=30)),
        }
        assert routers["embed"].dimensions == encoder.dimensions == 48
        # The first embedding endpoint dies before any request: embed() moves on to the other.
        assert victim.server is not None and victim.server.pid is not None
        os.kill(victim.server.pid, signal.SIGKILL)
        assert await victim.server.wait_exited(10) is not None

        class Provider:
            def names(self) -> list[str]:
                return list(routers)

            def lease(self, name: str) -> contextlib.AbstractAsyncContextManager[Router]:
                return contextlib.nullcontext(routers[name])

        app = FastAPI()
        app.include_router(openai_router(Provider()))
        url = await stack.enter_async_context(serving(app))
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            whole = await client.chat.completions.create(model="chat", messages=messages, max_tokens=8)
            chunks = await client.chat.completions.create(model="chat", messages=messages, max_tokens=8, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            vectors = await client.embeddings.create(model="embed", input=["one text", "another"])
            with pytest.raises(openai.BadRequestError, match="no embedding model endpoints"):
                await client.embeddings.create(model="chat", input="text")
        assert served(routers["chat"]) == [1, 1]
        assert [(s.healthy, s.failures, s.served) for s in routers["embed"].endpoints()] == [
            (False, 1, 0),
            (True, 0, 1),
        ]
        assert whole.choices[0].message.content and whole.choices[0].message.content == streamed
        assert (await pair[1].chat(messages, max_tokens=8)).text == streamed
        expected = await encoder.embed(["one text", "another"])
        assert [d.embedding for d in vectors.data] == [pytest.approx(v, abs=1e-6) for v in expected]
        assert await routers["embed"].embed(["one text", "another"]) == [pytest.approx(v, abs=1e-6) for v in expected]
