"""Incremental Server-Sent Events decoder that does no I/O.

Feed it the raw bytes of a response body as they arrive, in chunks of any size;
it returns the events completed by each chunk. It follows the WHATWG
``text/event-stream`` rules that matter for llama-server and OpenAI-style
streams:

* lines end with CR, LF or CRLF, and a CRLF split across two chunks counts once;
* a multi-byte UTF-8 character split across chunks comes out whole, because
  bytes are only decoded once their line is complete (CR and LF never occur
  inside a UTF-8 sequence); invalid UTF-8 becomes U+FFFD, as the spec says;
* lines starting with ``:`` are comments (``: ping`` keep-alives) and ignored;
* several ``data:`` lines in one event are joined with ``\\n``;
* an event is dispatched at a blank line; one with no ``data`` is dropped;
* a final event not closed by a blank line is discarded at the end of input.

The decoder knows nothing of JSON or ``[DONE]``; the client layer does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSELineTooLongError", "ServerSentEvent"]

_DEFAULT_MAX_LINE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSELineTooLongError(ValueError):
    """A line grew past the decoder's ``max_line`` without ending."""


class SSEDecoder:
    """Turns chunks of bytes into :class:`ServerSentEvent` objects.

    ``max_line`` bounds the bytes held for one unfinished line, so a peer that
    never sends a newline cannot grow memory without limit: past it,
    :meth:`feed` raises :class:`SSELineTooLongError` (a ``ValueError``).
    """

    __slots__ = (
        "_held",
        "_held_len",
        "_overflow",
        "_skip_lf",
        "_data",
        "_event",
        "_id",
        "_retry",
        "_max_line",
        "last_event_id",
    )

    def __init__(self, *, max_line: int = _DEFAULT_MAX_LINE) -> None:
        self._held: list[bytes] = []  # pieces of a line whose terminator has not arrived yet
        self._held_len = 0
        self._overflow = False  # a held line passed max_line: the stream is unusable
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF belongs to it
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._max_line = max_line
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` and return the events it completed (often none).

        Events completed before an over-long line are returned first; the
        :class:`SSELineTooLongError` comes from the next call.
        """
        lines = self._lines(chunk)
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            # The hot path: "data: {...}" lines and the blank lines that end events,
            # handled here without a call per line; everything else goes to _line.
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            elif line.startswith(b"data:"):
                data.append((line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8", "replace"))
            else:
                self._line(line)
        if self._overflow and not events:
            raise SSELineTooLongError(f"SSE line longer than {self._max_line} bytes")
        return events

    def feed_data(self, chunk: bytes) -> list[str]:
        """:meth:`feed`, returning only each completed event's ``data``.

        For a reader that needs nothing else (a JSON stream): no event
        objects are made, and a chunk that is exactly one ``data:`` line and
        the blank line ending it (how llama-server writes every event) is
        decoded without splitting it into lines; nor is a chunk of several
        such events (a reader that is behind gets many per read). The state
        it keeps (id, event type, held bytes) is the same as :meth:`feed`
        would keep.
        """
        if (
            chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and not (
                self._held or self._data or self._skip_lf or self._overflow or self._event or self._retry is not None
            )
            and b"\r" not in chunk
        ):
            # Every LF is in a pair, each pair but the last followed by "data: ": the chunk is
            # nothing but one-line data events (an invalid byte decodes alike either way, since
            # no UTF-8 sequence spans an LF).
            newlines = chunk.count(b"\n")
            if newlines == 2 or (newlines % 2 == 0 and chunk.count(b"\n\ndata: ") == newlines // 2 - 1):
                if self._id is not None:
                    self.last_event_id = self._id
                if newlines == 2:
                    return [chunk[6:-2].decode("utf-8", "replace")]
                return chunk[6:-2].decode("utf-8", "replace").split("\n\ndata: ")
        lines = self._lines(chunk)
        out: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if self._id is not None:
                    self.last_event_id = self._id
                if data:
                    out.append(data[0] if len(data) == 1 else "\n".join(data))
                    data.clear()
                self._event = ""
                self._retry = None
            elif line.startswith(b"data:"):
                data.append((line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8", "replace"))
            else:
                self._line(line)
        if self._overflow and not out:
            raise SSELineTooLongError(f"SSE line longer than {self._max_line} bytes")
        return out

    def _lines(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, holding back the unfinished last one."""
        if self._overflow:
            raise SSELineTooLongError(f"SSE line longer than {self._max_line} bytes")
        if not chunk:
            # An empty chunk must not forget a CR that ended the previous one.
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._held:
            if b"\n" not in chunk and b"\r" not in chunk:
                # Still inside one long line: keep the pieces, join them once it ends
                # (joining on every read would make a long line cost quadratic time).
                self._held.append(chunk)
                self._held_len += len(chunk)
                if self._held_len > self._max_line:
                    self._overflow = True
                    raise SSELineTooLongError(f"SSE line longer than {self._max_line} bytes")
                return []
            self._held.append(chunk)
            chunk = b"".join(self._held)
            self._held = []
            self._held_len = 0
        if b"\r" in chunk:
            # bytes.splitlines splits on exactly CR, LF and CRLF (unlike str.splitlines).
            lines = chunk.splitlines()
            last = chunk[-1:]
            if last == b"\r":
                self._skip_lf = True
            elif last != b"\n":
                self._hold(lines.pop())
        else:
            # The common case (llama-server ends lines with LF): one split, and the piece
            # after the last LF is the unfinished line (empty when the chunk ends in LF).
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if tail:
                self._hold(tail)
        return lines

    def _hold(self, tail: bytes) -> None:
        """Keep the unfinished last line of a chunk until its terminator arrives."""
        self._held = [tail]
        self._held_len = len(tail)
        if self._held_len > self._max_line:
            self._overflow = True

    def end(self) -> list[ServerSentEvent]:
        """Signal the end of the body. An unterminated last line is still a line,
        but an event not closed by a blank line is discarded (per the spec)."""
        events: list[ServerSentEvent] = []
        tail = self._tail()
        if tail is not None:
            event = self._line(tail)
            if event is not None:
                events.append(event)
        self._reset()
        return events

    def end_data(self) -> list[str]:
        """:meth:`end`, returning only the ``data`` of the event it completed (if any)."""
        tail = self._tail()
        event = self._line(tail) if tail is not None else None
        self._reset()
        return [event.data] if event is not None else []

    def _tail(self) -> bytes | None:
        if self._overflow:
            raise SSELineTooLongError(f"SSE line longer than {self._max_line} bytes")
        if not self._held:
            return None
        tail = b"".join(self._held)
        self._held = []
        self._held_len = 0
        return tail

    def _reset(self) -> None:
        self._data.clear()
        self._event = ""
        self._retry = None

    @property
    def pending(self) -> bool:
        """True while bytes of an unfinished line or event are held."""
        return bool(self._held or self._data or self._event)

    def _line(self, line: bytes) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        # The common case, "data: {...}", first and without decoding the field name.
        if line.startswith(b"data:"):
            data = line[6:] if line[5:6] == b" " else line[5:]
            self._data.append(data.decode("utf-8", "replace"))
            return None
        if line[:1] == b":":
            return None
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        if not self._data:
            # No data lines: the spec resets the buffers and dispatches nothing.
            self._event = ""
            self._retry = None
            return None
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        event = ServerSentEvent(data, self._event or "message", self.last_event_id, self._retry)
        self._data.clear()  # in place: feed holds a reference to this list
        self._event = ""
        self._retry = None
        return event
