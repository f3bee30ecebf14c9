"""Time from an HTTP client disconnecting mid-stream to llama-server reporting every slot idle,
through examples/fastapi_app.py served by uvicorn on 127.0.0.1.

    python benchmarks/http_disconnect_to_idle.py [MODEL.gguf] [--rounds N]

Each round POSTs /generate for a long generation, reads 50 token events, drops
the connection, and polls the model's /slots every millisecond (one /slots
round trip is included in the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from _model import demo_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import fastapi_app  # noqa: E402
from serve_in_process import serving  # noqa: E402

from rocm_infer.integrations.fastapi import loaded_models  # noqa: E402

LONG = {"prompt": "tell me a story", "max_tokens": 6000, "ignore_eos": True}


async def one_round(http: aiohttp.ClientSession, url: str, app: fastapi_app.FastAPI) -> float:
    model = loaded_models(app)["default"]
    response = await http.post(f"{url}/generate", json=LONG)
    tokens = 0
    async for line in response.content:
        tokens += line.startswith(b"event: token")
        if tokens == 50:
            break
    response.close()
    disconnected = time.perf_counter()
    while True:
        if not any(slot["is_processing"] for slot in await model.client.slots()):
            return time.perf_counter() - disconnected
        await asyncio.sleep(0.001)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    app = fastapi_app.create_app(args.model or demo_model(), parallel_slots=1, context_len=8192)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        times = [await one_round(http, url, app) for _ in range(args.rounds)]
    ms = sorted(t * 1000 for t in times)
    print(
        f"HTTP disconnect -> all slots idle, {len(ms)} rounds: "
        f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
