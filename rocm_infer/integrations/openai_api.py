"""OpenAI-compatible HTTP routes over rocm_infer models, for FastAPI.

::

    from fastapi import FastAPI
    from rocm_infer.integrations.fastapi import model_lifespan
    from rocm_infer.integrations.openai_api import loaded_models_provider, openai_router

    app = FastAPI(lifespan=model_lifespan(default="model.gguf"))
    app.include_router(openai_router(loaded_models_provider))

The official ``openai`` client pointed at ``/v1`` works unchanged:
``POST /v1/chat/completions`` (streamed and not; tools, ``tool_choice``, tool
messages, ``reasoning_content`` and ``finish_reason: "tool_calls"`` in
OpenAI's format; ``reasoning_effort``), ``POST /v1/embeddings`` (float or
base64) and ``GET /v1/models``; ``POST /v1/rerank`` takes llama-server's
(Jina and Cohere style) reranking request. The model is
the one the request names, looked up through a :class:`ModelProvider`: the
models an app loaded, a pool that loads on demand, or a router. An unknown
name is a 404 that lists the names that exist; a bad request a 400 in
OpenAI's error format, before anything is sent to llama-server. A client
that disconnects stops the generation.

Streamed tool calls are sent whole, one delta per call (index, id, name and
all its arguments) once the model has finished them: what the OpenAI client
assembles from pieces, it takes as well in one.

Needs the ``fastapi`` extra.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..config import GenerateConfig
from ..embedding import EmbeddingModel, Reranker
from ..errors import (
    APIError,
    InvalidModelError,
    ModelClosedError,
    ModelNotFoundError,
    RocmInferError,
    ServerError,
    ServerStartError,
)
from ..model import TextModel
from ..serving import Router
from ..serving.pool import PoolBusyError
from ..stream import TokenStream
from ..types import Completion, GenerateMetrics, Token
from .fastapi import SSEEvent, loaded_models, sse_response

__all__ = [
    "ChatRequest",
    "ModelProvider",
    "loaded_models_provider",
    "openai_error",
    "openai_router",
]


class ModelProvider(Protocol):
    """Where the OpenAI routes find the model a request names."""

    def names(self) -> Sequence[str]:
        """Every model name a request may use (``GET /v1/models``)."""
        ...

    def lease(self, name: str) -> AbstractAsyncContextManager[Any]:
        """The model named ``name``, held for one request; KeyError if there is none."""
        ...


class _LoadedModels:
    """A provider over the models :func:`~rocm_infer.integrations.fastapi.load_models` holds for an app."""

    def __init__(self, request: Request) -> None:
        self._models = loaded_models(request.app)

    def names(self) -> Sequence[str]:
        return list(self._models)

    @contextlib.asynccontextmanager
    async def _held(self, name: str) -> AsyncIterator[Any]:
        yield self._models[name]

    def lease(self, name: str) -> AbstractAsyncContextManager[Any]:
        if name not in self._models:
            raise KeyError(name)
        return self._held(name)


def loaded_models_provider(request: Request) -> ModelProvider:
    """The provider for the models an app loaded with ``model_lifespan`` / ``load_models``."""
    return _LoadedModels(request)


# -- requests ----------------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[_Part] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None

    def to_message(self) -> dict[str, Any]:
        """This message as rocm_infer takes it (an OpenAI-shaped mapping)."""
        content: Any = self.content
        if isinstance(content, list):
            # Text, image_url and input_audio parts, as rocm_infer's Message takes them.
            content = [p.model_dump(exclude_none=True) for p in content]
        out: dict[str, Any] = {"role": self.role, "content": content}
        for key in ("tool_calls", "tool_call_id", "name", "reasoning_content"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request this route honours (others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    ignore_eos: bool = False  # llama.cpp's extension (extra_body), as llama-server takes it

    def config(self) -> GenerateConfig:
        options: dict[str, Any] = {"max_tokens": self.max_completion_tokens or self.max_tokens}
        if self.ignore_eos:
            options["ignore_eos"] = True
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.seed is not None:
            options["seed"] = self.seed
        if self.stop:
            options["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.parallel_tool_calls is not None:
            options["extra_body"] = {"parallel_tool_calls": self.parallel_tool_calls}
        return GenerateConfig(**options)

    def choice(self) -> str | None:
        """``tool_choice`` as rocm_infer takes it: a mode, or the name OpenAI's object form names."""
        choice = self.tool_choice
        if isinstance(choice, dict):
            function = choice.get("function")
            if choice.get("type") != "function" or not isinstance(function, dict) or "name" not in function:
                raise ValueError("tool_choice must be a mode or {'type': 'function', 'function': {'name'}}")
            return str(function["name"])
        return choice

    def reasoning(self) -> bool | Literal["low", "medium", "high"] | None:
        effort = self.reasoning_effort
        if effort is None:
            return None
        if effort == "none":
            return False
        return "low" if effort == "minimal" else effort

    def start(self, model: TextModel | Router) -> TokenStream:
        """The chat stream this request asks for; ValueError/TypeError before any request."""
        return model.chat(
            [m.to_message() for m in self.messages],
            self.tools,
            self.choice(),
            self.reasoning(),
            self.config(),
        )


