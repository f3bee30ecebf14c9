"""The values the SDK hands out."""

from __future__ import annotations

import dataclasses

import pytest

from rocm_infer import BatchResult, GenerateMetrics, Message, Token


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
