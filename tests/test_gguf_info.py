"""Tests for read_gguf_info: model information from a GGUF header.

Every file is written with gguf-py's ``GGUFWriter`` and every expected value is
read back with gguf-py's ``GGUFReader`` (both from the llama.cpp project), so
the reader is checked against the official implementation, not against
itself. The tiny model is also checked against what a real llama-server
reports about it (``/v1/models``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.utility import model_weight_count_rounded_notation

import rocm_infer
import rocm_infer.gguf as gguf_mod
from rocm_infer import InvalidModelError, ModelNotFoundError, read_gguf_info
from rocm_infer.gguf import ggml_types

QT = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# file type -> the ggml type its big tensors are stored in, and the nominal bits the name promises.
FILE_TYPES: list[tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType, int]] = [
    (FT.ALL_F32, QT.F32, 32),
    (FT.MOSTLY_F16, QT.F16, 16),
    (FT.MOSTLY_BF16, QT.BF16, 16),
    (FT.MOSTLY_Q8_0, QT.Q8_0, 8),
    (FT.MOSTLY_Q4_0, QT.Q4_0, 4),
    (FT.MOSTLY_Q5_1, QT.Q5_1, 5),
    (FT.MOSTLY_Q4_K_M, QT.Q4_K, 4),
    (FT.MOSTLY_Q6_K, QT.Q6_K, 6),
    (FT.MOSTLY_Q3_K_S, QT.Q3_K, 3),
    (FT.MOSTLY_IQ4_XS, QT.IQ4_XS, 4),
    (FT.MOSTLY_IQ2_XXS, QT.IQ2_XXS, 2),
]


def _add_quant_tensor(
    writer: gguf.GGUFWriter, name: str, qtype: gguf.GGMLQuantizationType, rows: int, cols: int
) -> None:
    """A tensor of ``rows`` x ``cols`` weights stored as ``qtype`` (random bytes: only the header matters)."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    data = np.random.default_rng(0).integers(0, 256, size=(rows, cols // block * type_size), dtype=np.uint8)
    writer.add_tensor(name, data, raw_dtype=qtype)


