"""Output you can trust and inputs beyond text, against the real llama-server: structured output
that fails closed, logprobs, fill-in-the-middle and speculative decoding.

The scripted model (a character vocabulary) is what makes grammars possible: a word-vocabulary
model cannot spell JSON. A fake server stands in only where a real one cannot be made to ignore
the schema it was given.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import llama_server_pids
from pydantic import BaseModel

import rocm_infer
from rocm_infer import StructuredOutputError, TextModel
from rocm_infer.structured import OutputSchema, validate
from rocm_infer.tiny_model import make_tiny_model

# The scripted model's server is shared by the module: its tests run in the module's event loop.
module_loop = pytest.mark.asyncio(loop_scope="module")


class Weather(BaseModel):
    city: str
    temp: int
    sunny: bool


CHOICE = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no", "maybe"]}, "score": {"type": "integer", "minimum": 0}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model(scripted_model_path: Path, server_binary: str) -> AsyncIterator[TextModel]:
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_model(scripted_model_path, context_len=4096, threads=1) as loaded:
        yield loaded
    assert not llama_server_pids(server_binary) - before


# -- structured output, on the real server -----------------------------------------------------------


@pytest.mark.integration
@module_loop
async def test_a_pydantic_schema_constrains_the_chat_and_parses_into_an_instance(model: TextModel) -> None:
    # "plain" would say "Hi there.": the grammar forces JSON of the schema instead.
    result = await model.chat([{"role": "user", "content": "plain"}], response_format=Weather, max_tokens=64)
    assert isinstance(result.parsed, Weather)
    assert result.parsed == Weather.model_validate_json(result.text)
    assert result.finish_reason == "stop"


@pytest.mark.integration
@module_loop
async def test_a_dict_schema_is_validated_without_pydantic_and_streams(model: TextModel) -> None:
    stream = model.chat([{"role": "user", "content": "hi"}], response_format=CHOICE, reasoning=False, max_tokens=64)
    text = "".join([t.text async for t in stream if t.kind == "content"])
    assert stream.parsed == json.loads(text) and stream.parsed["answer"] in ("yes", "no", "maybe")
    assert not validate(stream.parsed, CHOICE)


@pytest.mark.integration
@module_loop
async def test_generate_takes_a_json_schema_or_a_grammar(model: TextModel) -> None:
    result = await model.generate("x", json_schema=CHOICE, max_tokens=64)
    assert result.parsed == json.loads(result.text) and set(result.parsed) == {"answer", "score"}
    yes_no = await model.generate("x", grammar='root ::= "yes" | "no"', max_tokens=8)
    assert yes_no.text in ("yes", "no") and yes_no.parsed is None


@pytest.mark.integration
@module_loop
async def test_output_cut_by_max_tokens_is_an_error_never_a_partial_object(model: TextModel) -> None:
    stream = model.chat([{"role": "user", "content": "json"}], response_format=Weather, max_tokens=5)
    tokens = []
    with pytest.raises(StructuredOutputError) as info:
        async for token in stream:
            tokens.append(token)
    assert info.value.reason == "length" and info.value.text == stream.text != ""
    assert tokens and "".join(t.text for t in tokens) == info.value.text  # every token first, then the error
    assert stream.parsed is None and stream.finish_reason == "error" and stream.error is info.value
    assert model.err is None


@pytest.mark.integration
@module_loop
async def test_a_schema_or_grammar_the_server_cannot_compile_is_a_clear_api_error(model: TextModel) -> None:
    with pytest.raises(rocm_infer.APIError, match="cannot resolve") as info:
        await model.generate("x", json_schema={"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}})
    assert info.value.status == 400
    with pytest.raises(rocm_infer.APIError, match="unrecognized type"):
        await model.chat([{"role": "user", "content": "hi"}], response_format={"type": "frobnicate"})
    with pytest.raises(rocm_infer.APIError) as grammar:
        await model.generate("x", grammar="root ::= undefined-rule", max_tokens=4)
    assert grammar.value.status == 400 and "grammar" in str(grammar.value).lower()


@module_loop
async def test_bad_structured_arguments_are_refused_before_any_request(tiny_model_path: Path) -> None:
    with pytest.raises(TypeError, match="pydantic model class or a JSON-schema dict"):
        OutputSchema("not a schema")
    with pytest.raises(ValueError, match="non-empty"):
        OutputSchema({})
    response_format = OutputSchema(Weather).response_format()
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["schema"]["title"] == "Weather"


# -- fail closed when the server does not enforce the schema ----------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def careless_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A server that answers whatever text it is told to, ignoring the schema."""
    replies: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path in ("/health", "/props"):
            return web.json_response({"status": "ok", "model_path": "/careless.gguf", "total_slots": 1})
        text = replies.pop(0)
        chunks = [
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": text},
                        "finish_reason": None,
                        "logprobs": {"content": [{"id": 5}]},
                    }
                ]
            },
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", replies
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("text", "schema", "reason"),
    [
        ("not json at all", Weather, "not_json"),
        ('{"city": "Paris", "temp": "warm", "sunny": true}', Weather, "invalid"),
        ('{"answer": "perhaps", "score": 1}', CHOICE, "invalid"),
        ('{"answer": "yes", "score": -1}', CHOICE, "invalid"),
        ('{"answer": "yes", "score": 1, "extra": 0}', CHOICE, "invalid"),
    ],
)
@module_loop
async def test_output_that_does_not_fit_is_refused(
    careless_server: tuple[str, list[str]], text: str, schema: Any, reason: str
) -> None:
    url, replies = careless_server
    replies.append(text)
    async with rocm_infer.connect(url) as model:
        with pytest.raises(StructuredOutputError) as info:
            await model.chat([{"role": "user", "content": "hi"}], response_format=schema)
    assert (info.value.reason, info.value.text) == (reason, text)


