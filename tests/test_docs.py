"""The documentation site: it builds with --strict, its Python examples (and README's) run against
a real llama-server, and the configuration reference names every field."""

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
from run_doc_snippets import FRAGMENT_MARKER, UnclassifiedBlockError, blocks, python_blocks

import rocm_infer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Every page with examples, README first, relative to the repository root.
MARKDOWN = ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
PAGES = [page for page in MARKDOWN if python_blocks((ROOT / page).read_text(), page)]
RUNNER = ROOT / "scripts" / "run_doc_snippets.py"


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
    wanted = {"README.md", *(f"docs/{name}" for name in ("index.md", "getting-started.md", "streaming.md"))}
    assert wanted | {"docs/configuration.md", "docs/fastapi.md"} <= set(PAGES)


def test_readme_runs_its_headline_example_and_marks_only_a_few_fragments() -> None:
    found = [b for b in blocks((ROOT / "README.md").read_text(), "README.md") if b.language == "python"]
    assert "asyncio.run(main())" in found[0].source and found[0].kind == "run"
    fragments = [b for b in found if b.kind == "fragment"]
    assert len(fragments) <= 2 < len(found) - len(fragments), [(b.line, b.kind) for b in found]


def run_snippets(page: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The docs runner on ``page``, with warnings as errors, as the docs check runs it."""
    return subprocess.run(
        [sys.executable, "-W", "error", str(RUNNER), str(page)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
@pytest.mark.parametrize("page", PAGES)
def test_every_python_example_runs(
    page: str,
    tiny_model_path: Path,
    scripted_model_path: Path,
    embedding_model_path: Path,
    reranker_model_path: Path,
    fim_model_path: Path,
    tmp_path: Path,
) -> None:
    (tmp_path / "model.gguf").symlink_to(tiny_model_path)
    # A model whose chat template takes tools, for the tools and reasoning examples.
    (tmp_path / "tools-model.gguf").symlink_to(scripted_model_path)
    # An embedding model and a reranker, for the embeddings page.
    (tmp_path / "embedding-model.gguf").symlink_to(embedding_model_path)
    (tmp_path / "reranker.gguf").symlink_to(reranker_model_path)
    (tmp_path / "coder-model.gguf").symlink_to(fim_model_path)
    # A home with a folder of models, for the examples that look in ~/models.
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "tiny-llama.gguf").symlink_to(tiny_model_path)
    result = run_snippets(ROOT / page, tmp_path, {"HOME": str(tmp_path / "home")})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    text = (ROOT / page).read_text()
    ran = len(python_blocks(text, page))
    fragments = sum(b.kind == "fragment" for b in blocks(text, page))
    assert f"=== {ROOT / page}: {ran} blocks ran, {fragments} fragments not run" in result.stdout
    for noise in ("Exception ignored", "Unclosed", "ResourceWarning", "Traceback"):
        assert noise not in result.stderr, result.stderr


# -- the runner itself: nothing it cannot classify is skipped in silence ---------------------------


@pytest.mark.parametrize("page", MARKDOWN)
def test_every_fence_of_the_pages_is_classified(page: str) -> None:
    blocks((ROOT / page).read_text(), page)  # raises UnclassifiedBlockError on a fence it cannot classify


def test_py_fences_and_indented_blocks_run_and_fragments_do_not(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n```py\nseen = ['py']\n```\n\n"
        "* In a list item:\n\n"
        "  ```python\n  seen.append('indented')\n  if seen:\n      seen.append('nested')\n  ```\n\n"
        f"{FRAGMENT_MARKER}\n```python\nundefined_name.explode()\n```\n\n"
        "```sh\nexit 1\n```\n\n```\nplain output\n```\n\n"
        "~~~python\nawait __import__('asyncio').sleep(0)\nprint('seen:', seen)\n~~~\n"
    )
    kinds = [(b.language, b.kind) for b in blocks(page.read_text())]
    assert kinds == [
        ("py", "run"),
        ("python", "run"),
        ("python", "fragment"),
        ("sh", "other"),
        ("", "other"),
        ("python", "run"),
    ]
    result = run_snippets(page, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "seen: ['py', 'indented', 'nested']" in result.stdout
    assert f"=== {page}: 3 blocks ran, 1 fragments not run" in result.stdout


@pytest.mark.parametrize(
    ("markdown", "line", "why"),
    [
        ("```pyhton\nprint('typo')\n```\n", 7, "a ```pyhton block"),
        ("```python3\nprint('not a language it knows')\n```\n", 7, "a ```python3 block"),
        ("  ```javascript\n  alert(1)\n  ```\n", 7, "a ```javascript block"),
        ("```python\nprint('never closed')\n", 7, "never closed"),
        (f"{FRAGMENT_MARKER}\n```sh\nls\n```\n", 7, "marks a 'sh' block"),
        (f"{FRAGMENT_MARKER}\n\nSome text.\n\n```python\nx\n```\n", 7, "must be right before a block"),
        (f"Text.\n\n{FRAGMENT_MARKER}\n", 9, "marks no block"),
    ],
    ids=["typo", "python3", "indented-unknown", "unclosed", "marker-on-sh", "marker-far", "marker-alone"],
)
def test_a_block_the_runner_cannot_classify_fails_the_page_before_anything_runs(
    markdown: str, line: int, why: str, tmp_path: Path
) -> None:
    page = tmp_path / "page.md"
    # A block that would run first, and leave a file behind: nothing may run at all.
    page.write_text(f"```python\nopen('ran', 'w').close()\n```\n\nLine 5.\n\n{markdown}")
    with pytest.raises(UnclassifiedBlockError, match=re.escape(why)):
        blocks(page.read_text(), str(page))
    result = run_snippets(page, tmp_path)
    assert result.returncode == 1
    assert f"run_doc_snippets: {page}:{line}: " in result.stderr and why in result.stderr, result.stderr
    assert not (tmp_path / "ran").exists()


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
