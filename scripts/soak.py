"""Soak test: the load round of tests/test_load.py, repeated (run by `make soak`).

    python scripts/soak.py [--rounds 20] [--streams 200] [--cancel 0.25] [--model PATH] [--pool-rounds 3]

Every round must pass the same checks as the test (full token counts, cancelled tasks
cancelled, no busy slot, no open connection); across rounds, resident memory must not keep
growing: the last round must end within 10% of where the first one ended. Then pool rounds:
300 requests over three tiny models in a ModelPool of two, a quarter cancelled, checked for
nothing lost and the pool's limits kept. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from load_run import run_pool_round, run_round
from tiny_model import make_tiny_model

import rocm_infer


async def soak(rounds: int, streams: int, cancel: float, model_path: Path) -> bool:
    ok = True
    async with rocm_infer.load_model(model_path, parallel_slots=4, context_len=8192) as model:
        first_rss = None
        for n in range(1, rounds + 1):
            report = await run_round(model, streams=streams, cancel_fraction=cancel, seed=n)
            first_rss = first_rss or report.rss_after
            print(f"round {n}/{rounds}: {report.summary()}", flush=True)
            for problem in report.problems:
                print(f"  PROBLEM: {problem}", flush=True)
                ok = False
        assert first_rss is not None
        growth = report.rss_after / first_rss - 1
        print(
            f"RSS after round 1: {first_rss / 2**20:.1f} MiB; after round {rounds}: "
            f"{report.rss_after / 2**20:.1f} MiB ({growth:+.1%})"
        )
        if growth > 0.10:
            print("  PROBLEM: memory kept growing across rounds")
            ok = False
    return ok


async def soak_pool(rounds: int, folder: Path) -> bool:
    ok = True
    paths = {name: make_tiny_model(folder / f"pool-{name}.gguf", seed=seed) for seed, name in enumerate("abc")}
    config = rocm_infer.LoadConfig(context_len=1024, threads=1)
    models = {name: (path, config) for name, path in paths.items()}
    async with rocm_infer.ModelPool(models, max_loaded=2, keep_alive=0.2, wait_timeout=120) as pool:
        for n in range(1, rounds + 1):
            report = await run_pool_round(pool, seed=n)
            print(f"pool round {n}/{rounds}: {report.summary()}", flush=True)
            for problem in report.problems:
                print(f"  PROBLEM: {problem}", flush=True)
                ok = False
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--cancel", type=float, default=0.25)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF model (default: a tiny random one)")
    parser.add_argument("--pool-rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or make_tiny_model(Path(tmp) / "tiny-llama.gguf")
        ok = asyncio.run(soak(args.rounds, args.streams, args.cancel, model_path))
        if args.pool_rounds:
            ok = asyncio.run(soak_pool(args.pool_rounds, Path(tmp))) and ok
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
