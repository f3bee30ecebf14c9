"""Run an ASGI app under a real uvicorn server, in the running event loop, on 127.0.0.1 and a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan included) until exit; yields its base URL.

    The socket is bound before uvicorn starts, so the port cannot be taken in
    between. Raises RuntimeError if the app does not start (its lifespan failed).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", http="h11", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(_serve(server, sock))
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait([task])
        sock.close()
    task.result()  # an error while shutting down


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's way to say start-up failed; in a task it would stop the loop
        raise RuntimeError("uvicorn did not start: the app's lifespan failed") from None
