"""Mutation check: the tests catch the bugs they claim to (run by `make mutate`).

    python scripts/mutate.py [--only NAME ...] [--list] [--show] [--no-baseline] [--keep] [--markdown FILE]

Each entry of :data:`MUTATIONS` is a one-line bug a maintainer could really make,
in a place where docs/reliability.md makes a promise: a file, the exact text to
replace, the text to put there, and the few tests that should fail because of it.
The package is copied to a temporary folder (the working tree is never touched);
each mutation is applied there alone, its tests run against the copy (one
mutation at a time, with ``-x``), and the copy is restored before the next.

First the tests of every mutation run once on the unmutated copy: a test that
fails there would "catch" anything, so that is an error. A mutation whose old
text is not found exactly once, whose result does not compile, or whose tests
cannot be collected (or all skip) is an error too (the list has gone stale),
never a pass. A run that hangs is stopped, and counts as caught by the test
that hung, as the per-test timeout of ``make test`` would fail it.

Prints a table: mutation, caught (yes/no), by which test (the first one that
failed), seconds. Exits 0 when every mutation was caught, 1 when one survived,
2 on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What the tests read: the package, the tests and their helpers, and the files the docs tests check.
_COPIED = (
    "rocm_infer",
    "tests",
    "scripts",
    "examples",
    "docs",
    "benchmarks",
    "pyproject.toml",
    "README.md",
    "mkdocs.yml",
)
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache")
# Set in the pytest runs this script starts: where this module, loaded there as a plugin, writes what failed.
_REPORT_VARIABLE = "ROCM_INFER_MUTATE_REPORT"
# Seconds a run stopping at its first failure may spend in that test's teardown before it is stopped.
_TEARDOWN_GRACE = 15.0
# Seconds a test may take (pyproject.toml's timeout) and pytest may take to start: past that a run is stuck.
_TEST_TIMEOUT = 120
_START_TIME = 60


@dataclass(frozen=True, slots=True)
class Mutation:
    """One bug: replace ``old`` (found exactly once in ``file``) with ``new``; ``tests`` must fail.

    ``tests`` are pytest node ids, run in the order given with ``-x``: put the
    quickest that catches it first. A bug that makes its test hang is caught by
    the test's own timeout (pytest-timeout), as in ``make test``.
    """

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    # -- streams: closing ------------------------------------------------------------------------
    Mutation(
        "event-stream-close-keeps-connection",
        "rocm_infer/client.py",
        "        protocol, self._protocol = self._protocol, None\n",
        "        protocol = None\n",
        (
            "tests/test_client.py::test_aclose_closes_the_connection",
            "tests/test_model.py::test_aclose_mid_stream_frees_the_slot",
        ),
        "EventStream.close() marks the stream closed but leaves its own connection open",
    ),
    Mutation(
        "event-stream-close-keeps-aiohttp-response",
        "rocm_infer/client.py",
        "        response, self._response = self._response, None\n        if response is not None:\n",
        "        response = None\n        if response is not None:\n",
        ("tests/test_client.py::test_aclose_closes_the_connection",),
        "EventStream.close() leaves a stream's aiohttp response open (a caller's session)",
    ),
    Mutation(
        "token-stream-finish-closes-only-on-error",
        "rocm_infer/stream.py",
        '        if self._events is not None:\n            self._events.close()\n        if reason == "cancelled":',
        "        if self._events is not None and error is not None:\n            self._events.close()\n"
        '        if reason == "cancelled":',
        ("tests/test_model.py::test_aclose_mid_stream_frees_the_slot",),
        "TokenStream._finish closes the response only when the stream failed: aclose() leaves it open",
    ),
    Mutation(
        "cancellation-swallowed",
        "rocm_infer/stream.py",
        '                self._finish("cancelled")\n                raise\n',
        '                self._finish("cancelled")\n                return\n',
        ("tests/test_model.py::test_cancelling_the_task_frees_the_slot_and_reraises",),
        "a stream cancelled mid-read ends quietly instead of re-raising the cancellation",
    ),
    # -- streams: decoding -----------------------------------------------------------------------
    Mutation(
        "sse-split-utf8-dropped",
        "rocm_infer/sse.py",
        "                self._hold(tail)\n",
        '                self._hold(tail.decode("utf-8", "ignore").encode())\n',
        ("tests/test_sse.py::test_decode_split_in_two_everywhere",),
        "the SSE decoder cleans up the unfinished line it holds, dropping a UTF-8 character split across reads",
    ),
    Mutation(
        "whole-chunks-keep-only-the-first",
        "rocm_infer/client.py",
        '            self._body(pieces[0] if len(pieces) == 1 else b"".join(pieces))\n',
        "            self._body(pieces[0])\n",
        ("tests/test_client.py::test_a_chunked_response_parses_alike_however_the_reads_cut_it",),
        "a read of many whole chunks gives the body only the first: a reader that is behind loses events",
    ),
    Mutation(
        "sse-many-events-split-on-blank-lines",
        "rocm_infer/sse.py",
        '                return chunk[6:-2].decode("utf-8", "replace").split("\\n\\ndata: ")\n',
        '                return chunk[6:-2].decode("utf-8", "replace").split("\\n\\n")\n',
        ("tests/test_sse.py::test_the_data_only_path_gives_the_same_data",),
        "a chunk of several data events is split on its blank lines, keeping 'data: ' in every event but the first",
    ),
    Mutation(
        "sse-long-line-limit-per-read",
        "rocm_infer/sse.py",
        "                self._held_len += len(chunk)\n",
        "                self._held_len = len(chunk)\n",
        ("tests/test_sse.py::test_line_too_long_across_chunks_raises",),
        "the SSE line limit counts one read, not the whole line: a line sent in pieces grows without bound",
    ),
    Mutation(
        "eof-taken-for-the-end",
        "rocm_infer/client.py",
        "        if self.ended and not self.done and self.error is None:\n",
        "        if False:\n",
        ("tests/test_client.py::test_stream_ending_before_terminator",),
        "a body that ends before [DONE] / stop is taken for a complete stream",
    ),
    Mutation(
        "a-burst-never-lets-the-loop-run",
        "rocm_infer/integrations/fastapi.py",
        "                    if sent % _WRITES_PER_PAUSE == 0:\n",
        "                    if False:\n",
        ("tests/test_fastapi.py::test_a_burst_of_tokens_lets_the_disconnect_through_within_a_few_writes",),
        "a burst of tokens is written without a pause: a client that went away is noticed only after it",
    ),
    Mutation(
        "context-error-not-recognised",
        "rocm_infer/client.py",
        '        if kind == "exceed_context_size_error":',
        '        if kind == "exceed_context_error":',
        ("tests/test_client.py::test_context_length_error",),
        "llama-server's context-size error type is misspelt: a plain APIError without the limits",
    ),
    Mutation(
        "tool-call-delta-dropped",
        "rocm_infer/endpoints/chat.py",
        '        calls = delta.get("tool_calls")',
        '        calls = delta.get("tool_call")',
        (
            "tests/test_endpoints.py::test_reasoning_content_and_tool_calls_are_split_by_kind_with_ids",
            "tests/test_chat.py::test_reasoning_and_a_tool_call_stream_apart_with_real_token_ids",
        ),
        "the chat adapter reads the wrong key: tool-call deltas are dropped",
    ),
    Mutation(
        "shortcut-token-keeps-held-text",
        "rocm_infer/endpoints/chat.py",
        "                if pending:\n                    self._release(out, token_id)\n                if text:\n",
        "                if text:\n",
        ("tests/test_endpoints.py::test_after_the_shortcut_held_text_and_stop_tokens_go_as_from_the_json_decoder",),
        "a content token from the shortcut does not release the text held before it: reasoning is lost",
    ),
    Mutation(
        "shortcut-token-ignores-stop-tokens",
        "rocm_infer/endpoints/chat.py",
        "                token_id, text = pair\n                if stop_tokens and token_id in stop_tokens:",
        "                token_id, text = pair\n                if False:",
        ("tests/test_endpoints.py::test_after_the_shortcut_held_text_and_stop_tokens_go_as_from_the_json_decoder",),
        "a stop token in the common chunk is yielded and the chat goes on",
    ),
    Mutation(
        "token-batch-drops-kinds-and-logprobs",
        "rocm_infer/integrations/ray.py",
        "                extras = tuple((t.kind, t.logprob, t.top_logprobs) for t in tokens)\n",
        "                pass\n",
        ("tests/test_ray.py::test_a_token_batch_pickles_as_columns_and_comes_back_whole",),
        "a handle stream's items lose their tokens' kinds and logprobs on the way to the caller",
    ),
    # -- streams: timeouts and retries -----------------------------------------------------------
    Mutation(
        "pings-do-not-keep-a-stream-alive",
        "rocm_infer/client.py",
        'reads into bytes)."""\n        self.last_read = monotonic()\n',
        'reads into bytes)."""\n',
        ("tests/test_client.py::test_pings_keep_an_idle_stream_alive",),
        "the idle watchdog does not see reads on a stream's own connection: a stream that keeps sending pings is cut",
    ),
    Mutation(
        "pings-do-not-keep-an-aiohttp-stream-alive",
        "rocm_infer/client.py",
        "        if self._watched:\n            self._last_read = monotonic()",
        "        if not self._watched:\n            self._last_read = monotonic()",
        ("tests/test_client.py::test_pings_keep_an_idle_stream_alive",),
        "reads through aiohttp are not seen by the idle watchdog: a stream that keeps sending pings is cut",
    ),
    Mutation(
        "watchdog-holds-the-stream",
        "rocm_infer/client.py",
        "                        if self._idle_for(ref, now) < timeout:\n",
        "                        held = ref()\n                        if self._idle_for(ref, now) < timeout:\n",
        ("tests/test_client.py::test_a_watched_stream_dropped_unfinished_is_collected",),
        "the idle watchdog's thread holds a stream between its looks: a stream dropped unfinished is never collected",
    ),
    Mutation(
        "idle-watchdog-never-wakes-the-reader",
        "rocm_infer/client.py",
        "        self._idle = True\n        self.close()  # wakes the reader",
        "        self._idle = True\n        pass  # wakes the reader",
        ("tests/test_client.py::test_idle_timeout",),
        "the idle watchdog marks the stream idle but never closes it: a silent server hangs the reader",
    ),
    Mutation(
        "no-503-retry",
        "rocm_infer/client.py",
        "        retry_unavailable: bool = True,\n",
        "        retry_unavailable: bool = False,\n",
        (
            "tests/test_client.py::test_stream_answered_503_is_retried_until_the_model_is_loaded",
            "tests/test_client.py::test_request_answered_503_is_retried",
        ),
        "a 503 (model still loading) is raised at once instead of retried with backoff",
    ),
    # -- security --------------------------------------------------------------------------------
    Mutation(
        "api-key-not-sent",
        "rocm_infer/client.py",
        '        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}',
        "        self._headers: dict[str, str] = {}",
        ("tests/test_client.py::test_bearer_header_sent_and_key_never_shown",),
        "the client never sends the API key",
    ),
    Mutation(
        "listens-on-every-interface",
        "rocm_infer/server.py",
        '"--host", HOST, "--port"',
        '"--host", "0.0.0.0", "--port"',
        ("tests/test_server.py::test_real_server_lifecycle",),
        "llama-server binds every interface instead of loopback only",
    ),
    Mutation(
        "api-key-on-the-command-line",
        "rocm_infer/server.py",
        '        argv = [*self.spec.args, "--host", HOST, "--port", str(self.port)]',
        '        argv = [*self.spec.args, "--host", HOST, "--port", str(self.port), "--api-key", self._api_key]',
        ("tests/test_server.py::test_real_server_key_in_environment_not_cmdline",),
        "the API key goes on the command line, where `ps` shows it to every user",
    ),
    Mutation(
        "llama-arg-variables-passed-through",
        "rocm_infer/server.py",
        "k.startswith(_SETTING_PREFIX) or k == _API_KEY_VARIABLE",
        "k == _API_KEY_VARIABLE",
        ("tests/test_supervisor.py::test_inherited_llama_arg_variables_are_not_passed_to_llama_server",),
        "inherited LLAMA_ARG_* variables reach llama-server and silently change its settings",
    ),
    # -- start-up --------------------------------------------------------------------------------
    Mutation(
        "start-not-stopped-on-cancel",
        "rocm_infer/server.py",
        "        except BaseException:\n            await self.stop()\n            raise",
        "        except Exception:\n            await self.stop()\n            raise",
        (
            "tests/test_server.py::test_cancel_start",
            "tests/test_backend.py::test_cancelled_load_leaves_no_server",
        ),
        "start() stops the half-started server on errors but not on cancellation",
    ),
    Mutation(
        "bind-failure-not-recognised",
        "rocm_infer/server.py",
        '_BIND_FAILED = "couldn\'t bind"',
        '_BIND_FAILED = "could not bind"',
        ("tests/test_server.py::test_bind_failure_is_retried_on_a_fresh_port",),
        "llama-server's bind failure is not recognised: a port taken under us fails the start",
    ),
    Mutation(
        "a-403-stranger-fails-the-start",
        "rocm_infer/server.py",
        "            if exc.status in (401, 403):",
        "            if exc.status == 401:",
        ("tests/test_server.py::test_a_strangers_server_on_our_port_is_never_taken_for_ours",),
        "a stranger on our port answering /props with 403 fails the start instead of being waited out",
    ),
    Mutation(
        "output-is-not-progress",
        "rocm_infer/startup.py",
        "        self.last_activity = time.monotonic()\n        wake = False",
        "        wake = False",
        ("tests/test_server.py::test_a_slow_start_that_prints_progress_is_not_killed",),
        "a line printed during start-up no longer counts as progress: a slow load is killed as stalled",
    ),
    # -- stopping --------------------------------------------------------------------------------
    Mutation(
        "stop-never-sigkills",
        "rocm_infer/process.py",
        "self._signal(signal.SIGKILL)",
        "self._signal(signal.SIGTERM)",
        (
            "tests/test_server.py::test_sigterm_ignored_is_killed",
            "tests/test_server.py::test_cancel_stop_still_kills_and_reaps",
        ),
        "LlamaServer.stop() sends SIGTERM again where it should SIGKILL",
    ),
    Mutation(
        "stop-signals-the-process-not-its-group",
        "rocm_infer/process.py",
        "os.killpg(self._process.pid, signum)",
        "os.kill(self._process.pid, signum)",
        ("tests/test_server.py::test_stopping_a_wrapper_script_stops_what_it_started",),
        "stop() signals llama-server's process alone: what a wrapper script started outlives it, holding its pipe",
    ),
    Mutation(
        "spawn-cancelled-inside-asyncio",
        "rocm_infer/process.py",
        "process = await asyncio.shield(spawning)",
        "process = await spawning",
        ("tests/test_server.py::test_a_spawn_cancelled_while_the_pipes_connect_is_stopped_not_left_hanging",),
        "a start cancelled while asyncio connects the pipes is left to asyncio: SIGKILL, then a wait on the pipes",
    ),
    Mutation(
        "exit-hook-never-sigkills",
        "rocm_infer/reaper.py",
        "            os.kill(pid, signal.SIGKILL)",
        "            os.kill(pid, signal.SIGTERM)",
        (
            "tests/test_server.py::test_the_exit_hook_kills_a_server_that_ignores_sigterm",
            "tests/test_server.py::test_stop_now_kills_a_server_that_ignores_sigterm",
        ),
        "the exit hook (and stop_now) sends SIGTERM twice and never SIGKILL",
    ),
    Mutation(
        "no-exit-hook",
        "rocm_infer/reaper.py",
        "        atexit.register(_stop_all_at_exit)\n",
        "        pass\n",
        (
            "tests/test_server.py::test_the_exit_hook_kills_a_server_that_ignores_sigterm",
            "tests/test_model.py::test_a_model_never_closed_is_stopped_at_exit",
        ),
        "reaper.track() never registers the exit hook",
    ),
    Mutation(
        "no-parent-death-signal",
        "rocm_infer/server.py",
        "self.spec.environment(self._api_key), reaper.die_with_parent()",
        "self.spec.environment(self._api_key), None",
        ("tests/test_model.py::test_a_parent_killed_with_sigkill_takes_its_server_along",),
        "llama-server is started without PR_SET_PDEATHSIG: a parent killed with SIGKILL leaves it running",
    ),
    Mutation(
        "stop-now-leaves-the-pid-tracked",
        "rocm_infer/process.py",
        (
            "        reaper.untrack(self._process.pid)"
            "  # gone: the exit hook must never signal this pid (it may be reused)\n"
        ),
        "",
        (
            "tests/test_mutation_gaps.py::test_a_model_closed_from_another_loop_is_never_signalled_at_exit",
            "tests/test_server.py::test_a_model_closed_from_another_loop_kills_a_server_that_ignores_sigterm",
        ),
        "stop_now() leaves the pid it stopped tracked: the exit hook signals it again, maybe another process by then",
    ),
    Mutation(
        "dropped-model-not-stopped",
        "rocm_infer/lifecycle.py",
        "            supervisor.stop_now()\n",
        "            pass\n",
        ("tests/test_unclosed.py::test_a_dropped_model_warns_and_its_server_is_stopped",),
        "a model dropped without close() warns but leaves its llama-server running",
    ),
    Mutation(
        "close-cancels-open-streams-quietly",
        "rocm_infer/lifecycle.py",
        '            stream.abort(ModelClosedError("the model was closed while this stream was open"))\n',
        "            await stream.aclose()\n",
        ("tests/test_model.py::test_close_ends_open_streams_with_model_closed",),
        "close() ends open streams as if their readers had cancelled them: no ModelClosedError",
    ),
    # -- crashes and restarts --------------------------------------------------------------------
    Mutation(
        "broken-body-not-a-crash",
        "rocm_infer/supervisor.py",
        "_BROKEN = (APIConnectionError, ProtocolError, APITimeoutError)",
        "_BROKEN = (APIConnectionError, APITimeoutError)",
        ("tests/test_reliability.py::test_killed_mid_stream_raises_server_exited_and_every_later_call_too",),
        "a body broken off by a killed server (a ProtocolError) is not translated to ServerExitedError",
    ),
    Mutation(
        "stream-keeps-the-client-it-was-made-with",
        "rocm_infer/stream.py",
        "        self._open = open_events\n",
        "        self._open = lambda _live, _made=supervisor.client: open_events(_made)\n",
        ("tests/test_supervisor.py::test_a_stream_made_before_a_restart_reads_from_the_new_server",),
        "a stream reads through the client of the server live when it was made, not supervisor.ready()'s",
    ),
    Mutation(
        "stream-skips-ready",
        "rocm_infer/stream.py",
        "            client = await self._supervisor.ready()\n",
        "            client = self._supervisor.client\n",
        ("tests/test_supervisor.py::test_a_stream_made_before_a_crash_restarts_the_server_itself",),
        "a stream opens without supervisor.ready(): no check, no restart of a dead server",
    ),
    Mutation(
        "restart-limit-off-by-one",
        "rocm_infer/supervisor.py",
        "        return len(self._restarted_at) < policy.max_restarts",
        "        return len(self._restarted_at) <= policy.max_restarts",
        ("tests/test_reliability.py::test_restart_policy_starts_the_server_again_within_its_limit",),
        "the restart policy allows one restart more than max_restarts",
    ),
    Mutation(
        "concurrent-calls-restart-again",
        "rocm_infer/supervisor.py",
        "            if self._state is ModelState.OPEN:  # another task restarted it while this one waited\n"
        "                return\n",
        "",
        ("tests/test_reliability.py::test_concurrent_calls_after_a_crash_share_one_restart",),
        "the restart lock's second check is gone: every call that saw the crash restarts the server again",
    ),
    # -- bad input -------------------------------------------------------------------------------
    Mutation(
        "unknown-options-accepted",
        "rocm_infer/config.py",
        "        unknown = sorted(set(options) - names)\n",
        "        options, unknown = {k: v for k, v in options.items() if k in names}, []\n",
        (
            "tests/test_config.py::test_build_applies_options_over_a_config_and_rejects_unknown_names",
            "tests/test_backend.py::test_bad_arguments_raise_synchronously",
        ),
        "unknown GenerateConfig / LoadConfig options are silently dropped instead of a TypeError",
    ),
    Mutation(
        "negative-temperature-accepted",
        "rocm_infer/config.py",
        '        _check_float("temperature", self.temperature, low=0.0)\n',
        '        _check_float("temperature", self.temperature)\n',
        ("tests/test_config.py::test_generate_config_rejects",),
        "GenerateConfig accepts a negative temperature",
    ),
    # -- embeddings and reranking ----------------------------------------------------------------
    Mutation(
        "embeddings-in-response-order",
        "rocm_infer/endpoints/embeddings.py",
        "        vectors[index] = vector\n",
        "        vectors[data.index(item)] = vector\n",
        (
            "tests/test_mutation_gaps.py::test_vectors_follow_the_index_not_the_order_of_the_answer",
            "tests/test_embedding.py::test_a_thousand_texts_in_batches_equal_one_by_one_in_order",
        ),
        "embedding vectors are put in the order the answer lists them, not by their index",
    ),
    Mutation(
        "rerank-scores-in-response-order",
        "rocm_infer/endpoints/rerank.py",
        "        scores[index] = float(score)\n",
        "        scores[results.index(item)] = float(score)\n",
        ("tests/test_embedding.py::test_rerank_orders_by_the_scores_the_server_returns",),
        "rerank scores are matched to documents by their place in the answer (sorted by score), not by index",
    ),
    Mutation(
        "rerank-worst-first",
        "rocm_infer/embedding.py",
        "key=lambda i: (-scores[i], i)",
        "key=lambda i: (scores[i], i)",
        ("tests/test_embedding.py::test_rerank_orders_by_the_scores_the_server_returns",),
        "rerank() returns the documents worst first",
    ),
)


