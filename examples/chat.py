"""A two-turn chat: the model's own chat template is applied by llama-server.

python examples/chat.py [MODEL.gguf]
"""

from __future__ import annotations

import asyncio

from _common import model_path

import rocm_infer
from rocm_infer import Message


async def main() -> None:
    history = [Message("system", "You are a terse assistant.")]
    async with rocm_infer.load_model(model_path()) as model:
        for question in ("What is a GPU?", "And a CPU?"):
            history.append(Message("user", question))
            print(f"> {question}")
            stream = model.chat(history, max_tokens=48)
            async for token in stream:
                print(token.text, end="", flush=True)
            print()
            history.append(Message("assistant", stream.text))


if __name__ == "__main__":
    asyncio.run(main())
