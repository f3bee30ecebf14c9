"""Measurements 12 and on: the rows of other benchmark scripts, for ``make bench``'s report.

    python benchmarks/extra_rows.py NAME [--smoke]

Runs the benchmark script ``NAME`` (one of :data:`ADAPTERS`, e.g.
``router_overhead``) through its own ``run()`` or ``measure()``, as its
``main()`` would, and prints its figures as a JSON list of report rows on
stdout (each an object with the fields of ``bench.Row``), and nothing else:
what the script and the libraries it runs print (Ray Serve's log lines) goes
to stderr.
``bench.py`` runs this once per script that is there, each in a process of
its own (Ray, for one, is best started and stopped in a process that does
nothing else). A new script is wired in by adding an adapter here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _model import demo_model

Rows = list[dict[str, Any]]


def router_overhead(model: Path, smoke: bool) -> Rows:
    module = importlib.import_module("router_overhead")
    sizes, rounds = ((8,), 2) if smoke else ((512, 16), 60)
    figures = asyncio.run(module.run(model, sizes=sizes, rounds=rounds))
    return [
        {
            "measurement": "12. Router overhead",
            "what": f"{f.tokens} tokens, one endpoint through Router / directly ({f.rounds} paired rounds)",
            "figure": f"{f.routed_tps:,.0f} tok/s",
            "anchor": f"directly {f.direct_tps:,.0f} tok/s",
            "ratio": f"{f.ratio:.3f}",
            "goal": f">= {module.GOAL}",
            "met": f.met,
        }
        for f in figures
    ] + [
        {
            "measurement": "12. Router overhead",
            "what": f"{f.tokens} tokens, each request against its llama-server's own time (what the router adds)",
            "figure": f"{f.server_ratio:.3f}",
        }
        for f in figures
    ]


def router_affinity(model: Path, smoke: bool) -> Rows:
    module = importlib.import_module("router_affinity")
    shape = {"endpoints": 2, "conversations": 2, "turns": 2} if smoke else {}
    figures = {f.policy: f for f in asyncio.run(module.run(model, **shape))}
    affinity, rotated = figures["prefix_affinity"], figures["round_robin"]
    return [
        {
            "measurement": "13. Router affinity",
            "what": f"prompt tokens reused from the KV cache, {f.policy} ({f.turns} turns after the first)",
            "figure": f"{f.reused:.1%}",
            "anchor": "" if f is rotated else f"round_robin {rotated.reused:.1%}",
            "ratio": "" if f is rotated else f"{f.cached_tokens / max(1, rotated.cached_tokens):.2f}x",
        }
        for f in (affinity, rotated)
    ]


def ray_handle(model: Path, smoke: bool) -> Rows:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as the script itself sets it
    module = importlib.import_module("ray_handle")
    import ray
    from ray import serve

    rounds, tokens = (2, 16) if smoke else (100, 512)  # one round moves by a third here: 100 for +-2%
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pairs = asyncio.run(
            module.measure(str(model), rounds=rounds, tokens=tokens, batch_interval=module.BATCH_INTERVAL, threads=1)
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    ratios = sorted(p.ratio for p in pairs)
    median = statistics.median(ratios)
    direct = statistics.median(p.direct for p in pairs)
    handle = statistics.median(p.handle for p in pairs)
    direct_cpu = statistics.fmean(p.direct_cpu_ms for p in pairs)
    handle_cpu = statistics.fmean(p.handle_cpu_ms for p in pairs)
    return [
        {
            "measurement": "14. Ray Serve handle",
            "what": f"{tokens} tokens through a DeploymentHandle / directly ({len(pairs)} paired rounds)",
            "figure": f"{handle:,.0f} tok/s",
            "anchor": f"directly {direct:,.0f} tok/s",
            "ratio": f"{median:.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f})",
            "goal": ">= 0.95",
            "met": median >= 0.95,
        },
        {
            "measurement": "14. Ray Serve handle",
            "what": f"{tokens} tokens, first token to last, through a DeploymentHandle / directly",
            "figure": f"{statistics.median(p.handle_streaming for p in pairs):,.0f} tok/s",
            "anchor": f"directly {statistics.median(p.direct_streaming for p in pairs):,.0f} tok/s",
            "ratio": f"{statistics.median(p.streaming_ratio for p in pairs):.3f}",
        },
        {
            "measurement": "14. Ray Serve handle",
            "what": f"{tokens} tokens, each stream against its llama-server's own time for it (what the path adds)",
            "figure": f"{statistics.median(p.server_ratio for p in pairs):.3f}",
        },
        {
            "measurement": "14. Ray Serve handle",
            "what": "control: a second direct model / the first, same rounds (how far the plain ratio strays)",
            "figure": f"{statistics.median(p.control_ratio for p in pairs):.3f}",
            "anchor": f"min {min(p.control_ratio for p in pairs):.3f}, max {max(p.control_ratio for p in pairs):.3f}",
        },
        {
            "measurement": "14. Ray Serve handle",
            "what": f"CPU per {tokens}-token stream: the replica's and the caller's / the caller's directly (mean)",
            "figure": f"{handle_cpu:.1f} ms",
            "anchor": f"directly {direct_cpu:.1f} ms; the replica's part "
            f"{statistics.fmean(p.replica_cpu_ms for p in pairs):.1f} ms",
            "ratio": f"{handle_cpu / direct_cpu:.2f}",
        },
        {
            "measurement": "14. Ray Serve handle",
            "what": "call to first token through a DeploymentHandle",
            "figure": f"{statistics.median(p.handle_first_ms for p in pairs):.1f} ms",
            "anchor": f"directly {statistics.median(p.direct_first_ms for p in pairs):.1f} ms",
        },
    ]


def pool_latency(model: Path, smoke: bool) -> Rows:
    module = importlib.import_module("pool_latency")
    figure = asyncio.run(module.run(model, rounds=2 if smoke else 10))
    return [
        {
            "measurement": "15. Pool cold start",
            "what": f"ModelPool request -> model ready, less llama-server's own start ({figure.rounds} rounds)",
            "figure": f"{figure.overhead_ms:.1f} ms",
            "anchor": f"first token {figure.total_ms:.0f} ms, llama-server's start {figure.server_ms:.0f} ms",
            "goal": f"<= {module.GOAL_MS:g} ms",
            "met": figure.overhead_ms <= module.GOAL_MS,
        }
    ]


def serve_overhead(model: Path, smoke: bool) -> Rows:
    module = importlib.import_module("serve_overhead")
    shape = {"streams": (1, 2), "tokens": 8, "rounds": 1} if smoke else {}
    return [
        {
            "measurement": "16. Serve overhead",
            "what": f"{f.streams} streams of {f.tokens} tokens, rocm-infer serve / straight to llama-server "
            f"({f.rounds} paired rounds)",
            "figure": f"{f.served_tps:,.0f} tok/s",
            "anchor": f"directly {f.direct_tps:,.0f} tok/s",
            "ratio": f"{f.ratio:.3f} (worst {f.worst_ratio:.3f})",
            "goal": f">= {module.GOAL}",
            "met": f.met,
        }
        for f in asyncio.run(module.run(model, **shape))
    ]


def speculative(model: Path, smoke: bool) -> Rows:
    module = importlib.import_module("speculative")
    figures = asyncio.run(module.run(tokens=8, rounds=1, smoke=True) if smoke else module.run())
    plain = {f.target: f for f in figures if f.name == "no speculation"}
    rows: Rows = []
    for f in figures:
        row = {"measurement": "17. Speculative decoding", "what": f"target {f.target}: {f.name}"}
        row["figure"] = f"{f.tokens_per_second:,.1f} tok/s"
        if f.name != "no speculation":
            row["anchor"] = f"no speculation {plain[f.target].tokens_per_second:,.1f} tok/s"
            accepted = f", {f.accepted}/{f.drafted} accepted" if f.drafted else ""
            row["ratio"] = f"{f.ratio:.2f}x{accepted}{'' if f.same_text else ', another text'}"
        rows.append(row)
    return rows


def logprobs_cost(model: Path, smoke: bool) -> Rows:
    module = importlib.import_module("logprobs_cost")
    costs = asyncio.run(module.run(model, tokens=16, rounds=1) if smoke else module.run(model))
    off = costs[0]
    return [
        {
            "measurement": "18. Logprobs",
            "what": f"generate, logprobs {c.setting}",
            "figure": f"{c.tokens_per_second:,.0f} tok/s",
            "anchor": "" if c is off else f"off {off.tokens_per_second:,.0f} tok/s",
            "ratio": "" if c is off else f"{c.ratio:.3f}",
        }
        for c in costs
    ]


ADAPTERS: dict[str, Callable[[Path, bool], Rows]] = {
    "router_overhead": router_overhead,
    "router_affinity": router_affinity,
    "ray_handle": ray_handle,
    "pool_latency": pool_latency,
    "serve_overhead": serve_overhead,
    "speculative": speculative,
    "logprobs_cost": logprobs_cost,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("name", choices=sorted(ADAPTERS))
    parser.add_argument("--model", type=Path, help="a GGUF model (default: the tiny demo model)")
    parser.add_argument("--smoke", action="store_true", help="the script's smallest sizes")
    args = parser.parse_args()
    # stdout carries the JSON alone: anything else written to it, by Python or by a child process
    # (Ray's workers inherit the descriptor), goes to stderr.
    sys.stdout.flush()
    rows_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    rows = ADAPTERS[args.name](args.model or demo_model(), args.smoke)
    rows_out.write(json.dumps(rows) + "\n")
    rows_out.close()


if __name__ == "__main__":
    main()
