"""Shared fixtures: the tiny GGUF model, the real llama-server binary, leak checks.

Integration tests (marked ``integration``) drive a real llama-server. They
skip when no binary is found, unless ``ROCM_INFER_REQUIRE_SERVER=1`` (set by
``make test`` and CI), where a missing binary fails instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tiny_model import make_tiny_model

import rocm_infer
from rocm_infer.errors import BinaryNotFoundError

# This run's temporary directory. Every model the tests start a server on lives
# under it, so a server whose command line names it is this run's: another test
# run, or a user's own llama-server on the same machine, is never counted.
_run_dir: str | None = None


@pytest.fixture(scope="session", autouse=True)
def _mark_this_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    global _run_dir
    _run_dir = str(tmp_path_factory.getbasetemp())


def llama_server_pids(binary: str) -> set[int]:
    """Pids of live processes running ``binary`` for this test run (zombies excluded)."""
    real = os.path.realpath(binary)
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if exe == real and state != "Z" and (_run_dir is None or _run_dir in cmdline):
            pids.add(int(entry))
    return pids


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama GGUF with a word vocabulary, made once per run."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama.gguf", seed=0)


@pytest.fixture(scope="session")
def server_binary() -> str:
    """The llama-server binary the SDK would use; skips (or fails under
    ROCM_INFER_REQUIRE_SERVER=1) when there is none."""
    try:
        return rocm_infer.find_llama_server()
    except BinaryNotFoundError as exc:
        if os.environ.get("ROCM_INFER_REQUIRE_SERVER") == "1":
            pytest.fail(f"ROCM_INFER_REQUIRE_SERVER=1 but no llama-server binary: {exc}")
        pytest.skip(f"no llama-server binary: {exc}")


@pytest.fixture
def no_leaked_servers(server_binary: str) -> Iterator[None]:
    """Fails the test if it leaves a llama-server process behind."""
    before = llama_server_pids(server_binary)
    yield
    leaked = llama_server_pids(server_binary) - before
    assert not leaked, f"llama-server processes left running: {sorted(leaked)}"


@pytest.fixture
async def model(tiny_model_path: Path, no_leaked_servers: None) -> AsyncIterator[rocm_infer.TextModel]:
    """A TextModel on a real llama-server with 4 slots, closed after the test."""
    async with rocm_infer.load_model(tiny_model_path, parallel_slots=4, context_len=8192) as m:
        yield m
