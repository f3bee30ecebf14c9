"""The examples run as users run them, against a real llama-server, and say what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_script(path: Path, *args: str) -> str:
    """Run a script as a user would; its stdout, after checking it succeeded."""
    result = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_example(name: str, model: Path) -> str:
    return run_script(EXAMPLES / name, str(model))


@pytest.mark.usefixtures("no_leaked_servers")
def test_demo_streams_and_reports_speed(tiny_model_path: Path) -> None:
    out = run_example("demo.py", tiny_model_path)
    assert "200 tokens (length)" in out
    assert "tokens/s" in out and "llama-server stopped." in out


@pytest.mark.usefixtures("no_leaked_servers")
def test_stream_example(tiny_model_path: Path) -> None:
    out = run_example("stream.py", tiny_model_path)
    assert "GenerateMetrics(" in out and "generated_tokens=" in out


@pytest.mark.usefixtures("no_leaked_servers")
def test_chat_example_keeps_a_history(tiny_model_path: Path) -> None:
    out = run_example("chat.py", tiny_model_path)
    assert "> What is a GPU?" in out and "> And a CPU?" in out


@pytest.mark.usefixtures("no_leaked_servers")
def test_cancel_example_frees_the_slot(tiny_model_path: Path) -> None:
    out = run_example("cancel.py", tiny_model_path)
    assert "stopped after 10 tokens: finish_reason='cancelled'" in out
    assert "every slot idle" in out and "next generation:" in out


def run_benchmark(name: str, model: Path, *args: str) -> str:
    return run_script(EXAMPLES.parent / "benchmarks" / name, str(model), "--rounds", "1", *args)


@pytest.mark.usefixtures("no_leaked_servers")
def test_benchmarks_run(tiny_model_path: Path) -> None:
    # Figures are not checked here (timings belong to benchmark runs): only that the scripts still work.
    assert run_benchmark("cancel_to_idle.py", tiny_model_path).count("cancel -> all slots idle") == 3
    assert run_benchmark("stream_rate.py", tiny_model_path, "--lengths", "16,32").count("SDK / server rate") == 2
