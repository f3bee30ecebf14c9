"""Ray Serve: LlamaDeployment replicas of the tiny model on a real local Ray cluster this module starts.

Two applications share one Serve instance: "llm", two replicas, for streaming through the
handle and over HTTP and for replacing a replica whose llama-server died; "one", a single
replica, whose status calls always reach the replica that streams, for cancellation.
"""

from __future__ import annotations

import os

# Every Ray process binds 127.0.0.1 only (Ray reads this when it is imported; see docs/scaling.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import asyncio  # noqa: E402
import pickle  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import openai  # noqa: E402
import pytest  # noqa: E402
import pytest_asyncio  # noqa: E402
from conftest import llama_server_pids  # noqa: E402

import rocm_infer  # noqa: E402
from rocm_infer.types import GenerateMetrics, Token, TokenLogprob, ToolCall  # noqa: E402

with warnings.catch_warnings():
    # Ray Serve's own pydantic models use features pydantic has deprecated: Ray's to fix, not a failure here.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ray
    from ray import serve

    from rocm_infer.integrations.ray import LlamaClient, ReplicaStatus, TokenBatch, build_app

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time"
# Long enough that a stream nobody stops runs for seconds: context for it in one slot ("one").
LONG = 8000
# Serve checks "llm"'s replicas this often: long enough that a broken replica still takes
# requests for a moment after its llama-server died, which the retry test needs.
LLM_HEALTH_PERIOD = 3.0


