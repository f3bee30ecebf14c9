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
def scripted_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripted model (rocm_infer.scripted_model): greedy decoding says known scripts of
    reasoning, tool calls and answers; its character vocabulary lets grammars spell JSON."""
    from rocm_infer.scripted_model import GRAMMAR_NOISE, make_scripted_model

    return make_scripted_model(tmp_path_factory.mktemp("scripted") / "scripted.gguf", noise=GRAMMAR_NOISE)


@pytest.fixture(scope="session")
def fim_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with fill-in-the-middle tokens (for infill)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-fim.gguf", seed=0, fim=True)


@pytest.fixture(scope="session")
def embedding_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT embedding model (mean pooling, 48 dimensions, a 512-token context)."""
    from rocm_infer.tiny_encoders import make_embedding_model

    return make_embedding_model(tmp_path_factory.mktemp("encoders") / "embed.gguf", seed=3, dimensions=48)


@pytest.fixture(scope="session")
def reranker_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT reranker (rank pooling and a classification head; random scores)."""
    from rocm_infer.tiny_encoders import make_reranker_model

    return make_reranker_model(tmp_path_factory.mktemp("encoders") / "rerank.gguf", seed=3)


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


# -- what a test's child interpreter runs to leave one safeguard alone on the job ------------------


def patch_spawn(*, parent_death_signal: bool = True) -> str:
    """Python source for a test's child interpreter (a script, a Jupyter kernel) to run before it
    loads a model: the llama-servers it starts afterwards are spawned without the parent-death
    signal (PR_SET_PDEATHSIG) unless ``parent_death_signal``, so that the interpreter's death alone
    no longer kills them.

    It replaces rocm_infer's preexec_fn factory: the one private name these tests use, kept here
    to be re-pointed in one place."""
    return f"""\
import rocm_infer.reaper as _reaper

_die_with_parent = _reaper.die_with_parent
assert callable(_die_with_parent)


def _spawn_hook():
    return _die_with_parent() if {parent_death_signal!r} else None


_reaper.die_with_parent = _spawn_hook
"""


def keep_forever(name: str) -> str:
    """A Python statement (one line, to put at any indentation) that makes the object named
    ``name`` immortal, a reference nobody ever drops: no finalizer, not even at interpreter
    shutdown, can then stop what it owns."""
    return f"__import__('ctypes').pythonapi.Py_IncRef(__import__('ctypes').py_object({name}))"
