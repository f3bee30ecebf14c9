"""rocm_infer: run GGUF models through a supervised llama.cpp llama-server, from asyncio.

async with rocm_infer.load_model("model.gguf") as model:
    async for token in model.generate("Once upon a time"):
        print(token.text, end="", flush=True)
"""

from .backend import (
    Backend,
    LlamaCppBackend,
    RocmBackend,
    default_backend,
    find_llama_server,
    get_backend,
    list_backends,
    load_model,
    register,
)
from .client import EventStream, LlamaServerClient
from .config import GenerateConfig, LoadConfig, RestartPolicy
from .errors import (
    APIError,
    BinaryNotFoundError,
    ConnectionError,
    ContextLengthError,
    InvalidModelError,
    ModelClosedError,
    ModelNotFoundError,
    ProtocolError,
    RocmInferError,
    ServerError,
    ServerExitedError,
    ServerStartError,
    TimeoutError,
)
from .model import ModelContext, TextModel, TokenStream, connect
from .server import LlamaServer
from .types import (
    BatchResult,
    ClassifyResult,
    GenerateMetrics,
    LoadProgress,
    Message,
    ModelInfo,
    Token,
    TokenLogprob,
)

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Backend",
    "BatchResult",
    "BinaryNotFoundError",
    "ClassifyResult",
    "ConnectionError",
    "ContextLengthError",
    "EventStream",
    "GenerateConfig",
    "GenerateMetrics",
    "InvalidModelError",
    "LlamaCppBackend",
    "LlamaServer",
    "LlamaServerClient",
    "LoadConfig",
    "LoadProgress",
    "Message",
    "ModelClosedError",
    "ModelContext",
    "ModelInfo",
    "ModelNotFoundError",
    "ProtocolError",
    "RestartPolicy",
    "RocmBackend",
    "RocmInferError",
    "ServerError",
    "ServerExitedError",
    "ServerStartError",
    "TextModel",
    "TimeoutError",
    "Token",
    "TokenLogprob",
    "TokenStream",
    "__version__",
    "connect",
    "default_backend",
    "find_llama_server",
    "get_backend",
    "list_backends",
    "load_model",
    "register",
]
