"""Cancel a generation: breaking out of the loop, or cancelling the task,
closes the HTTP response and llama-server frees the slot at once.

    python examples/cancel.py [MODEL.gguf]
"""

from __future__ import annotations

import asyncio
import contextlib

from _common import model_path

import rocm_infer


async def main() -> None:
    async with rocm_infer.load_model(model_path()) as model:
        # 1. Break out after ten tokens: `async with` closes the stream on exit.
        async with model.generate("Count with me:", max_tokens=10_000, ignore_eos=True) as stream:
            received = 0
            async for _ in stream:
                received += 1
                if received == 10:
                    break
        print(f"stopped after 10 tokens: finish_reason={stream.finish_reason!r}")

        # 2. Cancel the task that is reading.
        async def consume() -> None:
            async for _ in model.generate("Tell me everything", max_tokens=10_000, ignore_eos=True):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled_at = asyncio.get_running_loop().time()
        while True:  # poll until llama-server reports every slot idle
            if not any(slot["is_processing"] for slot in await model.client.slots()):
                break
            await asyncio.sleep(0.005)
        idle_ms = (asyncio.get_running_loop().time() - cancelled_at) * 1000
        print(f"cancelled the task: every slot idle {idle_ms:.0f} ms later")

        # 3. The model is still usable.
        text = await model.generate("Still here?", max_tokens=8).collect()
        print("next generation:", text)


if __name__ == "__main__":
    asyncio.run(main())