@dataclass(frozen=True)
class Cluster:
    llm: LlamaClient  # two replicas
    one: LlamaClient  # one replica, one slot
    url: str  # Serve's HTTP proxy


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def cluster(tiny_model_path: Path, server_binary: str) -> Iterator[Cluster]:
    before = llama_server_pids(server_binary)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # Three replicas on two CPUs: each reserves half of one (llama-server runs one thread).
        small = {"threads": 1, "context_len": LONG + 192, "num_cpus": 0.5, "batch_interval": 0.02}
        llm = serve.run(
            build_app(
                tiny_model_path,
                name="tiny",
                num_replicas=2,
                parallel_slots=2,
                health_check_period_s=LLM_HEALTH_PERIOD,
                **small,
            ),
            name="llm",
            route_prefix="/llm",
        )
        one = serve.run(
            build_app(tiny_model_path, name="tiny", parallel_slots=1, health_check_period_s=1.0, **small),
            name="one",
            route_prefix="/one",
        )
        yield Cluster(LlamaClient(llm), LlamaClient(one), f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()
    # Every replica stopped its llama-server with it.
    deadline = time.monotonic() + 30
    while llama_server_pids(server_binary) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not llama_server_pids(server_binary) - before


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def expected(tiny_model_path: Path) -> tuple[rocm_infer.Completion, str]:
    """What the model says to PROMPT (64 tokens) and to one chat message, loaded directly."""
    async with rocm_infer.load_model(tiny_model_path, threads=1, context_len=1024) as model:
        completion = await model.generate(PROMPT, max_tokens=64)
        chat = await model.chat([{"role": "user", "content": "hi"}], max_tokens=16).collect()
    return completion, chat


async def collect(batches: AsyncIterator[TokenBatch]) -> list[TokenBatch]:
    return [batch async for batch in batches]


async def replicas(client: LlamaClient, count: int, within: float = 60.0) -> dict[str, ReplicaStatus]:
    """The status of ``count`` distinct healthy replicas, asking until Serve has routed to each."""
    seen: dict[str, ReplicaStatus] = {}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = await client.status()
        if status.error is None:
            seen[status.replica] = status
        else:
            seen.pop(status.replica, None)
        if len(seen) >= count:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {sorted(seen)} answered within {within}s")


async def wait_idle(client: LlamaClient, within: float) -> float:
    """Seconds until the (one) replica reports no busy slot; fails after ``within``."""
    started = time.monotonic()
    while (await client.status()).busy_slots:
        assert time.monotonic() - started < within, "llama-server is still generating"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# -- the handle -------------------------------------------------------------------------------------


async def test_a_handle_stream_says_what_generate_says_in_batches_of_several_tokens(
    cluster: Cluster, expected: tuple[rocm_infer.Completion, str]
) -> None:
    completion, _ = expected
    batches = await collect(cluster.llm.generate(PROMPT, max_tokens=64))
    ids = [i for batch in batches for i in batch.ids]
    assert ids == [token.id for token in completion.tokens]
    assert "".join(batch.text for batch in batches) == completion.text
    last = batches[-1]
    assert last.done and last.finish_reason == "length" and not any(b.done for b in batches[:-1])
    assert last.metrics is not None and last.metrics.generated_tokens == 64
    # Coalesced: the 20 ms interval of these replicas puts every token that arrived meanwhile in one item.
    assert len(batches) <= 32, [len(b.tokens) for b in batches]
    arrived = [t for batch in batches for t in batch.arrived]
    assert len(arrived) == 64 and arrived == sorted(arrived) and arrived[0] > 0
    assert all(batch.tokens for batch in batches[:-1]) and len({b.replica for b in batches}) == 1
    # Ray runs its workers at niceness 15; the replicas, and their llama-servers, not below this process.
    status = await cluster.llm.status()
    assert status.pid is not None and niceness(status.pid) <= niceness(os.getpid())


async def test_a_chat_through_the_handle_and_over_http_say_what_chat_says(
    cluster: Cluster, expected: tuple[rocm_infer.Completion, str]
) -> None:
    _, chat = expected
    messages = [{"role": "user", "content": "hi"}]
    batches = await collect(cluster.llm.chat(messages, max_tokens=16))
    assert "".join(b.text for b in batches) == chat and batches[-1].finish_reason == "length"
    async with openai.AsyncOpenAI(base_url=f"{cluster.url}/llm/v1", api_key="unused", max_retries=0) as client:
        assert [m.id for m in (await client.models.list()).data] == ["tiny"]
        stream = await client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=16,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_cancelling_a_handle_stream_stops_llama_server_generating(cluster: Cluster) -> None:
    started = time.monotonic()
    received = 0
    stream = cluster.one.generate(PROMPT, max_tokens=LONG, ignore_eos=True)
    async for batch in stream:
        received += len(batch.tokens)
        if received >= 64:
            assert (await cluster.one.status()).busy_slots == 1  # it is generating for this stream
            break
    await stream.aclose()
    rate = received / (time.monotonic() - started)
    idle_after = await wait_idle(cluster.one, within=10)
    # Stopped, not finished: the rest of the stream would have taken far longer.
    assert idle_after < (LONG - received) / rate / 4, (idle_after, rate)


async def test_a_caller_task_cancelled_mid_stream_stops_llama_server_generating(cluster: Cluster) -> None:
    first = asyncio.Event()

    async def read() -> None:
        async for _ in cluster.one.generate(PROMPT, max_tokens=LONG, ignore_eos=True):
            first.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(first.wait(), 30)
    assert (await cluster.one.status()).busy_slots == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_idle(cluster.one, within=10) < 2.0


async def test_an_http_client_that_disconnects_stops_llama_server_generating(cluster: Cluster) -> None:
    async with openai.AsyncOpenAI(base_url=f"{cluster.url}/one/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "tell me a story"}],
            max_tokens=LONG - 64,
            stream=True,
        )
        chunks = 0
        async for _ in stream:
            chunks += 1
            if chunks == 32:
                break
        assert (await cluster.one.status()).busy_slots == 1
        await stream.close()
    assert await wait_idle(cluster.one, within=10) < 2.0


# -- a replica whose llama-server dies --------------------------------------------------------------


async def test_a_dead_llama_server_fails_its_stream_and_serve_replaces_its_replica(
    cluster: Cluster, expected: tuple[rocm_infer.Completion, str]
) -> None:
    completion, _ = expected
    before = await replicas(cluster.llm, 2)
    # Mid-stream: nothing is retried after the first token; the caller hears of the crash.
    with pytest.raises(rocm_infer.ServerExitedError) as crashed:
        async for batch in cluster.llm.generate(PROMPT, max_tokens=3000, ignore_eos=True):
            victim = before[batch.replica]
            if victim.pid is not None and alive(victim.pid):
                os.kill(victim.pid, signal.SIGKILL)
    assert crashed.value.returncode == -signal.SIGKILL
    # Before the first token: sent again until a replica that can serve takes it. Serve picks
    # between the two replicas by load, so requests go on until one has gone to the broken one.
    retries = cluster.llm.retries
    served_by: set[str] = set()
    for _ in range(20):
        results = await asyncio.gather(*(collect(cluster.llm.generate(PROMPT, max_tokens=64)) for _ in range(2)))
        for batches in results:
            assert [i for b in batches for i in b.ids] == [t.id for t in completion.tokens]
            served_by |= {b.replica for b in batches}
        if cluster.llm.retries > retries:
            break
    assert cluster.llm.retries > retries, "no request reached the broken replica"
    assert victim.replica not in served_by
    # Its health check failed, so Serve stopped it (and its dead server was reaped) and started another.
    after = await replicas(cluster.llm, 2)
    assert victim.replica not in after and victim.pid not in {s.pid for s in after.values()}
    assert victim.pid is not None and not alive(victim.pid)


# -- without a cluster ------------------------------------------------------------------------------


def test_build_app_checks_the_load_options_and_sets_gpus_and_autoscaling(tiny_model_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown LoadConfig option"):
        build_app(tiny_model_path, context_size=512)
    app = build_app(
        tiny_model_path, num_cpus=2, num_gpus=1, resources={"amd_gpu": 1}, autoscaling_config={"max_replicas": 4}
    )
    deployment = app._bound_deployment  # what serve.run deploys
    assert deployment.ray_actor_options == {
        "num_cpus": 2,
        "num_gpus": 1,
        "resources": {"amd_gpu": 1},
        "runtime_env": {"env_vars": {"RAY_worker_niceness": "0"}},
    }
    assert deployment._deployment_config.autoscaling_config.max_replicas == 4
    assert build_app(tiny_model_path, num_replicas=3)._bound_deployment.num_replicas == 3


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle"])
def test_a_token_batch_pickles_as_columns_and_comes_back_whole(pickler: str) -> None:
    # Ray pickles every item of a handle stream with cloudpickle: TokenBatch takes itself apart
    # into plain columns and rebuilds every Token, kinds and logprobs included.
    module: Any = pickle if pickler == "pickle" else ray.cloudpickle
    plain = TokenBatch((Token(1, "Once"), Token(2, " upon")), (0.01, 0.02), replica="r1")
    mixed = TokenBatch(
        (
            Token(3, "hm", "reasoning"),
            Token(4, " a", "content", -0.25, (TokenLogprob(4, " a", -0.25), TokenLogprob(5, " b", -1.5))),
            Token(-1, '{"q": "x"}', "tool_call"),
        ),
        (0.1, 0.2, 0.3),
        finish_reason="tool_calls",
        metrics=GenerateMetrics(prompt_tokens=5, generated_tokens=3, decode_duration=0.01),
        tool_calls=(ToolCall("call_1", "lookup", {"q": "x"}),),
        replica="r2",
    )
    for batch in (plain, mixed, TokenBatch(())):
        data = module.dumps(batch)
        assert b"_token_batch" in data  # the columns, not a pickled Token per token
        again = module.loads(data)
        assert again == batch
        assert [type(token) for token in again.tokens] == [Token] * len(batch.tokens)
    assert [t.kind for t in module.loads(module.dumps(mixed)).tokens] == ["reasoning", "content", "tool_call"]
