"""Tokens/s through a Ray Serve DeploymentHandle, against direct ``generate``, paired per round.

    python benchmarks/ray_handle.py [MODEL.gguf] [--rounds N] [--tokens 512] [--batch-interval S]
                                    [--no-control]

Starts a local Ray cluster (loopback only, no dashboard, 2 CPUs) with one
:data:`~rocm_infer.integrations.ray.LlamaDeployment` replica, and loads the
same model here with the same settings. Each round generates ``--tokens``
tokens (``ignore_eos``) once directly and once through the handle
(:class:`~rocm_infer.integrations.ray.LlamaClient`), in alternating order,
each timed from the call to its last token; the round's figure is the
handle's tokens/s over the direct one's. The same ratio from the first
token to the last separates what the stream carries from what a call costs
once (the handle's route to a replica, the replica's request), shown as the
time to the first token.

Two figures take the noise of this machine out of the ratio. One
llama-server's decode rate varies by a third from one request to the next
here, whichever path reads it, so the ratio of two single streams does too.
*Against the server's own time* divides each stream's wall time by the time
its llama-server reports for the request (prefill + decode): what the path
adds, exactly, but not what its CPU takes from the server. The *control* is
a second direct model, loaded the same way and timed in the same rounds:
direct/direct, whose median shows how far from 1.00 the plain ratio strays
with nothing between the two.

The CPU each path spends per stream is the steadiest figure of all: for
the handle, the replica's process (the parent of its llama-server) and this
one; directly, this one. On 2 cores it is what a path takes from the
llama-servers. Prints every round, then the medians (and the CPU means) on
the last line.
"""

from __future__ import annotations

import os

# Every Ray process binds 127.0.0.1 only: read by Ray when it is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Coroutine  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
from _model import demo_model  # noqa: E402
from ray import serve  # noqa: E402

import rocm_infer  # noqa: E402
from rocm_infer.integrations.ray import BATCH_INTERVAL, LlamaClient, build_app  # noqa: E402
from rocm_infer.types import GenerateMetrics  # noqa: E402

PROMPT = "Once upon a time"
WARMUP_ROUNDS = 2


@dataclass(frozen=True, slots=True)
class Pair:
    """One round, directly and through the handle: tokens/s from the call to the last token, tokens/s
    from the first token to the last (what the stream carries), and how many items the handle sent."""

    direct: float
    handle: float
    items: int
    direct_streaming: float = 0.0
    handle_streaming: float = 0.0
    direct_first_ms: float = 0.0  # call -> first token
    handle_first_ms: float = 0.0
    direct_server: float = 0.0  # llama-server's own prefill + decode time over the call's wall time
    handle_server: float = 0.0
    control: float = 0.0  # tokens/s of a second direct model in the same round (0: none)
    direct_cpu_ms: float = 0.0  # this process's CPU for the direct stream
    handle_cpu_ms: float = 0.0  # this process's and the replica's CPU for the handle stream
    replica_cpu_ms: float = 0.0  # the replica's part of it

    @property
    def ratio(self) -> float:
        return self.handle / self.direct

    @property
    def streaming_ratio(self) -> float:
        return self.handle_streaming / self.direct_streaming

    @property
    def server_ratio(self) -> float:
        """The ratio with each stream's wall time measured against its llama-server's own time for it.

        A request's decode rate varies by a third from one to the next here
        (both servers alike); this removes that and keeps what each path
        adds, but not what its CPU takes from its server.
        """
        return self.handle_server / self.direct_server

    @property
    def control_ratio(self) -> float:
        """The second direct model's tokens/s over the first's: the plain ratio with nothing between."""
        return self.control / self.direct


@dataclass(frozen=True, slots=True)
class Rate:
    """One stream: tokens/s from the call, tokens/s from the first token, ms to the first token, items."""

    from_call: float
    streaming: float
    first_ms: float
    items: int
    server: float  # llama-server's prefill + decode time over the wall time from the call
    cpu_ms: float = 0.0  # the CPU the path spent on it: this process's, and a replica's
    replica_cpu_ms: float = 0.0


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): Linux only."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """The user + system CPU seconds process ``pid`` has used."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parent_pid(pid: int) -> int:
    return int(_stat(pid)[1])


async def with_cpu(rate: Coroutine[Any, Any, Rate], replica: int | None = None) -> Rate:
    """``rate`` with the CPU this process (and the ``replica`` process) spent while it ran."""
    own, theirs = time.process_time(), cpu_seconds(replica) if replica else 0.0
    result = await rate
    replica_cpu = cpu_seconds(replica) - theirs if replica else 0.0
    cpu = time.process_time() - own + replica_cpu
    return dataclasses.replace(result, cpu_ms=cpu * 1000, replica_cpu_ms=replica_cpu * 1000)


def _rate(
    started: float, first: float, received: int, first_received: int, items: int, metrics: GenerateMetrics | None
) -> Rate:
    ended = time.perf_counter()
    assert metrics is not None
    return Rate(
        received / (ended - started),
        (received - first_received) / (ended - first),
        (first - started) * 1000,
        items,
        (metrics.prefill_duration + metrics.decode_duration) / (ended - started),
    )


