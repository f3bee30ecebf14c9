"""TextModel against a real llama-server: load → generate → chat → cancel → concurrency → close."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import llama_server_pids

import rocm_infer
from rocm_infer import (
    APIError,
    ContextLengthError,
    GenerateConfig,
    Message,
    ModelClosedError,
    ServerExitedError,
    TextModel,
    Token,
)

pytestmark = pytest.mark.integration

# A generation that cannot end by itself within any wait of these tests: 8,000 tokens (ignore_eos)
# in a slot of 8,192 (long_model), seconds of work for this model even on a fast machine. Whether
# closing its stream stopped it is read from llama-server's own log, not only from the clock.
LONG_TOKENS = 8000
LONG: dict[str, Any] = {"max_tokens": LONG_TOKENS, "ignore_eos": True}


@pytest.fixture
async def long_model(tiny_model_path: Path, no_leaked_servers: None) -> AsyncIterator[TextModel]:
    """A TextModel with 2 slots of 8,192 tokens each (the model's trained context): room for LONG."""
    async with rocm_infer.load_model(tiny_model_path, parallel_slots=2, context_len=16384) as m:
        yield m


async def busy_slots(model: TextModel) -> list[int]:
    return [slot["id"] for slot in await model.client.slots() if slot["is_processing"]]


async def wait_all_idle(model: TextModel, within: float = 0.5) -> float:
    """Poll /slots until no slot is processing; fail if that takes longer than ``within``."""
    started = time.perf_counter()
    while await busy_slots(model):
        assert time.perf_counter() - started < within, f"a slot is still busy after {within}s"
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def tokens_at_release(model: TextModel, task: int) -> int:
    """The tokens in the slot (prompt and generated) when llama-server released ``task``, from its log."""
    assert model.server is not None
    released = re.compile(rf"\btask {task} \| stop processing: n_tokens = (\d+)")
    async with asyncio.timeout(5):  # the line may still be on its way through the output pipe
        while (found := released.search(model.server.output_tail)) is None:
            await asyncio.sleep(0.01)
    return int(found.group(1))


async def assert_stopped_early(model: TextModel) -> None:
    """The last generation the server ran was stopped when its stream was closed: every slot is idle
    within 0.5 s, and llama-server's log shows that generation released far below its LONG_TOKENS
    (a generation nobody stopped is released at LONG_TOKENS, however fast the machine)."""
    await wait_all_idle(model)
    task = max(slot["id_task"] for slot in await model.client.slots() if "id_task" in slot)
    released = await tokens_at_release(model, task)
    assert released < LONG_TOKENS // 2, f"llama-server went on generating: {released} tokens at release"


async def wait_busy(model: TextModel) -> None:
    for _ in range(400):
        if await busy_slots(model):
            return
        await asyncio.sleep(0.005)
    pytest.fail("no slot ever became busy")


# -- generate ---------------------------------------------------------------------------------------


async def test_generate_streams_tokens_with_real_ids_and_metrics(model: TextModel) -> None:
    stream = model.generate("the quick brown fox", max_tokens=32, ignore_eos=True)
    tokens = [token async for token in stream]

    assert len(tokens) == 32
    assert all(isinstance(t, Token) for t in tokens)
    assert stream.finish_reason == "length"
    assert stream.error is None
    assert stream.text == "".join(t.text for t in tokens)
    # The ids are the server's own: detokenizing them gives back the text.
    assert await model.detokenize([t.id for t in tokens]) == stream.text
    assert len({t.id for t in tokens}) > 1

    metrics = stream.metrics
    assert metrics is not None and model.metrics == metrics
    assert metrics.generated_tokens == 32
    prompt_ids = await model.tokenize("the quick brown fox")
    assert metrics.prompt_tokens >= len(prompt_ids)  # plus BOS
    assert metrics.decode_tokens_per_sec > 0 and metrics.decode_duration > 0
    assert 0 < metrics.time_to_first_token <= metrics.total_duration


async def test_generate_is_deterministic_when_greedy(model: TextModel) -> None:
    first = await model.generate("once upon a time", max_tokens=20).collect()
    second = await model.generate("once upon a time", max_tokens=20).collect()
    assert first == second and first


async def test_stop_string_ends_the_generation_before_it(model: TextModel) -> None:
    reference = await model.generate("the cat sat", max_tokens=40, ignore_eos=True).collect()
    words = reference.split()
    stop_word = words[5]
    cut = reference.index(" " + stop_word)
    stream = model.generate("the cat sat", max_tokens=40, ignore_eos=True, stop=[" " + stop_word])
    text = await stream.collect()
    assert stream.finish_reason == "stop"
    assert text == reference[:cut]


async def test_stop_tokens_end_the_stream_and_free_the_slot(long_model: TextModel) -> None:
    model = long_model
    reference = [t async for t in model.generate("a dog ran", max_tokens=40, ignore_eos=True)]
    stop_id = reference[6].id
    expected = reference[: [t.id for t in reference].index(stop_id)]

    stream = model.generate("a dog ran", **LONG, stop_tokens={stop_id})
    tokens = [t async for t in stream]

    assert tokens == expected
    assert stream.finish_reason == "stop"
    assert stream.metrics is not None and stream.metrics.generated_tokens >= len(expected)
    await assert_stopped_early(model)


async def test_unicode_prompt_and_output_round_trip(model: TextModel) -> None:
    stream = model.generate("héllo wörld — 世界 🎉", max_tokens=8, ignore_eos=True)
    tokens = [t async for t in stream]
    assert len(tokens) == 8
    assert stream.text == "".join(t.text for t in tokens)


async def test_context_length_error_carries_the_limits(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, context_len=256) as model:
        with pytest.raises(ContextLengthError) as info:
            await model.generate("the cat " * 300, max_tokens=4).collect()
        assert info.value.context_len == 256
        assert info.value.prompt_tokens is not None and info.value.prompt_tokens > 256
        assert isinstance(info.value, APIError) and info.value.status == 400
        # A failed request is that request's error: the model stays usable, and says so.
        assert model.err is None
        # The model is still usable afterwards.
        assert await model.generate("the cat", max_tokens=3).collect()


async def test_server_side_validation_error_is_an_api_error(model: TextModel) -> None:
    with pytest.raises(APIError) as info:
        await model.generate("x", max_tokens=3, extra_body={"n_probs": "many"}).collect()
    assert info.value.status == 400


# -- chat -------------------------------------------------------------------------------------------


async def test_chat_streams_tokens_with_ids(model: TextModel) -> None:
    messages = [Message("system", "be brief"), {"role": "user", "content": "hello there"}]
    stream = model.chat(messages, max_tokens=12, ignore_eos=True)
    tokens = [t async for t in stream]
    assert len(tokens) == 12
    assert all(t.id >= 0 for t in tokens)
    assert await model.detokenize([t.id for t in tokens]) == stream.text
    assert stream.finish_reason == "length"
    assert stream.metrics is not None
    assert stream.metrics.generated_tokens == 12
    assert stream.metrics.prompt_tokens > len(await model.tokenize("be brief hello there"))


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"role": "wizard", "content": "hi"}], ValueError),
        ([{"role": "user", "content": 42}], TypeError),
        ([{"role": "user"}], ValueError),
        ([], ValueError),
        ("hello", TypeError),
        ([["user", "hi"]], TypeError),
    ],
)
async def test_chat_rejects_bad_messages_before_any_request(
    model: TextModel, messages: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        model.chat(messages)  # type: ignore[arg-type]


async def test_generate_rejects_bad_input_before_any_request(model: TextModel) -> None:
    with pytest.raises(TypeError):
        model.generate(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown GenerateConfig option"):
        model.generate("x", max_new_tokens=3)
    with pytest.raises(ValueError):
        model.generate("x", temperature=-1)
    assert await busy_slots(model) == []


# -- cancellation -----------------------------------------------------------------------------------


async def test_break_out_of_loop_frees_the_slot_and_model_keeps_working(long_model: TextModel) -> None:
    model = long_model
    async with model.generate("tell me a story", **LONG) as stream:
        count = 0
        async for _ in stream:
            count += 1
            if count == 5:
                break
    assert stream.finish_reason == "cancelled"
    assert stream.metrics is not None and stream.metrics.generated_tokens == 5
    await assert_stopped_early(model)
    assert len([t async for t in model.generate("again", max_tokens=4, ignore_eos=True)]) == 4


async def test_cancelling_the_task_frees_the_slot_and_reraises(long_model: TextModel) -> None:
    model = long_model
    started = asyncio.Event()
    stream = model.generate("tell me a story", **LONG)

    async def consume() -> None:
        async for _ in stream:
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.finish_reason == "cancelled"
    await assert_stopped_early(model)


async def test_aclose_mid_stream_frees_the_slot(long_model: TextModel) -> None:
    stream = long_model.generate("tell me a story", **LONG)
    await stream.__anext__()
    await stream.aclose()
    await stream.aclose()  # idempotent
    assert stream.finish_reason == "cancelled"
    await assert_stopped_early(long_model)
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_dropping_an_unfinished_stream_frees_the_slot(long_model: TextModel) -> None:
    stream = long_model.generate("tell me a story", **LONG)
    await stream.__anext__()
    await wait_busy(long_model)
    del stream
    gc.collect()
    await assert_stopped_early(long_model)


async def test_timeout_around_a_stream_cancels_it(long_model: TextModel) -> None:
    stream = long_model.generate("tell me a story", **LONG)
    await stream.__anext__()  # mid-stream when the timeout strikes, however slow the first token
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            async for _ in stream:
                pass
    assert stream.finish_reason == "cancelled"
    await assert_stopped_early(long_model)


# -- concurrency ------------------------------------------------------------------------------------


async def test_concurrent_streams_all_complete(model: TextModel) -> None:
    async def one(i: int) -> list[Token]:
        return [t async for t in model.generate(f"story number {i}", max_tokens=24, ignore_eos=True)]

    results = await asyncio.gather(*(one(i) for i in range(12)))
    assert [len(r) for r in results] == [24] * 12
    await wait_all_idle(model)


async def test_batch_generate_keeps_order_and_counts(model: TextModel) -> None:
    prompts = [f"prompt {i}" for i in range(6)]
    results = await model.batch_generate(prompts, GenerateConfig(max_tokens=10, ignore_eos=True))
    assert len(results) == 6
    for result in results:
        assert result.error is None and result.finish_reason == "length"
        assert len(result.tokens) == 10
        assert result.text == "".join(t.text for t in result.tokens)
    # Each result belongs to its own prompt, in order: it matches that prompt's lone generation.
    alone = [await model.generate(p, max_tokens=10, ignore_eos=True).collect() for p in prompts]
    assert len(set(alone)) == len(prompts)  # distinct, so a mix-up could not go unnoticed
    assert [r.text for r in results] == alone


async def test_batch_generate_reports_per_prompt_errors(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, context_len=256) as model:
        results = await model.batch_generate(["short", "long " * 400], max_tokens=4, ignore_eos=True)
    assert results[0].error is None and len(results[0].tokens) == 4
    assert isinstance(results[1].error, ContextLengthError) and results[1].finish_reason == "error"


async def test_classify_returns_next_token_and_logprobs(model: TextModel) -> None:
    prompts = ["the cat", "a dog", "the cat"]
    results = await model.classify(prompts, top_logprobs=3)
    assert len(results) == 3
    for result in results:
        assert len(result.logprobs) == 3
        assert result.token.id == result.logprobs[0].id  # greedy picks the most likely
        logprobs = [c.logprob for c in result.logprobs]
        assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
    assert results[0] == results[2]
    greedy = [t async for t in model.generate("the cat", max_tokens=1)]
    assert greedy[0].id == results[0].token.id


# -- lifetime ---------------------------------------------------------------------------------------


async def test_close_stops_the_server_and_is_idempotent(tiny_model_path: Path, server_binary: str) -> None:
    before = llama_server_pids(server_binary)
    model = await rocm_infer.load_model(tiny_model_path)
    assert model.server is not None
    pid = model.server.pid
    assert pid in llama_server_pids(server_binary)
    await model.close()
    await model.close()
    assert llama_server_pids(server_binary) == before
    assert model.server.returncode == 0  # SIGTERM was enough: a clean exit
    with pytest.raises(ModelClosedError):
        model.generate("x")
    with pytest.raises(ModelClosedError):
        await model.tokenize("x")


async def test_cancelled_load_leaves_no_process(tiny_model_path: Path, no_leaked_servers: None) -> None:
    task = asyncio.create_task(rocm_infer.load_model(tiny_model_path))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_server_killed_mid_stream_raises_server_exited(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path) as model:
        assert model.server is not None and model.server.pid is not None
        stream = model.generate("tell me a story", **LONG)
        with pytest.raises(ServerExitedError) as info:
            count = 0
            async for _ in stream:
                count += 1
                if count == 3:
                    os.kill(model.server.pid, signal.SIGKILL)
        assert info.value.returncode == -signal.SIGKILL
        assert stream.finish_reason == "error" and stream.error is info.value
        assert model.err is info.value
        with pytest.raises(ServerExitedError):
            model.generate("x")


async def test_connect_attaches_without_owning_the_server(model: TextModel, server_binary: str) -> None:
    assert model.server is not None
    api_key = model.server._api_key
    async with rocm_infer.connect(model.server.base_url, api_key=api_key) as attached:
        assert attached.server is None
        assert attached.model_type == "llama"
        assert attached.info.path == model.info.path
        assert attached.info.parallel_slots == 4
        assert len([t async for t in attached.generate("hi", max_tokens=3, ignore_eos=True)]) == 3
    # Closing the attached model left the server running.
    assert model.server.pid in llama_server_pids(server_binary)
    assert len([t async for t in model.generate("hi", max_tokens=3, ignore_eos=True)]) == 3


async def test_connect_without_the_key_is_refused(model: TextModel) -> None:
    assert model.server is not None
    with pytest.raises(APIError) as info:
        await rocm_infer.connect(model.server.base_url)
    assert info.value.status == 401


async def test_model_info_and_repr(model: TextModel) -> None:
    info = model.info
    assert model.model_type == "llama"
    assert info.architecture == "llama"
    assert info.train_context_len == 8192
    assert info.context_len > 0
    assert info.parallel_slots == 4
    assert info.has_chat_template
    assert info.file_size == Path(info.path or "").stat().st_size
    assert model.server is not None
    assert model.server._api_key not in repr(model)
    assert "llama" in repr(model)


async def test_config_can_be_passed_by_keyword_and_options_override_it(model: TextModel) -> None:
    config = GenerateConfig(max_tokens=3, ignore_eos=True)
    assert len([t async for t in model.generate("hi", config=config)]) == 3
    assert len([t async for t in model.generate("hi", config, max_tokens=5)]) == 5
    assert len([t async for t in model.chat([Message("user", "hi")], config=config)]) == 3
    results = await model.batch_generate(["a", "b"], config=config)
    assert [len(r.tokens) for r in results] == [3, 3]


async def test_close_ends_open_streams_with_model_closed(tiny_model_path: Path, no_leaked_servers: None) -> None:
    model = await rocm_infer.load_model(tiny_model_path)
    assert model.server is not None
    reading = model.generate("tell me a story", **LONG)
    unread = model.generate("never iterated", **LONG)
    received = asyncio.Event()

    async def consume() -> None:
        async for _ in reading:
            received.set()

    task = asyncio.create_task(consume())
    await received.wait()
    await model.close()
    with pytest.raises(ModelClosedError):
        await task
    with pytest.raises(ModelClosedError):
        await unread.__anext__()
    assert reading.finish_reason == unread.finish_reason == "error"
    # The streams were closed before SIGTERM, so llama-server exited cleanly instead of being killed.
    assert model.server.returncode == 0


async def test_repeated_prompt_reports_cached_tokens(tiny_model_path: Path, no_leaked_servers: None) -> None:
    prompt = "the quick brown fox jumps over the lazy dog " * 4
    async with rocm_infer.load_model(tiny_model_path, parallel_slots=1) as model:
        first = model.generate(prompt, max_tokens=4, ignore_eos=True)
        await first.collect()
        second = model.generate(prompt, max_tokens=4, ignore_eos=True)
        await second.collect()
    assert first.metrics is not None and second.metrics is not None
    assert first.metrics.cached_tokens == 0
    assert second.metrics.prompt_tokens == first.metrics.prompt_tokens  # the whole prompt, cached part included
    assert 0 < second.metrics.cached_tokens < second.metrics.prompt_tokens


async def test_classify_raises_the_sdk_error_not_a_group(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, context_len=256) as model:
        with pytest.raises(ContextLengthError):
            await model.classify(["fine", "long " * 400])
        # Any iterable of prompts works, a generator included.
        results = await model.classify(p for p in ["a cat", "a dog"])
        assert len(results) == 2
        with pytest.raises(TypeError):
            await model.classify("one string")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, as a user's script; its output, whatever it exits with."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)


_FORGETS_TO_CLOSE = """
import asyncio, sys
import rocm_infer

async def main():
    model = await rocm_infer.load_model(sys.argv[1])
    stream = model.generate("tell me a story", max_tokens=6000, ignore_eos=True)
    await stream.__anext__()
    print(model.server.pid, flush=True)
    globals()["kept"] = (model, stream)  # never closed, still referenced at exit

asyncio.run(main())
"""


def test_a_model_never_closed_is_stopped_at_exit(tiny_model_path: Path, server_binary: str) -> None:
    before = llama_server_pids(server_binary)
    result = run_python(_FORGETS_TO_CLOSE, str(tiny_model_path))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    assert pid not in llama_server_pids(server_binary)
    assert llama_server_pids(server_binary) == before
    assert "a model was not closed" in result.stderr


_LOADS_THEN_WAITS = """
import asyncio, sys
import rocm_infer

async def main():
    model = await rocm_infer.load_model(sys.argv[1])
    print(model.server.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_parent_killed_with_sigkill_takes_its_server_along(tiny_model_path: Path, server_binary: str) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOADS_THEN_WAITS, str(tiny_model_path), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 60)
    pid = int(line)
    assert pid in llama_server_pids(server_binary)
    parent.kill()  # no exit hook can run: only the kernel's parent-death signal can stop the child
    await parent.wait()
    deadline = time.monotonic() + 2.0  # what the SDK promises; the kernel takes milliseconds
    while pid in llama_server_pids(server_binary) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert pid not in llama_server_pids(server_binary)


async def test_text_held_for_a_possible_stop_string_is_not_lost_at_max_tokens(model: TextModel) -> None:
    # The last word starts a stop string that never completes: llama-server holds that word back
    # and, streaming, drops it when max_tokens ends the generation. The SDK recovers it.
    reference = await model.generate("the cat sat", max_tokens=10, ignore_eos=True).collect()
    stop = " " + reference.split()[-1] + "zzz"
    stream = model.generate("the cat sat", max_tokens=10, ignore_eos=True, stop=[stop])
    tokens = [t async for t in stream]
    assert stream.text == reference
    assert "".join(t.text for t in tokens) == reference
    assert len(tokens) == 10 and stream.finish_reason == "length"
    unstreamed = await model.client.completion(
        {"prompt": "the cat sat", "n_predict": 10, "temperature": 0, "ignore_eos": True, "stop": [stop]}
    )
    assert unstreamed["content"] == reference


async def test_held_text_that_was_a_stop_string_stays_out(model: TextModel) -> None:
    reference = await model.generate("the cat sat", max_tokens=12, ignore_eos=True).collect()
    words = reference.split()
    stop = " " + " ".join(words[4:6])  # two words: the first is held back until the second matches
    stream = model.generate("the cat sat", max_tokens=12, ignore_eos=True, stop=[stop])
    tokens = [t async for t in stream]
    assert stream.finish_reason == "stop"
    assert stream.text == reference[: reference.index(stop)]
    assert "".join(t.text for t in tokens) == stream.text


_TWO_LOOPS = """
import asyncio, sys
import rocm_infer

model = asyncio.run(rocm_infer.load_model(sys.argv[1]))  # loaded in a loop that then closes
print(model.server.pid, flush=True)

async def use():
    await model.generate("hello", max_tokens=2).collect()

try:
    asyncio.run(use())
except rocm_infer.EventLoopError as exc:
    print("EventLoopError:", exc, flush=True)
asyncio.run(model.close())  # still stops the process
print("closed", model.closed, flush=True)
"""


def test_a_model_used_from_another_loop_says_so_and_close_still_stops_it(
    tiny_model_path: Path, server_binary: str
) -> None:
    before = llama_server_pids(server_binary)
    result = run_python(_TWO_LOOPS, str(tiny_model_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pid = int(lines[0])
    assert lines[1].startswith("EventLoopError: this model was loaded in another event loop, which is closed")
    assert lines[2] == "closed True"
    assert pid not in llama_server_pids(server_binary) and llama_server_pids(server_binary) <= before
    assert "a model was closed from another event loop: stopping its llama-server pid" in result.stderr
    assert "at exit" not in result.stderr and "Unclosed client session" not in result.stderr
