"""The endpoint adapters, fed llama-server's events directly (no I/O), and the chat adapter behind
a fake server for what the real one cannot be made to send (malformed tool-call deltas)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import rocm_infer
from rocm_infer import GenerateConfig, ProtocolError, Token
from rocm_infer.endpoints.chat import ChatAdapter, chat_body
from rocm_infer.endpoints.completion import CompletionAdapter
from rocm_infer.tools import as_tools
from rocm_infer.types import Message


def chunk(
    delta: dict[str, Any] | None = None, *, token: int | None = None, finish: str | None = None
) -> dict[str, Any]:
    """One /v1/chat/completions chunk as llama-server sends it; ``token`` adds the n_probs entry."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "delta": delta or {}}
    if token is not None:
        choice["logprobs"] = {"content": [{"id": token, "token": "?", "logprob": 0.0}]}
    return {"choices": [choice], "object": "chat.completion.chunk"}


async def nothing(ids: list[int]) -> str:
    raise AssertionError("no detokenize expected")


async def fed(adapter: ChatAdapter, *batches: list[dict[str, Any]]) -> list[Token]:
    out: list[Token] = []
    for batch in batches:
        adapter.feed(batch, out)
    await adapter.settle(out, nothing)
    return out


async def test_reasoning_content_and_tool_calls_are_split_by_kind_with_ids() -> None:
    adapter = ChatAdapter(GenerateConfig())
    tokens = await fed(
        adapter,
        [chunk({"role": "assistant", "content": None}), chunk({"reasoning_content": "Let me"}, token=11)],
        [chunk({"reasoning_content": " think."}, token=12), chunk({"content": "Calling."}, token=13)],
        [
            chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}, token=14),
        ],
        [chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, token=15)],
        [chunk(finish="tool_calls"), {"choices": [], "usage": {"prompt_tokens": 9}, "timings": {"predicted_n": 5}}],
    )
    assert [(t.id, t.kind, t.text) for t in tokens] == [
        (11, "reasoning", "Let me"),
        (12, "reasoning", " think."),
        (13, "content", "Calling."),
        (14, "tool_call", '{"city": '),
        (15, "tool_call", '"Paris"}'),
    ]
    assert adapter.reasoning == "Let me think." and adapter.text == "Calling."
    assert adapter.finish_reason() == "tool_calls" and adapter.prompt_tokens == 9
    (call,) = adapter.tool_calls
    assert (call.id, call.name, call.arguments, call.arguments_json) == (
        "c1",
        "get_weather",
        {"city": "Paris"},
        '{"city": "Paris"}',
    )
    message = adapter.message()
    assert message == Message("assistant", "Calling.", tool_calls=(call,), reasoning="Let me think.")


async def test_calls_are_assembled_by_index_even_when_interleaved() -> None:
    adapter = ChatAdapter(GenerateConfig())
    head = {"type": "function", "function": {"name": "a"}}
    await fed(
        adapter,
        [
            chunk({"tool_calls": [{"index": 1, "id": "second", "type": "function", "function": {"name": "b"}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "first", **head}]}),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"y": 2}'}}]}, token=3),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}, token=4),
        ],
        [chunk(finish="tool_calls")],
    )
    assert [(c.id, c.name, c.arguments) for c in adapter.tool_calls] == [
        ("first", "a", {"x": 1}),
        ("second", "b", {"y": 2}),
    ]


async def test_a_token_that_made_several_chunks_gives_its_id_to_each() -> None:
    # llama-server attaches a token's probabilities to the last chunk it made.
    adapter = ChatAdapter(GenerateConfig())
    tokens = await fed(adapter, [chunk({"reasoning_content": "done"}), chunk({"content": "Hi"}, token=42)])
    assert [(t.id, t.kind) for t in tokens] == [(42, "reasoning"), (42, "content")]


async def test_text_released_at_the_end_with_no_token_has_id_minus_one() -> None:
    adapter = ChatAdapter(GenerateConfig())
    tokens = await fed(adapter, [chunk({"content": "tail"}), chunk(finish="stop")])
    assert [(t.id, t.text) for t in tokens] == [(-1, "tail")]


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", "not json"])
async def test_arguments_that_are_not_a_json_object_are_a_protocol_error_with_the_raw_text(arguments: str) -> None:
    adapter = ChatAdapter(GenerateConfig())
    out: list[Token] = []
    call = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    adapter.feed([chunk({"tool_calls": [call]}, token=1), chunk(finish="tool_calls")], out)
    with pytest.raises(ProtocolError) as info:
        await adapter.settle(out, nothing)
    assert info.value.text == arguments and "'f'" in str(info.value)


async def test_a_call_without_a_name_is_a_protocol_error() -> None:
    adapter = ChatAdapter(GenerateConfig())
    adapter.feed([chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, token=1)], [])
    with pytest.raises(ProtocolError, match="without a tool name"):
        await adapter.settle([], nothing)


