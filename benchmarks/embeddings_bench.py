"""Measurement 11: texts/s embedded through rocm_infer, AsyncOpenAI and a plain aiohttp loop.

One llama-server serves a tiny BERT embedding model made in the run
(``rocm_infer.tiny_encoders.make_embedding_model``), loaded with
``rocm_infer.load_embedding_model``; every contender embeds the same texts
against it, round by round in rotating order:

* ``rocm_infer``: ``EmbeddingModel.embed(texts)`` (requests of ``batch_size``
  texts, one request per slot at a time; base64 float32 on the wire), at its
  default batch size and at others;
* ``openai``: ``embeddings.create(input=batch)`` over lists of 64 or 256 texts,
  one request after another, as its users write it (it asks for base64 itself);
* ``aiohttp``: a hand-written loop posting lists to ``/v1/embeddings`` with
  ``encoding_format: "base64"`` and decoding the vectors with ``array``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx2
import openai

import rocm_infer
from rocm_infer.embedding import DEFAULT_BATCH_SIZE
from rocm_infer.tiny_encoders import make_embedding_model
from rocm_infer.tiny_model import WORDS

Embed = Callable[[list[str]], Awaitable[int]]


@dataclass(frozen=True)
class Figures:
    """Texts/s of each contender, per round, and what the texts were."""

    rates: dict[str, list[float]]
    tokens_per_text: float
    slots: int


def texts(count: int, words: int, seed: int = 0) -> list[str]:
    """``count`` texts of ``words`` common words each (one token a word for the tiny encoder)."""
    rng = random.Random(seed)
    vocabulary = [w for w in WORDS if w.isalpha()]
    return [" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(count)]


def batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class EmbeddingContenders:
    """The embedding clients, all against the server at ``base_url`` that ``model`` is loaded on."""

    def __init__(self, model: rocm_infer.EmbeddingModel, slots: int) -> None:
        self.model = model
        self.slots = slots
        self.base_url = model.client.base_url
        # The server load_embedding_model started takes the key it made: the other clients need it too.
        self._headers = dict(model.client._headers)
        key = self._headers.get("Authorization", "Bearer none").removeprefix("Bearer ")
        self._openai = openai.AsyncOpenAI(
            base_url=self.base_url + "/v1",
            api_key=key,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0)),
        )
        self._aiohttp = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))

    async def close(self) -> None:
        await self._openai.close()
        await self._aiohttp.close()

    def contenders(self) -> dict[str, Embed]:
        """Every contender by the name its rows carry."""

        def rocm(batch_size: int) -> Embed:
            async def embed(items: list[str]) -> int:
                return len(await self.model.embed(items, batch_size=batch_size))

            return embed

        def openai_sequential(size: int) -> Embed:
            async def embed(items: list[str]) -> int:
                count = 0
                for batch in batches(items, size):
                    response = await self._openai.embeddings.create(model="tiny", input=batch)
                    count += len(response.data)
                return count

            return embed

        def plain(size: int, in_flight: int) -> Embed:
            async def embed(items: list[str]) -> int:
                limit = asyncio.Semaphore(in_flight)

                async def one(batch: list[str]) -> int:
                    async with limit:
                        return len(await self._plain(batch))

                return sum(await asyncio.gather(*(one(b) for b in batches(items, size))))

            return embed

        return {
            f"rocm_infer embed (batch_size {DEFAULT_BATCH_SIZE}, the default)": rocm(DEFAULT_BATCH_SIZE),
            "rocm_infer embed (batch_size 16)": rocm(16),
            "rocm_infer embed (batch_size 256)": rocm(256),
            "openai, lists of 64, one request at a time": openai_sequential(64),
            "openai, lists of 256, one request at a time": openai_sequential(256),
            f"aiohttp, lists of 64, {self.slots} requests at a time": plain(64, self.slots),
            "aiohttp, lists of 256, one request at a time": plain(256, 1),
        }

    async def _plain(self, batch: list[str]) -> list[array.array[float]]:
        body = {"input": batch, "encoding_format": "base64"}
        async with self._aiohttp.post(self.base_url + "/v1/embeddings", json=body, headers=self._headers) as response:
            payload = json.loads(await response.read())
        vectors = []
        for item in sorted(payload["data"], key=lambda d: d["index"]):
            vector = array.array("f")
            vector.frombytes(base64.b64decode(item["embedding"]))
            vectors.append(vector)
        return vectors


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    return [list(names[r % len(names) :]) + list(names[: r % len(names)]) for r in range(rounds)]


async def measure(workdir: Path, *, count: int, words: int, rounds: int, slots: int, threads: int) -> Figures:
    """Every contender's texts/s over ``rounds`` rounds, each embedding the same ``count`` texts."""
    path = await asyncio.to_thread(make_embedding_model, workdir / "embedding.gguf")
    items = texts(count, words)
    async with rocm_infer.load_embedding_model(path, parallel_slots=slots, threads=threads) as model:
        sample = items[: min(len(items), 20)]
        tokens = [len(await model.tokenize(t, add_special=True)) for t in sample]
        bench = EmbeddingContenders(model, slots)
        try:
            contenders = bench.contenders()
            for embed in contenders.values():  # warm each client
                await embed(items[:8])
            rates: dict[str, list[float]] = {name: [] for name in contenders}
            for order in rotations(list(contenders), rounds):
                for name in order:
                    began = time.perf_counter()
                    done = await contenders[name](items)
                    seconds = time.perf_counter() - began
                    if done != len(items):
                        raise RuntimeError(f"{name} embedded {done} texts of {len(items)}")
                    rates[name].append(len(items) / seconds)
        finally:
            await bench.close()
    return Figures(rates, sum(tokens) / len(tokens), slots)
