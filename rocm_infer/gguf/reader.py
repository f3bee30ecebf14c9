"""Bounds-checked reading of a GGUF file's header, key/value metadata and tensor-info table (stdlib only).

A GGUF file is laid out as::

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x (key string, value type u32, value)
    tensor_count x (name string, n_dims u32, dims u64[n_dims], ggml type u32, data offset u64)
    padding to ``general.alignment`` | tensor data

:func:`read_gguf_header` reads the fixed header and the key/value metadata,
then walks the (small) tensor-info table to check that the file is long
enough to hold the tensor data it announces (which catches an incomplete
download early). It never reads tensor data: a multi-GB model is read in
milliseconds, and only a few MiB at most even for a 150k-token vocabulary.

Metadata values become plain Python objects:

* integers, floats and bools become ``int``, ``float`` and ``bool``;
* strings are decoded as UTF-8 (``errors="replace"``) and cut to
  ``max_string_bytes`` bytes; the chat template keys
  (``tokenizer.chat_template`` and ``tokenizer.chat_template.<name>``) are
  kept whole up to 1 MiB;
* an array of at most ``max_array_items`` items becomes a ``tuple`` (nested
  arrays become nested tuples); a longer one becomes a :class:`GGUFArray`
  placeholder that records its item type and length.

Every way a file can be malformed (missing, unreadable, truncated, absurd
counts or lengths, unknown type ids, unsupported versions, duplicate keys)
raises :class:`~rocm_infer.errors.InvalidModelError` carrying ``path`` and the
byte ``offset`` of the field that failed, or
:class:`~rocm_infer.errors.ModelNotFoundError` when the path does not exist.
Every count is checked against the bytes left in the file before it is used,
so a corrupt or hostile file can neither make the reader loop for long nor
make it allocate more than the limits above.

Only little-endian files are read: llama.cpp loads GGUF files only in the
host's byte order, and every host llama-server runs on here is little-endian,
so a big-endian file is reported as such instead of failing later in
llama-server.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import BinaryIO, NoReturn

from ..errors import InvalidModelError, ModelNotFoundError
from .ggml_types import GGML_TYPES

GGUF_MAGIC = b"GGUF"
"""The four bytes every GGUF file starts with."""

SUPPORTED_VERSIONS = (2, 3)
"""GGUF versions :func:`read_gguf_header` reads (v2 and v3 share one layout)."""

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
CHAT_TEMPLATE_MAX_BYTES = 1024 * 1024
"""Chat templates are kept whole up to this many bytes, whatever ``max_string_bytes`` is."""

_DEFAULT_ALIGNMENT = 32
_MAX_KEY_BYTES = 64 * 1024  # real keys are < 100 bytes; a longer one is a corrupt file
_MAX_ARRAY_NESTING = 8  # llama.cpp reads no nested arrays at all; bound the recursion
_MAX_DIMS = 4  # GGML_MAX_DIMS
_CHUNK = 64 * 1024  # read-ahead size of the private buffer


class GGUFValueType(IntEnum):
    """Type ids of GGUF metadata values (``gguf_type`` in ``gguf.h``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct format (little-endian) of every fixed-size value type.
_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_SCALAR_STRUCTS: dict[int, struct.Struct] = {t: struct.Struct("<" + f) for t, f in _SCALAR_FORMATS.items()}
_SCALAR_SIZES: dict[int, int] = {t: s.size for t, s in _SCALAR_STRUCTS.items()}

# The fewest bytes one item of an array of each type can take: used to reject
# absurd array lengths before looping over them.
_MIN_ITEM_SIZES: dict[int, int] = {
    **_SCALAR_SIZES,
    GGUFValueType.STRING: 8,  # u64 length, possibly empty
    GGUFValueType.ARRAY: 12,  # u32 item type + u64 length, possibly empty
}
_MIN_KV_SIZE = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 4 + 8  # name length, n_dims, ggml type, data offset

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class GGUFArray:
    """Placeholder for a metadata array longer than ``max_array_items``.

    ``item_type`` is the :class:`GGUFValueType` id of the items and ``length``
    the number of items; the items themselves were skipped, not read.
    """

    item_type: int
    length: int


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    """The fixed header and the key/value metadata of a GGUF file.

    ``metadata`` is a read-only mapping in file order (see the module
    docstring for how values are represented). From the tensor-info table:
    ``parameter_count`` is the number of elements of all tensors,
    ``tensor_bytes`` the bytes of tensor data they take (tensors of a ggml
    type newer than this reader count no bytes), and ``type_elements`` maps
    each ggml type id to the elements stored in it.
    """

    path: str
    version: int
    tensor_count: int
    metadata: Mapping[str, object]
    file_size: int
    parameter_count: int = 0
    tensor_bytes: int = 0
    type_elements: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, key: str, default: object = None) -> object:
        """The value of metadata ``key``, or ``default`` if the file lacks it."""
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (e.g. ``"llama"``), or ``None``."""
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def context_length(self) -> int | None:
        """The context length the model was trained for (``<arch>.context_length``), or ``None``."""
        return _arch_int(self, "context_length")

    @property
    def name(self) -> str | None:
        """``general.name``, or ``None``."""
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    @property
    def has_chat_template(self) -> bool:
        """Whether the file carries a non-empty ``tokenizer.chat_template``."""
        value = self.metadata.get(CHAT_TEMPLATE_KEY)
        return isinstance(value, str) and value != ""

    @property
    def vocab_size(self) -> int | None:
        """The number of tokens of ``tokenizer.ggml.tokens``, else ``<arch>.vocab_size``, else ``None``."""
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, GGUFArray):
            return tokens.length
        if isinstance(tokens, tuple):
            return len(tokens)
        return _arch_int(self, "vocab_size")


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _arch_int(header: GGUFHeader, key: str) -> int | None:
    """The integer metadata value ``<general.architecture>.<key>``, or ``None``."""
    arch = header.architecture
    return _as_int(header.metadata.get(f"{arch}.{key}")) if arch is not None else None


def _describe_start(first: bytes) -> str:
    """What the first bytes of a non-GGUF file look like, for the error message."""
    shown = repr(first[:4])
    hint = ""
    if first.startswith(b"PK\x03\x04"):
        hint = "; looks like a ZIP archive or a PyTorch checkpoint"
    elif first.startswith(b"version https://git-lfs"):
        hint = "; looks like a Git LFS pointer, not the model itself (fetch it with git lfs pull)"
    elif first.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        hint = "; looks like an HTML page, not a model download"
    elif first[8:10] == b'{"':
        hint = "; looks like a safetensors file (convert it with llama.cpp's convert_hf_to_gguf.py)"
    elif len(first) < 4:
        hint = f"; the file is only {len(first)} byte{'s' if len(first) != 1 else ''} long"
    return f"not a GGUF file (starts with {shown}{hint})"


def _open_model(path: str | os.PathLike[str]) -> tuple[str, BinaryIO, int]:
    """Check that ``path`` is a readable, non-empty regular file; open it.

    Returns ``(absolute path, unbuffered binary file, size in bytes)``. A
    leading ``~`` is the user's home, as in a shell.
    """
    abspath = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        st = os.stat(abspath)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelNotFoundError(abspath) from None
    except OSError as exc:
        raise InvalidModelError(f"cannot access model file {abspath!r}: {exc.strerror or exc}", path=abspath) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InvalidModelError(f"model path {abspath!r} is a directory, not a GGUF file", path=abspath)
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device could block forever on read: refuse before opening.
        raise InvalidModelError(f"model path {abspath!r} is not a regular file", path=abspath)
    try:
        f: BinaryIO = open(abspath, "rb", buffering=0)
    except OSError as exc:
        raise InvalidModelError(f"cannot read model file {abspath!r}: {exc.strerror or exc}", path=abspath) from exc
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise InvalidModelError(f"model file {abspath!r} is empty (0 bytes)", path=abspath, offset=0)
    except BaseException:
        f.close()
        raise
    return abspath, f, size


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, retrying short reads; fewer only at end of file."""
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_start(abspath: str, f: BinaryIO, n: int) -> bytes:
    """Read the first ``n`` bytes of the model file and check that they start with the magic; return them."""
    try:
        first = _read_exact(f, n)
    except OSError as exc:
        raise InvalidModelError(
            f"cannot read model file {abspath!r}: {exc.strerror or exc}", path=abspath, offset=0
        ) from exc
    if first[:4] != GGUF_MAGIC:
        raise InvalidModelError(f"model file {abspath!r} is {_describe_start(first)}", path=abspath, offset=0)
    return first


