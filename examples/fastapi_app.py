"""A small service on rocm_infer: ``POST /generate`` (server-sent events) and an
OpenAI-compatible ``POST /v1/chat/completions`` (streaming and not, with tools
and reasoning), so the official ``openai`` client pointed at it works unchanged.

    python examples/fastapi_app.py [MODEL.gguf] [--port 8000] [--parallel-slots N] [--embedding-model E.gguf]

    import openai
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}])

Needs the ``fastapi`` extra (FastAPI and uvicorn; the ``demo`` extra too for
the demo model). Without a model path it serves $ROCM_INFER_MODEL, else the
tiny demo model. ``--parallel-slots`` 0 (the default) keeps llama-server's 4
slots sharing one context; N gives each of N slots context/N tokens.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel

import rocm_infer
from rocm_infer import TextModel
from rocm_infer.integrations.fastapi import get_model, model_lifespan, sse_response
from rocm_infer.integrations.openai_api import loaded_models_provider, openai_error, openai_router

MODEL_NAME = "default"
Model = Annotated[TextModel, Depends(get_model)]


# --8<-- [start:generate]
class GenerateRequest(BaseModel):
    prompt: str
    max_tokens: int | None = 256
    temperature: float = 0.0
    stop: list[str] = []
    seed: int | None = None
    ignore_eos: bool = False


def generate(body: GenerateRequest, model: Model) -> Any:
    """Stream the continuation of a prompt: ``event: token`` per token, then ``event: end``."""
    try:
        stream = model.generate(body.prompt, **body.model_dump(exclude={"prompt"}))
    except (TypeError, ValueError) as exc:  # a bad option, refused before any request
        return openai_error(400, str(exc))
    return sse_response(stream)  # a client that disconnects stops the generation


# --8<-- [end:generate]


# --8<-- [start:app]
def create_app(
    model_path: str | os.PathLike[str] | None = None,
    *,
    embedding_model: str | os.PathLike[str] | None = None,
    **load_options: Any,
) -> FastAPI:
    """The service, serving ``model_path`` (default: $ROCM_INFER_MODEL, else the demo model) as
    "default", and ``embedding_model``, if given, as "embedding" for /v1/embeddings."""
    path = model_path or os.environ.get("ROCM_INFER_MODEL") or demo_model()
    models: dict[str, Any] = {MODEL_NAME: lambda: rocm_infer.load_model(path, **load_options)}
    if embedding_model is not None:
        models["embedding"] = lambda: rocm_infer.load_embedding_model(embedding_model)
    app = FastAPI(title="rocm_infer example", lifespan=model_lifespan(**models))
    app.post("/generate")(generate)
    # OpenAI's /v1/chat/completions (tools, reasoning, streaming), /v1/embeddings and /v1/models.
    app.include_router(openai_router(loaded_models_provider))
    return app


# --8<-- [end:app]


def demo_model() -> Path:
    from _common import demo_model as make

    return make()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="GGUF model (default: the demo model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--parallel-slots", type=int, default=0, help="0: llama-server's default")
    parser.add_argument("--embedding-model", help="a GGUF embedding model to serve as 'embedding'")
    args = parser.parse_args()
    app = create_app(args.model, embedding_model=args.embedding_model, parallel_slots=args.parallel_slots)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
