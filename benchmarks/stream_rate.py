"""Tokens/s seen through rocm_infer versus llama-server's own reported rate.

    python benchmarks/stream_rate.py [MODEL.gguf] [--rounds N] [--lengths 64,512,4000]

For each length, the SDK-observed rate (first token to last) is divided by the
``predicted_per_second`` llama-server reports for that same request; the
client's CPU time per token comes from getrusage.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time

from _model import demo_model

import rocm_infer


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one(model: rocm_infer.TextModel, length: int) -> tuple[float, float]:
    cpu = cpu_seconds()
    stream = model.generate("the quick brown fox", max_tokens=length, ignore_eos=True)
    first = last = 0.0
    count = 0
    async for _ in stream:
        last = time.perf_counter()
        first = first or last
        count += 1
    assert stream.metrics is not None
    seen = (count - 1) / (last - first)
    return seen / stream.metrics.decode_tokens_per_sec, (cpu_seconds() - cpu) / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lengths", default="64,512,4000", help="comma-separated token counts")
    args = parser.parse_args()
    async with rocm_infer.load_model(args.model or demo_model(), context_len=8192) as model:
        await model.generate("warm up", max_tokens=16).collect()
        for length in (int(n) for n in args.lengths.split(",")):
            runs = [await one(model, length) for _ in range(args.rounds)]
            ratio = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"{length:5d} tokens: SDK / server rate {ratio:.3f}, client CPU {cpu:.1f} us/token")


if __name__ == "__main__":
    asyncio.run(main())
