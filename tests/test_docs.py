"""The documentation site: it builds with --strict, its Python examples run against a real
llama-server, and the configuration reference names every field."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_doc_snippets import python_blocks

import rocm_infer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p.read_text()))


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert api.count("load_model") > 1 and "sse_response" in api
    assert ":class:" not in api and ":func:" not in api  # Sphinx roles shown as code, not literally


def test_the_pages_with_examples_are_found() -> None:
    assert {"index.md", "getting-started.md", "streaming.md", "configuration.md", "fastapi.md"} <= set(PAGES)


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
@pytest.mark.parametrize("page", PAGES)
def test_every_python_example_runs(page: str, tiny_model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "model.gguf").symlink_to(tiny_model_path)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "scripts" / "run_doc_snippets.py"), str(DOCS / page)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    blocks = len(python_blocks((DOCS / page).read_text()))
    assert f"=== {DOCS / page}: {blocks} blocks ran" in result.stdout
    for noise in ("Exception ignored", "Unclosed", "ResourceWarning", "Traceback"):
        assert noise not in result.stderr, result.stderr


@pytest.mark.parametrize("config", [rocm_infer.LoadConfig, rocm_infer.GenerateConfig, rocm_infer.RestartPolicy])
def test_the_configuration_reference_names_every_field(config: type) -> None:
    page = (DOCS / "configuration.md").read_text()
    section = page.split(f"## {config.__name__}" if config is not rocm_infer.RestartPolicy else "### RestartPolicy")[1]
    section = re.split(r"^#{2,3} ", section, flags=re.M)[0]
    documented = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, re.M)
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert [name for name, _ in documented] == list(fields), "document every field, in declaration order"
    defaults = config()
    for name, default in documented:
        assert default == _shown(getattr(defaults, name)), f"{config.__name__}.{name}: the page says {default}"


def test_the_errors_reference_names_every_error() -> None:
    from rocm_infer import errors

    page = (DOCS / "errors.md").read_text()
    tree = page.split("```")[1]
    for name in errors.__all__:
        assert re.search(rf"── {name}\b", tree) or name == "RocmInferError", f"{name} is not in the tree"
        if name not in ("RocmInferError", "ServerError"):
            assert f"| `{name}` |" in page, f"{name} has no row saying when it is raised"


def _shown(value: object) -> str:
    if isinstance(value, frozenset) and not value:
        return "frozenset()"
    if hasattr(value, "items") and not value:  # a read-only mapping
        return "{}"
    return repr(value)


# -- what the pages promise ------------------------------------------------------------------------


EXTRAS_TABLES = [ROOT / "README.md", DOCS / "getting-started.md"]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_install_instructions_name_a_clone_never_an_index() -> None:
    # rocm_infer is on no package index: `pip install rocm_infer` fails for a reader.
    from_an_index = re.compile(r"pip install\s+['\"]?rocm_infer\b(?!\[[\w,]+\] @ )")
    pages = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "examples").glob("*.py")]
    pages += (ROOT / "rocm_infer").rglob("*.py")  # the hints in error messages and docstrings too
    wrong = [f"{p.name}: {m.group(0)}" for p in pages for m in from_an_index.finditer(p.read_text())]
    assert not wrong


@pytest.mark.parametrize("page", EXTRAS_TABLES, ids=lambda p: p.name)
def test_the_extras_table_names_every_extra_and_only_what_it_installs(page: Path) -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = dict(re.findall(r"^\| `([\w-]+)` \| ([^|]+) \|", page.read_text(), re.M))
    assert set(rows) == set(extras), "one row per extra of pyproject.toml"
    for extra, brings in rows.items():
        installed = {_requirement_name(r) for r in extras[extra]}
        assert set(re.findall(r"`([\w.-]+)`", brings)) <= installed, f"{page.name}: the {extra!r} row"


def test_the_fastapi_extra_can_serve_the_example() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"fastapi", "uvicorn"} <= {_requirement_name(r) for r in extras["fastapi"]}


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_slots_share_the_context_unless_parallel_slots_splits_it(tiny_model_path: Path) -> None:
    # What configuration.md says of `context_len` and `parallel_slots`, on a 4096-token context:
    # llama-server's default slots share it, so one request may use more than a quarter of it;
    # parallel_slots=4 gives each slot a quarter.
    prompt = " ".join(["word"] * 1500)
    async with rocm_infer.load_model(tiny_model_path, context_len=4096) as model:
        assert (model.info.parallel_slots, model.info.context_len) == (4, 4096)
        stream = model.generate(prompt, max_tokens=1)
        await stream.collect()
        assert stream.metrics is not None and stream.metrics.prompt_tokens > 1024
    async with rocm_infer.load_model(tiny_model_path, context_len=4096, parallel_slots=4) as model:
        assert (model.info.parallel_slots, model.info.context_len) == (4, 1024)
        with pytest.raises(rocm_infer.ContextLengthError):
            await model.generate(prompt, max_tokens=1).collect()


def test_docs_serve_serves_the_site_on_loopback(tmp_path: Path) -> None:
    # Opened from disk, site/index.html's folder links lead nowhere: `make docs-serve` is the way to read it.
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["make", "--no-print-directory", "docs-serve", f"PORT={port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/configuration/", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                time.sleep(0.2)
        else:
            pytest.fail("make docs-serve did not serve the site in a minute")
        assert "parallel_slots" in page
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if server.stderr:
            server.stderr.close()
