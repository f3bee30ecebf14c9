"""The SSE decoder on its own: bytes in, events out, no I/O.

Every table case is fed whole, byte by byte, split in two at every index and
split in three at every pair of indices (empty chunks included), and must
decode to the same events each way. The splits cover a CRLF torn between two
chunks and a multi-byte UTF-8 character torn anywhere inside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from rocm_infer.client import _Events
from rocm_infer.sse import ServerSentEvent, SSEDecoder, SSELineTooLongError


def ev(data: str, event: str = "message", id: str | None = None, retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=data, event=event, id=id, retry=retry)


def decode(chunks: Iterable[bytes], *, max_line: int | None = None) -> list[ServerSentEvent]:
    """Feed ``chunks`` to a fresh decoder, then end it; return every event."""
    decoder = SSEDecoder() if max_line is None else SSEDecoder(max_line=max_line)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.end())
    assert not decoder.pending
    return events


CASES: list[tuple[str, bytes, list[ServerSentEvent]]] = [
    ("empty input", b"", []),
    ("only blank lines", b"\n\r\n\r\n\n", []),
    ("single event", b"data: hello\n\n", [ev("hello")]),
    ("no space after colon", b"data:hello\n\n", [ev("hello")]),
    ("only one space is stripped", b"data:  hello \n\n", [ev(" hello ")]),
    ("empty data value", b"data:\n\n", [ev("")]),
    ("field name without colon", b"data\n\n", [ev("")]),
    ("two data lines without colon", b"data\ndata\n\n", [ev("\n")]),
    ("colon inside the value", b'data: {"a": "b:c"}\n\n', [ev('{"a": "b:c"}')]),
    ("multiple data lines joined", b"data: a\ndata: b\ndata:\ndata: c\n\n", [ev("a\nb\n\nc")]),
    ("two events", b"data: 1\n\ndata: 2\n\n", [ev("1"), ev("2")]),
    ("LF endings", b"data: a\ndata: b\n\ndata: c\n\n", [ev("a\nb"), ev("c")]),
    ("CR endings", b"data: a\rdata: b\r\rdata: c\r\r", [ev("a\nb"), ev("c")]),
    ("CRLF endings", b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n", [ev("a\nb"), ev("c")]),
    ("mixed endings", b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r\n", [ev("a\nb\nc"), ev("d")]),
    ("LF CR is two line ends", b"data: a\n\rdata: b\n\n", [ev("a"), ev("b")]),
    (
        "comments ignored",
        b": ping\n:\ndata: x\n: between data lines\ndata: y\n\n:ping\n\n:\n\n",
        [ev("x\ny")],
    ),
    ("comment alone is no event", b": keep-alive\n\n", []),
    ("event field", b"event: update\ndata: x\n\n", [ev("x", event="update")]),
    ("event type resets after dispatch", b"event: update\ndata: x\n\ndata: y\n\n", [ev("x", "update"), ev("y")]),
    ("empty event type is message", b"event:\ndata: x\n\n", [ev("x")]),
    ("last event field wins", b"event: a\nevent: b\ndata: x\n\n", [ev("x", event="b")]),
    ("id field persists", b"id: 7\ndata: x\n\ndata: y\n\n", [ev("x", id="7"), ev("y", id="7")]),
    ("id replaced", b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", [ev("a", id="1"), ev("b", id="2")]),
    ("empty id resets to empty", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [ev("a", id="1"), ev("b", id="")]),
    ("id with NUL ignored", b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")]),
    ("id on a data-less event still counts", b"id: 5\n\ndata: x\n\n", [ev("x", id="5")]),
    ("retry field", b"retry: 1500\ndata: x\n\n", [ev("x", retry=1500)]),
    ("retry resets after dispatch", b"retry: 10\ndata: x\n\ndata: y\n\n", [ev("x", retry=10), ev("y")]),
    ("retry non-digit ignored", b"retry: 1.5\ndata: x\n\n", [ev("x")]),
    ("retry letters ignored", b"retry: soon\ndata: x\n\n", [ev("x")]),
    ("retry empty ignored", b"retry:\ndata: x\n\n", [ev("x")]),
    ("retry non-ASCII digit ignored", "retry: \u0663\ndata: x\n\n".encode(), [ev("x")]),
    ("event without data dropped", b"event: ping\n\ndata: x\n\n", [ev("x")]),
    ("retry without data dropped", b"retry: 5\n\ndata: x\n\n", [ev("x")]),
    ("unknown fields ignored", b"foo: bar\ndata: x\nDATA: y\nData: z\n\n", [ev("x")]),
    ("space before colon is another field", b"data : x\n\n", []),
    ("unknown field alone is no event", b"foo\n\n", []),
    ("utf-8 multi-byte", "data: héllo 世界 🎉\n\n".encode(), [ev("héllo 世界 🎉")]),
    ("utf-8 in every field", "event: ünï\nid: ïd\ndata: ∑\n\n".encode(), [ev("∑", event="ünï", id="ïd")]),
    ("utf-8 over several lines", "data: 🎉\r\ndata: 世\r\n\r\n".encode(), [ev("🎉\n世")]),
    ("invalid utf-8 replaced", b"data: a\xffb\n\n", [ev("a\ufffdb")]),
    ("truncated utf-8 at line end replaced", b"data: \xe4\xb8\n\n", [ev("\ufffd")]),
    ("invalid utf-8 in a field name", b"\xffdata: x\ndata: y\n\n", [ev("y")]),
    ("unclosed final event discarded", b"data: a\n\ndata: b\n", [ev("a")]),
    ("unterminated final line discarded", b"data: a\n\ndata: b", [ev("a")]),
    ("unterminated final CR line discarded", b"data: a\r\rdata: b\r", [ev("a")]),
    ("unterminated comment at end", b"data: a\n\n: ping", [ev("a")]),
    ("DONE is plain data", b"data: [DONE]\n\n", [ev("[DONE]")]),
    ("not JSON is plain data", b"data: {not json\n\n", [ev("{not json")]),
    (
        "llama-server native stream",
        b'data: {"content":"Hel","stop":false}\n\n'
        b'data: {"content":"lo","stop":false}\n\n'
        b'data: {"content":"","stop":true,"timings":{}}\n\n',
        [
            ev('{"content":"Hel","stop":false}'),
            ev('{"content":"lo","stop":false}'),
            ev('{"content":"","stop":true,"timings":{}}'),
        ],
    ),
    # Several one-line data events in one chunk: what a reader that is behind gets per read.
    ("many events, one empty", b"data: 1\n\ndata: \n\ndata: 3\n\n", [ev("1"), ev(""), ev("3")]),
    ("many events, one without the space", b"data: 1\n\ndata:2\n\ndata: 3\n\n", [ev("1"), ev("2"), ev("3")]),
    ("many events, one of two lines", b"data: 1\n\ndata: 2\ndata: 3\n\n", [ev("1"), ev("2\n3")]),
    ("many events, an extra blank line", b"data: 1\n\n\ndata: 2\n\n", [ev("1"), ev("2")]),
    ("many events, a comment between", b"data: 1\n\n: data: x\n\ndata: 2\n\n", [ev("1"), ev("2")]),
    ("many events, an id between", b"data: 1\n\nid: 4\ndata: 2\n\n", [ev("1"), ev("2", id="4")]),
    ("many events, data inside a value", b"data: 1\n\ndata: a\n\ndata: b\n\n", [ev("1"), ev("a"), ev("b")]),
    ("many events, invalid utf-8 at an end", b"data: \xe4\xb8\n\ndata: \xffb\n\n", [ev("\ufffd"), ev("\ufffdb")]),
    (
        "openai stream",
        b'data: {"choices":[]}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n',
        [ev('{"choices":[]}'), ev("[DONE]")],
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(raw, exp, id=name) for name, raw, exp in CASES])
def test_decode_whole(raw: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode([raw]) == expected


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(raw, exp, id=name) for name, raw, exp in CASES])
def test_decode_byte_by_byte(raw: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode(raw[i : i + 1] for i in range(len(raw))) == expected


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(raw, exp, id=name) for name, raw, exp in CASES])
def test_decode_split_in_two_everywhere(raw: bytes, expected: list[ServerSentEvent]) -> None:
    for i in range(len(raw) + 1):
        assert decode([raw[:i], raw[i:]]) == expected, f"split at {i}"


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(raw, exp, id=name) for name, raw, exp in CASES])
def test_decode_split_in_three_everywhere(raw: bytes, expected: list[ServerSentEvent]) -> None:
    # i == j feeds an empty chunk in the middle, which must change nothing,
    # even right between the CR and the LF of a CRLF.
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert decode([raw[:i], raw[i:j], raw[j:]]) == expected, f"split at {i}, {j}"


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\nda") == [ev("a"), ev("b")]
    assert decoder.feed(b"ta: c\n") == []
    assert decoder.feed(b"\n") == [ev("c")]
    assert decoder.end() == []


def test_cr_at_chunk_end_dispatches_without_waiting_for_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [ev("a")]
    # The LF that completes the CRLF is swallowed, not taken for a blank line.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\r\n") == [ev("b")]


def test_empty_chunk_keeps_a_pending_crlf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [ev("a\nb")]


def test_last_event_id_attribute() -> None:
    decoder = SSEDecoder()
    assert decoder.last_event_id is None
    decoder.feed(b"id: 3\ndata: x\n")
    assert decoder.last_event_id is None  # set on dispatch, not on the id line
    decoder.feed(b"\n")
    assert decoder.last_event_id == "3"


def test_unterminated_last_line_is_processed_then_the_event_discarded() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [ev("a")]
    assert decoder.pending
    assert decoder.end() == []
    assert not decoder.pending
    # The decoder is reusable afterwards and holds nothing from before.
    assert decoder.feed(b"data: c\n\n") == [ev("c")]


def test_end_discards_a_started_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\ndata: a\n") == []
    assert decoder.end() == []
    assert decoder.feed(b"data: b\n\n") == [ev("b")]


def test_pending() -> None:
    decoder = SSEDecoder()
    assert not decoder.pending
    decoder.feed(b"data: x")  # unfinished line
    assert decoder.pending
    decoder.feed(b"\n")  # finished line, unfinished event
    assert decoder.pending
    decoder.feed(b"\n")
    assert not decoder.pending
    decoder.feed(b"event: a\n")
    assert decoder.pending
    decoder.feed(b"\n")  # no data: dropped
    assert not decoder.pending
    decoder.feed(b": comment\n")
    assert not decoder.pending
    decoder.feed(b"data: y")
    assert decoder.pending
    decoder.end()
    assert not decoder.pending


def test_line_too_long_raises() -> None:
    decoder = SSEDecoder(max_line=16)
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(b"data: " + b"x" * 20)
    assert isinstance(info.value, ValueError)
    assert "16" in str(info.value)


def test_line_too_long_across_chunks_raises() -> None:
    decoder = SSEDecoder(max_line=16)
    assert decoder.feed(b"data: 0123456789") == []  # exactly 16 bytes held: fine
    with pytest.raises(SSELineTooLongError):
        decoder.feed(b"x")


def test_line_too_long_byte_by_byte_raises_at_the_limit() -> None:
    decoder = SSEDecoder(max_line=16)
    line = b"data: " + b"x" * 100
    for i in range(16):
        decoder.feed(line[i : i + 1])
    with pytest.raises(SSELineTooLongError):
        decoder.feed(line[16:17])


def test_terminated_lines_are_not_limited() -> None:
    # max_line bounds what is held for an unfinished line; a line that arrives
    # complete in one chunk is decoded at once.
    decoder = SSEDecoder(max_line=16)
    assert decoder.feed(b"data: " + b"x" * 100 + b"\n\n") == [ev("x" * 100)]
    # Lines at the limit pass, chunk by chunk.
    assert decode([b"data: 0123456789", b"\n\n"], max_line=16) == [ev("0123456789")]


def test_long_line_within_the_limit_decodes_whole() -> None:
    payload = "x" * (2 * 1024 * 1024)
    raw = b"data: " + payload.encode() + b"\n\n"
    step = 64 * 1024
    events = decode(raw[i : i + step] for i in range(0, len(raw), step))
    assert len(events) == 1
    assert events[0].data == payload
    assert decode([raw]) == events


def test_realistic_llama_server_stream() -> None:
    words = ["The", " quick", " brown", " fox", " jumps", " 🦊", " über", " the", " lazy", " dog"]
    raw = b""
    for i, word in enumerate(words):
        event = {"index": 0, "content": word, "tokens": [100 + i], "stop": False, "id_slot": 0}
        raw += b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
    final = {"index": 0, "content": "", "tokens": [], "stop": True, "stop_type": "limit", "timings": {"n": 10}}
    raw += b"data: " + json.dumps(final).encode() + b"\n\n"

    for chunks in ([raw], [raw[i : i + 7] for i in range(0, len(raw), 7)]):
        events = decode(chunks)
        assert len(events) == len(words) + 1
        payloads = [json.loads(e.data) for e in events]
        assert "".join(p["content"] for p in payloads) == "".join(words)
        assert [p["stop"] for p in payloads] == [False] * len(words) + [True]
        assert all(e.event == "message" and e.id is None for e in events)


def test_events_before_an_over_long_line_come_out_first() -> None:
    decoder = SSEDecoder(max_line=16)
    events = decoder.feed(b"data: a\n\n" + b"x" * 40)
    assert [e.data for e in events] == ["a"]
    with pytest.raises(SSELineTooLongError):
        decoder.feed(b"more")
    with pytest.raises(SSELineTooLongError):
        decoder.end()


def test_a_long_line_in_many_pieces_is_joined_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: ") == []
    for _ in range(64):
        assert decoder.feed(b"y" * 4096) == []
    assert decoder.pending
    (event,) = decoder.feed(b"\n\n")
    assert event.data == "y" * 4096 * 64


def decode_data(chunks: Iterable[bytes]) -> list[str]:
    """Like :func:`decode`, through the data-only path (``feed_data``/``end_data``)."""
    decoder = SSEDecoder()
    datas: list[str] = []
    for chunk in chunks:
        datas.extend(decoder.feed_data(chunk))
    datas.extend(decoder.end_data())
    assert not decoder.pending
    return datas


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(raw, exp, id=name) for name, raw, exp in CASES])
def test_the_data_only_path_gives_the_same_data(raw: bytes, expected: list[ServerSentEvent]) -> None:
    want = [event.data for event in expected]
    assert decode_data([raw]) == want
    assert decode_data(raw[i : i + 1] for i in range(len(raw))) == want
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert decode_data([raw[:i], raw[i:j], raw[j:]]) == want, f"split at {i}, {j}"


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(raw, exp, id=name) for name, raw, exp in CASES])
def test_a_streams_events_take_the_same_data_as_the_decoder(raw: bytes, expected: list[ServerSentEvent]) -> None:
    # The stream's own reader takes each chunk's events through the data-only path and stops at
    # [DONE]: split anywhere, the data must not change.
    want: list[str] = []
    for event in expected:
        if event.data == "[DONE]":
            break
        want.append(event.data)
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            events = _Events("http://127.0.0.1:1/v1/chat/completions", "/v1/chat/completions", "done")
            for chunk in (raw[:i], raw[i:j], raw[j:]):
                if chunk:
                    events.feed(chunk)
            events.feed(b"")
            assert events.pending == want, f"split at {i}, {j}"
            assert events.done == (len(want) < len(expected))
