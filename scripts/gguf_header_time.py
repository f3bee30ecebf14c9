"""Time read_gguf_info on a big (sparse) GGUF file laid out like a real 70B-class model.

    python scripts/gguf_header_time.py [--layers 80] [--embd 8192] [--vocab 128256] [--rounds 20]

The file has a real-sized vocabulary (tokens, scores, types), a chat template, and a
llama-style tensor table (9 tensors per layer, Q4_K) whose data is not written: the
file is extended with truncate, so it takes almost no disk space. Prints the file
size, the bytes of header, and the median and worst time of read_gguf_info.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from rocm_infer import read_gguf_info
from rocm_infer.types import format_bytes


def make_sparse_model(path: Path, *, layers: int, embd: int, vocab: int) -> int:
    """Write the header of a llama-shaped Q4_K model and extend the file to its full size; return the header size."""
    ff = embd * 7 // 2 // 256 * 256
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("sparse-llama-shape")
    writer.add_context_length(131072)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_head_count(64)
    writer.add_feed_forward_length(ff)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_token_list([f"tok_{i:06d}" for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * vocab)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}" * 50)
    q4k = gguf.GGMLQuantizationType.Q4_K
    block, type_size = gguf.GGML_QUANT_SIZES[q4k]
    total = 0

    def add(name: str, rows: int, cols: int, quant: bool = True) -> None:
        nonlocal total
        if quant:
            nbytes = rows * cols // block * type_size
            writer.add_tensor_info(name, (rows, cols // block * type_size), np.dtype(np.uint8), nbytes, raw_dtype=q4k)
        else:
            nbytes = cols * 4
            writer.add_tensor_info(name, (cols,), np.dtype(np.float32), nbytes)
        total += nbytes

    add("token_embd.weight", vocab, embd)
    for i in range(layers):
        for part, rows, cols in (
            ("attn_q", embd, embd),
            ("attn_k", embd // 8, embd),
            ("attn_v", embd // 8, embd),
            ("attn_output", embd, embd),
            ("ffn_gate", ff, embd),
            ("ffn_up", ff, embd),
            ("ffn_down", embd, ff),
        ):
            add(f"blk.{i}.{part}.weight", rows, cols)
        add(f"blk.{i}.attn_norm.weight", 1, embd, quant=False)
        add(f"blk.{i}.ffn_norm.weight", 1, embd, quant=False)
    add("output.weight", vocab, embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with open(path, "r+b") as f:
        header = f.seek(0, 2)
        data_start = -(-header // 32) * 32
        f.truncate(data_start + total)
    return header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--embd", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sparse.gguf"
        header = make_sparse_model(path, layers=args.layers, embd=args.embd, vocab=args.vocab)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            info = read_gguf_info(path)
            times.append(time.perf_counter() - started)
        print(repr(info))
        print(
            f"file {format_bytes(path.stat().st_size)}, header {format_bytes(header)}, {info.tensor_count} tensors; "
            f"read_gguf_info median {statistics.median(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms "
            f"({args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
