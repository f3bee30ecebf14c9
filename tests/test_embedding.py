"""EmbeddingModel and Reranker on tiny BERT models in the real llama-server: vectors, batching,
order, cancellation, context limits, and the clear errors for the wrong kind of server."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from conftest import llama_server_pids

import rocm_infer
from rocm_infer import ContextLengthError, EmbeddingModel, Reranker, RerankResult
from rocm_infer.tiny_encoders import make_embedding_model

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

DIM = 48
WORDS = "the cat sat on a mat while dogs ran far across green fields under blue sky".split()


def texts(n: int) -> list[str]:
    """``n`` different texts of 6 to 30 words."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + i % 25)) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module")
def embedder_path(embedding_model_path: Path) -> Path:
    return embedding_model_path


@pytest.fixture(scope="module")
def reranker_path(reranker_model_path: Path) -> Path:
    return reranker_model_path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emb(embedder_path: Path, server_binary: str) -> AsyncIterator[EmbeddingModel]:
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_embedding_model(embedder_path, threads=1) as model:
        yield model
    assert not llama_server_pids(server_binary) - before


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rr(reranker_path: Path, server_binary: str) -> AsyncIterator[Reranker]:
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_reranker(reranker_path, threads=1) as model:
        yield model
    assert not llama_server_pids(server_binary) - before


def norm(vector: Any) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def busy(model: rocm_infer.ServerModel) -> list[dict[str, Any]]:
    return [s for s in await model.client.slots() if s["is_processing"]]


