"""LlamaServerClient and EventStream against small local HTTP servers.

Each failure case checks the exact SDK exception (and that it is a
RocmInferError, so no aiohttp type escapes) and that nothing is left open:
``filterwarnings = error`` turns an unclosed session or response into a test
failure, and the ``fake`` fixture fails a test that leaves a server-side
connection open. Sleeps only pace the fake servers; no test asserts on speed.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import gc
import json
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses

import rocm_infer.client as client_module
from rocm_infer.client import EventStream, LlamaServerClient
from rocm_infer.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ContextLengthError,
    ModelClosedError,
    ProtocolError,
    RocmInferError,
)
from rocm_infer.sse import SSEDecoder

pytestmark = pytest.mark.timeout(20)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How long to wait for the server to notice a disconnect; generous, it is
# normally a few milliseconds.
DISCONNECT_WAIT = 5.0

API_KEY = "sk-very-secret-key-123"


def sse(payload: object) -> bytes:
    """One SSE event carrying ``payload`` as JSON."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def token(i: int) -> bytes:
    return sse({"content": f"t{i}", "tokens": [i], "stop": False})


STOP = sse({"content": "", "tokens": [], "stop": True, "timings": {"predicted_n": 3}})
DONE = b"data: [DONE]\n\n"


def chat_chunk(text: str) -> bytes:
    return sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeServer:
    """An aiohttp test server; every request is recorded and goes to ``handler``."""

    def __init__(self) -> None:
        self.handler: Handler = self._not_set
        self.requests: list[Recorded] = []
        self.disconnected = asyncio.Event()
        self.url = ""
        self.server: TestServer | None = None

    @staticmethod
    async def _not_set(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
        return await self.handler(request)

    def open_connections(self) -> int:
        assert self.server is not None and self.server.runner is not None
        server = self.server.runner.server
        return 0 if server is None else len(server.connections)

    async def wait_disconnected(self) -> None:
        await asyncio.wait_for(self.disconnected.wait(), DISCONNECT_WAIT)

    # -- canned handlers ---------------------------------------------------------------------

    def reply_json(self, payload: object, *, status: int = 200) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.json_response(payload, status=status)

        self.handler = handler

    def reply_text(self, text: str, *, status: int = 200, content_type: str = "text/plain") -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(text=text, status=status, content_type=content_type)

        self.handler = handler

    def reply_stream(
        self,
        chunks: Iterable[bytes],
        *,
        delay: float = 0.0,
        then: Literal["end", "hang"] = "end",
        status: int = 200,
    ) -> None:
        """Stream ``chunks`` (each one write, ``delay`` apart), then finish the
        body cleanly or hang until the client goes away. A client disconnect
        (write error or handler cancellation) sets :attr:`disconnected`."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream"})
            try:
                await response.prepare(request)
                for chunk in chunks:
                    await response.write(chunk)
                    if delay:
                        await asyncio.sleep(delay)
                if then == "hang":
                    await asyncio.Event().wait()
                await response.write_eof()
            except ConnectionResetError:
                self.disconnected.set()
            except asyncio.CancelledError:
                self.disconnected.set()
                raise
            return response

        self.handler = handler

    def hang(self) -> None:
        """Accept the request and never answer."""

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.disconnected.set()
                raise
            raise AssertionError("unreachable")

        self.handler = handler


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake._dispatch)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.server = server
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
        # Nothing the client opened may stay open: every connection must be
        # closed by the client (it never reuses connections) once the test ends.
        for _ in range(int(DISCONNECT_WAIT / 0.01)):
            if fake.open_connections() == 0:
                break
            await asyncio.sleep(0.01)
        assert fake.open_connections() == 0, "the client left a connection to the server open"
    finally:
        await server.close()


MakeClient = Callable[..., LlamaServerClient]


@pytest.fixture(params=["own connections", "caller's aiohttp session"])
async def make_client(fake: FakeServer, request: pytest.FixtureRequest) -> AsyncIterator[MakeClient]:
    """Makes clients of the fake server, once per route a stream can take: connections of its
    own (a client that made its session, to an IP address), and a caller's aiohttp session."""
    made: list[tuple[LlamaServerClient, aiohttp.ClientSession | None]] = []

    def make(**kwargs: Any) -> LlamaServerClient:
        session = None
        if request.param == "caller's aiohttp session":
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        c = LlamaServerClient(fake.url, session=session, **kwargs)
        assert (c._direct is None) == (session is not None)
        made.append((c, session))
        return c

    try:
        yield make
    finally:
        for c, session in made:
            await c.aclose()
            if session is not None:
                await session.close()


@pytest.fixture
async def client(make_client: MakeClient) -> LlamaServerClient:
    return make_client()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL whose port is bound but not listening: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}"


