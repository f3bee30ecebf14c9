"""The scripted model: what the real llama-server makes of each script, streamed and not.

One llama-server (started through the SDK) serves the module; the tests talk to it with
``model.client.request_json`` and ``model.client.stream_chat_completion`` only, at temperature 0.
They pin how llama-server parses this model's output (reasoning, tool calls, finish reasons), how
a request turns thinking off, and what a grammar does to a script.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import pytest_asyncio
from conftest import llama_server_pids

import rocm_infer
from rocm_infer.scripted_model import (
    DEFAULT_SCRIPTS,
    GRAMMAR_NOISE,
    SCRIPTED_CHAT_TEMPLATE,
    Script,
    chat_template,
    main,
    make_scripted_model,
)

pytestmark = pytest.mark.integration
module_loop = pytest.mark.asyncio(loop_scope="module")

# Two extra scripts: "echo" repeats words of the default scripts ("Hi", " there.", " is"), so its
# pieces have to be cut apart from theirs; "tricky" holds "</think>\n\n", which as a piece would
# swallow the nothink cue at the end of the thinking-off generation prompt.
SCRIPTS: Mapping[str, Script] = {
    **DEFAULT_SCRIPTS,
    "echo": Script("Hi there. It is sunny. Hi there."),
    "tricky": Script("See </think>\n\nabove."),
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a time zone.",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
        },
    },
]
PARIS = ("get_weather", {"city": "Paris"})
CET = ("get_time", {"zone": "CET"})
REASONING = "The user wants the weather. I will call get_weather."
OFF: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": False}}


@dataclass(frozen=True, slots=True)
class Reply:
    """An assistant message as llama-server parsed it, from a response or from stream deltas."""

    content: str
    reasoning: str | None
    calls: tuple[tuple[str, str], ...]  # (name, arguments as sent)
    finish_reason: str

    @property
    def parsed_calls(self) -> list[tuple[str, Any]]:
        return [(name, json.loads(arguments)) for name, arguments in self.calls]


# name -> (content, reasoning_content, tool calls, finish_reason), with tools offered
EXPECTED: dict[str, tuple[str, str | None, list[tuple[str, Any]], str]] = {
    "default": ("", REASONING, [PARIS], "tool_calls"),
    "answer": ("It is sunny in Paris today.", None, [], "stop"),
    "nothink": ("Hello! How can I help?", None, [], "stop"),
    "plain": ("Hi there.", None, [], "stop"),
    "two_calls": ("", None, [PARIS, CET], "tool_calls"),
    "json": ('{"city": "Paris", "temp": 21}', None, [], "stop"),
    "echo": ("Hi there. It is sunny. Hi there.", None, [], "stop"),
    "tricky": ("See </think>\n\nabove.", None, [], "stop"),
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scripted_model(
        tmp_path_factory.mktemp("scripted") / "scripted.gguf", scripts=SCRIPTS, noise=GRAMMAR_NOISE
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model(model_path: Path, server_binary: str) -> AsyncIterator[rocm_infer.TextModel]:
    """One server for the module; checks it is gone afterwards."""
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_model(model_path, context_len=2048, threads=1) as loaded:
        yield loaded
    assert not llama_server_pids(server_binary) - before


def _body(last: str | list[dict[str, Any]], *, tools: bool = True, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": last}] if isinstance(last, str) else last
    body: dict[str, Any] = {"messages": messages, "temperature": 0, "max_tokens": 64, **fields}
    if tools:
        body["tools"] = TOOLS
    return body


async def _chat(model: rocm_infer.TextModel, body: dict[str, Any]) -> tuple[Reply, dict[str, Any]]:
    response = await model.client.request_json("POST", "/v1/chat/completions", body)
    choice = response["choices"][0]
    message = choice["message"]
    calls = tuple((c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", []))
    reply = Reply(message.get("content") or "", message.get("reasoning_content"), calls, choice["finish_reason"])
    return reply, response


async def _stream(model: rocm_infer.TextModel, body: dict[str, Any]) -> tuple[Reply, int]:
    """The reply assembled from stream deltas, and how many deltas carried text."""
    content, reasoning, finish, deltas = "", None, "", 0
    calls: dict[int, list[str]] = {}
    async with model.client.stream_chat_completion({**body, "stream": True}) as events:
        async for event in events:
            for choice in event["choices"]:
                delta = choice.get("delta", {})
                if delta.get("content"):
                    content += delta["content"]
                    deltas += 1
                if delta.get("reasoning_content"):
                    reasoning = (reasoning or "") + delta["reasoning_content"]
                    deltas += 1
                for call in delta.get("tool_calls") or []:
                    entry = calls.setdefault(call["index"], ["", ""])
                    entry[0] += call.get("function", {}).get("name") or ""
                    entry[1] += call.get("function", {}).get("arguments") or ""
                    deltas += 1
                finish = choice.get("finish_reason") or finish
    return Reply(content, reasoning, tuple((n, a) for n, a in (calls[i] for i in sorted(calls))), finish), deltas


async def _prompt(model: rocm_infer.TextModel, body: dict[str, Any]) -> str:
    result = await model.client.request_json("POST", "/apply-template", body)
    prompt: str = result["prompt"]
    return prompt


async def _last_piece(model: rocm_infer.TextModel, prompt: str) -> str:
    result = await model.client.request_json("POST", "/tokenize", {"content": prompt, "with_pieces": True})
    piece: str = result["tokens"][-1]["piece"]
    return piece


# -- the file ---------------------------------------------------------------------------------------


def test_same_arguments_same_bytes_other_seed_or_noise_other_bytes(tmp_path: Path) -> None:
    a = make_scripted_model(tmp_path / "a.gguf", seed=1, noise=0.5).read_bytes()
    assert make_scripted_model(tmp_path / "b.gguf", seed=1, noise=0.5).read_bytes() == a
    assert make_scripted_model(tmp_path / "c.gguf", seed=2, noise=0.5).read_bytes() != a
    assert make_scripted_model(tmp_path / "d.gguf", seed=1, noise=0.0).read_bytes() != a
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_file_holds_a_one_hot_llama_with_the_template_and_unique_tokens(model_path: Path) -> None:
    reader = gguf.GGUFReader(model_path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.chat_template"].contents() == chat_template(SCRIPTS)
    assert reader.fields["tokenizer.ggml.add_space_prefix"].contents() is False
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(set(tokens)) == len(tokens)  # llama.cpp's loader asserts this
    for text in ("<think>", "</think>", "<tool_call>", "</tool_call>", "<|cue:default|>", "\n\n", "\n", "\u2581"):
        assert text in tokens
    assert all(chr(c) in tokens for c in range(0x21, 0x7F))
    embedding = np.asarray(next(t for t in reader.tensors if t.name == "token_embd.weight").data)
    assert embedding.shape[0] == len(tokens) and embedding.shape[1] >= len(tokens)
    assert (embedding[:, : len(tokens)] == np.eye(len(tokens))).all() and not embedding[:, len(tokens) :].any()


def test_default_template_is_the_template_of_the_default_scripts() -> None:
    assert chat_template() == SCRIPTED_CHAT_TEMPLATE
    assert "'two_calls'" in SCRIPTED_CHAT_TEMPLATE and "'echo'" not in SCRIPTED_CHAT_TEMPLATE


def test_bad_scripts_are_refused(tmp_path: Path) -> None:
    without_answer = {k: v for k, v in DEFAULT_SCRIPTS.items() if k != "answer"}
    with pytest.raises(ValueError, match="answer"):
        make_scripted_model(tmp_path / "m.gguf", scripts=without_answer)
    with pytest.raises(ValueError, match="name"):
        make_scripted_model(tmp_path / "m.gguf", scripts={**DEFAULT_SCRIPTS, "two calls": Script("x y")})
    with pytest.raises(ValueError, match="special"):
        make_scripted_model(tmp_path / "m.gguf", scripts={**DEFAULT_SCRIPTS, "eot": Script("a<|im_end|>b")})
    with pytest.raises(ValueError, match="cannot cut"):  # one character is a character token already
        make_scripted_model(tmp_path / "m.gguf", scripts={**DEFAULT_SCRIPTS, "one": Script("x")})
    with pytest.raises(ValueError, match="noise"):
        make_scripted_model(tmp_path / "m.gguf", noise=-1.0)
    with pytest.raises(ValueError, match="text or a loop"):
        Script("")
    with pytest.raises(ValueError, match="n_layer"):
        make_scripted_model(tmp_path / "m.gguf", n_layer=0)
    with pytest.raises(TypeError, match="n_ff"):
        make_scripted_model(tmp_path / "m.gguf", n_ff=64.0)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_main_writes_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli.gguf"), "--seed", "3", "--noise", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli.gguf")
    assert (tmp_path / "cli.gguf").read_bytes() == make_scripted_model(
        tmp_path / "m.gguf", seed=3, noise=0.5
    ).read_bytes()


# -- the server -------------------------------------------------------------------------------------


@module_loop
async def test_props_report_tool_support_and_the_template(model: rocm_infer.TextModel) -> None:
    props = await model.client.props()
    caps = props["chat_template_caps"]
    assert caps["supports_tools"] and caps["supports_tool_calls"] and caps["supports_parallel_tool_calls"]
    assert props["chat_template"] == chat_template(SCRIPTS)
    assert props["eos_token"] == "<|im_end|>"


@module_loop
async def test_the_server_parses_with_the_generic_peg_format(model: rocm_infer.TextModel) -> None:
    await _chat(model, _body("plain"))
    slots = await model.client.request_json("GET", "/slots")
    params = [slot.get("params", {}) for slot in slots]  # a slot that never ran has none
    served = [p for p in params if p.get("generation_prompt", "").endswith("<|cue:plain|>")]
    assert served and all(p["chat_format"] == "peg-native" for p in served)


@module_loop
@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_each_script_comes_out_exactly_streamed_and_not(model: rocm_infer.TextModel, name: str) -> None:
    content, reasoning, calls, finish = EXPECTED[name]
    body = _body("What is the weather in Paris?" if name == "default" else name)
    reply, response = await _chat(model, body)
    assert (reply.content, reply.reasoning, reply.parsed_calls, reply.finish_reason) == (
        content,
        reasoning,
        calls,
        finish,
    )
    streamed, deltas = await _stream(model, body)
    assert streamed == reply
    assert deltas > 1  # really streamed, piece by piece
    if name != "default":  # the default script is what a prompt that names no script gets
        assert (await _chat(model, _body(f"{name} ")))[0] == (await _chat(model, _body("hello")))[0]


@pytest.mark.integration
async def test_more_and_wider_layers_say_the_same(model_path: Path, tmp_path: Path) -> None:
    # The layers' outputs are zero: a bigger model (a weight-bound target, with the one-layer
    # model as its draft) says exactly what the small one says, and is a bigger file.
    big = make_scripted_model(tmp_path / "big.gguf", scripts=SCRIPTS, noise=GRAMMAR_NOISE, n_layer=3, n_ff=512)
    assert big.stat().st_size > model_path.stat().st_size + 3 * 3 * 512 * 64
    said = []
    for path in (model_path, big):
        async with rocm_infer.load_model(path, context_len=2048, threads=1) as loaded:
            reply, _ = await _chat(loaded, _body("answer"))
            text = (await loaded.generate("Hi", max_tokens=24, ignore_eos=True, temperature=0.0)).text
            said.append((reply.content, text))
    assert said[0] == said[1]
    assert said[0][0] == EXPECTED["answer"][0] and said[0][1]


@module_loop
async def test_tool_calls_get_ids_and_plain_text_without_tools_stays_text(model: rocm_infer.TextModel) -> None:
    _, response = await _chat(model, _body("two_calls"))
    ids = [call["id"] for call in response["choices"][0]["message"]["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids)
    # Without tools the same output is not parsed as calls: the reasoning is still split off.
    reply, _ = await _chat(model, _body("hi", tools=False))
    assert reply.reasoning == REASONING
    assert reply.content == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert (reply.calls, reply.finish_reason) == ((), "stop")


@module_loop
async def test_cues_pick_the_script_and_never_show(model: rocm_infer.TextModel) -> None:
    prompt = await _prompt(model, _body("plain"))
    assert prompt.endswith("<|im_start|>assistant\n<|cue:plain|>")
    assert await _last_piece(model, prompt) == "<|cue:plain|>"  # one token, the one that picks the script
    off = await _prompt(model, _body("plain", **OFF))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert await _last_piece(model, off) == "\n\n"
    for name in EXPECTED:
        reply, _ = await _chat(model, _body(name))
        assert "cue" not in reply.content and "cue" not in (reply.reasoning or "")


@module_loop
async def test_tool_round_trip_gives_the_answer(model: rocm_infer.TextModel) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    _, first = await _chat(model, _body([question]))
    assistant = first["choices"][0]["message"]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"} for call in assistant["tool_calls"]
    ]
    history = [question, assistant, *results]
    prompt = await _prompt(model, _body(history))
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert f"<think>\n{REASONING}\n</think>" in prompt
    reply, _ = await _chat(model, _body(history))
    assert (reply.content, reply.reasoning, reply.calls, reply.finish_reason) == (
        "It is sunny in Paris today.",
        None,
        (),
        "stop",
    )
    # Two results of two parallel calls also end in the answer.
    _, both = await _chat(model, _body("two_calls"))
    calls = both["choices"][0]["message"]
    two = [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls["tool_calls"]]
    prompt = await _prompt(model, _body([{"role": "user", "content": "two_calls"}, calls, *two]))
    assert prompt.count("<tool_response>") == 2 and prompt.count("<|im_start|>user") == 2
    assert (await _chat(model, _body([{"role": "user", "content": "two_calls"}, calls, *two])))[0].content == (
        "It is sunny in Paris today."
    )


@module_loop
async def test_thinking_off_gives_nothink_without_reasoning(model: rocm_infer.TextModel) -> None:
    expected = Reply("Hello! How can I help?", None, (), "stop")
    for fields in (OFF, {"reasoning_effort": "none"}):
        assert (await _chat(model, _body("What is the weather?", **fields)))[0] == expected
        assert (await _stream(model, _body("What is the weather?", **fields)))[0] == expected
    # Thinking off wins over a tool result and over a script name.
    history = [{"role": "user", "content": "plain"}, {"role": "tool", "tool_call_id": "x", "content": "ok"}]
    assert (await _chat(model, _body(history, **OFF)))[0] == expected
    # enable_thinking: true is the default, and picks the default script.
    on: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": True}}
    assert (await _chat(model, _body("hi", **on)))[0].reasoning == REASONING


@module_loop
async def test_reasoning_budget_zero_cuts_reasoning_but_does_not_turn_thinking_off(
    model: rocm_infer.TextModel,
) -> None:
    # The sampler forces "</think>" right after the model's "<think>"; what follows "</think>" in
    # the default script is the tool call, so it still comes.
    reply, _ = await _chat(model, _body("What is the weather?", reasoning_budget_tokens=0))
    assert (reply.content, reply.reasoning, reply.parsed_calls, reply.finish_reason) == (
        "",
        None,
        [PARIS],
        "tool_calls",
    )


@module_loop
async def test_reasoning_format_none_leaves_the_think_block_in_the_content(model: rocm_infer.TextModel) -> None:
    reply, _ = await _chat(model, _body("hi", reasoning_format="none"))
    assert reply.content == f"<think>{REASONING}</think>"
    assert (reply.reasoning, reply.parsed_calls) == (None, [PARIS])


SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["count", "ok", "color"],
    "additionalProperties": False,
}


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@module_loop
@pytest.mark.parametrize("last", ["What is it?", "plain", "think_forever", "call_forever"])
async def test_json_schema_grammar_overrides_the_script_with_valid_json(model: rocm_infer.TextModel, last: str) -> None:
    body = _body(last, tools=False, reasoning_format="none", response_format=_json_schema(SCHEMA))
    reply, response = await _chat(model, body)
    assert reply.finish_reason == "stop"
    assert response["usage"]["completion_tokens"] < 64
    value = json.loads(reply.content)
    assert set(value) == {"count", "ok", "color"}
    assert type(value["count"]) is int and type(value["ok"]) is bool and value["color"] in {"red", "green", "blue"}
    assert (await _chat(model, body))[0] == reply  # reproducible
    streamed, _ = await _stream(model, body)
    assert json.loads(streamed.content) == value


@module_loop
async def test_a_schema_the_script_fits_lets_the_script_through(model: rocm_infer.TextModel) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
        "required": ["city", "temp"],
    }
    body = _body("json", tools=False, reasoning_format="none", response_format=_json_schema(schema))
    assert (await _chat(model, body))[0].content == '{"city": "Paris", "temp": 21}'


@module_loop
async def test_bad_args_are_repaired_by_the_tool_call_grammar(model: rocm_infer.TextModel) -> None:
    # The lazy tool-call grammar wakes on "<tool_call>\n" and forbids the unclosed object: the
    # model falls back to characters that close it, so the server sends a call with valid JSON
    # arguments (the city cut short), never an error or broken arguments.
    reply, _ = await _chat(model, _body("bad_args"))
    assert reply.finish_reason == "tool_calls"
    [(name, arguments)] = reply.parsed_calls
    assert name == "get_weather" and set(arguments) == {"city"}
    assert "Paris".startswith(arguments["city"]) and arguments["city"]
    assert (await _stream(model, _body("bad_args")))[0].parsed_calls == reply.parsed_calls
    # Without tools there is no grammar and no parsing: the broken call is the content, verbatim.
    text, _ = await _chat(model, _body("bad_args", tools=False))
    assert text.content == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>'


@module_loop
async def test_forever_scripts_end_only_by_max_tokens(model: rocm_infer.TextModel) -> None:
    reply, response = await _chat(model, _body("think_forever", max_tokens=200))
    assert (reply.finish_reason, response["usage"]["completion_tokens"]) == ("length", 200)
    assert reply.reasoning is not None and reply.reasoning.startswith("Let me think. Still thinking. Still")
    assert reply.reasoning.count(" Still thinking.") > 90 and reply.content == ""

    reply, response = await _chat(model, _body("call_forever", max_tokens=200))
    assert (reply.finish_reason, response["usage"]["completion_tokens"]) == ("length", 200)
    [(name, arguments)] = reply.calls
    assert name == "get_weather" and arguments.startswith('{"city": "' + "a" * 700)
    with pytest.raises(json.JSONDecodeError):  # cut off mid-string: the only way to broken arguments
        json.loads(arguments)

    streamed, deltas = await _stream(model, _body("think_forever", max_tokens=200))
    assert streamed.finish_reason == "length" and deltas > 150
    assert streamed.reasoning is not None and len(streamed.reasoning) > 1000
    assert ("Let me think." + 200 * " Still thinking.").startswith(streamed.reasoning)


@module_loop
async def test_closing_a_forever_stream_leaves_the_server_ready(model: rocm_infer.TextModel) -> None:
    seen = 0
    async with model.client.stream_chat_completion(
        {**_body("call_forever", max_tokens=1500), "stream": True}
    ) as events:
        async for _ in events:
            seen += 1
            if seen == 20:
                break
    assert seen == 20
    assert (await _chat(model, _body("plain")))[0].content == "Hi there."