async def test_empty_arguments_are_an_empty_object() -> None:
    adapter = ChatAdapter(GenerateConfig())
    await fed(adapter, [chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "now"}}]}, token=1)])
    assert adapter.tool_calls[0].arguments == {} and adapter.tool_calls[0].arguments_json == "{}"


async def test_a_stop_token_ends_the_chat_before_it_is_yielded() -> None:
    adapter = ChatAdapter(GenerateConfig(stop_tokens=frozenset({7})))
    out: list[Token] = []
    adapter.feed(
        [chunk({"content": "a"}, token=6), chunk({"content": "b"}, token=7), chunk({"content": "c"}, token=8)], out
    )
    assert [t.text for t in out] == ["a"] and adapter.ended and adapter.finish_reason() == "stop"


def test_dropped_tokens_leave_text_and_reasoning() -> None:
    adapter = ChatAdapter(GenerateConfig())
    out: list[Token] = []
    adapter.feed([chunk({"reasoning_content": "ab"}, token=1), chunk({"content": "cd"}, token=2)], out)
    adapter.feed([chunk({"reasoning_content": "ef"}, token=3), chunk({"content": "gh"}, token=4)], out)
    adapter.drop(out[2:])
    assert (adapter.reasoning, adapter.text, adapter.count) == ("ab", "cd", 2)


def test_the_chat_body_says_what_llama_server_needs() -> None:
    tools = as_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    body = chat_body(
        [Message("user", "hi")], GenerateConfig(max_tokens=5), tools=tools, tool_choice="f", reasoning=False
    )
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["tools"] == [tools[0].to_openai()] and body["tool_choice"] == "required"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    # Ids through the native field: OpenAI's logprobs is refused with tools and streaming.
    assert body["n_probs"] == 1 and "logprobs" not in body and body["max_tokens"] == 5
    effort = chat_body([Message("user", "hi")], GenerateConfig(), reasoning="high")
    assert effort["reasoning_effort"] == "high" and effort["chat_template_kwargs"] == {"enable_thinking": True}
    with pytest.raises(ValueError, match="reasoning must be"):
        chat_body([Message("user", "hi")], GenerateConfig(), reasoning="max")  # type: ignore[arg-type]


async def test_the_completion_adapter_keeps_real_ids_and_the_servers_stop_type() -> None:
    adapter = CompletionAdapter(GenerateConfig())
    out: list[Token] = []
    adapter.feed([{"content": "a", "tokens": [5]}, {"content": "b", "tokens": [6]}], out)
    adapter.feed([{"content": "", "stop": True, "stop_type": "limit", "tokens_evaluated": 3, "timings": {}}], out)
    await adapter.settle(out, nothing)
    assert [(t.id, t.text) for t in out] == [(5, "a"), (6, "b")]
    assert adapter.finish_reason() == "length" and adapter.prompt_tokens == 3


# -- behind a fake llama-server ----------------------------------------------------------------------


def sse(events: list[dict[str, Any] | str]) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


