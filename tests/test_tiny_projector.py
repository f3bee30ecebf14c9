"""The tiny vision projector (rocm_infer.tiny_projector) on the real llama-server: it loads next to the
tiny text model, the server then takes images, and each image is its projector's tokens of the prompt."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import rocm_infer
from rocm_infer.errors import APIError, ServerStartError
from rocm_infer.tiny_model import make_tiny_model
from rocm_infer.tiny_projector import image_token_count, make_tiny_projector

pytestmark = pytest.mark.integration

QUESTION = "what is this?"


def _png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG of random pixels, written with zlib and struct alone."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    # Each scanline starts with its filter type; 0 is "None", the raw bytes.
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits per channel, truecolour
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _body(image: bytes | None, *, max_tokens: int = 4) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
    if image is not None:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    # temperature 0: greedy, so the same prompt always gets the same answer.
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}


@pytest.fixture(scope="module")
def projector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A projector for the 64-wide tiny text model (the tiny_model_path fixture)."""
    return make_tiny_projector(tmp_path_factory.mktemp("projector") / "mmproj.gguf", text_embd=64, seed=0)


@pytest.fixture
async def vision_model(
    tiny_model_path: Path, projector_path: Path, no_leaked_servers: None
) -> AsyncIterator[rocm_infer.TextModel]:
    async with rocm_infer.load_model(tiny_model_path, mmproj_path=projector_path, threads=1) as model:
        yield model


# -- the file ------------------------------------------------------------------------------------


def test_same_arguments_same_bytes_and_the_seed_changes_the_weights(tmp_path: Path) -> None:
    a = make_tiny_projector(tmp_path / "a.gguf", text_embd=64, seed=0).read_bytes()
    b = make_tiny_projector(tmp_path / "b.gguf", text_embd=64, seed=0).read_bytes()
    c = make_tiny_projector(tmp_path / "c.gguf", text_embd=64, seed=1).read_bytes()
    assert a == b
    assert a != c
    assert len(a) < 1_000_000


def test_the_file_is_a_llava_projector_as_wide_as_the_text_model(tmp_path: Path) -> None:
    path = make_tiny_projector(tmp_path / "p.gguf", text_embd=128, image_size=48, patch_size=12)
    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        return reader.fields[key].contents()

    assert value("general.architecture") == "clip"
    assert value("clip.projector_type") == "mlp"
    assert value("clip.has_vision_encoder") is True
    assert value("clip.vision.projection_dim") == 128
    assert (value("clip.vision.image_size"), value("clip.vision.patch_size")) == (48, 12)
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    # ggml order (input first): mm.2 maps to the text model's width; one position per patch.
    assert shapes["mm.2.weight"][1] == 128
    assert shapes["v.position_embd.weight"][1] == image_token_count(image_size=48, patch_size=12) == 16


def test_sizes_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        make_tiny_projector(tmp_path / "p.gguf", text_embd=64, image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="text_embd"):
        make_tiny_projector(tmp_path / "p.gguf", text_embd=1)
    assert not list(tmp_path.iterdir())


# -- on the real llama-server --------------------------------------------------------------------


async def test_the_server_takes_images_with_the_projector(vision_model: rocm_infer.TextModel) -> None:
    props = await vision_model.client.props()
    assert props["modalities"]["vision"] is True
    assert "vision" in vision_model.info.modalities


async def test_an_image_is_its_patches_in_the_prompt(vision_model: rocm_infer.TextModel) -> None:
    client = vision_model.client
    with_image = await client.request_json("POST", "/v1/chat/completions", _body(_png(20, 12, seed=1)))
    without = await client.request_json("POST", "/v1/chat/completions", _body(None))
    answer = with_image["choices"][0]["message"]["content"]
    assert isinstance(answer, str) and answer.strip()
    assert with_image["usage"]["completion_tokens"] == 4
    # Every image is resized to the projector's square, so any image is the same number of tokens.
    assert with_image["usage"]["prompt_tokens"] == without["usage"]["prompt_tokens"] + image_token_count()
    other_size = await client.request_json("POST", "/v1/chat/completions", _body(_png(64, 64, seed=2)))
    assert other_size["usage"]["prompt_tokens"] == with_image["usage"]["prompt_tokens"]


async def test_what_the_image_shows_changes_the_answer(vision_model: rocm_infer.TextModel) -> None:
    client = vision_model.client

    async def answer(image: bytes) -> str:
        reply = await client.request_json("POST", "/v1/chat/completions", _body(image, max_tokens=8))
        text: str = reply["choices"][0]["message"]["content"]
        return text

    first, second = _png(16, 16, seed=3), _png(16, 16, seed=4)
    a = await answer(first)
    assert await answer(second) != a  # the projector's output reaches the text model
    assert await answer(first) == a  # and it is a function of the pixels alone


async def test_a_file_that_is_not_an_image_is_a_400_and_the_server_lives_on(
    vision_model: rocm_infer.TextModel,
) -> None:
    client = vision_model.client
    with pytest.raises(APIError) as info:
        await client.request_json("POST", "/v1/chat/completions", _body(b"this is plain text, not a PNG"))
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.message == "Failed to load image or audio file"
    reply = await client.request_json("POST", "/v1/chat/completions", _body(_png(8, 8, seed=5)))
    assert reply["usage"]["completion_tokens"] == 4


async def test_chat_sends_an_image_through_the_sdk(vision_model: rocm_infer.TextModel) -> None:
    png = _png(24, 24, seed=6)
    with_image = await vision_model.chat([{"role": "user", "content": [QUESTION, rocm_infer.Image(png)]}], max_tokens=4)
    without = await vision_model.chat([{"role": "user", "content": QUESTION}], max_tokens=4)
    assert with_image.text.strip()
    assert len(with_image.tokens) == 4
    assert with_image.metrics.prompt_tokens == without.metrics.prompt_tokens + image_token_count()


async def test_a_wider_text_model_takes_a_projector_of_its_width(tmp_path: Path, no_leaked_servers: None) -> None:
    text = make_tiny_model(tmp_path / "wide.gguf", n_embd=128, seed=0)
    projector = make_tiny_projector(tmp_path / "wide-mmproj.gguf", text_embd=128, image_size=64, patch_size=16)
    async with rocm_infer.load_model(text, mmproj_path=projector, threads=1) as model:
        reply = await model.client.request_json("POST", "/v1/chat/completions", _body(_png(10, 30, seed=7)))
        without = await model.client.request_json("POST", "/v1/chat/completions", _body(None))
    assert reply["usage"]["prompt_tokens"] == without["usage"]["prompt_tokens"] + 16


async def test_a_projector_of_another_width_stops_the_server_from_starting(
    tiny_model_path: Path, tmp_path: Path, no_leaked_servers: None
) -> None:
    projector = make_tiny_projector(tmp_path / "mmproj-128.gguf", text_embd=128)
    with pytest.raises(ServerStartError) as info:
        async with rocm_infer.load_model(tiny_model_path, mmproj_path=projector, threads=1):
            pass
    assert "mismatch between text model (n_embd = 64) and mmproj (n_embd = 128)" in str(info.value)
