"""The tables of ggml tensor types and llama.cpp file types that GGUF files name, each kept once.

:data:`GGML_TYPES` describes every ggml tensor type this package knows (the
``ggml type`` of a tensor-info entry); :data:`FILE_TYPES` names every
``llama_ftype`` (the value of ``general.file_type``). Every lookup of a type's
name, block size, bytes per block or nominal bits reads these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GGMLType:
    """One ggml tensor type.

    ``name`` is its ggml name (``"Q4_K"``); a tensor of it is stored in blocks
    of ``block_size`` elements that take ``type_size`` bytes each; ``bits`` is
    the nominal bits per weight its name promises (``Q4_K`` → 4, ``F16`` → 16).
    """

    name: str
    block_size: int
    type_size: int
    bits: int


# ggml type ids (ggml.h's ggml_type; gguf-py's GGMLQuantizationType) with their
# block sizes and bytes per block (ggml's type traits; gguf-py's GGML_QUANT_SIZES).
# A type missing here (newer than this table) is not size-checked. A plain dict typed
# read-only: the reader looks every tensor's type up here, and a mapping proxy's get is slower.
GGML_TYPES: Mapping[int, GGMLType] = {
    0: GGMLType("F32", 1, 4, 32),
    1: GGMLType("F16", 1, 2, 16),
    2: GGMLType("Q4_0", 32, 18, 4),
    3: GGMLType("Q4_1", 32, 20, 4),
    6: GGMLType("Q5_0", 32, 22, 5),
    7: GGMLType("Q5_1", 32, 24, 5),
    8: GGMLType("Q8_0", 32, 34, 8),
    9: GGMLType("Q8_1", 32, 36, 8),
    10: GGMLType("Q2_K", 256, 84, 2),
    11: GGMLType("Q3_K", 256, 110, 3),
    12: GGMLType("Q4_K", 256, 144, 4),
    13: GGMLType("Q5_K", 256, 176, 5),
    14: GGMLType("Q6_K", 256, 210, 6),
    15: GGMLType("Q8_K", 256, 292, 8),
    16: GGMLType("IQ2_XXS", 256, 66, 2),
    17: GGMLType("IQ2_XS", 256, 74, 2),
    18: GGMLType("IQ3_XXS", 256, 98, 3),
    19: GGMLType("IQ1_S", 256, 50, 1),
    20: GGMLType("IQ4_NL", 32, 18, 4),
    21: GGMLType("IQ3_S", 256, 110, 3),
    22: GGMLType("IQ2_S", 256, 82, 2),
    23: GGMLType("IQ4_XS", 256, 136, 4),
    24: GGMLType("I8", 1, 1, 8),
    25: GGMLType("I16", 1, 2, 16),
    26: GGMLType("I32", 1, 4, 32),
    27: GGMLType("I64", 1, 8, 64),
    28: GGMLType("F64", 1, 8, 64),
    29: GGMLType("IQ1_M", 256, 56, 1),
    30: GGMLType("BF16", 1, 2, 16),
    34: GGMLType("TQ1_0", 256, 54, 1),
    35: GGMLType("TQ2_0", 256, 66, 2),
    39: GGMLType("MXFP4", 32, 17, 4),
    40: GGMLType("NVFP4", 64, 36, 4),
    41: GGMLType("Q1_0", 128, 18, 1),
    42: GGMLType("Q2_0", 64, 18, 2),
}
"""Every ggml tensor type this package knows, by type id."""

# llama_ftype (llama.h; gguf-py's LlamaFileType), the value of general.file_type, to
# its name and the ggml type most of its tensors use (llama_ftype_get_default_type).
FILE_TYPES: Mapping[int, tuple[str, int]] = {
    0: ("F32", 0),
    1: ("F16", 1),
    2: ("Q4_0", 2),
    3: ("Q4_1", 3),
    7: ("Q8_0", 8),
    8: ("Q5_0", 6),
    9: ("Q5_1", 7),
    10: ("Q2_K", 10),
    11: ("Q3_K_S", 11),
    12: ("Q3_K_M", 11),
    13: ("Q3_K_L", 11),
    14: ("Q4_K_S", 12),
    15: ("Q4_K_M", 12),
    16: ("Q5_K_S", 13),
    17: ("Q5_K_M", 13),
    18: ("Q6_K", 14),
    19: ("IQ2_XXS", 16),
    20: ("IQ2_XS", 17),
    21: ("Q2_K_S", 10),
    22: ("IQ3_XS", 21),
    23: ("IQ3_XXS", 18),
    24: ("IQ1_S", 19),
    25: ("IQ4_NL", 20),
    26: ("IQ3_S", 21),
    27: ("IQ3_M", 21),
    28: ("IQ2_S", 17),
    29: ("IQ2_M", 22),
    30: ("IQ4_XS", 23),
    31: ("IQ1_M", 29),
    32: ("BF16", 30),
    36: ("TQ1_0", 34),
    37: ("TQ2_0", 35),
    38: ("MXFP4_MOE", 39),
    39: ("NVFP4", 40),
    40: ("Q1_0", 41),
    41: ("Q2_0", 42),
}
"""Every ``llama_ftype`` this package knows: ``(name, ggml type id of most tensors)``."""

FILE_TYPE_GUESSED = 1024
"""``LLAMA_FTYPE_GUESSED``: a flag or-ed into ``general.file_type``, not a type."""


def type_bits(ggml_type: int) -> int | None:
    """The nominal bits per weight of a ggml type (``Q4_K`` → 4, ``F16`` → 16), or ``None``."""
    known = GGML_TYPES.get(ggml_type)
    return known.bits if known is not None else None
