"""The OpenAI-format chunks rocm_infer's OpenAI-compatible routes stream, without a server."""

from __future__ import annotations

import json

import pytest

from rocm_infer.integrations.openai_api import _ChatChunks, _TextChunks
from rocm_infer.types import Token


@pytest.mark.parametrize("text", ["a", 'he said "hi"', "two\nlines", "tab\tand \\ backslash", "é 世界 🎉", "\u2028"])
def test_a_tokens_chunk_is_the_same_bytes_as_the_general_chunk(text: str) -> None:
    # Streamed tokens take a path that formats the chunk around the text; it must give exactly
    # what encoding the whole chunk gives, for chat (content and reasoning) and for text.
    chat = _ChatChunks("m", include_usage=False)
    first = chat.token(Token(1, "x"))
    assert first is not None and b'"role": "assistant"' in first.encode()
    for kind, key in (("content", "content"), ("reasoning", "reasoning_content")):
        fast = chat.token(Token(2, text, kind))
        assert fast is not None
        assert fast.encode() == chat.chunk({key: text}).encode()
        assert json.loads(fast.encode()[len(b"data: ") :])["choices"][0]["delta"] == {key: text}
    completion = _TextChunks("m", include_usage=False)
    fast = completion.token(Token(3, text))
    assert fast is not None and fast.encode() == completion.chunk(text).encode()
