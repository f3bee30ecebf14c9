"""Shared by the examples: which model to run.

Pass a GGUF path as the first argument to use your own model; without one the
examples use the tiny demo model (random weights, a word vocabulary), made on
first use under .cache/ with the `gguf` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / ".cache" / "demo" / "tiny-llama.gguf"


def model_path() -> Path:
    """The model named on the command line, else the demo model."""
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    return demo_model()


def demo_model() -> Path:
    """The tiny demo model, made on first use."""
    from rocm_infer.tiny_model import demo_model

    if not DEMO_MODEL.exists():
        print(f"making the tiny demo model at {DEMO_MODEL.relative_to(ROOT)} ...", file=sys.stderr)
    return demo_model(DEMO_MODEL.parent)
