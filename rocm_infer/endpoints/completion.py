"""llama-server's native ``/completion``: the request for ``generate``, and its events.

Its streamed events carry the sampled token id with each piece of text
(``tokens``), so every :class:`~rocm_infer.types.Token` has its real id, and
its last event (``"stop": true``) carries the server's ``timings``, the
prompt's size and why it stopped. Only the fields the SDK reads are asked
for in that last event (``response_fields``): by default llama-server adds
every sampling setting and the whole prompt to it, which would cost more to
decode than the rest of a short generation.

Two special cases live here and nowhere else:

* stop strings: llama-server sends ``""`` for a token whose text might start
  a stop string and, if the generation then ends on its token limit, never
  sends that text. Such tokens are held until their text is known; at the end
  it is recovered with ``/detokenize``.
* stop tokens (``GenerateConfig.stop_tokens``): checked here as tokens arrive;
  the stopping token is not yielded and the stream ends at once.
"""

from __future__ import annotations

from typing import Any

from ..client import JSON
from ..config import GenerateConfig
from ..errors import RocmInferError
from ..structured import OutputSchema
from ..types import Token
from .base import Detokenize, EventAdapter, logprobs_of, sampling_body

__all__ = ["CompletionAdapter", "completion_body"]

# What the SDK reads of the final event (see the module docs); extra_body may ask for others.
FINAL_FIELDS = (
    "content",
    "tokens",
    "stop",
    "stop_type",
    "stopping_word",
    "tokens_evaluated",
    "tokens_predicted",
    "truncated",
    "timings",
    "completion_probabilities",
)


def completion_body(
    prompt: str, config: GenerateConfig, *, schema: OutputSchema | None = None, grammar: str | None = None
) -> dict[str, Any]:
    """The ``/completion`` request body for ``prompt`` under ``config``, constrained by a JSON
    ``schema`` or a GBNF ``grammar`` (the native endpoint's ``json_schema`` and ``grammar``)."""
    body = sampling_body(config, chat=False)
    body["prompt"] = prompt
    body.setdefault("response_fields", list(FINAL_FIELDS))
    if schema is not None:
        body["json_schema"] = schema.schema
    if grammar is not None:
        body["grammar"] = grammar
    return body


class CompletionAdapter(EventAdapter):
    """Tokens from ``/completion`` events (see the module docs)."""

    __slots__ = ("_stop_tokens", "_held")

    def __init__(self, config: GenerateConfig, schema: OutputSchema | None = None) -> None:
        super().__init__(config, schema)
        self._stop_tokens = config.stop_tokens
        # Tokens whose text llama-server holds back (a stop string may be starting).
        self._held: list[int] | None = [] if config.stop else None

    def feed(self, events: list[JSON], out: list[Token]) -> None:
        parts = self._content
        stop_tokens = self._stop_tokens
        held = self._held
        top = self._top
        for event in events:
            ids = event.get("tokens")
            if ids:
                token_id = ids[-1]
                if stop_tokens and token_id in stop_tokens:
                    self.final = event
                    self.stop_type = "stop_token"
                    self.ended = True
                    return
                text = event.get("content", "")
                if held is not None:
                    if not text:
                        held.append(token_id)
                        continue  # a held token is never the last event (stop comes after)
                    if held:
                        self._release_held(out, "")
                if top is not None and (probs := event.get("completion_probabilities")):
                    logprob, candidates = logprobs_of(probs[-1], top)
                    out.append(Token(token_id, text, "content", logprob, candidates))
                else:
                    out.append(Token(token_id, text))
                parts.append(text)
                self.count += 1
            if event.get("stop") is True:
                self.final = event
                self.prompt_tokens = event.get("tokens_evaluated")
                self.stop_type = event.get("stop_type")
            elif stop_tokens:
                # timings_per_token is on: keep the latest figures in case we stop early.
                self.final = event

    def _release_held(self, out: list[Token], text: str) -> None:
        """Hand out the held tokens, ``text`` (their recovered text) on the last."""
        held = self._held
        assert held
        out.extend(Token(token_id, "") for token_id in held[:-1])
        out.append(Token(held[-1], text))
        self._content.append(text)
        self.count += len(held)
        held.clear()

    async def settle(self, out: list[Token], detokenize: Detokenize) -> None:
        if not self._held:
            return
        text = ""
        if self.stop_type in ("limit", "stop_token"):
            # llama-server dropped this text (it never sends held text when the generation
            # ends on a limit): ask it for the text of those tokens. After a matched stop
            # string ("word") the held text was the stop string itself and stays out.
            try:
                text = await detokenize(list(self._held))
            except RocmInferError:
                text = ""
        self._release_held(out, text)
