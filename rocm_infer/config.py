"""Configuration values: how to load a model and how to generate.

Both are frozen dataclasses validated on construction, so a bad value raises
``ValueError`` (or ``TypeError`` for a wrong type) before any process starts or
any request is sent.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from . import defaults

__all__ = ["GenerateConfig", "LoadConfig", "RestartPolicy"]

_C = TypeVar("_C", "GenerateConfig", "LoadConfig")

# llama-server's draft-free speculative decoding modes (--spec-type).
SPECULATIVE_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")

# Fields of a request body the SDK itself sets; extra_body may not override them.
_RESERVED_BODY_KEYS = frozenset({"stream", "prompt", "messages", "stream_options"})


def _check_int(name: str, value: object, *, minimum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _merge(cls: type[_C], config: _C | None, options: Mapping[str, Any]) -> _C:
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, not {type(config).__name__}")
    if options:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} option(s) {unknown}; valid options: {sorted(names)}")
        return dataclasses.replace(config if config is not None else cls(), **options)
    return config if config is not None else cls()


@dataclass(frozen=True, slots=True)
class GenerateConfig:
    """Sampling and stopping options for one generation.

    ``None`` means llama-server's own default, except ``temperature``, which
    the SDK always sends (llama-server's default is 0.8; the SDK's is greedy).

    * ``max_tokens``: tokens to generate at most (``None``: until EOS or the
      context is full).
    * ``stop``: strings that end the generation; they are not part of the text.
    * ``stop_tokens``: token ids that end the generation, checked by the SDK
      as tokens arrive; the stopping token is not yielded.
    * ``logprobs``: give every token its log-probability (``Token.logprob``)
      and its ``logprobs`` most likely candidates (``Token.top_logprobs``; 0:
      the chosen token's only). ``None``: no probabilities (and no cost).
    * ``extra_body``: any other llama-server request field, sent as is.
    """

    max_tokens: int | None = defaults.MAX_TOKENS
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_tokens: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None
    # Compared, not hashed (a mapping has no hash), so configs stay usable as dict keys.
    extra_body: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, minimum=1, optional=True)
        _check_float("temperature", self.temperature, low=0.0)
        _check_int("top_k", self.top_k, minimum=0, optional=True)
        _check_float("top_p", self.top_p, low=0.0, high=1.0, optional=True)
        _check_float("min_p", self.min_p, low=0.0, high=1.0, optional=True)
        _check_float("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True, optional=True)
        _check_int("seed", self.seed, minimum=0, optional=True)
        _check_int("logprobs", self.logprobs, minimum=0, optional=True)
        if self.logprobs is not None and self.logprobs > 100:
            raise ValueError(f"logprobs must be <= 100, got {self.logprobs}")
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"ignore_eos must be a bool, not {type(self.ignore_eos).__name__}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
            raise TypeError("stop must be a string or a sequence of non-empty strings")
        object.__setattr__(self, "stop", tuple(stop))
        try:
            stop_tokens = frozenset(self.stop_tokens)
        except TypeError:
            raise TypeError("stop_tokens must be an iterable of token ids") from None
        for token_id in stop_tokens:
            _check_int("stop_tokens item", token_id, minimum=0)
        object.__setattr__(self, "stop_tokens", stop_tokens)
        if not isinstance(self.extra_body, Mapping):
            raise TypeError(f"extra_body must be a mapping, not {type(self.extra_body).__name__}")
        reserved = sorted(_RESERVED_BODY_KEYS.intersection(self.extra_body))
        if reserved:
            raise ValueError(f"extra_body may not set {reserved}: the SDK sets them")
        object.__setattr__(self, "extra_body", MappingProxyType(dict(self.extra_body)))

    @classmethod
    def build(cls, config: GenerateConfig | None = None, /, **options: Any) -> GenerateConfig:
        """``config`` with ``options`` applied on top; an unknown option is a TypeError."""
        return _merge(cls, config, options)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a supervised llama-server that died is started again.

    After a crash, the model's next call starts a new llama-server with the
    same configuration and goes on, as long as fewer than ``max_restarts``
    restarts happened in the last ``window`` seconds; past that, the crash
    error is raised as without a policy. A generation that was streaming
    when the server died is never retried: it raises the crash error.
    """

    max_restarts: int = 3
    window: float = 600.0

    def __post_init__(self) -> None:
        _check_int("max_restarts", self.max_restarts, minimum=1)
        _check_float("window", self.window, low=0.0, low_open=True)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How to start llama-server for a model.

    * ``context_len``: context window in tokens; 0 means the smaller of the
      model's own trained context length and 4096 (``defaults.CONTEXT_CAP``).
    * ``gpu_layers``: layers to offload to the GPU; -1 means all.
    * ``parallel_slots``: concurrent sequences llama-server serves (its
      ``--parallel``); 0 leaves llama-server's default.
    * ``threads``: CPU threads llama-server uses; 0 (the default) means one
      fewer than the cores this process may run on, at least one
      (:func:`rocm_infer.defaults.default_threads`): llama-server's own
      default takes every core and stalls when anything else needs one.
    * ``devices``: GPU ids; for ROCm they become ``HIP_VISIBLE_DEVICES``.
    * ``server_path``: the llama-server binary to use, overriding discovery
      (``server_path`` and ``adapter_path`` may start with ``~``).
    * ``extra_args``: more llama-server command-line arguments, passed as is.
    * ``env``: environment variables added for the server process. Inherited
      ``LLAMA_ARG_*`` variables (and ``LLAMA_API_KEY``) are not passed on,
      since llama-server would read them as settings; set them here to use
      them on purpose.
    * ``startup_timeout``: seconds start-up may go without any sign of
      progress (output, or on Linux CPU time, memory or bytes read moving)
      before it is given up: a stall timeout, so slow loads of big models
      are not killed early.
    * ``max_startup_time``: seconds start-up may take in all, progress or not.
    * ``idle_timeout``: seconds a stream may go without receiving anything
      before it is closed and raises :class:`~rocm_infer.errors.APITimeoutError`
      (a server that stopped sending without closing); ``None``: wait forever.
      It is not a limit on a generation's length: a stream that keeps
      sending is never cut.
    * ``adapter_path``: a LoRA adapter to load with the model.
    * ``check_fit``: refuse (:class:`~rocm_infer.errors.InsufficientVRAMError`)
      to load a model file larger than the free VRAM of the GPU it goes to,
      when ``gpu_layers`` is -1; without it such a load only logs a warning.
      Checked by the ROCm backend (the GPU is ``devices[0]``, else the
      discrete GPU), where the amdgpu driver reports VRAM.
    * ``mmproj_path``: a multimodal projector GGUF (``--mmproj``): with it the
      model takes images (or audio) in chat messages; ``model.info.modalities``
      says which.
    * ``draft_model_path``: a smaller model of the same vocabulary that drafts
      tokens for speculative decoding (``--spec-draft-model``);
      ``draft_max``: tokens it drafts at most per step (``--spec-draft-n-max``);
      ``draft_gpu_layers``: its layers on the GPU (-1: all; ``--spec-draft-ngl``).
    * ``speculative``: draft-free speculative decoding modes
      (``--spec-type``): ``"ngram-simple"``, ``"ngram-map-k"``,
      ``"ngram-map-k4v"``, ``"ngram-mod"``, ``"ngram-cache"`` (a name or a
      sequence of names).
    * ``rpc_servers``: ``"host:port"`` of llama.cpp RPC workers to split the
      model over (``--rpc``; see ``rocm-infer rpc-worker``).
    * ``restart``: a :class:`RestartPolicy` to start llama-server again after
      it crashed (``True``: the default policy; an int ``n``: at most ``n``
      restarts in the default window); ``None`` (the default), ``False`` or
      ``0``: a crash is final, every later call raises it.
    """

    context_len: int = 0
    gpu_layers: int = -1
    parallel_slots: int = 0
    threads: int = 0
    devices: tuple[int, ...] = ()
    server_path: str | None = None
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    startup_timeout: float = defaults.STARTUP_TIMEOUT
    max_startup_time: float = defaults.MAX_STARTUP_TIME
    idle_timeout: float | None = defaults.IDLE_TIMEOUT
    adapter_path: str | None = None
    mmproj_path: str | None = None
    draft_model_path: str | None = None
    draft_max: int | None = None
    draft_gpu_layers: int | None = None
    speculative: tuple[str, ...] = ()
    rpc_servers: tuple[str, ...] = ()
    restart: RestartPolicy | None = None
    check_fit: bool = False

    def __post_init__(self) -> None:
        _check_int("context_len", self.context_len, minimum=0)
        if not isinstance(self.check_fit, bool):
            raise TypeError(f"check_fit must be a bool, not {type(self.check_fit).__name__}")
        _check_int("gpu_layers", self.gpu_layers, minimum=-1)
        _check_int("parallel_slots", self.parallel_slots, minimum=0)
        _check_int("threads", self.threads, minimum=0)
        _check_float("startup_timeout", self.startup_timeout, low=0.0, low_open=True)
        _check_float("max_startup_time", self.max_startup_time, low=0.0, low_open=True)
        _check_float("idle_timeout", self.idle_timeout, low=0.0, low_open=True, optional=True)
        restart: object = self.restart
        if restart is True:
            restart = RestartPolicy()
        elif restart is False or restart is None:
            restart = None
        elif isinstance(restart, int):
            restart = RestartPolicy(max_restarts=restart) if restart else None
        elif not isinstance(restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy, a bool or an int, not {type(restart).__name__}")
        object.__setattr__(self, "restart", restart)
        try:
            devices = tuple(self.devices)
        except TypeError:
            raise TypeError(f"devices must be a sequence of GPU ids, not {type(self.devices).__name__}") from None
        for device in devices:
            _check_int("devices item", device, minimum=0)
        object.__setattr__(self, "devices", devices)
        if isinstance(self.extra_args, str) or not all(isinstance(a, str) for a in self.extra_args):
            raise TypeError("extra_args must be a sequence of strings (one per argument), not a string")
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        if not isinstance(self.env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise TypeError("env must be a mapping of str to str")
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        _check_int("draft_max", self.draft_max, minimum=0, optional=True)
        _check_int("draft_gpu_layers", self.draft_gpu_layers, minimum=-1, optional=True)
        speculative = (self.speculative,) if isinstance(self.speculative, str) else tuple(self.speculative)
        unknown = [s for s in speculative if s not in SPECULATIVE_TYPES]
        if unknown:
            raise ValueError(
                f"unknown speculative mode(s) {unknown}; the draft-free modes are {list(SPECULATIVE_TYPES)}"
            )
        object.__setattr__(self, "speculative", speculative)
        rpc = (self.rpc_servers,) if isinstance(self.rpc_servers, str) else tuple(self.rpc_servers)
        for server in rpc:
            host, _, port = server.rpartition(":") if isinstance(server, str) else ("", "", "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"rpc_servers entries must be 'host:port', got {server!r}")
        object.__setattr__(self, "rpc_servers", rpc)
        for name in ("server_path", "adapter_path", "mmproj_path", "draft_model_path"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str | os.PathLike):
                    raise TypeError(f"{name} must be a path, not {type(value).__name__}")
                object.__setattr__(self, name, os.path.expanduser(os.fspath(value)))

    @classmethod
    def build(cls, config: LoadConfig | None = None, /, **options: Any) -> LoadConfig:
        """``config`` with ``options`` applied on top; an unknown option is a TypeError."""
        return _merge(cls, config, options)
