"""Tests for rocm_infer.gguf, the header-only GGUF reader.

Valid files are written with gguf-py's ``GGUFWriter`` and read back with both
``read_gguf_header`` and gguf-py's ``GGUFReader``; malformed files are built
byte by byte.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import rocm_infer.gguf.reader as gguf_mod
from rocm_infer.errors import InvalidModelError, ModelNotFoundError
from rocm_infer.gguf import (
    GGUF_MAGIC,
    GGUFArray,
    GGUFHeader,
    GGUFValueType,
    check_gguf_file,
    read_gguf_header,
)
from rocm_infer.gguf.ggml_types import GGML_TYPES

VT = gguf.GGUFValueType

# --------------------------------------------------------------------------- helpers


def _write(
    path: Path,
    fill: Callable[[gguf.GGUFWriter], None],
    *,
    arch: str = "llama",
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
) -> Path:
    """Write a complete GGUF file (header, metadata, tensor infos and data) with GGUFWriter."""
    writer = gguf.GGUFWriter(str(path), arch, endianess=endianess)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


SCALARS: list[tuple[str, gguf.GGUFValueType, Any]] = [
    ("t.uint8", VT.UINT8, 255),
    ("t.int8", VT.INT8, -128),
    ("t.uint16", VT.UINT16, 65535),
    ("t.int16", VT.INT16, -32768),
    ("t.uint32", VT.UINT32, 2**32 - 1),
    ("t.int32", VT.INT32, -(2**31)),
    ("t.uint64", VT.UINT64, 2**64 - 1),
    ("t.int64", VT.INT64, -(2**63)),
    ("t.float32", VT.FLOAT32, 0.1),
    ("t.float64", VT.FLOAT64, 0.1),
    ("t.bool_true", VT.BOOL, True),
    ("t.bool_false", VT.BOOL, False),
    ("t.string", VT.STRING, "héllo ✓ 世界"),
]

TYPED_ARRAYS: list[tuple[str, gguf.GGUFValueType, list[Any]]] = [
    ("a.uint8", VT.UINT8, [0, 1, 255]),
    ("a.int8", VT.INT8, [-128, 0, 127]),
    ("a.uint16", VT.UINT16, [0, 65535]),
    ("a.int16", VT.INT16, [-32768, 32767]),
    ("a.uint32", VT.UINT32, [0, 2**32 - 1]),
    ("a.int32", VT.INT32, [1, -2, 3]),
    ("a.uint64", VT.UINT64, [0, 2**64 - 1]),
    ("a.int64", VT.INT64, [-(2**63), 2**63 - 1]),
    ("a.float32", VT.FLOAT32, [0.5, -1.25, 0.1]),
    ("a.float64", VT.FLOAT64, [0.5, 1e300]),
    ("a.bool", VT.BOOL, [True, False, True]),
    ("a.string", VT.STRING, ["a", "", "ünïcode", "x" * 300]),
]

NESTED = [[1, 2], [3], [4, 5, 6]]
LONG_STRINGS = [f"token-{i}" for i in range(100)]  # > max_array_items
LONG_INTS = list(range(100))


def _fill_all_types(writer: gguf.GGUFWriter, *, reverse: bool = False) -> None:
    """Every value type, typed/nested/long arrays, the well-known keys and two tiny tensors."""
    adders: list[Callable[[], None]] = []
    for key, vtype, value in SCALARS:
        adders.append(functools.partial(writer.add_key_value, key, value, vtype))
    for key, sub, values in TYPED_ARRAYS:
        adders.append(functools.partial(writer.add_key_value, key, values, VT.ARRAY, sub_type=sub))
    adders += [
        lambda: writer.add_key_value("a.nested", NESTED, VT.ARRAY),
        lambda: writer.add_array("a.long_strings", LONG_STRINGS),
        lambda: writer.add_key_value("a.long_ints", LONG_INTS, VT.ARRAY, sub_type=VT.INT32),
        lambda: writer.add_key_value("a.long_nested", [[i, i] for i in range(70)], VT.ARRAY),
        lambda: writer.add_name("Tiny Test Model"),
        lambda: writer.add_context_length(4096),
        lambda: writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}"),
        lambda: writer.add_token_list(["<s>", "</s>", "a", "b"]),
    ]
    for add in reversed(adders) if reverse else adders:
        add()
    # 128 and 32 bytes: multiples of the alignment, so the file ends exactly with the data.
    writer.add_tensor("tensor_a", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.add_tensor("tensor_b", np.zeros(16, dtype=np.float16))


@pytest.fixture
def all_types_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "all_types.gguf", _fill_all_types)


def _s(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _gguf(
    *kvs: bytes,
    version: int = 3,
    tensor_count: int = 0,
    kv_count: int | None = None,
    tail: bytes = b"",
) -> bytes:
    count = len(kvs) if kv_count is None else kv_count
    return GGUF_MAGIC + struct.pack("<IQQ", version, tensor_count, count) + b"".join(kvs) + tail


def _tensor_info(name: str, dims: list[int], ggml_type: int, offset: int = 0) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _flatten(value: object) -> Iterator[object]:
    if isinstance(value, tuple):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


# --------------------------------------------------------------------------- valid files


def test_matches_gguf_reader_field_by_field(all_types_file: Path) -> None:
    header = read_gguf_header(all_types_file)
    reader = gguf.GGUFReader(all_types_file)

    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(header.metadata) == list(fields)  # same keys, same (file) order
    assert header.version == int(reader.fields["GGUF.version"].contents()) == 3
    assert header.tensor_count == len(reader.tensors) == 2
    assert header.file_size == all_types_file.stat().st_size
    assert header.path == str(all_types_file.resolve())

    for key, field in fields.items():
        ours = header.metadata[key]
        theirs = field.contents()
        if field.types[0] != VT.ARRAY:
            assert ours == theirs, key
            assert type(ours) is type(theirs), key  # bool stays bool, int stays int
            continue
        item_type = field.types[1]
        if isinstance(ours, GGUFArray):
            assert ours.item_type == item_type, key
            if item_type != VT.ARRAY:  # GGUFReader flattens nested arrays
                assert ours.length == len(theirs), key
        elif item_type == VT.ARRAY:
            assert list(_flatten(ours)) == theirs, key
        else:
            assert isinstance(ours, tuple), key
            assert list(ours) == theirs, key
            assert all(type(a) is type(b) for a, b in zip(ours, theirs, strict=True)), key


def test_values_of_every_type(all_types_file: Path) -> None:
    header = read_gguf_header(all_types_file)
    md = header.metadata
    for key, vtype, value in SCALARS:
        if vtype == VT.FLOAT32:
            assert md[key] == struct.unpack("<f", struct.pack("<f", value))[0]
        else:
            assert md[key] == value
            assert type(md[key]) is type(value)
    for key, vtype, values in TYPED_ARRAYS:
        if vtype == VT.FLOAT32:
            values = [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
        assert md[key] == tuple(values), key
    assert md["a.nested"] == ((1, 2), (3,), (4, 5, 6))
    assert md["a.long_strings"] == GGUFArray(GGUFValueType.STRING, 100)
    assert md["a.long_ints"] == GGUFArray(GGUFValueType.INT32, 100)
    assert md["a.long_nested"] == GGUFArray(GGUFValueType.ARRAY, 70)


def test_header_properties(all_types_file: Path) -> None:
    header = read_gguf_header(all_types_file)
    assert header.architecture == "llama"
    assert header.name == "Tiny Test Model"
    assert header.context_length == 4096
    assert header.has_chat_template is True
    assert header.vocab_size == 4
    assert header.get("t.uint8") == 255
    assert header.get("missing.key") is None
    assert header.get("missing.key", 7) == 7


def test_metadata_is_read_only(all_types_file: Path) -> None:
    header = read_gguf_header(all_types_file)
    with pytest.raises(TypeError):
        header.metadata["general.name"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        header.version = 2  # type: ignore[misc]


def test_properties_when_keys_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    path.write_bytes(_gguf())
    header = read_gguf_header(path)
    assert header == GGUFHeader(path=str(path), version=3, tensor_count=0, metadata={}, file_size=24)
    assert header.architecture is None
    assert header.name is None
    assert header.context_length is None
    assert header.has_chat_template is False
    assert header.vocab_size is None


def test_vocab_size_placeholder_and_fallback(tmp_path: Path) -> None:
    def fill(w: gguf.GGUFWriter) -> None:
        w.add_token_list([f"t{i}" for i in range(500)])

    header = read_gguf_header(_write(tmp_path / "a.gguf", fill))
    assert header.get("tokenizer.ggml.tokens") == GGUFArray(GGUFValueType.STRING, 500)
    assert header.vocab_size == 500

    header = read_gguf_header(_write(tmp_path / "b.gguf", lambda w: w.add_vocab_size(32000)))
    assert header.vocab_size == 32000
    assert header.context_length is None


def test_wrongly_typed_well_known_keys_give_none(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    path.write_bytes(
        _gguf(
            _kv("general.architecture", VT.STRING, _s("qwen2")),
            _kv("general.name", VT.UINT32, struct.pack("<I", 5)),
            _kv("qwen2.context_length", VT.BOOL, b"\x01"),
            _kv("tokenizer.chat_template", VT.STRING, _s("")),
        )
    )
    header = read_gguf_header(path)
    assert header.architecture == "qwen2"
    assert header.name is None
    assert header.context_length is None
    assert header.has_chat_template is False


def test_key_order_does_not_matter(tmp_path: Path) -> None:
    forward = read_gguf_header(_write(tmp_path / "f.gguf", _fill_all_types))
    backward = read_gguf_header(_write(tmp_path / "b.gguf", lambda w: _fill_all_types(w, reverse=True)))
    assert list(forward.metadata) != list(backward.metadata)
    assert dict(forward.metadata) == dict(backward.metadata)


def test_version_2_is_read(all_types_file: Path) -> None:
    v3 = read_gguf_header(all_types_file)
    data = bytearray(all_types_file.read_bytes())
    data[4:8] = struct.pack("<I", 2)  # v2 and v3 share the little-endian layout
    all_types_file.write_bytes(bytes(data))
    v2 = read_gguf_header(all_types_file)
    assert (v2.version, v3.version) == (2, 3)
    assert dict(v2.metadata) == dict(v3.metadata)
    assert v2.tensor_count == v3.tensor_count
    assert int(gguf.GGUFReader(all_types_file).fields["GGUF.version"].contents()) == 2


def test_quantized_tensor_and_custom_alignment(tmp_path: Path) -> None:
    def fill(w: gguf.GGUFWriter) -> None:
        w.add_custom_alignment(64)
        # Q8_0: blocks of 32 values in 34 bytes; 2 rows of 64 values = 4 blocks = 136 bytes.
        w.add_tensor("q", np.zeros((2, 136 // 2), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("f", np.ones(64, dtype=np.float32))

    path = _write(tmp_path / "q.gguf", fill)
    header = read_gguf_header(path)
    assert header.tensor_count == len(gguf.GGUFReader(path).tensors) == 2
    assert header.get("general.alignment") == 64


def test_empty_array(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(
        _gguf(
            _kv("a.empty", VT.ARRAY, struct.pack("<IQ", VT.STRING, 0)),
            _kv("a.empty_nested", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1) + struct.pack("<IQ", VT.INT8, 0)),
            _kv("after", VT.UINT8, b"\x07"),
        )
    )
    assert dict(read_gguf_header(path).metadata) == {"a.empty": (), "a.empty_nested": ((),), "after": 7}


# --------------------------------------------------------------------------- limits


def test_long_string_is_truncated_and_skipped(tmp_path: Path) -> None:
    def fill(w: gguf.GGUFWriter) -> None:
        w.add_string("s.long", "é" * 1000)  # 2000 bytes
        w.add_string("s.after", "still read")

    path = _write(tmp_path / "s.gguf", fill)
    header = read_gguf_header(path, max_string_bytes=101)
    # 101 bytes would cut the 51st "é" in half: the partial character is dropped.
    assert header.get("s.long") == "é" * 50
    assert header.get("s.after") == "still read"
    assert read_gguf_header(path, max_string_bytes=0).get("s.long") == ""
    assert read_gguf_header(path).get("s.long") == "é" * 1000


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "u.gguf"
    path.write_bytes(_gguf(_kv("bad", VT.STRING, _s(b"ok\xff\xfe"))))
    assert read_gguf_header(path).get("bad") == "ok\ufffd\ufffd"


def test_chat_template_kept_whole_up_to_1_mib(tmp_path: Path) -> None:
    template = "{{ x }}" * 100_000  # 700 kB
    huge = "y" * (1024 * 1024 + 10)

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_string("tokenizer.chat_template", template)
        w.add_string("tokenizer.chat_template.tool_use", template)
        w.add_string("other", template)
        w.add_string("zz.huge_template_sibling", huge)

    path = _write(tmp_path / "t.gguf", fill)
    header = read_gguf_header(path, max_string_bytes=16)
    assert header.get("tokenizer.chat_template") == template
    assert header.get("tokenizer.chat_template.tool_use") == template
    assert header.get("other") == template[:16]
    assert header.get("zz.huge_template_sibling") == "y" * 16
    assert header.has_chat_template

    path = _write(tmp_path / "huge.gguf", lambda w: w.add_string("tokenizer.chat_template", huge))
    assert read_gguf_header(path).get("tokenizer.chat_template") == huge[: 1024 * 1024]


@pytest.mark.parametrize(
    ("n_items", "max_items", "placeholder"),
    [(64, 64, False), (65, 64, True), (1, 0, True), (0, 0, False), (5, 10, False)],
)
def test_array_placeholder_threshold(tmp_path: Path, n_items: int, max_items: int, placeholder: bool) -> None:
    path = tmp_path / "a.gguf"
    items = b"".join(_s(f"s{i}") for i in range(n_items))
    path.write_bytes(
        _gguf(
            _kv("arr", VT.ARRAY, struct.pack("<IQ", VT.STRING, n_items) + items),
            _kv("after", VT.INT16, struct.pack("<h", -3)),
        )
    )
    header = read_gguf_header(path, max_array_items=max_items)
    if placeholder:
        assert header.get("arr") == GGUFArray(GGUFValueType.STRING, n_items)
    else:
        assert header.get("arr") == tuple(f"s{i}" for i in range(n_items))
    assert header.get("after") == -3


def test_strings_inside_arrays_are_truncated(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.gguf", lambda w: w.add_array("arr", ["x" * 100, "short"]))
    assert read_gguf_header(path, max_string_bytes=10).get("arr") == ("x" * 10, "short")


def test_skipping_long_strings_inside_long_arrays(tmp_path: Path) -> None:
    # Strings larger than the reader's 64 KiB buffer, inside an array that is skipped.
    def fill(w: gguf.GGUFWriter) -> None:
        w.add_array("big", [chr(ord("a") + i % 26) * 100_000 for i in range(70)])
        w.add_uint32("after", 42)

    header = read_gguf_header(_write(tmp_path / "big.gguf", fill))
    assert header.get("big") == GGUFArray(GGUFValueType.STRING, 70)
    assert header.get("after") == 42


@pytest.mark.parametrize("kwargs", [{"max_string_bytes": -1}, {"max_array_items": -1}])
def test_negative_limits_are_rejected(all_types_file: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        read_gguf_header(all_types_file, **kwargs)


# --------------------------------------------------------------------------- malformed files

# Offsets in a hand-made file with one key "a": the entry starts at 24, its
# value type is at 33, and its value (or an array's item type) at 37; an
# array's length is at 41 and its first item at 49.
ERROR_CASES: list[tuple[str, bytes, int, str]] = [
    ("version 0", _gguf(version=0), 4, "unsupported GGUF version 0"),
    ("version 1", _gguf(version=1), 4, "version 1 is no longer supported"),
    ("version 4", _gguf(version=4), 4, "unsupported GGUF version 4"),
    ("version huge", _gguf(version=0xFFFF), 4, "unsupported GGUF version 65535"),
    (
        "big-endian",
        GGUF_MAGIC + struct.pack(">IQQ", 3, 0, 0),
        4,
        "big-endian",
    ),
    ("absurd kv count", _gguf(kv_count=2**62), 16, "metadata count"),
    ("kv count one too many", _gguf(_kv("a", VT.STRING, _s("x" * 40)), kv_count=2), 85, "truncated"),
    ("absurd tensor count", _gguf(tensor_count=2**40), 8, "tensor count"),
    ("absurd key length", GGUF_MAGIC + struct.pack("<IQQQ", 3, 0, 1, 2**63) + b"\0" * 16, 24, "claims"),
    ("empty key", _gguf(_kv("", VT.UINT8, b"\x01")), 24, "empty metadata key"),
    (
        "implausibly long key",
        _gguf(_kv("k" * 70_000, VT.UINT8, b"\x01")),
        24,
        "implausibly long",
    ),
    (
        "duplicate key",
        _gguf(_kv("a", VT.UINT8, b"\x01"), _kv("a", VT.UINT8, b"\x02")),
        38,
        "duplicate metadata key 'a'",
    ),
    ("unknown value type", _gguf(_kv("a", 13, b"\x00" * 8)), 33, "unknown value type id 13"),
    ("unknown value type 2**32-1", _gguf(_kv("a", 2**32 - 1, b"\x00" * 8)), 33, "unknown value type id"),
    (
        "unknown array item type",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", 42, 1) + b"\x00" * 8)),
        37,
        "unknown array item type id 42",
    ),
    ("absurd string length", _gguf(_kv("a", VT.STRING, struct.pack("<Q", 2**62))), 37, "claims"),
    (
        "absurd array length",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.UINT32, 2**61))),
        41,
        "cannot fit",
    ),
    (
        "array length one too many",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.UINT32, 3) + b"\x00" * 8)),
        41,
        "cannot fit",
    ),
    (
        "absurd string array length",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2**61))),
        41,
        "cannot fit",
    ),
    (
        "absurd nested array length",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1) + struct.pack("<IQ", VT.UINT64, 2**60))),
        53,
        "cannot fit",
    ),
    (
        "absurd string inside a skipped string array",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.STRING, 100) + struct.pack("<Q", 2**62) + b"\0" * 800)),
        49,
        "claims",
    ),
    (
        "absurd string inside a read string array",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + struct.pack("<Q", 2**62) + b"\0" * 8)),
        49,
        "claims",
    ),
    (
        "arrays nested too deep",
        _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1) * 12 + struct.pack("<IQ", VT.UINT8, 0))),
        -1,
        "nested more than",
    ),
    (
        "alignment not a power of two",
        _gguf(_kv("general.alignment", VT.UINT32, struct.pack("<I", 48))),
        24,
        "power of two",
    ),
    (
        "alignment zero",
        _gguf(_kv("general.alignment", VT.UINT32, struct.pack("<I", 0))),
        24,
        "power of two",
    ),
    (
        "alignment of the wrong type",
        _gguf(_kv("general.alignment", VT.UINT64, struct.pack("<Q", 32))),
        24,
        "must be a UINT32",
    ),
    (
        "tensor with 5 dimensions",
        _gguf(tensor_count=1, tail=_tensor_info("t", [1, 1, 1, 1, 1], 0) + b"\0" * 64),
        24 + 8 + 1,
        "5 dimensions",
    ),
    (
        "tensor row not a multiple of the block size",
        _gguf(tensor_count=1, tail=_tensor_info("t", [33], 8) + b"\0" * 64),
        24 + 8 + 1 + 4 + 8,
        "block size 32",
    ),
    (
        "tensor data missing (incomplete download)",
        _gguf(tensor_count=1, tail=_tensor_info("t", [1000], 0)),
        24,
        "incomplete download",
    ),
    (
        "second tensor's data missing",
        _gguf(
            tensor_count=2,
            # infos end at 90, data starts at 96: "b" needs 96 + 32 + 32 bytes, the file has 130
            tail=_tensor_info("a", [8], 0) + _tensor_info("b", [8], 0, offset=32) + b"\0" * 40,
        ),
        24 + 33,
        "tensor #1",
    ),
]


@pytest.mark.parametrize(
    ("data", "offset", "message"),
    [pytest.param(data, offset, message, id=name) for name, data, offset, message in ERROR_CASES],
)
def test_malformed_file(tmp_path: Path, data: bytes, offset: int, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelError, match=message) as info:
        read_gguf_header(path)
    assert info.value.path == str(path)
    assert info.value.offset is not None
    if offset >= 0:
        assert info.value.offset == offset
    assert str(path) in str(info.value)
    assert f"offset {info.value.offset}" in str(info.value)
    assert check_gguf_file(path) == str(path)  # the cheap check only looks at the magic


@pytest.mark.parametrize("max_items", [0, 64])
def test_deep_nesting_is_refused_when_skipping_too(tmp_path: Path, max_items: int) -> None:
    nested = struct.pack("<IQ", VT.ARRAY, 1) * 12 + struct.pack("<IQ", VT.UINT8, 0)
    path = tmp_path / "deep.gguf"
    path.write_bytes(_gguf(_kv("a", VT.ARRAY, nested)))
    with pytest.raises(InvalidModelError, match="nested more than 8 deep"):
        read_gguf_header(path, max_array_items=max_items)
    ok = struct.pack("<IQ", VT.ARRAY, 1) * 7 + struct.pack("<IQ", VT.UINT8, 0)
    path.write_bytes(_gguf(_kv("a", VT.ARRAY, ok)))
    value = read_gguf_header(path, max_array_items=max_items).get("a")
    assert value == (GGUFArray(GGUFValueType.ARRAY, 1) if max_items == 0 else ((((((((),),),),),),),))


def test_big_endian_file_from_gguf_writer_is_rejected_clearly(tmp_path: Path) -> None:
    path = _write(tmp_path / "be.gguf", lambda w: w.add_uint32("x", 1), endianess=gguf.GGUFEndian.BIG)
    with pytest.raises(InvalidModelError, match="big-endian GGUF file") as info:
        read_gguf_header(path)
    assert info.value.offset == 4


def test_truncated_at_every_offset(all_types_file: Path, tmp_path: Path) -> None:
    """Cutting a valid file anywhere (header, metadata, tensor infos or data) is an InvalidModelError."""
    data = all_types_file.read_bytes()
    data_offset = gguf.GGUFReader(all_types_file).data_offset
    assert len(data) == data_offset + 128 + 32  # the file ends with the last tensor's data, no padding
    read_gguf_header(all_types_file)  # the uncut file is fine
    cut_path = tmp_path / "cut.gguf"
    for cut in range(len(data)):
        cut_path.write_bytes(data[:cut])
        try:
            read_gguf_header(cut_path)
        except InvalidModelError as exc:
            assert exc.path == str(cut_path)
            assert exc.offset is not None and 0 <= exc.offset <= cut, (cut, exc.offset)
        else:
            pytest.fail(f"no error for the file cut at {cut} of {len(data)} bytes")


def test_truncated_string_array_at_every_offset(tmp_path: Path) -> None:
    """The fast skip of long string arrays handles every cut too."""
    items = b"".join(_s("w" * (i % 7)) for i in range(80))
    data = _gguf(_kv("a", VT.ARRAY, struct.pack("<IQ", VT.STRING, 80) + items))
    path = tmp_path / "cut.gguf"
    for cut in range(24, len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidModelError):
            read_gguf_header(path)
    path.write_bytes(data)
    assert read_gguf_header(path).get("a") == GGUFArray(GGUFValueType.STRING, 80)


# --------------------------------------------------------------------------- path checks (both entry points)

BOTH = pytest.mark.parametrize("func", [check_gguf_file, read_gguf_header], ids=["check", "read"])


@BOTH
def test_missing_path(tmp_path: Path, func: Callable[[Path], object]) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFoundError) as info:
        func(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.path == str(missing)
    assert "model file not found" in str(info.value)
    (tmp_path / "a_file").touch()
    with pytest.raises(ModelNotFoundError):  # a path "below" a regular file (ENOTDIR)
        func(tmp_path / "a_file" / "model.gguf")


@BOTH
def test_directory(tmp_path: Path, func: Callable[[Path], object]) -> None:
    with pytest.raises(InvalidModelError, match="is a directory") as info:
        func(tmp_path)
    assert info.value.path == str(tmp_path)


@BOTH
def test_zero_byte_file(tmp_path: Path, func: Callable[[Path], object]) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(InvalidModelError, match=r"is empty \(0 bytes\)") as info:
        func(path)
    assert info.value.offset == 0


@BOTH
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00", r"not a GGUF file \(starts with b'PK\\x03\\x04'; looks like a ZIP"),
        (b"hello world\n", r"not a GGUF file \(starts with b'hell'\)"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html>", "HTML page"),
        (struct.pack("<Q", 100) + b'{"__metadata__": {}}', "safetensors file"),
        (b"GGML" + b"\0" * 20, r"starts with b'GGML'"),
        (b"GG", r"starts with b'GG'; the file is only 2 bytes long"),
    ],
    ids=["zip", "text", "lfs", "html", "safetensors", "ggml", "short"],
)
def test_not_a_gguf_file(tmp_path: Path, func: Callable[[Path], object], content: bytes, message: str) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError, match=message) as info:
        func(path)
    assert info.value.offset == 0
    assert info.value.path == str(path)


@BOTH
@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_unreadable_file(tmp_path: Path, func: Callable[[Path], object]) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    path = tmp_path / "locked.gguf"
    path.write_bytes(_gguf())
    path.chmod(0)
    try:
        with pytest.raises(InvalidModelError, match="Permission denied") as info:
            func(path)
        assert info.value.path == str(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


@BOTH
def test_permission_error_on_open(
    tmp_path: Path, func: Callable[[Path], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unreadable-file path, simulated so that it also runs as root."""
    path = tmp_path / "locked.gguf"
    path.write_bytes(_gguf())

    def deny(file: str, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", file)

    monkeypatch.setattr(gguf_mod, "open", deny, raising=False)
    with pytest.raises(InvalidModelError, match=r"cannot read model file .*: Permission denied") as info:
        func(path)
    assert info.value.path == str(path)
    assert isinstance(info.value.__cause__, PermissionError)


@BOTH
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_without_blocking(tmp_path: Path, func: Callable[[Path], object]) -> None:
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)
    with pytest.raises(InvalidModelError, match="not a regular file"):
        func(path)


