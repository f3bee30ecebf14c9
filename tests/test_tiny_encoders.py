"""The tiny embedding and reranker models: deterministic files that the real llama-server serves.

Each server-backed group shares one llama-server per module (started through the SDK); the tests
talk to it with ``model.client.request_json`` only, and also pin the exact error shapes llama-server
answers with, which the SDK's embedding and reranking calls have to turn into clear errors.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
from conftest import llama_server_pids

import rocm_infer
from rocm_infer.tiny_encoders import POOLING_TYPES, SPECIAL_TOKENS, main, make_embedding_model, make_reranker_model

pytestmark = pytest.mark.integration

# The embedding model under test: a non-default width, so "dimensions" is really what sets it.
DIMENSIONS = 48
TRAIN_CONTEXT = 512
# The server's context is smaller than the model's and than the default micro-batch (512): a text
# between the two overflows the context, a longer one the micro-batch, and they fail differently.
SERVER_CONTEXT = 256
EMBED_ARGS = ("--embeddings", "--pooling", "mean", "--embd-normalize", "2")

TEXTS = (
    "the cat sat on the mat",
    "a cat sat on a mat",
    "stock market prices fell sharply",
    "the dog ran in the park",
    "The quick brown fox jumps over the lazy dog.",
    "xylophone",
    "日本",
    "",
)
DOCUMENTS = (
    "the cat sat on the mat",
    "stock market prices fell",
    "a dog ran in the park",
    "hello world",
    "the cat",
)

module_loop = pytest.mark.asyncio(loop_scope="module")

Vector = npt.NDArray[np.float64]


def _vectors(response: dict[str, Any]) -> list[Vector]:
    data = sorted(response["data"], key=lambda d: d["index"])
    return [np.asarray(d["embedding"], dtype=np.float64) for d in data]


async def _embed(model: rocm_infer.TextModel, texts: str | Sequence[str]) -> list[Vector]:
    body = {"input": texts if isinstance(texts, str) else list(texts)}
    return _vectors(await model.client.request_json("POST", "/v1/embeddings", body))


async def _api_error(model: rocm_infer.TextModel, path: str, body: dict[str, Any]) -> rocm_infer.APIError:
    with pytest.raises(rocm_infer.APIError) as info:
        await model.client.request_json("POST", path, body)
    return info.value


def _cosine(a: Vector, b: Vector) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoders")


@pytest.fixture(scope="module")
def embedding_path(models_dir: Path) -> Path:
    return make_embedding_model(models_dir / "embed.gguf", seed=7, dimensions=DIMENSIONS, context_len=TRAIN_CONTEXT)


@pytest.fixture(scope="module")
def reranker_path(models_dir: Path) -> Path:
    return make_reranker_model(models_dir / "rerank.gguf", seed=7, context_len=TRAIN_CONTEXT)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder(embedding_path: Path, server_binary: str) -> AsyncIterator[rocm_infer.TextModel]:
    """One embedding server for the module; checks it is gone afterwards."""
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_model(
        embedding_path, threads=1, context_len=SERVER_CONTEXT, extra_args=EMBED_ARGS
    ) as model:
        yield model
    assert not llama_server_pids(server_binary) - before


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reranker(reranker_path: Path, server_binary: str) -> AsyncIterator[rocm_infer.TextModel]:
    """One reranking server for the module; checks it is gone afterwards."""
    before = llama_server_pids(server_binary)
    async with rocm_infer.load_model(
        reranker_path, threads=1, context_len=TRAIN_CONTEXT, extra_args=("--rerank",)
    ) as model:
        yield model
    assert not llama_server_pids(server_binary) - before


# -- the files ------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_arguments_other_bytes(tmp_path: Path) -> None:
    a = make_embedding_model(tmp_path / "a.gguf", seed=3).read_bytes()
    assert make_embedding_model(tmp_path / "b.gguf", seed=3).read_bytes() == a
    assert make_embedding_model(tmp_path / "c.gguf", seed=4).read_bytes() != a
    assert make_embedding_model(tmp_path / "d.gguf", seed=3, pooling="cls").read_bytes() != a
    r = make_reranker_model(tmp_path / "r1.gguf", seed=3).read_bytes()
    assert make_reranker_model(tmp_path / "r2.gguf", seed=3).read_bytes() == r
    assert make_reranker_model(tmp_path / "r3.gguf", seed=4).read_bytes() != r
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.mark.parametrize("pooling", sorted(POOLING_TYPES))
def test_embedding_header_declares_bert_width_context_and_pooling(tmp_path: Path, pooling: str) -> None:
    path = make_embedding_model(tmp_path / "m.gguf", pooling=pooling, dimensions=40, context_len=96)
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "bert"
    assert _field(reader, "bert.embedding_length") == 40
    assert _field(reader, "bert.context_length") == 96
    assert _field(reader, "bert.pooling_type") == int(POOLING_TYPES[pooling])
    assert _field(reader, "bert.attention.causal") is False
    assert _field(reader, "tokenizer.ggml.model") == "bert"
    tensors = {t.name: t for t in reader.tensors}
    assert "cls.weight" not in tensors and "cls.output.weight" not in tensors
    assert list(tensors["position_embd.weight"].shape) == [40, 96]  # ggml order: [width, positions]
    assert path.stat().st_size < 4 * 1024 * 1024


def test_reranker_header_declares_rank_pooling_and_a_one_output_head(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(make_reranker_model(tmp_path / "r.gguf", context_len=128))
    assert _field(reader, "general.architecture") == "bert"
    assert _field(reader, "bert.pooling_type") == int(gguf.PoolingType.RANK)
    tensors = {t.name: t for t in reader.tensors}
    width = _field(reader, "bert.embedding_length")
    assert list(tensors["cls.weight"].shape) == [width, width]
    assert list(tensors["cls.output.weight"].shape) == [width, 1]
    assert {"cls.bias", "cls.output.bias"} <= set(tensors)


def test_vocabulary_special_tokens_are_where_the_metadata_says(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(make_embedding_model(tmp_path / "m.gguf"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    for key, name in (("bos", "[CLS]"), ("seperator", "[SEP]"), ("unknown", "[UNK]"), ("padding", "[PAD]")):
        assert tokens[_field(reader, f"tokenizer.ggml.{key}_token_id")] == name
        assert tokens[SPECIAL_TOKENS[name]] == name


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"pooling": "rank"}, ValueError),
        ({"pooling": "max"}, ValueError),
        ({"dimensions": 0}, ValueError),
        ({"context_len": 0}, ValueError),
        ({"dimensions": 64.0}, TypeError),
        ({"seed": "0"}, TypeError),
    ],
)
def test_bad_embedding_arguments_raise(tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        make_embedding_model(tmp_path / "m.gguf", **kwargs)
    assert not list(tmp_path.iterdir())


def test_bad_reranker_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_reranker_model(tmp_path / "r.gguf", context_len=0)
    with pytest.raises(TypeError):
        make_reranker_model(tmp_path / "r.gguf", seed=True)


def test_command_line_writes_the_same_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "e.gguf"), "--seed", "2", "--dimensions", "32", "--pooling", "cls"]) == 0
    assert main([str(tmp_path / "r.gguf"), "--kind", "reranker", "--seed", "2", "--context-len", "64"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "e.gguf"), str(tmp_path / "r.gguf")]
    embed = make_embedding_model(tmp_path / "e2.gguf", seed=2, dimensions=32, pooling="cls")
    rerank = make_reranker_model(tmp_path / "r2.gguf", seed=2, context_len=64)
    assert (tmp_path / "e.gguf").read_bytes() == embed.read_bytes()
    assert (tmp_path / "r.gguf").read_bytes() == rerank.read_bytes()


# -- embeddings -----------------------------------------------------------------------------------


@module_loop
async def test_embeddings_have_the_model_width_and_unit_norm(embedder: rocm_infer.TextModel) -> None:
    response = await embedder.client.request_json("POST", "/v1/embeddings", {"input": list(TEXTS)})
    assert response["object"] == "list"
    assert [d["index"] for d in response["data"]] == list(range(len(TEXTS)))
    for vector in _vectors(response):
        assert vector.shape == (DIMENSIONS,)
        assert np.all(np.isfinite(vector))
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-5)  # --embd-normalize 2


@module_loop
async def test_every_text_tokenizes_to_at_least_one_token(embedder: rocm_infer.TextModel) -> None:
    # [CLS] ... [SEP] wraps every text; an unknown word is one [UNK], an unknown ASCII word is spelled.
    expected = {"": 2, "the cat sat": 5, "日本": 4, "😀": 3, "xylophone": 2 + 7, "The cats sat!": 2 + 5}
    for text, n_tokens in expected.items():
        response = await embedder.client.request_json("POST", "/v1/embeddings", {"input": text})
        assert response["usage"]["prompt_tokens"] == n_tokens, text


@module_loop
async def test_words_tokenize_into_known_pieces(embedder: rocm_infer.TextModel) -> None:
    response = await embedder.client.request_json(
        "POST", "/tokenize", {"content": "The Cats sat, naïve 日本", "with_pieces": True}
    )
    pieces = [t["piece"] for t in response["tokens"]]
    # Lower-cased, suffix split off, punctuation its own word, accent stripped, CJK unknown.
    assert pieces[:4] == [" the", " cat", "s", " sat"]
    assert pieces[4] == " ,"
    assert "".join(pieces[5:-2]) == " naive"
    assert pieces[-2:] == ["[UNK]", "[UNK]"]


@module_loop
async def test_same_text_same_vector_across_calls(embedder: rocm_infer.TextModel) -> None:
    first = await _embed(embedder, TEXTS[0])
    again = await _embed(embedder, TEXTS[0])
    np.testing.assert_allclose(again[0], first[0], rtol=0, atol=1e-6)


@module_loop
async def test_different_texts_give_different_vectors(embedder: rocm_infer.TextModel) -> None:
    vectors = await _embed(embedder, TEXTS)
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            assert _cosine(vectors[i], vectors[j]) < 0.999, (TEXTS[i], TEXTS[j])


@module_loop
async def test_texts_sharing_words_are_closer_than_texts_sharing_none(embedder: rocm_infer.TextModel) -> None:
    cat, cat2, stocks = await _embed(embedder, TEXTS[:3])
    # The model is mostly a bag of words by construction: over seeds 0-7 this gap is at least 0.24.
    assert _cosine(cat, cat2) > _cosine(cat, stocks) + 0.1


@module_loop
async def test_a_batch_equals_the_texts_one_by_one(embedder: rocm_infer.TextModel) -> None:
    batch = await _embed(embedder, TEXTS)
    for text, vector in zip(TEXTS, batch, strict=True):
        (alone,) = await _embed(embedder, text)
        np.testing.assert_allclose(vector, alone, rtol=0, atol=1e-5, err_msg=text)


@module_loop
async def test_native_embedding_endpoint_gives_the_same_vector(embedder: rocm_infer.TextModel) -> None:
    native = await embedder.client.request_json("POST", "/embedding", {"content": TEXTS[0]})
    # Non-OpenAI shape: a list of {"index", "embedding": [vector]} (one vector per pooled sequence).
    assert [item["index"] for item in native] == [0]
    (vector,) = native[0]["embedding"]
    (oai,) = await _embed(embedder, TEXTS[0])
    np.testing.assert_allclose(np.asarray(vector), oai, rtol=0, atol=1e-6)


@module_loop
async def test_a_file_made_again_with_the_same_seed_embeds_the_same(
    embedder: rocm_infer.TextModel, embedding_path: Path, tmp_path: Path, no_leaked_servers: None
) -> None:
    copy = make_embedding_model(tmp_path / "again.gguf", seed=7, dimensions=DIMENSIONS, context_len=TRAIN_CONTEXT)
    assert copy.read_bytes() == embedding_path.read_bytes()
    expected = await _embed(embedder, TEXTS[:3])
    async with rocm_infer.load_model(copy, threads=1, context_len=SERVER_CONTEXT, extra_args=EMBED_ARGS) as other:
        got = await _embed(other, TEXTS[:3])
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


@module_loop
async def test_without_normalisation_the_vectors_are_raw_and_point_the_same_way(
    embedder: rocm_infer.TextModel, embedding_path: Path, no_leaked_servers: None
) -> None:
    normalised = await _embed(embedder, TEXTS[:3])
    raw_args = ("--embeddings", "--embd-normalize", "-1")  # the pooling comes from the GGUF
    async with rocm_infer.load_model(embedding_path, threads=1, context_len=SERVER_CONTEXT, extra_args=raw_args) as raw:
        vectors = await _embed(raw, TEXTS[:3])
    for unit, vector in zip(normalised, vectors, strict=True):
        assert not math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-2)
        np.testing.assert_allclose(vector / np.linalg.norm(vector), unit, rtol=0, atol=1e-5)


# -- what the embedding server refuses ------------------------------------------------------------


@module_loop
async def test_generation_on_an_embedding_server_is_a_500(embedder: rocm_infer.TextModel) -> None:
    error = await _api_error(embedder, "/completion", {"prompt": "the cat", "n_predict": 4})
    assert error.status == 500
    assert error.body == {
        "error": {
            "code": 500,
            "message": "the current context does not support logits computation. skipping",
            "type": "server_error",
        }
    }


@module_loop
async def test_a_text_longer_than_the_context_is_a_400_with_the_counts(embedder: rocm_infer.TextModel) -> None:
    text = "the cat " * 150  # 302 tokens: over the 256-token context, under the 512-token micro-batch
    error = await _api_error(embedder, "/v1/embeddings", {"input": text})
    assert error.status == 400
    assert error.body == {
        "error": {
            "code": 400,
            "message": f"input (302 tokens) is larger than the max context size ({SERVER_CONTEXT} tokens). skipping",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 302,
            "n_ctx": SERVER_CONTEXT,
        }
    }


@module_loop
async def test_a_text_longer_than_the_micro_batch_is_a_500(embedder: rocm_infer.TextModel) -> None:
    # An encoder's text must fit one micro-batch (--ubatch-size, default 512); that is checked first.
    for body in ({"input": "the cat " * 300}, {"input": ["the cat", "the cat " * 300]}):
        error = await _api_error(embedder, "/v1/embeddings", body)
        assert error.status == 500
        assert error.body == {
            "error": {
                "code": 500,
                "message": "input (602 tokens) is too large to process. increase the physical batch size "
                "(current batch size: 512)",
                "type": "server_error",
            }
        }


@module_loop
async def test_an_empty_input_list_is_a_400(embedder: rocm_infer.TextModel) -> None:
    error = await _api_error(embedder, "/v1/embeddings", {"input": []})
    assert error.status == 400
    assert error.body == {
        "error": {"code": 400, "message": '"input" must not be empty', "type": "invalid_request_error"}
    }


@module_loop
async def test_rerank_on_a_server_without_rerank_is_a_501(embedder: rocm_infer.TextModel) -> None:
    error = await _api_error(embedder, "/v1/rerank", {"query": "cat", "documents": ["a", "b"]})
    assert error.status == 501
    assert error.body == {
        "error": {
            "code": 501,
            "message": "This server does not support reranking. Start it with `--reranking`",
            "type": "not_supported_error",
        }
    }


@module_loop
async def test_embeddings_on_a_server_without_embeddings_is_a_501(
    embedding_path: Path, no_leaked_servers: None
) -> None:
    async with rocm_infer.load_model(embedding_path, threads=1, context_len=SERVER_CONTEXT) as plain:
        for path, body in (("/v1/embeddings", {"input": "the cat"}), ("/embedding", {"content": "the cat"})):
            error = await _api_error(plain, path, body)
            assert error.status == 501
            assert error.body == {
                "error": {
                    "code": 501,
                    "message": "This server does not support embeddings. Start it with `--embeddings`",
                    "type": "not_supported_error",
                }
            }


# -- reranking ------------------------------------------------------------------------------------


async def _rerank(model: rocm_infer.TextModel, query: str, documents: Sequence[str], **extra: Any) -> Any:
    return await model.client.request_json(
        "POST", "/v1/rerank", {"query": query, "documents": list(documents), **extra}
    )


@module_loop
async def test_rerank_scores_every_document_deterministically(reranker: rocm_infer.TextModel) -> None:
    response = await _rerank(reranker, "the cat", DOCUMENTS)
    results = response["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)  # best first
    assert all(math.isfinite(s) for s in scores)
    assert max(scores) - min(scores) > 0.1  # random weights, but the documents do not all tie
    assert response["usage"]["prompt_tokens"] > 0
    again = await _rerank(reranker, "the cat", DOCUMENTS)
    assert {r["index"]: r["relevance_score"] for r in again["results"]} == pytest.approx(
        {r["index"]: r["relevance_score"] for r in results}, abs=1e-5
    )


@module_loop
async def test_a_document_scores_the_same_alone_and_among_others(reranker: rocm_infer.TextModel) -> None:
    together = {r["index"]: r["relevance_score"] for r in (await _rerank(reranker, "the cat", DOCUMENTS))["results"]}
    for index, document in enumerate(DOCUMENTS):
        (alone,) = (await _rerank(reranker, "the cat", [document]))["results"]
        assert alone["index"] == 0
        assert alone["relevance_score"] == pytest.approx(together[index], abs=1e-5)


@module_loop
async def test_rerank_top_n_and_the_tei_shape(reranker: rocm_infer.TextModel) -> None:
    full = (await _rerank(reranker, "the cat", DOCUMENTS))["results"]
    top = (await _rerank(reranker, "the cat", DOCUMENTS, top_n=2))["results"]
    assert top == full[:2]
    # TEI's shape: "texts" in, a bare list with "score" (and "text" on request) out.
    tei = await reranker.client.request_json(
        "POST", "/rerank", {"query": "the cat", "texts": list(DOCUMENTS), "return_text": True}
    )
    assert [(r["index"], r["text"]) for r in tei] == [(r["index"], DOCUMENTS[r["index"]]) for r in full]
    assert [r["score"] for r in tei] == pytest.approx([r["relevance_score"] for r in full], abs=1e-5)


@module_loop
async def test_what_the_rerank_server_refuses(reranker: rocm_infer.TextModel) -> None:
    error = await _api_error(reranker, "/v1/rerank", {"query": "the cat", "documents": []})
    assert error.status == 400
    assert error.body == {
        "error": {
            "code": 400,
            "message": '"documents" must be a non-empty string array',
            "type": "invalid_request_error",
        }
    }
    # [CLS] + 2 + [SEP] + 600: one pair too long for the micro-batch fails the whole request.
    error = await _api_error(reranker, "/v1/rerank", {"query": "the cat", "documents": ["a", "the cat " * 300]})
    assert error.status == 500
    assert error.body == {
        "error": {
            "code": 500,
            "message": "input (604 tokens) is too large to process. increase the physical batch size "
            "(current batch size: 512)",
            "type": "server_error",
        }
    }