def write_model(
    path: Path,
    file_type: gguf.LlamaFileType | None,
    qtype: gguf.GGMLQuantizationType,
    *,
    n_layer: int = 3,
    n_embd: int = 256,
    extra: dict[str, object] | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """A llama-shaped GGUF: token embeddings and per-layer weights in ``qtype``, norms in F32."""
    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    writer.add_name(f"test {qtype.name}")
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_head_count(4)
    writer.add_feed_forward_length(512)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_token_list([f"t{i}" for i in range(100)])
    writer.add_chat_template("{{ messages }}")
    for key, value in (extra or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint64(key, int(value))  # type: ignore[call-overload]
    _add_quant_tensor(writer, "token_embd.weight", qtype, 100, n_embd)
    for i in range(n_layer):
        _add_quant_tensor(writer, f"blk.{i}.attn_q.weight", qtype, n_embd, n_embd)
        _add_quant_tensor(writer, f"blk.{i}.ffn_up.weight", qtype, 512, n_embd)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _expected(paths: list[Path]) -> dict[str, object]:
    """What gguf-py's GGUFReader says about the model in ``paths`` (its shards, in order)."""
    readers = [gguf.GGUFReader(p) for p in paths]
    first = readers[0]
    tensors = [t for r in readers for t in r.tensors]
    elements = sum(int(t.n_elements) for t in tensors)
    nbytes = sum(int(t.n_bytes) for t in tensors)
    by_type: dict[int, int] = {}
    for t in tensors:
        by_type[int(t.tensor_type)] = by_type.get(int(t.tensor_type), 0) + int(t.n_elements)
    main = QT(max(by_type, key=lambda k: by_type[k]))
    file_type = _field(first, "general.file_type")
    tokens = _field(first, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    return {
        "architecture": _field(first, "general.architecture"),
        "name": _field(first, "general.name"),
        "context_len": 0,
        "train_context_len": _field(first, "llama.context_length"),
        "vocab_size": len(tokens),
        "file_size": sum(os.path.getsize(p) for p in paths),
        "has_chat_template": bool(_field(first, "tokenizer.chat_template")),
        "size_label": _field(first, "general.size_label") or model_weight_count_rounded_notation(elements),
        "parameter_count": _field(first, "general.parameter_count") or elements,
        "file_type": file_type,
        "quant_group_size": gguf.GGML_QUANT_SIZES[main][0],
        "bits_per_weight": pytest.approx(nbytes * 8 / elements),
        "layer_count": _field(first, "llama.block_count"),
        "embedding_size": _field(first, "llama.embedding_length"),
        "head_count": _field(first, "llama.attention.head_count"),
        "expert_count": _field(first, "llama.expert_count"),
        "tensor_count": len(tensors),
        "split_count": len(paths),
        "gguf_version": int(first.fields["GGUF.version"].parts[-1][0]),
        "path": str(paths[0].resolve()),
    }


def _assert_matches(info: rocm_infer.ModelInfo, expected: dict[str, object]) -> None:
    for key, value in expected.items():
        assert getattr(info, key) == value, key


@pytest.mark.parametrize(("file_type", "qtype", "bits"), FILE_TYPES, ids=[f.name for f, _, _ in FILE_TYPES])
def test_matches_gguf_reader_field_by_field(
    tmp_path: Path, file_type: gguf.LlamaFileType, qtype: gguf.GGMLQuantizationType, bits: int
) -> None:
    path = write_model(tmp_path / "m.gguf", file_type, qtype)
    info = read_gguf_info(path)
    _assert_matches(info, _expected([path]))
    assert info.quantization == file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    assert info.quant_bits == bits
    assert info.bits_per_weight is not None and info.bits_per_weight >= bits  # scales and F32 norms add bits


def test_without_file_type_the_main_tensor_type_names_it(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", None, QT.Q5_K)
    info = read_gguf_info(path)
    _assert_matches(info, _expected([path]))
    assert (info.file_type, info.quantization, info.quant_bits, info.quant_group_size) == (None, "Q5_K", 5, 256)


def test_stated_parameter_count_and_size_label_win(tmp_path: Path) -> None:
    extra = {"general.parameter_count": 8_030_261_312, "general.size_label": "8x7B", "llama.expert_count": 8}
    path = write_model(tmp_path / "m.gguf", FT.MOSTLY_Q8_0, QT.Q8_0, extra=extra)
    info = read_gguf_info(path)
    _assert_matches(info, _expected([path]))
    assert (info.parameter_count, info.size_label, info.expert_count) == (8_030_261_312, "8x7B", 8)


@pytest.mark.parametrize("count", [1, 999, 1_000, 999_999, 1_234_567, 2_500_000_000, 70_553_706_496, 1_500_000_000_000])
def test_size_label_rounds_like_gguf_py(count: int) -> None:
    assert gguf_mod.size_label(count) == model_weight_count_rounded_notation(count)


def test_every_file_type_of_gguf_py_is_known() -> None:
    for file_type in FT:
        if file_type is FT.GUESSED:
            continue
        name, main = ggml_types.FILE_TYPES[int(file_type)]
        assert name == file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        assert main in ggml_types.GGML_TYPES, name
    for qtype in QT:
        known = ggml_types.GGML_TYPES[int(qtype)]
        assert known.name == qtype.name
        # The nominal bits are the number in the name; the FP4 formats are 4-bit floats.
        digits = re.search(r"\d+", qtype.name)
        assert known.bits == (4 if qtype.name.endswith("FP4") else int(digits.group()) if digits else None), qtype.name


def test_guessed_flag_is_ignored(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", None, QT.Q4_K, extra={"general.file_type": FT.MOSTLY_Q4_K_S | FT.GUESSED})
    assert read_gguf_info(path).quantization == "Q4_K_S"


def test_split_model_counts_every_shard(tmp_path: Path) -> None:
    write_model(tmp_path / "big.gguf", FT.MOSTLY_Q4_0, QT.Q4_0, split_max_tensors=4)
    shards = sorted(tmp_path.glob("big-*-of-*.gguf"))
    assert len(shards) == 3 and shards[0].name == "big-00001-of-00003.gguf"
    info = read_gguf_info(shards[0])
    _assert_matches(info, _expected(shards))
    assert info.quantization == "Q4_0"

    shards[2].unlink()
    with pytest.raises(InvalidModelError, match="shard 3 of 3 .* is missing") as missing:
        read_gguf_info(shards[0])
    assert missing.value.path == str(shards[2])


def test_split_model_with_a_wrong_name_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path / "big.gguf", FT.MOSTLY_Q4_0, QT.Q4_0, split_max_tensors=4)
    renamed = tmp_path / "renamed.gguf"
    (tmp_path / "big-00001-of-00003.gguf").rename(renamed)
    with pytest.raises(InvalidModelError, match="not named like one"):
        read_gguf_info(renamed)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        read_gguf_info(tmp_path / "nope.gguf")


def test_truncated_or_corrupt_file_gives_the_offset(tmp_path: Path) -> None:
    good = write_model(tmp_path / "m.gguf", FT.MOSTLY_Q4_K_M, QT.Q4_K, n_layer=1, n_embd=256)
    data = good.read_bytes()
    bad = tmp_path / "bad.gguf"
    header_end = len(data) - 100 * 144 - 256 * 144 - 512 * 144 - 256 * 4 - 256 * 4  # crude: where tensor data begins
    for cut in [*range(0, 64), *range(64, header_end, 97), len(data) - 1]:
        bad.write_bytes(data[:cut])
        with pytest.raises(InvalidModelError) as exc:
            read_gguf_info(bad)
        assert exc.value.offset is not None and 0 <= exc.value.offset <= max(cut, 0), cut
        assert exc.value.path == str(bad)
    # A tensor count that cannot fit (byte 8: tensor_count u64), and garbage where a key's type is.
    corrupt = bytearray(data)
    corrupt[8:16] = (2**60).to_bytes(8, "little")
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(InvalidModelError, match="tensor count") as exc:
        read_gguf_info(bad)
    assert exc.value.offset == 8


@pytest.mark.integration
async def test_tiny_model_matches_what_llama_server_reports(model: rocm_infer.TextModel, tiny_model_path: Path) -> None:
    meta = (await model.client.models())["data"][0]["meta"]
    info = model.info
    file_info = read_gguf_info(tiny_model_path)
    assert info.parameter_count == file_info.parameter_count == meta["n_params"]
    assert info.embedding_size == meta["n_embd"]
    assert info.train_context_len == meta["n_ctx_train"]
    assert info.vocab_size == meta["n_vocab"]
    assert info.quantization == meta["ftype"] == "F16"  # llama.cpp's own name of the file type
    assert info.bits_per_weight == pytest.approx(meta["size"] * 8 / meta["n_params"])
    # The server's own figures for a loaded model, the file's for the rest.
    assert info.context_len == meta["n_ctx"] == 8192 // 4 and file_info.context_len == 0  # per slot
    assert info.parallel_slots == 4 and "context=2048 (trained 8192), slots=4" in repr(info)
    assert (info.quantization, info.layer_count, info.architecture) == ("F16", 2, "llama")
    assert model.model_type == "llama"


def test_repr_is_short_and_informative(tiny_model_path: Path) -> None:
    text = repr(read_gguf_info(tiny_model_path))
    assert text.startswith("ModelInfo('rocm-infer-tiny-llama-seed0', arch=llama, params=")
    assert "quant=F16" in text and "context=8192 (trained)" in text and "MiB" in text and "slots" not in text
    assert len(text) < 160


def resplit(source: Path, dest: Path, max_tensors: int) -> list[Path]:
    """Rewrite the GGUF ``source`` as a split model (``dest``-0000N-of-0000M.gguf) with gguf-py."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(dest), str(_field(reader, "general.architecture")), split_max_tensors=max_tensors)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(dest.parent.glob(f"{dest.stem}-*-of-*.gguf"))


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_split_model_loads_in_llama_server_as_one(tmp_path: Path, tiny_model_path: Path) -> None:
    shards = resplit(tiny_model_path, tmp_path / "tiny.gguf", 8)
    assert len(shards) == 3
    whole = read_gguf_info(tiny_model_path)
    async with rocm_infer.load_model(tiny_model_path) as model:
        expected = await model.generate("the river", max_tokens=12, ignore_eos=True).collect()
    async with rocm_infer.load_model(shards[0]) as model:
        meta = (await model.client.models())["data"][0]["meta"]
        assert model.info.split_count == 3 and model.info.tensor_count == whole.tensor_count
        assert model.info.parameter_count == whole.parameter_count == meta["n_params"]
        assert model.info.file_size == sum(p.stat().st_size for p in shards)
        assert await model.generate("the river", max_tokens=12, ignore_eos=True).collect() == expected