# -- applying a mutation ---------------------------------------------------------------------------


class StaleMutationError(Exception):
    """A mutation that cannot be applied to the package as it is: the list has gone stale."""


def mutated_source(mutation: Mutation, source: str) -> str:
    """``source`` with the mutation applied; StaleMutationError unless its old text occurs exactly once
    or if the result does not compile."""
    count = source.count(mutation.old)
    if count != 1:
        raise StaleMutationError(
            f"{mutation.name}: the old text occurs {count} times in {mutation.file} (it must occur exactly once)"
        )
    if mutation.old == mutation.new:
        raise StaleMutationError(f"{mutation.name}: the new text is the old text")
    result = source.replace(mutation.old, mutation.new)
    try:
        compile(result, mutation.file, "exec")
    except SyntaxError as exc:
        raise StaleMutationError(f"{mutation.name}: the mutated {mutation.file} does not compile: {exc}") from exc
    return result


@contextlib.contextmanager
def applied(mutation: Mutation, root: Path) -> Iterator[None]:
    """Apply ``mutation`` to the copy at ``root`` for the duration of the block; restore it after."""
    path = root / mutation.file
    original = path.read_text()
    path.write_text(mutated_source(mutation, original))
    try:
        yield
    finally:
        path.write_text(original)


def make_copy(destination: Path) -> None:
    """Copy what the tests need of the repository to ``destination``."""
    for name in _COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=_IGNORED)
        elif source.exists():
            shutil.copy2(source, destination / name)


