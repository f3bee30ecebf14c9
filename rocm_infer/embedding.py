"""EmbeddingModel and Reranker: vectors and relevance scores from llama-server, supervised like TextModel.

Both are :class:`~rocm_infer.lifecycle.ServerModel` subclasses: the same
supervisor, restart policy, close(), ``async with``, reprs and unclosed
warning. Many inputs are split into requests of ``batch_size`` that run
concurrently across llama-server's slots and are put back in input order;
cancelling the call cancels every request (their connections are closed and
no further request is sent). llama-server finishes a request it has already
begun, so cancellation takes effect within one request's time: smaller
batches stop sooner.

Made by :func:`rocm_infer.load_embedding_model` / :func:`rocm_infer.load_reranker`
(which start llama-server with ``--embeddings`` / ``--rerank``) or
:func:`connect_embedding_model` / :func:`connect_reranker` (a server you run).
"""

from __future__ import annotations

import array
import functools
import logging
from collections.abc import Sequence
from typing import Any, Literal, overload

from .client import LlamaServerClient
from .endpoints.embeddings import Input, embeddings_body, vectors_from
from .endpoints.rerank import rerank_body, scores_from
from .errors import APIError, ContextLengthError, RocmInferError
from .gpu import VramMonitor
from .lifecycle import ModelContext, ServerModel, attach
from .supervisor import Supervisor
from .types import ModelInfo, RerankResult

__all__ = ["EmbeddingModel", "Reranker", "connect_embedding_model", "connect_reranker"]

logger = logging.getLogger(__name__)

# Inputs per request: 64 to 256 per request measured fastest on the tiny encoder (one per request
# was 3-4x slower), with a request in each slot at once.
DEFAULT_BATCH_SIZE = 64


def _texts(texts: str | Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a str or a sequence of str, not {type(texts).__name__}")
    listed = list(texts)
    for index, text in enumerate(listed):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{index}] must be str, not {type(text).__name__}")
    return listed


def _check_batch_size(batch_size: int | None) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


