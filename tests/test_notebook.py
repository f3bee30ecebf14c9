"""examples/quickstart.ipynb, and loading a model twice, executed headless in a real Jupyter kernel."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import llama_server_pids
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import rocm_infer

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def text_of(cell: Any, name: str = "stdout") -> str:
    """What a cell printed on ``name``, or (``"result"``) the plain-text repr it displayed."""
    parts = []
    for output in cell.outputs:
        if name == "result" and output.output_type == "execute_result":
            parts.append(output.data["text/plain"])
        elif output.output_type == "stream" and output.name == name:
            parts.append(output.text)
    return "".join(parts)


@pytest.fixture
def kernel_env(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this environment: its llama-servers serve this run's model, so the
    # leak check counts them.
    monkeypatch.setenv("ROCM_INFER_MODEL", str(tiny_model_path))


@pytest.fixture
async def kernel(kernel_env: None) -> AsyncIterator[NotebookClient]:
    """A notebook client with a running kernel whose working directory is examples/."""
    client = NotebookClient(
        new_notebook(), timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    async with client.async_setup_kernel():
        yield client


async def run(client: NotebookClient, source: str) -> Any:
    """Execute one cell; nbclient raises CellExecutionError if it fails."""
    cell = new_code_cell(source)
    client.nb.cells.append(cell)
    await client.async_execute_cell(cell, len(client.nb.cells) - 1)
    return cell


@pytest.mark.usefixtures("no_leaked_servers", "kernel_env")
async def test_the_quickstart_notebook_runs_and_shows_what_it_says() -> None:
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}})
    await client.async_execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not text_of(cell, "stderr"), cell.source

    load, info, stream, cancel, metrics, close = code[1:]
    stages = re.findall(r"^\s*\d+\.\d\ds  (\w+)", text_of(load), re.M)
    assert stages[0] == "starting" and stages[-1] == "ready", text_of(load)
    assert re.search(r"<TextModel llama .* pid=\d+ ready>", text_of(load))
    assert "ModelInfo(" in text_of(info, "result") and "slots=2" in text_of(info, "result")
    generated = text_of(stream).strip()
    assert generated and re.fullmatch(
        r"<TokenStream finish_reason='(length|stop)', \d+ tokens>", text_of(stream, "result")
    )
    assert text_of(cancel) == "cancelled\nevery slot idle\n"
    assert re.fullmatch(r"<TokenStream finish_reason='cancelled', \d+ tokens>", text_of(cancel, "result"))
    assert text_of(metrics, "result").startswith("GenerateMetrics(prompt_tokens=")
    assert text_of(close, "result").endswith("closed>")


async def test_running_the_load_cell_again_closes_the_first_server(
    kernel: NotebookClient, server_binary: str, no_leaked_servers: None
) -> None:
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    setup, load = [c.source for c in nb.cells if c.cell_type == "code"][:2]
    await run(kernel, setup)
    first = int(text_of(await run(kernel, load + "\nprint(model.server.pid)")).split()[-1])
    again = await run(kernel, load + "\nprint(model.server.pid)")
    second = int(text_of(again).split()[-1])
    running = llama_server_pids(server_binary)
    assert second in running and first not in running
    assert not text_of(again, "stderr")  # closed properly: nothing to warn about
    await run(kernel, "await model.close()")


async def test_a_model_dropped_in_a_kernel_warns_and_its_server_is_stopped(
    kernel: NotebookClient, server_binary: str, no_leaked_servers: None
) -> None:
    await run(kernel, "import os, rocm_infer\npath = os.environ['ROCM_INFER_MODEL']")
    first_cell = await run(kernel, "model = await rocm_infer.load_model(path)\nprint(model.server.pid)")
    first = int(text_of(first_cell).split()[-1])
    again = await run(kernel, "model = await rocm_infer.load_model(path)\nprint(model.server.pid)")
    assert first not in llama_server_pids(server_binary)
    # Loud, even with Python's default filters (which hide ResourceWarning): the log line reaches stderr.
    assert f"a model was dropped without close(): stopping its llama-server pid {first}" in text_of(again, "stderr")
    await run(kernel, "await model.close()")


async def test_what_a_notebook_displays_is_short_and_holds_no_api_key(model: rocm_infer.TextModel) -> None:
    stream = model.generate("Hello", max_tokens=4)
    opened = repr(stream)
    await stream.collect()
    assert model.server is not None
    key = model.server._api_key
    shown = {"model": repr(model), "open stream": opened, "stream": repr(stream), "metrics": repr(stream.metrics)}
    assert re.fullmatch(r"<TextModel llama 'rocm-infer-tiny-llama-seed0' pid=\d+ ready>", shown["model"])
    assert shown["open stream"] == "<TokenStream open, 0 tokens>"
    assert shown["stream"] == "<TokenStream finish_reason='length', 4 tokens>"
    assert re.fullmatch(
        r"GenerateMetrics\(prompt_tokens=\d+, .*generated_tokens=4, ttft=.*total=[\d.]+s\)", shown["metrics"]
    )
    for what, text in shown.items():
        assert key not in text and len(text) < 200, what
