"""The clients the harness compares, each streaming one generation its own way.

Every contender sends the same request (a prompt, ``n`` tokens, ``ignore_eos``)
to the same server and reports a :class:`Run`: when the request was sent,
when the first and last tokens arrived, how many came, the process CPU time
the stream took, and the rate and prompt time llama-server reported for that
request. Each is written the way its users would write it:

* ``rocm_infer``: ``model.generate`` on a model from ``rocm_infer.connect``;
* ``openai``: ``AsyncOpenAI(...).completions.create(stream=True)`` on llama-server's
  OpenAI-compatible ``/v1/completions``;
* ``httpx-sse``: ``aconnect_sse`` + ``json.loads`` on the native ``/completion``;
* ``aiohttp``: a hand-written loop over ``response.content`` lines on ``/completion``.

:meth:`Contenders.chat` streams ``/v1/chat/completions`` the same three ways
(``model.chat``, ``chat.completions.create(stream=True)``, the hand-written loop);
every one of them asks for the ``n_probs: 1, post_sampling_probs: true`` fields
that ``chat`` sends for its token ids, so the server does the same work for each.
:meth:`Contenders.bare` is each client with nothing around it, for CPU figures:
the aiohttp loop there reads ``iter_any()`` chunks and parses nothing.

llama-server closes the connection after a stream while advertising keep-alive,
so the AsyncOpenAI client keeps no idle connections (as aiohttp's ``force_close``
and rocm_infer do): a reused dead connection would fail a request (or, with
retries, send it twice).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import httpx2
import openai
from httpx_sse import aconnect_sse

import rocm_infer

PROMPT = "the quick brown fox"


@dataclass(frozen=True, slots=True)
class Run:
    tokens: int
    sent: float  # perf_counter() when the request was made
    first: float  # ... when the first token arrived
    last: float  # ... when the last token arrived
    cpu: float  # process CPU seconds the whole stream took
    server_rate: float  # llama-server's predicted_per_second (0 where it sent none)
    prompt_ms: float  # llama-server's prompt_ms

    @property
    def seen_rate(self) -> float:
        """Tokens per second as the client saw them arrive (first token to last)."""
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0.0

    @property
    def ttft_overhead_ms(self) -> float:
        """Time to first token as the client saw it, minus llama-server's own prompt time."""
        return (self.first - self.sent) * 1000 - self.prompt_ms


Stream = Callable[[str, int], Awaitable[Run]]
Bare = Callable[[int], Awaitable[None]]

# What rocm_infer's chat asks for so that every token has its id; the other chat contenders ask for it too.
CHAT_PROBS = {"n_probs": 1, "post_sampling_probs": True}


