"""Stream a completion token by token.

python examples/stream.py [MODEL.gguf]
"""

from __future__ import annotations

import asyncio

from _common import model_path

import rocm_infer


async def main() -> None:
    async with rocm_infer.load_model(model_path()) as model:
        async with model.generate("The meaning of life is", max_tokens=64, temperature=0.7, seed=42) as stream:
            async for token in stream:
                print(token.text, end="", flush=True)
        print(f"\n[{stream.finish_reason}] {stream.metrics}")


if __name__ == "__main__":
    asyncio.run(main())
