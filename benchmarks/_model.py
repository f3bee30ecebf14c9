"""Benchmarks run on a model given on the command line, else on the tiny demo model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _common import demo_model  # noqa: E402

__all__ = ["demo_model"]
