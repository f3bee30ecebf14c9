"""Ray Serve: replicas that each supervise one llama-server, streamed through a handle or over HTTP.

::

    from ray import serve
    from rocm_infer.integrations.ray import LlamaClient, build_app

    app = build_app("model.gguf", name="tiny", num_replicas=2, num_gpus=1, parallel_slots=4)
    handle = serve.run(app, name="llm", route_prefix="/llm")
    client = LlamaClient(handle)
    async for batch in client.generate("Once upon a time", max_tokens=64):
        print(batch.text, end="", flush=True)

* :data:`LlamaDeployment` is the Serve deployment: each replica loads the
  model with :func:`rocm_infer.load_model` when it starts (in the Ray worker
  process, on the GPUs Ray gave it) and stops its llama-server when it
  stops. :func:`build_app` sets its replicas, GPUs and autoscaling.
* Through a ``DeploymentHandle``: ``generate`` and ``chat`` are streaming
  methods (``handle.options(stream=True)``) whose items are
  :class:`TokenBatch` values: every token that arrived since the item
  before (at most one item per :data:`BATCH_INTERVAL`), so a stream carries
  the server's throughput even though each item costs the replica and the
  caller milliseconds of CPU. :class:`LlamaClient` calls them
  and retries a request that fails before its first token: it lands on
  another replica once Serve has taken a broken one out.
* Over HTTP: every replica is also an OpenAI-compatible ingress (the routes
  of :func:`rocm_infer.integrations.openai_api.openai_router` over its own
  model), so ``POST {route_prefix}/v1/chat/completions`` works with the
  official ``openai`` client through Serve's proxy.
* Cancelling a handle stream (``aclose()`` on LlamaClient's stream, the
  caller's task cancelled, or ``response.cancel()`` on a raw handle's) or a
  client closing its HTTP connection closes the replica's stream:
  llama-server stops generating and frees the slot.
* Priority: Ray runs its workers at niceness 15, and a llama-server started
  by one inherits it, so any busy process on the node would take its CPU
  first (measured here, the machine busy: 0.83 of direct ``generate``'s
  tokens/s through the handle at niceness 15, 1.0 at 0).
  :func:`build_app` deploys the replicas at niceness 0 (:data:`NICENESS`).
* Health: a replica whose llama-server died fails Serve's health check
  (``check_health``), so Serve stops it and starts a new one. The
  deployment checks every :data:`HEALTH_CHECK_PERIOD` seconds, not Serve's
  10: the check only looks at the process and asks ``/health``.

Needs the ``ray`` extra (``ray[serve]``). The replicas import rocm_infer, so
it must be installed on every node (or shipped in a ``runtime_env``).
"""

from __future__ import annotations

try:
    import ray
    import ray.exceptions
    from ray import serve
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "rocm_infer.integrations.ray needs Ray Serve, which is not installed: install it "
        "(rocm_infer's ray extra) with `pip install 'ray[serve]==2.60.0'`"
    ) from exc

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..backend import load_model
from ..config import GenerateConfig, LoadConfig
from ..endpoints.chat import Reasoning
from ..errors import ModelClosedError, RocmInferError, ServerError
from ..model import TextModel
from ..stream import TokenStream
from ..tools import Tool
from ..types import FinishReason, GenerateMetrics, Message, Token, TokenKind, TokenLogprob, ToolCall
from .openai_api import openai_router

__all__ = [
    "BATCH_INTERVAL",
    "HEALTH_CHECK_PERIOD",
    "NICENESS",
    "LlamaClient",
    "LlamaDeployment",
    "LlamaReplica",
    "ReplicaStatus",
    "TokenBatch",
    "build_app",
]

logger = logging.getLogger(__name__)

