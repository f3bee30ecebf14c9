"""Values the SDK hands out: tokens, messages, metrics, model information.

All are frozen, slotted dataclasses: cheap to make on the per-token path,
hashable, and safe to share between tasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BatchResult",
    "ClassifyResult",
    "FinishReason",
    "GenerateMetrics",
    "LoadProgress",
    "LoadStage",
    "Message",
    "ModelInfo",
    "Token",
    "TokenLogprob",
    "format_bytes",
]

FinishReason = Literal["stop", "length", "cancelled", "error"]
LoadStage = Literal["starting", "loading", "initializing", "ready"]

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token.

    ``id`` is the vocabulary id llama-server sampled. ``text`` is the text that
    became printable with this token: usually the token's own piece, but ``""``
    while llama-server holds text back (a possible stop string in progress),
    and more than one piece when held-back text is released. A token whose
    piece ends inside a multi-byte UTF-8 character is not reported on its own
    (llama-server sends nothing for it); its bytes arrive with the next token.
    Joining the ``text`` of every token always gives the exact output.
    """

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``role`` is one of system, user, assistant, tool, developer."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise ValueError(f"invalid message role {self.role!r}: expected one of {sorted(ROLES)}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be str, not {type(self.content).__name__}")

    @classmethod
    def coerce(cls, value: Message | Mapping[str, object]) -> Message:
        """Accept a Message or a ``{"role", "content"}`` mapping; raise otherwise."""
        if isinstance(value, Message):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"role", "content"}
            if unknown:
                raise ValueError(f"unknown message keys {sorted(unknown)}: expected 'role' and 'content'")
            if "role" not in value or "content" not in value:
                raise ValueError(f"a message needs 'role' and 'content', got keys {sorted(value)}")
            return cls(value["role"], value["content"])  # type: ignore[arg-type]
        raise TypeError(f"a message must be a Message or a mapping, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class GenerateMetrics:
    """Figures for one finished generation, from llama-server's own ``timings``
    and ``usage`` except ``time_to_first_token`` and ``total_duration``, which
    the SDK measures itself (wall clock, request sent to first token / to end).

    Durations are in seconds. ``prompt_tokens`` counts the whole prompt,
    the ``cached_tokens`` reused from the KV cache included.

    ``active_vram_bytes`` is the VRAM in use on the model's GPU when the
    generation ended and ``peak_vram_bytes`` the most seen in use at the end
    of any generation of this model (or after it loaded), both read from the
    amdgpu sysfs files once per generation; ``None`` without a ROCm GPU.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_duration: float = 0.0
    decode_duration: float = 0.0
    total_duration: float = 0.0
    time_to_first_token: float = 0.0
    prefill_tokens_per_sec: float = 0.0
    decode_tokens_per_sec: float = 0.0
    active_vram_bytes: int | None = None
    peak_vram_bytes: int | None = None

    def __repr__(self) -> str:
        vram = ""
        if self.active_vram_bytes is not None:
            vram = f", vram={format_bytes(self.active_vram_bytes)}"
        if self.peak_vram_bytes is not None:
            vram += f", peak_vram={format_bytes(self.peak_vram_bytes)}"
        return (
            f"GenerateMetrics(prompt_tokens={self.prompt_tokens}, cached_tokens={self.cached_tokens}, "
            f"generated_tokens={self.generated_tokens}, ttft={self.time_to_first_token * 1000:.1f}ms, "
            f"prefill={self.prefill_tokens_per_sec:.1f} tok/s, decode={self.decode_tokens_per_sec:.1f} tok/s, "
            f"total={self.total_duration:.3f}s{vram})"
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What is known of a model, from its GGUF header and, once loaded, llama-server.

    :func:`rocm_infer.read_gguf_info` makes one from a file;
    ``TextModel.info`` is the same plus what the server reports.

    * ``context_len``: the context one request can use (llama-server's
      per-slot ``n_ctx``) for a loaded model; ``0`` for a file that is not
      loaded. ``train_context_len`` is the model's trained context (GGUF).
    * ``file_size``: bytes on disk, all shards of a split model together.
    * ``size_label``: ``general.size_label`` (``"8B"``, ``"8x7B"``), else
      made from the parameter count (``"1.2M"``).
    * ``parameter_count``: ``general.parameter_count``, else the elements of
      every tensor (what llama.cpp reports as ``n_params``).
    * ``file_type``: ``general.file_type`` (llama.cpp's ``llama_ftype``);
      ``quantization`` its name (``"Q4_K_M"``), or the ggml type most weights
      use when the file does not say.
    * ``quant_bits``: the nominal bits per weight of that type (Q4_K_M → 4);
      ``quant_group_size``: weights per ggml block of it (32 for Q4_0, 256 for
      the k-quants' super-blocks, 1 for F16); ``bits_per_weight``: the actual
      average over every tensor, scales and unquantised tensors included.
    * ``layer_count``, ``embedding_size``, ``head_count``, ``expert_count``:
      ``<arch>.block_count``, ``.embedding_length``, ``.attention.head_count``,
      ``.expert_count``; ``None`` when the file lacks them.
    """

    path: str | None
    architecture: str | None = None
    name: str | None = None
    context_len: int = 0
    train_context_len: int | None = None
    vocab_size: int | None = None
    file_size: int | None = None
    has_chat_template: bool = False
    parallel_slots: int = 1
    size_label: str | None = None
    parameter_count: int | None = None
    file_type: int | None = None
    quantization: str | None = None
    quant_bits: int | None = None
    quant_group_size: int | None = None
    bits_per_weight: float | None = None
    layer_count: int | None = None
    embedding_size: int | None = None
    head_count: int | None = None
    expert_count: int | None = None
    tensor_count: int | None = None
    split_count: int = 1
    gguf_version: int | None = None

    def __repr__(self) -> str:
        name = self.name or (os.path.basename(self.path) if self.path else None)
        context = (
            f"{self.context_len} (trained {self.train_context_len})"
            if self.context_len
            else f"{self.train_context_len} (trained)"
        )
        size = format_bytes(self.file_size) if self.file_size is not None else None
        slots = f", slots={self.parallel_slots}" if self.context_len else ""  # loaded: the server's slots
        return (
            f"ModelInfo({name!r}, arch={self.architecture}, params={self.size_label}, "
            f"quant={self.quantization}, context={context}{slots}, size={size})"
        )


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``"512 B"``, ``"1.5 KiB"``, ``"4.37 GiB"``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f} {unit}"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A candidate token with its log-probability."""

    id: int
    text: str
    logprob: float


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """The single next token for one prompt, and the top candidates with logprobs."""

    token: Token
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The tokens generated for one prompt of a batch, or the error that stopped it."""

    tokens: tuple[Token, ...] = ()
    error: BaseException | None = None
    finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """How far llama-server has got in starting up, as reported to ``on_progress``.

    ``stage`` goes ``"starting"`` (process launched) → ``"loading"`` (reading
    the weights) → ``"initializing"`` (context, KV cache, warm-up) →
    ``"ready"`` (healthy). ``fraction`` estimates how much of the model file
    llama-server has read, 0.0–1.0, while loading (from ``/proc`` on Linux);
    ``None`` where it cannot be known. ``elapsed`` is seconds since the process
    was launched; ``message`` is the log line that marked the stage, or a short
    description.
    """

    stage: LoadStage
    fraction: float | None
    elapsed: float
    message: str = ""
