"""Deriving a :class:`~rocm_infer.types.ModelInfo` from GGUF headers, a split model's shards included.

:func:`read_gguf_info` turns a header into a :class:`~rocm_infer.types.ModelInfo`:
the well-known keys, plus what the tensor-info table says (parameter count,
the bits per weight actually stored, the ggml type most weights use), and
``general.file_type`` as a quantisation name with its bits and block size.
The first shard of a split model brings in the headers of the other shards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ..errors import InvalidModelError, ModelNotFoundError
from ..types import ModelInfo
from .ggml_types import FILE_TYPE_GUESSED, FILE_TYPES, GGML_TYPES
from .reader import GGUFHeader, _arch_int, _as_int, read_gguf_header

# llama.cpp's enum llama_pooling_type, as --pooling names it (the GGUF key <arch>.pooling_type).
_POOLING_TYPES: dict[int | None, str] = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def split_name(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    """``(prefix, shard number from 1, shard count)`` if ``path`` is named like a
    shard of a split model (``name-00001-of-00003.gguf``, llama.cpp's
    ``llama_split_path`` format), else ``None``."""
    match = _SPLIT_NAME.match(os.path.basename(os.fspath(path)))
    if match is None:
        return None
    directory = os.path.dirname(os.fspath(path))
    return os.path.join(directory, match["prefix"]), int(match["no"]), int(match["count"])


def shard_path(prefix: str, number: int, count: int) -> str:
    """The path of shard ``number`` (from 1) of ``count`` of a split model."""
    return f"{prefix}-{number:05d}-of-{count:05d}.gguf"


def quantization_of(file_type: int | None, type_elements: Mapping[int, int]) -> tuple[str | None, int | None]:
    """The quantisation name and the ggml type behind it.

    From ``general.file_type`` when the file has a known one; otherwise the
    ggml type that holds the most elements, by its ggml name (``"Q4_K"``).
    """
    if file_type is not None:
        known = FILE_TYPES.get(file_type & ~FILE_TYPE_GUESSED)
        if known is not None:
            return known
    if not type_elements:
        return None, None
    main = max(type_elements, key=lambda t: type_elements[t])
    main_ggml = GGML_TYPES.get(main)
    return main_ggml.name if main_ggml is not None else f"ggml type {main}", main


def size_label(parameter_count: int) -> str:
    """A parameter count the way GGUF names models: ``"8.0B"``, ``"125M"``, ``"1.5K"``.

    The same rounding as gguf-py's ``model_weight_count_rounded_notation``.
    """
    scale, suffix = next(((s, x) for s, x in ((1e12, "T"), (1e9, "B"), (1e6, "M")) if parameter_count > s), (1e3, "K"))
    scaled = parameter_count / scale
    digits = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{digits}f}{suffix}"


def _size_label_or_none(parameter_count: int) -> str | None:
    return size_label(parameter_count) if parameter_count else None


def _read_shards(first: GGUFHeader) -> list[GGUFHeader]:
    """The headers of every shard of a split model whose first shard is ``first``."""
    count = _as_int(first.get("split.count")) or 1
    if count <= 1 or _as_int(first.get("split.no")) not in (0, None):
        return [first]
    parts = split_name(first.path)
    if parts is None or parts[1] != 1 or parts[2] != count:
        raise InvalidModelError(
            f"model file {first.path!r} is shard 1 of a {count}-file split model but is not named "
            f"like one (expected NAME-00001-of-{count:05d}.gguf)",
            path=first.path,
        )
    headers = [first]
    for number in range(2, count + 1):
        path = shard_path(parts[0], number, count)
        try:
            header = read_gguf_header(path, max_string_bytes=256, max_array_items=0)
        except ModelNotFoundError:
            raise InvalidModelError(
                f"split model {first.path!r}: shard {number} of {count} ({os.path.basename(path)}) is missing",
                path=path,
            ) from None
        if _as_int(header.get("split.no")) != number - 1:
            raise InvalidModelError(
                f"split model {first.path!r}: {os.path.basename(path)} is not shard {number} of {count}",
                path=path,
            )
        headers.append(header)
    return headers


def read_gguf_info(path: str | os.PathLike[str]) -> ModelInfo:
    """What the GGUF file at ``path`` says about its model, from its header only.

    Reads the metadata and the tensor-info table (never tensor data: a
    multi-GB file takes milliseconds). For the first shard of a split model
    (``name-00001-of-00003.gguf``) the other shards' headers are read too:
    ``file_size``, ``parameter_count`` and ``bits_per_weight`` cover the
    whole model; a later shard given alone is described as it is (its own
    tensors, none of the model's metadata). The result has ``context_len == 0`` (no server context
    exists for a file that is not loaded; ``train_context_len`` is the
    model's own) and ``parallel_slots == 1``.

    Raises :class:`ModelNotFoundError` if ``path`` does not exist and
    :class:`InvalidModelError` (with ``path`` and, where a byte was at fault,
    ``offset``) if it, or a shard of it, is not a readable GGUF file.
    """
    header = read_gguf_header(path)
    shards = _read_shards(header)
    elements = sum(h.parameter_count for h in shards)
    type_elements: dict[int, int] = {}
    for h in shards:
        for ggml_type, n in h.type_elements.items():
            type_elements[ggml_type] = type_elements.get(ggml_type, 0) + n
    tensor_bytes = sum(h.tensor_bytes for h in shards)
    stated = _as_int(header.get("general.parameter_count"))
    parameter_count = stated if stated else elements
    label = header.get("general.size_label")
    file_type = _as_int(header.get("general.file_type"))
    quantization, main_type = quantization_of(file_type, type_elements)
    main = GGML_TYPES.get(main_type) if main_type is not None else None  # None too for a type newer than the table
    return ModelInfo(
        path=header.path,
        architecture=header.architecture,
        name=header.name,
        context_len=0,
        train_context_len=header.context_length,
        vocab_size=header.vocab_size,
        file_size=sum(h.file_size for h in shards),
        has_chat_template=header.has_chat_template,
        size_label=label if isinstance(label, str) and label else _size_label_or_none(parameter_count),
        parameter_count=parameter_count or None,
        file_type=file_type,
        quantization=quantization,
        quant_bits=main.bits if main is not None else None,
        quant_group_size=main.block_size if main is not None else None,
        bits_per_weight=tensor_bytes * 8 / elements if elements and tensor_bytes else None,
        layer_count=_arch_int(header, "block_count"),
        embedding_size=_arch_int(header, "embedding_length"),
        head_count=_arch_int(header, "attention.head_count"),
        expert_count=_arch_int(header, "expert_count"),
        pooling=_POOLING_TYPES.get(_arch_int(header, "pooling_type")),
        fim=True if all(f"tokenizer.ggml.fim_{k}_token_id" in header.metadata for k in ("pre", "suf", "mid")) else None,
        tensor_count=sum(h.tensor_count for h in shards),
        split_count=len(shards),
        gguf_version=header.version,
    )
