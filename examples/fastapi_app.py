"""A small service on rocm_infer: ``POST /generate`` (server-sent events) and an
OpenAI-compatible ``POST /v1/chat/completions`` (streaming and not), so the
official ``openai`` client pointed at it works unchanged.

    python examples/fastapi_app.py [MODEL.gguf] [--port 8000] [--parallel-slots N]

    import openai
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}])

Needs the ``fastapi`` extra (FastAPI and uvicorn; the ``demo`` extra too for
the demo model). Without a model path it serves $ROCM_INFER_MODEL, else the
tiny demo model. ``--parallel-slots`` 0 (the default) keeps llama-server's 4
slots sharing one context; N gives each of N slots context/N tokens.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import rocm_infer
from rocm_infer import GenerateConfig, RocmInferError, TextModel, Token, TokenStream
from rocm_infer.integrations.fastapi import SSEEvent, get_model, loaded_models, model_lifespan, sse_response

MODEL_NAME = "default"
Model = Annotated[TextModel, Depends(get_model)]


# --8<-- [start:generate]
class GenerateRequest(BaseModel):
    prompt: str
    max_tokens: int | None = 256
    temperature: float = 0.0
    stop: list[str] = []
    seed: int | None = None
    ignore_eos: bool = False


def generate(body: GenerateRequest, model: Model) -> Any:
    """Stream the continuation of a prompt: ``event: token`` per token, then ``event: end``."""
    try:
        stream = model.generate(body.prompt, **body.model_dump(exclude={"prompt"}))
    except (TypeError, ValueError) as exc:  # a bad option, refused before any request
        return openai_error(400, str(exc))
    return sse_response(stream)  # a client that disconnects stops the generation


# --8<-- [end:generate]


# -- the OpenAI-compatible route ------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream_options: StreamOptions | None = None

    def config(self) -> GenerateConfig:
        options: dict[str, Any] = {"max_tokens": self.max_completion_tokens or self.max_tokens}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.seed is not None:
            options["seed"] = self.seed
        if self.stop:
            options["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return GenerateConfig(**options)


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


def error_status(error: RocmInferError) -> int:
    if isinstance(error, rocm_infer.APIError) and error.status is not None and 400 <= error.status < 500:
        return error.status
    return 503 if isinstance(error, rocm_infer.ServerError | rocm_infer.ModelClosedError) else 502


def usage(stream: TokenStream) -> dict[str, int]:
    metrics = stream.metrics or rocm_infer.GenerateMetrics()
    prompt, completion = metrics.prompt_tokens, metrics.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


FINISH_REASONS = {"stop": "stop", "length": "length"}


class ChatChunks:
    """The events of one streamed chat completion, in OpenAI's chunk format."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.first = True

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> SSEEvent:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return SSEEvent({**self.envelope(), "choices": [choice]})

    def envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def token(self, token: Token) -> SSEEvent | None:
        if not token.text:
            return None  # text held back by llama-server: nothing to send yet
        delta = {"role": "assistant", "content": token.text} if self.first else {"content": token.text}
        self.first = False
        return self.chunk(delta)

    def end(self, stream: TokenStream) -> Iterable[SSEEvent]:
        yield self.chunk({"role": "assistant"} if self.first else {}, FINISH_REASONS.get(stream.finish_reason or ""))
        if self.include_usage:
            yield SSEEvent({**self.envelope(), "choices": [], "usage": usage(stream)})
        yield SSEEvent("[DONE]")

    def error(self, stream: TokenStream, error: RocmInferError) -> Iterable[SSEEvent]:
        message = str(error.args[0]) if error.args else type(error).__name__
        yield SSEEvent({"error": {"message": message, "type": type(error).__name__, "code": error_status(error)}})


async def chat_completions(body: ChatRequest, request: Request) -> Any:
    """OpenAI's chat completions: a JSON ``chat.completion``, or with ``stream`` its chunks and ``[DONE]``."""
    model = loaded_models(request.app).get(body.model)
    if model is None:
        return openai_error(404, f"the model {body.model!r} does not exist", "model_not_found")
    try:
        stream = model.chat([{"role": m.role, "content": m.text()} for m in body.messages], config=body.config())
    except (TypeError, ValueError) as exc:
        return openai_error(400, str(exc))
    if body.stream:
        chunks = ChatChunks(body.model, body.stream_options is not None and body.stream_options.include_usage)
        return sse_response(stream, on_token=chunks.token, on_end=chunks.end, on_error=chunks.error)
    try:
        text = await stream.collect()
    except RocmInferError as exc:
        return openai_error(error_status(exc), str(exc.args[0]) if exc.args else type(exc).__name__, "server_error")
    message = {"role": "assistant", "content": text}
    finish_reason = FINISH_REASONS.get(stream.finish_reason or "")
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
    return {**completion, "model": body.model, "choices": [choice], "usage": usage(stream)}


def list_models(request: Request) -> dict[str, Any]:
    """OpenAI's model list: the models this service loaded."""
    names = loaded_models(request.app)
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "me"} for n in names]}


# --8<-- [start:app]
def create_app(model_path: str | os.PathLike[str] | None = None, **load_options: Any) -> FastAPI:
    """The service, serving ``model_path`` (default: $ROCM_INFER_MODEL, else the demo model)."""
    path = model_path or os.environ.get("ROCM_INFER_MODEL") or demo_model()
    app = FastAPI(
        title="rocm_infer example",
        lifespan=model_lifespan(**{MODEL_NAME: lambda: rocm_infer.load_model(path, **load_options)}),
    )
    app.post("/generate")(generate)
    app.post("/v1/chat/completions")(chat_completions)
    app.get("/v1/models")(list_models)
    return app


# --8<-- [end:app]


def demo_model() -> Path:
    from _common import demo_model as make

    return make()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--parallel-slots", type=int, default=0, help="0: llama-server's default")
    args = parser.parse_args()
    uvicorn.run(create_app(args.model, parallel_slots=args.parallel_slots), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