class CompletionRequest(BaseModel):
    """OpenAI's (legacy) text completion request: continue ``prompt``."""

    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    echo: bool = False
    ignore_eos: bool = False  # llama.cpp's extension (extra_body), as llama-server takes it

    def start(self, model: TextModel | Router) -> TokenStream:
        """The generation this request asks for; ValueError before any request for what it cannot do."""
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("give one prompt per request")
            prompt = prompt[0]
        if self.echo:
            raise ValueError("echo is not supported")
        options: dict[str, Any] = {"max_tokens": self.max_tokens, "ignore_eos": self.ignore_eos}
        for key in ("temperature", "top_p", "seed"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        if self.stop:
            options["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return model.generate(prompt, **options)


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request: ``input`` one text or a list of texts."""

    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class RerankRequest(BaseModel):
    """The reranking request llama-server takes (Jina and Cohere style)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    query: str
    documents: list[str]
    top_n: int | None = None


# -- responses ---------------------------------------------------------------------------------------


def openai_error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> JSONResponse:
    """An error response in OpenAI's format."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def error_status(error: RocmInferError) -> int:
    """The HTTP status for an SDK error: llama-server's own 4xx, 503 for a dead, closed or busy
    model (a pool with no room), 500 for a model that could not be loaded, else 502."""
    if isinstance(error, APIError) and error.status is not None and 400 <= error.status < 500:
        return error.status
    if isinstance(error, ServerStartError | InvalidModelError | ModelNotFoundError):
        return 500
    return 503 if isinstance(error, ServerError | ModelClosedError | PoolBusyError) else 502


def _message_of(error: BaseException) -> str:
    return str(error.args[0]) if error.args else type(error).__name__


def _usage(metrics: GenerateMetrics | None) -> dict[str, int]:
    metrics = metrics or GenerateMetrics()
    prompt, completion = metrics.prompt_tokens, metrics.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}

# What follows a token's text in a streamed chunk (json.dumps of the whole chunk would give the same).
_DELTA_END = '}, "logprobs": null, "finish_reason": null}]}'
_TEXT_END = ', "logprobs": null, "finish_reason": null}]}'
_json_string = json.JSONEncoder(ensure_ascii=False).encode


def _json_object_opening(fields: dict[str, Any]) -> str:
    """``json.dumps(fields)`` without its closing brace, for more fields to follow."""
    return json.dumps(fields, ensure_ascii=False)[:-1]


class _ChatChunks:
    """The events of one streamed chat completion, in OpenAI's chunk format."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.first = True
        opening = _json_object_opening(self.envelope())
        self._delta = {
            key: f'{opening}, "choices": [{{"index": 0, "delta": {{"{key}": '
            for key in ("content", "reasoning_content")
        }

    def envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> SSEEvent:
        if self.first:
            delta = {"role": "assistant", **delta}
            self.first = False
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return SSEEvent({**self.envelope(), "choices": [choice]})

    def token(self, token: Token) -> SSEEvent | None:
        if not token.text or token.kind == "tool_call":
            return None  # held-back text, or call arguments: those go whole at the end
        key = "content" if token.kind == "content" else "reasoning_content"
        if self.first:
            return self.chunk({key: token.text})
        # The hot path: the chunk's JSON around the text is the same for every token.
        return SSEEvent(f"{self._delta[key]}{_json_string(token.text)}{_DELTA_END}")

    def end(self, stream: TokenStream) -> Iterable[SSEEvent]:
        for index, call in enumerate(stream.tool_calls):
            yield self.chunk({"tool_calls": [{"index": index, **call.to_openai()}]})
        yield self.chunk({}, _FINISH.get(stream.finish_reason or ""))
        if self.include_usage:
            yield SSEEvent({**self.envelope(), "choices": [], "usage": _usage(stream.metrics)})
        yield SSEEvent("[DONE]")

    def error(self, stream: TokenStream, error: RocmInferError) -> Iterable[SSEEvent]:
        yield SSEEvent(
            {"error": {"message": _message_of(error), "type": type(error).__name__, "code": error_status(error)}}
        )


class _TextChunks:
    """The events of one streamed text completion, in OpenAI's format."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._text = f'{_json_object_opening(self.envelope())}, "choices": [{{"index": 0, "text": '

    def envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def chunk(self, text: str, finish_reason: str | None = None) -> SSEEvent:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return SSEEvent({**self.envelope(), "choices": [choice]})

    def token(self, token: Token) -> SSEEvent | None:
        # The hot path: the chunk's JSON around the text is the same for every token.
        return SSEEvent(f"{self._text}{_json_string(token.text)}{_TEXT_END}") if token.text else None

    def end(self, stream: TokenStream) -> Iterable[SSEEvent]:
        yield self.chunk("", _FINISH.get(stream.finish_reason or ""))
        if self.include_usage:
            yield SSEEvent({**self.envelope(), "choices": [], "usage": _usage(stream.metrics)})
        yield SSEEvent("[DONE]")

    def error(self, stream: TokenStream, error: RocmInferError) -> Iterable[SSEEvent]:
        return _ChatChunks.error(self, stream, error)  # type: ignore[arg-type]


def _unknown_model(name: str, provider: ModelProvider) -> JSONResponse:
    names = sorted(provider.names())
    return openai_error(
        404, f"the model {name!r} does not exist; the models are {names}", "invalid_request_error", "model_not_found"
    )


def _kind(model: object) -> str:
    for cls, words in ((TextModel, "a text model"), (EmbeddingModel, "an embedding model"), (Reranker, "a reranker")):
        if isinstance(model, cls):
            return words
    return f"a {type(model).__name__}"


def _wrong_kind(name: str, model: object, wanted: str) -> JSONResponse:
    message = f"the model {name!r} is {_kind(model)}, not {wanted}"
    return openai_error(400, message, "invalid_request_error", "wrong_model_type")


async def _generation(
    name: str,
    provider: ModelProvider,
    start: Callable[[Any], TokenStream],
    chunks: _ChatChunks | _TextChunks | None,
    reply: Callable[[Completion], dict[str, Any]],
) -> Any:
    """One generating route: lease the model, start its stream (400 for what it refuses), then
    stream it in ``chunks``' format, or answer with ``reply`` of the whole Completion."""
    try:
        lease = provider.lease(name)
    except KeyError:
        return _unknown_model(name, provider)
    stack = contextlib.AsyncExitStack()
    try:
        model = await stack.enter_async_context(lease)
        if not isinstance(model, TextModel | Router):
            await stack.aclose()
            return _wrong_kind(name, model, "a text model")
        stream = start(model)
    except (TypeError, ValueError) as exc:
        await stack.aclose()
        return openai_error(400, str(exc))
    except RocmInferError as exc:
        await stack.aclose()
        return openai_error(error_status(exc), _message_of(exc), "server_error")
    except BaseException:
        await stack.aclose()
        raise
    if chunks is not None:
        return sse_response(
            stream, on_token=chunks.token, on_end=chunks.end, on_error=chunks.error, on_close=stack.aclose
        )
    async with stack:
        try:
            result = await stream
        except RocmInferError as exc:
            kind = "invalid_request_error" if error_status(exc) < 500 else "server_error"
            return openai_error(error_status(exc), _message_of(exc), kind)
    return reply(result)


async def _chat(body: ChatRequest, provider: ModelProvider) -> Any:
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    chunks = _ChatChunks(body.model, include_usage) if body.stream else None

    def reply(result: Completion) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.text if result.text or not result.tool_calls else None,
        }
        if result.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in result.tool_calls]
        if result.reasoning:
            message["reasoning_content"] = result.reasoning
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH.get(result.finish_reason)}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [choice],
            "usage": _usage(result.metrics),
        }

    return await _generation(body.model, provider, body.start, chunks, reply)


