"""What every model rocm_infer hands out shares: supervision, closing, and the awaitable that loads it.

:class:`ServerModel` is the base of :class:`~rocm_infer.model.TextModel` and
the embedding and reranking models: one :class:`~rocm_infer.supervisor.Supervisor`
for its server, the model's :class:`~rocm_infer.types.ModelInfo`, an
idempotent ``close()``, ``async with``, a repr, and the unclosed-object
warning. :class:`ModelContext` is what ``load_model()`` and ``connect()``
return: await it, or use ``async with``. :func:`attach` is ``connect()``'s
work for any model class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.to_thread

from .client import LlamaServerClient
from .errors import ModelClosedError, RocmInferError
from .gguf import read_gguf_info
from .gpu import VramMonitor
from .server import LlamaServer
from .supervisor import ModelState, Supervisor
from .types import GenerateMetrics, ModelInfo

__all__ = ["ModelContext", "ServerModel", "attach", "model_info"]

M = TypeVar("M", bound="ServerModel")
T = TypeVar("T")


class _Abortable(Protocol):
    def abort(self, error: BaseException) -> None: ...


class ServerModel:
    """A model served by one llama-server (started by rocm_infer, or attached to).

    ``err`` is the error that makes the model unusable — its server's death
    (a :class:`~rocm_infer.errors.ServerExitedError`), a failed restart, or a
    :class:`~rocm_infer.errors.ModelClosedError` once closed — and None
    while it can be used. A failed request (a bad prompt, a context overflow)
    is that request's error only: it is raised, and stored on the stream,
    never here. With a :class:`~rocm_infer.config.RestartPolicy`
    (``LoadConfig(restart=...)``) the next call after a crash starts
    llama-server again with the same configuration, within the policy's
    limits (``restarts`` counts them).

    Close it (``async with``, or ``await model.close()``). A model dropped
    unclosed (say, a notebook cell that loads one, run twice) emits a
    ``ResourceWarning`` and its llama-server is stopped at once (SIGTERM, then
    SIGKILL after a second); never rely on that.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        info: ModelInfo,
        *,
        model_type: str = "unknown",
        vram: VramMonitor | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._vram = vram
        self.info = info
        self.model_type = model_type
        # Open streams, so close() can end them before stopping the server: llama-server
        # does not exit on SIGTERM while it is still streaming a response.
        self._streams: weakref.WeakSet[_Abortable] = weakref.WeakSet()
        # At most one request per llama-server slot from the batch helpers (batch_generate, embed ...).
        self._slots = asyncio.Semaphore(max(1, info.parallel_slots))

    @classmethod
    async def create(
        cls: type[M],
        supervisor: Supervisor,
        info: ModelInfo,
        *,
        model_type: str = "unknown",
        vram: VramMonitor | None = None,
    ) -> M:
        """Make the model for a started or attached server (a subclass may ask the server
        something first, as the embedding model does for its vector size)."""
        return cls(supervisor, info, model_type=model_type, vram=vram)

    def __repr__(self) -> str:
        server = self._supervisor.server
        where = f"pid={server.pid}" if server is not None else self._supervisor.client.base_url
        state = self._supervisor.state.value
        return f"<{type(self).__name__} {self.model_type} {self.info.name or self.info.path!r} {where} {state}>"

    @property
    def server(self) -> LlamaServer | None:
        """The supervised llama-server (the current one, after a restart), or None for connect()."""
        return self._supervisor.server

    @property
    def client(self) -> LlamaServerClient:
        """The HTTP client of the current server (for endpoints this class does not wrap)."""
        return self._supervisor.client

    @property
    def err(self) -> RocmInferError | None:
        return self._supervisor.err

    @property
    def restarts(self) -> int:
        """How many times the server was started again after a crash."""
        return self._supervisor.restarts

    @property
    def closed(self) -> bool:
        return self._supervisor.state is ModelState.CLOSED

    def _with_vram(self, metrics: GenerateMetrics) -> GenerateMetrics:
        """``metrics`` with the GPU's VRAM figures, read once as a generation ends."""
        if self._vram is None:
            return metrics
        active, peak = self._vram.sample()
        return dataclasses.replace(metrics, active_vram_bytes=active, peak_vram_bytes=peak)

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """The model's token ids for ``text``; ``add_special`` adds BOS (or CLS/SEP) as a prompt has."""
        return await self._supervisor.call(lambda client: client.tokenize(text, add_special=add_special))

    async def _gather_limited(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run ``calls`` concurrently, at most one per llama-server slot at a time, results in order.

        The first failure cancels the rest and is raised as itself (not an
        exception group); cancelling the caller cancels every call, which
        closes their requests.
        """

        async def limited(call: Callable[[], Awaitable[T]]) -> T:
            async with self._slots:
                return await call()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(limited(call)) for call in calls]
        except BaseExceptionGroup as failed:
            # Callers get the SDK's own exception, as from any other call, not a group.
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``."""
        ids = list(tokens)
        return await self._supervisor.call(lambda client: client.detokenize(ids))

    # -- lifetime --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the supervised llama-server (SIGTERM, then SIGKILL) and close the
        HTTP client. A model made by connect() leaves its server running.

        Streams still open are closed first; their readers get
        :class:`~rocm_infer.errors.ModelClosedError`. Idempotent; completes
        even if the calling task is cancelled, once or again while it closes
        (the server is still stopped and reaped). Called from an event loop
        other than the one the model was loaded in, it stops the process
        synchronously (SIGTERM, then SIGKILL after a second) and leaves the
        HTTP session, which belongs to that loop, alone."""
        if not self._supervisor.mark_closed():
            return
        for stream in list(self._streams):
            stream.abort(ModelClosedError("the model was closed while this stream was open"))
        # Shielded: a second cancellation (Starlette, asyncio.timeout) must not leave the server.
        with anyio.CancelScope(shield=True):
            await self._supervisor.aclose()

    aclose = close

    def __del__(self) -> None:
        # Dropped without close() (a notebook cell that loads a model, run twice): stop the
        # llama-server now, synchronously, and warn as aiohttp does for an unclosed session.
        supervisor = getattr(self, "_supervisor", None)
        if supervisor is None or not supervisor.mark_closed():  # closed, or __init__ never finished
            return
        message = f"unclosed model {self!r}: use `async with` or `await model.close()`"
        try:
            supervisor.stop_now()
        finally:
            warnings.warn(message, ResourceWarning, stacklevel=2, source=self)

    async def __aenter__(self: M) -> M:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def model_info(props: Mapping[str, Any], file_info: ModelInfo | None) -> ModelInfo:
    """ModelInfo of a loaded model: what llama-server's /props says (context,
    slots, chat template and its capabilities, input modalities, path) over
    what the GGUF file says, when it is readable here
    (:func:`rocm_infer.read_gguf_info`)."""
    settings = props.get("default_generation_settings") or {}
    path = props.get("model_path") or (file_info.path if file_info is not None else None)
    caps = props.get("chat_template_caps") or {}
    modalities = props.get("modalities") or {}
    return dataclasses.replace(
        file_info if file_info is not None else ModelInfo(path),
        path=path,
        context_len=int(settings.get("n_ctx") or 0),
        has_chat_template=bool(props.get("chat_template")),
        parallel_slots=int(props.get("total_slots") or 1),
        chat_capabilities=frozenset(
            name.removeprefix("supports_") for name, on in caps.items() if on and isinstance(name, str)
        ),
        modalities=frozenset({"text"} | {name for name, on in modalities.items() if on and isinstance(name, str)}),
    )


class ModelContext(Coroutine[Any, Any, M], Generic[M]):
    """What load_model() and connect() return: await it for the model, or use
    ``async with`` to have it closed on exit (as aiohttp's request objects do).
    It is a coroutine, so ``asyncio.create_task(load_model(...))`` works too."""

    __slots__ = ("_coro", "_used", "_model")

    def __init__(self, coro: Coroutine[Any, Any, M]) -> None:
        self._coro = coro
        self._used = False
        self._model: M | None = None

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

    def __await__(self) -> Generator[Any, None, M]:
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

    async def __aenter__(self) -> M:
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


def attach(base_url: str, api_key: str | None, cls: type[M]) -> ModelContext[M]:
    """``connect()`` for any model class: check /health, read /props, make ``cls``.

    Raises ``APIError`` (503: still loading) or ``APIConnectionError`` if the
    server is not usable. The model's ``close()`` closes the HTTP client and
    leaves the server running.
    """
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")

    async def connect() -> M:
        client = LlamaServerClient(base_url, api_key=api_key)
        try:
            await client.health()
            props = await client.props()
            file_info = await anyio.to_thread.run_sync(_local_info, props.get("model_path"))
        except BaseException:
            await client.aclose()
            raise
        info = model_info(props, file_info)
        supervisor = Supervisor(client)
        try:
            return await cls.create(supervisor, info, model_type=info.architecture or "unknown")
        except BaseException:
            await client.aclose()
            raise

    return ModelContext(connect())


def _local_info(path: object) -> ModelInfo | None:
    """What the server's model file says, if that file is readable from here."""
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        return read_gguf_info(path)
    except (RocmInferError, OSError):
        return None
