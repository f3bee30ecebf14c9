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
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import openai
from httpx_sse import aconnect_sse

import rocm_infer


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


class Contenders:
    """One client of each kind for the server at ``base_url``; ``async with`` closes them all."""

    NAMES = ("rocm_infer", "openai", "httpx-sse", "aiohttp")

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.model: rocm_infer.TextModel | None = None
        self._openai = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)
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

    @staticmethod
    def body(prompt: str, n: int, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt, "n_predict": n, "ignore_eos": True, "temperature": 0.0, "stream": True, **extra}

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
