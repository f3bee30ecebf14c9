"""HTTP and SSE client for one llama-server, on aiohttp.

This layer knows llama-server's HTTP API and nothing of models, configs or
tokens: requests take plain ``dict`` bodies and return decoded JSON values.
Every aiohttp and socket error is translated here, once, into the SDK's own
exceptions (``raise ... from exc``); aiohttp types never reach a caller.

Streams are objects that own their HTTP response. Closing one (``aclose()``,
leaving ``async with``, breaking out of ``async for`` and dropping it, or
cancelling the task that reads it) closes the TCP connection at once, which
is how llama-server learns to stop generating and free the slot.

llama-server closes the connection after every streamed response even though
it advertises keep-alive, so a pooled connection can be dead when reused. The
client therefore never reuses connections (``force_close``): on loopback a new
connection costs tens of microseconds, far less than a retry.

A stream to a server at an IP address over plain HTTP (every server the SDK
starts: ``http://127.0.0.1:PORT``), from a client that made its own session,
does not go through aiohttp: it has a connection of its own, whose protocol
(:class:`_Response`) parses the HTTP/1.1 response as it arrives and decodes
SSE and JSON in the same callback, so one network read costs one wake-up of
the reader and no more. aiohttp's request path and per-read path cost more
CPU than everything else a token does (measured in docs/benchmarks.md, row
10). Any other stream (a shared ``session``, HTTPS, a host name) uses
aiohttp, with the same events, errors and closing guarantees.
"""

from __future__ import annotations

import asyncio
import builtins
import ipaddress
import json
import logging
import os
import re
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from time import monotonic
from types import TracebackType
from typing import Any, Literal, cast

import aiohttp

from . import defaults
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ContextLengthError,
    ModelClosedError,
    ProtocolError,
    RocmInferError,
)
from .sse import SSEDecoder, SSELineTooLongError

__all__ = ["EventStream", "LlamaServerClient"]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
# A reader's decoder for the one event shape that carries nearly every token: the event with the
# fields the reader reads, or None (decoded as JSON). See EventAdapter.shortcut.
Shortcut = Callable[[str], JSON | None]

# How a streamed response says it is complete: OpenAI-style streams send a
# final "data: [DONE]"; llama-server's native /completion sends an event with
# "stop": true and nothing after it.
Terminator = Literal["done", "stop"]

_MAX_ERROR_BODY = 64 * 1024
# Backoff between retries of a request answered 503 (llama-server loading or waking up).
_UNAVAILABLE_FIRST_DELAY = 0.05
_UNAVAILABLE_MAX_DELAY = 1.0


_json_decoder = json.JSONDecoder()
# The decoder's C scanner: one call per event, without raw_decode's Python frame around it.
_scan: Callable[[str, int], tuple[Any, int]] = _json_decoder.scan_once  # type: ignore[attr-defined]
# Request bodies: compact, as nobody reads them but llama-server.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _loads(data: str) -> Any:
    """``json.loads(data)``, minus its two whitespace scans when there is no padding
    (llama-server sends none): on the per-event path they cost a third of the parse."""
    try:
        value, end = _scan(data, 0)
    except StopIteration:
        return json.loads(data)  # leading whitespace or no value at all: json.loads says which
    if end != len(data):
        return json.loads(data)  # trailing whitespace, or extra data: likewise
    return value


# llama-server's words for an input past its physical batch, and for generation on an embedding server.
_TOO_LARGE = re.compile(r"input \((\d+) tokens\) is too large to process.*current batch size: (\d+)")
_NO_LOGITS = "does not support logits computation"


def _error_from_payload(payload: object, *, status: int | None, url: str) -> APIError:
    """Build the APIError (or ContextLengthError) for a llama-server error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "llama-server returned an error")
        kind = error.get("type")
        code = error.get("code")
        if status is None and isinstance(code, int):
            status = code
        if kind == "exceed_context_size_error":
            prompt_tokens = error.get("n_prompt_tokens")
            context_len = error.get("n_ctx")
            return ContextLengthError(
                message,
                prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
                context_len=context_len if isinstance(context_len, int) else None,
                status=status,
                type=kind,
                url=url,
                body=payload,
            )
        too_large = _TOO_LARGE.search(message)
        if too_large is not None:
            # An input longer than the server's physical batch: a context limit too, if a 500.
            return ContextLengthError(
                message,
                prompt_tokens=int(too_large.group(1)),
                context_len=int(too_large.group(2)),
                status=status,
                type=str(kind) if kind else None,
                url=url,
                body=payload,
            )
        if _NO_LOGITS in message:
            message = (
                "this llama-server serves embeddings or reranking (it was started with --embeddings or "
                f"--rerank): it cannot generate text. llama-server said: {message}"
            )
        return APIError(message, status=status, type=str(kind) if kind else None, url=url, body=payload)
    if isinstance(error, str):
        return APIError(error, status=status, url=url, body=payload)
    text = payload if isinstance(payload, str) else json.dumps(payload)[:500]
    return APIError(text or "llama-server returned an error", status=status, url=url, body=payload)


# What aiohttp, the socket layer and asyncio raise for a failed request; _Translated maps them.
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, builtins.TimeoutError)


def _translate(exc: BaseException, url: str) -> Exception:
    """Map an aiohttp/OS/asyncio exception to the SDK's exception."""
    if isinstance(exc, aiohttp.ServerTimeoutError | builtins.TimeoutError):
        return APITimeoutError(f"timed out talking to llama-server at {url}", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProtocolError(f"llama-server response body broke off ({url}): {exc}", url=url)
    if isinstance(exc, aiohttp.ClientResponseError):
        # The client never calls raise_for_status, so aiohttp raises this only
        # for a response it could not parse (its status is aiohttp's, not the
        # server's) or for redirects: the protocol broke, the API did not answer.
        return ProtocolError(f"llama-server sent a malformed HTTP response ({url}): {exc.message}", url=url)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return APIConnectionError(f"connection to llama-server failed ({url}): {exc}", url=url)
    return ProtocolError(f"unexpected error talking to llama-server ({url}): {exc!r}", url=url)


class _Translated:
    """``with _Translated(url):`` — the one place transport errors become the SDK's own.

    aiohttp, OS and timeout errors raised inside are re-raised as
    APIConnectionError, APITimeoutError or ProtocolError (``from`` the
    original); everything else, cancellation included, passes through. A
    class rather than a generator-based context manager: a stream enters it
    on every network read, so it must cost no more than a method call.
    """

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, _TRANSPORT_ERRORS):
            raise _translate(exc, self.url) from exc