# Seconds between Serve's health checks of a replica (Serve's own default is 10): a dead
# llama-server is noticed, and its replica replaced, this soon.
HEALTH_CHECK_PERIOD = 2.0
# Seconds between two items of a handle stream, at least (but the first and the last): tokens
# that arrive meanwhile travel together. Each item costs the replica and the caller together
# 2-5 ms of CPU here, whatever it holds: a 512-token stream of the tiny model took 182 ms of CPU at
# 20 ms, 139 ms at 50 ms, against 71 ms for direct generate (benchmarks/ray_handle.py), and on a
# node whose cores llama-server needs, that CPU is taken from generation. Ray Serve's own LLM
# deployments batch their streams every 50 ms too. A stream slower than 20 tokens/s is not delayed.
BATCH_INTERVAL = 0.05
# The niceness build_app gives replicas, and so their llama-servers: Ray runs its workers at 15,
# where any other busy process on the node takes the CPU llama-server generates on.
NICENESS = 0
# How long LlamaClient goes on retrying a request that failed before its first token.
RETRY_FOR = 30.0
_FIRST_RETRY_DELAY = 0.05
_MAX_RETRY_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """The tokens of one stream that reached the replica since the batch before.

    ``tokens`` are :class:`~rocm_infer.types.Token` values (ids, text, kind,
    logprobs); ``arrived`` holds, for each, the seconds from the replica
    sending the request to the token reaching it, so inter-token timings
    survive the batching. The last batch of a stream has ``finish_reason``,
    llama-server's ``metrics`` and, for a chat, the complete ``tool_calls``
    (it may hold no token). ``replica`` is the Serve replica that served it.
    """

    tokens: tuple[Token, ...]
    arrived: tuple[float, ...] = ()
    finish_reason: FinishReason | None = None
    metrics: GenerateMetrics | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    replica: str = ""

    @property
    def ids(self) -> tuple[int, ...]:
        """The token ids, in order."""
        return tuple(token.id for token in self.tokens)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles every item of a handle stream (in the replica) and unpickles it (in the caller),
        # with cloudpickle, whose pickler visits each Token and has the dataclass's __getstate__ list
        # its fields: 126 us to pickle and 76 us to unpickle a batch of 27 tokens. As columns of
        # plain values, with kinds and logprobs only when some token has them: 27 us and 34 us.
        tokens = self.tokens
        extras = None
        for token in tokens:
            if token.kind != "content" or token.logprob is not None or token.top_logprobs:
                extras = tuple((t.kind, t.logprob, t.top_logprobs) for t in tokens)
                break
        return (
            _token_batch,
            (
                self.ids,
                tuple(token.text for token in tokens),
                extras,
                self.arrived,
                self.finish_reason,
                self.metrics,
                self.tool_calls,
                self.replica,
            ),
        )

    @property
    def text(self) -> str:
        """The content text of these tokens (reasoning and tool-call tokens left out, as ``TokenStream.text``)."""
        return "".join(token.text for token in self.tokens if token.kind == "content")

    @property
    def done(self) -> bool:
        """Whether this is the stream's last batch."""
        return self.finish_reason is not None


