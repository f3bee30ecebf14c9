"""How much memory a model needs loaded, and how much the machine has free.

:func:`estimate` reads a model's GGUF header and sizes what llama-server
allocates for it: the weights (the file), the KV cache for the configured
context (``2 × layers × context × kv_heads × head_dim`` values, 16-bit), and
a compute buffer (the logits of one micro-batch plus a few activations of
the embedding width). :func:`measured_memory` is what a loaded server really
took: the VRAM it added on an AMD GPU, or its resident memory on the CPU.
The pool records that and uses it instead of the estimate next time.
:func:`free_memory` is what the machine has now: the discrete GPU's free
VRAM, or ``MemAvailable`` from ``/proc/meminfo``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..gguf import read_gguf_header
from ..gguf.reader import GGUFArray
from ..gpu import vram_info
from ..types import format_bytes

__all__ = ["MemoryEstimate", "estimate", "free_memory", "measured_memory"]

# What llama-server processes at once when it computes (its --ubatch-size default).
_UBATCH = 512
# Bytes per KV-cache value (f16, llama-server's default cache type).
_KV_BYTES = 2
# Bytes per activation value in the compute buffer (f32).
_ACT_BYTES = 4
# What llama-server itself takes beside the model: code, scheduler, a small host buffer.
_OVERHEAD = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """What a model is expected to take loaded, in bytes, and its parts."""

    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + _OVERHEAD

    def __repr__(self) -> str:
        return (
            f"MemoryEstimate(total={format_bytes(self.total)}: weights {format_bytes(self.weights)}, "
            f"KV cache {format_bytes(self.kv_cache)}, compute {format_bytes(self.compute)})"
        )


def _int(metadata: Mapping[str, object], key: str, default: int) -> int:
    value = metadata.get(key)
    if isinstance(value, tuple):  # a value per layer: the largest
        items = [v for v in value if isinstance(v, int)]
        return max(items) if items else default
    if isinstance(value, GGUFArray):  # too long to have been read
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def estimate(path: str | os.PathLike[str], context_len: int, *, file_size: int | None = None) -> MemoryEstimate:
    """The memory the model at ``path`` needs with a context of ``context_len`` tokens (all slots
    together). Reads the header only (milliseconds); blocking file I/O."""
    header = read_gguf_header(path)
    metadata = header.metadata
    arch = header.architecture or ""
    layers = _int(metadata, f"{arch}.block_count", 0)
    embd = _int(metadata, f"{arch}.embedding_length", 0)
    heads = _int(metadata, f"{arch}.attention.head_count", 1) or 1
    kv_heads = _int(metadata, f"{arch}.attention.head_count_kv", heads) or heads
    head_k = _int(metadata, f"{arch}.attention.key_length", embd // heads if heads else 0)
    head_v = _int(metadata, f"{arch}.attention.value_length", head_k)
    vocab = header.vocab_size or 0
    kv = layers * context_len * kv_heads * (head_k + head_v) * _KV_BYTES
    compute = _UBATCH * (vocab + 4 * embd) * _ACT_BYTES
    weights = file_size if file_size is not None else os.path.getsize(path)
    return MemoryEstimate(weights=weights, kv_cache=kv, compute=compute)


def measured_memory(pid: int | None, vram_before: int | None = None, vram_after: int | None = None) -> int | None:
    """What a loaded server takes: the VRAM it added (when both readings are given), else the
    resident memory of process ``pid`` (Linux); None when neither can be read."""
    if vram_before is not None and vram_after is not None:
        return max(0, vram_after - vram_before)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_memory(device: int | None = None) -> int | None:
    """Free VRAM of the AMD GPU ``device`` (default: the discrete one), else available RAM."""
    vram = vram_info(device)
    if vram is not None:
        return vram.free
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
