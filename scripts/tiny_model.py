"""Write the tiny random-weight llama GGUF model (see :mod:`rocm_infer.tiny_model`).

python scripts/tiny_model.py tiny.gguf --seed 0
"""

from __future__ import annotations

from rocm_infer.tiny_model import CHAT_TEMPLATE, WORDS, demo_model, main, make_tiny_model

__all__ = ["CHAT_TEMPLATE", "WORDS", "demo_model", "main", "make_tiny_model"]

if __name__ == "__main__":
    raise SystemExit(main())