async def direct_rate(model: rocm_infer.TextModel, tokens: int) -> Rate:
    started = time.perf_counter()
    first = 0.0
    received = 0
    stream = model.generate(PROMPT, max_tokens=tokens, ignore_eos=True)
    async for _ in stream:
        first = first or time.perf_counter()
        received += 1
    assert received == tokens, received
    return _rate(started, first, received, 1, received, stream.metrics)


async def handle_rate(client: LlamaClient, tokens: int) -> Rate:
    started = time.perf_counter()
    first = 0.0
    received = items = first_received = 0
    metrics = None
    async for batch in client.generate(PROMPT, max_tokens=tokens, ignore_eos=True):
        if not first:
            first, first_received = time.perf_counter(), len(batch.tokens)
        received += len(batch.tokens)
        items += 1
        metrics = batch.metrics or metrics
    assert received == tokens, received
    return _rate(started, first, received, first_received, items, metrics)


async def measure(
    model_path: str,
    *,
    rounds: int,
    tokens: int,
    batch_interval: float,
    threads: int,
    control: bool = True,
) -> list[Pair]:
    """``rounds`` paired rounds (after a warm-up), on a local Ray cluster that must already be running.

    With ``control``, a second direct model streams in every round too (see the module's docs).
    """
    settings = {"threads": threads, "context_len": tokens + 64, "parallel_slots": 1}
    app = build_app(model_path, name="bench", batch_interval=batch_interval, **settings)
    client = LlamaClient(serve.run(app, name="ray-handle-bench", route_prefix=None))
    server_pid = (await client.status()).pid
    assert server_pid is not None
    replica = parent_pid(server_pid)  # the replica's process started its llama-server
    pairs: list[Pair] = []
    async with contextlib.AsyncExitStack() as models:
        direct_models = {
            path: await models.enter_async_context(rocm_infer.load_model(model_path, **settings))
            for path in (("direct", "control") if control else ("direct",))
        }
        order = ["direct", "handle", "control"] if control else ["direct", "handle"]
        for round_number in range(WARMUP_ROUNDS + rounds):
            # Each path goes first, second and last in turn.
            shift = round_number % len(order)
            rates: dict[str, Rate] = {}
            for path in order[shift:] + order[:shift]:
                if path == "handle":
                    rates[path] = await with_cpu(handle_rate(client, tokens), replica)
                else:
                    rates[path] = await with_cpu(direct_rate(direct_models[path], tokens))
            direct, handle = rates["direct"], rates["handle"]
            if round_number >= WARMUP_ROUNDS:
                pairs.append(
                    Pair(
                        direct.from_call,
                        handle.from_call,
                        handle.items,
                        direct.streaming,
                        handle.streaming,
                        direct.first_ms,
                        handle.first_ms,
                        direct.server,
                        handle.server,
                        rates["control"].from_call if "control" in rates else 0.0,
                        direct.cpu_ms,
                        handle.cpu_ms,
                        handle.replica_cpu_ms,
                    )
                )
    serve.delete("ray-handle-bench")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch-interval", type=float, default=BATCH_INTERVAL, help="seconds between items")
    parser.add_argument("--threads", type=int, default=1, help="llama-server threads, both servers")
    parser.add_argument("--no-control", action="store_true", help="no second direct model (see above)")
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
                control=not args.no_control,
            )
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    for i, pair in enumerate(pairs, 1):
        print(
            f"round {i:2d}: direct {pair.direct:7.0f} tokens/s, handle {pair.handle:7.0f} tokens/s "
            f"in {pair.items:3d} items, ratio {pair.ratio:.3f}; first token to last {pair.streaming_ratio:.3f}; "
            f"first token after {pair.direct_first_ms:.1f} / {pair.handle_first_ms:.1f} ms; "
            f"against the server's own time {pair.server_ratio:.3f}; "
            f"CPU {pair.direct_cpu_ms:.0f} / {pair.handle_cpu_ms:.0f} ms"
            + (f"; control (direct/direct) {pair.control_ratio:.3f}" if pair.control else "")
        )
    ratios = sorted(pair.ratio for pair in pairs)
    print(
        f"handle/direct tokens/s at {args.tokens} tokens, {len(pairs)} paired rounds, "
        f"batch interval {args.batch_interval * 1000:g} ms: median {statistics.median(ratios):.3f} "
        f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f}); first token to last: "
        f"median {statistics.median(p.streaming_ratio for p in pairs):.3f}; first token after "
        f"{statistics.median(p.direct_first_ms for p in pairs):.1f} ms directly, "
        f"{statistics.median(p.handle_first_ms for p in pairs):.1f} ms through the handle; against the "
        f"server's own time: median {statistics.median(p.server_ratio for p in pairs):.3f}"
        + (
            f"; control (direct/direct): median {statistics.median(p.control_ratio for p in pairs):.3f}"
            if pairs[0].control
            else ""
        )
        + f"; CPU per stream (mean): directly {statistics.fmean(p.direct_cpu_ms for p in pairs):.1f} ms, "
        f"through the handle {statistics.fmean(p.handle_cpu_ms for p in pairs):.1f} ms (the replica "
        f"{statistics.fmean(p.replica_cpu_ms for p in pairs):.1f})"
    )


if __name__ == "__main__":
    main()
