"""chat() with reasoning and tool calls, and run_tools, on the scripted model in the real llama-server.

Greedy decoding makes the scripted model say a known script (rocm_infer.scripted_model): a think
block and a get_weather call by default, an answer after a tool result, "nothink" with thinking
off, and scripts that reason or write a call forever, for cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import llama_server_pids

import rocm_infer
from rocm_infer import Completion, Message, ProtocolError, TextModel, Tool, ToolCall

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

REASONING = "The user wants the weather. I will call get_weather."
ANSWER = "It is sunny in Paris today."
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def get_weather(city: str) -> str:
    """The current weather in a city.

    Args:
        city: The city's name.
    """
    calls.append(city)
    return f"sunny, 21 C in {city}"


def get_time(zone: str) -> str:
    """The current time in a time zone."""
    return "12:00"


calls: list[str] = []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model(scripted_model_path: Path, server_binary: str) -> AsyncIterator[TextModel]:
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_model(scripted_model_path, context_len=4096, parallel_slots=2) as loaded:
        yield loaded
    assert not llama_server_pids(server_binary) - before


async def busy_slots(model: TextModel) -> list[dict[str, Any]]:
    return [s for s in await model.client.slots() if s["is_processing"]]


async def assert_idle_within(model: TextModel, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while await busy_slots(model):
        assert time.monotonic() < deadline, f"a slot is still generating after {seconds}s: {await busy_slots(model)}"
        await asyncio.sleep(0.005)


async def test_reasoning_and_a_tool_call_stream_apart_with_real_token_ids(model: TextModel) -> None:
    stream = model.chat(USER, tools=[get_weather], max_tokens=64)
    tokens = [t async for t in stream]
    kinds = [t.kind for t in tokens]
    assert set(kinds) == {"reasoning", "tool_call"} and kinds.index("tool_call") > kinds.index("reasoning")
    reasoning = [t for t in tokens if t.kind == "reasoning"]
    assert "".join(t.text for t in reasoning) == REASONING == stream.reasoning
    assert stream.text == "" and stream.finish_reason == "tool_calls"
    # Every reasoning token carries the id the server sampled: its text is that token's piece.
    assert all(t.id >= 0 for t in reasoning)
    pieces = [await model.detokenize([t.id]) for t in reasoning]
    assert "".join(pieces).endswith(REASONING.split()[-1]) and [p for p in pieces if p]
    (call,) = stream.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"}) and call.id
    argument_text = "".join(t.text for t in tokens if t.kind == "tool_call")
    assert ToolCall("x", "get_weather", {}, argument_text).arguments_json == argument_text
    assert stream.message == Message("assistant", "", tool_calls=(call,), reasoning=REASONING)


async def test_awaiting_a_chat_gives_the_whole_completion(model: TextModel) -> None:
    result = await model.chat(USER, tools=[get_weather], max_tokens=64)
    assert isinstance(result, Completion)
    assert result.reasoning == REASONING and result.text == "" and result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert result.metrics.generated_tokens >= len(result.tokens) > 0
    assert result.message.tool_calls == result.tool_calls


async def test_a_tool_result_in_the_history_gets_the_answer(model: TextModel) -> None:
    first = await model.chat(USER, tools=[get_weather])
    history = [*USER, first.message, Message("tool", "sunny", tool_call_id=first.tool_calls[0].id, name="get_weather")]
    reply = await model.chat(history, tools=[get_weather])
    assert (reply.text, reply.reasoning, reply.tool_calls, reply.finish_reason) == (ANSWER, "", (), "stop")
    # The same history in OpenAI's dict shape, as a user's code would keep it.
    openai_history = [*USER, first.message.to_openai(), history[-1].to_openai()]
    assert (await model.chat(openai_history, tools=[get_weather])).text == ANSWER


async def test_two_calls_in_one_turn_are_assembled_in_order(model: TextModel) -> None:
    result = await model.chat([{"role": "user", "content": "two_calls"}], tools=[get_weather, get_time])
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert len({c.id for c in result.tool_calls}) == 2


async def test_run_tools_calls_the_function_and_chats_again_until_the_reply(model: TextModel) -> None:
    calls.clear()
    history = await model.run_tools(USER, [get_weather], max_tokens=64)
    assert calls == ["Paris"]  # the model's arguments reached the Python function
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1].tool_calls[0].name == "get_weather" and history[1].reasoning == REASONING
    assert history[2] == Message(
        "tool", "sunny, 21 C in Paris", tool_call_id=history[1].tool_calls[0].id, name="get_weather"
    )
    assert history[3].content == ANSWER and not history[3].tool_calls


async def test_run_tools_reports_a_tool_that_raises_to_the_model(model: TextModel) -> None:
    async def get_weather(city: str) -> str:
        raise LookupError(f"no station in {city}")

    history = await model.run_tools(USER, [get_weather])
    assert history[2].role == "tool" and history[2].content == "error: LookupError: no station in Paris"
    assert history[-1].content == ANSWER


async def test_run_tools_stops_after_max_rounds_with_every_call_answered(model: TextModel) -> None:
    # The default script always calls: with max_rounds=1 the loop ends on the tool message.
    history = await model.run_tools(USER, [get_weather], max_rounds=1)
    assert [m.role for m in history] == ["user", "assistant", "tool"]


async def test_reasoning_false_turns_thinking_off(model: TextModel) -> None:
    result = await model.chat(USER, tools=[get_weather], reasoning=False)
    assert (result.text, result.reasoning, result.tool_calls) == ("Hello! How can I help?", "", ())
    assert {t.kind for t in result.tokens} == {"content"} and all(t.id >= 0 for t in result.tokens)


async def test_a_named_tool_choice_sends_that_tool_alone(model: TextModel) -> None:
    result = await model.chat(USER, tools=[get_time, get_weather], tool_choice="get_weather")
    assert [c.name for c in result.tool_calls] == ["get_weather"]


@pytest.mark.parametrize(("script", "kind"), [("think_forever", "reasoning"), ("call_forever", "tool_call")])
async def test_cancelling_mid_reasoning_or_mid_tool_call_frees_the_slot(
    model: TextModel, script: str, kind: str
) -> None:
    # These scripts never end: only closing the stream can stop them.
    stream = model.chat([{"role": "user", "content": script}], tools=[get_weather], max_tokens=100_000)

    seen = [0]

    async def read() -> None:
        async for token in stream:  # a reader waiting for the next token, as an app's would be
            seen[0] += token.kind == kind

    task = asyncio.create_task(read())
    while seen[0] < 20:
        await asyncio.sleep(0.005)
    assert await busy_slots(model)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.finish_reason == "cancelled"
    await assert_idle_within(model, 0.5)
    decoded = max(s.get("n_decoded", 0) for s in await model.client.slots())
    assert decoded < 100_000 // 10, f"the server went on generating: {decoded} tokens"


async def test_a_tool_call_cut_by_max_tokens_is_an_error_with_its_raw_text(model: TextModel) -> None:
    stream = model.chat([{"role": "user", "content": "call_forever"}], tools=[get_weather], max_tokens=30)
    with pytest.raises(ProtocolError, match="max_tokens") as info:
        await stream
    assert info.value.text is not None and info.value.text.startswith('{"city": "')
    assert stream.finish_reason == "error" and model.err is None


async def test_bad_tool_arguments_are_refused_before_any_request(model: TextModel) -> None:
    with pytest.raises(ValueError, match="names no tool"):
        model.chat(USER, tools=[get_weather], tool_choice="get_time")
    with pytest.raises(ValueError, match="two tools are named"):
        model.chat(USER, tools=[get_weather, Tool.from_function(get_weather)])
    with pytest.raises(TypeError, match="config="):
        model.chat(USER, rocm_infer.GenerateConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need Python functions"):
        await model.run_tools(USER, [{"type": "function", "function": {"name": "get_weather"}}])


async def test_tools_on_a_model_whose_template_cannot_take_them_are_refused(tiny_model_path: Path) -> None:
    async with rocm_infer.load_model(tiny_model_path) as tiny:
        assert "tools" not in tiny.info.chat_capabilities
        with pytest.raises(ValueError, match="cannot take tools") as info:
            tiny.chat(USER, tools=[get_weather])
        assert tiny.info.name is not None and tiny.info.name in str(info.value)
        assert not [s for s in await tiny.client.slots() if s.get("id_task", -1) >= 0]  # nothing was sent


async def test_an_image_to_a_model_without_vision_is_refused_before_any_request(model: TextModel) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
    tasks = max(s.get("id_task", -1) for s in await model.client.slots())
    with pytest.raises(ValueError, match=r"takes no vision input.*mmproj_path"):
        model.chat([{"role": "user", "content": ["What is this?", rocm_infer.Image(png)]}])
    assert max(s.get("id_task", -1) for s in await model.client.slots()) == tasks