def _token_batch(
    ids: tuple[int, ...],
    texts: tuple[str, ...],
    extras: tuple[tuple[TokenKind, float | None, tuple[TokenLogprob, ...]], ...] | None,
    arrived: tuple[float, ...],
    finish_reason: FinishReason | None,
    metrics: GenerateMetrics | None,
    tool_calls: tuple[ToolCall, ...],
    replica: str,
) -> TokenBatch:
    """The TokenBatch that ``TokenBatch.__reduce__`` took apart."""
    if extras is None:
        tokens = tuple(map(Token, ids, texts))
    else:
        tokens = tuple(Token(i, text, *extra) for i, text, extra in zip(ids, texts, extras, strict=True))
    return TokenBatch(tokens, arrived, finish_reason, metrics, tool_calls, replica)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What one replica reports of itself (``LlamaClient.status()``, or the handle's ``status``).

    ``pid`` is its llama-server's, ``slots`` and ``busy_slots`` llama-server's
    slots and those generating now; ``error`` is why the model cannot be used
    (its server died), None while it can; ``restarts`` counts the restarts a
    :class:`~rocm_infer.config.RestartPolicy` made.
    """

    replica: str
    model: str
    pid: int | None
    slots: int
    busy_slots: int
    restarts: int
    error: str | None


class _OwnModel:
    """The OpenAI routes' provider on a replica: its one model, under its name."""

    def __init__(self, name: str, model: TextModel) -> None:
        self._name = name
        self._model = model

    def names(self) -> Sequence[str]:
        return [self._name]

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[TextModel]:
        yield self._model

    def lease(self, name: str) -> AbstractAsyncContextManager[TextModel]:
        if name != self._name:
            raise KeyError(name)
        return self._held()


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (a test calling the class directly)
        return f"pid-{os.getpid()}"


def _assigned_gpus() -> tuple[int, ...]:
    """The GPU ids Ray gave this replica (``num_gpus``), as LoadConfig.devices takes them."""
    try:
        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    except Exception:  # not in a Ray worker
        return ()
    return tuple(int(i) for i in ids if str(i).isdigit())


async def _batches(stream: TokenStream, replica: str, interval: float) -> AsyncIterator[TokenBatch]:
    """``stream`` as TokenBatch items, at most one per ``interval`` seconds but the first and the last.

    A reader task drains the stream as fast as llama-server sends, and each
    item carries every token that gathered since the one before. Serve
    queues what a replica yields without waiting for the caller, so the
    pacing has to be here: each item costs the caller and the replica
    2-5 ms of CPU together whatever it holds, and one per token would
    cap a stream at Serve's item rate and take the cores llama-server needs.
    The first token goes at once (time to first token is unchanged), and
    the end of the stream is sent as soon as it arrives. Closing the
    generator (the caller cancelled, or went away) closes the stream, so
    llama-server stops generating.
    """
    tokens: list[Token] = []
    arrived: list[float] = []
    failure: list[BaseException] = []
    wake = asyncio.Event()
    ended = asyncio.Event()
    started = time.perf_counter()

    async def read() -> None:
        try:
            async for token in stream:
                tokens.append(token)
                arrived.append(time.perf_counter() - started)
                wake.set()
        except Exception as exc:  # raised to the caller after the tokens before it
            failure.append(exc)
        finally:
            ended.set()
            wake.set()

    reader = asyncio.create_task(read())
    sent_at = float("-inf")
    try:
        while True:
            await wake.wait()
            pause = sent_at + interval - time.perf_counter()
            if pause > 0 and not ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), pause)
            wake.clear()
            last = ended.is_set()
            batch, times = tuple(tokens), tuple(arrived)
            tokens.clear()
            arrived.clear()
            if not last:
                if batch:
                    sent_at = time.perf_counter()
                    yield TokenBatch(batch, times, replica=replica)
                continue
            if failure:
                if batch:
                    yield TokenBatch(batch, times, replica=replica)
                raise failure[0]
            yield TokenBatch(
                batch,
                times,
                finish_reason=stream.finish_reason,
                metrics=stream.metrics,
                tool_calls=stream.tool_calls,
                replica=replica,
            )
            return
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await stream.aclose()


