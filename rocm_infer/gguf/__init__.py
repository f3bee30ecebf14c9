"""Header-only reading of GGUF model files: this package's public names, gathered from its modules.

:mod:`~rocm_infer.gguf.reader` reads and checks a file's header, metadata and
tensor-info table (:func:`read_gguf_header`, :func:`check_gguf_file`);
:mod:`~rocm_infer.gguf.ggml_types` holds the ggml tensor type and file type
tables (:func:`type_bits`); :mod:`~rocm_infer.gguf.info` derives a
:class:`~rocm_infer.types.ModelInfo` from headers (:func:`read_gguf_info`).
"""

from __future__ import annotations

from .ggml_types import type_bits
from .info import quantization_of, read_gguf_info, shard_path, size_label, split_name
from .reader import (
    CHAT_TEMPLATE_KEY,
    CHAT_TEMPLATE_MAX_BYTES,
    GGUF_MAGIC,
    SUPPORTED_VERSIONS,
    GGUFArray,
    GGUFHeader,
    GGUFValueType,
    check_gguf_file,
    read_gguf_header,
)

__all__ = [
    "CHAT_TEMPLATE_KEY",
    "CHAT_TEMPLATE_MAX_BYTES",
    "GGUFArray",
    "GGUFHeader",
    "GGUFValueType",
    "GGUF_MAGIC",
    "SUPPORTED_VERSIONS",
    "check_gguf_file",
    "quantization_of",
    "read_gguf_header",
    "read_gguf_info",
    "shard_path",
    "size_label",
    "split_name",
    "type_bits",
]