def check_gguf_file(path: str | os.PathLike[str]) -> str:
    """Cheap pre-flight check that ``path`` looks like a GGUF model file.

    Checks that the path exists (else :class:`ModelNotFoundError`), is a
    regular file, is readable, is not empty and starts with the magic
    ``b"GGUF"`` (else :class:`InvalidModelError` saying what was wrong, e.g.
    ``not a GGUF file (starts with b'PK\\x03\\x04'; looks like a ZIP archive)``).
    Reads at most 64 bytes. Returns the absolute path.
    """
    abspath, f, _size = _open_model(path)
    with f:
        _read_start(abspath, f, 64)
    return abspath


class _Reader:
    """Forward reader over an unbuffered file with a private read-ahead buffer.

    ``pos`` is the absolute file offset of the next field. Skipping moves
    ``pos`` without reading; the buffer is refilled (with a seek) only when a
    field that must be decoded lies outside it.
    """

    __slots__ = ("_f", "path", "size", "pos", "buf", "buf_start", "where")

    def __init__(self, f: BinaryIO, path: str, size: int, initial: bytes) -> None:
        self._f = f
        self.path = path
        self.size = size
        self.pos = 0
        self.buf = initial
        self.buf_start = 0
        self.where = "the file header"

    def fail(self, reason: str, offset: int) -> NoReturn:
        raise InvalidModelError(
            f"invalid GGUF file {self.path!r} at byte offset {offset} ({self.where}): {reason}",
            path=self.path,
            offset=offset,
        )

    def truncated(self, what: str, need: int, offset: int) -> NoReturn:
        self.fail(
            f"file is truncated: {what} needs {need} bytes but only {max(self.size - offset, 0)} "
            f"remain in the {self.size}-byte file",
            offset,
        )

    def need(self, n: int, what: str) -> int:
        """Make ``n`` bytes at ``pos`` available; return their index in ``self.buf``."""
        pos = self.pos
        idx = pos - self.buf_start
        if idx >= 0 and idx + n <= len(self.buf):
            return idx
        if n > self.size - pos:
            self.truncated(what, n, pos)
        try:
            self._f.seek(pos)
            data = _read_exact(self._f, min(max(n, _CHUNK), self.size - pos))
        except OSError as exc:
            self.fail(f"read error: {exc.strerror or exc}", pos)
        if len(data) < n:  # the file shrank while we were reading it
            self.truncated(what, n, pos)
        self.buf = data
        self.buf_start = pos
        return 0

    def remaining(self) -> int:
        return self.size - self.pos

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.truncated(what, n, self.pos)
        self.pos += n

    def u32(self, what: str) -> int:
        idx = self.need(4, what)
        self.pos += 4
        value: int = _U32.unpack_from(self.buf, idx)[0]
        return value

    def u64(self, what: str) -> int:
        idx = self.need(8, what)
        self.pos += 8
        value: int = _U64.unpack_from(self.buf, idx)[0]
        return value

    def string_length(self, what: str) -> int:
        """Read a string's u64 length and check the file can hold that many bytes."""
        start = self.pos
        n = self.u64(f"the length of {what}")
        if n > self.size - self.pos:
            self.fail(
                f"{what} claims {n} bytes but only {self.size - self.pos} remain in the file",
                start,
            )
        return n

    def raw(self, n: int, what: str) -> bytes:
        idx = self.need(n, what)
        self.pos += n
        return self.buf[idx : idx + n]

    def string(self, what: str, limit: int) -> str:
        """Read a string, keeping at most ``limit`` bytes (the rest is skipped)."""
        n = self.string_length(what)
        keep = min(n, limit)
        data = self.raw(keep, what)
        if keep < n:
            self.pos += n - keep  # length already checked against the file size
            data = _cut_utf8(data)
        return data.decode("utf-8", errors="replace")

    def skip_string_array(self, count: int) -> None:
        """Skip ``count`` strings (each a u64 length and that many bytes), fast."""
        size = self.size
        pos = self.pos
        buf = self.buf
        start = self.buf_start
        end = start + len(buf)
        unpack = _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, "the length of an array string")
                buf = self.buf
                start = self.buf_start
                end = start + len(buf)
            n = unpack(buf, pos - start)[0]
            pos += 8
            if n > size - pos:
                self.fail(f"an array string claims {n} bytes but only {size - pos} remain", pos - 8)
            pos += n
        self.pos = pos


