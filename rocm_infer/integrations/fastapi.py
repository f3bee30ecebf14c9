"""FastAPI support: load models with the app, hand them to routes, stream tokens as SSE.

::

    from typing import Annotated

    from fastapi import Depends, FastAPI
    from rocm_infer import TextModel
    from rocm_infer.integrations.fastapi import get_model, model_lifespan, sse_response

    app = FastAPI(lifespan=model_lifespan(default="model.gguf"))

    @app.post("/generate")
    def generate(prompt: str, model: Annotated[TextModel, Depends(get_model)]):
        return sse_response(model.generate(prompt))

* :func:`model_lifespan` (or :func:`load_models` inside a lifespan of your
  own) loads the models when the app starts and closes them when it stops.
* :func:`get_model` / :func:`model_dependency` hand a route its model.
* :func:`sse_response` streams a :class:`~rocm_infer.stream.TokenStream` as
  ``text/event-stream``; when the HTTP client goes away, the stream is
  closed and llama-server stops generating.

Needs the ``fastapi`` extra (``pip install -e '.[fastapi]'`` in a clone of
rocm_infer, or ``pip install fastapi uvicorn``).
"""

from __future__ import annotations

try:
    from fastapi import FastAPI, Request
    from starlette.responses import StreamingResponse
    from starlette.types import Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by a test in a clean subprocess
    raise ImportError(
        "rocm_infer.integrations.fastapi needs FastAPI, which is not installed: "
        "install it (rocm_infer's fastapi extra) with `pip install fastapi uvicorn`"
    ) from exc

import contextlib
import dataclasses
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import anyio
import anyio.lowlevel

from ..backend import load_model
from ..errors import RocmInferError
from ..lifecycle import ServerModel
from ..stream import TokenStream
from ..types import Token

