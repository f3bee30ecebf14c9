"""TextModel: generate, chat with tools and reasoning, batch and classify on one llama-server.

``generate`` streams from llama-server's native ``/completion`` endpoint and
``chat`` from ``/v1/chat/completions`` (the model's own chat template and
llama-server's reasoning and tool-call parsers apply); each has its adapter
in :mod:`rocm_infer.endpoints`. Both return a
:class:`~rocm_infer.stream.TokenStream` at once: iterate it, or await it for
a :class:`~rocm_infer.types.Completion`. ``run_tools`` is the tool loop:
chat, call the tools the model asked for, answer, until it replies.

A model is safe to use from many tasks at once: llama-server serves
concurrent requests in its slots (``LoadConfig.parallel_slots``).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .client import EventStream, LlamaServerClient
from .config import GenerateConfig
from .endpoints.base import EventAdapter, sampling_body
from .endpoints.chat import ChatAdapter, Reasoning, chat_body
from .endpoints.completion import CompletionAdapter, completion_body
from .errors import APIError, RocmInferError
from .lifecycle import ModelContext, ServerModel, attach
from .stream import TokenStream
from .structured import OutputSchema
from .tools import Tool, ToolChoice, as_tools
from .types import (
    BatchResult,
    ClassifyResult,
    FinishReason,
    GenerateMetrics,
    Message,
    Token,
    TokenLogprob,
    ToolCall,
)

__all__ = ["TextModel", "connect"]

logger = logging.getLogger(__name__)

Messages = Iterable[Message | Mapping[str, Any]]
ToolLike = Tool | Mapping[str, Any] | Callable[..., Any]


def _prompt_list(prompts: Iterable[str]) -> list[str]:
    if isinstance(prompts, str | bytes):
        raise TypeError("prompts must be a sequence of str, not a single string")
    listed = list(prompts)
    if not all(isinstance(p, str) for p in listed):
        raise TypeError("prompts must be a sequence of str")
    return listed


def _messages(messages: Messages) -> list[Message]:
    if isinstance(messages, str | bytes | Mapping):
        raise TypeError("messages must be a sequence of messages, not a single string or mapping")
    msgs = [Message.coerce(m) for m in messages]
    if not msgs:
        raise ValueError("messages must not be empty")
    return msgs


class TextModel(ServerModel):
    """A loaded model: generate text, chat (with tools and reasoning), classify, batch.

    Made by :func:`rocm_infer.load_model` (which starts and owns a
    llama-server) or :func:`rocm_infer.connect` (which attaches to one that
    is already running and leaves it running on close). ``err``, ``restarts``,
    ``close()`` and the rest of its lifetime: see
    :class:`~rocm_infer.lifecycle.ServerModel`.

    ``metrics`` holds the metrics of the generation that finished last
    without error or cancellation. Under concurrency that is whichever
    stream ended last, not the one a task just read: each stream's own
    ``stream.metrics`` is the figure for that stream.

    (Its length is its methods' documentation: each method checks its
    arguments and hands a request to an endpoint adapter and a stream.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics: GenerateMetrics | None = None
        # Whether the server's vocabulary has fill-in-the-middle tokens: the file's word, or what
        # the server said to the first /infill (None: not known yet).
        self._fim: bool | None = self.info.fim

    # -- streams ---------------------------------------------------------------------------------

    def _stream(self, open_events: Callable[[LlamaServerClient], EventStream], adapter: EventAdapter) -> TokenStream:
        stream = TokenStream(self._supervisor, open_events, adapter, on_finish=self._finished)
        self._streams.add(stream)
        return stream

    def _finished(self, metrics: GenerateMetrics, reason: FinishReason) -> GenerateMetrics:
        metrics = self._with_vram(metrics)
        if reason not in ("cancelled", "error"):
            self.metrics = metrics
        return metrics

    def generate(
        self,
        prompt: str,
        config: GenerateConfig | None = None,
        *,
        json_schema: Any = None,
        grammar: str | None = None,
        **options: Any,
    ) -> TokenStream:
        """Stream the continuation of ``prompt``.

        ``options`` are :class:`~rocm_infer.config.GenerateConfig` fields that
        override ``config``. Returns a :class:`~rocm_infer.stream.TokenStream`
        at once (this is not a coroutine); the request is sent when iteration
        starts. ``await model.generate(...)`` reads it to the end and returns
        a :class:`~rocm_infer.types.Completion`.

        ``json_schema`` (a JSON-schema dict or a pydantic model class)
        constrains the output to JSON of that schema, and ``stream.parsed`` /
        ``Completion.parsed`` is the validated value; output cut off, not JSON
        or not valid raises :class:`~rocm_infer.errors.StructuredOutputError`.
        ``grammar`` constrains it to a GBNF grammar instead.

        Raises ``TypeError``/``ValueError`` for a bad prompt or option, and
        ``ModelClosedError``/``ServerExitedError`` if the model cannot be used,
        all before any request.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        cfg = GenerateConfig.build(config, **options)
        schema = OutputSchema(json_schema) if json_schema is not None else None
        if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
            raise TypeError("grammar must be GBNF text (a non-empty str)")
        if schema is not None and grammar is not None:
            raise ValueError("give json_schema or grammar, not both")
        self._supervisor.check()
        body = completion_body(prompt, cfg, schema=schema, grammar=grammar)
        return self._stream(lambda client: client.stream_completion(body), CompletionAdapter(cfg, schema))

    def infill(
        self,
        prefix: str,
        suffix: str,
        config: GenerateConfig | None = None,
        *,
        extra_context: Iterable[tuple[str, str] | Mapping[str, str]] = (),
        **options: Any,
    ) -> TokenStream:
        """Stream the text that belongs between ``prefix`` and ``suffix`` (fill-in-the-middle, ``/infill``).

        ``extra_context`` is more of the project for the model to see: pairs
        ``(filename, text)`` or ``{"filename", "text"}`` mappings. Otherwise as
        :meth:`generate` (await it for a Completion). Raises ValueError before
        any request when the model has no fill-in-the-middle tokens
        (``model.info.fim``), TypeError for a bad argument.
        """
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise TypeError("prefix and suffix must be str")
        extra = [_extra_chunk(chunk) for chunk in extra_context]
        if self._fim is False:
            raise ValueError(f"model {self.info.name or self.info.path!r} {_NO_FIM}")
        cfg = GenerateConfig.build(config, **options)
        self._supervisor.check()
        body = completion_body("", cfg)
        del body["prompt"]
        body.update(input_prefix=prefix, input_suffix=suffix, input_extra=extra)
        return self._stream(functools.partial(self._open_infill, body=body), CompletionAdapter(cfg))

    def _open_infill(self, client: LlamaServerClient, *, body: dict[str, Any]) -> EventStream:
        return _InfillEvents(client, body, self)

    def chat(
        self,
        messages: Messages,
        tools: Iterable[ToolLike] | None = None,
        tool_choice: ToolChoice | None = None,
        reasoning: Reasoning = None,
        config: GenerateConfig | None = None,
        *,
        response_format: Any = None,
        **options: Any,
    ) -> TokenStream:
        """Stream the assistant's reply to ``messages`` (the model's chat template applies).

        ``messages`` are :class:`~rocm_infer.types.Message` objects or
        OpenAI-shaped mappings (tool calls and tool results included); content
        may be a list of parts with :class:`~rocm_infer.types.Image` /
        :class:`~rocm_infer.types.Audio` (or ``image_url`` / ``input_audio``
        dicts) for a model loaded with a projector (``mmproj_path``): sent to a
        model without that modality, a ValueError before any request.
        ``tools`` are :class:`~rocm_infer.tools.Tool` values, OpenAI-shaped
        tool dicts or plain Python callables (described from their signature,
        type hints and docstring); ``tool_choice`` is ``"auto"``, ``"none"``,
        ``"required"`` or a tool's name. ``reasoning``: None (the model's
        default), False (off), True, or an effort ``"low"``/``"medium"``/
        ``"high"`` for templates that take one (see docs/tools-and-reasoning.md
        for which templates honour what).

        Tokens have ``kind`` ``"content"``, ``"reasoning"`` or
        ``"tool_call"``; at the end the stream has ``text``, ``reasoning``,
        ``tool_calls`` and ``message``, and ``finish_reason`` is
        ``"tool_calls"`` when the model called tools. ``response_format`` (a
        pydantic model class or a JSON-schema dict) constrains the reply to JSON
        of that schema, sent in the shape llama-server enforces; ``parsed`` is
        the validated value, and output cut off, not JSON or not valid raises
        :class:`~rocm_infer.errors.StructuredOutputError`. Otherwise as
        :meth:`generate`. Raises ``ValueError`` before any request for tools
        on a model whose chat template cannot take them, a duplicate tool
        name, a tool schema that is not a JSON-schema object or a
        ``tool_choice`` that names no tool.
        """
        msgs = _messages(messages)
        if isinstance(tools, GenerateConfig):
            raise TypeError("chat()'s second argument is tools; pass the GenerateConfig as config=...")
        tool_list = as_tools(tools)
        cfg = GenerateConfig.build(config, **options)
        media = {type(m).__name__ for message in msgs for m in message.media}
        wanted = {"Image": "vision", "Audio": "audio"}
        missing = sorted(wanted[name] for name in media if wanted[name] not in self.info.modalities)
        if missing:
            raise ValueError(
                f"model {self.info.name or self.info.path!r} takes no {' or '.join(missing)} input (its modalities: "
                f"{sorted(self.info.modalities) or ['text']}): load it with a projector, LoadConfig(mmproj_path=...)"
            )
        caps = self.info.chat_capabilities
        if tool_list and caps and "tools" not in caps:
            raise ValueError(
                f"model {self.info.name or self.info.path!r} cannot take tools: its chat template does not render "
                "them (llama-server reports supports_tools: false)"
            )
        schema = OutputSchema(response_format) if response_format is not None else None
        body = chat_body(msgs, cfg, tools=tool_list, tool_choice=tool_choice, reasoning=reasoning, schema=schema)
        self._supervisor.check()
        return self._stream(lambda client: client.stream_chat_completion(body), ChatAdapter(cfg, schema))

    async def run_tools(
        self,
        messages: Messages,
        tools: Iterable[ToolLike],
        *,
        max_rounds: int = 8,
        tool_choice: ToolChoice | None = None,
        reasoning: Reasoning = None,
        config: GenerateConfig | None = None,
        **options: Any,
    ) -> list[Message]:
        """Chat, run the tools the model calls, answer them, and chat again, until it replies.

        ``tools`` must carry their Python functions (plain callables, or
        :class:`~rocm_infer.tools.Tool` made with ``Tool.from_function``);
        async functions are awaited, plain ones called in the event loop (make
        a slow one async). Returns the whole history: ``messages``, then each
        assistant turn and the tool messages that answer its calls, ending
        with the assistant's reply. A tool that raises is reported to the
        model as its tool message (``"error: ..."``), not raised; so is a call
        of a tool that does not exist. After ``max_rounds`` chat requests the
        loop stops even if the model still calls tools: the history then ends
        with their tool messages. Cancelling it stops the current round's
        generation (the stream is closed, llama-server frees the slot).
        """
        history = _messages(messages)
        tool_list = as_tools(tools)
        if not tool_list:
            raise ValueError("run_tools needs at least one tool")
        missing = [t.name for t in tool_list if t.function is None]
        if missing:
            raise ValueError(f"run_tools calls the tools, so they need Python functions; these have none: {missing}")
        if not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(f"max_rounds must be an int >= 1, got {max_rounds!r}")
        by_name = {t.name: t for t in tool_list}
        cfg = GenerateConfig.build(config, **options)
        for round_number in range(1, max_rounds + 1):
            stream = self.chat(history, tool_list, tool_choice, reasoning, cfg)
            reply = await stream
            history.append(reply.message)
            if not reply.tool_calls:
                return history
            logger.debug("round %d: the model called %s", round_number, [c.name for c in reply.tool_calls])
            for call in reply.tool_calls:
                history.append(await _run_tool(by_name, call))
        return history

    # -- batches ---------------------------------------------------------------------------------

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
        await self._supervisor.ready()

        async def one(prompt: str) -> BatchResult:
            tokens: list[Token] = []
            stream = self.generate(prompt, cfg)
            try:
                async for token in stream:
                    tokens.append(token)
            except RocmInferError as exc:
                return BatchResult(tuple(tokens), exc, "error")
            return BatchResult(tuple(tokens), None, stream.finish_reason)

        return await self._gather_limited([functools.partial(one, p) for p in prompts])

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
        await self._supervisor.ready()
        body = sampling_body(cfg, chat=False)
        body.update(n_predict=1, n_probs=top_logprobs, return_tokens=True)

        async def one(prompt: str) -> ClassifyResult:
            request = {**body, "prompt": prompt}
            result = await self._supervisor.call(lambda client: client.completion(request))
            probs = result.get("completion_probabilities") or [{}]
            first = probs[0]
            token_ids = result.get("tokens") or [first.get("id", -1)]
            token = Token(token_ids[0], result.get("content", ""))
            candidates = tuple(
                TokenLogprob(c["id"], c.get("token", ""), float(c.get("logprob", 0.0)))
                for c in first.get("top_logprobs", ())
            )
            return ClassifyResult(token, candidates)

        return await self._gather_limited([functools.partial(one, p) for p in prompts])

    async def __aenter__(self) -> TextModel:
        return self


async def _run_tool(tools: Mapping[str, Tool], call: ToolCall) -> Message:
    """Run the tool ``call`` names; its result (or what went wrong) as the tool message."""
    tool = tools.get(call.name)
    if tool is None or tool.function is None:
        content = f"error: there is no tool named {call.name!r}; the tools are {sorted(tools)}"
    else:
        try:
            result = tool.function(**call.arguments)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # reported to the model, which may try again
            logger.debug("tool %s raised %r", call.name, exc)
            content = f"error: {type(exc).__name__}: {exc}"
        else:
            content = result if isinstance(result, str) else json.dumps(result, default=str)
    return Message("tool", content, tool_call_id=call.id, name=call.name)


_NO_FIM = "has no fill-in-the-middle tokens (prefix, suffix and middle): infill needs a code model trained for it"


class _InfillEvents(EventStream):
    """/infill's events; a refusal for want of FIM tokens is said plainly, and remembered by the model."""

    __slots__ = ("_model",)

    def __init__(self, client: LlamaServerClient, body: Mapping[str, Any], model: TextModel) -> None:
        super().__init__(client, "/infill", {**body, "stream": True}, terminator="stop")
        self._model = model

    async def open(self) -> None:
        try:
            await super().open()
        except APIError as exc:
            if exc.status == 501 and "Infill is not supported" in exc.message:
                self._model._fim = False
                info = self._model.info
                raise APIError(
                    f"model {info.name or info.path!r} {_NO_FIM} (llama-server: {exc.message})",
                    status=exc.status,
                    type=exc.type,
                    url=exc.url,
                    body=exc.body,
                ) from exc
            raise
        self._model._fim = True


def _extra_chunk(chunk: tuple[str, str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(chunk, Mapping):
        text, filename = chunk.get("text"), chunk.get("filename", "")
    elif isinstance(chunk, tuple) and len(chunk) == 2:
        filename, text = chunk
    else:
        raise TypeError(f"extra_context items are (filename, text) pairs or mappings, not {chunk!r}")
    if not isinstance(text, str) or not isinstance(filename, str):
        raise TypeError(f"extra_context filename and text must be str, got {chunk!r}")
    return {"filename": filename, "text": text}


def connect(base_url: str, *, api_key: str | None = None) -> ModelContext[TextModel]:
    """Attach to a llama-server that is already running at ``base_url``.

    Checks /health and reads /props; raises ``APIError`` (503: still loading)
    or ``APIConnectionError`` if the server is not usable. ``close()`` closes
    the HTTP client and leaves the server running.
    """
    return attach(base_url, api_key, TextModel)
