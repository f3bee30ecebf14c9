"""Prompt-cache reuse of multi-turn conversations through a Router: prefix_affinity against round_robin.

    python benchmarks/router_affinity.py [MODEL.gguf] [--endpoints N] [--conversations N] [--turns N] [--smoke]

For each policy, fresh llama-servers (two slots, one thread each) serve the
same conversations through ``Router(servers, policy)``: they run side by
side, each turn after the one before (the history grows by the reply and a
new user message), each conversation with replies of its own length so
that they drift apart in time as real ones do. The figures are llama-server's
own: ``cache_n``, the prompt tokens it reused from its KV cache
(``stream.metrics.cached_tokens``), over the prompt tokens of every turn
after the first (a first turn has nothing to reuse).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _model import demo_model

import rocm_infer

POLICIES = ("prefix_affinity", "round_robin")
WORDS = "the sea ships harbour wind sail rope deck storm island light tide".split()


@dataclass(frozen=True, slots=True)
class CacheUse:
    """One policy's figures over every turn after the first."""

    policy: str
    turns: int  # turns counted (every conversation's, after its first)
    prompt_tokens: int
    cached_tokens: int  # llama-server's cache_n, summed
    mean_ttft_ms: float
    seconds: float  # the whole run, first turn included

    @property
    def reused(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


async def _conversation(router: rocm_infer.Router, n: int, turns: int) -> list[rocm_infer.GenerateMetrics]:
    history: list[Any] = [{"role": "system", "content": f"You are assistant number {n}. Answer in a few words."}]
    metrics: list[rocm_infer.GenerateMetrics] = []
    for turn in range(turns):
        words = " ".join(WORDS[(n + turn + i) % len(WORDS)] for i in range(8))
        history.append({"role": "user", "content": f"Question {turn}: what do you know of {words}?"})
        # Replies of a length of the conversation's own, so that conversations drift apart in time.
        reply = await router.chat(history, max_tokens=16 + 6 * (n % 5), ignore_eos=True)
        metrics.append(reply.metrics)
        history.append(reply.message)
    return metrics


async def measure(model: Path, policy: str, *, endpoints: int, conversations: int, turns: int) -> CacheUse:
    """Run the conversations through ``endpoints`` fresh servers under ``policy``."""
    async with contextlib.AsyncExitStack() as stack:
        servers = await asyncio.gather(
            *(rocm_infer.load_model(model, threads=1, parallel_slots=2, context_len=8192) for _ in range(endpoints))
        )
        for server in servers:
            stack.push_async_callback(server.close)
        router = await stack.enter_async_context(rocm_infer.Router(servers, policy))
        started = time.perf_counter()
        runs = await asyncio.gather(*(_conversation(router, n, turns) for n in range(conversations)))
        seconds = time.perf_counter() - started
    later = [m for run in runs for m in run[1:]]
    return CacheUse(
        policy=policy,
        turns=len(later),
        prompt_tokens=sum(m.prompt_tokens for m in later),
        cached_tokens=sum(m.cached_tokens for m in later),
        mean_ttft_ms=statistics.mean(m.time_to_first_token for m in later) * 1000 if later else 0.0,
        seconds=seconds,
    )


async def run(model: Path, *, endpoints: int = 3, conversations: int = 9, turns: int = 6) -> list[CacheUse]:
    """Both policies' figures, on the same conversations."""
    return [
        await measure(model, policy, endpoints=endpoints, conversations=conversations, turns=turns)
        for policy in POLICIES
    ]


def report(figures: list[CacheUse], *, endpoints: int, conversations: int, turns: int) -> str:
    lines = [
        f"Prompt-cache reuse (llama-server cache_n), {conversations} conversations x {turns} turns "
        f"on {endpoints} endpoints, turns after the first:"
    ]
    for f in figures:
        lines.append(
            f"  {f.policy:<16} cache_n {f.cached_tokens:>6} of {f.prompt_tokens:>6} prompt tokens "
            f"({f.reused:6.1%}), {f.cached_tokens / max(1, f.turns):6.1f} per turn, "
            f"mean TTFT {f.mean_ttft_ms:5.1f} ms, {f.seconds:.1f} s in all"
        )
    by_policy = {f.policy: f for f in figures}
    affinity, rotated = by_policy.get("prefix_affinity"), by_policy.get("round_robin")
    if affinity is not None and rotated is not None and rotated.cached_tokens:
        lines.append(f"  prefix_affinity reuses {affinity.cached_tokens / rotated.cached_tokens:.2f}x round_robin's")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=9)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="two conversations of two turns, to check the harness")
    args = parser.parse_args()
    shape = (
        {"endpoints": 2, "conversations": 2, "turns": 2}
        if args.smoke
        else {
            "endpoints": args.endpoints,
            "conversations": args.conversations,
            "turns": args.turns,
        }
    )
    figures = await run(Path(args.model) if args.model else demo_model(), **shape)
    print(report(figures, **shape))


if __name__ == "__main__":
    asyncio.run(main())