class LlamaReplica:
    """One Serve replica: a llama-server for ``model_path``, its streams, its health, its HTTP routes.

    ``config`` and ``load_options`` are :func:`rocm_infer.load_model`'s
    (``load_options`` override ``config``), ``backend`` a backend name.
    When Ray gave the replica GPUs (``num_gpus``) and the configuration
    names no ``devices``, those GPUs are the devices. ``name`` is the model
    name the OpenAI routes take (default: the file name without ``.gguf``).
    ``batch_interval`` is the least time, in seconds, between two items of a
    handle stream (but its first and last): see :data:`BATCH_INTERVAL`.

    Use it through :data:`LlamaDeployment` (or :func:`build_app`); the class
    itself is what Serve instantiates in each replica.
    """

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        model_path: str,
        *,
        name: str | None = None,
        config: LoadConfig | None = None,
        backend: str | None = None,
        batch_interval: float = BATCH_INTERVAL,
        **load_options: Any,
    ) -> None:
        cfg = LoadConfig.build(config, **load_options)
        self.batch_interval = batch_interval
        gpus = _assigned_gpus()
        if gpus and not cfg.devices:
            cfg = dataclasses.replace(cfg, devices=gpus)
        self.name = name or Path(model_path).name.removesuffix(".gguf")
        self.replica = _replica_id()
        if (niceness := os.nice(0)) > 0:
            logger.warning(
                "replica %s runs at niceness %d (Ray's default for its workers), and so will its llama-server: "
                "any busy process on this node gets the CPU first. build_app() deploys at niceness 0; "
                "or start Ray with RAY_worker_niceness=0",
                self.replica,
                niceness,
            )
        self.model: TextModel = await load_model(model_path, backend=backend, config=cfg)
        logger.info("replica %s serves %s (llama-server pid %s)", self.replica, model_path, self._pid())

    def _pid(self) -> int | None:
        server = self.model.server
        return server.pid if server is not None else None

    # -- the handle's methods ----------------------------------------------------------------------

    async def generate(
        self, prompt: str, config: GenerateConfig | None = None, **options: Any
    ) -> AsyncIterator[TokenBatch]:
        """Stream the continuation of ``prompt`` as :class:`TokenBatch` items (call with ``stream=True``).

        Arguments as :meth:`rocm_infer.TextModel.generate`; raises what it
        raises (``ServerExitedError`` when this replica's llama-server is dead).
        """
        stream = self.model.generate(prompt, config, **options)
        async for batch in _batches(stream, self.replica, self.batch_interval):
            yield batch

    async def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        tools: Iterable[Tool | Mapping[str, Any]] | None = None,
        tool_choice: str | None = None,
        reasoning: Reasoning = None,
        config: GenerateConfig | None = None,
        **options: Any,
    ) -> AsyncIterator[TokenBatch]:
        """Stream the assistant's reply to ``messages`` as :class:`TokenBatch` items (``stream=True``).

        Arguments as :meth:`rocm_infer.TextModel.chat` (tools as OpenAI-shaped
        dicts or :class:`~rocm_infer.tools.Tool` values: a Python function
        would not run here); the last batch carries the tool calls.
        """
        stream = self.model.chat(list(messages), tools, tool_choice, reasoning, config, **options)
        async for batch in _batches(stream, self.replica, self.batch_interval):
            yield batch

    async def status(self) -> ReplicaStatus:
        """This replica's :class:`ReplicaStatus` (llama-server's slots read from its ``/slots``)."""
        error = self.model.err
        slots: list[Any] = []
        if error is None:
            with contextlib.suppress(RocmInferError):
                found = await self.model.client.slots()
                slots = found if isinstance(found, list) else []
        busy = sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))
        return ReplicaStatus(
            replica=self.replica,
            model=self.name,
            pid=self._pid(),
            slots=len(slots),
            busy_slots=busy,
            restarts=self.model.restarts,
            error=str(error).splitlines()[0] if error is not None else None,
        )

    # -- Serve's hooks -----------------------------------------------------------------------------

    async def check_health(self) -> None:
        """Serve's health check: raise when llama-server is dead (Serve then replaces this replica).

        Under a restart policy (``LoadConfig(restart=...)``) a dead server is
        started again here instead, and the check fails only if that fails.
        """
        if self.model.err is not None:
            # A cheap call: under a restart policy it restarts the server; without one it raises the crash.
            await self.model.tokenize("health")
        await self.model.client.health()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The replica's HTTP app: the OpenAI routes over its model; its lifespan closes the model."""

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            try:
                yield
            finally:
                # Serve runs the app's shutdown as it stops the replica: llama-server goes with it.
                await self.model.close()

        app = FastAPI(title=f"rocm_infer: {self.name}", lifespan=lifespan)
        app.include_router(openai_router(_OwnModel(self.name, self.model)))
        return app


LlamaDeployment = serve.deployment(name="LlamaDeployment", health_check_period_s=HEALTH_CHECK_PERIOD)(
    serve.ingress()(LlamaReplica)
)
"""The Serve deployment of :class:`LlamaReplica`: ``LlamaDeployment.options(...).bind(model_path, ...)``."""


def build_app(
    model_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    num_replicas: int = 1,
    num_cpus: float | None = None,
    num_gpus: float = 0,
    resources: Mapping[str, float] | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    health_check_period_s: float = HEALTH_CHECK_PERIOD,
    batch_interval: float = BATCH_INTERVAL,
    niceness: int | None = NICENESS,
    backend: str | None = None,
    config: LoadConfig | None = None,
    **load_options: Any,
) -> Application:
    """A Serve application of :data:`LlamaDeployment` for ``model_path``, for ``serve.run``.

    ``num_cpus`` is the CPUs Ray reserves for each replica (Ray's default,
    1, when None; llama-server runs ``threads`` of them). ``num_gpus`` is the
    GPUs per replica (Ray picks them and the replica's llama-server uses
    those), or ``resources``: custom Ray resources a replica
    needs (``{"amd_gpu": 1}`` on nodes started with ``--resources``), for
    scheduling only. ``autoscaling_config`` (Serve's ``min_replicas``,
    ``max_replicas``, ``target_ongoing_requests`` …) replaces
    ``num_replicas``; ``max_ongoing_requests`` caps the requests Serve sends
    one replica at once (Serve's default, 5, when None). ``niceness`` is the
    replicas' (and so their llama-servers') process niceness, 0 by default
    instead of the 15 Ray gives its workers (set through the replica's
    ``runtime_env``; None leaves Ray's). ``config`` and
    ``load_options`` are the LoadConfig each replica loads with, checked
    here, before anything is deployed. Returns the bound application.
    """
    cfg = LoadConfig.build(config, **load_options)  # a bad option fails here, not in every replica
    actor_options: dict[str, Any] = {}
    if num_cpus is not None:
        actor_options["num_cpus"] = num_cpus
    if num_gpus:
        actor_options["num_gpus"] = num_gpus
    if resources:
        actor_options["resources"] = dict(resources)
    if niceness is not None:
        # Read by the Ray worker as it starts: the replica, and llama-server after it, run at this niceness.
        actor_options["runtime_env"] = {"env_vars": {"RAY_worker_niceness": str(niceness)}}
    options: dict[str, Any] = {"health_check_period_s": health_check_period_s}
    if actor_options:
        options["ray_actor_options"] = actor_options
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = num_replicas
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = max_ongoing_requests
    app: Application = LlamaDeployment.options(**options).bind(
        os.fspath(model_path), name=name, config=cfg, backend=backend, batch_interval=batch_interval
    )
    return app


