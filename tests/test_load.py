"""Load on one real llama-server: many concurrent streams, some cancelled, nothing leaked.

The 200-stream round itself lives in scripts/load_run.py, which `make soak` also runs for many
rounds. Its streams are short (32 tokens) and end on their own, so it shows what is left after
cancellations, not that a cancellation stopped llama-server: the second test does, with long
generations that only a closed response ends, checked in llama-server's own log.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from load_run import open_connections, run_round

import rocm_infer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_200_streams_a_quarter_cancelled_leak_nothing(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, parallel_slots=4, context_len=8192) as model:
        # A first round grows what stays grown (pools, caches, the loop's internals); the
        # measured round must then end where it started.
        await run_round(model, streams=40, seed=1)
        report = await run_round(model, streams=200, cancel_fraction=0.25, seed=2)
    print(report.summary())
    assert report.problems == []
    assert (report.cancelled, report.completed) == (50, 150)
    assert report.tokens >= 150 * 32
    assert report.open_connections == 0 and report.busy_slots_after == 0
    assert report.rss_after <= report.rss_before * 1.10, report.summary()


class _SlotReleases(logging.Handler):
    """What llama-server logs when it frees a slot: the tokens the slot held (prompt and generated).

    Read from the ``rocm_infer.server`` logger, which at DEBUG passes on every line llama-server
    prints (the output tail keeps only the last hundred)."""

    _RELEASED = re.compile(r"\| task (\d+) \| stop processing: n_tokens = (\d+)")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.n_tokens: dict[int, int] = {}  # by task id

    def emit(self, record: logging.LogRecord) -> None:
        found = self._RELEASED.search(record.getMessage())
        if found:
            self.n_tokens[int(found.group(1))] = int(found.group(2))

    @contextmanager
    def attached(self) -> Iterator[_SlotReleases]:
        """Listen while the block runs (load the model inside it: the output is read from the start)."""
        server_log = logging.getLogger("rocm_infer.server")
        level = server_log.level
        server_log.setLevel(logging.DEBUG)
        server_log.addHandler(self)
        try:
            yield self
        finally:
            server_log.removeHandler(self)
            server_log.setLevel(level)


SHORT = 32
# Far more than a cancelled stream ever reads, and far more than the slot makes in the seconds this
# test waits: only closing its response ends such a generation early.
LONG = 1500


async def test_cancelled_streams_under_load_stop_llama_server_generating(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    rng = random.Random(3)
    count = 40
    cancelled = set(range(0, count, 4))  # every fourth stream asks for LONG tokens and is cancelled
    cancel_after = {i: rng.randrange(SHORT) for i in cancelled}  # 0: before its first token
    reached = {i: asyncio.Event() for i in cancelled}
    received = [0] * count

    # The cancellation lands in the stream's next read (a long generation is never over before
    # it): the task is cancelled while it iterates, as a user's is. At 0, that is the first read,
    # with the request waiting for a slot or being prefilled.
    async def consume(i: int, stream: rocm_infer.TokenStream) -> None:
        if cancel_after.get(i) == 0:
            reached[i].set()
        async for _ in stream:
            received[i] += 1
            if received[i] == cancel_after.get(i):
                reached[i].set()

    async def cancel(i: int, task: asyncio.Task[None]) -> None:
        await reached[i].wait()
        task.cancel()

    with _SlotReleases().attached() as releases:
        async with rocm_infer.load_model(tiny_model_path, parallel_slots=4, context_len=8192) as model:
            # Every stream stays referenced to the end, so no finalizer can close what cancelling did not.
            streams = [
                model.generate(f"story number {i}:", max_tokens=LONG if i in cancelled else SHORT, ignore_eos=True)
                for i in range(count)
            ]
            tasks = [asyncio.create_task(consume(i, stream)) for i, stream in enumerate(streams)]
            cancellers = [asyncio.create_task(cancel(i, tasks[i])) for i in cancelled]
            await asyncio.wait(tasks)
            ended = time.monotonic()
            await asyncio.gather(*cancellers)
            while any(slot["is_processing"] for slot in await model.client.slots()):
                assert time.monotonic() - ended < 2.0, "a slot is still busy 2 s after the last stream ended"
                await asyncio.sleep(0.01)
            assert model.server is not None and model.server.port is not None
            deadline = time.monotonic() + 1.0
            while open_connections(model.server.port) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert open_connections(model.server.port) == 0
            launched = {slot["id_task"] for slot in await model.client.slots() if "id_task" in slot}
            async with asyncio.timeout(5):  # the last lines may still be on their way through the pipe
                while not launched <= set(releases.n_tokens):
                    await asyncio.sleep(0.01)

    for i, (stream, task) in enumerate(zip(streams, tasks, strict=True)):
        if i in cancelled:
            assert task.cancelled() and stream.finish_reason == "cancelled", i
            assert received[i] >= cancel_after[i], i
        else:
            assert task.result() is None and (received[i], stream.finish_reason) == (SHORT, "length"), i
    # llama-server's own account: no generation went on after its stream was cancelled.
    assert len(releases.n_tokens) >= count - len(cancelled)
    longest = max(releases.n_tokens.values())
    assert longest < LONG // 2, f"a cancelled generation went on to {longest} tokens"