RawServer = Callable[[bytes], Awaitable[str]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """Factory for a bare TCP server that reads the request, writes the given
    bytes verbatim and closes the connection; returns its base URL."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
                await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # Run finalizers inside the test, so an unclosed aiohttp object's warning
    # is charged to the test that leaked it.
    yield
    gc.collect()


async def collect(stream: EventStream, into: list[dict[str, Any]]) -> None:
    async for event in stream:
        into.append(event)


# -- request_json endpoints --------------------------------------------------------------------


async def test_health_ok_and_no_auth_header_without_key(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"status": "ok"})
    assert await client.health() == {"status": "ok"}
    [request] = fake.requests
    assert (request.method, request.path, request.body) == ("GET", "/health", None)
    assert "Authorization" not in request.headers


async def test_health_loading_is_api_error_503(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, status=503)
    with pytest.raises(APIError) as info:
        await client.health()
    err = info.value
    assert type(err) is APIError
    assert err.status == 503
    assert err.type == "unavailable_error"
    assert err.message == "Loading model"
    assert err.url == fake.url + "/health"
    assert "503" in str(err)
    assert len(fake.requests) == 1  # start-up polls /health itself: it is never retried


async def test_props_models_slots(fake: FakeServer, client: LlamaServerClient) -> None:
    props = {"total_slots": 4, "model_path": "/m.gguf", "default_generation_settings": {"n_ctx": 4096}}
    fake.reply_json(props)
    assert await client.props() == props
    fake.reply_json({"object": "list", "data": [{"id": "m"}]})
    assert await client.models() == {"object": "list", "data": [{"id": "m"}]}
    fake.reply_json([{"id": 0, "is_processing": False}])
    assert await client.slots() == [{"id": 0, "is_processing": False}]
    assert [(r.method, r.path) for r in fake.requests] == [("GET", "/props"), ("GET", "/v1/models"), ("GET", "/slots")]


async def test_tokenize_and_detokenize_bodies(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"tokens": [15, 2, 99]})
    assert await client.tokenize("héllo wörld") == [15, 2, 99]
    assert await client.tokenize("x", add_special=True) == [15, 2, 99]
    fake.reply_json({"content": "héllo wörld"})
    assert await client.detokenize([15, 2, 99]) == "héllo wörld"
    assert [(r.method, r.path, r.body) for r in fake.requests] == [
        ("POST", "/tokenize", {"content": "héllo wörld", "add_special": False}),
        ("POST", "/tokenize", {"content": "x", "add_special": True}),
        ("POST", "/detokenize", {"tokens": [15, 2, 99]}),
    ]


async def test_completion_body_is_not_streamed(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"content": "hi", "stop": True})
    assert await client.completion({"prompt": "x", "n_predict": 2, "stream": True}) == {"content": "hi", "stop": True}
    assert fake.requests[0].body == {"prompt": "x", "n_predict": 2, "stream": False}


async def test_base_url_trailing_slash(fake: FakeServer) -> None:
    fake.reply_json({"status": "ok"})
    async with LlamaServerClient(fake.url + "/") as client:
        assert client.base_url == fake.url
        assert await client.health() == {"status": "ok"}
    assert fake.requests[0].path == "/health"


async def test_bearer_header_sent_and_key_never_shown(fake: FakeServer) -> None:
    async with LlamaServerClient(fake.url, api_key=API_KEY) as client:
        assert API_KEY not in repr(client)
        fake.reply_json({"status": "ok"})
        await client.health()
        fake.reply_stream([STOP])
        assert [e async for e in client.stream_completion({"prompt": "x"})][-1]["stop"] is True
        fake.reply_json(
            {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}, status=401
        )
        with pytest.raises(APIError) as info:
            await client.props()
        assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)
    assert API_KEY not in repr(client)
    assert "closed" in repr(client)
    assert [r.headers.get("Authorization") for r in fake.requests] == [f"Bearer {API_KEY}"] * 3


# -- HTTP errors ---------------------------------------------------------------------------------

CONTEXT_ERROR = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9000,
        "n_ctx": 4096,
    }
}


async def test_context_length_error(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json(CONTEXT_ERROR, status=400)
    with pytest.raises(ContextLengthError) as info:
        await client.completion({"prompt": "long"})
    err = info.value
    assert isinstance(err, APIError) and isinstance(err, RocmInferError)
    assert (err.prompt_tokens, err.context_len, err.status) == (9000, 4096, 400)
    assert err.type == "exceed_context_size_error"
    assert err.message == CONTEXT_ERROR["error"]["message"]
    assert err.body == CONTEXT_ERROR
    assert err.url == fake.url + "/completion"


async def test_context_length_error_without_counts(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"error": {"code": 400, "message": "too long", "type": "exceed_context_size_error"}}, status=400)
    with pytest.raises(ContextLengthError) as info:
        await client.completion({"prompt": "long"})
    assert (info.value.prompt_tokens, info.value.context_len, info.value.status) == (None, None, 400)


async def test_error_body_arriving_in_pieces(fake: FakeServer, client: LlamaServerClient) -> None:
    body = json.dumps(CONTEXT_ERROR).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=400, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(0, len(body), 25):
            await response.write(body[i : i + 25])
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    fake.handler = handler
    with pytest.raises(ContextLengthError) as info:
        await client.completion({"prompt": "long"})
    assert (info.value.prompt_tokens, info.value.context_len) == (9000, 4096)


async def test_unauthorized_is_api_error_401(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}, status=401)
    with pytest.raises(APIError) as info:
        await client.props()
    assert type(info.value) is APIError
    assert (info.value.status, info.value.type, info.value.message) == (401, "authentication_error", "Invalid API Key")


async def test_non_json_error_body_is_api_error_with_text(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_text("  something exploded\n", status=500)
    with pytest.raises(APIError) as info:
        await client.props()
    err = info.value
    assert type(err) is APIError
    assert (err.status, err.message, err.type) == (500, "something exploded", None)
    assert "something exploded" in str(err)


async def test_empty_error_body_uses_the_reason(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_text("", status=502)
    with pytest.raises(APIError) as info:
        await client.props()
    assert (info.value.status, info.value.message) == (502, "Bad Gateway")


async def test_error_with_plain_string(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"error": "no such slot"}, status=404)
    with pytest.raises(APIError) as info:
        await client.slots()
    assert (info.value.status, info.value.message) == (404, "no such slot")


async def test_error_object_in_a_200_body(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"error": {"code": 501, "message": "not supported", "type": "not_supported_error"}})
    with pytest.raises(APIError) as info:
        await client.props()
    assert (info.value.status, info.value.type) == (501, "not_supported_error")


async def test_invalid_json_on_200_is_protocol_error(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_text("{not json", content_type="application/json")
    with pytest.raises(ProtocolError) as info:
        await client.props()
    assert isinstance(info.value, RocmInferError)
    assert "/props" in str(info.value)


# -- transport failures --------------------------------------------------------------------------


async def test_connection_refused(refused_url: str) -> None:
    async with LlamaServerClient(refused_url) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.health()
    err = info.value
    assert isinstance(err, builtins.ConnectionError) and isinstance(err, RocmInferError)
    assert err.url == refused_url + "/health"
    assert not isinstance(err, aiohttp.ClientError)


async def test_connection_refused_on_stream(refused_url: str) -> None:
    async with LlamaServerClient(refused_url) as client:
        stream = client.stream_chat_completion({"messages": []})
        with pytest.raises(APIConnectionError) as info:
            await stream.__anext__()
        assert info.value.url == refused_url + "/v1/chat/completions"
        # The stream is finished for good; it does not retry.
        assert [e async for e in stream] == []


async def test_request_timeout(fake: FakeServer) -> None:
    fake.hang()
    async with LlamaServerClient(fake.url, timeout=0.3) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.props()
    assert isinstance(info.value, builtins.TimeoutError) and isinstance(info.value, RocmInferError)
    await fake.wait_disconnected()


async def test_server_closes_without_answer(raw_server: RawServer) -> None:
    url = await raw_server(b"")
    async with LlamaServerClient(url) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.health()
    assert info.value.url == url + "/health"


async def test_malformed_http_is_protocol_error(raw_server: RawServer) -> None:
    url = await raw_server(b"NOT HTTP AT ALL\r\n\r\n")
    async with LlamaServerClient(url) as client:
        with pytest.raises(ProtocolError):
            await client.health()
        with pytest.raises(ProtocolError):
            await client.stream_completion({}).read_batch()


async def test_body_shorter_than_content_length(raw_server: RawServer) -> None:
    url = await raw_server(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":')
    async with LlamaServerClient(url) as client:
        with pytest.raises(ProtocolError):
            await client.props()


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ClientConnectionError("reset"), APIConnectionError),
        (aiohttp.ServerDisconnectedError(), APIConnectionError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), APIConnectionError),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), APIConnectionError),
        (ConnectionRefusedError(111, "refused"), APIConnectionError),
        (OSError(101, "Network is unreachable"), APIConnectionError),
        (aiohttp.ServerTimeoutError("read timeout"), APITimeoutError),
        (aiohttp.ConnectionTimeoutError("connect timeout"), APITimeoutError),
        (builtins.TimeoutError(), APITimeoutError),
        (aiohttp.ClientPayloadError("payload"), ProtocolError),
        (aiohttp.ClientResponseError(None, (), status=400, message="Bad status line"), ProtocolError),  # type: ignore[arg-type]
        (aiohttp.ClientError("other"), APIConnectionError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
async def test_aiohttp_exceptions_never_escape(raised: Exception, expected: type[RocmInferError]) -> None:
    url = "http://127.0.0.1:9/health"
    with aioresponses() as mocked:
        mocked.get(url, exception=raised)
        async with LlamaServerClient("http://127.0.0.1:9") as client:
            with pytest.raises(RocmInferError) as info:
                await client.health()
    assert type(info.value) is expected
    assert info.value.__cause__ is raised


# -- streams: the happy paths --------------------------------------------------------------------


async def test_completion_stream(fake: FakeServer, client: LlamaServerClient) -> None:
    # The stop event and an extra event share one write; then the server would
    # keep the connection open: the client must close it after the terminator.
    fake.reply_stream([token(0), token(1) + token(2), STOP + token(99)], then="hang")
    stream = client.stream_completion({"prompt": "hi", "n_predict": 3})
    assert stream.url == fake.url + "/completion"
    assert not stream.completed
    events = [e async for e in stream]
    assert [e["content"] for e in events] == ["t0", "t1", "t2", ""]
    assert events[-1]["stop"] is True and events[-1]["timings"] == {"predicted_n": 3}
    assert stream.completed
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/completion")
    assert request.body == {"prompt": "hi", "n_predict": 3, "stream": True}
    await fake.wait_disconnected()
    # A finished stream stays finished.
    assert await stream.read_batch() == []


async def test_chat_stream(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([chat_chunk("Hel"), chat_chunk("lo"), DONE, chat_chunk("after done")], then="hang")
    async with client.stream_chat_completion({"messages": [{"role": "user", "content": "hi"}]}) as stream:
        events = [e async for e in stream]
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["Hel", "lo"]
    assert stream.completed
    assert fake.requests[0].path == "/v1/chat/completions"
    assert fake.requests[0].body == {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    await fake.wait_disconnected()


async def test_openai_completion_stream(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([sse({"choices": [{"text": "a"}]}), DONE])
    events = [e async for e in client.stream_openai_completion({"prompt": "x", "stream": False})]
    assert events == [{"choices": [{"text": "a"}]}]
    assert fake.requests[0].path == "/v1/completions"
    assert fake.requests[0].body == {"prompt": "x", "stream": True}


async def test_stream_does_not_mutate_the_callers_body(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([STOP])
    body = {"prompt": "x"}
    async with client.stream_completion(body) as stream:
        await stream.read_batch()
    assert body == {"prompt": "x"}


async def test_read_batch_takes_every_decoded_event(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([token(0) + token(1) + token(2), STOP], delay=0.05)
    async with client.stream_completion({}) as stream:
        first = await stream.read_batch()
        assert [e["content"] for e in first] == ["t0", "t1", "t2"]
        assert [e["stop"] for e in await stream.read_batch()] == [True]
        assert await stream.read_batch() == []
    assert stream.completed


async def test_comment_pings_between_events_are_ignored(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([b": ping\n\n", chat_chunk("a"), b":\n\n: ping\n\n", chat_chunk("b"), b": ping\n\n", DONE])
    events = [e async for e in client.stream_chat_completion({})]
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["a", "b"]


async def test_events_split_across_writes(fake: FakeServer, client: LlamaServerClient) -> None:
    body = (
        sse({"content": "héllo 世界 🎉", "stop": False}).replace(b"\n", b"\r\n")
        + b": ping\r\n\r\n"
        + sse({"content": "x", "stop": False})
        + STOP
    )
    fake.reply_stream([body[i : i + 1] for i in range(len(body))], delay=0.001)
    events = [e async for e in client.stream_completion({})]
    assert [e["content"] for e in events] == ["héllo 世界 🎉", "x", ""]
    assert events[-1]["stop"] is True


def test_a_chunked_response_parses_alike_however_the_reads_cut_it() -> None:
    # Whole chunks are framed by a fast path (many per read when the reader is behind); a chunk
    # cut by a read, a size line with an extension or in upper case, and the last chunk and
    # trailer go through the general parser. Every cut must give the same events.
    events = [token(i) for i in range(4)] + [STOP]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events[:2])
    body += b"%X;ext=1\r\n%s\r\n" % (len(events[2]), events[2])
    body += b"".join(b"%X\r\n%s\r\n" % (len(e), e) for e in events[3:]) + b"0\r\nX-Trailer: 1\r\n\r\n"
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    want = [e[6:-2].decode() for e in events]
    loop = asyncio.new_event_loop()
    try:
        cuts = [(i,) for i in range(len(raw) + 1)] + [(i, j) for i in range(0, len(raw), 7) for j in range(i, len(raw))]
        for cut in cuts:
            decoded = client_module._Events("http://127.0.0.1:1/completion", "/completion", "stop")
            response = client_module._Response(decoded, "http://127.0.0.1:1", set(), loop)
            bounds = [0, *cut, len(raw)]
            for a, b in zip(bounds, bounds[1:], strict=False):
                if b > a and not response.closed:
                    response.data_received(raw[a:b])
            assert response.status == 200
            assert decoded.pending == want, f"cut at {cut}"
            assert decoded.error is None
    finally:
        loop.close()


async def test_plain_async_for_then_drop(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([token(0), STOP])
    got: list[dict[str, Any]] = []
    await collect(client.stream_completion({}), got)
    assert len(got) == 2


# -- streams: failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["completion", "chat"])
async def test_stream_ending_before_terminator(fake: FakeServer, client: LlamaServerClient, kind: str) -> None:
    if kind == "completion":
        fake.reply_stream([token(0), token(1)])
        stream = client.stream_completion({})
    else:
        fake.reply_stream([chat_chunk("a"), chat_chunk("b")])
        stream = client.stream_chat_completion({})
    got: list[dict[str, Any]] = []
    with pytest.raises(ProtocolError) as info:
        await collect(stream, got)
    assert len(got) == 2  # the events before the break still came out
    assert not stream.completed
    assert "[DONE]" in str(info.value) if kind == "chat" else "stop" in str(info.value)
    assert info.value.url == stream.url
    assert [e async for e in stream] == []


async def test_stream_broken_off_mid_body(raw_server: RawServer) -> None:
    url = await raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(token(0))
        + token(0)
        + b"\r\n"
    )
    async with LlamaServerClient(url) as client:
        stream = client.stream_completion({})
        got: list[dict[str, Any]] = []
        with pytest.raises(ProtocolError):
            await collect(stream, got)
    assert [e["content"] for e in got] == ["t0"]


async def test_in_band_error_event(fake: FakeServer, client: LlamaServerClient) -> None:
    error = {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}}
    fake.reply_stream([token(0), token(1) + sse(error) + token(2)], then="hang")
    stream = client.stream_completion({})
    got: list[dict[str, Any]] = []
    with pytest.raises(APIError) as info:
        await collect(stream, got)
    assert [e["content"] for e in got] == ["t0", "t1"]
    err = info.value
    assert type(err) is APIError
    assert (err.message, err.type, err.status) == ("slot crashed", "server_error", 500)
    assert err.body == error
    assert err.url == fake.url + "/completion"
    assert not stream.completed
    await fake.wait_disconnected()


async def test_in_band_context_error_event(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([sse(CONTEXT_ERROR)], then="hang")
    with pytest.raises(ContextLengthError) as info:
        await client.stream_chat_completion({}).read_batch()
    assert (info.value.prompt_tokens, info.value.context_len) == (9000, 4096)
    await fake.wait_disconnected()


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"hello", b"", b'{"a": 1} x', b'{"a": 1}{"b": 2}', b"  {not json"],
    ids=["broken", "word", "empty", "trailing garbage", "two objects", "padded and broken"],
)
async def test_event_that_is_not_json(fake: FakeServer, client: LlamaServerClient, data: bytes) -> None:
    fake.reply_stream([token(0), b"data: " + data + b"\n\n", STOP], then="hang")
    got: list[dict[str, Any]] = []
    with pytest.raises(ProtocolError) as info:
        await collect(client.stream_completion({}), got)
    assert "not JSON" in str(info.value)
    assert len(got) == 1
    await fake.wait_disconnected()


async def test_json_padded_with_whitespace_is_still_an_event(fake: FakeServer, client: LlamaServerClient) -> None:
    # JSON allows whitespace around a value; the fast parse must fall back, not fail.
    padded = [b'data:  {"content": "a", "tokens": [1], "stop": false}\t \n\n', b'data:\t{"content": "b"}\n\n', STOP]
    got: list[dict[str, Any]] = []
    fake.reply_stream(padded)
    await collect(client.stream_completion({}), got)
    assert [e.get("content") for e in got[:2]] == ["a", "b"]
    assert got[-1]["stop"] is True


async def test_iterating_then_read_batch_loses_no_event(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([token(0) + token(1) + token(2), STOP], delay=0.05)
    async with client.stream_completion({}) as stream:
        assert (await stream.__anext__())["content"] == "t0"
        # The rest of that read comes first, then the next read.
        assert [e["content"] for e in await stream.read_batch()] == ["t1", "t2"]
        assert [e["stop"] for e in await stream.read_batch()] == [True]
        assert await stream.read_batch() == []


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
async def test_event_that_is_not_an_object(fake: FakeServer, client: LlamaServerClient, data: bytes) -> None:
    fake.reply_stream([chat_chunk("a"), b"data: " + data + b"\n\n", DONE], then="hang")
    got: list[dict[str, Any]] = []
    with pytest.raises(ProtocolError) as info:
        await collect(client.stream_chat_completion({}), got)
    assert "not a JSON object" in str(info.value)
    assert len(got) == 1
    await fake.wait_disconnected()


async def test_over_long_line(fake: FakeServer, client: LlamaServerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "SSEDecoder", functools.partial(SSEDecoder, max_line=1024))
    first_read = asyncio.Event()

    def chunks() -> Iterator[bytes]:
        yield token(0)
        yield b"data: " + b"x" * 4096  # no newline, ever

    async def paced(request: web.Request) -> web.StreamResponse:
        # Send the long line only once the client has the first event, so the
        # two never share a network read (the decoder drops complete events
        # that share a chunk with an over-long line; see the report).
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for chunk in chunks():
                await response.write(chunk)
                await first_read.wait()
            await asyncio.Event().wait()
        except (ConnectionResetError, asyncio.CancelledError):
            fake.disconnected.set()
            raise
        return response

    fake.handler = paced
    stream = client.stream_completion({})
    assert (await stream.__anext__())["content"] == "t0"
    first_read.set()
    with pytest.raises(ProtocolError) as info:
        await stream.__anext__()
    assert "over-long" in str(info.value)
    await fake.wait_disconnected()
    assert [e async for e in stream] == []


async def test_over_long_line_at_the_default_limit(fake: FakeServer, client: LlamaServerClient) -> None:
    # 17 MiB without a newline against the real 16 MiB default.
    block = b"x" * (1024 * 1024)
    fake.reply_stream([b"data: "] + [block] * 17, then="hang")
    with pytest.raises(ProtocolError):
        await client.stream_completion({}).read_batch()
    await fake.wait_disconnected()


@pytest.mark.parametrize("status", [400, 500])
async def test_http_error_opening_a_stream(fake: FakeServer, client: LlamaServerClient, status: int) -> None:
    if status == 400:
        fake.reply_json(CONTEXT_ERROR, status=400)
    else:
        fake.reply_text("internal", status=500)
    stream = client.stream_completion({"prompt": "x"})
    with pytest.raises(APIError) as info:
        async with stream:
            raise AssertionError("unreachable")
    assert info.value.status == status
    assert type(info.value) is (ContextLengthError if status == 400 else APIError)
    assert [e async for e in stream] == []


async def test_idle_timeout(fake: FakeServer, make_client: MakeClient) -> None:
    fake.reply_stream([token(0)], then="hang")
    async with make_client(idle_timeout=0.3) as client:
        stream = client.stream_completion({})
        got: list[dict[str, Any]] = []
        with pytest.raises(APITimeoutError) as info:
            await collect(stream, got)
    assert isinstance(info.value, builtins.TimeoutError) and isinstance(info.value, RocmInferError)
    assert info.value.url == fake.url + "/completion"
    assert len(got) == 1
    await fake.wait_disconnected()


async def test_pings_keep_an_idle_stream_alive(fake: FakeServer, make_client: MakeClient) -> None:
    chunks = [token(0)] + [b": ping\n\n"] * 6 + [STOP]
    # 8 gaps of 0.1 s: the whole stream outlasts the idle timeout (the watchdog must re-arm); no gap does.
    fake.reply_stream(chunks, delay=0.1)
    async with make_client(idle_timeout=0.35) as client:
        events = [e async for e in client.stream_completion({})]
    assert len(events) == 2


# -- streams: closing --------------------------------------------------------------------------


def forever() -> Iterator[bytes]:
    i = 0
    while True:
        yield token(i)
        i += 1


async def read_two(stream: EventStream) -> None:
    assert (await stream.__anext__())["content"] == "t0"
    assert (await stream.__anext__())["content"] == "t1"


async def test_aclose_closes_the_connection(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream(forever(), delay=0.02)
    stream = client.stream_completion({})
    await read_two(stream)
    await stream.aclose()
    await fake.wait_disconnected()
    await stream.aclose()  # idempotent
    stream.close()
    assert [e async for e in stream] == []
    assert not stream.completed


async def test_break_inside_async_with_closes_the_connection(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream(forever(), delay=0.02)
    got: list[dict[str, Any]] = []
    async with client.stream_completion({}) as stream:
        async for event in stream:
            got.append(event)
            if len(got) == 2:
                break
    assert [e["content"] for e in got] == ["t0", "t1"]
    await fake.wait_disconnected()


async def test_exception_inside_async_with_closes_the_connection(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream(forever(), delay=0.02)
    with pytest.raises(KeyError):
        async with client.stream_completion({}) as stream:
            await read_two(stream)
            raise KeyError("caller bug")
    await fake.wait_disconnected()


async def test_cancelling_the_reader_closes_the_connection(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream(forever(), delay=0.02)
    # No async with: the stream itself must close its response on cancellation.
    stream = client.stream_completion({})
    got: list[dict[str, Any]] = []
    two = asyncio.Event()

    async def reader() -> None:
        async for event in stream:
            got.append(event)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(two.wait(), DISCONNECT_WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_disconnected()
    assert [e async for e in stream] == []


async def test_cancelling_while_connecting(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.hang()  # the response headers never come
    stream = client.stream_completion({})
    task = asyncio.create_task(stream.read_batch())
    for _ in range(500):
        if fake.requests:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_disconnected()
    assert await stream.read_batch() == []


async def test_dropping_an_unfinished_stream_closes_it(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream(forever(), delay=0.02)
    stream = client.stream_completion({})
    await read_two(stream)
    del stream
    gc.collect()
    await fake.wait_disconnected()


async def test_a_watched_stream_dropped_unfinished_is_collected(fake: FakeServer, make_client: MakeClient) -> None:
    # The idle watchdog looks at the stream several times while it is open; it must hold it
    # only weakly even while it sleeps, or the dropped stream would live (and generate) on.
    fake.reply_stream(forever(), delay=0.02)
    async with make_client(idle_timeout=0.2) as client:
        stream = client.stream_completion({})
        await read_two(stream)
        await asyncio.sleep(0.2)  # about four looks of the watchdog's
        ref = weakref.ref(stream)
        del stream
        gc.collect()
        assert ref() is None, "something still holds the dropped stream"
        await fake.wait_disconnected()


async def test_stream_never_opened_sends_nothing(fake: FakeServer, client: LlamaServerClient) -> None:
    stream = client.stream_completion({})
    await stream.aclose()
    assert await stream.read_batch() == []
    del stream
    gc.collect()
    assert fake.requests == []


# -- client lifetime -----------------------------------------------------------------------------


async def test_client_aclose_is_idempotent_and_closed_client_refuses(fake: FakeServer) -> None:
    fake.reply_json({"status": "ok"})
    client = LlamaServerClient(fake.url)
    assert not client.closed
    await client.health()
    await client.aclose()
    await client.aclose()
    assert client.closed
    with pytest.raises(ModelClosedError):
        await client.health()
    with pytest.raises(ModelClosedError):
        await client.stream_completion({}).read_batch()
    stream = client.stream_chat_completion({})
    with pytest.raises(ModelClosedError):
        async with stream:
            raise AssertionError("unreachable")
    assert len(fake.requests) == 1


async def test_client_closed_before_first_use(fake: FakeServer) -> None:
    async with LlamaServerClient(fake.url) as client:
        pass
    assert client.closed
    with pytest.raises(ModelClosedError):
        await client.props()


async def test_external_session_is_not_closed(fake: FakeServer) -> None:
    fake.reply_json({"status": "ok"})
    async with aiohttp.ClientSession() as session:
        async with LlamaServerClient(fake.url, session=session) as client:
            assert await client.health() == {"status": "ok"}
        assert client.closed
        assert not session.closed
        with pytest.raises(ModelClosedError):
            await client.health()
        async with session.get(fake.url + "/health") as response:
            assert await response.json() == {"status": "ok"}
    assert session.closed


# -- 503 while loading: retried before the first byte only -------------------------------------

LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def unavailable_then(fake: FakeServer, times: int, then: Handler) -> None:
    """Answer 503 (loading) ``times`` times, then hand requests to ``then``."""
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count <= times:
            return web.json_response(LOADING, status=503)
        return await then(request)

    fake.handler = handler


async def test_stream_answered_503_is_retried_until_the_model_is_loaded(
    fake: FakeServer, client: LlamaServerClient
) -> None:
    fake.reply_stream([token(0), token(1), STOP])
    unavailable_then(fake, 3, fake.handler)
    got: list[dict[str, Any]] = []
    await collect(client.stream_completion({"prompt": "x"}), got)
    assert [e["content"] for e in got] == ["t0", "t1", ""]
    assert len(fake.requests) == 4
    assert all(r.body == {"prompt": "x", "stream": True} for r in fake.requests)


async def test_request_answered_503_is_retried(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"tokens": [1, 2]})
    unavailable_then(fake, 2, fake.handler)
    assert await client.tokenize("a b") == [1, 2]
    assert len(fake.requests) == 3


async def test_503_that_never_ends_gives_up_with_the_api_error(fake: FakeServer) -> None:
    fake.reply_json(LOADING, status=503)
    async with LlamaServerClient(fake.url, unavailable_timeout=0.3) as client:
        with pytest.raises(APIError) as info:
            await client.stream_completion({}).read_batch()
    assert info.value.status == 503
    assert "Loading model" in str(info.value)
    # Backoff 0.05, 0.1, 0.2 fits in 0.3 s: a few tries, not a busy loop and not one.
    assert 2 <= len(fake.requests) <= 5


async def test_503_is_not_retried_when_disabled(fake: FakeServer) -> None:
    fake.reply_json(LOADING, status=503)
    async with LlamaServerClient(fake.url, unavailable_timeout=0) as client:
        with pytest.raises(APIError):
            await client.props()
    assert len(fake.requests) == 1


async def test_other_errors_are_not_retried(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_json({"error": {"code": 500, "message": "boom"}}, status=500)
    with pytest.raises(APIError):
        await client.stream_completion({}).read_batch()
    assert len(fake.requests) == 1


async def test_a_stream_that_breaks_after_events_is_never_retried(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([token(0), token(1)])  # ends without the terminator
    got: list[dict[str, Any]] = []
    with pytest.raises(ProtocolError):
        await collect(client.stream_completion({}), got)
    assert len(got) == 2
    assert len(fake.requests) == 1


# -- malformed SSE: what the spec allows is handled, the rest is an error, never a hang ---------


async def test_invalid_utf8_inside_a_string_becomes_replacement_characters(
    fake: FakeServer, client: LlamaServerClient
) -> None:
    # The SSE spec decodes streams as UTF-8 with replacement: the event stays valid JSON.
    fake.reply_stream([b'data: {"content": "a\xff\xfeb", "tokens": [7], "stop": false}\n\n', STOP])
    got: list[dict[str, Any]] = []
    await collect(client.stream_completion({}), got)
    assert got[0]["content"] == "a\ufffd\ufffdb"
    assert got[-1]["stop"] is True


async def test_invalid_utf8_outside_a_string_is_a_protocol_error(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([token(0), b'data: {"content": "x", \xff: 1}\n\n', STOP], then="hang")
    got: list[dict[str, Any]] = []
    with pytest.raises(ProtocolError, match="not JSON"):
        await collect(client.stream_completion({}), got)
    assert len(got) == 1
    await fake.wait_disconnected()


async def test_truncated_json_event_is_a_protocol_error(fake: FakeServer, client: LlamaServerClient) -> None:
    fake.reply_stream([token(0), b'data: {"content": "ab", "tok\n\n', STOP], then="hang")
    with pytest.raises(ProtocolError, match="not JSON"):
        await collect(client.stream_completion({}), [])
    await fake.wait_disconnected()


async def test_events_without_data_are_not_dispatched(fake: FakeServer, client: LlamaServerClient) -> None:
    # Spec: an event whose data buffer is empty (no data field at all) is discarded.
    fake.reply_stream([token(0), b"event: ping\n\n", b"id: 5\n\n", b"retry: 100\n\n", token(1), STOP])
    got: list[dict[str, Any]] = []
    await collect(client.stream_completion({}), got)
    assert [e["content"] for e in got] == ["t0", "t1", ""]