# -- the caller's side ------------------------------------------------------------------------------

# A replica that cannot serve: its llama-server died (or a restart failed), it is closing,
# or the replica's process itself is gone. Another replica can serve the request.
_REPLICA_GONE: tuple[type[BaseException], ...] = (
    ServerError,
    ModelClosedError,
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


def _unwrapped(error: BaseException) -> BaseException:
    """The replica's own exception for one Ray wrapped (it keeps Ray's as its cause)."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, RocmInferError):
        return cause
    return error


class LlamaClient:
    """Streams from a :data:`LlamaDeployment` through its ``DeploymentHandle``.

    ``generate`` and ``chat`` take :class:`~rocm_infer.TextModel`'s
    arguments and return async iterators of :class:`TokenBatch`. A request
    that fails before its first batch because its replica cannot serve (its
    llama-server died, it is shutting down, its process is gone) is sent
    again, with a growing delay, for up to ``retry_for`` seconds: Serve routes
    it to another replica once its health check has removed the broken one.
    After the first batch nothing is retried: the error
    (``ServerExitedError`` …) is raised, as the replica raised it. Leaving
    the loop early, or cancelling the task that reads it, cancels the request:
    the replica closes its stream and llama-server stops generating.
    """

    def __init__(self, handle: DeploymentHandle[Any], *, retry_for: float = RETRY_FOR) -> None:
        self.handle = handle
        self.retry_for = retry_for
        # Made once: a handle's options() makes a new handle each call.
        self._streaming = {method: handle.options(stream=True, method_name=method) for method in ("generate", "chat")}
        self.retries = 0  # requests sent again, over this client's life

    def generate(
        self, prompt: str, config: GenerateConfig | None = None, **options: Any
    ) -> AsyncGenerator[TokenBatch, None]:
        """The continuation of ``prompt``, as batches; see the class docs."""
        return self._stream("generate", (prompt, config), options)

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        tools: Iterable[Tool | Mapping[str, Any]] | None = None,
        tool_choice: str | None = None,
        reasoning: Reasoning = None,
        config: GenerateConfig | None = None,
        **options: Any,
    ) -> AsyncGenerator[TokenBatch, None]:
        """The assistant's reply to ``messages``, as batches; see the class docs."""
        return self._stream("chat", (list(messages), tools, tool_choice, reasoning, config), options)

    async def status(self) -> ReplicaStatus:
        """The status of whichever replica Serve routes this call to."""
        result: ReplicaStatus = await self.handle.status.remote()
        return result

    async def _stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[TokenBatch, None]:
        give_up = time.monotonic() + self.retry_for
        delay = _FIRST_RETRY_DELAY
        while True:
            response = self._streaming[method].remote(*args, **kwargs)
            assert isinstance(response, DeploymentResponseGenerator)  # stream=True makes one
            received = False
            finished = False
            try:
                async for batch in response:
                    received = True
                    yield batch
                finished = True
                return
            except Exception as exc:
                finished = True
                error = _unwrapped(exc)
                if received or not isinstance(exc, _REPLICA_GONE) or time.monotonic() + delay > give_up:
                    if error is exc:
                        raise
                    raise error from exc
                logger.info("retrying %s: its replica could not serve it (%s)", method, str(error).splitlines()[0])
                self.retries += 1
            finally:
                if not finished:  # the caller left early or was cancelled: so is the request
                    response.cancel()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)
