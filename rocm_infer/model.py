"""TextModel: one llama-server (or a server you already run) behind a small API.

``generate`` streams from llama-server's native ``/completion`` endpoint, not
``/v1/completions``: its events carry the sampled token id with each piece of
text, so every :class:`~rocm_infer.types.Token` has its real id, and its last
event carries the server's ``timings`` for the metrics. ``chat`` streams from
``/v1/chat/completions`` (so the model's own chat template is applied by
llama-server) and asks for one post-sampling logprob per token, which is how
that endpoint reports token ids.

A model is safe to use from many tasks at once: llama-server serves
concurrent requests in its slots (``LoadConfig.parallel_slots``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import anyio.to_thread

from .client import JSON, EventStream, LlamaServerClient
from .config import GenerateConfig, RestartPolicy
from .errors import (
    APIConnectionError,
    APITimeoutError,
    EventLoopError,
    ModelClosedError,
    ProtocolError,
    RocmInferError,
    ServerExitedError,
)
from .gguf import read_gguf_info
from .gpu import VramMonitor
from .server import LlamaServer
from .types import (
    BatchResult,
    ClassifyResult,
    FinishReason,
    GenerateMetrics,
    Message,
    ModelInfo,
    Token,
    TokenLogprob,
)

__all__ = ["ModelContext", "TextModel", "TokenStream", "connect", "model_info"]

logger = logging.getLogger(__name__)

# How long to wait, after a connection broke, for the process to be seen dead
# before deciding the failure was not a crash.
_EXIT_GRACE = 1.0


def _metrics_from(
    final: JSON | None, *, prompt_tokens: int | None, generated: int, started: float, first: float | None
) -> GenerateMetrics:
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
    )


# llama-server's stop_type (native API) and finish_reason (OpenAI API) to ours.
_STOP_TYPES: dict[object, FinishReason] = {
    "eos": "stop",
    "word": "stop",
    "stop_token": "stop",
    "limit": "length",
    "length": "length",
}


def _prompt_list(prompts: Iterable[str]) -> list[str]:
    if isinstance(prompts, str | bytes):
        raise TypeError("prompts must be a sequence of str, not a single string")
    listed = list(prompts)
    if not all(isinstance(p, str) for p in listed):
        raise TypeError("prompts must be a sequence of str")
    return listed


class _Events(Protocol):
    """What a TokenStream reads: an EventStream, or one waiting for a restart."""

    async def read_batch(self) -> list[JSON]: ...

    def close(self) -> None: ...


class _AfterRestart:
    """Stands in for a stream's EventStream while the model's crashed
    llama-server is started again; the request then goes to the new server."""

    __slots__ = ("_model", "_open", "_events", "_closed")

    def __init__(self, model: TextModel, open_events: Callable[[LlamaServerClient], EventStream]) -> None:
        self._model = model
        self._open = open_events
        self._events: EventStream | None = None
        self._closed = False

    async def read_batch(self) -> list[JSON]:
        if self._events is None:
            if self._closed:
                return []
            await self._model._restart()
            self._events = self._open(self._model._client)
        return await self._events.read_batch()

    def close(self) -> None:
        self._closed = True
        if self._events is not None:
            self._events.close()


class TokenStream:
    """The tokens of one generation, as they arrive.

    Iterate it with ``async for``; the request is sent on the first iteration.
    When the stream ends, ``text``, ``finish_reason`` (``"stop"``, ``"length"``,
    ``"cancelled"`` or ``"error"``), ``metrics`` and ``error`` are filled in.

    Closing it (``await stream.aclose()``, leaving ``async with``, breaking out
    of the loop and dropping it, or cancelling the task that iterates it)
    closes the HTTP response at once: llama-server stops generating and frees
    the slot. Cancellation is re-raised, never swallowed. Errors raised while
    iterating are the SDK's own (``APIError``, ``ServerExitedError`` …) and are
    also stored in ``error``.
    """

    __slots__ = (
        "_model",
        "_events",
        "_chat",
        "_stop_tokens",
        "_buffer",
        "_pos",
        "_parts",
        "_count",
        "_started",
        "_first",
        "_final",
        "_prompt_tokens",
        "_stop_type",
        "_held",
        "_ended",
        "_unraised",
        "finish_reason",
        "metrics",
        "error",
        "__weakref__",
    )

    def __init__(
        self,
        model: TextModel,
        events: _Events,
        *,
        chat: bool,
        stop_tokens: frozenset[int],
        hold_empty: bool = False,
    ) -> None:
        self._model = model
        self._events = events
        self._chat = chat
        self._stop_tokens = stop_tokens
        self._buffer: list[Token] = []
        self._pos = 0
        self._parts: list[str] = []
        self._count = 0
        self._started = 0.0
        self._first: float | None = None
        self._final: JSON | None = None
        self._prompt_tokens: int | None = None
        self._stop_type: object = None  # the server's own word for why it stopped
        # With stop strings, llama-server sends "" for a token whose text might start a
        # stop string, and loses that text if the generation then ends on max_tokens.
        # Such tokens wait here until their text is known (see _end).
        self._held: list[int] | None = [] if hold_empty else None
        self._ended = False  # the stream is complete; _fill finishes it
        self._unraised: BaseException | None = None  # an error set from outside, for the reader
        self.finish_reason: FinishReason | None = None
        self.metrics: GenerateMetrics | None = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        state = f"finish_reason={self.finish_reason!r}" if self.finish_reason else "open"
        return f"<TokenStream {state}, {self._count} tokens>"

    @property
    def text(self) -> str:
        """The text generated so far (all of it once the stream has ended)."""
        return "".join(self._parts)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

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
        await self._fill()
        if not self._buffer:
            raise StopAsyncIteration
        self._pos = 1
        return self._buffer[0]

    async def _fill(self) -> None:
        self._buffer = []
        self._pos = 0
        if not self._started:
            try:
                self._model._check_loop()  # a stream made outside any loop, run in the wrong one
            except EventLoopError as exc:
                self._finish("error", exc)
                raise
            self._started = time.perf_counter()
        while not self._buffer and self.finish_reason is None:
            try:
                events = await self._events.read_batch()
            except asyncio.CancelledError:
                self._finish("cancelled")
                raise
            except RocmInferError as exc:
                if self._unraised is not None:
                    # The model was closed under this stream: say so, not "connection lost".
                    error, self._unraised = self._unraised, None
                    raise error from exc
                error = await self._model._translate_failure(exc)
                self._finish("error", error)
                if error is exc:
                    raise
                raise error from exc
            if not events:
                await self._end()
                break
            if self._chat:
                self._on_chat_events(events)
            else:
                self._on_completion_events(events)
            if self._ended:
                await self._end()
        if self._buffer and self._first is None:
            self._first = time.perf_counter()

    def _on_completion_events(self, events: list[JSON]) -> None:
        buffer = self._buffer
        parts = self._parts
        stop_tokens = self._stop_tokens
        held = self._held
        for event in events:
            ids = event.get("tokens")
            if ids:
                token_id = ids[-1]
                if stop_tokens and token_id in stop_tokens:
                    self._final = event
                    self._stop_token()
                    return
                text = event.get("content", "")
                if held is not None:
                    if not text:
                        held.append(token_id)
                        continue  # a held token is never the last event (stop comes after)
                    if held:
                        self._release_held("")
                buffer.append(Token(token_id, text))
                parts.append(text)
                self._count += 1
            if event.get("stop") is True:
                self._final = event
                self._prompt_tokens = event.get("tokens_evaluated")
                self._stop_type = event.get("stop_type")
            elif stop_tokens:
                # timings_per_token is on: keep the latest figures in case we stop early.
                self._final = event

    def _on_chat_events(self, events: list[JSON]) -> None:
        buffer = self._buffer
        parts = self._parts
        stop_tokens = self._stop_tokens
        for event in events:
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._prompt_tokens = usage.get("prompt_tokens")
            if "timings" in event:
                self._final = event
            choices = event.get("choices")
            if not choices:
                continue
            choice = choices[0]
            if choice.get("finish_reason") is not None:
                self._stop_type = choice["finish_reason"]
            text = choice.get("delta", {}).get("content")
            if not text and not choice.get("logprobs"):
                continue
            logprobs = (choice.get("logprobs") or {}).get("content") or ()
            token_id = logprobs[-1].get("id", -1) if logprobs else -1
            if stop_tokens and token_id in stop_tokens:
                self._stop_token()
                return
            text = text or ""
            buffer.append(Token(token_id, text))
            parts.append(text)
            self._count += 1

    def _stop_token(self) -> None:
        self._events.close()  # llama-server stops generating too
        self._stop_type = "stop_token"
        self._ended = True

    def _release_held(self, text: str) -> None:
        """Hand out the held tokens, ``text`` (their recovered text) on the last."""
        held = self._held
        assert held
        self._buffer.extend(Token(token_id, "") for token_id in held[:-1])
        self._buffer.append(Token(held[-1], text))
        self._parts.append(text)
        self._count += len(held)
        held.clear()

    async def _end(self) -> None:
        """The stream is complete: settle held tokens, then finish."""
        if self._held and self._stop_type in ("limit", "stop_token"):
            # llama-server dropped this text (it never sends held text when the generation
            # ends on a limit): ask it for the text of those tokens. After a matched stop
            # string ("word") the held text was the stop string itself and stays out.
            try:
                text = await self._model._client.detokenize(list(self._held))
            except RocmInferError:
                text = ""
            self._release_held(text)
        elif self._held:
            self._release_held("")
        self._finish(_STOP_TYPES.get(self._stop_type, "stop"))

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        if self.finish_reason is not None:
            return
        self._events.close()
        if reason == "cancelled":
            # Tokens already read but not yet handed out are dropped (the caller said
            # stop), so text and metrics describe exactly what the caller received.
            dropped = len(self._buffer) - self._pos
            if dropped:
                del self._parts[len(self._parts) - dropped :]
                self._count -= dropped
            self._buffer = []
            self._pos = 0
        self.finish_reason = reason
        self.error = error
        self.metrics = self._model._with_vram(
            _metrics_from(
                self._final,
                prompt_tokens=self._prompt_tokens,
                generated=self._count,
                started=self._started or time.perf_counter(),
                first=self._first,
            )
        )
        if error is not None:
            self._model.err = error
        elif reason != "cancelled":
            self._model.metrics = self.metrics

    async def aclose(self) -> None:
        """Stop the generation and close the response. Idempotent."""
        self._finish("cancelled")

    def _abort(self, error: BaseException) -> None:
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
        if self.finish_reason is None:
            self._events.close()

    async def collect(self) -> str:
        """Read the stream to its end and return the whole text."""
        async for _ in self:
            pass
        return self.text


class TextModel:
    """A loaded model: generate text, chat, classify, batch.

    Made by :func:`rocm_infer.load_model` (which starts and owns a
    llama-server) or :func:`rocm_infer.connect` (which attaches to one that
    is already running and leaves it running on close).

    ``err`` holds the last error an operation raised; once llama-server has
    died it is a :class:`~rocm_infer.errors.ServerExitedError` and every later
    call raises it, unless the model was loaded with a
    :class:`~rocm_infer.config.RestartPolicy` (``LoadConfig(restart=...)``):
    then the next call starts llama-server again with the same configuration
    and goes on, within the policy's limits (``restarts`` counts them). A
    generation that was streaming when the server died is never retried.
    ``metrics`` holds the metrics of the last finished generation.

    Close it (``async with``, or ``await model.close()``). A model dropped
    unclosed (say, a notebook cell that loads one, run twice) emits a
    ``ResourceWarning`` and its llama-server is stopped at once (SIGTERM, then
    SIGKILL after a second); never rely on that.
    """

    def __init__(
        self,
        client: LlamaServerClient,
        info: ModelInfo,
        *,
        model_type: str = "unknown",
        server: LlamaServer | None = None,
        restart: RestartPolicy | None = None,
        vram: VramMonitor | None = None,
    ) -> None:
        self._client = client
        try:
            # The loop its HTTP session and process watcher belong to.
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._vram = vram
        self._server = server
        self._restart_policy = restart if server is not None else None
        self._restarted_at: collections.deque[float] = collections.deque()
        self._restart_lock = asyncio.Lock()
        self.restarts = 0
        self.info = info
        self.model_type = model_type
        self.metrics: GenerateMetrics | None = None
        self.err: BaseException | None = None
        self._closed = False
        self._dead: ServerExitedError | None = None
        self._slots = asyncio.Semaphore(max(1, info.parallel_slots))
        # Open streams, so close() can end them before stopping the server: llama-server
        # does not exit on SIGTERM while it is still streaming a response.
        self._streams: weakref.WeakSet[TokenStream] = weakref.WeakSet()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "dead" if self._dead else "ready"
        where = f"pid={self._server.pid}" if self._server is not None else self._client.base_url
        return f"<TextModel {self.model_type} {self.info.name or self.info.path!r} {where} {state}>"

    def _with_vram(self, metrics: GenerateMetrics) -> GenerateMetrics:
        """``metrics`` with the GPU's VRAM figures, read once as a generation ends."""
        if self._vram is None:
            return metrics
        active, peak = self._vram.sample()
        return dataclasses.replace(metrics, active_vram_bytes=active, peak_vram_bytes=peak)

    @property
    def server(self) -> LlamaServer | None:
        """The supervised llama-server, or None for a model made by connect()."""
        return self._server

    @property
    def client(self) -> LlamaServerClient:
        """The HTTP client (for endpoints this class does not wrap)."""
        return self._client

    @property
    def closed(self) -> bool:
        return self._closed

    def _in_another_loop(self) -> bool:
        """True when called from a running event loop that is not the model's own."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False  # not in a loop now (a stream made here runs later: checked then)
        return self._loop is not None and running is not self._loop

    def _check_loop(self) -> None:
        if self._in_another_loop():
            assert self._loop is not None
            state = "is closed" if self._loop.is_closed() else "is another one"
            raise EventLoopError(
                f"this model was loaded in another event loop, which {state}: load, use and close a model "
                "in one loop (one asyncio.run() for all of it)"
            )

    def _check_usable(self) -> bool:
        """Raise if the model cannot be used; True if its server died and may be started again."""
        if self._closed:
            raise ModelClosedError("the model is closed")
        self._check_loop()
        if self._dead is None and self._server is not None and self._server.returncode is not None:
            self._dead = self._exited_error()
            self.err = self._dead
        if self._dead is not None:
            if self._may_restart():
                return True
            raise self._dead
        return False

    def _may_restart(self) -> bool:
        policy = self._restart_policy
        if policy is None:
            return False
        horizon = time.monotonic() - policy.window
        while self._restarted_at and self._restarted_at[0] < horizon:
            self._restarted_at.popleft()
        return len(self._restarted_at) < policy.max_restarts

    async def _usable(self) -> None:
        """_check_usable, and start the server again first where the policy says so."""
        if self._check_usable():
            await self._restart()

    async def _restart(self) -> None:
        """Replace the dead llama-server with a new one (same binary, arguments, settings)."""
        async with self._restart_lock:
            if self._dead is None:  # another task restarted it while this one waited
                return
            if self._closed:
                raise ModelClosedError("the model is closed")
            if not self._may_restart():
                raise self._dead
            old = self._server
            assert old is not None and self._restart_policy is not None
            self._restarted_at.append(time.monotonic())
            self.restarts += 1
            logger.warning(
                "llama-server pid %s exited with code %s; starting it again (restart %d, at most %d in %gs)",
                old.pid,
                old.returncode,
                len(self._restarted_at),
                self._restart_policy.max_restarts,
                self._restart_policy.window,
            )
            await old.stop()  # reaps it and closes its client
            new = old.respawn()
            try:
                await new.start()
            except RocmInferError as exc:
                self.err = exc
                raise
            self._server = new
            self._client = new.client
            self._dead = None
            self.err = None

    def _exited_error(self) -> ServerExitedError:
        assert self._server is not None
        code = self._server.returncode
        return ServerExitedError(
            f"llama-server (pid {self._server.pid}) exited with code {code} while the model was in use",
            returncode=code,
            output_tail=self._server.output_tail,
        )

    async def _translate_failure(self, exc: RocmInferError) -> RocmInferError:
        """A broken connection to a supervised server that has died is a ServerExitedError."""
        if self._server is not None and isinstance(exc, APIConnectionError | ProtocolError | APITimeoutError):
            if await self._server.wait_exited(_EXIT_GRACE) is not None:
                self._dead = self._exited_error()
                return self._dead
        return exc

    # -- generation ------------------------------------------------------------------------------

    @staticmethod
    def _sampling_body(config: GenerateConfig, *, chat: bool) -> dict[str, Any]:
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
        body.update(config.extra_body)
        return body

    def generate(self, prompt: str, config: GenerateConfig | None = None, **options: Any) -> TokenStream:
        """Stream the continuation of ``prompt``.

        ``options`` are :class:`~rocm_infer.config.GenerateConfig` fields that
        override ``config``. Returns a :class:`TokenStream` at once (this is
        not a coroutine); the request is sent when iteration starts.

        Raises ``TypeError``/``ValueError`` for a bad prompt or option, and
        ``ModelClosedError``/``ServerExitedError`` if the model cannot be used,
        all before any request.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        cfg = GenerateConfig.build(config, **options)
        restart = self._check_usable()
        body = self._sampling_body(cfg, chat=False)
        body["prompt"] = prompt
        stream = TokenStream(
            self,
            self._events(restart, lambda client: client.stream_completion(body)),
            chat=False,
            stop_tokens=cfg.stop_tokens,
            hold_empty=bool(cfg.stop),
        )
        self._streams.add(stream)
        return stream

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        config: GenerateConfig | None = None,
        **options: Any,
    ) -> TokenStream:
        """Stream the assistant's reply to ``messages`` (the model's chat template applies).

        ``messages`` are :class:`~rocm_infer.types.Message` objects or
        ``{"role", "content"}`` mappings. Otherwise as :meth:`generate`.
        """
        if isinstance(messages, str | bytes | Mapping):
            raise TypeError("messages must be a sequence of messages, not a single string or mapping")
        msgs = [Message.coerce(m) for m in messages]
        if not msgs:
            raise ValueError("messages must not be empty")
        cfg = GenerateConfig.build(config, **options)
        restart = self._check_usable()
        body = self._sampling_body(cfg, chat=True)
        body["messages"] = [{"role": m.role, "content": m.content} for m in msgs]
        body["stream_options"] = {"include_usage": True}
        # One post-sampling candidate per token is how this endpoint reports token ids.
        body.setdefault("logprobs", True)
        body.setdefault("top_logprobs", 1)
        body.setdefault("post_sampling_probs", True)
        events = self._events(restart, lambda client: client.stream_chat_completion(body))
        stream = TokenStream(self, events, chat=True, stop_tokens=cfg.stop_tokens)
        self._streams.add(stream)
        return stream

    def _events(self, restart: bool, open_events: Callable[[LlamaServerClient], EventStream]) -> _Events:
        return _AfterRestart(self, open_events) if restart else open_events(self._client)

    async def _gather_limited(self, calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
        """Run ``calls`` concurrently, at most one per llama-server slot at a time."""

        async def limited(call: Callable[[], Awaitable[Any]]) -> Any:
            async with self._slots:
                return await call()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(limited(call)) for call in calls]
        except BaseExceptionGroup as failed:
            # Callers get the SDK's own exception, as from any other call, not a group.
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def batch_generate(
        self, prompts: Iterable[str], config: GenerateConfig | None = None, **options: Any
    ) -> list[BatchResult]:
        """Generate for every prompt, concurrently across llama-server's slots.

        Returns one :class:`~rocm_infer.types.BatchResult` per prompt, in order;
        a prompt that fails has its ``error`` set and does not stop the others.
        Cancelling the call cancels every generation.
        """
        prompts = _prompt_list(prompts)
        cfg = GenerateConfig.build(config, **options)
        await self._usable()

        async def one(prompt: str) -> BatchResult:
            tokens: list[Token] = []
            stream = self.generate(prompt, cfg)
            try:
                async for token in stream:
                    tokens.append(token)
            except RocmInferError as exc:
                return BatchResult(tuple(tokens), exc, "error")
            return BatchResult(tuple(tokens), None, stream.finish_reason)

        results: list[BatchResult] = await self._gather_limited([functools.partial(one, p) for p in prompts])
        return results

    async def classify(
        self,
        prompts: Iterable[str],
        config: GenerateConfig | None = None,
        *,
        top_logprobs: int = 5,
        **options: Any,
    ) -> list[ClassifyResult]:
        """Predict the single next token of every prompt, with its top candidates.

        Returns one :class:`~rocm_infer.types.ClassifyResult` per prompt, in
        order, each with up to ``top_logprobs`` candidates and their
        log-probabilities (before sampling). Raises the first error any prompt
        hit; the other requests are cancelled.
        """
        prompts = _prompt_list(prompts)
        if not isinstance(top_logprobs, int) or top_logprobs < 1:
            raise ValueError(f"top_logprobs must be an int >= 1, got {top_logprobs!r}")
        cfg = GenerateConfig.build(config, **options)
        await self._usable()
        body = self._sampling_body(cfg, chat=False)
        body.update(n_predict=1, n_probs=top_logprobs, return_tokens=True)

        async def one(prompt: str) -> ClassifyResult:
            try:
                result = await self._client.completion({**body, "prompt": prompt})
            except RocmInferError as exc:
                error = await self._translate_failure(exc)
                self.err = error
                if error is exc:
                    raise
                raise error from exc
            probs = result.get("completion_probabilities") or [{}]
            first = probs[0]
            token_ids = result.get("tokens") or [first.get("id", -1)]
            token = Token(token_ids[0], result.get("content", ""))
            candidates = tuple(
                TokenLogprob(c["id"], c.get("token", ""), float(c.get("logprob", 0.0)))
                for c in first.get("top_logprobs", ())
            )
            return ClassifyResult(token, candidates)

        results: list[ClassifyResult] = await self._gather_limited([functools.partial(one, p) for p in prompts])
        return results

    async def tokenize(self, text: str) -> list[int]:
        """The model's token ids for ``text`` (no BOS added)."""
        await self._usable()
        return await self._client.tokenize(text)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``."""
        await self._usable()
        return await self._client.detokenize(list(tokens))

    # -- lifetime --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the supervised llama-server (SIGTERM, then SIGKILL) and close the
        HTTP client. A model made by connect() leaves its server running.

        Streams still open are closed first; their readers get
        :class:`~rocm_infer.errors.ModelClosedError`. Idempotent; completes
        even if the calling task is cancelled. Called from an event loop other
        than the one the model was loaded in, it stops the process
        synchronously (SIGTERM, then SIGKILL after a second) and leaves the
        HTTP session, which belongs to that loop, alone."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            stream._abort(ModelClosedError("the model was closed while this stream was open"))
        if self._in_another_loop():
            # Its HTTP session belongs to the loop it was loaded in, which is closed or not
            # ours to use: stop the process without it (signals, a bounded wait).
            if self._server is not None:
                self._server.stop_now("a model was closed from another event loop")
            # With no connection open, closing the session needs no loop at all; with one
            # open, the old loop would be needed (RuntimeError), and the session is left.
            with contextlib.suppress(RuntimeError):
                await self._client.aclose()
            return
        if self._server is not None:
            await self._server.stop()  # also closes the server's client, which is ours
        else:
            await self._client.aclose()

    aclose = close

    def __del__(self) -> None:
        # Dropped without close() (a notebook cell that loads a model, run twice): stop the
        # llama-server now, synchronously, and warn as aiohttp does for an unclosed session.
        if getattr(self, "_closed", True):  # closed, or __init__ never finished
            return
        message = f"unclosed model {self!r}: use `async with` or `await model.close()`"
        try:
            if self._server is not None:
                self._server.stop_now()
        finally:
            warnings.warn(message, ResourceWarning, stacklevel=2, source=self)

    async def __aenter__(self) -> TextModel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def model_info(props: Mapping[str, Any], file_info: ModelInfo | None) -> ModelInfo:
    """ModelInfo of a loaded model: what llama-server's /props says (context,
    slots, chat template, path) over what the GGUF file says, when it is
    readable here (:func:`rocm_infer.read_gguf_info`)."""
    settings = props.get("default_generation_settings") or {}
    path = props.get("model_path") or (file_info.path if file_info is not None else None)
    return dataclasses.replace(
        file_info if file_info is not None else ModelInfo(path),
        path=path,
        context_len=int(settings.get("n_ctx") or 0),
        has_chat_template=bool(props.get("chat_template")),
        parallel_slots=int(props.get("total_slots") or 1),
    )


class ModelContext(Coroutine[Any, Any, TextModel]):
    """What load_model() and connect() return: await it for the model, or use
    ``async with`` to have it closed on exit (as aiohttp's request objects do).
    It is a coroutine, so ``asyncio.create_task(load_model(...))`` works too."""

    __slots__ = ("_coro", "_used", "_model")

    def __init__(self, coro: Coroutine[Any, Any, TextModel]) -> None:
        self._coro = coro
        self._used = False
        self._model: TextModel | None = None

    def __repr__(self) -> str:
        state = "entered" if self._model is not None else "awaited" if self._used else "not awaited yet"
        return f"<ModelContext {state}: `await` it for the model, or use `async with`>"

    def __getattr__(self, name: str) -> Any:
        # Only for names this object lacks: most often a TextModel method called on a
        # load_model(...) that was never awaited. (An AttributeError, so getattr() defaults work.)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}: it stands for a model not loaded yet; "
            "use `model = await rocm_infer.load_model(...)` or `async with rocm_infer.load_model(...) as model:`"
        )

    def __await__(self) -> Generator[Any, None, TextModel]:
        self._used = True
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        self._used = True
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._used = True
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    async def __aenter__(self) -> TextModel:
        self._used = True
        self._model = await self._coro
        return self._model

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._model is not None:
            await self._model.close()

    def __del__(self) -> None:
        # Never awaited (a forgotten await, or an error before it): close the coroutine
        # so Python does not warn about it. Nothing was started, so nothing leaks.
        # (After `await`, this object may be collected while its coroutine runs.)
        if not self._used:
            self._coro.close()


def connect(base_url: str, *, api_key: str | None = None) -> ModelContext:
    """Attach to a llama-server that is already running at ``base_url``.

    Checks /health and reads /props; raises ``APIError`` (503: still loading)
    or ``APIConnectionError`` if the server is not usable. ``close()`` closes the
    HTTP client and leaves the server running.
    """
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")

    async def attach() -> TextModel:
        client = LlamaServerClient(base_url, api_key=api_key)
        try:
            await client.health()
            props = await client.props()
            file_info = await anyio.to_thread.run_sync(_local_info, props.get("model_path"))
        except BaseException:
            await client.aclose()
            raise
        info = model_info(props, file_info)
        return TextModel(client, info, model_type=info.architecture or "unknown")

    return ModelContext(attach())


def _local_info(path: object) -> ModelInfo | None:
    """What the server's model file says, if that file is readable from here."""
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        return read_gguf_info(path)
    except (RocmInferError, OSError):
        return None
