"""Load on one real llama-server: many concurrent streams, some cancelled, nothing leaked.

The round itself lives in scripts/load_run.py, which `make soak` also runs for many rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from load_run import run_round

import rocm_infer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_200_streams_a_quarter_cancelled_leak_nothing(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, parallel_slots=4, context_len=8192) as model:
        # A first round grows what stays grown (pools, caches, the loop's internals); the
        # measured round must then end where it started.
        await run_round(model, streams=40, seed=1)
        report = await run_round(model, streams=200, cancel_fraction=0.25, seed=2)
    print(report.summary())
    assert report.problems == []
    assert (report.cancelled, report.completed) == (50, 150)
    assert report.tokens >= 150 * 32
    assert report.open_connections == 0 and report.busy_slots_after == 0
    assert report.rss_after <= report.rss_before * 1.10, report.summary()
