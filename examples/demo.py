"""Start a real llama-server on a model (default: the tiny demo model), stream 200
tokens and report the speed: the SDK calls behind a demo, to read and adapt.
(`make demo` runs the `rocm-infer demo` command instead.)

python examples/demo.py [MODEL.gguf]
"""

from __future__ import annotations

import asyncio
import time

from _common import model_path

import rocm_infer


async def main() -> None:
    path = model_path()
    started = time.perf_counter()
    async with rocm_infer.load_model(path) as model:
        print(f"loaded {model.info.name or path} ({model.model_type}) in {time.perf_counter() - started:.2f}s")
        print(f"llama-server pid {model.server.pid if model.server else '-'}, context {model.info.context_len}\n")
        prompt = "Once upon a time"
        print(prompt, end="", flush=True)
        stream = model.generate(prompt, max_tokens=200, ignore_eos=True)
        first = 0.0
        async for token in stream:
            first = first or time.perf_counter()
            print(token.text, end="", flush=True)
        received = time.perf_counter() - first
        metrics = stream.metrics
        assert metrics is not None
        print(
            f"\n\n{metrics.generated_tokens} tokens ({stream.finish_reason}); "
            f"time to first token {metrics.time_to_first_token * 1000:.1f} ms; "
            f"llama-server decoded {metrics.decode_tokens_per_sec:.0f} tokens/s, "
            f"rocm_infer received {(metrics.generated_tokens - 1) / received:.0f} tokens/s"
        )
    print("llama-server stopped.")


if __name__ == "__main__":
    asyncio.run(main())