async def _raise_for_status(response: aiohttp.ClientResponse, url: str) -> None:
    if response.status < 400:
        return
    raw = b""
    try:
        # read(n) returns what has arrived so far: loop until EOF or the cap.
        while len(raw) < _MAX_ERROR_BODY:
            block = await response.content.read(_MAX_ERROR_BODY - len(raw))
            if not block:
                break
            raw += block
    except _TRANSPORT_ERRORS:  # what arrived of the error body is enough to report it
        raw = b""
    finally:
        response.close()
    try:
        payload: object = json.loads(raw)
    except ValueError:
        payload = raw.decode("utf-8", "replace").strip() or response.reason or ""
    raise _error_from_payload(payload, status=response.status, url=url)


class LlamaServerClient:
    """Talks to one llama-server over HTTP.

    ``api_key`` is sent as a bearer token and never appears in reprs, logs or
    errors. ``session`` lets a caller share an ``aiohttp.ClientSession``; the
    client closes only a session it created itself. ``timeout`` bounds each
    non-streaming request; ``connect_timeout`` each connect (but that of a
    stream to a loopback address, which the kernel completes or refuses at
    once); ``idle_timeout`` bounds the silence between two
    reads of a stream (``None``: wait forever). They raise
    :class:`~rocm_infer.errors.APITimeoutError`. A request answered 503 (the
    model is still loading) is sent again, with backoff, for up to
    ``unavailable_timeout`` seconds before its APIError is raised; a 503
    comes before any byte of a response, so nothing is ever retried after a
    stream has produced events. Streams to an IP address over plain HTTP,
    without a ``session`` of the caller's, do not go through aiohttp (see
    the module docs); every other request does.

    Use it as an async context manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = defaults.REQUEST_TIMEOUT,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        idle_timeout: float | None = defaults.IDLE_TIMEOUT,
        unavailable_timeout: float = defaults.UNAVAILABLE_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._request_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        # No sock_read here: aiohttp would re-arm a timer on every read. EventStream
        # enforces idle_timeout with one lazily re-armed timer instead.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.unavailable_timeout = unavailable_timeout
        self._direct = _Direct.of(self.base_url, api_key) if session is None else None
        # The streams' own connections (not aiohttp's) that are open, so that aclose() closes them too.
        self._connections: set[_Response] = set()

    def __repr__(self) -> str:
        return f"LlamaServerClient({self.base_url!r}{', closed' if self._closed else ''})"

    @property
    def closed(self) -> bool:
        return self._closed

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ModelClosedError("the llama-server client is closed")
        if self._session is None:
            # Created on first use, inside the running loop: nothing at import or construction.
            connector = aiohttp.TCPConnector(force_close=True, limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        limits: aiohttp.ClientTimeout,
        *,
        retry_unavailable: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response once its status is known good."""
        url = self.base_url + path
        session = self._get_session()
        delay = _UNAVAILABLE_FIRST_DELAY
        give_up_at: float | None = None
        translated = _Translated(url)
        while True:
            with translated:
                response = await session.request(method, url, json=body, headers=self._headers, timeout=limits)
            if response.status == 503 and retry_unavailable:
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + self.unavailable_timeout
                if now + delay <= give_up_at:
                    response.close()
                    logger.debug("%s %s answered 503; retrying in %.2fs", method, path, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _UNAVAILABLE_MAX_DELAY)
                    continue
            await _raise_for_status(response, url)
            return response

    async def request_json(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Send a non-streaming request and return its decoded JSON body."""
        response = await self._send(method, path, body, self._request_timeout)
        return await self._read_json(response, self.base_url + path)

    @staticmethod
    async def _read_json(response: aiohttp.ClientResponse, url: str) -> Any:
        try:
            with _Translated(url):
                raw = await response.read()
        finally:
            response.close()
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(f"llama-server sent invalid JSON from {url}: {raw[:200]!r}", url=url) from exc
        if isinstance(payload, dict) and "error" in payload:
            raise _error_from_payload(payload, status=None, url=url)
        return payload

    # -- endpoints -------------------------------------------------------------------------------

    async def health(self) -> JSON:
        """GET /health. Returns ``{"status": "ok"}``; raises APIError with
        ``status == 503`` while the model is still loading (never retried)."""
        url = self.base_url + "/health"
        response = await self._send("GET", "/health", None, self._request_timeout, retry_unavailable=False)
        result: JSON = await self._read_json(response, url)
        return result

    async def props(self) -> JSON:
        """GET /props: server settings, model path, chat template, slot count."""
        result: JSON = await self.request_json("GET", "/props")
        return result

    async def models(self) -> JSON:
        """GET /v1/models."""
        result: JSON = await self.request_json("GET", "/v1/models")
        return result

    async def slots(self) -> list[JSON]:
        """GET /slots: the state of every slot."""
        result: list[JSON] = await self.request_json("GET", "/slots")
        return result

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """POST /tokenize. Returns the token ids of ``text``."""
        result = await self.request_json("POST", "/tokenize", {"content": text, "add_special": add_special})
        tokens: list[int] = result["tokens"]
        return tokens

    async def detokenize(self, tokens: list[int]) -> str:
        """POST /detokenize. Returns the text of ``tokens``."""
        result = await self.request_json("POST", "/detokenize", {"tokens": tokens})
        content: str = result["content"]
        return content

    async def completion(self, body: Mapping[str, Any]) -> JSON:
        """POST /completion without streaming; returns the final result."""
        result: JSON = await self.request_json("POST", "/completion", {**body, "stream": False})
        return result

    async def embeddings(self, body: Mapping[str, Any]) -> JSON:
        """POST /v1/embeddings (the server must run with ``--embeddings``)."""
        result: JSON = await self.request_json("POST", "/v1/embeddings", body)
        return result

    async def rerank(self, body: Mapping[str, Any]) -> JSON:
        """POST /v1/rerank (the server must run with ``--rerank``)."""
        result: JSON = await self.request_json("POST", "/v1/rerank", body)
        return result

    def stream_completion(self, body: Mapping[str, Any]) -> EventStream:
        """POST /completion (llama-server's native API) streamed. Each event
        carries ``content`` and ``tokens`` (the token ids); the last has
        ``"stop": true`` with ``timings``."""
        return EventStream(self, "/completion", {**body, "stream": True}, terminator="stop")

    def stream_infill(self, body: Mapping[str, Any]) -> EventStream:
        """POST /infill (fill-in-the-middle) streamed; events as /completion's."""
        return EventStream(self, "/infill", {**body, "stream": True}, terminator="stop")

    def stream_openai_completion(self, body: Mapping[str, Any]) -> EventStream:
        """POST /v1/completions streamed (OpenAI format, ends with ``[DONE]``)."""
        return EventStream(self, "/v1/completions", {**body, "stream": True}, terminator="done")

    def stream_chat_completion(self, body: Mapping[str, Any]) -> EventStream:
        """POST /v1/chat/completions streamed (OpenAI format, ends with ``[DONE]``)."""
        return EventStream(self, "/v1/chat/completions", {**body, "stream": True}, terminator="done")

    async def _open_stream(self, path: str, body: Mapping[str, Any], events: _Events) -> _Response:
        """Connect, send the request and return the response once its status is known good.

        The connection of its own that :class:`EventStream` uses where the client may skip
        aiohttp (``self._direct``); the same 503 retries and errors as :meth:`_send`.
        """
        if self._closed:
            raise ModelClosedError("the llama-server client is closed")
        direct = self._direct
        assert direct is not None
        url = self.base_url + path
        request = direct.request(path, _encode(body).encode())
        loop = asyncio.get_running_loop()
        translated = _Translated(url)
        delay = _UNAVAILABLE_FIRST_DELAY
        give_up_at: float | None = None
        while True:
            response = _Response(events, url, self._connections, loop)
            try:
                with translated:
                    if direct.loopback:
                        # The kernel completes or refuses a loopback connect at once: a timer would only
                        # cost (a pending timer makes every turn of the loop dearer) and never fire.
                        transport, _ = await loop.create_connection(response.itself, direct.host, direct.port)
                    else:
                        async with asyncio.timeout(self._connect_timeout):
                            transport, _ = await loop.create_connection(response.itself, direct.host, direct.port)
                # uvloop may return before it calls connection_made: the transport is the one returned.
                response.attach(transport)
                response.send(request)
                await response.head()
            except BaseException:
                response.close()
                raise
            status = response.status
            if status == 503:
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + self.unavailable_timeout
                if now + delay <= give_up_at:
                    response.close()
                    logger.debug("POST %s answered 503; retrying in %.2fs", path, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _UNAVAILABLE_MAX_DELAY)
                    continue
            if status >= 400:
                try:
                    raw = await response.read_error_body()
                finally:
                    response.close()
                try:
                    payload: object = json.loads(raw)
                except ValueError:
                    payload = raw.decode("utf-8", "replace").strip() or response.reason
                raise _error_from_payload(payload, status=status, url=url)
            return response

    # -- lifetime --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP session if this client created it, and every stream's connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for connection in list(self._connections):
            connection.abort(ModelClosedError("the llama-server client was closed while this stream was open"))
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def __aenter__(self) -> LlamaServerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class EventStream:
    """The decoded JSON events of one streamed response.

    The request is sent on the first read (or on ``async with``). Iterate with
    ``async for``, or call :meth:`read_batch` to take every event that one
    network read produced. Raises :class:`~rocm_infer.errors.APIError` for an
    HTTP error or an in-band ``{"error": ...}`` event (after the events before
    it), :class:`~rocm_infer.errors.ProtocolError` for malformed data or a body
    that ends before the stream's terminator, and the SDK's APIConnectionError or
    APITimeoutError for transport failures. In every one of those cases, and on
    :meth:`aclose` or cancellation, the response is closed.
    """

    __slots__ = (
        "_client",
        "_path",
        "_body",
        "_terminator",
        "_response",
        "_protocol",
        "_events",
        "_ahead",
        "_closed",
        "_last_read",
        "_watched",
        "_idle",
        "_translated",
        "__weakref__",
    )

    def __init__(
        self, client: LlamaServerClient, path: str, body: Mapping[str, Any], *, terminator: Terminator
    ) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._terminator = terminator
        self._response: aiohttp.ClientResponse | None = None  # through aiohttp
        self._protocol: _Response | None = None  # on a connection of its own
        self._events = _Events(client.base_url + path, path, terminator)
        self._ahead: deque[JSON] = deque()  # returned by read_batch for __anext__, not yet iterated
        self._closed = False
        self._last_read = 0.0  # when the response last brought bytes (monotonic clock), for the watchdog
        self._watched = False  # the idle watchdog looks at this stream
        self._idle = False  # closed by the watchdog: the server went silent
        self._translated = _Translated(client.base_url + path)

    @property
    def url(self) -> str:
        return self._client.base_url + self._path

    @property
    def completed(self) -> bool:
        """True once the stream's terminator was received."""
        return self._events.done

    async def open(self) -> None:
        """Send the request now (reads do it on demand)."""
        if self._response is None and self._protocol is None and not self._closed:
            client = self._client
            try:
                if client._direct is not None:
                    self._protocol = await client._open_stream(self._path, self._body, self._events)
                else:
                    self._response = await client._send("POST", self._path, self._body, client._stream_timeout)
            except BaseException:
                self._closed = True
                raise
            timeout = client.idle_timeout
            if timeout is not None and not self._closed:
                self._last_read = monotonic()
                self._watched = True
                _WATCHDOG.watch(self, asyncio.get_running_loop(), timeout)

    def decode_with(self, shortcut: Shortcut) -> None:
        """Decode events with ``shortcut`` first: it returns an event of the one shape it knows (with
        the fields its reader reads) or None, and the JSON decoder takes the rest. What it accepts
        must be neither an error nor the terminator; the events then hold only those fields."""
        self._events.shortcut = shortcut

    def _last_activity(self) -> float:
        """When the server last sent something (monotonic clock); now, while reading is paused
        because the reader is behind (that is no silence of the server's). Read by the watchdog's thread."""
        protocol = self._protocol
        if protocol is None:
            return self._last_read
        if protocol.paused:
            return monotonic()
        return max(self._last_read, protocol.last_read)

    def _check_idle(self, timeout: float) -> None:
        """The watchdog saw no read for ``timeout``: close the response (the reader raises the
        APITimeoutError), unless something came meanwhile; then it watches again."""
        if self._closed:
            return
        if monotonic() - self._last_activity() < timeout:
            _WATCHDOG.watch(self, asyncio.get_running_loop(), timeout)
            return
        self._idle = True
        self.close()  # wakes the reader, which raises the APITimeoutError

    async def read_batch(self) -> list[JSON]:
        """Return the next events: at least one, all that are already decoded.

        Returns an empty list when the stream is complete.
        """
        if self._ahead:  # events __anext__ took but has not handed out yet come first
            ahead = list(self._ahead)
            self._ahead.clear()
            return ahead
        batch = self.take()
        while batch is None:
            try:
                await self.more()
            except BaseException:
                self.close()  # whatever stopped the wait (cancellation too) ends the response
                raise
            batch = self.take()
        return batch

    def take(self) -> list[JSON] | None:
        """Every event decoded so far, without waiting; ``[]`` once the stream is complete;
        None when there is none yet (await :meth:`more`, then take again).

        Raises what :meth:`read_batch` raises, when it comes (closing the response).
        The two halves of :meth:`read_batch`, for a reader that takes one wake-up per
        network read and no coroutine of this class's in between.
        """
        events = self._events
        if events.pending:
            batch = events.take()
            if events.done or events.error is not None:
                self.close()  # nothing after the terminator (or an error) is wanted: free the connection now
            if batch:
                protocol = self._protocol
                if protocol is not None and protocol.paused:
                    protocol.resume()
                return batch
        if self._idle:
            self._idle = False
            raise self._idle_error()
        error = events.error
        if error is not None:
            events.error = None
            self.close()
            raise error
        if events.ended and not events.done:  # the body ended after the last event taken, without the terminator
            events.take()
            error, events.error = events.error, None
            self.close()
            if error is not None:
                raise error
        if events.done or self._closed:
            self.close()  # the end: the watchdog stops too
            return []
        protocol = self._protocol
        if protocol is not None and protocol.closed:
            self.close()
            raise APIConnectionError(f"the connection to llama-server was closed ({self.url})", url=self.url)
        return None

    def more(self) -> Awaitable[None]:
        """What to await after :meth:`take` returned None: the next network read (or the
        request, first). Cancelling it is the caller's to handle (close the stream)."""
        protocol = self._protocol
        if protocol is not None:
            return protocol.waiter()
        if self._response is not None:
            return self._read_more(self._response)
        return self.open()

    async def _read_more(self, response: aiohttp.ClientResponse) -> None:
        """One read through aiohttp (a client with a session of the caller's, HTTPS, a host name)."""
        try:
            with self._translated:
                chunk = await response.content.readany()
        except BaseException as exc:
            self.close()  # whatever stopped the read (cancellation too) ends the response
            if self._idle:
                self._idle = False
                raise self._idle_error() from exc
            raise
        if self._idle:
            return  # take() raises it
        if self._watched:
            self._last_read = monotonic()
        events = self._events
        events.feed(chunk)
        if events.done or events.error is not None or not chunk:
            # Nothing after the terminator (or an error, or the end) that we want: free the connection now.
            self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> JSON:
        if not self._ahead:
            batch = await self.read_batch()
            if not batch:
                raise StopAsyncIteration
            self._ahead.extend(batch)
        return self._ahead.popleft()

    def _idle_error(self) -> APITimeoutError:
        return APITimeoutError(
            f"llama-server sent nothing for {self._client.idle_timeout:g}s on {self._path}; the response was closed",
            url=self.url,
        )

    def close(self) -> None:
        """Close the response now, without waiting. Idempotent."""
        if self._watched:
            self._watched = False
            _WATCHDOG.unwatch(self)
        if self._closed:
            return
        self._closed = True
        # close() (not release()) drops the connection: llama-server sees the
        # client go away and stops generating for this request.
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
        response, self._response = self._response, None
        if response is not None:
            response.close()

    async def aclose(self) -> None:
        """Close the response. Idempotent."""
        self.close()

    async def __aenter__(self) -> EventStream:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped unfinished must not keep llama-server generating.
        if not self._closed:
            try:
                if self._protocol is not None:
                    self._protocol.close()
                if self._response is not None:
                    self._response.close()
            except RuntimeError:  # its event loop is closed: so is the connection
                pass


def _check_idle(ref: weakref.ref[EventStream], timeout: float) -> None:
    # The watchdog holds only a weak reference, so a dropped stream is still collected (and closed).
    stream = ref()
    if stream is not None:
        stream._check_idle(timeout)


class _Watchdog:
    """Closes the streams that went silent for their ``idle_timeout``, from one thread for the process.

    A timer in the event loop would do it too, but while any timer is pending
    every turn of the loop costs more, and a stream turns the loop at every
    read (measured: a pending timer added about 7% to a token's client CPU, 6%
    to a short request's). This thread wakes a few times per timeout, reads
    each watched stream's time of its last read, and has an idle one checked
    and closed in its own loop (``call_soon_threadsafe``). It exits once no
    stream was watched for a while.
    """

    _LINGER = 10.0  # seconds without a stream before the thread exits

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # id(stream) -> (the stream, weakly; its loop; its timeout)
        self._streams: dict[int, tuple[weakref.ref[EventStream], asyncio.AbstractEventLoop, float]] = {}
        self._interval = self._LINGER  # how long the thread waits between two looks
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forked)

    def watch(self, stream: EventStream, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        with self._lock:
            self._streams[id(stream)] = (weakref.ref(stream), loop, timeout)
            if timeout / 4 < self._interval:
                self._changed.notify()  # it waits longer than this stream allows
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rocm_infer idle watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, stream: EventStream) -> None:
        with self._lock:
            self._streams.pop(id(stream), None)

    def _run(self) -> None:
        with self._lock:
            try:
                quiet_since = monotonic()
                while self._streams or monotonic() - quiet_since < self._LINGER:
                    if not self._streams:
                        self._interval = self._LINGER
                        self._changed.wait(self._LINGER)
                        continue
                    # A stream is seen idle at most a quarter of its timeout late.
                    shortest = min(timeout for _, _, timeout in self._streams.values())
                    self._interval = min(max(shortest / 4, 0.005), 1.0)
                    self._changed.wait(self._interval)
                    now = quiet_since = monotonic()
                    for key, (ref, loop, timeout) in list(self._streams.items()):
                        if self._idle_for(ref, now) < timeout:
                            continue
                        del self._streams[key]  # collected, or silent for its timeout
                        try:
                            loop.call_soon_threadsafe(_check_idle, ref, timeout)
                        except RuntimeError:  # its loop is closed, and its connection with it
                            pass
            finally:
                self._thread = None

    @staticmethod
    def _idle_for(ref: weakref.ref[EventStream], now: float) -> float:
        """How long the stream has been silent (infinite once it was collected). The stream is
        dereferenced in this frame only: the thread, which sleeps between looks, must hold no
        strong reference to it, or a stream dropped unfinished would never be collected (and closed)."""
        stream = ref()
        return float("inf") if stream is None else now - stream._last_activity()

    def _forked(self) -> None:
        # The thread does not exist in a child process: start afresh there.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._streams = {}
        self._interval = self._LINGER
        self._thread = None


_WATCHDOG = _Watchdog()


class _Events:
    """The events of one response body: SSE decoded as its bytes arrive, JSON when they are taken.

    :meth:`feed` takes each piece of the body (``b""`` at its end) and keeps
    the data of every event it completes in ``pending``; :meth:`take` decodes
    them. The JSON is decoded by the reader, not in the read that brought it:
    a reader that is behind holds strings, not thousands of JSON objects that
    every garbage collection would walk. ``done`` is set at the stream's
    terminator, ``error`` at the first thing that is not an event (after the
    events before it).
    """

    __slots__ = ("pending", "done", "ended", "error", "shortcut", "_sse", "_stop", "_url", "_path")

    def __init__(self, url: str, path: str, terminator: Terminator) -> None:
        self.pending: list[str] = []  # the data of events not decoded yet
        # The reader's decoder for its common event (EventStream.decode_with), tried before JSON.
        self.shortcut: Shortcut | None = None
        self.done = False
        self.ended = False  # the body ended
        self.error: Exception | None = None
        self._sse = SSEDecoder()
        self._stop = terminator == "stop"
        self._url = url
        self._path = path

    def feed(self, chunk: bytes) -> None:
        """The next piece of the body; ``b""`` says the body ended."""
        if self.done or self.error is not None:
            return
        if not chunk:
            self.ended = True
        sse = self._sse
        try:
            datas = sse.feed_data(chunk) if chunk else sse.end_data()
        except SSELineTooLongError as exc:
            error = ProtocolError(f"llama-server sent an over-long SSE line ({self._url}): {exc}", url=self._url)
            error.__cause__ = exc
            self.error = error
            return
        for data in datas:
            if data == "[DONE]":
                self.done = True
                return
            self.pending.append(data)

    def take(self) -> list[JSON]:
        """The pending events as JSON objects, up to the terminator or the first that is not one
        (``error``, raised after these)."""
        datas = self.pending
        self.pending = []
        events: list[JSON] = []
        shortcut = self.shortcut
        for data in datas:
            if shortcut is not None:
                event = shortcut(data)
                if event is not None:
                    events.append(event)
                    continue
            try:
                try:
                    payload, end = _scan(data, 0)
                except StopIteration:  # leading whitespace (or nothing): json.loads decides
                    payload, end = json.loads(data), len(data)
                if end != len(data):  # trailing whitespace, or more than one value
                    payload = json.loads(data)
            except ValueError:
                self.error = ProtocolError(
                    f"llama-server sent an event that is not JSON: {data[:200]!r}", url=self._url
                )
                break
            if type(payload) is not dict:
                self.error = ProtocolError(
                    f"llama-server sent an event that is not a JSON object: {data[:200]!r}", url=self._url
                )
                break
            if "error" in payload:
                self.error = _error_from_payload(payload, status=None, url=self._url)
                break
            events.append(payload)
            if self._stop and payload.get("stop") is True:
                self.done = True
                self.error = None  # what broke after the terminator does not matter
                break
        if self.ended and not self.done and self.error is None:
            self.ended = False  # said once
            expected = "[DONE]" if not self._stop else 'an event with "stop": true'
            self.error = ProtocolError(
                f"llama-server's stream from {self._path} ended before {expected}: the response is incomplete",
                url=self._url,
            )
        return events


class _Direct:
    """Where a client's streams connect without aiohttp, and the request head they all share."""

    __slots__ = ("host", "port", "loopback", "_prefix", "_headers")

    def __init__(self, host: str, port: int, prefix: str, headers: bytes) -> None:
        self.host = host
        self.port = port
        self.loopback = ipaddress.ip_address(host).is_loopback
        self._prefix = prefix
        self._headers = headers

    @classmethod
    def of(cls, base_url: str, api_key: str | None) -> _Direct | None:
        """The direct route to ``base_url``: plain HTTP to an IP address only, else None (aiohttp)."""
        try:
            url = urllib.parse.urlsplit(base_url)
            host = url.hostname or ""
            ipaddress.ip_address(host)
            port = url.port or 80
        except ValueError:
            return None
        if url.scheme != "http" or url.username or url.password or url.query or url.fragment:
            return None
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"Host: {authority}", "Content-Type: application/json", "Accept: text/event-stream"]
        if api_key:
            lines.append(f"Authorization: Bearer {api_key}")
        lines.append("Connection: close")
        try:
            headers = "".join(line + "\r\n" for line in lines).encode("latin-1")
        except UnicodeEncodeError:  # a key HTTP cannot carry: let aiohttp say so
            return None
        return cls(host, port, url.path.rstrip("/"), headers)

    def request(self, path: str, body: bytes) -> bytes:
        """The whole request for a POST of ``body`` to ``path``."""
        target = (self._prefix + path).encode("latin-1")
        return b"POST %b HTTP/1.1\r\n%bContent-Length: %d\r\n\r\n%b" % (target, self._headers, len(body), body)


