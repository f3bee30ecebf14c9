"""A model that is never closed: dropped (a notebook cell run twice), or still open at exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import llama_server_pids

import rocm_infer

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("no_leaked_servers")
async def test_a_dropped_model_warns_and_its_server_is_stopped(
    tiny_model_path: Path, server_binary: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = await rocm_infer.load_model(tiny_model_path)
    server = model.server
    assert server is not None and server.pid in llama_server_pids(server_binary)
    pid = server.pid
    with caplog.at_level(logging.INFO, logger="rocm_infer"), pytest.warns(ResourceWarning, match="unclosed model"):
        del model
        gc.collect()
        # stop_now() returned: the process has exited (a zombie until the loop's watcher reaps it).
        assert pid not in llama_server_pids(server_binary)
    # The stop() it scheduled in this loop reaps the process and closes the HTTP client.
    async with asyncio.timeout(10):
        while not server.client.closed:
            await asyncio.sleep(0.01)
    assert server.returncode is not None
    messages = [r.getMessage() for r in caplog.records]
    assert f"a model was dropped without close(): stopping its llama-server pid {pid}" in messages
    assert not any("exited unexpectedly" in m for m in messages), messages


@pytest.mark.usefixtures("no_leaked_servers")
async def test_a_closed_model_is_dropped_silently(tiny_model_path: Path) -> None:
    model = await rocm_infer.load_model(tiny_model_path)
    await model.close()
    del model
    gc.collect()  # filterwarnings=error: a ResourceWarning here would fail the test


@pytest.mark.usefixtures("no_leaked_servers")
def test_a_model_still_open_at_exit_is_stopped_by_the_exit_hook(tiny_model_path: Path, server_binary: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, rocm_infer
        models = []
        async def main():
            models.append(await rocm_infer.load_model({str(tiny_model_path)!r}))
            print(models[0].server.pid, flush=True)
        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pid = int(result.stdout.split()[0])
    assert pid not in llama_server_pids(server_binary)
    assert f"stopping llama-server pid(s) [{pid}] at exit: a model was not closed" in result.stderr
    assert "dropped without close()" not in result.stderr  # reaped at exit: its pid is not signalled again
