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
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import aiohttp

from . import defaults
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ContextLengthError,
    ModelClosedError,
    ProtocolError,
)
from .sse import SSEDecoder, SSELineTooLongError

__all__ = ["EventStream", "LlamaServerClient"]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

# How a streamed response says it is complete: OpenAI-style streams send a
# final "data: [DONE]"; llama-server's native /completion sends an event with
# "stop": true and nothing after it.
Terminator = Literal["done", "stop"]

_MAX_ERROR_BODY = 64 * 1024
# Backoff between retries of a request answered 503 (llama-server loading or waking up).
_UNAVAILABLE_FIRST_DELAY = 0.05
_UNAVAILABLE_MAX_DELAY = 1.0


_json_decoder = json.JSONDecoder()


def _loads(data: str) -> Any:
    """``json.loads(data)``, minus its two whitespace scans when there is no padding
    (llama-server sends none): on the per-event path they cost a third of the parse."""
    try:
        value, end = _json_decoder.raw_decode(data)
    except ValueError:
        return json.loads(data)  # leading whitespace, or the very error json.loads raises
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
    non-streaming request; ``idle_timeout`` bounds the silence between two
    reads of a stream (``None``: wait forever). Both raise
    :class:`~rocm_infer.errors.APITimeoutError`. A request answered 503 (the
    model is still loading) is sent again, with backoff, for up to
    ``unavailable_timeout`` seconds before its APIError is raised; a 503
    comes before any byte of a response, so nothing is ever retried after a
    stream has produced events.

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
        self.idle_timeout = idle_timeout
        self.unavailable_timeout = unavailable_timeout

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

    # -- lifetime --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP session if this client created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
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
        "_decoder",
        "_pending",
        "_ahead",
        "_error",
        "_done",
        "_closed",
        "_last_read",
        "_clock",
        "_watchdog",
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
        self._response: aiohttp.ClientResponse | None = None
        self._decoder = SSEDecoder()
        self._pending: list[JSON] = []  # decoded, not yet returned by read_batch
        self._ahead: deque[JSON] = deque()  # returned by read_batch for __anext__, not yet iterated
        self._error: Exception | None = None
        self._done = False  # the terminator was seen
        self._closed = False
        self._last_read = 0.0
        self._clock = time.monotonic
        self._watchdog: asyncio.TimerHandle | None = None
        self._idle = False  # closed by the watchdog: the server went silent
        self._translated = _Translated(client.base_url + path)

    @property
    def url(self) -> str:
        return self._client.base_url + self._path

    @property
    def completed(self) -> bool:
        """True once the stream's terminator was received."""
        return self._done

    async def open(self) -> None:
        """Send the request now (reads do it on demand)."""
        if self._response is None and not self._closed:
            try:
                self._response = await self._client._send("POST", self._path, self._body, self._client._stream_timeout)
            except BaseException:
                self._closed = True
                raise
            timeout = self._client.idle_timeout
            if timeout is not None:
                loop = asyncio.get_running_loop()
                self._clock = loop.time
                self._last_read = loop.time()
                self._watchdog = loop.call_later(timeout, _check_idle, weakref.ref(self))

    def _check_idle(self) -> None:
        """Close the response if nothing was read for idle_timeout, else re-arm.

        Reads only record the time; the timer is re-armed once per timeout
        period, not once per read, which keeps the per-token path free of
        timer work.
        """
        timeout = self._client.idle_timeout
        assert timeout is not None
        loop = asyncio.get_running_loop()
        remaining = self._last_read + timeout - loop.time()
        if remaining > 0:
            self._watchdog = loop.call_later(remaining, _check_idle, weakref.ref(self))
            return
        self._watchdog = None
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
        while not self._pending:
            if self._error is not None:
                error, self._error = self._error, None
                self.close()
                raise error
            if self._done or self._closed:
                return []
            if self._response is None:
                await self.open()
                if self._response is None:
                    return []
            await self._read_more(self._response)
        batch = self._pending
        self._pending = []
        return batch

    async def _read_more(self, response: aiohttp.ClientResponse) -> None:
        try:
            with self._translated:
                chunk = await response.content.readany()
        except BaseException as exc:
            self.close()  # whatever stopped the read (cancellation too) ends the response
            if self._idle:
                raise self._idle_error() from exc
            raise
        if self._idle:
            raise self._idle_error()
        if self._watchdog is not None:
            self._last_read = self._clock()
        try:
            events = self._decoder.feed(chunk) if chunk else self._decoder.end()
        except SSELineTooLongError as exc:
            self.close()
            raise ProtocolError(f"llama-server sent an over-long SSE line ({self.url}): {exc}", url=self.url) from exc
        for event in events:
            self._handle(event.data)
            if self._done or self._error is not None:
                break
        if self._done:
            # Nothing follows the terminator that we want: free the connection now.
            self.close()
        elif not chunk and self._error is None:
            self.close()
            expected = "[DONE]" if self._terminator == "done" else 'an event with "stop": true'
            self._error = ProtocolError(
                f"llama-server's stream from {self._path} ended before {expected}: the response is incomplete",
                url=self.url,
            )

    def _handle(self, data: str) -> None:
        if data == "[DONE]":
            self._done = True
            return
        try:
            payload = _loads(data)
        except ValueError:
            self._error = ProtocolError(f"llama-server sent an event that is not JSON: {data[:200]!r}", url=self.url)
            return
        if not isinstance(payload, dict):
            self._error = ProtocolError(
                f"llama-server sent an event that is not a JSON object: {data[:200]!r}", url=self.url
            )
            return
        if "error" in payload:
            self._error = _error_from_payload(payload, status=None, url=self.url)
            return
        self._pending.append(payload)
        if self._terminator == "stop" and payload.get("stop") is True:
            self._done = True

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
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._closed:
            return
        self._closed = True
        response, self._response = self._response, None
        if response is not None:
            # close() (not release()) drops the connection: llama-server sees the
            # client go away and stops generating for this request.
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
        if not self._closed and self._response is not None:
            self._response.close()


def _check_idle(ref: weakref.ref[EventStream]) -> None:
    # The timer holds only a weak reference, so a dropped stream is still collected (and closed).
    stream = ref()
    if stream is not None:
        stream._check_idle()
