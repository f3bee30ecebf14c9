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
    load_embedding_model,
    load_model,
    load_reranker,
    locate_llama_server,
    register,
)
from .client import EventStream, LlamaServerClient
from .config import GenerateConfig, LoadConfig, RestartPolicy
from .discovery import ModelList, SkippedFile, discover_models
from .embedding import EmbeddingModel, Reranker, connect_embedding_model, connect_reranker
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BinaryNotFoundError,
    ContextLengthError,
    EventLoopError,
    InsufficientVRAMError,
    InvalidModelError,
    ModelClosedError,
    ModelNotFoundError,
    ProtocolError,
    RocmInferError,
    ServerError,
    ServerExitedError,
    ServerStartError,
    StructuredOutputError,
)
from .gguf import read_gguf_info
from .gpu import GpuInfo, VramInfo, gpus, vram_info
from .lifecycle import ModelContext, ServerModel
from .model import TextModel, connect
from .rpc import RpcWorker, find_rpc_server
from .server import LlamaServer, ServerSpec
from .serving import Endpoint, EndpointState, LoadedModel, ModelPool, ModelSpec, PoolBusyError, Router
from .stream import TokenStream
from .tools import Tool
from .types import (
    Audio,
    BatchResult,
    ClassifyResult,
    Completion,
    GenerateMetrics,
    Image,
    LoadProgress,
    Message,
    ModelInfo,
    RerankResult,
    Token,
    TokenLogprob,
    ToolCall,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Audio",
    "Backend",
    "BatchResult",
    "BinaryNotFoundError",
    "ClassifyResult",
    "Completion",
    "ContextLengthError",
    "EmbeddingModel",
    "Endpoint",
    "EndpointState",
    "EventLoopError",
    "EventStream",
    "GenerateConfig",
    "GenerateMetrics",
    "GpuInfo",
    "Image",
    "InsufficientVRAMError",
    "InvalidModelError",
    "LlamaCppBackend",
    "LlamaServer",
    "LlamaServerClient",
    "LoadConfig",
    "LoadProgress",
    "LoadedModel",
    "Message",
    "ModelClosedError",
    "ModelContext",
    "ModelInfo",
    "ModelList",
    "ModelNotFoundError",
    "ModelPool",
    "ModelSpec",
    "PoolBusyError",
    "ProtocolError",
    "RerankResult",
    "Reranker",
    "RestartPolicy",
    "RocmBackend",
    "RocmInferError",
    "Router",
    "RpcWorker",
    "ServerError",
    "ServerExitedError",
    "ServerModel",
    "ServerSpec",
    "ServerStartError",
    "SkippedFile",
    "StructuredOutputError",
    "TextModel",
    "Token",
    "TokenLogprob",
    "TokenStream",
    "Tool",
    "ToolCall",
    "VramInfo",
    "__version__",
    "connect",
    "connect_embedding_model",
    "connect_reranker",
    "default_backend",
    "discover_models",
    "find_llama_server",
    "find_rpc_server",
    "get_backend",
    "gpus",
    "list_backends",
    "load_embedding_model",
    "load_model",
    "load_reranker",
    "locate_llama_server",
    "read_gguf_info",
    "register",
    "vram_info",
]