def test_check_gguf_file_accepts_valid_files(
    all_types_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_gguf_file(all_types_file) == str(all_types_file)
    assert check_gguf_file(str(all_types_file)) == str(all_types_file)
    monkeypatch.chdir(tmp_path)
    assert check_gguf_file("all_types.gguf") == str(all_types_file)
    assert read_gguf_header("all_types.gguf").path == str(all_types_file)
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(GGUF_MAGIC)  # magic only: the cheap check passes, the full read does not
    assert check_gguf_file(tiny) == str(tiny)
    with pytest.raises(InvalidModelError, match="truncated") as info:
        read_gguf_header(tiny)
    assert info.value.offset == 4


# --------------------------------------------------------------------------- big files


def _write_sparse_model(path: Path, n_tokens: int, tensor_bytes: int) -> int:
    """A GGUF with an ``n_tokens`` vocabulary and one F32 tensor of ``tensor_bytes``.

    The tensor data is not written: the file is extended with ``truncate``, so
    it is sparse on filesystems that support it. Returns the data offset.
    """
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("big")
    writer.add_context_length(131072)
    writer.add_token_list([f"tok_{i:06d}" for i in range(n_tokens)])
    writer.add_token_scores([0.0] * n_tokens)
    writer.add_token_types([1] * n_tokens)
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor_info("token_embd.weight", (tensor_bytes // 4,), np.dtype(np.float32), tensor_bytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with open(path, "r+b") as f:
        data_offset = -(-f.seek(0, io.SEEK_END) // 32) * 32
        f.truncate(data_offset + tensor_bytes)
    return data_offset


class _CountingFileIO(io.FileIO):
    bytes_read = 0
    opened = 0

    def __init__(self, file: str, mode: str = "r", *args: object, **kwargs: object) -> None:
        super().__init__(file, "r")
        type(self).opened += 1

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(-1 if size is None else size)
        type(self).bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        type(self).bytes_read += n
        return n

    def readall(self) -> bytes:
        data = super().readall()
        type(self).bytes_read += len(data)
        return data


def test_large_model_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.gguf"
    tensor_bytes = 1024**3  # 1 GiB of (sparse) tensor data
    data_offset = _write_sparse_model(path, 150_000, tensor_bytes)
    assert path.stat().st_size == data_offset + tensor_bytes

    monkeypatch.setattr(_CountingFileIO, "bytes_read", 0)
    monkeypatch.setattr(_CountingFileIO, "opened", 0)
    monkeypatch.setattr(gguf_mod, "open", _CountingFileIO, raising=False)
    header = read_gguf_header(path)

    assert _CountingFileIO.opened == 1  # the counter did see the reader's file
    assert 0 < _CountingFileIO.bytes_read < 8 * 1024 * 1024
    assert _CountingFileIO.bytes_read <= data_offset + 64 * 1024  # nothing much past the header
    assert header.vocab_size == 150_000
    assert header.get("tokenizer.ggml.scores") == GGUFArray(GGUFValueType.FLOAT32, 150_000)
    assert header.get("tokenizer.ggml.token_type") == GGUFArray(GGUFValueType.INT32, 150_000)
    assert header.context_length == 131072
    assert header.has_chat_template
    assert header.tensor_count == 1
    assert header.file_size == data_offset + tensor_bytes

    # One byte missing at the very end of the tensor data is noticed without reading it.
    with open(path, "r+b") as f:
        f.truncate(data_offset + tensor_bytes - 1)
    with pytest.raises(InvalidModelError, match="incomplete download"):
        read_gguf_header(path)


# --------------------------------------------------------------------------- internals


def test_ggml_type_sizes_match_gguf_py() -> None:
    """The tensor size table must agree with gguf-py, or valid models would be rejected."""
    for qtype, sizes in gguf.GGML_QUANT_SIZES.items():
        known = GGML_TYPES.get(int(qtype))
        assert known is not None, qtype.name
        if qtype == gguf.GGMLQuantizationType.Q8_1:
            # gguf-py 0.19.0 still has the old 40-byte block; ggml's block_q8_1 is two
            # halfs + 32 quants = 36 bytes (static_assert in ggml-common.h). Q8_1 is an
            # internal type that no model file stores anyway.
            assert sizes == (32, 40) and (known.block_size, known.type_size) == (32, 36)
            continue
        assert (known.block_size, known.type_size) == sizes, qtype.name


def test_value_type_ids_match_gguf_py() -> None:
    assert {t.name: int(t) for t in GGUFValueType} == {t.name: int(t) for t in gguf.GGUFValueType}
