"""Write tiny random-weight BERT GGUF models: a text embedder and a reranker.

The SDK's embedding and reranking tests need models that a real ``llama-server`` serves with
``--embeddings`` (``/v1/embeddings``, ``/embedding``) and ``--rerank`` (``/v1/rerank``) on a couple of
CPU cores, without downloading anything.  Both models made here use llama.cpp's ``bert``
architecture (a bidirectional encoder: token and learned position embeddings, post-LayerNorm blocks
with GELU feed-forward layers) and its WordPiece ("bert") tokenizer, with a vocabulary built from
the common English words of :data:`rocm_infer.tiny_model.WORDS`.

Tokenization (llama.cpp's WordPiece, configured by the vocabulary written here):

* text is lower-cased, accents are stripped, and it is split into words at whitespace and around
  every punctuation character (each punctuation character is a word of its own);
* each word is matched greedily, longest piece first: a known word is one token (``"cat"``), other
  words are spelled from word-initial pieces, continuation pieces (whole words and common suffixes
  such as ``"s"``, ``"ing"``, ``"ed"``) and single letters and digits, so ``"cats"`` is
  ``cat`` + ``s`` and an unknown ASCII word like ``"xylophone"`` still becomes several tokens;
* a word with a character the vocabulary has no piece for (for example ``"straße"`` or ``"😀"``)
  becomes one ``[UNK]`` token, the same token for every such word; CJK ideographs are words of
  their own, so ``"日本"`` is two ``[UNK]``;
* every text is wrapped as ``[CLS] ... [SEP]``, so even an empty text is two tokens and no text
  tokenizes to nothing.  llama-server joins a reranker pair as ``[CLS] query [SEP] document``.

The embedding model's weights are random but mostly pass each token through (attention and
feed-forward layers add a smaller random part), so a mean-pooled embedding is close to a bag of
words: texts that share words get more similar vectors than texts that share none.  The reranker's
classification head is random too: its scores are deterministic and differ between documents, but
they are not a measure of relevance.

Usable both as a module (:func:`make_embedding_model`, :func:`make_reranker_model`) and as a script::

    python -m rocm_infer.tiny_encoders embed.gguf --kind embedding --seed 0
    python -m rocm_infer.tiny_encoders rerank.gguf --kind reranker --seed 0

The same arguments always produce a byte-identical file, so callers may cache the result.

This module needs the ``gguf`` and ``numpy`` packages (rocm_infer's ``demo`` extra);
nothing else in rocm_infer imports it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import gguf
import numpy as np
import numpy.typing as npt

from .tiny_model import WORDS, write_gguf

__all__ = [
    "POOLING_TYPES",
    "SPECIAL_TOKENS",
    "main",
    "make_embedding_model",
    "make_reranker_model",
]

# WordPiece marks the start of a word with U+2581 ("▁"), the way llama.cpp stores BERT vocabularies.
SPACE = "\u2581"

# Ids are written to the metadata; llama.cpp's bert defaults (101/100/102...) are not relied on.
SPECIAL_TOKENS: Mapping[str, int] = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}

# Pooling types a made embedding model may declare (``<arch>.pooling_type``); llama-server uses it
# unless started with ``--pooling``.  "rank" is the reranker's.
POOLING_TYPES: Mapping[str, gguf.PoolingType] = {
    "none": gguf.PoolingType.NONE,
    "mean": gguf.PoolingType.MEAN,
    "cls": gguf.PoolingType.CLS,
    "last": gguf.PoolingType.LAST,
}

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
# Characters llama.cpp's WordPiece pre-tokenizer splits off as one-character words (ASCII
# punctuation and symbols).
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# Continuations beyond single letters, so inflected forms of known words stay short.
_SUFFIXES = ("s", "es", "ed", "d", "ing", "er", "ers", "est", "ly", "y", "ies", "ness", "ment", "tion", "ful", "less")

_ARCH = "bert"
_N_LAYER = 2
_RERANKER_DIM = 64
_LAYER_NORM_EPS = 1e-12
_N_TOKEN_TYPES = 2
# Weight of the random attention and feed-forward outputs against the residual stream.  Small for the
# embedder, so embeddings stay close to a bag of words; full for the reranker, so the [CLS] state it
# scores depends on every token of the pair.
_EMBEDDER_MIX = 0.25
_RERANKER_MIX = 1.0
# Position embeddings are kept small next to token embeddings: word order changes a vector a little,
# word choice a lot.
_POSITION_SCALE = 0.1
_F32_TENSORS = frozenset({"token_types.weight"})


def _build_vocab(words: Sequence[str]) -> tuple[list[str], list[int]]:
    """Tokens and token types for a WordPiece vocabulary over ``words``.

    Word-initial pieces carry the ``▁`` prefix; continuation pieces (BERT's ``##x``) are stored bare,
    as llama.cpp's converter writes them.
    """
    tokens = list(SPECIAL_TOKENS)
    types = [int(gguf.TokenType.UNKNOWN if t == "[UNK]" else gguf.TokenType.CONTROL) for t in tokens]
    assert [SPECIAL_TOKENS[t] for t in tokens] == list(range(len(tokens)))
    initial = [SPACE + w for w in words] + [SPACE + c for c in _LETTERS + _DIGITS + _PUNCTUATION]
    continuation = [*_LETTERS, *_DIGITS, *_SUFFIXES, *(w for w in words if len(w) > 1)]
    for piece in dict.fromkeys([*initial, *continuation]):
        tokens.append(piece)
        types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float32]:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _head_count(n_embd: int) -> int:
    return next(h for h in (4, 2, 1) if n_embd % h == 0)


def _bert_tensors(
    rng: np.random.Generator, *, n_vocab: int, n_embd: int, n_ff: int, context_len: int, mix: float
) -> dict[str, npt.NDArray[np.float32]]:
    """Random BERT weights in PyTorch ``[out, in]`` layout (the GGUF writer reverses the shapes).

    Inputs to every block are LayerNorm outputs (per-component variance 1), so projections use
    ``1/sqrt(fan_in)`` and the output projections are scaled by ``mix``.
    """
    proj = 1.0 / np.sqrt(n_embd)
    t: dict[str, npt.NDArray[np.float32]] = {
        "token_embd.weight": _normal(rng, (n_vocab, n_embd), 1.0),
        "token_types.weight": _normal(rng, (_N_TOKEN_TYPES, n_embd), _POSITION_SCALE),
        "position_embd.weight": _normal(rng, (context_len, n_embd), _POSITION_SCALE),
        "token_embd_norm.weight": np.ones(n_embd, dtype=np.float32),
        "token_embd_norm.bias": np.zeros(n_embd, dtype=np.float32),
    }
    for i in range(_N_LAYER):
        # Queries and keys at twice the usual scale make attention noticeably peaked, so each
        # token's state depends on a few others rather than on a flat average.
        t[f"blk.{i}.attn_q.weight"] = _normal(rng, (n_embd, n_embd), 2 * proj)
        t[f"blk.{i}.attn_k.weight"] = _normal(rng, (n_embd, n_embd), 2 * proj)
        t[f"blk.{i}.attn_v.weight"] = _normal(rng, (n_embd, n_embd), proj)
        t[f"blk.{i}.attn_output.weight"] = _normal(rng, (n_embd, n_embd), mix * proj)
        t[f"blk.{i}.attn_output_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        t[f"blk.{i}.attn_output_norm.bias"] = np.zeros(n_embd, dtype=np.float32)
        t[f"blk.{i}.ffn_up.weight"] = _normal(rng, (n_ff, n_embd), proj)
        t[f"blk.{i}.ffn_up.bias"] = _normal(rng, (n_ff,), 0.1)
        t[f"blk.{i}.ffn_down.weight"] = _normal(rng, (n_embd, n_ff), mix / np.sqrt(n_ff))
        t[f"blk.{i}.layer_output_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        t[f"blk.{i}.layer_output_norm.bias"] = np.zeros(n_embd, dtype=np.float32)
    return t


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _write(
    path: str | os.PathLike[str],
    *,
    name: str,
    description: str,
    pooling: gguf.PoolingType,
    n_embd: int,
    n_ff: int,
    context_len: int,
    tensors: Mapping[str, npt.NDArray[np.float32]],
    tokens: Sequence[str],
    types: Sequence[int],
) -> pathlib.Path:
    """Write a bert GGUF and return its path (written under a temporary name, then renamed)."""
    writer = gguf.GGUFWriter(None, _ARCH)
    writer.add_name(name)
    writer.add_description(description)
    writer.add_context_length(context_len)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(_N_LAYER)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(_head_count(n_embd))
    writer.add_layer_norm_eps(_LAYER_NORM_EPS)
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("bert")
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(types))
    writer.add_token_type_count(_N_TOKEN_TYPES)
    writer.add_pad_token_id(SPECIAL_TOKENS["[PAD]"])
    writer.add_unk_token_id(SPECIAL_TOKENS["[UNK]"])
    writer.add_bos_token_id(SPECIAL_TOKENS["[CLS]"])
    writer.add_sep_token_id(SPECIAL_TOKENS["[SEP]"])
    writer.add_mask_token_id(SPECIAL_TOKENS["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)
    writer.add_add_eos_token(False)

    for tensor_name, array in tensors.items():
        # F16 halves the file.  Norm weights, biases and the token-type table stay F32: llama.cpp adds
        # them to F32 activations directly, and ggml has no F32 + F16 addition.
        half = array.ndim == 2 and tensor_name not in _F32_TENSORS
        writer.add_tensor(tensor_name, array.astype(np.float16) if half else array)

    out = pathlib.Path(path)
    return write_gguf(writer, out)


def _words(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


def make_embedding_model(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    pooling: str = "mean",
    dimensions: int = 64,
    context_len: int = 512,
) -> pathlib.Path:
    """Write a tiny random BERT embedding model to ``path`` and return it as a :class:`pathlib.Path`.

    The model's embedding length is ``dimensions``, its trained context ``context_len`` tokens (the
    most llama-server can give it: a BERT has a learned embedding per position), and its GGUF
    declares ``pooling`` (one of :data:`POOLING_TYPES`), so llama-server's ``--pooling`` is
    optional.  Serve it with ``llama-server --embeddings``.  See the module docs for how text is
    tokenized.

    Raises ValueError for an unknown ``pooling`` or a ``dimensions``/``context_len`` below 1, and
    TypeError for arguments of the wrong type.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if pooling not in POOLING_TYPES:
        raise ValueError(f"pooling must be one of {sorted(POOLING_TYPES)}, not {pooling!r}")
    n_embd = _check_positive("dimensions", dimensions)
    context_len = _check_positive("context_len", context_len)
    tokens, types = _build_vocab(_words(WORDS))
    n_ff = 2 * n_embd
    rng = np.random.default_rng([seed, 1])  # stream 1: embedders never share weights with rerankers
    tensors = _bert_tensors(
        rng, n_vocab=len(tokens), n_embd=n_embd, n_ff=n_ff, context_len=context_len, mix=_EMBEDDER_MIX
    )
    return _write(
        path,
        name=f"rocm-infer-tiny-bert-embed-seed{seed}",
        description="random-weight test embedding model with a word-level WordPiece vocabulary",
        pooling=POOLING_TYPES[pooling],
        n_embd=n_embd,
        n_ff=n_ff,
        context_len=context_len,
        tensors=tensors,
        tokens=tokens,
        types=types,
    )