@pytest.fixture
async def fake_chat_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A server that answers /v1/chat/completions with a tool call whose arguments are cut short."""
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.path == "/props":
            caps = {"supports_tools": True}
            return web.json_response({"model_path": "/fake.gguf", "total_slots": 1, "chat_template_caps": caps})
        if request.path != "/v1/chat/completions":
            return web.json_response(
                {"error": {"code": 404, "message": "not here", "type": "not_found_error"}}, status=404
            )
        bodies.append(await request.json())
        call = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}
        return web.Response(
            body=sse([chunk({"tool_calls": [call]}, token=1), chunk(finish="tool_calls"), "[DONE]"]),
            content_type="text/event-stream",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", bodies
    finally:
        await server.close()


async def test_a_malformed_tool_call_is_the_streams_error_never_an_empty_dict(
    fake_chat_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, bodies = fake_chat_server
    async with rocm_infer.connect(url) as model:
        stream = model.chat(
            [{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "f"}}]
        )
        with pytest.raises(ProtocolError) as info:
            await stream
        assert info.value.text == '{"a": '
        assert stream.finish_reason == "error" and stream.error is info.value and stream.tool_calls == ()
        assert model.err is None  # a bad answer, not a broken model
    assert bodies[0]["tools"][0]["function"]["name"] == "f" and bodies[0]["stream"] is True


async def test_image_parts_reach_a_vision_server_as_data_urls(tmp_path: Any) -> None:
    # The request's shape, recorded from a fake server that says it takes images (the real server with a
    # projector made here is tests/test_tiny_projector.py's).
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path in ("/health", "/props"):
            props = {"status": "ok", "model_path": "/v.gguf", "total_slots": 1, "modalities": {"vision": True}}
            return web.json_response(props)
        bodies.append(await request.json())
        body = sse([chunk({"content": "a cat"}, token=3), chunk(finish="stop"), "[DONE]"])
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x01" * 16)
    try:
        async with rocm_infer.connect(f"http://127.0.0.1:{server.port}") as model:
            assert model.info.modalities == {"text", "vision"}
            reply = await model.chat([{"role": "user", "content": ["What is it?", rocm_infer.Image(png)]}])
    finally:
        await server.close()
    assert reply.text == "a cat"
    (message,) = bodies[0]["messages"]
    assert message["content"][0] == {"type": "text", "text": "What is it?"}
    url = message["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == png.read_bytes()


# -- the chat adapter's shortcut: the common chunk decoded without the JSON decoder --------------------

# A content chunk exactly as llama-server writes it with n_probs 1 and post-sampling probabilities.
_CHUNK = (
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":%s},"logprobs":{"content":[{"id":%d,'
    '"token":" both","bytes":[32,98,111,116,104],"prob":1.0,"top_probs":[{"id":%d,"token":" both",'
    '"bytes":[32,98,111,116,104],"prob":1.0}]}]}}],"created":1796206660,"id":"chatcmpl-hk",'
    '"model":"C:\\\\models\\\\tiny.gguf","system_fingerprint":"b0-unknown","object":"chat.completion.chunk"%s}'
)


def _chunk_data(text: str, token: int, extra: str = "") -> str:
    return _CHUNK % (json.dumps(text), token, token, extra)


@pytest.mark.parametrize("text", [" both", 'a "quoted" \\ word', "naïve 日本 \U0001f600", "\n\t", ""])
async def test_the_shortcut_gives_the_tokens_the_json_decoder_gives(text: str) -> None:
    datas = [_chunk_data(text, 7), _chunk_data(text + "!", 8)]
    shortcut = ChatAdapter(GenerateConfig()).shortcut()
    assert shortcut is not None
    quick = [shortcut(data) for data in datas]
    assert all(event is not None for event in quick)
    by_json = await fed(ChatAdapter(GenerateConfig()), [json.loads(data) for data in datas])
    by_shortcut = await fed(ChatAdapter(GenerateConfig()), quick)  # type: ignore[arg-type]
    assert by_shortcut == by_json
    # An empty delta makes no token either way.
    assert [(t.id, t.text) for t in by_shortcut] == [(i, t) for i, t in ((7, text), (8, text + "!")) if t]


async def test_after_the_shortcut_held_text_and_stop_tokens_go_as_from_the_json_decoder() -> None:
    # Text that came with no id (held for the next token's) is released with the shortcut's token;
    # a stop token from the shortcut ends the chat before it is yielded, as a decoded one does.
    held = {"choices": [{"finish_reason": None, "index": 0, "delta": {"reasoning_content": "hmm"}}]}
    datas = [_chunk_data("a", 6), _chunk_data("b", 7), _chunk_data("c", 8)]
    config = GenerateConfig(stop_tokens=frozenset({8}))
    shortcut = ChatAdapter(config).shortcut()
    assert shortcut is not None
    results = []
    for events in ([json.loads(data) for data in datas], [shortcut(data) for data in datas]):
        adapter = ChatAdapter(config)
        out: list[Token] = []
        adapter.feed([held, *events], out)  # type: ignore[list-item]
        results.append(([(t.id, t.text, t.kind) for t in out], adapter.ended, adapter.finish_reason(), adapter.text))
    assert results[0] == results[1]
    assert results[1] == ([(6, "hmm", "reasoning"), (6, "a", "content"), (7, "b", "content")], True, "stop", "ab")


@pytest.mark.parametrize(
    "data",
    [
        _chunk_data("x", 1, ',"usage":{"prompt_tokens":3}'),
        _chunk_data("x", 1, ',"timings":{"predicted_n":1}'),
        _chunk_data("x", 1, ',"error":{"message":"no"}'),
        _chunk_data("x", 1).replace('"finish_reason":null', '"finish_reason":"length"'),
        _chunk_data("x", 1).replace('{"content":"x"}', '{"content":"x","reasoning_content":"r"}'),
        _chunk_data("x", 1).replace('"prob":1.0}]}]', '"prob":1.0}]},{"id":2,"token":"y","bytes":[121],"prob":1.0}]'),
        '{"choices":[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0}]}}],"object":"c"}',
        '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"bad \\q escape"},"logprobs":{}}]}',
        "[DONE]",
    ],
    ids=["usage", "timings", "error", "finish", "reasoning", "two-entries", "tool-call", "bad-escape", "done"],
)
def test_the_shortcut_leaves_every_other_chunk_to_the_json_decoder(data: str) -> None:
    shortcut = ChatAdapter(GenerateConfig()).shortcut()
    assert shortcut is not None
    assert shortcut(data) is None


def test_no_shortcut_when_log_probabilities_are_asked_for() -> None:
    assert ChatAdapter(GenerateConfig(logprobs=2)).shortcut() is None
    # A /completion event is small: the JSON decoder reads it as fast as a shortcut would (2.9 us).
    assert CompletionAdapter(GenerateConfig()).shortcut() is None