def test_the_validator_covers_what_llama_cpp_turns_into_grammar() -> None:
    schema = {
        "$defs": {"point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "maxItems": 2}},
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
            "at": {"$ref": "#/$defs/point"},
            "tags": {"type": "array", "items": {"const": "x"}, "minItems": 1},
            "n": {"anyOf": [{"type": "integer", "exclusiveMaximum": 10}, {"type": "null"}]},
            "kind": {"oneOf": [{"enum": ["a"]}, {"enum": ["b"]}]},
        },
        "required": ["name"],
    }
    assert validate({"name": "abc", "at": [1, 2.5], "tags": ["x"], "n": None, "kind": "a"}, schema) == []
    problems = validate({"name": "ABCDEFG", "at": [1, "2", 3], "tags": [], "n": 10, "kind": "c", "x": 1}, schema)
    assert len(problems) == 7, problems
    assert validate({}, schema) == ["$: 'name' is required"]
    assert validate(3.0, {"type": "integer"}) == [] and validate(True, {"type": "integer"})  # a bool is no int


# -- logprobs -------------------------------------------------------------------------------------------


@pytest.mark.integration
@module_loop
async def test_logprobs_stream_with_every_token_with_real_ids(model: TextModel, tiny_model_path: Path) -> None:
    async with rocm_infer.load_model(tiny_model_path, threads=1) as tiny:
        plain = await tiny.generate("once upon a time", max_tokens=8, ignore_eos=True)
        assert all(t.logprob is None and t.top_logprobs == () for t in plain.tokens)  # off: nothing
        stream = tiny.generate("once upon a time", max_tokens=8, ignore_eos=True, logprobs=3)
        tokens = [t async for t in stream]
        assert [t.id for t in tokens] == [t.id for t in plain.tokens]  # greedy: the same tokens
        for token in tokens:
            assert token.logprob is not None and token.logprob <= 0 and len(token.top_logprobs) == 3
            # Greedy: the chosen token is the most likely one, and the candidates come best first.
            assert token.top_logprobs[0].id == token.id
            assert math.isclose(token.top_logprobs[0].logprob, token.logprob, abs_tol=1e-4)
            assert [c.logprob for c in token.top_logprobs] == sorted(
                (c.logprob for c in token.top_logprobs), reverse=True
            )
        only = await tiny.generate("once upon a time", max_tokens=4, ignore_eos=True, logprobs=0)
        assert all(t.logprob is not None and t.top_logprobs == () for t in only.tokens)
        # classify keeps working beside it.
        (label,) = await tiny.classify(["once upon a time"], top_logprobs=3)
        assert label.token.id == plain.tokens[0].id
    chat = await model.chat([{"role": "user", "content": "plain"}], logprobs=2)
    assert chat.text == "Hi there." and all(t.logprob is not None and len(t.top_logprobs) == 2 for t in chat.tokens)


