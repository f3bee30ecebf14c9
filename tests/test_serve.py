"""`rocm-infer serve`'s app: a ModelPool behind OpenAI's API, driven by the official openai client
across two models (and an embedding model), streamed and not, with and without an API key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from conftest import llama_server_pids
from serve_in_process import serving

from rocm_infer import LoadConfig, ModelPool, ModelSpec
from rocm_infer.serving.serve import check_bind, create_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

KEY = "sk-serve-test"
SMALL = LoadConfig(context_len=2048, threads=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tiny_model_path: Path, scripted_model_path: Path, embedding_model_path: Path, server_binary: str
) -> AsyncIterator[tuple[str, ModelPool]]:
    before = llama_server_pids(server_binary)
    pool = ModelPool(
        {
            "words": (tiny_model_path, SMALL),
            "tools": (scripted_model_path, SMALL),
            "embed": ModelSpec(str(embedding_model_path), LoadConfig(threads=1)),
        },
        max_loaded=2,
        keep_alive=None,
    )
    async with serving(create_app(pool, api_key=KEY)) as url:
        yield url, pool
    assert not llama_server_pids(server_binary) - before


def client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def test_models_lists_every_model_loaded_or_not(served: tuple[str, ModelPool]) -> None:
    url, pool = served
    async with client(url) as c:
        assert sorted(m.id for m in (await c.models.list()).data) == ["embed", "tools", "words"]
        with pytest.raises(openai.NotFoundError, match=r"the models are \['embed', 'tools', 'words'\]"):
            await c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


async def test_chat_across_two_models_streamed_and_not_loads_on_demand(served: tuple[str, ModelPool]) -> None:
    url, pool = served
    messages: Any = [{"role": "user", "content": "plain"}]
    async with client(url) as c:
        tools_reply = await c.chat.completions.create(model="tools", messages=messages, max_tokens=16)
        assert tools_reply.choices[0].message.content == "Hi there."
        words = await c.chat.completions.create(model="words", messages=messages, max_tokens=6)
        assert words.choices[0].message.content and words.usage is not None and words.usage.completion_tokens == 6
        parts: list[str] = []
        async with await c.chat.completions.create(model="tools", messages=messages, stream=True) as stream:
            async for chunk in stream:
                parts += [choice.delta.content or "" for choice in chunk.choices]
        assert "".join(parts) == "Hi there."
    assert {m.name for m in pool.loaded()} == {"tools", "words"}


async def test_ignore_eos_in_extra_body_reaches_llama_server(served: tuple[str, ModelPool]) -> None:
    # The scripted model says "Hi there." and ends its turn; with ignore_eos it must go on to max_tokens.
    url, _ = served
    messages: Any = [{"role": "user", "content": "plain"}]
    async with client(url) as c:
        ended = await c.chat.completions.create(model="tools", messages=messages, max_tokens=16)
        forced = await c.chat.completions.create(
            model="tools", messages=messages, max_tokens=16, extra_body={"ignore_eos": True}
        )
        text_ended = await c.completions.create(model="tools", prompt="plain", max_tokens=16, stream=False)
        text = await c.completions.create(
            model="tools", prompt="plain", max_tokens=16, extra_body={"ignore_eos": True}, stream=False
        )
    assert ended.usage is not None and ended.usage.completion_tokens < 16
    assert ended.choices[0].finish_reason == "stop"
    assert forced.usage is not None and forced.usage.completion_tokens == 16
    assert forced.choices[0].finish_reason == "length"
    assert text_ended.usage is not None and text_ended.usage.completion_tokens < 16
    assert text.usage is not None and text.usage.completion_tokens == 16


async def test_text_completions_and_embeddings(served: tuple[str, ModelPool]) -> None:
    url, pool = served
    async with client(url) as c:
        done = await c.completions.create(model="words", prompt="Once upon a time", max_tokens=5)
        assert done.object == "text_completion" and done.choices[0].text and done.usage.completion_tokens == 5
        pieces = []
        async for chunk in await c.completions.create(model="words", prompt="Once upon", max_tokens=4, stream=True):
            pieces += [choice.text for choice in chunk.choices]
        assert "".join(pieces)
        vectors = await c.embeddings.create(model="embed", input=["the cat", "a dog"])  # a third model: one goes
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 48
    assert len(pool.loaded()) == 2 and "embed" in {m.name for m in pool.loaded()}


async def test_the_api_key_is_required(served: tuple[str, ModelPool]) -> None:
    url, _ = served
    async with client(url, key="wrong") as c:
        with pytest.raises(openai.AuthenticationError, match="valid API key"):
            await c.models.list()


async def test_a_client_that_disconnects_frees_its_slot(served: tuple[str, ModelPool]) -> None:
    url, pool = served
    async with client(url) as c:
        stream = await c.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "think_forever"}], max_tokens=100_000, stream=True
        )
        count = 0
        async for _ in stream:
            count += 1
            if count == 20:
                break
        await stream.close()
    async with pool.model("tools") as model:
        for _ in range(100):
            if not any(s["is_processing"] for s in await model.client.slots()):
                break
            await asyncio.sleep(0.01)
        assert not any(s["is_processing"] for s in await model.client.slots())


async def test_binding_beyond_loopback_needs_a_key() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(ValueError, match="needs an API key"):
        check_bind("0.0.0.0", None)
