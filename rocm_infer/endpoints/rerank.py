"""``/v1/rerank``: the request for ``rerank``, and the scores in its answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ProtocolError

__all__ = ["rerank_body", "scores_from"]


def rerank_body(query: str, documents: Sequence[str]) -> dict[str, Any]:
    """The request body: every document scored (the SDK applies ``top_n`` after merging batches)."""
    return {"query": query, "documents": list(documents), "top_n": len(documents)}


def scores_from(response: Any, count: int, url: str | None = None) -> list[float]:
    """The relevance score of each of ``count`` documents, in document order."""
    results = response.get("results") if isinstance(response, dict) else None
    if not isinstance(results, list) or len(results) != count:
        got = len(results) if isinstance(results, list) else "no list of"
        raise ProtocolError(f"llama-server's rerank answer holds {got} results for {count} documents", url=url)
    scores: list[float | None] = [None] * count
    for item in results:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get("relevance_score") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or not isinstance(score, int | float):
            raise ProtocolError(f"llama-server sent a rerank result of an unexpected shape: {str(item)[:200]}", url=url)
        scores[index] = float(score)
    if any(s is None for s in scores):
        raise ProtocolError("llama-server's rerank answer repeats a document and misses another", url=url)
    return scores  # type: ignore[return-value]
