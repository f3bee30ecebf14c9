"""TokenStream: the tokens of one generation, as they arrive.

A stream knows neither endpoint nor model. It is handed a way to open its
events through the model's :class:`~rocm_infer.supervisor.Supervisor` (so it
reads from whatever server is live when iteration starts, also after a
restart) and an endpoint adapter (:mod:`rocm_infer.endpoints`) that turns the
events into tokens. It owns the response while it is open: closing the stream,
breaking out of the loop, or cancelling the task that reads it closes the
HTTP response at once, and llama-server stops generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

from .client import JSON, EventStream, LlamaServerClient
from .endpoints.base import EventAdapter
from .errors import RocmInferError
from .supervisor import Supervisor
from .types import Completion, FinishReason, GenerateMetrics, Message, Token, ToolCall

__all__ = ["TokenStream", "metrics_from"]

# What the stream's owner does with the metrics of a generation as it ends
# (adds VRAM figures, records them as the model's latest); returns the stream's.
FinishHook = Callable[[GenerateMetrics, FinishReason], GenerateMetrics]


def metrics_from(
    final: JSON | None, *, prompt_tokens: int | None, generated: int, started: float, first: float | None
) -> GenerateMetrics:
    """GenerateMetrics from llama-server's ``timings`` (in ``final``) and the SDK's own clock."""
    now = time.perf_counter()
    timings = final.get("timings") if final is not None else None
    ttft = (first - started) if first is not None else 0.0
    if not isinstance(timings, dict):
        return GenerateMetrics(
            prompt_tokens=prompt_tokens or 0,
            generated_tokens=generated,
            total_duration=now - started,
            time_to_first_token=ttft,
        )
    return GenerateMetrics(
        prompt_tokens=prompt_tokens if prompt_tokens is not None else int(timings.get("prompt_n", 0)),
        cached_tokens=int(timings.get("cache_n", 0)),
        generated_tokens=int(timings.get("predicted_n", generated)),
        prefill_duration=float(timings.get("prompt_ms", 0.0)) / 1000.0,
        decode_duration=float(timings.get("predicted_ms", 0.0)) / 1000.0,
        total_duration=now - started,
        time_to_first_token=ttft,
        prefill_tokens_per_sec=float(timings.get("prompt_per_second", 0.0)),
        decode_tokens_per_sec=float(timings.get("predicted_per_second", 0.0)),
        draft_tokens=int(timings.get("draft_n", 0)),
        draft_accepted=int(timings.get("draft_n_accepted", 0)),
    )


class TokenStream:
    """The tokens of one generation, as they arrive.

    Iterate it with ``async for``; the request is sent on the first iteration
    (to the model's live server: after a restart, the new one). Or ``await``
    it: that reads it to the end and returns a
    :class:`~rocm_infer.types.Completion`. When the stream ends, ``text``,
    ``finish_reason`` (``"stop"``, ``"length"``, ``"tool_calls"``,
    ``"cancelled"`` or ``"error"``), ``metrics`` and ``error`` are filled in;
    a chat reply also has ``reasoning``, ``tool_calls`` and ``message``.

    With structured output (a schema), ``parsed`` holds the validated value
    at the end; output that does not fit raises
    :class:`~rocm_infer.errors.StructuredOutputError` after the last token.

    Closing it (``await stream.aclose()``, leaving ``async with``, breaking
    out of the loop and dropping it, or cancelling the task that iterates it)
    closes the HTTP response at once: llama-server stops generating and frees
    the slot. Cancellation is re-raised, never swallowed. Errors raised while
    iterating are the SDK's own (``APIError``, ``ServerExitedError`` …) and are
    also stored in ``error``; they do not make the model unusable unless the
    server died (``model.err``).
    """

    __slots__ = (
        "_supervisor",
        "_open",
        "_adapter",
        "_events",
        "_buffer",
        "_pos",
        "_started",
        "_first",
        "_on_finish",
        "_unraised",
        "finish_reason",
        "metrics",
        "error",
        "__weakref__",
    )

    def __init__(
        self,
        supervisor: Supervisor,
        open_events: Callable[[LlamaServerClient], EventStream],
        adapter: EventAdapter,
        *,
        on_finish: FinishHook | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._open = open_events
        self._adapter = adapter
        self._events: EventStream | None = None
        self._buffer: list[Token] = []
        self._pos = 0
        self._started = 0.0
        self._first: float | None = None
        self._on_finish = on_finish
        self._unraised: BaseException | None = None  # an error set from outside, for the reader
        self.finish_reason: FinishReason | None = None
        self.metrics: GenerateMetrics | None = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        state = f"finish_reason={self.finish_reason!r}" if self.finish_reason else "open"
        return f"<TokenStream {state}, {self._adapter.count} tokens>"

    # -- what was generated ----------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The content generated so far (all of it once the stream has ended); no reasoning."""
        return self._adapter.text

    @property
    def reasoning(self) -> str:
        """The reasoning text a thinking model produced (``""`` if none)."""
        return self._adapter.reasoning

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The complete tool calls of a chat reply (empty until the stream has ended)."""
        return self._adapter.tool_calls

    @property
    def message(self) -> Message:
        """The assistant's reply as a Message (content, reasoning, tool calls), for the history."""
        return self._adapter.message()

    @property
    def parsed(self) -> Any:
        """The value of the structured output (a pydantic instance or the validated dict), once the
        stream has ended; None when no schema was given."""
        return self._adapter.parsed

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    # -- iteration -------------------------------------------------------------------------------

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> Token:
        # The hot path: one Token per call, from a buffer filled one network read at a time.
        pos = self._pos
        buffer = self._buffer
        if pos < len(buffer):
            self._pos = pos + 1
            return buffer[pos]
        if self.finish_reason is not None:
            if self._unraised is not None:
                error, self._unraised = self._unraised, None
                raise error
            raise StopAsyncIteration
        events = self._events if self._events is not None else await self._open_events()
        buffer = self._buffer = []
        self._pos = 0
        adapter = self._adapter
        while not buffer and self.finish_reason is None:
            # Each wait is on the network read itself (EventStream.more), with no coroutine
            # between it and this one: one wake-up per read, and the read's events at once.
            try:
                batch = events.take()
                while batch is None:
                    await events.more()
                    batch = events.take()
            except asyncio.CancelledError:
                self._finish("cancelled")
                raise
            except RocmInferError as exc:
                error = await self._failed(exc)
                if error is exc:
                    raise
                raise error from exc
            if not batch:
                await self._end()
                break
            adapter.feed(batch, buffer)
            if adapter.ended:
                events.close()  # the SDK decided (a stop token): llama-server stops generating too
                await self._end()
        if not buffer:
            if self._unraised is not None:  # ended from outside while waiting (its model closed)
                error, self._unraised = self._unraised, None
                raise error
            raise StopAsyncIteration
        if self._first is None:
            self._first = time.perf_counter()
        self._pos = 1
        return buffer[0]

    async def _open_events(self) -> EventStream:
        self._started = time.perf_counter()
        try:
            client = await self._supervisor.ready()
        except asyncio.CancelledError:
            self._finish("cancelled")
            raise
        except RocmInferError as exc:
            self._finish("error", exc)
            raise
        events = self._events = self._open(client)
        shortcut = self._adapter.shortcut()
        if shortcut is not None:
            events.decode_with(shortcut)
        return events

    async def _failed(self, exc: RocmInferError) -> BaseException:
        """What reading the events raised means, to raise in its place (the stream is finished)."""
        if self._unraised is not None:
            # The model was closed under this stream: say so, not "connection lost".
            error, self._unraised = self._unraised, None
            return error
        translated = await self._supervisor.translate(exc)
        self._finish("error", translated)
        return translated

    async def _end(self) -> None:
        """The stream is complete: let the adapter settle what it holds, then finish."""
        try:
            await self._adapter.settle(self._buffer, self._detokenize)
            self._adapter.conclude()  # structured output: a value of the schema, or an error
        except RocmInferError as exc:
            self._finish("error", exc)
            if self._buffer:
                self._unraised = exc  # the last tokens are handed out first; the error follows them
                return
            raise
        self._finish(self._adapter.finish_reason())

    async def _detokenize(self, ids: list[int]) -> str:
        return await self._supervisor.call(lambda client: client.detokenize(ids))

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        if self.finish_reason is not None:
            return
        if self._events is not None:
            self._events.close()
        if reason == "cancelled":
            # Tokens already read but not yet handed out are dropped (the caller said
            # stop), so text and metrics describe exactly what the caller received.
            dropped = self._buffer[self._pos :]
            if dropped:
                self._adapter.drop(dropped)
            self._buffer = []
            self._pos = 0
        self.finish_reason = reason
        self.error = error
        adapter = self._adapter
        metrics = metrics_from(
            adapter.final,
            prompt_tokens=adapter.prompt_tokens,
            generated=adapter.count,
            started=self._started or time.perf_counter(),
            first=self._first,
        )
        self.metrics = self._on_finish(metrics, reason) if self._on_finish is not None else metrics

    # -- closing ---------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the generation and close the response. Idempotent."""
        self._finish("cancelled")

    def abort(self, error: BaseException) -> None:
        """End the stream from outside (its model is closing); the reader gets ``error``."""
        if self.finish_reason is None:
            self._unraised = error
            self._finish("error", error)

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish("cancelled")

    def __del__(self) -> None:
        # Dropped unfinished: close the response now (synchronously; nothing can be awaited here).
        if self.finish_reason is None and self._events is not None:
            self._events.close()

    # -- the whole result ------------------------------------------------------------------------

    async def collect(self) -> str:
        """Read the stream to its end and return the whole text (the content)."""
        async for _ in self:
            pass
        return self.text

    async def result(self) -> Completion:
        """Read the stream to its end and return everything it produced as a Completion.

        Raises what iterating raises (the stream's ``error``); cancelling the
        call closes the response as breaking out of the loop does.
        """
        tokens = [token async for token in self]
        assert self.finish_reason is not None and self.metrics is not None
        if self.error is not None:
            raise self.error
        return Completion(
            text=self.text,
            reasoning=self.reasoning,
            tool_calls=self.tool_calls,
            finish_reason=self.finish_reason,
            tokens=tuple(tokens),
            metrics=self.metrics,
            message=self.message,
            parsed=self.parsed,
        )

    def __await__(self) -> Generator[Any, None, Completion]:
        return self.result().__await__()