async def _completions(body: CompletionRequest, provider: ModelProvider) -> Any:
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    chunks = _TextChunks(body.model, include_usage) if body.stream else None

    def reply(result: Completion) -> dict[str, Any]:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": _FINISH.get(result.finish_reason)}
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [choice],
            "usage": _usage(result.metrics),
        }

    return await _generation(body.model, provider, body.start, chunks, reply)


async def _embeddings(body: EmbeddingRequest, provider: ModelProvider) -> Any:
    try:
        lease = provider.lease(body.model)
    except KeyError:
        return _unknown_model(body.model, provider)
    async with lease as model:
        if not isinstance(model, EmbeddingModel | Router):
            return _wrong_kind(body.model, model, "an embedding model")
        if body.dimensions is not None and body.dimensions != model.dimensions:
            return openai_error(400, f"the model {body.model!r} makes vectors of {model.dimensions} dimensions only")
        try:
            vectors, tokens = await model._embed(body.input, normalize=None, truncate=False, batch_size=None)
        except (TypeError, ValueError) as exc:
            return openai_error(400, str(exc))
        except RocmInferError as exc:
            kind = "invalid_request_error" if error_status(exc) < 500 else "server_error"
            return openai_error(error_status(exc), _message_of(exc), kind)
    if body.encoding_format == "base64":
        data = [base64.b64encode(v.tobytes()).decode() for v in vectors]
    else:
        data = [v.tolist() for v in vectors]  # type: ignore[misc]
    return {
        "object": "list",
        "model": body.model,
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _rerank(body: RerankRequest, provider: ModelProvider) -> Any:
    try:
        lease = provider.lease(body.model)
    except KeyError:
        return _unknown_model(body.model, provider)
    async with lease as model:
        if not isinstance(model, Reranker):
            return _wrong_kind(body.model, model, "a reranker")
        try:
            ranked = await model.rerank(body.query, body.documents, top_n=body.top_n)
        except (TypeError, ValueError) as exc:
            return openai_error(400, str(exc))
        except RocmInferError as exc:
            return openai_error(error_status(exc), _message_of(exc), "server_error")
    results = [{"index": r.index, "relevance_score": r.score, "document": {"text": r.document}} for r in ranked]
    return {"object": "list", "model": body.model, "results": results}


def openai_router(provider: Any) -> APIRouter:
    """The OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/models``) over ``provider``.

    ``provider`` is a :class:`ModelProvider`, or a function of the request
    that returns one (such as :func:`loaded_models_provider`).
    """
    router = APIRouter()

    def resolve(request: Request) -> ModelProvider:
        found: ModelProvider = provider(request) if callable(provider) and not hasattr(provider, "lease") else provider
        return found

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        """OpenAI's chat completions: a ``chat.completion``, or with ``stream`` its chunks and ``[DONE]``."""
        return await _chat(body, resolve(request))

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """OpenAI's text completions: a ``text_completion``, or with ``stream`` its chunks and ``[DONE]``."""
        return await _completions(body, resolve(request))

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
        """OpenAI's embeddings: one vector per input, in order (float lists, or base64 float32)."""
        return await _embeddings(body, resolve(request))

    @router.post("/v1/rerank")
    async def rerank(body: RerankRequest, request: Request) -> Any:
        """Every document's relevance to the query, best first (the ``top_n`` best, if given)."""
        return await _rerank(body, resolve(request))

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """OpenAI's model list: every model a request may name."""
        names = resolve(request).names()
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "rocm_infer"} for n in names],
        }

    return router
