"""MkDocs hooks for the documentation site (mkdocs.yml names this file).

The docstrings use Sphinx roles (:class:`~rocm_infer.types.Token`), which the
API reference would otherwise show literally: each becomes plain code, the
last part of the name only when it starts with ``~``, as Sphinx shows it.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def _shown(match: re.Match[str]) -> str:
    tilde, name, call = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}{call or ''}</code>"


def on_post_page(output: str, **_: Any) -> str:
    return _ROLE.sub(_shown, output)
