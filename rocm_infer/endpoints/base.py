"""What every endpoint adapter shares: sampling fields of a request, and the adapter's state.

An adapter is fed the decoded JSON events of one streamed response
(:meth:`EventAdapter.feed`) and appends the tokens they carry; it tracks the
text per kind, the server's reason for stopping, its ``timings`` and usage.
No I/O: :meth:`EventAdapter.settle` is handed a ``detokenize`` coroutine for
the one case that needs the server (text llama-server dropped).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..client import JSON, Shortcut
from ..config import GenerateConfig
from ..structured import OutputSchema
from ..types import FinishReason, Message, Token, TokenLogprob, ToolCall

__all__ = ["Detokenize", "EventAdapter", "Shortcut", "sampling_body"]

Detokenize = Callable[[list[int]], Awaitable[str]]

# The key of the event a shortcut makes, holding one content token's (id, text), which an adapter's
# feed reads first: not a str, so no event the JSON decoder makes can have it.
TOKEN_EVENT: Any = object()

# llama-server's stop_type (native API) and finish_reason (OpenAI API) to ours.
STOP_TYPES: dict[object, FinishReason] = {
    "eos": "stop",
    "word": "stop",
    "stop": "stop",
    "stop_token": "stop",
    "limit": "length",
    "length": "length",
    "tool_calls": "tool_calls",
}


def sampling_body(config: GenerateConfig, *, chat: bool) -> dict[str, Any]:
    """The request fields for ``config``'s sampling and stopping options.

    ``chat`` picks the OpenAI field name for the token limit (``max_tokens``)
    over the native one (``n_predict``). ``extra_body`` goes last, as is.
    """
    body: dict[str, Any] = {"temperature": config.temperature}
    if config.max_tokens is not None:
        body["max_tokens" if chat else "n_predict"] = config.max_tokens
    for name in ("top_k", "top_p", "min_p", "repeat_penalty", "seed"):
        value = getattr(config, name)
        if value is not None:
            body[name] = value
    if config.stop:
        body["stop"] = list(config.stop)
    if config.ignore_eos:
        body["ignore_eos"] = True
    if config.stop_tokens:
        # So the metrics are the server's even when the SDK ends the stream early.
        body["timings_per_token"] = True
    if config.logprobs is not None:
        # Log-probabilities before sampling, for the chosen token and the top candidates.
        body["n_probs"] = max(1, config.logprobs)
        body["post_sampling_probs"] = False
    body.update(config.extra_body)
    return body


class EventAdapter:
    """Base of the endpoint adapters: the state a stream reads when it ends.

    * ``count``: tokens appended so far; ``ended``: the adapter decided the
      generation is over (a stop token) before the server said so;
    * ``final``: the event that carried llama-server's ``timings``;
      ``prompt_tokens``: the prompt's size as the server reported it;
    * ``stop_type``: the server's own word for why it stopped.
    """

    __slots__ = ("count", "ended", "final", "prompt_tokens", "stop_type", "schema", "parsed", "_content", "_top")

    def __init__(self, config: GenerateConfig, schema: OutputSchema | None = None) -> None:
        self.count = 0
        # Structured output: the schema the text must fit, and the value once it does.
        self.schema = schema
        self.parsed: Any = None
        # How many candidates each token carries (None: no log-probabilities asked for).
        self._top = config.logprobs
        self.ended = False
        self.final: JSON | None = None
        self.prompt_tokens: int | None = None
        self.stop_type: object = None
        self._content: list[str] = []

    def feed(self, events: list[JSON], out: list[Token]) -> None:
        """Turn one network read's events into tokens, appended to ``out``."""
        raise NotImplementedError

    def shortcut(self) -> Shortcut | None:
        """A decoder for the event that carries one content token and nothing else, or None.

        It is handed each event's data before the JSON decoder is, and returns
        ``{TOKEN_EVENT: (id, text)}`` for that event, which :meth:`feed` reads
        before anything else (None for any other event, which is decoded as
        JSON). An event it accepts is never an error and never the stream's
        terminator. Most of a stream's events have this shape, and decoding
        all of their fields (a chat chunk's model name, ids and token
        probabilities) costs more than the rest of the client's work on a
        token. None where the settings make :meth:`feed` read more
        (log-probabilities), or where the JSON decoder is as quick (a
        ``/completion`` event is small).
        """
        return None

    async def settle(self, out: list[Token], detokenize: Detokenize) -> None:
        """The response is complete: append what was held back, check what was assembled.

        Raises an SDK error (a ProtocolError for a malformed tool call, say)
        that becomes the stream's error.
        """

    def conclude(self) -> None:
        """The generation is complete: parse and check structured output (StructuredOutputError)."""
        if self.schema is not None:
            self.parsed = self.schema.parse(self.text, self.finish_reason())

    def finish_reason(self) -> FinishReason:
        return STOP_TYPES.get(self.stop_type, "stop")

    @property
    def text(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        return ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return ()

    def message(self) -> Message:
        return Message("assistant", self.text)

    def drop(self, tokens: Sequence[Token]) -> None:
        """Forget ``tokens``, the last ones appended (read but never handed out: cancelled)."""
        self.count -= len(tokens)
        self._content[:] = [_cut(self.text, sum(len(t.text) for t in tokens if t.kind == "content"))]


def logprobs_of(entry: JSON, top: int) -> tuple[float | None, tuple[TokenLogprob, ...]]:
    """The chosen token's log-probability and its ``top`` candidates, from one probabilities entry."""
    logprob = entry.get("logprob")
    candidates = entry.get("top_logprobs") or ()
    return (
        float(logprob) if isinstance(logprob, int | float) else None,
        tuple(TokenLogprob(c["id"], c.get("token", ""), float(c.get("logprob", 0.0))) for c in candidates[:top]),
    )


def _cut(text: str, n: int) -> str:
    return text[: len(text) - n] if n else text
