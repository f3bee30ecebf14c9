"""Run the Python code blocks of Markdown pages, each page as one session.

    python scripts/run_doc_snippets.py docs/streaming.md [...]

The blocks of a page run in order in one namespace, as cells of a notebook do:
top-level ``await`` works (in one event loop per page), and a block that calls
``asyncio.run()`` runs outside that loop. Blocks that only include a file
(``--8<--``) are skipped: the included file is tested on its own. The
repository's ``examples/`` folder is importable. Run it where ``model.gguf``
names the model the examples should use.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", re.M | re.S)


def python_blocks(markdown: str) -> list[str]:
    """The page's ```python blocks, in order, without file inclusions."""
    return [b for b in _BLOCK.findall(markdown) if not b.lstrip().startswith("--8<--")]


def run_page(path: Path) -> int:
    """Run every block of ``path``; how many ran."""
    blocks = python_blocks(path.read_text())
    namespace: dict[str, object] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    try:
        for number, source in enumerate(blocks, 1):
            print(f"--- {path.name}, block {number}", flush=True)
            code = compile(source, f"{path.name} (block {number})", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if code.co_flags & inspect.CO_COROUTINE:
                loop.run_until_complete(eval(code, namespace))
            else:
                exec(code, namespace)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return len(blocks)


def main() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    for page in sys.argv[1:]:
        ran = run_page(Path(page))
        print(f"=== {page}: {ran} blocks ran", flush=True)


if __name__ == "__main__":
    main()
