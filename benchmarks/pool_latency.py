"""What a ModelPool adds to a cold request: an unloaded model's first token, minus llama-server's own load.

    python benchmarks/pool_latency.py [MODEL.gguf] [--rounds N] [--smoke]

Each round asks a pool for one token of the model and then unloads it, so
every request loads it. The pool's
cost is the time from the request to the lease (the model ready), minus the
time llama-server itself took: from its process starting to its own
"listening on" line. What is left is the SDK's: reading the GGUF header and
estimating memory, choosing a port, spawning, the health check after the
server is up, the identity check on /props. Goal: <= 20 ms (median).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from _model import demo_model

import rocm_infer

GOAL_MS = 20.0


@dataclass(frozen=True, slots=True)
class ColdStart:
    rounds: int
    total_ms: float  # median request -> first token
    server_ms: float  # median llama-server start -> its "listening on" line
    overhead_ms: float  # median of the per-round differences (request -> ready, minus the server's own)
    worst_overhead_ms: float


async def run(model_path: Path, *, rounds: int = 10) -> ColdStart:
    totals: list[float] = []
    servers: list[float] = []
    overheads: list[float] = []
    config = rocm_infer.LoadConfig(threads=1)
    async with rocm_infer.ModelPool({"m": (model_path, config)}, keep_alive=None) as pool:
        for _ in range(rounds):
            started = time.monotonic()
            async with pool.model("m") as model:
                ready = time.monotonic()
                await model.generate("hello", max_tokens=1).collect()
                totals.append((time.monotonic() - started) * 1000)
                server = model.server
                assert server is not None
                await server.output_through_startup()  # the drain may not have read "listening on" yet
                assert server.listening_at is not None
                own = server.listening_at - server._progress.launched
            servers.append(own * 1000)
            overheads.append((ready - started - own) * 1000)
            await pool.unload("m")  # the next round loads it again
    return ColdStart(
        rounds=rounds,
        total_ms=statistics.median(totals),
        server_ms=statistics.median(servers),
        overhead_ms=statistics.median(overheads),
        worst_overhead_ms=max(overheads),
    )


def report(figure: ColdStart) -> str:
    verdict = "meets" if figure.overhead_ms <= GOAL_MS else "misses"
    return (
        f"cold request through a ModelPool, {figure.rounds} rounds: first token after {figure.total_ms:.1f} ms; "
        f"llama-server's own start {figure.server_ms:.1f} ms; the pool's and SDK's part {figure.overhead_ms:.1f} ms "
        f"(worst {figure.worst_overhead_ms:.1f} ms; goal <= {GOAL_MS:g} ms: {verdict})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="two rounds, to check the script runs")
    args = parser.parse_args()
    path = args.model or demo_model()
    print(report(await run(path, rounds=2 if args.smoke else args.rounds)))


if __name__ == "__main__":
    asyncio.run(main())
