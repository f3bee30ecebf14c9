"""The OpenAI-compatible routes (rocm_infer.integrations.openai_api), as examples/fastapi_app.py
serves them under a real uvicorn, driven by the official ``openai`` client: its tool-calling loop,
streamed and not, on the scripted model in the real llama-server."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from conftest import llama_server_pids
from serve_in_process import serving

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import fastapi_app  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
REASONING = "The user wants the weather. I will call get_weather."
ANSWER = "It is sunny in Paris today."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def url(scripted_model_path: Path, server_binary: str) -> AsyncIterator[str]:
    before = llama_server_pids(server_binary)
    async with serving(fastapi_app.create_app(scripted_model_path)) as served:
        yield served
    assert not llama_server_pids(server_binary) - before


def run_tool(name: str, arguments: str) -> str:
    assert name == "get_weather"
    return f"sunny in {json.loads(arguments)['city']}"


async def test_the_openai_clients_tool_loop_runs_unchanged(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = await client.chat.completions.create(model="default", messages=messages, tools=TOOLS)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.model_extra and choice.message.model_extra["reasoning_content"] == REASONING
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        # As OpenAI's docs write the loop: append the assistant message, then each tool's result.
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append(
            {"role": "tool", "tool_call_id": call.id, "content": run_tool(call.function.name, call.function.arguments)}
        )
        second = await client.chat.completions.create(model="default", messages=messages, tools=TOOLS)
        assert second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.content == ANSWER and not second.choices[0].message.tool_calls


async def test_the_tool_loop_streamed(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        stream = await client.chat.completions.create(model="default", messages=messages, tools=TOOLS, stream=True)
        reasoning, content, finish = "", "", None
        calls: dict[int, dict[str, str]] = {}
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    delta = choice.delta
                    reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                    content += delta.content or ""
                    for piece in delta.tool_calls or []:
                        entry = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                        entry["id"] += piece.id or ""
                        if piece.function is not None:
                            entry["name"] += piece.function.name or ""
                            entry["arguments"] += piece.function.arguments or ""
                    finish = choice.finish_reason or finish
        assert (reasoning, content, finish) == (REASONING, "", "tool_calls")
        (call,) = calls.values()
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"} and call["id"]
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                ],
            }
        )
        messages.append(
            {"role": "tool", "tool_call_id": call["id"], "content": run_tool(call["name"], call["arguments"])}
        )
        parts = []
        async with await client.chat.completions.create(
            model="default", messages=messages, tools=TOOLS, stream=True
        ) as again:
            async for chunk in again:
                parts += [c.delta.content or "" for c in chunk.choices]
        assert "".join(parts) == ANSWER


async def test_reasoning_effort_none_turns_thinking_off(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], tools=TOOLS, reasoning_effort="none"
        )
    assert reply.choices[0].message.content == "Hello! How can I help?"
    assert not (reply.choices[0].message.model_extra or {}).get("reasoning_content")


async def test_bad_requests_are_openai_errors_before_anything_is_sent(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError, match=r"the models are \['default'\]"):
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="names no tool"):
            await client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "hi"}],
                tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "get_time"}},
            )
        with pytest.raises(openai.BadRequestError, match="JSON schema object"):
            await client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],  # type: ignore[list-item]
            )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def with_embeddings(
    scripted_model_path: Path, embedding_model_path: Path, server_binary: str
) -> AsyncIterator[tuple[str, Any]]:
    before = llama_server_pids(server_binary)
    app = fastapi_app.create_app(scripted_model_path, embedding_model=embedding_model_path)
    async with serving(app) as served:
        from rocm_infer.integrations.fastapi import loaded_models

        yield served, loaded_models(app)["embedding"]
    assert not llama_server_pids(server_binary) - before


async def test_the_openai_clients_embeddings_create_works_unchanged(with_embeddings: tuple[str, Any]) -> None:
    url, emb = with_embeddings
    texts = ["the cat sat on the mat", "dogs ran far", "blue sky"]
    direct = await emb.embed(texts)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        # The client asks for base64 by default and decodes it; float lists on request.
        reply = await client.embeddings.create(model="embedding", input=texts)
        floats = await client.embeddings.create(model="embedding", input=texts, encoding_format="float")
        one = await client.embeddings.create(model="embedding", input="dogs ran far")
        with pytest.raises(openai.BadRequestError, match="is a text model, not an embedding model"):
            await client.embeddings.create(model="default", input="x")
        with pytest.raises(openai.BadRequestError, match="is an embedding model, not a text model"):
            await client.chat.completions.create(model="embedding", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            await client.embeddings.create(model="embedding", input="x", dimensions=3)
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert [d.embedding for d in reply.data] == [pytest.approx(v, abs=1e-6) for v in direct]
    assert [d.embedding for d in floats.data] == [pytest.approx(v, abs=1e-6) for v in direct]
    assert one.data[0].embedding == pytest.approx(direct[1], abs=1e-6)
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens
