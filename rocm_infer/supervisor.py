"""The one place every call to a model's llama-server goes through.

A :class:`Supervisor` owns a model's link to its server: the HTTP client,
and for a model rocm_infer started, the :class:`~rocm_infer.server.LlamaServer`
and its restart policy. Before a call it checks the model is usable (not
closed, used from its own event loop, its server alive), restarts a dead
server when the policy allows, and hands out the *current* client, so a
stream made before a restart reads from the live server. When a call fails
it decides what the failure means: a broken connection to a supervised
server that has exited is that server's death
(:class:`~rocm_infer.errors.ServerExitedError`), after which every later call
raises the same error, or restarts.

Streams (generation, chat), plain requests (tokenize, props, embeddings) and
batch helpers all use :meth:`Supervisor.call` or :meth:`Supervisor.ready` and
:meth:`Supervisor.translate`; nothing else in the SDK catches transport
errors to reinterpret them.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .client import LlamaServerClient
from .config import RestartPolicy
from .errors import (
    APIConnectionError,
    APITimeoutError,
    EventLoopError,
    ModelClosedError,
    ProtocolError,
    RocmInferError,
    ServerExitedError,
)
from .server import LlamaServer

__all__ = ["ModelState", "Supervisor"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long to wait, after a connection broke, for the process to be seen dead
# before deciding the failure was not a crash.
_EXIT_GRACE = 1.0
# The failures a dying server causes on a connection to it.
_BROKEN = (APIConnectionError, ProtocolError, APITimeoutError)


class ModelState(enum.Enum):
    """Whether a model can take calls."""

    OPEN = "ready"
    DEAD = "dead"  # its llama-server died; a restart policy may bring it back
    CLOSED = "closed"


class Supervisor:
    """Checks, restarts and failure translation for one model's server.

    ``server`` is None for a model attached with ``connect()``: then nothing
    is restarted and a failure is only ever what the client raised.
    ``restart`` is the :class:`~rocm_infer.config.RestartPolicy` (None: a
    crash is final).
    """

    def __init__(
        self,
        client: LlamaServerClient,
        *,
        server: LlamaServer | None = None,
        restart: RestartPolicy | None = None,
    ) -> None:
        self._client = client
        self._server = server
        self._policy = restart if server is not None else None
        self._restarted_at: collections.deque[float] = collections.deque()
        self._restart_lock = asyncio.Lock()
        self._state = ModelState.OPEN
        self._fatal: RocmInferError | None = None
        self.restarts = 0
        try:
            # The loop the HTTP session and the process watcher belong to.
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    # -- state -----------------------------------------------------------------------------------

    @property
    def state(self) -> ModelState:
        self._notice_death()
        return self._state

    @property
    def err(self) -> RocmInferError | None:
        """The error that makes the model unusable: its server's death (or the
        restart that failed), or ModelClosedError once closed; None while usable."""
        self._notice_death()
        return self._fatal

    @property
    def client(self) -> LlamaServerClient:
        """The client of the current server (a new one after each restart)."""
        return self._client

    @property
    def server(self) -> LlamaServer | None:
        return self._server

    def in_another_loop(self) -> bool:
        """True when called from a running event loop that is not the model's own."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False  # not in a loop now (a stream made here runs later: checked then)
        return self.loop is not None and running is not self.loop

    def _notice_death(self) -> None:
        if self._state is ModelState.OPEN and self._server is not None and self._server.returncode is not None:
            self._dead(self._exited_error())

    def _dead(self, error: RocmInferError) -> None:
        self._state = ModelState.DEAD
        self._fatal = error

    # -- before a call ---------------------------------------------------------------------------

    def check(self) -> bool:
        """Raise if the model cannot take a call now; True if its server is dead and will be restarted.

        Synchronous, so ``generate()`` and friends can fail before returning
        a stream. Raises :class:`~rocm_infer.errors.ModelClosedError`,
        :class:`~rocm_infer.errors.EventLoopError`, or the server's death.
        """
        if self._state is ModelState.CLOSED:
            raise ModelClosedError("the model is closed")
        if self.in_another_loop():
            assert self.loop is not None
            state = "is closed" if self.loop.is_closed() else "is another one"
            raise EventLoopError(
                f"this model was loaded in another event loop, which {state}: load, use and close a model "
                "in one loop (one asyncio.run() for all of it)"
            )
        self._notice_death()
        if self._state is ModelState.DEAD:
            if self._may_restart():
                return True
            assert self._fatal is not None
            raise self._fatal
        return False

    async def ready(self) -> LlamaServerClient:
        """:meth:`check`, restart if needed, and return the live server's client."""
        if self.check():
            await self._restart()
        return self._client

    async def call(self, request: Callable[[LlamaServerClient], Awaitable[T]]) -> T:
        """Run ``request`` with the live client; its failure as :meth:`translate` says."""
        client = await self.ready()
        try:
            return await request(client)
        except RocmInferError as exc:
            error = await self.translate(exc)
            if error is exc:
                raise
            raise error from exc

    # -- after a failure -------------------------------------------------------------------------

    async def translate(self, exc: RocmInferError) -> RocmInferError:
        """What a call's failure means: a broken connection to a supervised server
        that has exited is a :class:`~rocm_infer.errors.ServerExitedError` (the model
        is then dead); anything else is returned as it is."""
        if self._server is not None and isinstance(exc, _BROKEN):
            if self._state is ModelState.DEAD and isinstance(self._fatal, ServerExitedError):
                return self._fatal
            if await self._server.wait_exited(_EXIT_GRACE) is not None:
                if self._state is ModelState.OPEN:
                    self._dead(self._exited_error())
                assert self._fatal is not None
                return self._fatal
        return exc

    def _exited_error(self) -> ServerExitedError:
        assert self._server is not None
        code = self._server.returncode
        tail = self._server.output_tail
        # A model split over RPC workers: llama-server aborts when one of them goes away.
        why = "; an RPC worker it used went away" if "Remote RPC server crashed" in tail else ""
        return ServerExitedError(
            f"llama-server (pid {self._server.pid}) exited with code {code} while the model was in use{why}",
            returncode=code,
            output_tail=tail,
        )

    # -- restart ---------------------------------------------------------------------------------

    def _may_restart(self) -> bool:
        policy = self._policy
        if policy is None:
            return False
        horizon = time.monotonic() - policy.window
        while self._restarted_at and self._restarted_at[0] < horizon:
            self._restarted_at.popleft()
        return len(self._restarted_at) < policy.max_restarts

    async def _restart(self) -> None:
        """Replace the dead llama-server with a new one from the same spec."""
        async with self._restart_lock:
            if self._state is ModelState.OPEN:  # another task restarted it while this one waited
                return
            if self._state is ModelState.CLOSED:
                raise ModelClosedError("the model is closed")
            if not self._may_restart():
                assert self._fatal is not None
                raise self._fatal
            old = self._server
            assert old is not None and self._policy is not None
            self._restarted_at.append(time.monotonic())
            self.restarts += 1
            logger.warning(
                "llama-server pid %s exited with code %s; starting it again (restart %d, at most %d in %gs)",
                old.pid,
                old.returncode,
                len(self._restarted_at),
                self._policy.max_restarts,
                self._policy.window,
            )
            await old.stop()  # reaps it and closes its client
            new = old.respawn()
            try:
                await new.start()
            except RocmInferError as exc:
                self._fatal = exc
                raise
            self._server = new
            self._client = new.client
            self._state = ModelState.OPEN
            self._fatal = None

    # -- close -----------------------------------------------------------------------------------

    def mark_closed(self) -> bool:
        """Refuse every later call; False if it was closed already."""
        if self._state is ModelState.CLOSED:
            return False
        self._state = ModelState.CLOSED
        self._fatal = ModelClosedError("the model is closed")
        return True

    async def aclose(self) -> None:
        """Stop a supervised server (SIGTERM, then SIGKILL) or close the client of an attached one.

        From an event loop other than the model's own, the process is stopped
        synchronously and the HTTP session, which belongs to that loop, is
        closed only if that needs no loop.
        """
        if self.in_another_loop():
            if self._server is not None:
                self._server.stop_now("a model was closed from another event loop")
            # With no connection open, closing the session needs no loop at all; with one
            # open, the old loop would be needed (RuntimeError), and the session is left.
            try:
                await self._client.aclose()
            except RuntimeError:
                pass
            return
        if self._server is not None:
            await self._server.stop()  # also closes the server's client, which is ours
        else:
            await self._client.aclose()

    def stop_now(self) -> None:
        """Stop a supervised server synchronously (for a finalizer)."""
        if self._server is not None:
            self._server.stop_now()
