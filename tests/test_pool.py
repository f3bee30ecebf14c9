"""ModelPool against real llama-servers: three tiny models, loaded on demand, evicted by least
recent use and by memory, never while leased; single flight; keep_alive; a dead server loaded
again; a failed load; and a load of 300 concurrent requests with a quarter cancelled."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import llama_server_pids
from load_run import open_connections

import rocm_infer
from rocm_infer import LoadConfig, ModelPool, PoolBusyError
from rocm_infer.serving import pool as pool_module
from rocm_infer.serving.eviction import Plan, Resident, plan_load
from rocm_infer.serving.memory import estimate
from rocm_infer.tiny_model import make_tiny_model

pytestmark = pytest.mark.integration

SMALL = LoadConfig(context_len=1024, threads=1)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pool")
    return {name: make_tiny_model(folder / f"{name}.gguf", seed=seed) for seed, name in enumerate(("a", "b", "c"))}


def pool_of(three: dict[str, Path], **options: object) -> ModelPool:
    return ModelPool({name: (path, SMALL) for name, path in three.items()}, **options)  # type: ignore[arg-type]


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def held(pool: ModelPool) -> set[str]:
    return {m.name for m in pool.loaded()}


# -- the eviction policy, alone ----------------------------------------------------------------------


def test_idle_unpinned_models_go_first_least_recently_used_first() -> None:
    residents = [
        Resident("old", 100, last_used=1.0),
        Resident("busy", 100, leases=2, last_used=0.0),
        Resident("newer", 100, last_used=5.0),
        Resident("pinned", 100, pinned=True, last_used=0.5),
    ]
    assert plan_load(residents, 100, max_loaded=4) == Plan(("old",), True)
    assert plan_load(residents, 100, max_loaded=3) == Plan(("old", "newer"), True)
    # Only as many as it takes: by memory too.
    assert plan_load(residents, 150, budget=500) == Plan(("old",), True)
    assert plan_load(residents, 250, budget=500) == Plan(("old", "newer"), True)
    # Leased and pinned models are never unloaded: if that is not enough, wait and unload nothing.
    assert plan_load(residents, 100, max_loaded=2) == Plan((), False)
    assert plan_load(residents, 400, budget=500) == Plan((), False)
    assert plan_load([Resident("loading", 100, loading=True)], 100, max_loaded=1) == Plan((), False)
    # The machine's free memory counts, and an unloaded model gives its memory back.
    assert plan_load(residents, 150, free=100) == Plan(("old",), True)
    assert plan_load([], 10, max_loaded=1, budget=10, free=10) == Plan((), True)


def test_the_estimate_counts_weights_kv_cache_and_compute(three: dict[str, Path]) -> None:
    small, big = estimate(three["a"], 1024), estimate(three["a"], 8192)
    assert small.weights == three["a"].stat().st_size
    assert big.kv_cache == 8 * small.kv_cache > 0  # linear in the context
    assert big.total - small.total == big.kv_cache - small.kv_cache


def test_bad_pool_arguments_are_refused_at_once(three: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="max_loaded"):
        ModelPool({"a": three["a"]}, max_loaded=0)
    with pytest.raises(ValueError, match="keep_alive"):
        ModelPool({"a": three["a"]}, keep_alive=-1)
    with pytest.raises(TypeError, match="a pool model is"):
        ModelPool({"a": 42})
    with pytest.raises(ValueError, match="no models_dir"):
        ModelPool({"a": LoadConfig()})
    with pytest.raises(rocm_infer.ModelNotFoundError):
        ModelPool(models_dir="/nonexistent/folder")


# -- against real servers ----------------------------------------------------------------------------


@pytest.fixture
async def pool(three: dict[str, Path], no_leaked_servers: None) -> AsyncIterator[ModelPool]:
    async with pool_of(three, max_loaded=2, keep_alive=None, wait_timeout=30) as p:
        yield p


async def test_a_lease_loads_on_demand_and_the_model_stays_for_the_next(pool: ModelPool) -> None:
    assert pool.available() == ["a", "b", "c"] and held(pool) == set()
    async with pool.model("a") as model:
        assert isinstance(model, rocm_infer.TextModel)
        assert [(m.name, m.leases, m.idle_for) for m in pool.loaded()] == [("a", 1, None)]
        assert await model.generate("the cat", max_tokens=3).collect()
    (entry,) = pool.loaded()
    assert entry.leases == 0 and entry.idle_for is not None and entry.memory > 0
    async with pool.model("a") as again:
        assert again is model
    assert pool.loads == 1
    with pytest.raises(rocm_infer.ModelNotFoundError, match=r"the models are \['a', 'b', 'c'\]"):
        async with pool.model("d"):
            pass


async def test_the_least_recently_used_idle_model_is_evicted(pool: ModelPool) -> None:
    for name in ("a", "b"):
        await (pool.generate(name, "hello", max_tokens=2)).collect()
    a_pid = pool._entries["a"].model.server.pid  # type: ignore[union-attr]
    await pool.generate("c", "hello", max_tokens=2).collect()
    assert held(pool) == {"b", "c"} and not alive(a_pid)  # a was used least recently: its server is gone
    await pool.generate("b", "hello", max_tokens=2).collect()
    await pool.generate("a", "hello", max_tokens=2).collect()
    assert held(pool) == {"a", "b"} and pool.loads == 4


async def test_a_leased_model_is_never_evicted_and_a_request_waits_then_says_who_holds_what(
    three: dict[str, Path], no_leaked_servers: None
) -> None:
    async with pool_of(three, max_loaded=2, keep_alive=None, wait_timeout=0.5) as small_pool:
        async with small_pool.model("a"), small_pool.model("b"):
            with pytest.raises(PoolBusyError) as info:
                async with small_pool.model("c"):
                    pass
            assert "no room within wait_timeout=0.5s" in str(info.value)
            assert {(h.name, h.leases) for h in info.value.holders} == {("a", 1), ("b", 1)}
            assert info.value.name == "c" and held(small_pool) == {"a", "b"}
        # A waiter gets its room as soon as a lease ends.
        small_pool.wait_timeout = 30
        async with small_pool.model("a"):
            waiter = asyncio.create_task(small_pool.generate("c", "hi", max_tokens=2).collect())
            await asyncio.sleep(0.3)
            assert not waiter.done() or held(small_pool) == {"a", "c"}  # b was idle: it could go
            assert await waiter
        assert held(small_pool) == {"a", "c"}


async def test_fifty_first_requests_at_once_load_the_model_once(pool: ModelPool) -> None:
    texts = await asyncio.gather(*(pool.generate("a", f"p{i}", max_tokens=2).collect() for i in range(50)))
    assert len(texts) == 50 and all(texts) and pool.loads == 1


async def test_an_idle_model_is_unloaded_after_its_keep_alive(three: dict[str, Path], no_leaked_servers: None) -> None:
    specs = {
        "a": rocm_infer.ModelSpec(str(three["a"]), SMALL, keep_alive=0.3),
        "b": rocm_infer.ModelSpec(str(three["b"]), SMALL, keep_alive=0),
        "c": rocm_infer.ModelSpec(str(three["c"]), SMALL),
    }
    async with ModelPool(specs, keep_alive=None) as p:
        for name in "bca":  # a last: its keep_alive starts after the others have loaded
            await p.generate(name, "hi", max_tokens=2).collect()
        await asyncio.sleep(0.05)
        assert held(p) == {"a", "c"}  # keep_alive 0: gone when its last lease ended
        deadline = time.monotonic() + 5
        while "a" in held(p):
            assert time.monotonic() < deadline, "a outlived its keep_alive"
            await asyncio.sleep(0.02)
        assert held(p) == {"c"}  # None: forever


async def test_a_pinned_model_stays_when_room_is_needed(pool: ModelPool) -> None:
    await pool.load("a", pin=True)
    for name in ("b", "c", "b"):
        await pool.generate(name, "hi", max_tokens=2).collect()
    assert "a" in held(pool)
    await pool.unload("a")
    assert "a" not in held(pool)


async def test_a_model_whose_server_died_is_loaded_again_on_its_next_lease(pool: ModelPool) -> None:
    await pool.generate("a", "hi", max_tokens=2).collect()
    server = pool._entries["a"].model.server  # type: ignore[union-attr]
    assert server is not None and server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    await server.wait_exited(10)
    assert await pool.generate("a", "hello", max_tokens=3).collect()
    assert pool.loads == 2 and pool._entries["a"].model.server.pid != server.pid  # type: ignore[union-attr]


async def test_a_failed_load_raises_to_every_waiter_and_the_pool_goes_on(
    three: dict[str, Path], tmp_path: Path, no_leaked_servers: None
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    async with ModelPool({"broken": broken, "a": (three["a"], SMALL)}) as p:
        results = await asyncio.gather(*(p.generate("broken", "x").collect() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, rocm_infer.InvalidModelError) for r in results), results
        assert p.loads == 0 and held(p) == set()
        assert await p.generate("a", "hi", max_tokens=2).collect()


async def test_the_memory_budget_holds_at_every_moment(three: dict[str, Path], no_leaked_servers: None) -> None:
    async with pool_of(three, keep_alive=None) as probe:
        await probe.generate("a", "hi", max_tokens=2).collect()
        one = probe.loaded()[0].memory
    budget = int(one * 2.5)  # room for two of them
    async with pool_of(three, memory_budget=budget, keep_alive=None, wait_timeout=60) as p:
        samples: list[int] = []

        async def sample() -> None:
            while True:
                samples.append(p.memory_in_use())
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        try:
            for name in "abcabca":
                await p.generate(name, "hi", max_tokens=2).collect()
        finally:
            sampler.cancel()
        assert len(held(p)) == 2 and max(samples) <= budget
        assert p.loads >= 5


async def test_three_hundred_requests_a_quarter_cancelled_nothing_lost_nothing_left(
    three: dict[str, Path], server_binary: str, no_leaked_servers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    pids: set[int] = set()  # the servers requests were served by
    # Every server the pool started, leased or not: a load whose only waiter was cancelled
    # still completes (and counts), and may be evicted before any request uses it.
    started: set[int] = set()
    real_load_model = pool_module.load_model

    async def load_and_record(*args: Any, **kwargs: Any) -> Any:
        model = await real_load_model(*args, **kwargs)
        assert model.server is not None and model.server.pid is not None
        started.add(model.server.pid)
        return model

    monkeypatch.setattr(pool_module, "load_model", load_and_record)
    async with pool_of(three, max_loaded=2, keep_alive=0.2, wait_timeout=120) as p:
        over_max: list[int] = []

        async def one(i: int) -> str:
            async with p.model("abc"[i % 3]) as model:
                assert model.server is not None and model.server.pid is not None
                pids.add(model.server.pid)
                held_now = len(held(p))
                if held_now > 2:
                    over_max.append(held_now)
                return await model.generate(f"request {i}", max_tokens=6, ignore_eos=True).collect()

        tasks = [asyncio.create_task(one(i)) for i in range(300)]
        cancelled = set(rng.sample(range(300), 75))
        for i in sorted(cancelled):
            await asyncio.sleep(rng.random() * 0.01)
            tasks[i].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        done = [r for r in results if isinstance(r, str)]
        errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        assert not errors, errors[:3]
        assert len(done) + sum(isinstance(r, asyncio.CancelledError) for r in results) == 300
        assert len(done) >= 300 - 75 and all(done)
        assert not over_max
        assert p.loads == len(started) and pids <= started  # every load counted: one server each
        ports = [m.info.path for m in p.loaded()]
        assert ports is not None
        for entry in p._entries.values():
            if entry.model is not None and entry.model.server is not None and entry.model.server.port:
                assert open_connections(entry.model.server.port) == 0
    assert not llama_server_pids(server_binary) & started  # every server the pool started is gone