async def test_vectors_have_the_models_dimensions_and_are_unit_vectors(emb: EmbeddingModel) -> None:
    assert emb.dimensions == DIM and f"dimensions={DIM}" in repr(emb)
    vectors = await emb.embed(["the cat sat", "dogs ran far"])
    assert len(vectors) == 2 and all(len(v) == DIM for v in vectors)
    assert all(abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    raw = await emb.embed("the cat sat", normalize=False)
    assert abs(norm(raw[0]) - 1.0) > 1e-3  # the server's unnormalized vector...
    cos = sum(a * b for a, b in zip(raw[0], vectors[0], strict=True)) / norm(raw[0])
    assert cos == pytest.approx(1.0, abs=1e-5)  # ...pointing the same way


async def test_the_same_text_gives_the_same_vector_and_different_texts_differ(
    emb: EmbeddingModel, embedder_path: Path, tmp_path: Path
) -> None:
    a, b, a_again = await emb.embed(["the cat sat on the mat", "blue sky over fields", "the cat sat on the mat"])
    assert a == a_again and a != b
    # The same seed makes the same file, and so the same vector on another server.
    copy = make_embedding_model(tmp_path / "same.gguf", seed=3, dimensions=DIM)
    assert copy.read_bytes() == embedder_path.read_bytes()
    async with rocm_infer.load_embedding_model(copy, threads=1) as other:
        assert (await other.embed("the cat sat on the mat"))[0] == pytest.approx(a, abs=1e-6)


async def test_a_thousand_texts_in_batches_equal_one_by_one_in_order(emb: EmbeddingModel) -> None:
    many = texts(1000)
    batched = await emb.embed(many)
    assert len(batched) == 1000
    one_by_one = [v for t in many for v in await emb.embed(t)]
    # Equal up to float32 rounding: a batch runs the same math through other kernels (measured ~1e-4).
    assert all(x == pytest.approx(y, abs=5e-4) for x, y in zip(batched, one_by_one, strict=True))
    # Under concurrency (several embed calls at once, small batches) every call keeps its order.
    calls = await asyncio.gather(*(emb.embed(many[i::7], batch_size=5) for i in range(7)))
    for i, result in enumerate(calls):
        assert all(x == pytest.approx(y, abs=5e-4) for x, y in zip(result, one_by_one[i::7], strict=True))


async def test_as_numpy_gives_a_float32_matrix(emb: EmbeddingModel) -> None:
    matrix = await emb.embed(texts(10), as_numpy=True)
    assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float32 and matrix.shape == (10, DIM)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert np.allclose(matrix, np.array(await emb.embed(texts(10))), atol=1e-6)
    empty = await emb.embed([], as_numpy=True)
    assert empty.shape == (0, DIM)


async def test_bad_input_is_refused_before_any_request(emb: EmbeddingModel) -> None:
    tasks_before = max(s.get("id_task", -1) for s in await emb.client.slots())
    assert await emb.embed([]) == []
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        await emb.embed(["fine", 42])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        await emb.embed(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        await emb.embed(["a"], batch_size=0)
    assert max(s.get("id_task", -1) for s in await emb.client.slots()) == tasks_before


async def test_a_text_longer_than_the_context_is_named_by_index_or_truncated(emb: EmbeddingModel) -> None:
    too_long = " ".join(WORDS * 60)  # ~900 tokens; the model's context is 512
    batch = ["short one", "another short", too_long, "last"]
    with pytest.raises(ContextLengthError) as info:
        await emb.embed(batch, batch_size=2)
    assert info.value.index == 2 and info.value.context_len == emb.info.context_len
    assert info.value.prompt_tokens is not None and info.value.prompt_tokens > emb.info.context_len
    assert "text 2" in str(info.value)
    vectors = await emb.embed(batch, truncate=True, batch_size=2)
    assert len(vectors) == 4 and all(abs(norm(v) - 1) < 1e-5 for v in vectors)
    assert vectors[0] == pytest.approx((await emb.embed("short one"))[0], abs=1e-6)


async def test_cancelling_mid_batch_stops_every_request(emb: EmbeddingModel) -> None:
    # llama-server finishes a request it has begun, so small requests let the slots go idle soon:
    # measured 0.05-0.07 s with 25 texts a request, while the whole call, not cancelled, takes ~4 s.
    task = asyncio.create_task(emb.embed(texts(4000), batch_size=25))
    deadline = time.monotonic() + 10
    while not await busy(emb):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 1.0
    while await busy(emb):
        assert time.monotonic() < deadline, "a slot still works for a cancelled embed"
        await asyncio.sleep(0.005)
    assert len(await emb.embed(["still works"])) == 1


async def test_rerank_orders_by_the_scores_the_server_returns(rr: Reranker) -> None:
    documents = ["the cat sat on the mat", "dogs ran far", "blue sky", "green fields under sky", "a mat"]
    ranked = await rr.rerank("where did the cat sit", documents)
    assert [type(r) for r in ranked] == [RerankResult] * 5
    assert sorted(r.index for r in ranked) == list(range(5))
    assert all(r.document == documents[r.index] for r in ranked)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    raw = await rr.client.rerank({"query": "where did the cat sit", "documents": documents})
    by_server = {item["index"]: item["relevance_score"] for item in raw["results"]}
    assert {r.index: r.score for r in ranked} == pytest.approx(by_server)
    assert [r.index for r in await rr.rerank("where did the cat sit", documents, top_n=2)] == [
        r.index for r in ranked[:2]
    ]
    # Batches of documents score the same as one request.
    in_batches = await rr.rerank("where did the cat sit", documents, batch_size=2)
    assert [r.index for r in in_batches] == [r.index for r in ranked]
    assert [r.score for r in in_batches] == pytest.approx([r.score for r in ranked], abs=1e-4)
    assert await rr.rerank("q", []) == []
    with pytest.raises(ValueError, match="top_n"):
        await rr.rerank("q", ["a"], top_n=0)


async def test_connecting_to_the_wrong_kind_of_server_says_so(
    emb: EmbeddingModel, rr: Reranker, tiny_model_path: Path
) -> None:
    async with rocm_infer.connect_embedding_model(emb.client.base_url, api_key=emb.server._api_key) as attached:  # type: ignore[union-attr]
        assert attached.dimensions == DIM and attached.server is None
        assert await attached.embed("the cat") == await emb.embed("the cat")
    async with rocm_infer.connect_reranker(rr.client.base_url, api_key=rr.server._api_key) as attached_rr:  # type: ignore[union-attr]
        assert [r.index for r in await attached_rr.rerank("q", ["a b", "c"])]
    with pytest.raises(rocm_infer.APIError, match="is a reranker"):
        await rocm_infer.connect_embedding_model(rr.client.base_url, api_key=rr.server._api_key)  # type: ignore[union-attr]
    with pytest.raises(rocm_infer.APIError, match="does not rerank"):
        await rocm_infer.connect_reranker(emb.client.base_url, api_key=emb.server._api_key)  # type: ignore[union-attr]
    # A text model's server serves no embeddings: refused at connect, not a generic 501 at the first embed.
    async with rocm_infer.load_model(tiny_model_path, threads=1) as text_model:
        key = text_model.server._api_key  # type: ignore[union-attr]
        with pytest.raises(rocm_infer.APIError, match="does not serve embeddings.*--embeddings"):
            await rocm_infer.connect_embedding_model(text_model.client.base_url, api_key=key)
    # And generating on an embedding server is a clear error too.
    async with rocm_infer.connect(emb.client.base_url, api_key=emb.server._api_key) as as_text:  # type: ignore[union-attr]
        with pytest.raises(rocm_infer.APIError, match="serves embeddings or reranking.*cannot generate"):
            await as_text.generate("hello", max_tokens=2)
    assert not hasattr(emb, "generate")


async def test_bad_load_options_are_refused_before_anything_starts(embedder_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling"):
        rocm_infer.load_embedding_model(embedder_path, pooling="rank")
    with pytest.raises(TypeError, match="normalize"):
        rocm_infer.load_embedding_model(embedder_path, normalize="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown LoadConfig option"):
        rocm_infer.load_reranker(embedder_path, colour="red")
