"""Run the Python code blocks of Markdown pages, each page as one session.

    python scripts/run_doc_snippets.py README.md docs/streaming.md [...]

Every fenced block of a page is classified first, and a fence the runner cannot
classify fails the page before anything runs, so that no example is skipped
unnoticed:

* ``python`` and ``py`` blocks run, indented ones (in a list item) included;
* a Python block right after the line ``<!-- fragment: not run -->`` is a
  fragment (it uses names defined nowhere, or a server the page's reader
  started): it is not run, and is counted as such;
* a Python block that only includes a file (``--8<--``) is not run: the
  included file is tested on its own;
* blocks in a language that is not Python (``sh``, ``text`` …, see
  ``OTHER_LANGUAGES``) or with none (program output) are left alone.

Anything else (another info string, a fence never closed, a fragment marker
that marks no Python block) is an error.

The blocks of a page run in order in one namespace, as cells of a notebook do:
top-level ``await`` works (in one event loop per page), and a block that calls
``asyncio.run()`` runs outside that loop. The repository's ``examples/``
folder is importable. Run it where ``model.gguf`` names the model the
examples should use.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent

PYTHON = frozenset({"python", "py"})
# Languages whose blocks are never run; "" is a block without one (output, a diagram).
OTHER_LANGUAGES = frozenset({"", "sh", "bash", "console", "shell", "text", "json", "toml", "yaml", "ini"})
FRAGMENT_MARKER = "<!-- fragment: not run -->"

_OPENING = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")

Kind = Literal["run", "fragment", "include", "other"]


class UnclassifiedBlockError(ValueError):
    """A page has a fenced block the runner cannot classify (see the module docs)."""


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block: where it opens (1-based line), its language, its text, what is done with it."""

    line: int
    language: str
    source: str
    kind: Kind


def blocks(markdown: str, page: str = "<page>") -> list[Block]:
    """Every fenced block of ``markdown``, in order, classified.

    Raises :class:`UnclassifiedBlockError` (naming ``page`` and the line) for a
    fence in a language the runner does not know, a fence never closed, or a
    fragment marker that is not right before a Python block.
    """
    lines = markdown.splitlines()
    found: list[Block] = []
    marked_at: int | None = None  # line of a fragment marker waiting for its block
    i = 0
    while i < len(lines):
        text = lines[i]
        opening = _OPENING.match(text)
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            if text.strip() == FRAGMENT_MARKER:
                marked_at = i + 1
            elif text.strip() and marked_at is not None:
                raise UnclassifiedBlockError(f"{page}:{marked_at}: {FRAGMENT_MARKER} must be right before a block")
            i += 1
            continue
        start = i + 1
        indent = len(opening["indent"])
        fence = opening["fence"]
        language = opening["info"].strip().split(maxsplit=1)[0].lower() if opening["info"].strip() else ""
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            # Each line loses the fence's own indentation (CommonMark), no more.
            line = lines[i]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            i += 1
        if i == len(lines):
            raise UnclassifiedBlockError(f"{page}:{start}: the {fence} fence is never closed")
        i += 1
        source = "\n".join(body) + "\n"
        kind: Kind
        if language in PYTHON:
            if marked_at is not None:
                kind = "fragment"
            elif source.lstrip().startswith("--8<--"):
                kind = "include"
            else:
                kind = "run"
        elif language in OTHER_LANGUAGES:
            if marked_at is not None:
                raise UnclassifiedBlockError(f"{page}:{marked_at}: {FRAGMENT_MARKER} marks a {language!r} block")
            kind = "other"
        else:
            raise UnclassifiedBlockError(
                f"{page}:{start}: a {fence}{language} block: the runner knows Python ({', '.join(sorted(PYTHON))}) "
                f"and {', '.join(sorted(OTHER_LANGUAGES - {''}))}, or no language at all"
            )
        found.append(Block(start, language, source, kind))
        marked_at = None
    if marked_at is not None:
        raise UnclassifiedBlockError(f"{page}:{marked_at}: {FRAGMENT_MARKER} marks no block")
    return found


def python_blocks(markdown: str, page: str = "<page>") -> list[str]:
    """The page's Python blocks that run, in order (fragments and file inclusions left out).

    Raises :class:`UnclassifiedBlockError` as :func:`blocks` does.
    """
    return [block.source for block in blocks(markdown, page) if block.kind == "run"]


def run_page(path: Path) -> tuple[int, int]:
    """Run every runnable block of ``path``; how many ran, and how many fragments were not run.

    Raises :class:`UnclassifiedBlockError` before running anything if a block
    cannot be classified, and whatever a block raises.
    """
    found = blocks(path.read_text(), str(path))
    runnable = [block for block in found if block.kind == "run"]
    namespace: dict[str, object] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    try:
        for number, block in enumerate(runnable, 1):
            print(f"--- {path.name}, block {number} (line {block.line})", flush=True)
            where = f"{path.name} (block {number}, line {block.line})"
            code = compile(block.source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if code.co_flags & inspect.CO_COROUTINE:
                loop.run_until_complete(eval(code, namespace))
            else:
                exec(code, namespace)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return len(runnable), sum(block.kind == "fragment" for block in found)


def main() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    for page in sys.argv[1:]:
        try:
            ran, fragments = run_page(Path(page))
        except UnclassifiedBlockError as exc:
            raise SystemExit(f"run_doc_snippets: {exc}") from None
        print(f"=== {page}: {ran} blocks ran, {fragments} fragments not run", flush=True)


if __name__ == "__main__":
    main()