def make_reranker_model(path: str | os.PathLike[str], *, seed: int = 0, context_len: int = 512) -> pathlib.Path:
    """Write a tiny random BERT reranker to ``path`` and return it as a :class:`pathlib.Path`.

    The GGUF declares rank pooling and has a classification head (``cls`` and ``cls.output``, one
    output): llama-server started with ``--rerank`` scores each (query, document) pair from the
    final ``[CLS]`` state.  Scores are deterministic and differ between documents, but the weights
    are random, so they say nothing about relevance.  ``context_len`` bounds query plus document
    in tokens.

    Raises ValueError for a ``context_len`` below 1 and TypeError for arguments of the wrong type.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    context_len = _check_positive("context_len", context_len)
    n_embd = _RERANKER_DIM
    n_ff = 2 * n_embd
    tokens, types = _build_vocab(_words(WORDS))
    rng = np.random.default_rng([seed, 2])
    tensors = _bert_tensors(
        rng, n_vocab=len(tokens), n_embd=n_embd, n_ff=n_ff, context_len=context_len, mix=_RERANKER_MIX
    )
    # The head is BertForSequenceClassification's: dense + tanh, then one output.  Its input is a
    # LayerNorm output, so the dense layer's pre-activations have variance about 1 and tanh keeps
    # the differences between documents instead of saturating.
    tensors["cls.weight"] = _normal(rng, (n_embd, n_embd), 1.0 / np.sqrt(n_embd))
    tensors["cls.bias"] = np.zeros(n_embd, dtype=np.float32)
    tensors["cls.output.weight"] = _normal(rng, (1, n_embd), 1.0)
    tensors["cls.output.bias"] = np.zeros(1, dtype=np.float32)
    return _write(
        path,
        name=f"rocm-infer-tiny-bert-rerank-seed{seed}",
        description="random-weight test reranker with a word-level WordPiece vocabulary",
        pooling=gguf.PoolingType.RANK,
        n_embd=n_embd,
        n_ff=n_ff,
        context_len=context_len,
        tensors=tensors,
        tokens=tokens,
        types=types,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the model and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", help="where to write the .gguf file")
    parser.add_argument("--kind", choices=("embedding", "reranker"), default="embedding", help="which model")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--context-len", type=int, default=512, help="trained context length in tokens")
    parser.add_argument("--pooling", choices=sorted(POOLING_TYPES), default="mean", help="embedding pooling")
    parser.add_argument("--dimensions", type=int, default=64, help="embedding length")
    args = parser.parse_args(argv)
    if args.kind == "embedding":
        out = make_embedding_model(
            args.path, seed=args.seed, pooling=args.pooling, dimensions=args.dimensions, context_len=args.context_len
        )
    else:
        out = make_reranker_model(args.path, seed=args.seed, context_len=args.context_len)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