# -- running the tests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one pytest run said: the tests that failed (first first), how many passed, problems."""

    failed: tuple[str, ...]
    passed: int
    errors: tuple[str, ...]
    seconds: float
    hung: bool = False
    output: str = ""
    hung_in: str = ""  # the test that was running when a hung run was stopped
    why: str = ""  # the first failure's report


def _kill_strays(root: Path, group: int) -> None:
    """SIGKILL what a run left behind: its process group, and any process whose command line names the copy
    (the fakes and the llama-servers of its tests; those that left the group live under it too)."""
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGKILL)
    needle = str(root).encode()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)


def run_tests(root: Path, tests: Sequence[str], *, stop_first: bool, run: str) -> Outcome:
    """Run ``tests`` with pytest in the copy at ``root``; what failed, in order."""
    report = root / f".mutate-{run}.jsonl"
    log = root / f".mutate-{run}.log"
    basetemp = root / f".tmp-{run}"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutate"]
    command += ["--basetemp", str(basetemp)]
    if stop_first:
        command.append("-x")
    command += list(tests)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(root), str(root / "scripts")]),
        PYTHONDONTWRITEBYTECODE="1",
        ROCM_INFER_REQUIRE_SERVER="1",
        **{_REPORT_VARIABLE: str(report)},
    )
    limit = _TEST_TIMEOUT * len(tests) + _START_TIME
    began = time.monotonic()
    first_failure: float | None = None
    hung = False
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while process.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if stop_first and first_failure is None and any("failed" in e for e in _read_report(report)):
                    first_failure = now
                # With -x nothing runs after a failure but its teardown: one stuck there has said enough.
                if now - began > limit or (first_failure is not None and now - first_failure > _TEARDOWN_GRACE):
                    hung = True
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            _kill_strays(root, process.pid)
    seconds = time.monotonic() - began
    text = log.read_text(errors="replace")
    log.unlink()
    shutil.rmtree(basetemp, ignore_errors=True)
    events = _read_report(report)
    report.unlink(missing_ok=True)
    failed = list(dict.fromkeys(e["failed"] for e in events if "failed" in e))
    errors = [e["error"] for e in events if "error" in e]
    if not events:
        errors.append("pytest recorded nothing")
    if not hung and process.returncode not in (0, 1):  # 2: interrupted, 3: internal error, 4: usage, 5: none ran
        errors.append(f"pytest exited with {process.returncode}")
    running = [e["started"] for e in events if "started" in e]
    why = next((e["why"] for e in events if "why" in e), "")
    passed = sum("passed" in e for e in events)
    if not failed and not passed and not hung:
        errors.append("no test ran to its end (all skipped?)")
    return Outcome(
        tuple(failed), passed, tuple(errors), seconds, hung, text, running[-1] if hung and running else "", why
    )


