"""What a Router costs: one endpoint through the router against the same model used directly.

    python benchmarks/router_overhead.py [MODEL.gguf] [--rounds N] [--tokens N] [--smoke]

One llama-server (one slot, one thread) serves both contenders. Each round
runs one request directly and one through ``Router([model])`` back to back,
in alternating order, and compares the tokens per second each saw (wall time
from the call to the last token, first token included); the figure is the
median of the per-round ratios (goal: >= 0.98). It is measured for long
requests (per-token cost) and short ones (per-request cost: choosing the
endpoint, binding the stream, the background /slots polls).

One llama-server's decode rate moves by a third from one request to the
next on 2 cores, which no client causes; so each round is also measured
against the server's own time: each request's prefill + decode time (from
its timings) over its wall time, routed over direct. That keeps what the
router adds to the wall time and drops the server's swings (though not what
the router's CPU takes from the server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _model import demo_model

import rocm_infer

GOAL = 0.98


@dataclass(frozen=True, slots=True)
class Overhead:
    """The figures for one request size."""

    tokens: int
    rounds: int
    direct_tps: float  # median tokens/s, directly
    routed_tps: float  # median tokens/s, through the router
    ratio: float  # median of the per-round routed/direct ratios
    worst_ratio: float
    extra_ms: float  # median per-round routed minus direct wall time
    server_ratio: float  # median per-round ratio against each request's own server time

    @property
    def met(self) -> bool:
        return self.ratio >= GOAL


async def _timed(stream: rocm_infer.TokenStream, started: float) -> tuple[float, int, float]:
    """Wall seconds from ``started``, tokens, and llama-server's own time for them over the wall time."""
    completion = await stream
    seconds = time.perf_counter() - started
    metrics = completion.metrics
    return seconds, metrics.generated_tokens, (metrics.prefill_duration + metrics.decode_duration) / seconds


async def measure(model: rocm_infer.TextModel, router: rocm_infer.Router, tokens: int, rounds: int) -> Overhead:
    """``rounds`` paired rounds of ``tokens``-token requests, directly and through ``router``."""
    options: dict[str, Any] = {"max_tokens": tokens, "ignore_eos": True}
    direct_tps: list[float] = []
    routed_tps: list[float] = []
    ratios: list[float] = []
    extra: list[float] = []
    against_server: list[float] = []
    for r in range(rounds + 1):  # round 0 warms both paths up and is not counted
        wall: dict[str, float] = {}
        rate: dict[str, float] = {}
        share: dict[str, float] = {}
        for who in ("direct", "router") if r % 2 else ("router", "direct"):
            started = time.perf_counter()
            source = model if who == "direct" else router
            stream = source.generate("the quick brown fox", **options)
            seconds, generated, share[who] = await _timed(stream, started)
            wall[who], rate[who] = seconds, generated / seconds
        if r == 0:
            continue
        direct_tps.append(rate["direct"])
        routed_tps.append(rate["router"])
        ratios.append(rate["router"] / rate["direct"])
        extra.append((wall["router"] - wall["direct"]) * 1000)
        against_server.append(share["router"] / share["direct"])
    return Overhead(
        tokens=tokens,
        rounds=rounds,
        direct_tps=statistics.median(direct_tps),
        routed_tps=statistics.median(routed_tps),
        ratio=statistics.median(ratios),
        worst_ratio=min(ratios),
        extra_ms=statistics.median(extra),
        server_ratio=statistics.median(against_server),
    )


async def run(model_path: Path, *, sizes: tuple[int, ...] = (512, 16), rounds: int = 60) -> list[Overhead]:
    """The overhead for each request size in ``sizes``, on one llama-server for ``model_path``."""
    async with rocm_infer.load_model(model_path, threads=1, parallel_slots=1) as model:
        async with rocm_infer.Router([model]) as router:
            return [await measure(model, router, tokens, rounds) for tokens in sizes]


def report(figures: list[Overhead]) -> str:
    lines = [f"Router overhead, one endpoint, routed vs direct tokens/s (paired rounds; goal >= {GOAL}):"]
    for f in figures:
        lines.append(
            f"  {f.tokens:>4} tokens, {f.rounds} rounds: direct {f.direct_tps:,.0f} tok/s, "
            f"router {f.routed_tps:,.0f} tok/s, ratio {f.ratio:.3f} (worst {f.worst_ratio:.3f}), "
            f"{f.extra_ms:+.2f} ms per request - {'met' if f.met else 'NOT met'}; "
            f"against the server's own time {f.server_ratio:.3f}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 16], help="request sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness")
    args = parser.parse_args()
    sizes, rounds = ((8,), 2) if args.smoke else (tuple(args.tokens), args.rounds)
    figures = await run(Path(args.model) if args.model else demo_model(), sizes=sizes, rounds=rounds)
    print(report(figures))


if __name__ == "__main__":
    asyncio.run(main())
