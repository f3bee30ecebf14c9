"""The test model maker: deterministic, and a file the SDK's own reader understands."""

from __future__ import annotations

from pathlib import Path

from tiny_model import make_tiny_model

from rocm_infer.gguf import read_gguf_header


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path / "a.gguf", seed=3).read_bytes()
    b = make_tiny_model(tmp_path / "b.gguf", seed=3).read_bytes()
    c = make_tiny_model(tmp_path / "c.gguf", seed=4).read_bytes()
    assert a == b
    assert a != c


def test_header_describes_a_small_llama_with_a_long_context(tmp_path: Path) -> None:
    header = read_gguf_header(make_tiny_model(tmp_path / "m.gguf", context_length=16384))
    assert header.architecture == "llama"
    assert header.context_length == 16384
    assert header.has_chat_template
    assert header.vocab_size is not None and header.vocab_size > 1000
    assert header.file_size < 8 * 1024 * 1024
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed
