"""Write a tiny multimodal projector GGUF (``--mmproj``) with random weights.

The SDK's image-input tests need a projector that a real ``llama-server`` loads next to a tiny
text model (:func:`rocm_infer.tiny_model.make_tiny_model`) and runs in milliseconds on a couple of
CPU cores, without downloading anything.  The projector made here is llama.cpp's simplest vision
projector, a LLaVA-1.5 one (``clip.projector_type = "mlp"``):

* a CLIP-style vision transformer: a ``patch_size`` x ``patch_size`` convolution cuts the
  ``image_size`` x ``image_size`` RGB image into patches, learned position embeddings are added,
  then pre-LayerNorm blocks of self-attention and a quick-GELU feed-forward layer;
* a two-layer MLP (``mm.0``, GELU, ``mm.2``) from the vision width to the text model's
  embedding width ``text_embd``, which must equal the text model's ``n_embd`` (llama-server
  refuses to start with a projector of any other width).

Like LLaVA, llama.cpp reads the image features from the second-to-last block, so of the two
blocks written only the first one runs.  Every image, whatever its size, is resized to
``image_size`` x ``image_size`` and becomes :func:`image_token_count` tokens of the prompt: one per
patch, with no begin/end marker tokens, so any text model's vocabulary will do.

The projector's outputs imitate :mod:`rocm_infer.tiny_model`'s token embeddings: dimension 0 is
the same constant feature every word embedding carries (that model's attention heads and output
biases rely on it) and the other dimensions are random with about a word embedding's norm, so a
reply that follows an image is still made of whole words.  The weights are random, so the model
does not "see" anything: what the image contributes to the reply is deterministic but meaningless.

Usable both as a module (:func:`make_tiny_projector`) and as a script::

    python -m rocm_infer.tiny_projector mmproj.gguf --text-embd 64 --seed 0

The same arguments always produce a byte-identical file, so callers may cache the result.

This module needs the ``gguf`` and ``numpy`` packages (rocm_infer's ``demo`` extra);
nothing else in rocm_infer imports it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence

import gguf
import numpy as np
import numpy.typing as npt

from .tiny_model import write_gguf

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_PATCH_SIZE", "image_token_count", "main", "make_tiny_projector"]

DEFAULT_IMAGE_SIZE = 32
DEFAULT_PATCH_SIZE = 8

# The vision transformer's shape. Two blocks because llama.cpp's LLaVA graph stops before the last
# one; the feed-forward width must differ from the embedding width, or llama.cpp takes the file
# for an old conversion with ffn_up and ffn_down swapped and swaps them "back".
_VISION_EMBD = 32
_VISION_HEADS = 2
_VISION_FF = 4 * _VISION_EMBD
_VISION_BLOCKS = 2
_LAYER_NORM_EPS = 1e-5
# llama.cpp's name for the LLaVA-1.5 projector (gguf-py has no constant for it).
_PROJECTOR_TYPE = "mlp"

# CLIP's (OpenAI) pixel normalisation, which LLaVA projectors carry.
_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# E[gelu(z)^2] for z ~ N(0, 1): sizes mm.2 so that its outputs have unit variance per dimension.
_GELU_SECOND_MOMENT = 0.4252


def image_token_count(*, image_size: int = DEFAULT_IMAGE_SIZE, patch_size: int = DEFAULT_PATCH_SIZE) -> int:
    """How many prompt tokens one image takes with a projector made with these sizes (any image is
    resized to ``image_size`` x ``image_size`` first, so this does not depend on the image)."""
    return (image_size // patch_size) ** 2


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float32]:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _tensors(
    rng: np.random.Generator, *, text_embd: int, image_size: int, patch_size: int
) -> dict[str, npt.NDArray[np.float32]]:
    """The projector's tensors, named as llama.cpp's clip loader expects (numpy shapes are ggml's
    dimensions reversed: a linear layer from ``n_in`` to ``n_out`` is ``(n_out, n_in)``)."""
    d, ff = _VISION_EMBD, _VISION_FF
    n_pos = image_token_count(image_size=image_size, patch_size=patch_size)
    # The convolution sums 3 * patch_size**2 normalised pixels: scaled so each output is about N(0, 1).
    patch_std = 1.0 / np.sqrt(3 * patch_size * patch_size)
    t: dict[str, npt.NDArray[np.float32]] = {
        "v.patch_embd.weight": _normal(rng, (d, 3, patch_size, patch_size), patch_std),
        "v.position_embd.weight": _normal(rng, (n_pos, d), 1.0),
        "v.pre_ln.weight": np.ones(d, dtype=np.float32),
        "v.pre_ln.bias": np.zeros(d, dtype=np.float32),
    }
    for i in range(_VISION_BLOCKS):
        for name, (n_out, n_in) in {
            "attn_q": (d, d),
            "attn_k": (d, d),
            "attn_v": (d, d),
            "attn_out": (d, d),
            "ffn_up": (ff, d),
            "ffn_down": (d, ff),
        }.items():
            t[f"v.blk.{i}.{name}.weight"] = _normal(rng, (n_out, n_in), 1.0 / np.sqrt(n_in))
            t[f"v.blk.{i}.{name}.bias"] = np.zeros(n_out, dtype=np.float32)
        for norm in ("ln1", "ln2"):
            t[f"v.blk.{i}.{norm}.weight"] = np.ones(d, dtype=np.float32)
            t[f"v.blk.{i}.{norm}.bias"] = np.zeros(d, dtype=np.float32)
    # The features the MLP reads are the first block's residual stream with no final norm: the
    # pre-LayerNorm'd input plus the attention and feed-forward outputs, a variance a little under 2
    # per dimension, which mm.0 scales back to roughly N(0, 1) before its GELU.
    mm0 = _normal(rng, (text_embd, d), 1.0 / np.sqrt(2 * d))
    mm2 = _normal(rng, (text_embd, text_embd), 1.0 / np.sqrt(_GELU_SECOND_MOMENT * text_embd))
    mm2_bias = np.zeros(text_embd, dtype=np.float32)
    # Dimension 0 of every output is the tiny text model's constant feature (see the module docstring).
    mm2[0, :] = 0.0
    mm2_bias[0] = np.sqrt(text_embd - 1)
    t["mm.0.weight"] = mm0
    t["mm.0.bias"] = np.zeros(text_embd, dtype=np.float32)
    t["mm.2.weight"] = mm2
    t["mm.2.bias"] = mm2_bias
    return t


def make_tiny_projector(
    path: str | os.PathLike[str],
    *,
    text_embd: int,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
) -> pathlib.Path:
    """Write a tiny random LLaVA-style vision projector GGUF to ``path`` and return it as a
    :class:`pathlib.Path`.

    ``text_embd`` must be the embedding width of the text model it is loaded with (``n_embd`` of
    :func:`rocm_infer.tiny_model.make_tiny_model`, 64 by default). Images are resized to
    ``image_size`` x ``image_size`` pixels and cut into ``patch_size`` x ``patch_size`` patches,
    one prompt token each (:func:`image_token_count`). Raises ``ValueError`` for a ``text_embd``
    below 2, a non-positive size, or an ``image_size`` that ``patch_size`` does not divide.

    The file is written under a temporary name next to ``path`` and renamed into place, so a reader
    never sees a half-written projector and concurrent writers of the same arguments are harmless.
    """
    if text_embd < 2:
        raise ValueError(f"text_embd must be at least 2, not {text_embd}")
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a positive multiple of patch_size ({patch_size})")
    out = pathlib.Path(path)
    rng = np.random.default_rng(seed)
    tensors = _tensors(rng, text_embd=text_embd, image_size=image_size, patch_size=patch_size)

    writer = gguf.GGUFWriter(None, "clip")
    writer.add_name(f"rocm-infer-tiny-projector-seed{seed}")
    writer.add_description("random-weight LLaVA-style vision projector for tests")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(_PROJECTOR_TYPE)
    writer.add_vision_image_size(image_size)
    writer.add_vision_patch_size(patch_size)
    writer.add_vision_embedding_length(_VISION_EMBD)
    writer.add_vision_feed_forward_length(_VISION_FF)
    writer.add_vision_block_count(_VISION_BLOCKS)
    writer.add_vision_head_count(_VISION_HEADS)
    writer.add_vision_attention_layernorm_eps(_LAYER_NORM_EPS)
    writer.add_vision_projection_dim(text_embd)
    writer.add_vision_image_mean(list(_IMAGE_MEAN))
    writer.add_vision_image_std(list(_IMAGE_STD))

    for name, array in tensors.items():
        # Weights with two or more dimensions go in as F16 (the convolution kernel too, as in
        # converted projectors); biases and norm weights must stay F32 for llama.cpp.
        writer.add_tensor(name, array.astype(np.float16) if array.ndim >= 2 else array)

    return write_gguf(writer, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the projector and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", help="where to write the .gguf file")
    parser.add_argument("--text-embd", type=int, default=64, help="the text model's embedding width (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="input image side, in pixels")
    parser.add_argument("--patch-size", type=int, default=DEFAULT_PATCH_SIZE, help="patch side, in pixels")
    args = parser.parse_args(argv)
    path = make_tiny_projector(
        args.path, text_embd=args.text_embd, seed=args.seed, image_size=args.image_size, patch_size=args.patch_size
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
