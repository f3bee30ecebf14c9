"""Time from cancelling a generation to llama-server reporting every slot idle.

    python benchmarks/cancel_to_idle.py [MODEL.gguf] [--rounds N]

Three ways to stop a stream mid-generation: breaking out of the loop (and
dropping the stream), ``await stream.aclose()``, and ``task.cancel()``. The
figure includes one /slots round trip, polled every millisecond.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time

from _model import demo_model

import rocm_infer

LONG = {"max_tokens": 6000, "ignore_eos": True}


async def all_idle(model: rocm_infer.TextModel) -> float:
    """Seconds until /slots shows no slot processing."""
    started = time.perf_counter()
    while True:
        if not any(slot["is_processing"] for slot in await model.client.slots()):
            return time.perf_counter() - started
        await asyncio.sleep(0.001)


async def started_stream(model: rocm_infer.TextModel) -> rocm_infer.TokenStream:
    """A long generation, 50 tokens in."""
    stream = model.generate("tell me a story", **LONG)
    for _ in range(50):
        await stream.__anext__()
    return stream


async def by_break(model: rocm_infer.TextModel) -> float:
    stream = await started_stream(model)
    del stream  # dropped unfinished, as after `break`: it closes its response
    return await all_idle(model)


async def by_aclose(model: rocm_infer.TextModel) -> float:
    stream = await started_stream(model)
    await stream.aclose()
    return await all_idle(model)


async def by_task_cancel(model: rocm_infer.TextModel) -> float:
    running = asyncio.Event()

    async def consume() -> None:
        async for _ in model.generate("tell me a story", **LONG):
            running.set()

    task = asyncio.create_task(consume())
    await running.wait()
    await asyncio.sleep(0.02)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return await all_idle(model)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    ways = {"break": by_break, "aclose": by_aclose, "task.cancel": by_task_cancel}
    results: dict[str, list[float]] = {name: [] for name in ways}
    async with rocm_infer.load_model(args.model or demo_model(), parallel_slots=4, context_len=8192) as model:
        for _ in range(args.rounds):
            for name, way in ways.items():  # alternate, so drift hits every way alike
                results[name].append(await way(model) * 1000)
    for name, ms in results.items():
        print(f"{name:12s} cancel -> all slots idle: median {statistics.median(ms):5.1f} ms, max {max(ms):5.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
