"""Router: many llama-servers behind one client-side API.

::

    async with rocm_infer.Router([model_a, model_b, "http://gpu-box-2:8080"], policy="least_loaded") as router:
        async for token in router.generate("Once upon a time"):
            ...

Endpoints are models (:class:`~rocm_infer.model.TextModel`, or
:class:`~rocm_infer.embedding.EmbeddingModel` for :meth:`Router.embed`)
that the caller loaded or connected and still owns, or llama-servers by URL
(:class:`Endpoint`, with its API key), which the router attaches to on
start and closes on close.

Each request goes where the policy says (:mod:`rocm_infer.serving.policies`:
pure functions of the endpoints' states and the request's key). A stream is
a :class:`~rocm_infer.stream.TokenStream`, bound to its endpoint when
iteration starts: the router opens the response there, and if the endpoint
refuses it (connection refused, 503, a dead server) before the first token,
on the next endpoint the policy names, each endpoint once. After a token was
yielded nothing is retried: the stream raises. An endpoint that failed is
ejected and health-checked with backoff until it answers again (a model
with a restart policy is restarted by that check); a task per endpoint also
polls ``/slots`` for the load other clients put on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast

import anyio

from ..client import EventStream, LlamaServerClient
from ..config import GenerateConfig
from ..embedding import EmbeddingModel
from ..endpoints.chat import Reasoning
from ..errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ModelClosedError,
    ProtocolError,
    RocmInferError,
    ServerError,
)
from ..lifecycle import ModelContext, ServerModel
from ..model import TextModel
from ..model import connect as connect_text_model
from ..stream import TokenStream
from ..supervisor import ModelState, Supervisor
from ..tools import Tool, ToolChoice, as_tools
from ..types import FinishReason, GenerateMetrics, Message
from .policies import (
    PREFIX_FREE,
    Backoff,
    EndpointState,
    Health,
    Policy,
    PrefixIndex,
    RequestKey,
    check_due,
    check_failed,
    eject,
    message_prefixes,
    prompt_prefixes,
    readmit,
    resolve_policy,
)

__all__ = ["Endpoint", "EndpointLike", "Router"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=ServerModel)
T = TypeVar("T")

# Seconds a /slots poll or a /health check may take before the endpoint counts as down.
_PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A llama-server the router attaches to by URL, with its API key (never shown in reprs)."""

    url: str
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"an endpoint URL must be an http(s) URL, got {self.url!r}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise TypeError(f"api_key must be a str or None, not {type(self.api_key).__name__}")
        object.__setattr__(self, "url", self.url.rstrip("/"))


EndpointLike = ServerModel | Endpoint | str | tuple[str, str | None]
"""What a router takes as an endpoint: a model, an :class:`Endpoint`, a URL, or ``(url, api_key)``."""


def _endpoint(value: object) -> ServerModel | Endpoint:
    if isinstance(value, ServerModel | Endpoint):
        return value
    if isinstance(value, str):
        return Endpoint(value)
    if isinstance(value, tuple) and len(value) == 2:
        return Endpoint(value[0], api_key=value[1])
    if isinstance(value, ModelContext):
        raise TypeError(
            "an endpoint is a loaded model, not a model still loading: `await` load_model()/connect() first "
            "(or pass the server's URL)"
        )
    raise TypeError(f"an endpoint is a model, an Endpoint, a URL or (url, api_key), not {type(value).__name__}")


def _fails_over(error: RocmInferError) -> bool:
    """Whether a request that failed this way before its first token may go to another endpoint:
    the endpoint refused it or is gone, not the request itself at fault."""
    if isinstance(error, APIError):
        return error.status == 503
    return isinstance(error, ServerError | APIConnectionError | ProtocolError | APITimeoutError | ModelClosedError)


def _broken(error: RocmInferError) -> bool:
    """Whether a stream that broke this way says its endpoint is down."""
    return isinstance(error, ServerError | APIConnectionError | ProtocolError | APITimeoutError)


