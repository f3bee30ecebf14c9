"""What log-probabilities cost: streaming with ``logprobs`` off, 0 (the chosen token's) and 5, paired.

    python benchmarks/logprobs_cost.py [MODEL.gguf] [--rounds N] [--tokens 512] [--smoke]

One llama-server (one slot, one thread). Each round streams ``--tokens``
tokens (``ignore_eos``) with ``generate`` under each setting, in rotating
order, and records the tokens/s the client saw (first token to last); the
figure for a setting is the median of its per-round ratios to ``logprobs``
off in the same round. Off sends nothing extra (``n_probs`` is only set when
asked), so its cost is none by construction; on, llama-server computes the
candidates and the client parses them for every token.
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

PROMPT = "Once upon a time"
SETTINGS: dict[str, int | None] = {"off": None, "0 (the token's own)": 0, "5 candidates": 5}


@dataclass(frozen=True, slots=True)
class Cost:
    setting: str
    tokens_per_second: float  # median, as the client saw them
    ratio: float  # median per-round ratio to logprobs off


async def _rate(model: rocm_infer.TextModel, tokens: int, logprobs: int | None) -> float:
    first = last = 0.0
    received = 0
    async for token in model.generate(PROMPT, max_tokens=tokens, ignore_eos=True, logprobs=logprobs):
        last = time.perf_counter()
        first = first or last
        received += 1
        if logprobs is not None:
            assert token.logprob is not None  # the setting really reached the server
    return (received - 1) / (last - first)


async def run(model_path: Path, *, tokens: int = 512, rounds: int = 10) -> list[Cost]:
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    ratios: dict[str, list[float]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    async with rocm_infer.load_model(model_path, threads=1, parallel_slots=1) as model:
        await _rate(model, 8, None)  # warm up
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            rate = {name: await _rate(model, tokens, SETTINGS[name]) for name in order}
            for name in names:
                rates[name].append(rate[name])
                ratios[name].append(rate[name] / rate["off"])
    return [Cost(name, statistics.median(rates[name]), statistics.median(ratios[name])) for name in names]


def report(costs: list[Cost]) -> str:
    lines = ["generate with logprobs, tokens/s the client saw (paired per round with logprobs off):"]
    lines += [f"  {c.setting}: {c.tokens_per_second:,.0f} tok/s ({c.ratio:.3f} of off)" for c in costs]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness")
    args = parser.parse_args()
    path = Path(args.model) if args.model else demo_model()
    costs = await (run(path, tokens=16, rounds=1) if args.smoke else run(path, tokens=args.tokens, rounds=args.rounds))
    print(report(costs))


if __name__ == "__main__":
    asyncio.run(main())
