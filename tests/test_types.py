"""The values the SDK hands out."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from rocm_infer import Audio, BatchResult, GenerateMetrics, Image, Message, Token


def test_message_coerce_accepts_messages_and_mappings() -> None:
    message = Message("user", "hi")
    assert Message.coerce(message) is message
    assert Message.coerce({"role": "assistant", "content": "yo"}) == Message("assistant", "yo")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"role": "root", "content": "x"}, ValueError),
        ({"role": "user", "content": None}, TypeError),
        ({"role": "user", "content": "x", "colour": "red"}, ValueError),
        ({"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}, ValueError),
        ({"content": "x"}, ValueError),
        (("user", "x"), TypeError),
    ],
)
def test_message_coerce_rejects(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Message.coerce(value)  # type: ignore[arg-type]


def test_values_are_frozen() -> None:
    token = Token(5, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        token.id = 6  # type: ignore[misc]
    assert not hasattr(token, "__dict__")


def test_batch_result_text_and_metrics_repr() -> None:
    result = BatchResult((Token(1, "a"), Token(2, "b")))
    assert result.text == "ab"
    text = repr(GenerateMetrics(generated_tokens=3, decode_tokens_per_sec=1234.5))
    assert "generated_tokens=3" in text and "1234.5 tok/s" in text


# -- images and audio in messages --------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24  # the signature is what identifies it
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 16


def test_an_image_comes_from_a_path_bytes_or_a_data_or_file_url(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    images = [Image(path), Image(str(path)), Image(PNG), Image(data_url), Image(path.as_uri())]
    assert {(i.data, i.mime) for i in images} == {(PNG, "image/png")}
    assert images[0].to_openai() == {"type": "image_url", "image_url": {"url": data_url}}
    assert Image(b"\xff\xd8\xff\xe0rest").mime == "image/jpeg"
    assert "image/png" in repr(images[0]) and "x89" not in repr(images[0])


def test_what_is_not_an_image_is_refused_naming_it(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt.* is not an image"):
        Image(notes)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        Image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="not fetched"):
        Image("https://example.org/cat.png")
    with pytest.raises(ValueError, match="base64"):
        Image("data:image/png,rawbytes")
    with pytest.raises(TypeError):
        Image(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not WAV"):
        Audio(PNG)
    assert Audio(WAV).to_openai()["input_audio"]["format"] == "wav"


def test_a_message_holds_parts_and_sends_them_in_openais_shape() -> None:
    message = Message("user", ["What is this?", Image(PNG)])
    assert message.text == "What is this?" and message.media == (Image(PNG),)
    sent = message.to_openai()
    assert sent["content"][0] == {"type": "text", "text": "What is this?"}
    assert sent["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    # The OpenAI shape in, the same message out.
    assert Message.coerce({"role": "user", "content": sent["content"]}) == message
    with pytest.raises(ValueError, match="unknown message content part"):
        Message("user", [{"type": "video_url", "video_url": "x"}])
