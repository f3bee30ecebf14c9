"""``/v1/embeddings``: the request for ``embed``, and the vectors in its answer.

Vectors are asked for as base64 (``encoding_format: "base64"``): llama-server
then sends each one as the bytes of its float32 values, which decode
(``array`` or numpy) many times faster than the same floats written as JSON
numbers and parsed back. Inputs are strings, or token ids for a text that was
cut to fit the context (``truncate=True``).
"""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ProtocolError

__all__ = ["embeddings_body", "vectors_from"]

Input = str | list[int]


def embeddings_body(inputs: Sequence[Input], *, normalize: bool | None) -> dict[str, Any]:
    """The request body for ``inputs``; ``normalize`` None keeps the server's setting."""
    body: dict[str, Any] = {"input": list(inputs), "encoding_format": "base64"}
    if normalize is not None:
        body["embd_normalize"] = 2 if normalize else -1
    return body


def vectors_from(response: Any, count: int, url: str | None = None) -> list[array.array[float]]:
    """The ``count`` vectors of an embeddings response, in input order, as float32 arrays.

    Raises ProtocolError for a response of another shape or size.
    """
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list) or len(data) != count:
        raise ProtocolError(f"llama-server's embeddings answer holds {_size(data)} vectors for {count} inputs", url=url)
    vectors: list[array.array[float] | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        encoded = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or not isinstance(encoded, str):
            raise ProtocolError(
                f"llama-server sent an embedding entry of an unexpected shape: {str(item)[:200]}", url=url
            )
        vector = array.array("f")
        vector.frombytes(base64.b64decode(encoded))
        if sys.byteorder != "little":  # llama-server writes the floats in its own (little-endian) order
            vector.byteswap()
        vectors[index] = vector
    if any(v is None for v in vectors):
        raise ProtocolError("llama-server's embeddings answer repeats an index and misses another", url=url)
    return vectors  # type: ignore[return-value]


def _size(data: object) -> int | str:
    return len(data) if isinstance(data, list) else "no list of"