# -- this module as the pytest plugin of those runs ------------------------------------------------
# Each event is appended to the report as it happens, so a run stopped because it hung still says
# which tests had failed and which one was running.


def _record(**event: Any) -> None:
    path = os.environ.get(_REPORT_VARIABLE)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _record(error=f"could not collect {report.nodeid or 'the tests'}")


def pytest_collection_finish(session: Any) -> None:
    if not session.items:
        _record(error="no test was collected")


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _record(started=nodeid)


def pytest_runtest_logreport(report: Any) -> None:
    if report.failed:
        _record(failed=report.nodeid, when=report.when, why=str(report.longrepr)[-1500:])
    elif report.when == "call" and report.passed:
        _record(passed=report.nodeid)


def _read_report(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


# -- the run ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the table."""

    mutation: Mutation
    caught: bool
    by: str
    seconds: float
    error: str = ""
    why: str = ""  # how the test failed
    hung: bool = False  # caught by a run that hung (in a test, or in its teardown) and was stopped


def check(mutation: Mutation, root: Path, index: int) -> Result:
    """Apply ``mutation`` to the copy, run its tests, restore the copy."""
    try:
        with applied(mutation, root):
            outcome = run_tests(root, mutation.tests, stop_first=True, run=f"m{index}")
    except StaleMutationError as exc:
        return Result(mutation, False, "", 0.0, str(exc))
    if outcome.errors:
        detail = "; ".join(outcome.errors)
        return Result(mutation, False, "", outcome.seconds, f"{detail}\n{outcome.output[-3000:]}")
    if outcome.failed:
        return Result(mutation, True, outcome.failed[0], outcome.seconds, why=outcome.why)
    if outcome.hung:
        return Result(mutation, True, outcome.hung_in, outcome.seconds, hung=True)
    return Result(mutation, False, "", outcome.seconds)


def table(results: Sequence[Result]) -> str:
    """The results as a Markdown table."""
    lines = ["| Mutation | What it breaks | Caught | By | Seconds |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        caught = "ERROR" if r.error else ("yes" if r.caught else "**no**")
        by = f"`{_short(r.by)}`" if r.by else ""
        if r.hung:
            by += " (hung)"
        lines.append(f"| `{r.mutation.name}` | {r.mutation.why} | {caught} | {by} | {r.seconds:.0f} |")
    return "\n".join(lines)


def _short(nodeid: str) -> str:
    """``tests/test_x.py::test_y`` as docs/reliability.md names tests: ``test_x.py::test_y``."""
    return nodeid.removeprefix("tests/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the tests on the unmutated copy")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--show", action="store_true", help="print how each catching test failed")
    args = parser.parse_args(argv)
    mutations = list(MUTATIONS)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"no such mutation: {', '.join(unknown)}")
        mutations = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:45} {m.file:34} {m.why}")
        return 0
    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="rocm-infer-mutate-"))
    try:
        root = scratch / "repo"
        root.mkdir()
        make_copy(root)
        print(f"copy of the package in {root}", flush=True)
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
            print(f"baseline: {len(tests)} tests on the unmutated copy ...", flush=True)
            outcome = run_tests(root, tests, stop_first=False, run="baseline")
            if outcome.failed or outcome.errors or outcome.hung or outcome.passed == 0:
                print(outcome.output[-5000:])
                problems = [*outcome.errors, *(f"fails unmutated: {t}" for t in outcome.failed)]
                print("baseline: ERROR: " + ("; ".join(problems) or "the run hung"), flush=True)
                return 2
            print(f"baseline: {outcome.passed} passed in {outcome.seconds:.0f}s", flush=True)
        results = []
        for index, mutation in enumerate(mutations, 1):
            result = check(mutation, root, index)
            results.append(result)
            verdict = "ERROR" if result.error else ("caught" if result.caught else "SURVIVED")
            print(
                f"[{index}/{len(mutations)}] {mutation.name}: {verdict} {result.by} ({result.seconds:.0f}s)", flush=True
            )
            if result.error:
                print(f"    {result.error}", flush=True)
            elif args.show and result.why:
                print("    " + result.why.replace("\n", "\n    "), flush=True)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - began
    rendered = table(results)
    print()
    print(rendered)
    caught = sum(r.caught for r in results)
    errors = sum(bool(r.error) for r in results)
    survived = len(results) - caught - errors
    summary = f"{caught} of {len(results)} mutations caught, {survived} survived, {errors} errors, in {elapsed:.0f}s"
    print()
    print(summary)
    if args.markdown is not None:
        args.markdown.write_text(f"{rendered}\n\n{summary}\n")
    if errors:
        return 2
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
