"""ModelPool: many models on one machine, loaded on demand and unloaded by measured memory.

Ask for a model by name and it is loaded if it is not (once, however many
tasks ask at the same time); a lease keeps it loaded while it is used; an
idle model is unloaded after its ``keep_alive``. When a load would exceed
``max_loaded`` models or the memory budget, idle unpinned models are unloaded
first, least recently used first (:func:`~rocm_infer.serving.eviction.plan_load`,
a pure function); if nothing can be unloaded the request waits, up to
``wait_timeout``, then raises :class:`PoolBusyError` saying who holds what.

Memory: before a model's first load, its need is estimated from its GGUF
header (:mod:`~rocm_infer.serving.memory`: weights + KV cache for its context
+ a compute buffer); after each load, what it really took (the VRAM it added
on an AMD GPU, its server's resident memory on the CPU) is recorded and used
from then on. The budget is ``memory_budget`` bytes for the pool's models
together, and always the machine's free memory.

A model whose server died is loaded again on its next lease. ``close()``
stops every server the pool started.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.to_thread

from ..backend import Backend, get_backend, load_embedding_model, load_model, load_reranker
from ..config import GenerateConfig, LoadConfig
from ..discovery import discover_models
from ..embedding import EmbeddingModel, Reranker
from ..errors import ModelClosedError, ModelNotFoundError, RocmInferError
from ..gguf import check_gguf_file, read_gguf_info
from ..gpu import VramMonitor, choose_device, gpus
from ..lifecycle import ServerModel
from ..model import TextModel
from ..stream import TokenStream
from ..supervisor import ModelState
from ..types import Completion, FinishReason, GenerateMetrics, Message, ModelInfo, RerankResult, Token, ToolCall
from .eviction import Resident, plan_load
from .memory import estimate, free_memory, measured_memory

__all__ = ["LeasedStream", "LoadedModel", "ModelKind", "ModelPool", "ModelSpec", "PoolBusyError"]

logger = logging.getLogger(__name__)

ModelKind = Literal["text", "embedding", "reranker"]
# Encoder architectures llama.cpp serves as embedding models.
_ENCODERS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert"}
)
# Kept free of the machine's memory beside what the models take.
_FREE_MARGIN = 0.05


class PoolBusyError(RocmInferError):
    """A model could not be loaded in time: loading it would exceed the pool's limits and every
    model that could make room is in use (or pinned). ``name`` is the model asked for, ``need``
    its memory in bytes, ``holders`` what the pool holds (:class:`LoadedModel` values)."""

    def __init__(self, message: str, *, name: str, need: int, holders: tuple[LoadedModel, ...]) -> None:
        super().__init__(message)
        self.name = name
        self.need = need
        self.holders = holders


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How the pool loads one model.

    ``path``: the GGUF file (None: ``<name>.gguf`` in the pool's
    ``models_dir``); ``config``: its :class:`~rocm_infer.config.LoadConfig`;
    ``kind``: ``"text"``, ``"embedding"`` or ``"reranker"`` (None: from the
    file: rank pooling is a reranker, an encoder or a declared pooling an
    embedding model, anything else text); ``keep_alive``: seconds it stays
    loaded idle (0: unloaded as soon as its last lease ends; None: forever;
    unset: the pool's); ``pin``: never unloaded to make room.
    """

    path: str | None = None
    config: LoadConfig = field(default_factory=LoadConfig)
    kind: ModelKind | None = None
    keep_alive: float | None = _UNSET
    pin: bool = False

    def __post_init__(self) -> None:
        if self.path is not None:
            if not isinstance(self.path, str | os.PathLike):
                raise TypeError(f"a model's path must be a path, not {type(self.path).__name__}")
            object.__setattr__(self, "path", os.path.expanduser(os.fspath(self.path)))
        if not isinstance(self.config, LoadConfig):
            raise TypeError(f"config must be a LoadConfig, not {type(self.config).__name__}")
        if self.kind not in (None, "text", "embedding", "reranker"):
            raise ValueError(f"kind must be 'text', 'embedding', 'reranker' or None, not {self.kind!r}")
        if self.keep_alive is not _UNSET:
            _check_keep_alive(self.keep_alive)

    @classmethod
    def coerce(cls, value: object) -> ModelSpec:
        """A ModelSpec from a path, a ``(path, LoadConfig)`` pair, a LoadConfig (the file from
        ``models_dir``) or a ModelSpec."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str | os.PathLike):
            return cls(os.fspath(value))
        if isinstance(value, LoadConfig):
            return cls(None, value)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], LoadConfig):
            return cls(os.fspath(value[0]), value[1])
        raise TypeError(f"a pool model is a path, (path, LoadConfig), a LoadConfig or a ModelSpec, not {value!r}")


def _check_keep_alive(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"keep_alive must be seconds >= 0 or None (forever), not {value!r}")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model the pool holds: its ``name``, ``info``, the ``leases`` held on it now, how long it
    has been idle (``idle_for``, seconds; None while leased), the ``memory`` it takes (measured,
    else estimated, bytes), whether it is ``pinned``, its ``kind`` and whether it is ``loading``."""

    name: str
    info: ModelInfo | None
    leases: int
    idle_for: float | None
    memory: int
    pinned: bool = False
    kind: ModelKind = "text"
    loading: bool = False