def _cut_utf8(data: bytes) -> bytes:
    """Drop a UTF-8 sequence that a byte limit cut in half (so it decodes without U+FFFD)."""
    end = len(data)
    i = end - 1
    while i >= 0 and end - i <= 4 and data[i] & 0xC0 == 0x80:
        i -= 1
    if i < 0:
        return data
    lead = data[i]
    width = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
    if lead >= 0x80 and end - i < width:
        return data[:i]
    return data


class _MetadataParser:
    def __init__(self, reader: _Reader, max_string_bytes: int, max_array_items: int) -> None:
        self.r = reader
        self.max_string_bytes = max_string_bytes
        self.max_array_items = max_array_items
        self.alignment_field: tuple[int, int, object] | None = None

    def value(self, vtype: int, type_offset: int, string_limit: int, depth: int) -> object:
        r = self.r
        fmt = _SCALAR_STRUCTS.get(vtype)
        if fmt is not None:
            idx = r.need(fmt.size, f"a {GGUFValueType(vtype).name} value")
            r.pos += fmt.size
            value: object = fmt.unpack_from(r.buf, idx)[0]
            return value
        if vtype == GGUFValueType.STRING:
            return r.string("a string value", string_limit)
        if vtype == GGUFValueType.ARRAY:
            return self.array(depth)
        r.fail(f"unknown value type id {vtype}", type_offset)

    def array_header(self, depth: int) -> tuple[int, int, int]:
        """Read an array's item type and length, checked against the bytes left.

        Returns ``(item_type, length, type_offset)``.
        """
        r = self.r
        if depth >= _MAX_ARRAY_NESTING:
            r.fail(f"arrays nested more than {_MAX_ARRAY_NESTING} deep", r.pos)
        type_offset = r.pos
        item_type = r.u32("the item type of an array")
        min_size = _MIN_ITEM_SIZES.get(item_type)
        if min_size is None:
            r.fail(f"unknown array item type id {item_type}", type_offset)
        length_offset = r.pos
        length = r.u64("the length of an array")
        if length > r.remaining() // min_size:
            r.fail(
                f"array of {length} {GGUFValueType(item_type).name} items cannot fit in the "
                f"{r.remaining()} bytes left in the file",
                length_offset,
            )
        return item_type, length, type_offset

    def array(self, depth: int) -> object:
        r = self.r
        item_type, length, type_offset = self.array_header(depth)
        if length <= self.max_array_items:
            fmt = _SCALAR_FORMATS.get(item_type)
            if fmt is not None:
                n = length * _SCALAR_SIZES[item_type]
                idx = r.need(n, "the items of an array")
                r.pos += n
                return struct.unpack_from(f"<{length}{fmt}", r.buf, idx)
            return tuple(self.value(item_type, type_offset, self.max_string_bytes, depth + 1) for _ in range(length))
        self.skip_items(item_type, length, depth)
        return GGUFArray(GGUFValueType(item_type), length)

    def skip_items(self, item_type: int, length: int, depth: int) -> None:
        r = self.r
        size = _SCALAR_SIZES.get(item_type)
        if size is not None:
            r.skip(length * size, "the items of an array")
        elif item_type == GGUFValueType.STRING:
            r.skip_string_array(length)
        else:  # nested arrays: every item has its own type and length
            for _ in range(length):
                inner_type, inner_length, _ = self.array_header(depth + 1)
                self.skip_items(inner_type, inner_length, depth + 1)

    def key_values(self, kv_count: int) -> dict[str, object]:
        r = self.r
        metadata: dict[str, object] = {}
        for i in range(kv_count):
            kv_offset = r.pos
            r.where = f"metadata entry #{i}"
            key_len = r.string_length("a metadata key")
            if key_len == 0:
                r.fail("empty metadata key", kv_offset)
            if key_len > _MAX_KEY_BYTES:
                r.fail(f"metadata key of {key_len} bytes is implausibly long", kv_offset)
            key = r.raw(key_len, "a metadata key").decode("utf-8", errors="replace")
            if key in metadata:
                # llama.cpp (gguf_init_from_file) and gguf-py both reject such files.
                r.fail(f"duplicate metadata key {key!r}", kv_offset)
            r.where = f"metadata key {key!r}"
            type_offset = r.pos
            vtype = r.u32("a value type")
            if vtype == GGUFValueType.STRING and key.startswith(CHAT_TEMPLATE_KEY):
                limit = max(self.max_string_bytes, CHAT_TEMPLATE_MAX_BYTES)
            else:
                limit = self.max_string_bytes
            metadata[key] = self.value(vtype, type_offset, limit, 0)
            if key == "general.alignment":
                self.alignment_field = (kv_offset, vtype, metadata[key])
        return metadata

    def alignment(self) -> int:
        """The tensor data alignment: ``general.alignment`` (a UINT32 power of two) or 32."""
        if self.alignment_field is None:
            return _DEFAULT_ALIGNMENT
        offset, vtype, value = self.alignment_field
        self.r.where = "metadata key 'general.alignment'"
        if vtype != GGUFValueType.UINT32 or not isinstance(value, int):
            self.r.fail(f"general.alignment must be a UINT32, not type id {vtype}", offset)
        if value == 0 or value & (value - 1):
            self.r.fail(f"general.alignment must be a power of two, got {value}", offset)
        return value