def test_logprobs_are_validated() -> None:
    with pytest.raises(ValueError):
        rocm_infer.GenerateConfig(logprobs=-1)
    with pytest.raises(TypeError):
        rocm_infer.GenerateConfig(logprobs=1.5)  # type: ignore[arg-type]


# -- fill in the middle ---------------------------------------------------------------------------


@pytest.mark.integration
@module_loop
async def test_infill_streams_the_middle_and_needs_fim_tokens(tmp_path: Path, tiny_model_path: Path) -> None:
    fim_path = make_tiny_model(tmp_path / "fim.gguf", seed=0, fim=True)
    assert rocm_infer.read_gguf_info(fim_path).fim is True and rocm_infer.read_gguf_info(tiny_model_path).fim is None
    async with rocm_infer.load_model(fim_path, threads=1) as coder:
        stream = coder.infill("def add(a, b):\n    return ", "\n", extra_context=[("util.py", "x = 1")], max_tokens=6)
        tokens = [t async for t in stream]
        assert len(tokens) == 6 and stream.finish_reason == "length" and all(t.id >= 0 for t in tokens)
        assert stream.metrics is not None and stream.metrics.prompt_tokens > 6  # prefix, suffix and extra sent
        with pytest.raises(TypeError, match="extra_context"):
            coder.infill("a", "b", extra_context=["just text"])  # type: ignore[list-item]
    async with rocm_infer.load_model(tiny_model_path, threads=1) as plain:
        with pytest.raises(rocm_infer.APIError, match="no fill-in-the-middle tokens"):
            await plain.infill("a", "b", max_tokens=2)
        with pytest.raises(ValueError, match="no fill-in-the-middle tokens"):  # known now: before any request
            plain.infill("a", "b")


# -- speculative decoding ---------------------------------------------------------------------------

PROMPT = "the cat sat on the mat the cat sat on the mat the cat"


@pytest.mark.integration
@module_loop
async def test_the_tiny_model_as_its_own_draft_gives_the_same_text_and_accepts_drafts(tiny_model_path: Path) -> None:
    async with rocm_infer.load_model(tiny_model_path, threads=1) as plain:
        expected = await plain.generate(PROMPT, max_tokens=48, ignore_eos=True)
    async with rocm_infer.load_model(tiny_model_path, threads=1, draft_model_path=tiny_model_path, draft_max=8) as spec:
        result = await spec.generate(PROMPT, max_tokens=48, ignore_eos=True)
    assert result.text == expected.text
    assert result.metrics.draft_tokens > 0 and 0 < result.metrics.draft_accepted <= result.metrics.draft_tokens
    assert expected.metrics.draft_tokens == 0


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["ngram-simple", "ngram-cache"])
@module_loop
async def test_draft_free_speculation_keeps_the_greedy_text(tiny_model_path: Path, mode: str) -> None:
    async with rocm_infer.load_model(tiny_model_path, threads=1) as plain:
        expected = await plain.generate(PROMPT, max_tokens=32, ignore_eos=True)
    async with rocm_infer.load_model(tiny_model_path, threads=1, speculative=mode) as spec:
        assert f"--spec-type {mode}" in " ".join(spec.server.args)  # type: ignore[union-attr]
        assert (await spec.generate(PROMPT, max_tokens=32, ignore_eos=True)).text == expected.text


@pytest.mark.integration
@module_loop
async def test_a_draft_of_another_vocabulary_fails_the_load_with_the_servers_reason(
    tiny_model_path: Path, scripted_model_path: Path, no_leaked_servers: None
) -> None:
    with pytest.raises(rocm_infer.ServerStartError, match="vocab") as info:
        await rocm_infer.load_model(tiny_model_path, threads=1, draft_model_path=scripted_model_path)
    assert "cannot use the draft model" in str(info.value) and "speculative" in info.value.output_tail


def test_speculative_options_are_checked_before_anything_starts(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown speculative mode"):
        rocm_infer.LoadConfig(speculative="ngram-magic")
    with pytest.raises(ValueError):
        rocm_infer.LoadConfig(draft_max=-1)
    with pytest.raises(ValueError, match="host:port"):
        rocm_infer.LoadConfig(rpc_servers=["nohost"])