class _Member:
    """One endpoint of a router and what the router knows of it (mutable, internal)."""

    __slots__ = (
        "model",
        "spec",
        "health",
        "in_flight",
        "slots_busy",
        "busy_elsewhere",
        "slots",
        "served",
        "failures",
        "polls_slots",
        "error",
        "ejected",
    )

    def __init__(self, model: ServerModel | None, spec: Endpoint | None) -> None:
        self.model = model
        self.spec = spec  # set for the endpoints the router attaches to, and owns
        self.health = Health()
        self.in_flight = 0
        self.slots_busy = 0
        self.busy_elsewhere = 0
        self.slots = 0
        self.served = 0
        self.failures = 0
        self.polls_slots = True
        self.error: BaseException | None = None
        self.ejected = asyncio.Event()  # set when a request ejects it, to wake its watcher

    @property
    def url(self) -> str:
        if self.model is not None:
            return self.model.client.base_url
        assert self.spec is not None
        return self.spec.url

    def state(self) -> EndpointState:
        return EndpointState(
            url=self.url,
            healthy=self.health.healthy,
            in_flight=self.in_flight,
            slots_busy=self.slots_busy,
            served=self.served,
            failures=self.failures,
            slots=self.slots,
            busy_elsewhere=self.busy_elsewhere,
        )


def _unusable(model: ServerModel) -> RocmInferError | None:
    """Why the router must not send ``model`` a request now (dead or closed), or None.

    A dead server whose restart policy would start it again counts as dead
    too: the health check restarts it, while requests go elsewhere.
    """
    supervisor = model._supervisor
    if supervisor.state is ModelState.OPEN:
        return None
    return supervisor.err or ModelClosedError("the model is closed")


class _Binding:
    """What a routed TokenStream opens its response through, in place of a model's Supervisor.

    ``ready()`` asks the router for an endpoint and opens the response there,
    moving on to the next endpoint while they refuse it; from then on the
    stream is bound to that endpoint: ``translate()`` and ``call()`` are its
    supervisor's, and the end of the stream is counted there.
    """

    __slots__ = ("_router", "_open", "_prefixes", "_member", "_events", "_released", "_stream", "__weakref__")

    def __init__(
        self, router: Router, open_events: Callable[[LlamaServerClient], EventStream], prefixes: tuple[int, ...]
    ) -> None:
        self._router = router
        self._open = open_events
        self._prefixes = prefixes
        self._member: _Member | None = None
        self._events: EventStream | None = None
        self._released = False
        self._stream: weakref.ref[TokenStream] | None = None

    def attach(self, stream: TokenStream) -> None:
        self._stream = weakref.ref(stream)

    async def ready(self) -> LlamaServerClient:
        router = self._router
        router._check_open()
        seq = router._next_seq()
        tried: list[_Member] = []
        last: RocmInferError | None = None
        while True:
            member = router._choose(TextModel, seq, self._prefixes, tried)
            if member is None:
                raise router._no_endpoint(TextModel, last)
            tried.append(member)
            member.in_flight += 1
            try:
                client, events = await self._open_on(member)
            except RocmInferError as exc:
                member.in_flight -= 1
                if router.closed:
                    raise ModelClosedError("the router was closed while this stream was opening") from exc
                if not _fails_over(exc):
                    raise
                router._failed(member, exc)
                last = exc
                continue
            except BaseException:
                member.in_flight -= 1
                raise
            if router.closed:  # while the response was opening: the stream has been ended already
                events.close()
                member.in_flight -= 1
                raise ModelClosedError("the router was closed while this stream was opening")
            self._member = member
            self._events = events
            router._placed(self._prefixes, member)
            stream = self._stream() if self._stream is not None else None
            if stream is not None and member.model is not None:
                member.model._streams.add(stream)  # so closing that model ends this stream too
            return client

    async def _open_on(self, member: _Member) -> tuple[LlamaServerClient, EventStream]:
        assert member.model is not None
        error = _unusable(member.model)
        if error is not None:
            raise error
        supervisor = member.model._supervisor
        client = await supervisor.ready()
        events = self._open(client)
        try:
            # llama-server answers a stream's request once the first token is there (or the
            # request failed): a refusal, a 503 or a dead server shows here, before any token.
            await events.open()
        except RocmInferError as exc:
            translated = await supervisor.translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        return client, events

    def opened(self, client: LlamaServerClient) -> EventStream:
        """The events ``ready()`` opened (the stream's ``open_events``)."""
        assert self._events is not None
        return self._events

    async def translate(self, exc: RocmInferError) -> RocmInferError:
        member = self._member
        if member is None or member.model is None:
            return exc
        error = await member.model._supervisor.translate(exc)
        if _broken(error):
            self._router._failed(member, error)
        return error

    async def call(self, request: Callable[[LlamaServerClient], Awaitable[T]]) -> T:
        member = self._member
        if member is None or member.model is None:
            raise ModelClosedError("this stream is not bound to an endpoint")
        return await member.model._supervisor.call(request)

    def finish(self, metrics: GenerateMetrics, reason: FinishReason) -> GenerateMetrics:
        """The stream ended: count it on its endpoint, and let the endpoint's model see its metrics."""
        member = self._member
        if member is None or self._released:
            return metrics
        self._released = True
        member.in_flight -= 1
        if reason != "error":
            member.served += 1
        model = member.model
        return model._finished(metrics, reason) if isinstance(model, TextModel) else metrics

    def __del__(self) -> None:
        # A bound stream dropped before it ended: the caller stopped reading it, as with aclose().
        member = getattr(self, "_member", None)
        if member is not None and not self._released:
            self._released = True
            member.in_flight -= 1
            member.served += 1


