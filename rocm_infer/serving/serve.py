"""``rocm-infer serve``: an OpenAI-compatible HTTP server for a ModelPool (or a Router), on FastAPI.

:func:`create_app` builds the app: the routes of
:mod:`rocm_infer.integrations.openai_api` (``/v1/chat/completions`` with
tools, reasoning and streaming, ``/v1/completions``, ``/v1/embeddings``,
``/v1/rerank``, ``/v1/models``) over the pool, the model chosen by each
request's ``model`` (loaded on demand, held for the request). ``/v1/models``
lists every model the pool can load, loaded or not; an unknown name is a 404
that lists them. A client that disconnects stops its generation. With an
``api_key`` every ``/v1`` request must carry it (``Authorization: Bearer``);
binding anything but loopback without one is refused by :func:`serve`.

Needs the ``fastapi`` extra.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response

from ..integrations.openai_api import openai_error, openai_router
from .pool import ModelPool
from .router import Router

__all__ = ["PoolProvider", "create_app", "serve"]

logger = logging.getLogger(__name__)


class PoolProvider:
    """The OpenAI routes' model provider for a pool: every name it can load, a lease per request."""

    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool

    def names(self) -> Sequence[str]:
        return self._pool.available()

    def lease(self, name: str) -> AbstractAsyncContextManager[Any]:
        if name not in self._pool.available():
            raise KeyError(name)
        return self._pool.model(name)


class _RouterProvider:
    """A router serves every request under each of its names (``default``, or the one given)."""

    def __init__(self, router: Router, name: str) -> None:
        self._router = router
        self._name = name

    def names(self) -> Sequence[str]:
        return [self._name]

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[Any]:
        yield self._router

    def lease(self, name: str) -> AbstractAsyncContextManager[Any]:
        if name != self._name:
            raise KeyError(name)
        return self._held()


def create_app(source: ModelPool | Router, *, api_key: str | None = None, router_name: str = "default") -> FastAPI:
    """The FastAPI app serving ``source``: a ModelPool (models by name) or a Router (one name,
    ``router_name``). The app starts and closes the source with its lifespan."""
    provider: Any = PoolProvider(source) if isinstance(source, ModelPool) else _RouterProvider(source, router_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with source:
            yield

    app = FastAPI(title="rocm-infer serve", lifespan=lifespan)
    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if request.url.path.startswith("/v1"):
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return openai_error(
                        401,
                        "a valid API key is required (Authorization: Bearer ...)",
                        "invalid_request_error",
                        "invalid_api_key",
                    )
            return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(openai_router(provider))
    return app


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """ValueError for an address other than loopback without an API key: the models would be open
    to anyone who can reach the machine."""
    if not _loopback(host) and not api_key:
        raise ValueError(f"serving on {host!r} (not loopback) needs an API key: pass --api-key")


def serve(source: ModelPool | Router, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> None:
    """Run :func:`create_app` under uvicorn until interrupted (blocking). Refuses a non-loopback
    ``host`` without ``api_key``."""
    import uvicorn

    check_bind(host, api_key)
    uvicorn.run(create_app(source, api_key=api_key), host=host, port=port, log_level="info")