class Contenders:
    """One client of each kind for the server at ``base_url``; ``async with`` closes them all."""

    NAMES = ("rocm_infer", "openai", "httpx-sse", "aiohttp")
    CHAT_NAMES = ("rocm_infer", "openai", "aiohttp")
    # Measurement 10: (client, endpoint) pairs, each plain-loop entry the anchor of the rocm_infer one before it.
    BARE_NAMES = (
        "rocm_infer generate",
        "aiohttp /completion",
        "aiohttp /completion + json.loads",
        "rocm_infer chat",
        "aiohttp /v1/chat/completions",
        "aiohttp /v1/chat/completions + json.loads",
        "openai completions",
        "openai chat",
    )

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.model: rocm_infer.TextModel | None = None
        self._openai = openai.AsyncOpenAI(
            base_url=base_url + "/v1",
            api_key="none",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0)),
        )
        self._httpx = httpx.AsyncClient(timeout=None)
        self._aiohttp: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Contenders:
        self.model = await rocm_infer.connect(self.base_url)
        # llama-server closes the connection after a stream while advertising keep-alive:
        # a reused connection can be dead, so a working aiohttp loop does not reuse them.
        self._aiohttp = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.model is not None:
            await self.model.close()
        if self._aiohttp is not None:
            await self._aiohttp.close()
        await self._openai.close()
        await self._httpx.aclose()

    def stream(self, name: str) -> Stream:
        return {
            "rocm_infer": self.rocm_infer,
            "openai": self.openai,
            "httpx-sse": self.httpx_sse,
            "aiohttp": self.aiohttp,
        }[name]

    def chat(self, name: str) -> Stream:
        return {"rocm_infer": self.rocm_infer_chat, "openai": self.openai_chat, "aiohttp": self.aiohttp_chat}[name]

    def bare(self, name: str) -> Bare:
        return {
            "rocm_infer generate": self.bare_generate,
            "rocm_infer chat": self.bare_chat,
            "aiohttp /completion": self.bare_aiohttp,
            "aiohttp /v1/chat/completions": self.bare_aiohttp_chat,
            "aiohttp /completion + json.loads": functools.partial(self.bare_aiohttp_decoding, "/completion"),
            "aiohttp /v1/chat/completions + json.loads": functools.partial(
                self.bare_aiohttp_decoding, "/v1/chat/completions"
            ),
            "openai completions": self.bare_openai,
            "openai chat": self.bare_openai_chat,
        }[name]

    @staticmethod
    def body(prompt: str, n: int, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt, "n_predict": n, "ignore_eos": True, "temperature": 0.0, "stream": True, **extra}

    @staticmethod
    def messages(prompt: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}]

    @classmethod
    def chat_body(cls, prompt: str, n: int) -> dict[str, Any]:
        return {
            "messages": cls.messages(prompt),
            "max_tokens": n,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **CHAT_PROBS,
        }

    async def rocm_infer(self, prompt: str, n: int, **extra: Any) -> Run:
        assert self.model is not None
        tally = _Tally()
        stream = self.model.generate(prompt, max_tokens=n, ignore_eos=True, extra_body=extra)
        async for _ in stream:
            tally.token()
        metrics = stream.metrics
        assert metrics is not None
        return tally.run(
            {"predicted_per_second": metrics.decode_tokens_per_sec, "prompt_ms": metrics.prefill_duration * 1000}
        )

    async def openai(self, prompt: str, n: int, **extra: Any) -> Run:
        tally = _Tally()
        timings: Any = None
        stream = await self._openai.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=n,
            temperature=0.0,
            stream=True,
            extra_body={"ignore_eos": True, **extra},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                tally.token()
            extra_fields = chunk.model_extra or {}
            if "timings" in extra_fields:
                timings = extra_fields["timings"]
        return tally.run(timings)

    async def httpx_sse(self, prompt: str, n: int, **extra: Any) -> Run:
        tally = _Tally()
        url = self.base_url + "/completion"
        async with aconnect_sse(self._httpx, "POST", url, json=self.body(prompt, n, **extra)) as source:
            async for sse in source.aiter_sse():
                if tally.native(json.loads(sse.data)):
                    break
        return tally.run(tally.timings)

    async def aiohttp(self, prompt: str, n: int, **extra: Any) -> Run:
        assert self._aiohttp is not None
        tally = _Tally()
        url = self.base_url + "/completion"
        async with self._aiohttp.post(url, json=self.body(prompt, n, **extra)) as response:
            async for line in response.content:
                if line.startswith(b"data: ") and tally.native(json.loads(line[6:])):
                    break
        return tally.run(tally.timings)

    # -- chat ----------------------------------------------------------------------------------

    async def rocm_infer_chat(self, prompt: str, n: int) -> Run:
        assert self.model is not None
        tally = _Tally()
        stream = self.model.chat(self.messages(prompt), max_tokens=n, ignore_eos=True)
        async for _ in stream:
            tally.token()
        metrics = stream.metrics
        assert metrics is not None
        return tally.run(
            {"predicted_per_second": metrics.decode_tokens_per_sec, "prompt_ms": metrics.prefill_duration * 1000}
        )

    async def openai_chat(self, prompt: str, n: int) -> Run:
        tally = _Tally()
        timings: Any = None
        stream = await self._openai_chat_stream(prompt, n)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tally.token()
            extra_fields = chunk.model_extra or {}
            if "timings" in extra_fields:
                timings = extra_fields["timings"]
        return tally.run(timings)

    async def aiohttp_chat(self, prompt: str, n: int) -> Run:
        assert self._aiohttp is not None
        tally = _Tally()
        url = self.base_url + "/v1/chat/completions"
        async with self._aiohttp.post(url, json=self.chat_body(prompt, n)) as response:
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices")
                if choices and choices[0].get("delta", {}).get("content"):
                    tally.token()
                if "timings" in chunk:
                    tally.timings = chunk["timings"]
        return tally.run(tally.timings)

    # -- bare: each client with nothing around it, for CPU figures -----------------------------

    async def bare_generate(self, n: int) -> None:
        assert self.model is not None
        async for _ in self.model.generate(PROMPT, max_tokens=n, ignore_eos=True):
            pass

    async def bare_chat(self, n: int) -> None:
        assert self.model is not None
        async for _ in self.model.chat(self.messages(PROMPT), max_tokens=n, ignore_eos=True):
            pass

    async def bare_aiohttp(self, n: int) -> None:
        assert self._aiohttp is not None
        async with self._aiohttp.post(self.base_url + "/completion", json=self.body(PROMPT, n)) as response:
            async for _ in response.content.iter_any():
                pass

    async def bare_aiohttp_chat(self, n: int) -> None:
        assert self._aiohttp is not None
        url = self.base_url + "/v1/chat/completions"
        async with self._aiohttp.post(url, json=self.chat_body(PROMPT, n)) as response:
            async for _ in response.content.iter_any():
                pass

    async def bare_aiohttp_decoding(self, path: str, n: int) -> None:
        """The plain loop that also decodes what it reads: each event's JSON, as any client must."""
        assert self._aiohttp is not None
        body = self.body(PROMPT, n) if path == "/completion" else self.chat_body(PROMPT, n)
        async with self._aiohttp.post(self.base_url + path, json=body) as response:
            held = b""
            async for chunk in response.content.iter_any():
                *events, held = (held + chunk).split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: {"):
                        json.loads(event[6:])

    async def bare_openai(self, n: int) -> None:
        stream = await self._openai.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=n, temperature=0.0, stream=True, extra_body={"ignore_eos": True}
        )
        async for _ in stream:
            pass

    async def bare_openai_chat(self, n: int) -> None:
        async for _ in await self._openai_chat_stream(PROMPT, n):
            pass

    def _openai_chat_stream(self, prompt: str, n: int) -> Any:
        """AsyncOpenAI's streamed chat completion of ``n`` tokens (to await), as every contender asks."""
        return self._openai.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=n,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, **CHAT_PROBS},
        )


class _Tally:
    """Counts one stream's tokens and when they came."""

    __slots__ = ("cpu", "sent", "first", "last", "count", "timings")

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.sent = self.first = self.last = time.perf_counter()
        self.count = 0
        self.timings: Any = None

    def token(self) -> None:
        self.last = time.perf_counter()
        if not self.count:
            self.first = self.last
        self.count += 1

    def native(self, event: dict[str, Any]) -> bool:
        """Count a native /completion event; True for the last one."""
        if event.get("content"):
            self.token()
        if event.get("stop"):
            self.timings = event.get("timings")
            return True
        return False

    def run(self, timings: Any) -> Run:
        rate, prompt_ms = 0.0, 0.0
        if isinstance(timings, dict):
            rate, prompt_ms = float(timings.get("predicted_per_second", 0.0)), float(timings.get("prompt_ms", 0.0))
        return Run(self.count, self.sent, self.first, self.last, time.process_time() - self.cpu, rate, prompt_ms)