def _chunks(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


class _Encoder(ServerModel):
    """What the embedding model and the reranker share: inputs that must fit the context."""

    async def _fit(self, texts: Sequence[str], exc: ContextLengthError, offset: int, what: str) -> ContextLengthError:
        """The ContextLengthError for the first of ``texts`` (at ``offset``) that does not fit."""
        limit = self._limit(exc)
        for index, text in enumerate(texts):
            size = len(await self.tokenize(text, add_special=True))
            if size > limit:
                return ContextLengthError(
                    f"{what} {offset + index} is {size} tokens, more than the {limit} the server takes "
                    "(pass truncate=True to cut it, or load the model with a larger context_len)",
                    prompt_tokens=size,
                    context_len=limit,
                    index=offset + index,
                    status=exc.status,
                    type=exc.type,
                    url=exc.url,
                    body=exc.body,
                )
        return exc

    def _limit(self, exc: ContextLengthError | None = None) -> int:
        limits = [n for n in (self.info.context_len, exc.context_len if exc else None) if n]
        return min(limits) if limits else 512


class EmbeddingModel(_Encoder):
    """A model that turns texts into vectors (llama-server ``--embeddings``).

    ``dimensions`` is the length of its vectors, as the server makes them.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        info: ModelInfo,
        *,
        model_type: str = "unknown",
        vram: VramMonitor | None = None,
        dimensions: int = 0,
    ) -> None:
        super().__init__(supervisor, info, model_type=model_type, vram=vram)
        self.dimensions = dimensions

    @classmethod
    async def create(
        cls,
        supervisor: Supervisor,
        info: ModelInfo,
        *,
        model_type: str = "unknown",
        vram: VramMonitor | None = None,
    ) -> EmbeddingModel:
        """Ask the server for one vector: it must serve embeddings (and not be a reranker), and its
        length is the model's ``dimensions``. APIError naming what is wrong otherwise."""
        client = supervisor.client
        try:
            probe = await client.embeddings(embeddings_body(["a"], normalize=None))
        except APIError as exc:
            if exc.status in (404, 501):
                raise APIError(
                    f"the llama-server at {client.base_url} does not serve embeddings (start it with --embeddings, "
                    f"or use rocm_infer.load_embedding_model): {exc.message}",
                    status=exc.status,
                    type=exc.type,
                    url=exc.url,
                    body=exc.body,
                ) from exc
            raise
        if await _serves_rerank(supervisor):
            raise APIError(
                f"the llama-server at {client.base_url} is a reranker (--rerank): its vectors are not embeddings; "
                "use rocm_infer.connect_reranker",
                url=client.base_url,
            )
        (vector,) = vectors_from(probe, 1, client.base_url)
        return cls(supervisor, info, model_type=model_type, vram=vram, dimensions=len(vector))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" dimensions={self.dimensions}>"

    @overload
    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        as_numpy: Literal[False] = False,
        normalize: bool | None = None,
        truncate: bool = False,
        batch_size: int | None = None,
    ) -> list[list[float]]: ...

    @overload
    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        as_numpy: Literal[True],
        normalize: bool | None = None,
        truncate: bool = False,
        batch_size: int | None = None,
    ) -> Any: ...

    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        as_numpy: bool = False,
        normalize: bool | None = None,
        truncate: bool = False,
        batch_size: int | None = None,
    ) -> Any:
        """The vector of each text, in input order (one str: a list of one vector).

        ``as_numpy`` returns a float32 ``numpy`` array of shape ``(n, dimensions)``
        (numpy must be installed). ``normalize`` overrides the model's setting
        for this call (True: unit vectors). A text longer than the model's
        context is a :class:`~rocm_infer.errors.ContextLengthError` whose
        ``index`` names it, unless ``truncate``: then it is cut to fit. An
        empty list gives ``[]`` without a request; a non-str item is a
        TypeError. Inputs go in requests of ``batch_size`` (64), one per
        llama-server slot at a time; cancelling the call cancels them all.
        """
        np = _numpy() if as_numpy else None
        vectors, _ = await self._embed(texts, normalize=normalize, truncate=truncate, batch_size=batch_size)
        if np is not None:
            if not vectors:
                return np.zeros((0, self.dimensions), dtype=np.float32)
            return np.frombuffer(b"".join(v.tobytes() for v in vectors), dtype=np.float32).reshape(len(vectors), -1)
        return [v.tolist() for v in vectors]

    async def _embed(
        self, texts: str | Sequence[str], *, normalize: bool | None, truncate: bool, batch_size: int | None
    ) -> tuple[list[array.array[float]], int]:
        """:meth:`embed`'s work: the float32 vectors, and the prompt tokens the server counted."""
        items = _texts(texts, "texts")
        size = _check_batch_size(batch_size)
        if not items:
            return [], 0
        await self._supervisor.ready()
        batches = _chunks(len(items), size)
        calls = [functools.partial(self._embed_batch, items, part, normalize, truncate) for part in batches]
        results = await self._gather_limited(calls)
        return [vector for batch, _ in results for vector in batch], sum(tokens for _, tokens in results)

    async def _embed_batch(
        self, items: list[str], part: range, normalize: bool | None, truncate: bool
    ) -> tuple[list[array.array[float]], int]:
        inputs: list[Input] = [items[i] for i in part]
        for attempt in (1, 2):
            body = embeddings_body(inputs, normalize=normalize)
            try:
                response = await self._supervisor.call(functools.partial(_embeddings, body=body))
            except ContextLengthError as exc:
                if not truncate or attempt == 2:
                    raise await self._fit([items[i] for i in part], exc, part.start, "text") from exc
                inputs = await self._truncated([items[i] for i in part], self._limit(exc))
                continue
            usage = response.get("usage") if isinstance(response, dict) else None
            tokens = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
            return vectors_from(response, len(part), self.client.base_url), int(tokens)
        raise AssertionError("unreachable")

    async def _truncated(self, texts: list[str], limit: int) -> list[Input]:
        """Each text, or its first tokens (and its last special token) where it is longer than ``limit``."""
        cut: list[Input] = []
        for text in texts:
            ids = await self.tokenize(text, add_special=True)
            cut.append(text if len(ids) <= limit else [*ids[: limit - 1], ids[-1]])
        return cut


