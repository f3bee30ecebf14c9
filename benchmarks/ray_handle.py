"""Tokens/s through a Ray Serve DeploymentHandle, against direct ``generate``, paired per round.

    python benchmarks/ray_handle.py [MODEL.gguf] [--rounds N] [--tokens 512] [--batch-interval S]

Starts a local Ray cluster (loopback only, no dashboard, 2 CPUs) with one
:data:`~rocm_infer.integrations.ray.LlamaDeployment` replica, and loads the
same model here with the same settings. Each round generates ``--tokens``
tokens (``ignore_eos``) once directly and once through the handle
(:class:`~rocm_infer.integrations.ray.LlamaClient`), in alternating order,
each timed from the call to its last token; the round's figure is the
handle's tokens/s over the direct one's. Prints every round, then the
median ratio on the last line.
"""

from __future__ import annotations

import os

# Every Ray process binds 127.0.0.1 only: read by Ray when it is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import ray  # noqa: E402
from _model import demo_model  # noqa: E402
from ray import serve  # noqa: E402

import rocm_infer  # noqa: E402
from rocm_infer.integrations.ray import BATCH_INTERVAL, LlamaClient, build_app  # noqa: E402

PROMPT = "Once upon a time"
WARMUP_ROUNDS = 2


@dataclass(frozen=True, slots=True)
class Pair:
    """One round: tokens/s directly and through the handle, and how many items the handle stream had."""

    direct: float
    handle: float
    items: int

    @property
    def ratio(self) -> float:
        return self.handle / self.direct


async def direct_rate(model: rocm_infer.TextModel, tokens: int) -> float:
    started = time.perf_counter()
    received = 0
    async for _ in model.generate(PROMPT, max_tokens=tokens, ignore_eos=True):
        received += 1
    assert received == tokens, received
    return received / (time.perf_counter() - started)


async def handle_rate(client: LlamaClient, tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    received = items = 0
    async for batch in client.generate(PROMPT, max_tokens=tokens, ignore_eos=True):
        received += len(batch.tokens)
        items += 1
    assert received == tokens, received
    return received / (time.perf_counter() - started), items


async def measure(model_path: str, *, rounds: int, tokens: int, batch_interval: float, threads: int) -> list[Pair]:
    """``rounds`` paired rounds (after a warm-up), on a Serve app that must already be running."""
    settings = {"threads": threads, "context_len": tokens + 64, "parallel_slots": 1}
    app = build_app(model_path, name="bench", batch_interval=batch_interval, **settings)
    client = LlamaClient(serve.run(app, name="ray-handle-bench", route_prefix=None))
    pairs: list[Pair] = []
    async with rocm_infer.load_model(model_path, **settings) as model:
        for round_number in range(WARMUP_ROUNDS + rounds):
            if round_number % 2:
                handle, items = await handle_rate(client, tokens)
                direct = await direct_rate(model, tokens)
            else:
                direct = await direct_rate(model, tokens)
                handle, items = await handle_rate(client, tokens)
            if round_number >= WARMUP_ROUNDS:
                pairs.append(Pair(direct, handle, items))
    serve.delete("ray-handle-bench")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch-interval", type=float, default=BATCH_INTERVAL, help="seconds between items")
    parser.add_argument("--threads", type=int, default=1, help="llama-server threads, both servers")
    args = parser.parse_args()
    model_path = args.model or str(demo_model())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pairs = asyncio.run(
            measure(
                model_path,
                rounds=args.rounds,
                tokens=args.tokens,
                batch_interval=args.batch_interval,
                threads=args.threads,
            )
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    for i, pair in enumerate(pairs, 1):
        print(
            f"round {i:2d}: direct {pair.direct:7.0f} tokens/s, handle {pair.handle:7.0f} tokens/s "
            f"in {pair.items:3d} items, ratio {pair.ratio:.3f}"
        )
    ratios = sorted(pair.ratio for pair in pairs)
    print(
        f"handle/direct tokens/s at {args.tokens} tokens, {len(pairs)} paired rounds, "
        f"batch interval {args.batch_interval * 1000:g} ms: median {statistics.median(ratios):.3f} "
        f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f})"
    )


if __name__ == "__main__":
    main()