@dataclass(slots=True)
class _TensorTotals:
    elements: int = 0
    nbytes: int = 0
    by_type: dict[int, int] = field(default_factory=dict)


def _check_tensor_infos(r: _Reader, tensor_count: int, alignment: int) -> _TensorTotals:
    """Walk the tensor-info table: check the file holds all the tensor data it
    announces, and count the elements and bytes of the tensors."""
    if tensor_count > r.remaining() // _MIN_TENSOR_INFO_SIZE:
        r.where = "the file header"
        r.fail(
            f"tensor count {tensor_count} cannot fit in the {r.remaining()} bytes left after the metadata",
            8,
        )
    totals = _TensorTotals()
    by_type = totals.by_type
    furthest: tuple[int, int, int] | None = None  # (end of data, tensor index, info offset)
    for i in range(tensor_count):
        info_offset = r.pos
        r.where = f"tensor info #{i}"
        r.skip(r.string_length("a tensor name"), "a tensor name")
        dims_offset = r.pos
        n_dims = r.u32("a tensor's number of dimensions")
        if n_dims > _MAX_DIMS:
            r.fail(f"tensor has {n_dims} dimensions, at most {_MAX_DIMS} are allowed", dims_offset)
        n_elements = 1
        ne0 = 1
        for d in range(n_dims):
            dim = r.u64("a tensor dimension")
            if d == 0:
                ne0 = dim
            n_elements *= dim
        type_offset = r.pos
        ggml_type = r.u32("a tensor type")
        offset = r.u64("a tensor data offset")
        known = GGML_TYPES.get(ggml_type)
        nbytes = 0
        if known is not None:  # a type newer than the table is not size-checked
            block = known.block_size
            if ne0 % block:
                r.fail(f"tensor row of {ne0} elements is not a multiple of block size {block}", type_offset)
            nbytes = n_elements // block * known.type_size
        totals.elements += n_elements
        totals.nbytes += nbytes
        by_type[ggml_type] = by_type.get(ggml_type, 0) + n_elements
        if furthest is None or offset + nbytes > furthest[0]:
            furthest = (offset + nbytes, i, info_offset)
    if furthest is None:
        return totals
    data_start = -(-r.pos // alignment) * alignment
    end, index, info_offset = furthest
    if data_start + end > r.size:
        r.where = f"tensor info #{index}"
        r.fail(
            f"file is truncated: tensor #{index} needs the file to be at least {data_start + end} bytes "
            f"but it has {r.size} (incomplete download?)",
            info_offset,
        )
    return totals


def read_gguf_header(
    path: str | os.PathLike[str],
    *,
    max_string_bytes: int = 65536,
    max_array_items: int = 64,
) -> GGUFHeader:
    """Read the header and the key/value metadata of the GGUF file at ``path``.

    Strings are cut to ``max_string_bytes`` bytes (chat templates are kept
    whole up to 1 MiB) and arrays of more than ``max_array_items`` items are
    replaced by a :class:`GGUFArray` placeholder. Tensor data is never read.

    Raises :class:`ModelNotFoundError` if ``path`` does not exist and
    :class:`InvalidModelError` (with ``path`` and ``offset``) if it is not a
    readable GGUF v2/v3 little-endian file, is truncated, has a count or
    length the file cannot hold, an unknown value type, or a duplicate key.
    """
    if max_string_bytes < 0:
        raise ValueError(f"max_string_bytes must be >= 0, got {max_string_bytes}")
    if max_array_items < 0:
        raise ValueError(f"max_array_items must be >= 0, got {max_array_items}")
    abspath, f, size = _open_model(path)
    with f:
        r = _Reader(f, abspath, size, _read_start(abspath, f, min(size, _CHUNK)))
        r.pos = 4
        version = r.u32("the version")
        _check_version(r, version)
        tensor_count = r.u64("the tensor count")
        kv_count = r.u64("the metadata count")
        if kv_count > r.remaining() // _MIN_KV_SIZE:
            r.fail(f"metadata count {kv_count} cannot fit in the {r.remaining()} bytes left in the file", 16)
        parser = _MetadataParser(r, max_string_bytes, max_array_items)
        metadata = parser.key_values(kv_count)
        totals = _check_tensor_infos(r, tensor_count, parser.alignment())
    return GGUFHeader(
        path=abspath,
        version=version,
        tensor_count=tensor_count,
        metadata=MappingProxyType(metadata),
        file_size=size,
        parameter_count=totals.elements,
        tensor_bytes=totals.nbytes,
        type_elements=MappingProxyType(totals.by_type),
    )


def _check_version(r: _Reader, version: int) -> None:
    if version in SUPPORTED_VERSIONS:
        return
    swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
    if version & 0xFFFF == 0 and swapped in SUPPORTED_VERSIONS:
        r.fail(
            f"big-endian GGUF file (version {swapped} stored byte-swapped); llama.cpp loads only "
            "little-endian GGUF files on little-endian hosts, use a little-endian conversion of the model",
            4,
        )
    if version == 1:
        r.fail("GGUF version 1 is no longer supported (llama.cpp reads versions 2 and 3)", 4)
    r.fail(f"unsupported GGUF version {version} (versions 2 and 3 are supported)", 4)