class Reranker(_Encoder):
    """A model that scores documents against a query (llama-server ``--rerank``)."""

    @classmethod
    async def create(
        cls,
        supervisor: Supervisor,
        info: ModelInfo,
        *,
        model_type: str = "unknown",
        vram: VramMonitor | None = None,
    ) -> Reranker:
        """The server must rerank: APIError naming what is wrong otherwise."""
        if not await _serves_rerank(supervisor):
            client = supervisor.client
            raise APIError(
                f"the llama-server at {client.base_url} does not rerank (start it with --rerank, or use "
                "rocm_infer.load_reranker)",
                url=client.base_url,
            )
        return cls(supervisor, info, model_type=model_type, vram=vram)

    async def rerank(
        self, query: str, documents: Sequence[str], *, top_n: int | None = None, batch_size: int | None = None
    ) -> list[RerankResult]:
        """Every document's relevance to ``query``, best first (the ``top_n`` best, if given).

        Returns :class:`~rocm_infer.types.RerankResult` values (``index`` in
        ``documents``, ``score``, ``document``). No documents: ``[]`` without
        a request. A query and document longer than the context together are
        a ContextLengthError whose ``index`` names the document. Documents go in
        requests of ``batch_size`` (64), one per slot at a time.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be str, not {type(query).__name__}")
        docs = _texts(documents, "documents")
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
            raise ValueError(f"top_n must be an int >= 1, got {top_n!r}")
        size = _check_batch_size(batch_size)
        if not docs:
            return []
        await self._supervisor.ready()
        calls = [functools.partial(self._rerank_batch, query, docs, part) for part in _chunks(len(docs), size)]
        scores = [score for batch in await self._gather_limited(calls) for score in batch]
        ranked = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        return [RerankResult(i, scores[i], docs[i]) for i in ranked[:top_n]]

    async def _rerank_batch(self, query: str, docs: list[str], part: range) -> list[float]:
        body = rerank_body(query, [docs[i] for i in part])
        try:
            response = await self._supervisor.call(lambda client: client.rerank(body))
        except ContextLengthError as exc:
            pairs = [f"{query} {docs[i]}" for i in part]  # what the server tokenizes, near enough
            raise await self._fit(pairs, exc, part.start, "document") from exc
        return scores_from(response, len(part), self.client.base_url)


async def _embeddings(client: LlamaServerClient, *, body: dict[str, Any]) -> Any:
    return await client.embeddings(body)


async def _serves_rerank(supervisor: Supervisor) -> bool:
    """Whether the server answers /v1/rerank (a reranker) or refuses it."""
    try:
        await supervisor.client.rerank(rerank_body("a", ["a"]))
    except APIError as exc:
        if exc.status in (400, 404, 501):
            return False
        raise
    except RocmInferError:
        raise
    return True


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ImportError("embed(as_numpy=True) needs numpy: pip install numpy") from None
    return numpy


def connect_embedding_model(base_url: str, *, api_key: str | None = None) -> ModelContext[EmbeddingModel]:
    """Attach to a llama-server that serves embeddings (``--embeddings``) at ``base_url``.

    As :func:`rocm_infer.connect`; raises ``APIError`` at once if the server
    does not serve embeddings, or is a reranker.
    """
    return attach(base_url, api_key, EmbeddingModel)


def connect_reranker(base_url: str, *, api_key: str | None = None) -> ModelContext[Reranker]:
    """Attach to a llama-server that reranks (``--rerank``) at ``base_url``; ``APIError`` at once if it does not."""
    return attach(base_url, api_key, Reranker)