class _State(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


class _Entry:
    __slots__ = (
        "name",
        "spec",
        "state",
        "model",
        "leases",
        "last_used",
        "pinned",
        "memory",
        "busy",
        "expiry",
        "admitted",
    )

    def __init__(self, name: str, spec: ModelSpec) -> None:
        self.name = name
        self.spec = spec
        self.state = _State.UNLOADED
        self.model: ServerModel | None = None
        self.leases = 0
        self.last_used = 0.0
        self.pinned = spec.pin
        self.memory = 0  # measured after a load, else estimated before one
        self.busy: asyncio.Future[None] | None = None  # the load or unload in progress
        self.expiry: asyncio.TimerHandle | None = None
        self.admitted = False  # a load in progress that has its room


class ModelPool:
    """Models by name, loaded on demand, unloaded when idle or to make room (see the module docs).

    ``models`` maps names to a path, a ``(path, LoadConfig)`` pair, a
    LoadConfig (the file ``<name>.gguf`` in ``models_dir``) or a
    :class:`ModelSpec`; ``models_dir`` adds every GGUF model in that folder
    under its file name without ``.gguf``. ``max_loaded`` (models at once),
    ``memory_budget`` (bytes for all together), ``keep_alive`` (seconds an idle
    model stays; 0: none; None: forever), ``wait_timeout`` (seconds a request
    waits for room before :class:`PoolBusyError`), ``backend`` (as for
    ``load_model``). Use it as ``async with ModelPool(...) as pool:``.

    (One class of some length on purpose: leases, loads, unloads and expiry
    change one shared state under one condition; the decisions are the pure
    functions of :mod:`~rocm_infer.serving.eviction` and
    :mod:`~rocm_infer.serving.memory`.)
    """

    def __init__(
        self,
        models: Mapping[str, object] | None = None,
        *,
        models_dir: str | os.PathLike[str] | None = None,
        max_loaded: int | None = None,
        memory_budget: int | None = None,
        keep_alive: float | None = 300.0,
        wait_timeout: float = 60.0,
        backend: str | Backend | None = None,
    ) -> None:
        if max_loaded is not None and (
            not isinstance(max_loaded, int) or isinstance(max_loaded, bool) or max_loaded < 1
        ):
            raise ValueError(f"max_loaded must be an int >= 1 or None, not {max_loaded!r}")
        if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget < 1):
            raise ValueError(f"memory_budget must be bytes (an int >= 1) or None, not {memory_budget!r}")
        _check_keep_alive(keep_alive)
        if not isinstance(wait_timeout, int | float) or wait_timeout <= 0:
            raise ValueError(f"wait_timeout must be seconds > 0, not {wait_timeout!r}")
        if isinstance(backend, str):
            try:
                get_backend(backend)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
        self.max_loaded = max_loaded
        self.memory_budget = memory_budget
        self.keep_alive = keep_alive
        self.wait_timeout = float(wait_timeout)
        self._backend = backend
        self._models_dir = os.path.expanduser(os.fspath(models_dir)) if models_dir is not None else None
        if self._models_dir is not None and not os.path.isdir(self._models_dir):
            raise ModelNotFoundError(self._models_dir, message=f"models_dir {self._models_dir!r} is not a folder")
        self._entries: dict[str, _Entry] = {}
        for name, value in (models or {}).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"model names must be non-empty strings, not {name!r}")
            spec = ModelSpec.coerce(value)
            if spec.path is None and self._models_dir is None:
                raise ValueError(f"model {name!r} gives no path and the pool has no models_dir to find it in")
            self._entries[name] = _Entry(name, spec)
        self._discovered = False
        self._changed: asyncio.Condition | None = None
        self._planning = asyncio.Lock()  # one load plans (and makes room) at a time
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.loads = 0  # how many times a model was loaded (restarts and reloads included)
        self._vram: VramMonitor | None = None

    def __repr__(self) -> str:
        held = [e.name for e in self._entries.values() if e.state is not _State.UNLOADED]
        return f"<ModelPool {len(self._entries)} models, holding {held}{', closed' if self._closed else ''}>"

    # -- lifetime --------------------------------------------------------------------------------

    async def start(self) -> ModelPool:
        """Check the model files named outright (ModelNotFoundError, InvalidModelError) and find the
        models of ``models_dir``, in a worker thread. ``async with`` calls it."""
        if self._closed:
            raise ModelClosedError("the pool is closed")
        if self._changed is None:
            self._changed = asyncio.Condition()
        # A file named outright must be there: say so now, not at the first request for it.
        for entry in self._entries.values():
            if entry.spec.path is not None:
                await anyio.to_thread.run_sync(check_gguf_file, entry.spec.path)
        if self._models_dir is not None and not self._discovered:
            found = await anyio.to_thread.run_sync(discover_models, self._models_dir)
            for info in found:
                if info.path is None:
                    continue
                name = _name_of(info.path)
                if name not in self._entries:
                    self._entries[name] = _Entry(name, ModelSpec(info.path))
            self._discovered = True
        device = await anyio.to_thread.run_sync(lambda: choose_device((), gpus()))
        self._vram = VramMonitor(device) if device is not None else None
        return self

    async def close(self) -> None:
        """Stop every server the pool started (loads in progress included). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with anyio.CancelScope(shield=True):
            if self._tasks:
                await asyncio.wait(self._tasks)
            for entry in self._entries.values():
                if entry.expiry is not None:
                    entry.expiry.cancel()
                if entry.model is not None:
                    model, entry.model = entry.model, None
                    await model.close()
                entry.state = _State.UNLOADED
        await self._notify()

    async def __aenter__(self) -> ModelPool:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- what it holds ---------------------------------------------------------------------------

    def available(self) -> list[str]:
        """Every name the pool can load: its models and those found in ``models_dir``."""
        return sorted(self._entries)

    def loaded(self) -> list[LoadedModel]:
        """The models the pool holds now (loaded, or being loaded)."""
        now = time.monotonic()
        return [
            LoadedModel(
                name=e.name,
                info=e.model.info if e.model is not None else None,
                leases=e.leases,
                idle_for=None if e.leases else now - e.last_used,
                memory=e.memory,
                pinned=e.pinned,
                kind=_kind_of(e.model) if e.model is not None else (e.spec.kind or "text"),
                loading=e.state is _State.LOADING,
            )
            for e in self._entries.values()
            if e.state is _State.LOADED or (e.state is _State.LOADING and e.admitted)
        ]

    def memory_in_use(self) -> int:
        """Bytes the held models take together (measured, else estimated), loads in progress included."""
        return sum(e.memory for e in self._entries.values() if self._holds(e))

    def _entry(self, name: str) -> _Entry:
        self._check_open()
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(
                name, message=f"the pool has no model named {name!r}; the models are {self.available()}"
            )
        return entry

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the pool is closed")
        if self._changed is None:
            raise RuntimeError("the pool is not started: use `async with pool:` or `await pool.start()`")

    # -- leases ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def model(self, name: str) -> AsyncIterator[Any]:
        """``async with pool.model(name) as model:`` — the model, loaded if it was not, and never
        unloaded while the lease is held. Raises ModelNotFoundError for a name the pool does not
        know, PoolBusyError when there is no room in time, and what loading raises."""
        entry = self._entry(name)
        model = await self._acquire(entry)
        try:
            yield model
        finally:
            await self._release(entry)

    async def load(self, name: str, *, pin: bool = False) -> None:
        """Load ``name`` now (if it is not), and with ``pin`` keep it loaded until unpinned by
        :meth:`unload` (a pinned model is never unloaded to make room, nor for being idle)."""
        entry = self._entry(name)
        if pin:
            entry.pinned = True
        await self._acquire(entry)
        await self._release(entry)

    async def unload(self, name: str) -> None:
        """Unload ``name`` (and unpin it) once its leases end; nothing if it is not loaded."""
        entry = self._entry(name)
        entry.pinned = False
        while True:
            if entry.state is _State.UNLOADED:
                return
            if entry.state is _State.LOADED and entry.leases == 0:
                await self._unload(entry)
                return
            await self._wait_for_change(None)

    async def _acquire(self, entry: _Entry) -> ServerModel:
        while True:
            self._check_open()
            if entry.state is _State.LOADED:
                assert entry.model is not None
                if entry.model._supervisor.state is ModelState.DEAD and entry.leases == 0:
                    logger.warning("model %r: its llama-server died; loading it again", entry.name)
                    await self._unload(entry)
                    continue
                entry.leases += 1
                if entry.expiry is not None:
                    entry.expiry.cancel()
                    entry.expiry = None
                return entry.model
            if entry.busy is None:
                # Marked at once, before any await: every other task asking now waits for this load.
                self._start_load(entry)
            assert entry.busy is not None
            await asyncio.shield(entry.busy)  # a load's failure reaches every waiter

    async def _admit(self, entry: _Entry, info: ModelInfo) -> None:
        """Make room for ``entry`` (unloading idle models), or wait for room up to ``wait_timeout``."""
        need = entry.memory or await self._estimate(entry, info)
        deadline = time.monotonic() + self.wait_timeout
        while True:
            async with self._planning:
                others = [e for e in self._entries.values() if e is not entry and self._holds(e)]
                plan = plan_load(
                    [self._resident(e) for e in others],
                    need,
                    max_loaded=self.max_loaded,
                    budget=self.memory_budget,
                    free=self._free_memory(),
                )
                if plan.fits:
                    for name in plan.evict:
                        await self._unload(self._entries[name])
                    entry.memory = need  # what the others see it take while it loads
                    entry.admitted = True
                    return
            if self.memory_budget is not None and need > self.memory_budget:
                raise self._busy(entry, need, f"it needs more than the pool's memory_budget of {self.memory_budget}")
            if not await self._wait_for_change(deadline):
                raise self._busy(entry, need, f"no room within wait_timeout={self.wait_timeout:g}s")

    @staticmethod
    def _holds(entry: _Entry) -> bool:
        """Whether ``entry`` takes room: loaded, unloading, or loading once admitted."""
        if entry.state is _State.LOADING:
            return entry.admitted
        return entry.state is not _State.UNLOADED

    async def _release(self, entry: _Entry) -> None:
        entry.leases -= 1
        entry.last_used = time.monotonic()
        if entry.leases == 0 and not self._closed:
            self._schedule_expiry(entry)
        await self._notify()

    def _schedule_expiry(self, entry: _Entry) -> None:
        keep_alive = self.keep_alive if entry.spec.keep_alive is _UNSET else entry.spec.keep_alive
        if keep_alive is None or entry.pinned or entry.state is not _State.LOADED:
            return
        loop = asyncio.get_running_loop()
        if entry.expiry is not None:
            entry.expiry.cancel()
        entry.expiry = loop.call_later(keep_alive, self._expire, entry)

    def _expire(self, entry: _Entry) -> None:
        entry.expiry = None
        if entry.leases == 0 and not entry.pinned and entry.state is _State.LOADED and not self._closed:
            self._spawn(self._unload(entry))

    # -- loading and unloading -------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_load(self, entry: _Entry) -> None:
        entry.state = _State.LOADING
        entry.busy = asyncio.get_running_loop().create_future()
        self._spawn(self._load(entry, entry.busy))

    async def _load(self, entry: _Entry, done: asyncio.Future[None]) -> None:
        try:
            path = entry.spec.path or os.path.join(self._models_dir or "", f"{entry.name}.gguf")
            info = await anyio.to_thread.run_sync(read_gguf_info, path)
            kind = entry.spec.kind or _kind_from(info)
            await self._admit(entry, info)
            before = self._vram.sample()[0] if self._vram is not None else None
            config = entry.spec.config
            model: ServerModel
            if kind == "embedding":
                model = await load_embedding_model(path, backend=self._backend, config=config)
            elif kind == "reranker":
                model = await load_reranker(path, backend=self._backend, config=config)
            else:
                model = await load_model(path, backend=self._backend, config=config)
            after = self._vram.sample()[0] if self._vram is not None else None
            server = model.server
            measured = measured_memory(server.pid if server is not None else None, before, after)
            if measured:
                logger.info("model %r: estimated %d bytes, took %d", entry.name, entry.memory, measured)
                entry.memory = measured
            entry.model = model
            entry.state = _State.LOADED
            entry.admitted = False
            entry.last_used = time.monotonic()
            self.loads += 1
            logger.info("pool loaded %r (%s, %d bytes)", entry.name, kind, entry.memory)
            done.set_result(None)
        except BaseException as exc:
            entry.state = _State.UNLOADED
            entry.admitted = False
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else ModelClosedError("the pool was closed"))
                done.exception()  # retrieved here: the waiters see it through their own awaits
            if not isinstance(exc, Exception):
                raise
        finally:
            entry.busy = None
            await self._notify()
        if self._closed and entry.model is not None:  # closed while it loaded
            await self._unload(entry)

    async def _unload(self, entry: _Entry) -> None:
        if entry.state is not _State.LOADED or entry.leases:
            return
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        entry.state = _State.UNLOADING
        entry.busy = asyncio.get_running_loop().create_future()
        model, entry.model = entry.model, None
        try:
            with anyio.CancelScope(shield=True):
                if model is not None:
                    await model.close()
        finally:
            entry.state = _State.UNLOADED
            entry.busy.set_result(None)
            entry.busy = None
            logger.info("pool unloaded %r", entry.name)
            await self._notify()

    async def _estimate(self, entry: _Entry, info: ModelInfo | None = None) -> int:
        path = entry.spec.path or os.path.join(self._models_dir or "", f"{entry.name}.gguf")
        context = entry.spec.config.context_len or min((info.train_context_len if info else None) or 4096, 4096)
        try:
            return (await anyio.to_thread.run_sync(lambda: estimate(path, context))).total
        except (RocmInferError, OSError):
            return 0  # the load itself will say what is wrong with the file

    def _free_memory(self) -> int | None:
        free = free_memory()
        return int(free * (1 - _FREE_MARGIN)) if free is not None else None

    def _resident(self, entry: _Entry) -> Resident:
        return Resident(
            entry.name, entry.memory, entry.leases, entry.pinned, entry.last_used, entry.state is not _State.LOADED
        )

    def _busy(self, entry: _Entry, need: int, why: str) -> PoolBusyError:
        holders = tuple(self.loaded())
        held = ", ".join(
            f"{h.name} ({h.leases} lease{'s' * (h.leases != 1)}{', pinned' if h.pinned else ''}, {h.memory} bytes)"
            for h in holders
        )
        return PoolBusyError(
            f"cannot load {entry.name!r} ({need} bytes): {why}; the pool holds: {held or 'nothing'}",
            name=entry.name,
            need=need,
            holders=holders,
        )

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _wait_for_change(self, deadline: float | None) -> bool:
        """Wait until the pool changes (a lease ends, a model loads or unloads); False past ``deadline``."""
        assert self._changed is not None
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            return False
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                return False
        return True

    # -- requests for the caller -----------------------------------------------------------------

    def generate(self, name: str, prompt: str, config: GenerateConfig | None = None, **options: Any) -> LeasedStream:
        """``model.generate(...)`` on ``name``, with a lease held while the stream lasts."""
        GenerateConfig.build(config, **{k: v for k, v in options.items() if k not in ("json_schema", "grammar")})
        self._entry(name)
        return LeasedStream(self, name, lambda model: model.generate(prompt, config, **options))

    def chat(
        self, name: str, messages: Iterable[Message | Mapping[str, Any]], *args: Any, **options: Any
    ) -> LeasedStream:
        """``model.chat(...)`` on ``name`` (tools, reasoning ...), with a lease held while the stream lasts."""
        self._entry(name)
        listed = list(messages)
        return LeasedStream(self, name, lambda model: model.chat(listed, *args, **options))

    async def embed(self, name: str, texts: str | Sequence[str], **options: Any) -> Any:
        """``model.embed(...)`` on the embedding model ``name``."""
        async with self.model(name) as model:
            if not isinstance(model, EmbeddingModel):
                raise TypeError(f"pool model {name!r} is not an embedding model")
            return await model.embed(texts, **options)

    async def rerank(self, name: str, query: str, documents: Sequence[str], **options: Any) -> list[RerankResult]:
        """``model.rerank(...)`` on the reranker ``name``."""
        async with self.model(name) as model:
            if not isinstance(model, Reranker):
                raise TypeError(f"pool model {name!r} is not a reranker")
            return await model.rerank(query, documents, **options)


def _name_of(path: str) -> str:
    name = Path(path).name
    name = name[: -len(".gguf")] if name.endswith(".gguf") else name
    # A split model's first shard names the model: "big-00001-of-00003" -> "big".
    parts = name.rsplit("-", 3)
    if len(parts) == 4 and parts[2] == "of" and parts[1].isdigit() and parts[3].isdigit():
        return parts[0]
    return name


def _kind_from(info: ModelInfo) -> ModelKind:
    if info.pooling == "rank":
        return "reranker"
    if info.pooling in ("mean", "cls", "last") or info.architecture in _ENCODERS:
        return "embedding"
    return "text"


def _kind_of(model: ServerModel) -> ModelKind:
    if isinstance(model, Reranker):
        return "reranker"
    return "embedding" if isinstance(model, EmbeddingModel) else "text"


class LeasedStream:
    """A model's TokenStream on a pool: the lease (and the load, if needed) happens when iteration
    starts, and is released when the stream ends or is closed. Otherwise a TokenStream: iterate
    it, ``await`` it for a Completion, ``aclose()`` it."""

    def __init__(self, pool: ModelPool, name: str, make: Callable[[TextModel], TokenStream]) -> None:
        self._pool = pool
        self._name = name
        self._make = make
        self._stream: TokenStream | None = None
        self._lease: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<LeasedStream {self._name!r} {self._stream!r}>"

    async def _open(self) -> TokenStream:
        if self._stream is not None:
            return self._stream
        if self._closed:
            raise ModelClosedError("the stream is closed")
        lease = self._pool.model(self._name)
        model = await lease.__aenter__()
        try:
            if not isinstance(model, TextModel):
                raise TypeError(f"pool model {self._name!r} is not a text model")
            self._stream = self._make(model)
        except BaseException:
            await lease.__aexit__(None, None, None)
            raise
        self._lease = lease
        return self._stream

    async def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            with anyio.CancelScope(shield=True):
                await lease.__aexit__(None, None, None)

    def __aiter__(self) -> LeasedStream:
        return self

    async def __anext__(self) -> Token:
        stream = self._stream if self._stream is not None else await self._open()
        try:
            return await stream.__anext__()
        except BaseException:
            await self._release()
            raise

    async def aclose(self) -> None:
        """Close the stream and release the model. Idempotent."""
        self._closed = True
        if self._stream is not None:
            await self._stream.aclose()
        await self._release()

    async def __aenter__(self) -> LeasedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def result(self) -> Completion:
        """Read it to the end: the Completion (the lease is released after)."""
        stream = await self._open()
        try:
            return await stream.result()
        finally:
            await self._release()

    def __await__(self) -> Generator[Any, None, Completion]:
        return self.result().__await__()

    async def collect(self) -> str:
        return (await self.result()).text

    # What the stream tells once it is open (before that: nothing yet).
    @property
    def text(self) -> str:
        return self._stream.text if self._stream is not None else ""

    @property
    def reasoning(self) -> str:
        return self._stream.reasoning if self._stream is not None else ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self._stream.tool_calls if self._stream is not None else ()

    @property
    def finish_reason(self) -> FinishReason | None:
        if self._stream is None:
            return "cancelled" if self._closed else None
        return self._stream.finish_reason

    @property
    def metrics(self) -> GenerateMetrics | None:
        return self._stream.metrics if self._stream is not None else None

    @property
    def error(self) -> BaseException | None:
        return self._stream.error if self._stream is not None else None

    @property
    def message(self) -> Message:
        return self._stream.message if self._stream is not None else Message("assistant", "")

    @property
    def parsed(self) -> Any:
        return self._stream.parsed if self._stream is not None else None
