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


def table_rows(report: str) -> dict[tuple[str, str], list[str]]:
    """The results table of benchmarks.md: (measurement, what) -> the other cells."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0][:1].isdigit():
            rows[cells[0], cells[1]] = cells[2:]
    return rows


@pytest.mark.usefixtures("no_leaked_servers")
def test_benchmark_harness_reports_every_measurement(tiny_model_path: Path, tmp_path: Path) -> None:
    # Tiny sizes, one round (see SMOKE in benchmarks/bench.py): only that every measurement
    # produces its row and the plots are written; timings belong to `make bench`.
    bench = EXAMPLES.parent / "benchmarks" / "bench.py"
    run_script(bench, "--smoke", "--model", str(tiny_model_path), "--out", str(tmp_path))
    rows = table_rows((tmp_path / "benchmarks.md").read_text())
    clients = ("rocm_infer", "openai", "aiohttp")
    expected = [
        *(("1. Throughput", f"{n} tokens, {c}") for n in (8, 16) for c in (*clients, "rocm_infer / aiohttp")),
        *(("2. Client CPU per token", f"{c} (llama-server, 16 tokens: about one event per read)") for c in clients),
        *(("3. Time to first token", f"8 tokens, {c}: observed - prompt_ms") for c in clients),
        ("4. Start-up", "load_model after llama-server logs 'listening on'"),
        ("5. Cancel", "task.cancel() -> every slot idle in /slots"),
        *(("6. Concurrency", f"{n} streams on 4 slots, {c}") for n in (1, 4) for c in ("rocm_infer", "aiohttp")),
        ("7. Batch", "batch_generate of 16 prompts on 4 slots, 4 tokens each"),
        ("7. Batch", "aiohttp loop of 16 prompts on 4 slots, 4 tokens each (llama-server's bound)"),
        ("7. Batch", "classify of 16 prompts on 4 slots"),
        (
            "7. Batch",
            "batch_generate of 16 prompts on 4 slots, 2 tokens each, "
            "weight-bound model (F16, n_embd 128, 2 layers, n_ff 256)",
        ),
        ("8. Memory", "RSS per open stream, 20 open, rocm_infer"),
        ("8. Memory", "import rocm_infer"),
        *(
            ("10. Client CPU", f"per token at a steady 1,000 tok/s (synthetic source, one event a read), {c}")
            for c in ("rocm_infer generate", "rocm_infer chat", "aiohttp /completion", "openai chat")
        ),
    ]
    for key in expected:
        assert key in rows, f"no row {key} in the report"
        assert rows[key][0], f"row {key} has no figure"
    synthetic = [what for measurement, what in rows if what.endswith("tok/s)") and measurement.startswith("2.")]
    assert sorted(what.split(" ")[0] for what in synthetic) == sorted(("rocm_infer", "openai", "httpx-sse", "aiohttp"))
    # Every measurement, the other scripts' included (each runs in a process of its own and
    # only adds a note if it fails), has its rows.
    report = (tmp_path / "benchmarks.md").read_text()
    assert "failed (exit" not in report and "is not there" not in report
    assert {int(measurement.split(".")[0]) for measurement, _ in rows} == set(range(1, 19))
    goals = {key: cells for key, cells in rows.items() if cells[3]}  # rows with a goal say whether it was met
    with_goals = {int(measurement.split(".")[0]) for measurement, _ in goals}
    assert with_goals == {1, 2, 4, 5, 7, 9, 10, 11, 12, 14, 15, 16}
    assert all(cells[4] in ("yes", "**no**") for cells in goals.values())
    for name in ("throughput", "cpu_per_token", "concurrency", "client_cpu", "embeddings"):
        assert (tmp_path / "img" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