__all__ = [
    "DEFAULT_MODEL",
    "ModelSource",
    "SSEEvent",
    "TokenStreamResponse",
    "end_events",
    "error_events",
    "get_model",
    "load_models",
    "loaded_models",
    "model_dependency",
    "model_lifespan",
    "sse_response",
    "token_event",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
"""The name :func:`get_model` looks up."""

ModelSource = str | os.PathLike[str] | Awaitable[ServerModel] | Callable[[], Awaitable[ServerModel]]
"""What a model is loaded from: a GGUF path (loaded with default options), an
awaitable such as ``rocm_infer.load_model(path, ...)`` (awaited once, at the
first start-up), or a function returning one (called at every start-up)."""

# Where load_models() keeps the models on app.state.
_STATE_KEY = "rocm_infer_models"


def _check_sources(sources: Mapping[str, ModelSource]) -> dict[str, ModelSource]:
    if not sources:
        raise ValueError("name at least one model, e.g. model_lifespan(default='model.gguf')")
    checked: dict[str, ModelSource] = {}
    for name, source in sources.items():
        if not isinstance(source, str | os.PathLike) and not inspect.isawaitable(source) and not callable(source):
            raise TypeError(
                f"model {name!r}: expected a path, an awaitable (rocm_infer.load_model(...)) or a function "
                f"returning one, not {type(source).__name__}"
            )
        checked[name] = source
    return checked


async def _load(name: str, source: ModelSource) -> ServerModel:
    model: object
    if isinstance(source, str | os.PathLike):
        model = await load_model(source)
    elif inspect.isawaitable(source):
        model = await source
    else:
        model = await source()
    if not isinstance(model, ServerModel):
        raise TypeError(f"model {name!r}: its source gave {type(model).__name__}, not a rocm_infer model")
    return model


@contextlib.asynccontextmanager
async def load_models(app: FastAPI, **sources: ModelSource) -> AsyncIterator[Mapping[str, ServerModel]]:
    """Load the named models for ``app`` and close them on exit.

    For use inside a lifespan of your own (:func:`model_lifespan` is this
    alone). The models are loaded one after the other, in the order given, and
    kept on ``app.state`` where :func:`model_dependency` and
    :func:`loaded_models` find them; yields them as a read-only mapping.

    If one fails to load, those already loaded are closed and the error
    (``ModelNotFoundError``, ``ServerStartError`` …) propagates, so the app
    does not start. On exit, normal or not (cancelled included), every model
    is closed, in reverse order. Raises ``TypeError``/``ValueError`` for bad
    sources before anything is loaded, and ``RuntimeError`` if ``app``
    already has models loaded.
    """
    checked = _check_sources(sources)
    if getattr(app.state, _STATE_KEY, None) is not None:
        raise RuntimeError("this app already has models loaded (load_models is already active for it)")
    models: dict[str, ServerModel] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, source in checked.items():
            model = await _load(name, source)
            stack.push_async_callback(model.close)
            models[name] = model
            logger.info("model %r loaded: %r", name, model)
        view = MappingProxyType(models)
        setattr(app.state, _STATE_KEY, view)
        try:
            yield view
        finally:
            setattr(app.state, _STATE_KEY, None)


def model_lifespan(**sources: ModelSource) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that loads the named models at start-up and closes them at shutdown.

    ``FastAPI(lifespan=model_lifespan(default="model.gguf"))``; give other names for
    more models, and :func:`model_dependency` (name) to routes. Bad sources raise
    ``TypeError``/``ValueError`` here, at once. See :func:`load_models`.
    """
    checked = _check_sources(sources)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with load_models(app, **checked):
            yield

    return lifespan


def loaded_models(app: FastAPI) -> Mapping[str, ServerModel]:
    """The models :func:`load_models` holds for ``app`` (read-only).

    Raises ``RuntimeError`` if none are loaded (the app is not running, or its
    lifespan does not load models).
    """
    models: Mapping[str, ServerModel] | None = getattr(app.state, _STATE_KEY, None)
    if models is None:
        raise RuntimeError(
            "no models are loaded for this app: pass lifespan=model_lifespan(...) to FastAPI, "
            "or use load_models(app, ...) in its lifespan"
        )
    return models


def model_dependency(name: str = DEFAULT_MODEL) -> Callable[[Request], Any]:
    """A FastAPI dependency that hands a route the model loaded as ``name``.

    ``model: Annotated[TextModel, Depends(model_dependency("chat"))]``. The
    dependency raises ``RuntimeError`` (a 500 for the client) if no models are
    loaded or none has that name.
    """

    def dependency(request: Request) -> Any:
        models = loaded_models(request.app)
        try:
            return models[name]
        except KeyError:
            raise RuntimeError(f"no model named {name!r} is loaded; loaded: {sorted(models)}") from None

    return dependency


get_model = model_dependency()
"""The dependency for the model named ``"default"``."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: ``data`` (a ``str`` is sent as it is, anything
    else as JSON) and an optional ``event`` name."""

    data: object
    event: str | None = None

    def encode(self) -> bytes:
        text = self.data if isinstance(self.data, str) else json.dumps(self.data, ensure_ascii=False)
        head = f"event: {self.event}\n" if self.event else ""
        if "\n" not in text:  # JSON always: one data line
            return f"{head}data: {text}\n\n".encode()
        body = "".join(f"data: {line}\n" for line in text.split("\n"))
        return f"{head}{body}\n".encode()


def token_event(token: Token) -> SSEEvent | None:
    """The default event for a token: ``event: token``, data ``{"id": …, "text": …}``."""
    return SSEEvent({"id": token.id, "text": token.text}, "token")


def end_events(stream: TokenStream) -> Iterable[SSEEvent]:
    """The default end of a stream: ``event: end``, data ``{"finish_reason": …, "metrics": {…}}``."""
    metrics = dataclasses.asdict(stream.metrics) if stream.metrics is not None else None
    return [SSEEvent({"finish_reason": stream.finish_reason, "metrics": metrics}, "end")]


def error_events(stream: TokenStream, error: RocmInferError) -> Iterable[SSEEvent]:
    """The default for an error mid-stream: ``event: error``, data ``{"error": {"type": …, "message": …}}``.

    The message is the error's own, without the llama-server output some errors carry.
    """
    message = str(error.args[0]) if error.args else type(error).__name__
    return [SSEEvent({"error": {"type": type(error).__name__, "message": message}}, "error")]


async def _events(
    stream: TokenStream,
    on_token: Callable[[Token], SSEEvent | None],
    on_end: Callable[[TokenStream], Iterable[SSEEvent]],
    on_error: Callable[[TokenStream, RocmInferError], Iterable[SSEEvent]],
) -> AsyncIterator[bytes]:
    try:
        async for token in stream:
            event = on_token(token)
            if event is not None:
                yield event.encode()
    except RocmInferError as exc:
        # The status line is long gone: the error can only be an event.
        logger.info("stream ended with %s: %s", type(exc).__name__, exc.args[0] if exc.args else "")
        ending = on_error(stream, exc)
    else:
        ending = on_end(stream)
    for event in ending:
        yield event.encode()


# Writes of one burst before the response lets the loop run (under asyncio's 5 writes to a lost connection).
_WRITES_PER_PAUSE = 4


class TokenStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response of one :class:`~rocm_infer.stream.TokenStream`.

    It watches the connection while it streams: when the client disconnects
    (also before the first token, while the prompt is processed), the
    streaming is cancelled and the TokenStream closed, so llama-server stops
    generating and frees the slot. The stream is closed however the response
    ends. Made by :func:`sse_response`.
    """

    def __init__(
        self,
        stream: TokenStream,
        body: AsyncIterator[bytes],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(body, status_code=status_code, headers=headers, media_type="text/event-stream")
        self.token_stream = stream
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            async with anyio.create_task_group() as group:

                async def close_on_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                sent = 0

                async def send_and_yield(message: Message) -> None:
                    nonlocal sent
                    await send(message)
                    # Tokens read in one network read are sent in a burst that never waits;
                    # without a pause the server could not notice a lost connection until
                    # the burst ends, and asyncio warns from the fifth write to a closed
                    # socket. A pause every few writes bounds the burst; one after every
                    # write cost a turn of the loop per token (about a quarter of serve's
                    # CPU per token).
                    sent += 1
                    if sent % _WRITES_PER_PAUSE == 0:
                        await anyio.lowlevel.checkpoint()

                group.start_soon(close_on_disconnect)
                with contextlib.suppress(OSError):  # the client went away while a chunk was sent
                    await self.stream_response(send_and_yield)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.token_stream.aclose()
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    await aclose()
                if self._on_close is not None:
                    await self._on_close()
        if self.background is not None:
            await self.background()


def sse_response(
    stream: TokenStream,
    *,
    on_token: Callable[[Token], SSEEvent | None] = token_event,
    on_end: Callable[[TokenStream], Iterable[SSEEvent]] = end_events,
    on_error: Callable[[TokenStream, RocmInferError], Iterable[SSEEvent]] = error_events,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    on_close: Callable[[], Awaitable[object]] | None = None,
) -> TokenStreamResponse:
    """Stream ``stream`` to the HTTP client as server-sent events.

    Each token becomes the event ``on_token`` makes of it (none where it
    returns None); the end of the stream, the events of ``on_end``; an SDK
    error mid-stream (a ``ContextLengthError`` on the first read, a crashed
    server …), the events of ``on_error``, after which the response ends
    normally (the status was sent with the first byte). The defaults send
    ``token``, ``end`` and ``error`` events with JSON data (see
    :func:`token_event`, :func:`end_events`, :func:`error_events`); other
    formats, such as OpenAI's chunks, are a matter of other functions.

    Returns at once; the request to llama-server is sent when the response
    starts. When the client disconnects, or the response ends for any other
    reason, ``stream`` is closed: llama-server stops generating; then
    ``on_close`` is awaited (to release what the request held, a pool's lease
    say), shielded from cancellation.
    """
    merged = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
    body = _events(stream, on_token, on_end, on_error)
    return TokenStreamResponse(stream, body, status_code=status_code, headers=merged, on_close=on_close)
