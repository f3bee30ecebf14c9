"""rocm_infer on another asyncio event loop: uvloop, which uvicorn and Ray Serve replicas run on.

docs/concepts.md promises any asyncio loop; these run generate, chat and embed on the real
llama-server under uvloop (a dependency of the test tools, so it is always there in `make test`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import rocm_infer

uvloop = pytest.importorskip("uvloop")  # installed by the test extra: a skip would mean a broken install

pytestmark = pytest.mark.integration


def test_generate_chat_and_cancel_run_under_uvloop(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async def main() -> tuple[str, str, str | None]:
        async with rocm_infer.load_model(tiny_model_path, threads=1) as model:
            text = await model.generate("Once upon a time", max_tokens=5, ignore_eos=True).collect()
            chat = await model.chat([{"role": "user", "content": "Hi"}], max_tokens=4)
            stream = model.generate("tell me a story", max_tokens=10_000, ignore_eos=True)
            async for _ in stream:
                break
            await stream.aclose()
            return text, chat.text, stream.finish_reason

    text, chat, reason = uvloop.run(main())
    assert text and chat and reason == "cancelled"


def test_embed_runs_under_uvloop(embedding_model_path: Path, no_leaked_servers: None) -> None:
    async def main() -> int:
        async with rocm_infer.load_embedding_model(embedding_model_path, threads=1) as emb:
            return len(await emb.embed(["the cat", "a dog"]))

    assert uvloop.run(main()) == 2