# How far _Response has read its response.
_HEAD = 0  # the status line and headers
_SIZE = 1  # a chunk-size line (chunked body)
_DATA = 2  # a chunk's data: _left bytes to go
_CRLF = 3  # the CRLF after a chunk's data
_TRAILER = 4  # the trailer lines after the last chunk
_SIZED = 5  # a body of Content-Length bytes: _left bytes to go
_UNTIL_EOF = 6  # a body that ends when the connection does
_END = 7  # the body is complete

_MAX_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 4 * 1024
# Decoded events held for a reader that is behind, past which the socket is no longer read
# (llama-server then waits to send more, as it would for an aiohttp reader that is behind).
_HIGH_WATER = 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")
# The most one read of a response takes. The socket is read into a buffer of this size that the
# response keeps, not into a new bytes object per read: asyncio's plain transports allocate 256 KiB
# for every recv. Until something in the process raises glibc's mmap threshold, each of those is
# an mmap and a munmap: 17 us a read of a 420-byte event against 2.5 us read into a kept buffer.
_READ_SIZE = 64 * 1024


class _Response(asyncio.BufferedProtocol):
    """One HTTP/1.1 response on a connection of its own, parsed as the bytes arrive.

    Once the head is in, ``status`` says what came. A good response's body
    (chunked, Content-Length or up to EOF) goes to ``events`` piece by piece,
    in the read that brought it, and the reader waiting on :meth:`waiter` is
    woken once per read that completed something; the connection is closed as
    soon as the stream's terminator (or an error) is decoded. An error
    status's body is kept for :meth:`read_error_body` instead.
    """

    __slots__ = (
        "transport",
        "status",
        "reason",
        "events",
        "last_read",
        "paused",
        "_url",
        "_registry",
        "_state",
        "_buffer",
        "_left",
        "_error_body",
        "_failure",
        "_waiter",
        "_closed",
        "_view",
        "_loop",
    )

    def __init__(self, events: _Events, url: str, registry: set[_Response], loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.reason = ""
        self.events = events
        self.last_read = 0.0
        self.paused = False  # reading stopped: the reader is _HIGH_WATER events behind
        self._url = url
        self._registry = registry
        self._state = _HEAD
        self._buffer = b""  # an unfinished head, chunk-size line or CRLF
        self._left = 0
        self._error_body: list[bytes] | None = None  # the body of an error status, kept whole
        self._failure: RocmInferError | None = None  # what went wrong before the head was in
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._view = memoryview(bytearray(_READ_SIZE))  # what the transport reads into
        # The connection's loop, where the reader waits: asyncio.get_running_loop() per wait costs a
        # getpid() system call on Python 3.11.
        self._loop = loop

    # -- for the stream ----------------------------------------------------------------------------

    def itself(self) -> _Response:
        """The protocol factory that ``create_connection`` calls: this response."""
        return self

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def waiter(self) -> asyncio.Future[None]:
        """A future the next read that completes something (or the end) resolves."""
        waiter = self._loop.create_future()
        if self._closed:
            waiter.set_result(None)
        else:
            self._waiter = waiter
        return waiter

    async def head(self) -> None:
        """Wait for the status line and headers; raise what broke the response before them."""
        while self._state == _HEAD:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise APIConnectionError(f"the connection to llama-server was closed ({self._url})", url=self._url)
            await self.waiter()

    async def read_error_body(self) -> bytes:
        """The body of an error status (up to _MAX_ERROR_BODY bytes), or what arrived of it."""
        while self._state != _END and not self._closed:
            await self.waiter()
        return b"".join(self._error_body or ())[:_MAX_ERROR_BODY]

    @property
    def closed(self) -> bool:
        return self._closed

    def abort(self, error: RocmInferError) -> None:
        """Close the connection from outside; the stream (or :meth:`head`) raises ``error``."""
        if not self._closed:
            self._fail(error)

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close the connection now (llama-server sees the client go away). Idempotent."""
        if not self._closed:
            self._closed = True
            if self.transport is not None:
                self.transport.close()
        self._wake()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def attach(self, transport: asyncio.BaseTransport) -> None:
        """The connection's transport (from connection_made, or what create_connection returned)."""
        if self.transport is None:
            # A stream transport (uvloop's is one without deriving from asyncio.Transport).
            self.transport = cast(asyncio.Transport, transport)
            if self._closed:
                transport.close()
            else:
                self._registry.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.attach(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """The bytes of one read (from :meth:`buffer_updated`, or a transport that reads into bytes)."""
        self.last_read = monotonic()
        if self._state == _SIZE and not self._buffer:
            # The common read: whole chunks (one, as llama-server writes an event; more when the
            # reader is behind), without the general parser.
            pos = self._whole_chunks(data, 0)
            if pos == len(data) or self._closed:
                return
            data = data[pos:] if pos else data
        self._parse(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost settles the body

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        if not self._closed:
            self._closed = True
            state = self._state
            if state == _UNTIL_EOF:
                self._end()
            elif state == _HEAD:
                why = f": {exc}" if exc is not None else " before answering"
                self._failure = APIConnectionError(
                    f"llama-server closed the connection{why} ({self._url})", url=self._url
                )
            elif state != _END:
                if exc is not None:
                    self._fail(
                        APIConnectionError(f"connection to llama-server failed ({self._url}): {exc}", url=self._url)
                    )
                else:
                    self._fail(ProtocolError(f"llama-server response body broke off ({self._url})", url=self._url))
        self._wake()

    # -- parsing -------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _body(self, piece: bytes) -> None:
        """A piece of the body: events for the stream, or bytes of an error body."""
        if self._error_body is not None:
            self._error_body.append(piece)
            if sum(map(len, self._error_body)) >= _MAX_ERROR_BODY:
                self._state = _END  # enough to report it
                self._wake()
            return
        events = self.events
        events.feed(piece)
        if events.pending or events.done or events.error is not None:
            if events.done or events.error is not None:
                self.close()  # nothing more is wanted: llama-server stops generating
            elif len(events.pending) >= _HIGH_WATER:
                self._pause()
            self._wake()

    def _pause(self) -> None:
        if not self.paused and not self._closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _end(self) -> None:
        """The body is complete."""
        self._state = _END
        if self._error_body is None:
            self.events.feed(b"")
            self.close()
        self._wake()

    def _fail(self, error: RocmInferError) -> None:
        """The response is broken: before the head, ``head()`` raises ``error``; after it, the stream does."""
        if self._state == _HEAD:
            self._failure = error
        elif self._error_body is not None:
            self._state = _END  # what arrived of an error body is enough to report it
        elif self.events.error is None and not self.events.done:
            self.events.error = error
        self.close()

    def _malformed(self, what: str) -> None:
        self._fail(ProtocolError(f"llama-server sent a malformed HTTP response ({self._url}): {what}", url=self._url))

    def _parse(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        pos = 0
        size = len(data)
        while pos < size and not self._closed:
            state = self._state
            if state == _SIZE:  # after the head or a chunk the read cut
                whole = self._whole_chunks(data, pos)
                if whole > pos:
                    pos = whole
                    continue
            if state == _SIZE or state == _TRAILER:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_CHUNK_LINE:
                        self._malformed("a chunk-size line without an end")
                        return
                    self._buffer = data[pos:]
                    return
                line = data[pos:end]
                pos = end + 2
                if state == _TRAILER:
                    if not line:
                        self._end()
                    continue
                digits = line.split(b";", 1)[0].strip()
                if not digits or not _HEX.issuperset(digits):
                    self._malformed(f"bad chunk size {line[:40]!r}")
                    return
                length = int(digits, 16)
                if length == 0:
                    self._state = _TRAILER
                else:
                    self._state = _DATA
                    self._left = length
            elif state == _DATA or state == _SIZED:
                take = min(self._left, size - pos)
                self._left -= take
                pos += take
                if self._left == 0:
                    self._state = _CRLF if state == _DATA else _END
                self._body(data[pos - take : pos])
                if self._state == _END and state == _SIZED:
                    self._end()
            elif state == _CRLF:
                if size - pos < 2:
                    self._buffer = data[pos:]
                    return
                if data[pos : pos + 2] != b"\r\n":
                    self._malformed("a chunk's data does not end with CRLF")
                    return
                pos += 2
                self._state = _SIZE
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_HEAD:
                        self._malformed("a head longer than 64 KiB")
                        return
                    self._buffer = data[pos:]
                    return
                head = data[pos:end]
                pos = end + 4
                self._head(head)
            elif state == _UNTIL_EOF:
                self._body(data[pos:])
                return
            else:  # _END: bytes after the body are not ours to read
                return

    def _whole_chunks(self, data: bytes, pos: int) -> int:
        """The whole chunks of ``data`` from ``pos`` on, given to the body as one piece; where they end.

        What is left (a chunk the read cut, the last chunk, a size line with
        extensions or more than 16 digits) is for the general parser.
        """
        pieces: list[bytes] = []
        size = len(data)
        while pos < size:
            line_end = data.find(b"\r\n", pos, pos + 18)
            digits = data[pos:line_end]
            if line_end <= pos or not _HEX.issuperset(digits):
                break
            start = line_end + 2
            end = start + int(digits, 16)
            if end == start or end + 2 > size or data[end : end + 2] != b"\r\n":
                break
            pieces.append(data[start:end])
            pos = end + 2
        if pieces:
            self._body(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return pos

    def _head(self, head: bytes) -> None:
        status_line, _, fields = head.partition(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            self._malformed(f"the status line is {status_line[:100]!r}")
            return
        status = int(parts[1])
        if status < 200:
            return  # an interim response (100 Continue): the real one follows
        self.status = status
        self.reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        headers = b"\r\n" + fields.lower()
        if status >= 400:
            self._error_body = []
        encoding = _header(headers, b"\r\ncontent-encoding:")
        if encoding is not None and encoding != b"identity":
            self._malformed(f"a body in {encoding.decode('latin-1')!r}, which was not asked for")
            return
        transfer = _header(headers, b"\r\ntransfer-encoding:")
        length = _header(headers, b"\r\ncontent-length:")
        if status == 204 or status == 304:
            self._end()
        elif transfer is not None:
            if transfer.rsplit(b",", 1)[-1].strip() != b"chunked":
                self._state = _UNTIL_EOF
            else:
                self._state = _SIZE
        elif length is not None:
            if not length.isdigit():
                self._malformed(f"Content-Length {length[:40]!r}")
                return
            self._left = int(length)
            self._state = _SIZED
            if self._left == 0:
                self._end()
        else:
            self._state = _UNTIL_EOF
        self._wake()


def _header(headers: bytes, field: bytes) -> bytes | None:
    """The value of the header that ``field`` (``b"\\r\\nname:"``, lower case) starts in ``headers``
    (lower-cased, each line after a CRLF), or None."""
    start = headers.find(field)
    if start < 0:
        return None
    start += len(field)
    end = headers.find(b"\r\n", start)
    return headers[start : end if end >= 0 else len(headers)].strip()