async def _watch(ref: weakref.ref[Router], member: _Member) -> None:
    """One endpoint's upkeep for as long as its router lives: /slots polls while it is healthy,
    health checks with backoff while it is ejected. Holds the router only while it works, so a
    router dropped unclosed can still be collected (and warn)."""
    router = ref()
    if router is None:
        return
    delay = router._delay(member)  # the router has just looked (at start, or when it attached)
    del router
    while True:
        # An ejection cuts a healthy endpoint's wait short: its first health check is due sooner.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await member.ejected.wait()
        member.ejected.clear()
        router = ref()
        if router is None or router.closed:
            return
        try:
            delay = await router._tend(member)
        except Exception:  # a bug must not end the upkeep of an endpoint for good
            logger.exception("router endpoint %s: its upkeep failed", member.url)
            delay = router._backoff.cap
        del router


class Router:
    """Many llama-servers behind one API: ``generate``, ``chat`` and ``embed`` as a model has them.

    ``endpoints`` are models (the caller's: the router never closes them)
    or llama-servers by URL: a ``str``, a ``(url, api_key)`` tuple or an
    :class:`Endpoint`, attached with ``connect`` when the router starts
    (``rocm_infer.connect_embedding_model`` for embedding servers) and
    closed with it. ``policy`` is ``"least_loaded"`` (the default),
    ``"prefix_affinity"``, ``"round_robin"``, or a function
    ``(states, key) -> state`` (see :mod:`rocm_infer.serving.policies`).
    ``poll_interval`` is how often each healthy endpoint's ``/slots`` is
    read; ``backoff`` paces the health checks of ejected ones.

    Use ``async with router:`` (or ``await router.start()`` and
    ``await router.close()``). Starting attaches the URLs; one that cannot
    be reached starts out ejected, and if no endpoint at all is usable the
    error of the first is raised. Raises ``TypeError``/``ValueError`` here
    for a bad endpoint, a duplicate or an unknown policy.

    (One class of some length on purpose: requests, failover, the endpoints'
    upkeep and their lifetimes share the endpoint states; every decision is a
    pure function of :mod:`~rocm_infer.serving.policies`.)
    """

    def __init__(
        self,
        endpoints: Iterable[EndpointLike],
        policy: str | Policy = "least_loaded",
        *,
        connect: Callable[..., Awaitable[ServerModel]] = connect_text_model,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
    ) -> None:
        if isinstance(endpoints, str | bytes | Mapping | ServerModel | Endpoint):
            raise TypeError("endpoints must be a list of endpoints, not a single one")
        members: list[_Member] = []
        seen: set[object] = set()
        for value in endpoints:
            endpoint = _endpoint(value)
            ident: object = endpoint.url if isinstance(endpoint, Endpoint) else id(endpoint)
            if ident in seen:
                raise ValueError(f"the endpoint {endpoint!r} is given twice")
            seen.add(ident)
            if isinstance(endpoint, Endpoint):
                members.append(_Member(None, endpoint))
            else:
                members.append(_Member(endpoint, None))
        if not members:
            raise ValueError("a router needs at least one endpoint")
        if not isinstance(poll_interval, int | float) or not poll_interval > 0:
            raise ValueError(f"poll_interval must be a number of seconds > 0, got {poll_interval!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, not {type(backoff).__name__}")
        self._policy = resolve_policy(policy)
        # A policy that reads no prefixes is never given any: generate and chat then hash nothing.
        self._hashes = not any(self._policy is free for free in PREFIX_FREE)
        self._policy_name = policy if isinstance(policy, str) else getattr(policy, "__name__", repr(policy))
        self._members = members
        self._connect = connect
        self._poll_interval = float(poll_interval)
        self._backoff = backoff if backoff is not None else Backoff()
        self._index = PrefixIndex()
        self._seq = 0
        self._started = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        # Open streams, so close() can end them.
        self._streams: weakref.WeakSet[TokenStream] = weakref.WeakSet()

    def __repr__(self) -> str:
        healthy = sum(m.health.healthy for m in self._members)
        state = "closed" if self._closed else "started" if self._started else "not started"
        return f"<Router {self._policy_name} {len(self._members)} endpoints, {healthy} healthy, {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def endpoints(self) -> list[EndpointState]:
        """The state of every endpoint now, in the order they were given."""
        return [member.state() for member in self._members]

    # -- lifetime --------------------------------------------------------------------------------

    async def start(self) -> Router:
        """Attach the URL endpoints and start watching every endpoint; returns the router.

        Idempotent. An endpoint that cannot be reached (or a model already
        dead or closed) starts out ejected; if none is usable, everything is
        closed again and the first endpoint's error is raised. Raises
        ``ModelClosedError`` once the router is closed.
        """
        if self._closed:
            raise ModelClosedError("the router is closed")
        if self._started:
            return self
        self._started = True
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for member in self._members:
                        if member.model is None:
                            group.create_task(self._attach_at_start(member))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
            now = time.monotonic()
            for member in self._members:
                if member.model is not None and member.error is None:
                    member.error = _unusable(member.model)
                if member.error is not None:
                    member.failures += 1
                    member.health = eject(member.health, now, self._backoff)
            if not any(member.health.healthy for member in self._members):
                first = self._members[0].error
                assert first is not None
                raise first
        except BaseException:
            await self.close()
            raise
        ref = weakref.ref(self)
        self._tasks = [asyncio.create_task(_watch(ref, member)) for member in self._members]
        return self

    async def _attach_at_start(self, member: _Member) -> None:
        try:
            await self._attach(member)
        except RocmInferError as exc:
            assert member.spec is not None
            logger.warning("router endpoint %s cannot be reached; it starts out ejected: %s", member.spec.url, exc)
            member.error = exc

    async def _attach(self, member: _Member) -> None:
        assert member.spec is not None
        model = await self._connect(member.spec.url, api_key=member.spec.api_key)
        if not isinstance(model, ServerModel):
            raise TypeError(f"connect gave {type(model).__name__}, not a rocm_infer model")
        if self._closed:  # closed while it was being attached
            await model.close()
            raise ModelClosedError("the router was closed")
        # A 503 (still loading) sends the request to another endpoint at once, instead of waiting here.
        model.client.unavailable_timeout = 0.0
        member.model = model

    async def close(self) -> None:
        """End the open streams (their readers get ``ModelClosedError``), stop watching the
        endpoints and close the ones the router attached to; the caller's models stay open.
        Idempotent, and completes even if the calling task is cancelled."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            stream.abort(ModelClosedError("the router was closed while this stream was open"))
        with anyio.CancelScope(shield=True):
            tasks, self._tasks = self._tasks, []
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for member in self._members:
                if member.spec is not None and member.model is not None:
                    await member.model.close()

    aclose = close

    async def __aenter__(self) -> Router:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if not getattr(self, "_started", False) or self._closed:
            return
        self._closed = True
        for task in self._tasks:
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                task.cancel()
        warnings.warn(
            f"unclosed router {self!r}: use `async with router:` or `await router.close()`",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )

    # -- requests --------------------------------------------------------------------------------

    def generate(self, prompt: str, config: GenerateConfig | None = None, **options: Any) -> TokenStream:
        """Stream the continuation of ``prompt`` from the endpoint the policy chooses.

        As :meth:`rocm_infer.TextModel.generate` (the same options, checked
        here); returns the :class:`~rocm_infer.stream.TokenStream` at once,
        and the endpoint is chosen when iteration starts. Raises
        ``ModelClosedError`` once the router is closed, and ``RuntimeError``
        before it is started.
        """
        recipe = self._template(TextModel).generate(prompt, config, **options)
        return self._routed(recipe, prompt_prefixes(prompt) if self._hashes else ())

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        tools: Iterable[Tool | Mapping[str, Any] | Callable[..., Any]] | None = None,
        tool_choice: ToolChoice | None = None,
        reasoning: Reasoning = None,
        config: GenerateConfig | None = None,
        **options: Any,
    ) -> TokenStream:
        """Stream the assistant's reply to ``messages`` from the endpoint the policy chooses.

        As :meth:`rocm_infer.TextModel.chat` (tools, reasoning, options);
        otherwise as :meth:`generate`. With ``prefix_affinity`` the turns of
        one conversation go to the endpoint that served the turn before.
        """
        listed = messages if isinstance(messages, str | bytes | Mapping) else list(messages)
        tool_list = tools
        if tools is not None and not isinstance(tools, str | Mapping) and not callable(tools):
            tool_list = list(tools)  # read twice: by the model's checks, then for the routing key
        recipe = self._template(TextModel).chat(listed, tool_list, tool_choice, reasoning, config, **options)
        if not self._hashes:
            return self._routed(recipe, ())
        # What the model checked: a list of messages, and tools that coerce (they precede them in the prompt).
        seed = json.dumps([t.to_openai() for t in as_tools(tool_list)], sort_keys=True) if tool_list else ""
        return self._routed(recipe, message_prefixes(cast(list[Message | Mapping[str, Any]], listed), seed=seed))

    async def embed(self, texts: str | Sequence[str], **options: Any) -> Any:
        """The vector of each text, from the embedding endpoint the policy chooses.

        As :meth:`rocm_infer.EmbeddingModel.embed` (``as_numpy``,
        ``normalize`` ...). A request an endpoint refuses (or dies on) is
        sent to the next, each endpoint once; ``TypeError`` if the router
        has no embedding endpoints.
        """
        return await self._call(EmbeddingModel, lambda model: model.embed(texts, **options))

    async def _embed(self, texts: str | Sequence[str], **options: Any) -> Any:
        """:meth:`EmbeddingModel._embed` on the endpoint the policy chooses (for the OpenAI routes)."""
        return await self._call(EmbeddingModel, lambda model: model._embed(texts, **options))

    @property
    def dimensions(self) -> int:
        """The vector size of the embedding endpoints (0 while none is attached)."""
        for member in self._members:
            if isinstance(member.model, EmbeddingModel):
                return member.model.dimensions
        return 0

    # -- the machinery ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the router is closed")
        if not self._started:
            raise RuntimeError("the router is not started: use `async with router:` or `await router.start()`")

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def _template(self, kind: type[M]) -> M:
        """A model of ``kind`` to check a request's arguments and build its body: a healthy one
        if there is one (the request is routed later, when its stream is read)."""
        self._check_open()
        fallback: M | None = None
        for member in self._members:
            model = member.model
            if isinstance(model, kind):
                if member.health.healthy and _unusable(model) is None:
                    return model
                if fallback is None:
                    fallback = model  # its own checks raise why it cannot be used
        if fallback is not None:
            return fallback
        raise self._no_endpoint(kind, None)

    def _routed(self, recipe: TokenStream, prefixes: tuple[int, ...]) -> TokenStream:
        """A stream like ``recipe`` (the request a model built and checked, never sent) that the
        router binds to an endpoint when it is read."""
        binding = _Binding(self, recipe._open, prefixes)
        # The binding does for this stream what a model's Supervisor does for the model's streams.
        stream = TokenStream(cast(Supervisor, binding), binding.opened, recipe._adapter, on_finish=binding.finish)
        binding.attach(stream)
        self._streams.add(stream)
        return stream

    def _choose(
        self, kind: type[ServerModel], seq: int, prefixes: tuple[int, ...], tried: list[_Member]
    ) -> _Member | None:
        """The endpoint the policy picks among the healthy ones of ``kind`` not tried yet (the
        ejected ones, when no healthy one is left), or None when none is left at all."""
        untried = [m for m in self._members if isinstance(m.model, kind) and m not in tried]
        pool = [m for m in untried if m.health.healthy] or untried
        if not pool:
            return None
        states = [m.state() for m in pool]
        key = RequestKey(seq, prefixes, self._index.holders(prefixes) if prefixes else ())
        chosen = self._policy(states, key)
        for state, member in zip(states, pool, strict=True):
            if state is chosen:
                return member
        raise TypeError(f"the routing policy returned {chosen!r}, not one of the states it was given")

    def _no_endpoint(self, kind: type[ServerModel], last: RocmInferError | None) -> RocmInferError | TypeError:
        """The error for a request no endpoint took: the last endpoint's own, if one was tried."""
        if last is not None:
            return last
        if self._closed:
            return ModelClosedError("the router is closed")
        missing = [m for m in self._members if m.model is None]
        if missing:
            why = "; ".join(f"{m.url}: {m.error}" for m in missing)
            return APIConnectionError(f"no endpoint of the router can take the request ({why})")
        what = "text model" if kind is TextModel else "embedding model" if kind is EmbeddingModel else kind.__name__
        return TypeError(f"this router has no {what} endpoints")

    def _placed(self, prefixes: tuple[int, ...], member: _Member) -> None:
        if prefixes:
            self._index.record(prefixes, member.url)

    def _failed(self, member: _Member, error: BaseException) -> None:
        """A request found ``member`` broken: count it, and eject the endpoint if it is still in."""
        member.failures += 1
        member.error = error
        if member.health.healthy:
            member.health = eject(member.health, time.monotonic(), self._backoff)
            self._index.forget(member.url)  # whatever it held is gone, or will be after a restart
            member.ejected.set()
            logger.warning("router endpoint %s ejected: %s", member.url, error)

    async def _call(self, kind: type[M], request: Callable[[M], Awaitable[T]]) -> T:
        """``request`` on the endpoint of ``kind`` the policy picks, moving on while endpoints
        refuse it, each once."""
        self._check_open()
        seq = self._next_seq()
        tried: list[_Member] = []
        last: RocmInferError | None = None
        while True:
            member = self._choose(kind, seq, (), tried)
            if member is None:
                raise self._no_endpoint(kind, last)
            tried.append(member)
            model = cast(M, member.model)
            member.in_flight += 1
            try:
                unusable = _unusable(model)
                if unusable is not None:
                    raise unusable
                result = await request(model)
            except RocmInferError as exc:
                if self._closed or not _fails_over(exc):
                    raise
                self._failed(member, exc)
                last = exc
                continue
            finally:
                member.in_flight -= 1
            member.served += 1
            return result

    async def _tend(self, member: _Member) -> float:
        """One round of ``member``'s upkeep; the seconds until the next."""
        if member.health.healthy:
            await self._poll(member)
        elif check_due(member.health, time.monotonic()):
            await self._health_check(member)
        return self._delay(member)

    def _delay(self, member: _Member) -> float:
        """Seconds until ``member``'s next poll (healthy) or health check (ejected)."""
        if member.health.healthy:
            return self._poll_interval
        return max(0.0, member.health.retry_at - time.monotonic())

    async def _poll(self, member: _Member) -> None:
        """Read the endpoint's /slots: how busy it is with other clients' requests."""
        model = member.model
        if model is None:
            return
        unusable = _unusable(model)
        if unusable is not None:
            self._failed(member, unusable)
            return
        if not member.polls_slots:
            return
        own = member.in_flight
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                slots = await model.client.slots()
        except APIError as exc:
            if exc.status == 503:
                self._failed(member, exc)
                return
            # /slots is switched off (--no-slots): the router goes by its own count alone.
            member.polls_slots = False
            logger.info("router endpoint %s does not report its slots (%s)", member.url, exc)
            return
        except RocmInferError as exc:
            self._failed(member, await model._supervisor.translate(exc))
            return
        except TimeoutError:
            silent = APITimeoutError(f"{member.url}/slots did not answer in {_PROBE_TIMEOUT:g}s", url=member.url)
            self._failed(member, await model._supervisor.translate(silent))
            return
        if not isinstance(slots, list):
            return
        busy = sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))
        member.slots = len(slots)
        member.slots_busy = busy
        member.busy_elsewhere = max(0, busy - own)

    async def _health_check(self, member: _Member) -> None:
        """Is the ejected ``member`` back? Attaches a URL not attached yet, restarts a dead
        model whose restart policy allows it, then asks /health; re-admits it, or backs off."""
        try:
            if member.model is None:
                await self._attach(member)
            model = member.model
            assert model is not None
            if model.closed:
                raise ModelClosedError("the model is closed")
            client = await model._supervisor.ready()
            async with asyncio.timeout(_PROBE_TIMEOUT):
                await client.health()
        except (RocmInferError, TimeoutError) as exc:
            member.failures += 1
            member.error = exc
            member.health = check_failed(member.health, time.monotonic(), self._backoff)
            delay = member.health.retry_at - time.monotonic()
            logger.info("router endpoint %s is still down (%s); next check in %.1fs", member.url, exc, delay)
            return
        member.health = readmit()
        member.error = None
        member.polls_slots = True
        member.slots_busy = member.busy_elsewhere = 0
        logger.warning("router endpoint %s is back: re-admitted", member.url)
