"""Many concurrent streams on one model, some cancelled at random points, then a leak check.

Used by tests/test_load.py (one round) and scripts/soak.py (`make soak`, many rounds). A round
starts ``streams`` generations at once; a random ``cancel_fraction`` of them are cancelled with
``task.cancel()`` once they have produced a random number of tokens (zero: before the first
token, while the request waits for a slot or is being prefilled). Afterwards it checks what a
user would care about: every other stream got exactly ``max_tokens`` tokens, every cancelled
task ended cancelled, no slot is still busy, no TCP connection to llama-server is still open in
this process, and resident memory.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from dataclasses import dataclass, field

import rocm_infer


@dataclass
class RoundReport:
    streams: int
    cancelled: int
    completed: int
    tokens: int
    seconds: float
    open_connections: int
    busy_slots_after: int
    rss_before: int
    rss_after: int
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.streams} streams, {self.cancelled} cancelled, {self.completed} completed, "
            f"{self.tokens} tokens in {self.seconds:.2f}s; open connections after: {self.open_connections}; "
            f"busy slots after: {self.busy_slots_after}; RSS {self.rss_before / 2**20:.1f} MiB -> "
            f"{self.rss_after / 2**20:.1f} MiB"
        )


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_connections(port: int) -> int:
    """TCP connections from this process to 127.0.0.1:``port`` that are not closed yet."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            remote_port = int(fields[2].split(":")[1], 16)
            # 07 is TCP_CLOSE: a socket that holds nothing.
            if remote_port == port and fields[3] != "07" and fields[9] in inodes:
                count += 1
    return count


async def busy_slots(model: rocm_infer.TextModel) -> int:
    return sum(1 for slot in await model.client.slots() if slot.get("is_processing"))


