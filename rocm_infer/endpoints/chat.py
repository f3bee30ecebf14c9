"""``/v1/chat/completions``: the request for ``chat``, and its content, reasoning and tool-call deltas.

llama-server applies the model's chat template and runs its reasoning and
tool-call parsers on the output, so a streamed chunk's ``delta`` carries
``content``, ``reasoning_content`` (a thinking model's reasoning) or
``tool_calls`` (a call's id and name, then its JSON arguments in pieces, by
``index``). Token ids come from one post-sampling candidate per token,
asked for with the native ``n_probs`` field: the endpoint refuses OpenAI's
``logprobs`` together with tools and streaming, but attaches the sampled
token's probabilities to the last chunk each token produced either way.

At the end the tool calls are assembled; arguments that are not a JSON object
are a :class:`~rocm_infer.errors.ProtocolError` carrying the raw text, never
a silently empty dict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..client import JSON
from ..config import GenerateConfig
from ..errors import ProtocolError
from ..structured import OutputSchema
from ..tools import Tool, tool_choice_body
from ..types import Message, Token, TokenKind, TokenLogprob, ToolCall
from .base import TOKEN_EVENT, Detokenize, EventAdapter, Shortcut, _cut, logprobs_of, sampling_body

__all__ = ["ChatAdapter", "Reasoning", "chat_body"]

# True/False: on/off; an effort level for templates that take one (gpt-oss).
Reasoning = bool | Literal["low", "medium", "high"] | None
_EFFORTS = ("low", "medium", "high")


def chat_body(
    messages: Sequence[Message],
    config: GenerateConfig,
    *,
    tools: tuple[Tool, ...] = (),
    tool_choice: str | None = None,
    reasoning: Reasoning = None,
    schema: OutputSchema | None = None,
) -> dict[str, Any]:
    """The ``/v1/chat/completions`` request body; ValueError for a bad tool choice or reasoning value.

    ``schema`` asks for structured output, in the ``response_format`` shape the
    server enforces.
    """
    body = sampling_body(config, chat=True)
    if schema is not None:
        if tools:
            raise ValueError(
                "structured output (response_format) cannot be combined with tools: llama-server refuses it"
            )
        body["response_format"] = schema.response_format()
    body["messages"] = [m.to_openai() for m in messages]
    body["stream_options"] = {"include_usage": True}
    sent, choice = tool_choice_body(tool_choice, tools)
    if sent:
        body["tools"] = [t.to_openai() for t in sent]
    if choice is not None:
        body["tool_choice"] = choice
    if reasoning is not None:
        kwargs = dict(body.get("chat_template_kwargs") or {})
        if reasoning is True or reasoning is False:
            kwargs["enable_thinking"] = reasoning
        elif reasoning in _EFFORTS:
            kwargs["enable_thinking"] = True
            body["reasoning_effort"] = reasoning
        else:
            raise ValueError(f"reasoning must be None, True, False, 'low', 'medium' or 'high', not {reasoning!r}")
        body["chat_template_kwargs"] = kwargs
    # One post-sampling candidate per token is how this endpoint reports token ids.
    body.setdefault("n_probs", 1)
    body.setdefault("post_sampling_probs", True)
    return body


# The JSON decoder's own string scanner (C), which the stubs do not declare.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
# JSON as llama-server writes it (no whitespace): a string, a number.
_STRING = r'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"'
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# A chunk of one content token, as llama-server writes it: the delta's text, then the token's
# probabilities entry (its id, and candidates with their own ids) and the end of the only choice.
_CHUNK_HEAD = '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"'
_PROBS = r',"bytes":\[[\d,]*\],"(?:prob|logprob)":' + _NUMBER
_CANDIDATE = r'\{"id":-?\d+,"token":' + _STRING + _PROBS
_CHUNK_TAIL = re.compile(
    r'\},"logprobs":\{"content":\[\{"id":(\d+),"token":'
    + _STRING
    + _PROBS
    + r'(?:,"top_(?:probs|logprobs)":\[(?:'
    + _CANDIDATE
    + r"\}(?:,"
    + _CANDIDATE
    + r"\})*)?\])?\}\]\}\}\],"
)


def _token_chunk(data: str) -> JSON | None:
    """A content token's chunk as ``{TOKEN_EVENT: (id, text)}``, which :meth:`ChatAdapter.feed` reads
    before anything else, or None (see :meth:`~rocm_infer.endpoints.base.EventAdapter.shortcut`).
    After the only choice come the chunk's own fields; one that is not (usage, timings, an error)
    sends the chunk to the JSON decoder. A key can be told from text by the colon after it: in a
    string a quote is escaped."""
    if not data.startswith(_CHUNK_HEAD):
        return None
    try:
        text, end = _scanstring(data, len(_CHUNK_HEAD))
    except ValueError:  # not a JSON string: the JSON decoder says what is wrong
        return None
    match = _CHUNK_TAIL.match(data, end)
    if match is None:
        return None
    rest = data[match.end() :]
    if '"usage":' in rest or '"timings":' in rest or '"error":' in rest or '"choices":' in rest:
        return None
    return {TOKEN_EVENT: (int(match[1]), text)}


class _CallParts:
    __slots__ = ("id", "name", "arguments")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class ChatAdapter(EventAdapter):
    """Tokens from ``/v1/chat/completions`` chunks (see the module docs)."""

    __slots__ = ("_stop_tokens", "_reasoning", "_calls", "_pending", "_assembled")

    def __init__(self, config: GenerateConfig, schema: OutputSchema | None = None) -> None:
        super().__init__(config, schema)
        self._stop_tokens = config.stop_tokens
        self._reasoning: list[str] = []
        self._calls: dict[int, _CallParts] = {}
        # Pieces of a token whose id arrives with a later chunk of the same token.
        self._pending: list[tuple[TokenKind, str]] = []
        self._assembled: tuple[ToolCall, ...] = ()

    def feed(self, events: list[JSON], out: list[Token]) -> None:
        content = self._content
        stop_tokens = self._stop_tokens
        pending = self._pending
        top = self._top
        for event in events:
            pair = event.get(TOKEN_EVENT)
            if pair is not None:  # the common chunk, from the shortcut: one content token
                token_id, text = pair
                if stop_tokens and token_id in stop_tokens:
                    self.stop_type = "stop_token"
                    self.ended = True
                    return
                if pending:
                    self._release(out, token_id)
                if text:
                    out.append(Token(token_id, text))
                    content.append(text)
                    self.count += 1
                continue
            if "usage" in event:
                usage = event["usage"]
                if isinstance(usage, dict):
                    self.prompt_tokens = usage.get("prompt_tokens")
            if "timings" in event:
                self.final = event
            choices = event.get("choices")
            if not choices:
                continue
            choice = choices[0]
            finish = choice.get("finish_reason")
            if finish is not None:
                self.stop_type = finish
            delta = choice.get("delta")
            if not delta:
                continue
            text = delta.get("content")
            probs = choice.get("logprobs")
            if probs is None:
                # No id in this chunk: its text waits for the id of the token that made it.
                self._collect(delta, text, pending)
                continue
            items = probs.get("content")
            token_id = items[-1].get("id", -1) if items else -1
            if stop_tokens and token_id in stop_tokens:
                self.stop_type = "stop_token"
                self.ended = True
                return
            if top is not None and items:
                logprob, candidates = logprobs_of(items[-1], top)
                self._collect(delta, text, pending)
                self._release(out, token_id, logprob, candidates)
                continue
            if pending:
                self._release(out, token_id)
            if text and len(delta) <= 2:  # the common case: content only (and maybe "role")
                out.append(Token(token_id, text))
                content.append(text)
                self.count += 1
                continue
            self._collect(delta, text, pending)
            self._release(out, token_id)
        if pending:
            # Text the server released with no token of its own (a call parsed at the end).
            self._release(out, -1)

    def shortcut(self) -> Shortcut | None:
        return _token_chunk if self._top is None else None

    def _collect(self, delta: JSON, text: str | None, pending: list[tuple[TokenKind, str]]) -> None:
        reasoning = delta.get("reasoning_content")
        if reasoning:
            pending.append(("reasoning", reasoning))
        if text:
            pending.append(("content", text))
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                parts = self._calls.setdefault(int(call.get("index", 0)), _CallParts())
                if call.get("id"):
                    parts.id = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    parts.name += function["name"]
                arguments = function.get("arguments")
                if arguments:
                    parts.arguments.append(arguments)
                    pending.append(("tool_call", arguments))

    def _release(
        self,
        out: list[Token],
        token_id: int,
        logprob: float | None = None,
        candidates: tuple[TokenLogprob, ...] = (),
    ) -> None:
        for kind, text in self._pending:
            out.append(Token(token_id, text, kind, logprob, candidates))
            if kind == "content":
                self._content.append(text)
            elif kind == "reasoning":
                self._reasoning.append(text)
            self.count += 1
        self._pending.clear()

    async def settle(self, out: list[Token], detokenize: Detokenize) -> None:
        calls = []
        for index in sorted(self._calls):
            parts = self._calls[index]
            raw = "".join(parts.arguments)
            try:
                arguments = json.loads(raw) if raw.strip() else {}
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                if self.finish_reason() == "length":
                    why = "was cut off by max_tokens before its arguments were complete"
                else:
                    why = "has arguments that are not a JSON object"
                raise ProtocolError(f"the model's call of tool {parts.name!r} {why}: {raw!r}", text=raw)
            if not parts.name:
                raise ProtocolError(f"the model made a tool call without a tool name (arguments {raw!r})", text=raw)
            calls.append(ToolCall(parts.id, parts.name, arguments, raw or "{}"))
        self._assembled = tuple(calls)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self._assembled

    def message(self) -> Message:
        return Message("assistant", self.text, tool_calls=self._assembled, reasoning=self.reasoning or None)

    def drop(self, tokens: Sequence[Token]) -> None:
        super().drop(tokens)
        cut = sum(len(t.text) for t in tokens if t.kind == "reasoning")
        self._reasoning[:] = [_cut(self.reasoning, cut)]
