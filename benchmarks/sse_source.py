"""A synthetic llama-server: replays recorded event streams as fast as the socket allows.

    python benchmarks/sse_source.py RECORDING.json [--pace TOKENS_PER_S]

Prints ``port N`` on stdout once it listens on 127.0.0.1, then serves until
stdin closes (so it never outlives the harness that started it). The
recording (made by the harness from a real llama-server in the same run) holds
the JSON bodies of ``/health`` and ``/props`` and, per streaming path
(``/completion``, ``/v1/completions``, ``/v1/chat/completions``), the response
headers, the SSE events exactly as llama-server sent them, and how many of
them come before the first token (``lead``) and after the last (``tail``).
A request for fewer tokens than were recorded (``n_predict`` or
``max_tokens``) gets the lead, that many token events and the tail.

A streamed response is sent the way llama-server sends it, one HTTP chunk per
event, and every event is written at once: when the client reads slower than
the source writes, events pile up in the socket and the client reads several
per chunk. A request whose JSON body has ``"hold": true`` gets its first
event and then nothing more until the client goes away: that is how the
harness keeps a thousand streams open at once.

With ``--pace``, token events are written at that steady rate instead (the
lead at once, then each token event when it falls due, the tail with the
last): every client then reads the same pattern, about one event per read,
however fast it is, which makes its CPU per token comparable round to round
where a real server's rate is not.

Like llama-server, the source answers with ``Connection: close``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
from typing import Any

_CLOSE = b"0\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Source:
    """The routes of one recording, pre-encoded."""

    def __init__(self, recording: dict[str, Any], pace: float | None = None) -> None:
        self.pace = pace
        self.json_routes = {path: self._json_response(body) for path, body in recording["json"].items()}
        self.streams: dict[str, tuple[bytes, list[bytes], int, int]] = {}
        for path, stream in recording["streams"].items():
            head = b"HTTP/1.1 200 OK\r\n" + b"".join(
                f"{name}: {value}\r\n".encode("latin-1") for name, value in stream["headers"]
            )
            head += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            chunks = [_chunk(event.encode()) for event in stream["events"]]
            self.streams[path] = (head, chunks, stream.get("lead", 0), stream.get("tail", 0))

    @staticmethod
    def _cut(chunks: list[bytes], lead: int, tail: int, body: dict[str, Any]) -> list[bytes]:
        """The lead, the first ``n_predict`` (or ``max_tokens``) token events, and the tail."""
        wanted = body.get("n_predict", body.get("max_tokens"))
        tokens = len(chunks) - lead - tail
        if not isinstance(wanted, int) or wanted < 1 or wanted >= tokens:
            return chunks
        return chunks[: lead + wanted] + chunks[len(chunks) - tail :]

    async def _paced(self, writer: asyncio.StreamWriter, chunks: list[bytes], first: int, end: int) -> None:
        """The lead at once, then token event ``i`` at ``i / pace`` seconds, the tail with the last."""
        assert self.pace
        loop = asyncio.get_running_loop()
        began = loop.time()
        writer.write(b"".join(chunks[:first]))
        i = first
        while i < end:
            due = began + (i - first + 1) / self.pace
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            upto = min(end, first + int((now - began) * self.pace))
            upto = max(upto, i + 1)
            writer.write(b"".join(chunks[i:upto] if upto < end else chunks[i:]))
            await writer.drain()
            i = upto
        if end <= first:
            writer.write(b"".join(chunks[first:]))

    @staticmethod
    def _json_response(body: object) -> bytes:
        payload = json.dumps(body).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            path = request_line.split(" ")[1].split("?")[0]
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if path in self.json_routes:
                writer.write(self.json_routes[path])
            elif path in self.streams:
                head_bytes, chunks, lead, tail = self.streams[path]
                request = json.loads(body) if body else {}
                chunks = self._cut(chunks, lead, tail, request)
                writer.write(head_bytes)
                if request.get("hold") is True:
                    writer.write(chunks[0])
                    await writer.drain()
                    await reader.read()  # until the client goes away
                    return
                if self.pace:
                    await self._paced(writer, chunks, lead, len(chunks) - tail)
                else:
                    for chunk in chunks:
                        writer.write(chunk)
                        if writer.transport.get_write_buffer_size() > 1 << 16:
                            await writer.drain()
                writer.write(_CLOSE)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: that is how streams end early
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def serve(recording: dict[str, Any], pace: float | None) -> None:
    source = Source(recording, pace)
    server = await asyncio.start_server(source.handle, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    loop = asyncio.get_running_loop()
    # Serve until the harness closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.close()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a thousand held streams need the sockets
    parser = argparse.ArgumentParser(description="A synthetic llama-server replaying a recording.")
    parser.add_argument("recording")
    parser.add_argument("--pace", type=float, help="write token events at this many per second")
    args = parser.parse_args()
    with open(args.recording, encoding="utf-8") as f:
        recording = json.load(f)
    asyncio.run(serve(recording, args.pace))


if __name__ == "__main__":
    main()