async def wait_idle(model: rocm_infer.TextModel, within: float) -> int:
    """Poll /slots until every slot is idle or ``within`` seconds pass; the busy count at the end."""
    deadline = time.monotonic() + within
    while (busy := await busy_slots(model)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return busy


async def run_round(
    model: rocm_infer.TextModel,
    *,
    streams: int = 200,
    cancel_fraction: float = 0.25,
    max_tokens: int = 32,
    seed: int = 0,
) -> RoundReport:
    rng = random.Random(seed)
    to_cancel = set(rng.sample(range(streams), round(streams * cancel_fraction)))
    cancel_after = {i: rng.randrange(max_tokens) for i in to_cancel}
    reached = {i: asyncio.Event() for i in to_cancel}
    counts = [0] * streams

    async def one(i: int) -> str | None:
        stream = model.generate(f"story number {i}:", max_tokens=max_tokens, ignore_eos=True, seed=i)
        if i in reached and cancel_after[i] == 0:
            reached[i].set()
            await asyncio.sleep(0)  # the canceller runs here
        async for _ in stream:
            counts[i] += 1
            if i in reached and counts[i] == cancel_after[i]:
                reached[i].set()
                # Tokens already received are handed out without suspending: let the canceller
                # run now, or a stream on its last tokens could end before the cancel arrives.
                await asyncio.sleep(0)
        return stream.finish_reason

    async def canceller(i: int, task: asyncio.Task[str | None]) -> None:
        await reached[i].wait()
        task.cancel()

    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    cancellers = [asyncio.create_task(canceller(i, tasks[i])) for i in to_cancel]
    await asyncio.wait(tasks)
    seconds = time.perf_counter() - started
    for c in cancellers:
        c.cancel()
    await asyncio.gather(*cancellers, return_exceptions=True)

    problems: list[str] = []
    completed = 0
    for i, task in enumerate(tasks):
        if i in to_cancel:
            if not task.cancelled():
                problems.append(f"stream {i} was cancelled but its task ended with {task.exception() or 'a result'}")
        elif task.cancelled():
            problems.append(f"stream {i} was not cancelled but its task was")
        elif task.exception() is not None:
            problems.append(f"stream {i} failed: {task.exception()!r}")
        elif counts[i] != max_tokens or task.result() != "length":
            problems.append(f"stream {i} got {counts[i]} of {max_tokens} tokens ({task.result()})")
        else:
            completed += 1
    busy = await wait_idle(model, within=2.0)
    if busy:
        problems.append(f"{busy} slot(s) still busy 2 s after the last stream ended")
    assert model.server is not None and model.server.port is not None
    # A socket is closed on the loop's next turns after its response is released (the /slots
    # poll's own connection is still closing here): give them a moment, then count.
    deadline = time.monotonic() + 1.0
    while (connections := open_connections(model.server.port)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if connections:
        problems.append(f"{connections} connection(s) to llama-server still open")
    del tasks, cancellers
    gc.collect()
    return RoundReport(
        streams=streams,
        cancelled=len(to_cancel),
        completed=completed,
        tokens=sum(counts),
        seconds=seconds,
        open_connections=connections,
        busy_slots_after=busy,
        rss_before=rss_before,
        rss_after=rss_bytes(),
        problems=problems,
    )


@dataclass
class PoolRoundReport:
    requests: int
    cancelled: int
    completed: int
    loads: int
    seconds: float
    max_held: int
    max_memory: int
    problems: list[str]

    def summary(self) -> str:
        return (
            f"{self.requests} requests over the pool, {self.cancelled} cancelled, {self.completed} completed, "
            f"{self.loads} loads, at most {self.max_held} models held and {self.max_memory / 2**20:.1f} MiB, "
            f"in {self.seconds:.2f}s"
        )


async def run_pool_round(
    pool: rocm_infer.ModelPool, *, requests: int = 300, cancel_fraction: float = 0.25, seed: int = 0
) -> PoolRoundReport:
    """``requests`` concurrent generations spread over every model of ``pool``, a fraction cancelled
    at random: none lost, none left running, the pool's limits kept at every moment."""
    rng = random.Random(seed)
    names = pool.available()
    to_cancel = set(rng.sample(range(requests), round(requests * cancel_fraction)))
    loads_before = pool.loads
    held: list[int] = []
    memory: list[int] = []

    async def watch() -> None:
        while True:
            held.append(len(pool.loaded()))
            memory.append(pool.memory_in_use())
            await asyncio.sleep(0.005)

    async def one(i: int) -> str:
        return await pool.generate(names[i % len(names)], f"request {i}:", max_tokens=8, ignore_eos=True).collect()

    started = time.perf_counter()
    watcher = asyncio.create_task(watch())
    tasks = [asyncio.create_task(one(i)) for i in range(requests)]
    for i in sorted(to_cancel):
        await asyncio.sleep(rng.random() * 0.005)
        tasks[i].cancel()
    await asyncio.wait(tasks)
    seconds = time.perf_counter() - started
    watcher.cancel()
    problems: list[str] = []
    completed = 0
    for i, task in enumerate(tasks):
        if task.cancelled():
            if i not in to_cancel:
                problems.append(f"request {i} was not cancelled but its task was")
        elif task.exception() is not None:
            problems.append(f"request {i} failed: {task.exception()!r}")
        elif task.result():
            completed += 1
        else:
            problems.append(f"request {i} got no text")
    if completed + sum(t.cancelled() for t in tasks) != requests:
        problems.append("requests were lost")
    if pool.max_loaded is not None and max(held, default=0) > pool.max_loaded:
        problems.append(f"{max(held)} models held, more than max_loaded={pool.max_loaded}")
    if pool.memory_budget is not None and max(memory, default=0) > pool.memory_budget:
        problems.append(f"{max(memory)} bytes held, more than memory_budget={pool.memory_budget}")
    for model in pool.loaded():
        entry_model = pool._entries[model.name].model
        if entry_model is not None and entry_model.server is not None and entry_model.server.port is not None:
            if open_connections(entry_model.server.port):
                problems.append(f"connections to {model.name}'s server still open")
    return PoolRoundReport(
        requests=requests,
        cancelled=len(to_cancel),
        completed=completed,
        loads=pool.loads - loads_before,
        seconds=seconds,
        max_held=max(held, default=0),
        max_memory=max(memory, default=0),
        problems=problems,
    )
