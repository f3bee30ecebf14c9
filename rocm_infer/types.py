"""Values the SDK hands out: tokens, messages, metrics, model information.

All are frozen, slotted dataclasses: cheap to make on the per-token path,
hashable, and safe to share between tasks.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Audio",
    "BatchResult",
    "ClassifyResult",
    "Completion",
    "FinishReason",
    "GenerateMetrics",
    "Image",
    "LoadProgress",
    "LoadStage",
    "Message",
    "ModelInfo",
    "RerankResult",
    "Token",
    "TokenKind",
    "TokenLogprob",
    "ToolCall",
    "format_bytes",
]

FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]
TokenKind = Literal["content", "reasoning", "tool_call"]
LoadStage = Literal["starting", "loading", "initializing", "ready"]

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass(frozen=True, slots=True, init=False)
class Token:
    """One generated token.

    ``id`` is the vocabulary id llama-server sampled. ``text`` is the text that
    became printable with this token: usually the token's own piece, but ``""``
    while llama-server holds text back (a possible stop string in progress),
    and more than one piece when held-back text is released. A token whose
    piece ends inside a multi-byte UTF-8 character is not reported on its own
    (llama-server sends nothing for it); its bytes arrive with the next token.
    Joining the ``text`` of every token of one ``kind`` gives that part of the
    output exactly.

    ``kind`` says which part of a chat reply the text belongs to:
    ``"content"`` (the answer; every token of ``generate``), ``"reasoning"``
    (a thinking model's reasoning, which llama-server splits off), or
    ``"tool_call"`` (the JSON arguments of a tool call as they stream).
    ``logprob`` and ``top_logprobs`` are filled when logprobs were asked
    for (``logprobs=N``): the chosen token's log-probability and the ``N``
    most likely candidates.

    In a chat reply, markup the server's parser consumes (``<think>``,
    ``<tool_call>``) yields no token; text it releases only at the end, with no
    token of its own (a tool call parsed once complete), has ``id`` -1.
    """

    id: int
    text: str
    kind: TokenKind
    logprob: float | None
    top_logprobs: tuple[TokenLogprob, ...]

    # Made once per token on the hot path: setting the slots through their
    # descriptors costs about half of what a frozen dataclass's own __init__
    # does (which goes through object.__setattr__ for every field).
    def __init__(
        self,
        id: int,
        text: str,
        kind: TokenKind = "content",
        logprob: float | None = None,
        top_logprobs: tuple[TokenLogprob, ...] = (),
    ) -> None:
        _set_id(self, id)
        _set_text(self, text)
        _set_kind(self, kind)
        _set_logprob(self, logprob)
        _set_top_logprobs(self, top_logprobs)

    def __repr__(self) -> str:
        extra = f", kind={self.kind!r}" if self.kind != "content" else ""
        if self.logprob is not None:
            extra += f", logprob={self.logprob:.4g}"
        if self.top_logprobs:
            extra += f", top_logprobs=<{len(self.top_logprobs)}>"
        return f"Token(id={self.id}, text={self.text!r}{extra})"


_set_id = Token.__dict__["id"].__set__
_set_text = Token.__dict__["text"].__set__
_set_kind = Token.__dict__["kind"].__set__
_set_logprob = Token.__dict__["logprob"].__set__
_set_top_logprobs = Token.__dict__["top_logprobs"].__set__


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model made: which tool, with what arguments.

    ``id`` is the call's id (a tool message answers it with ``tool_call_id``),
    ``name`` the tool's name and ``arguments`` the parsed JSON object;
    ``arguments_json`` is the raw JSON text the model wrote.
    """

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    arguments_json: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a tool call needs a tool name, got {self.name!r}")
        if not isinstance(self.arguments, dict):
            raise TypeError(f"tool call arguments must be a dict, not {type(self.arguments).__name__}")
        if not self.arguments_json:
            object.__setattr__(self, "arguments_json", json.dumps(self.arguments))

    def to_openai(self) -> dict[str, Any]:
        """This call in OpenAI's shape (``{"id", "type": "function", "function": {...}}``)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json}}

    @classmethod
    def coerce(cls, value: ToolCall | Mapping[str, Any]) -> ToolCall:
        """Accept a ToolCall or an OpenAI-shaped tool call mapping; raise otherwise."""
        if isinstance(value, ToolCall):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a tool call must be a ToolCall or a mapping, not {type(value).__name__}")
        function = value.get("function")
        if not isinstance(function, Mapping):
            raise ValueError(f"a tool call mapping needs a 'function' object, got {value!r}")
        raw = function.get("arguments", "{}")
        if isinstance(raw, Mapping):
            arguments, text = dict(raw), json.dumps(raw)
        elif isinstance(raw, str):
            try:
                arguments = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise ValueError(f"tool call arguments are not valid JSON: {raw!r}") from None
            if not isinstance(arguments, dict):
                raise ValueError(f"tool call arguments must be a JSON object, got {raw!r}")
            text = raw
        else:
            raise TypeError(f"tool call arguments must be a JSON string or a mapping, not {type(raw).__name__}")
        return cls(str(value.get("id") or ""), function.get("name"), arguments, text)  # type: ignore[arg-type]


# How an image file starts: its MIME type, by magic bytes (what the projector's loader decodes).
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_AUDIO_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"RIFF", "wav"),
    (b"ID3", "mp3"),
    (b"\xff\xfb", "mp3"),
    (b"fLaC", "flac"),
)


def _media_bytes(source: object, kind: str) -> tuple[bytes, str]:
    """(bytes, where they came from) of a path, ``bytes``, a ``data:`` or a ``file:`` URL."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), f"the {kind} bytes given"
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"an {kind} is a path, bytes, or a data: or file: URL, not {type(source).__name__}")
    if source.startswith("data:"):
        head, _, payload = source.partition(",")
        if ";base64" not in head:
            raise ValueError(f"a data: URL {kind} must be base64 ({head[:40]!r})")
        try:
            return base64.b64decode(payload, validate=True), "the data: URL"
        except ValueError:
            raise ValueError(f"the data: URL {kind} is not valid base64") from None
    if source.startswith(("http://", "https://")):
        raise ValueError(f"{kind} URLs are not fetched: download {source!r} and pass the file or its bytes")
    path = urllib.parse.unquote(urllib.parse.urlparse(source).path) if source.startswith("file:") else source
    path = os.path.expanduser(path)
    try:
        with open(path, "rb") as f:
            return f.read(), repr(path)
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{kind} file not found: {path!r}", path) from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read the {kind} file {path!r}: {exc.strerror}", path) from None


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a chat message, for a model loaded with a projector (``mmproj_path``).

    ``Image(source)``: ``source`` is a file path, the image's bytes, or a
    ``data:`` or ``file:`` URL. The bytes are read at once and must be a PNG,
    JPEG, GIF or BMP image (ValueError naming the file otherwise;
    FileNotFoundError for a missing file). Sent as a base64 ``data:`` URL.
    """

    data: bytes = field(repr=False)
    mime: str = "image/png"

    def __init__(self, source: str | os.PathLike[str] | bytes) -> None:
        data, origin = _media_bytes(source, "image")
        mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
        if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            mime = "image/webp"
        if mime is None:
            raise ValueError(f"{origin} is not an image (PNG, JPEG, GIF, BMP or WebP): it starts with {data[:8]!r}")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "mime", mime)

    def __repr__(self) -> str:
        return f"Image({self.mime}, {format_bytes(len(self.data))})"

    def to_openai(self) -> dict[str, Any]:
        url = f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"
        return {"type": "image_url", "image_url": {"url": url}}


@dataclass(frozen=True, slots=True)
class Audio:
    """Audio in a chat message, for a model whose projector takes it: a WAV, MP3 or FLAC file,
    given as ``Image`` is (path, bytes, ``data:``/``file:`` URL). Sent as OpenAI's ``input_audio``."""

    data: bytes = field(repr=False)
    format: str = "wav"

    def __init__(self, source: str | os.PathLike[str] | bytes) -> None:
        data, origin = _media_bytes(source, "audio")
        kind = next((k for magic, k in _AUDIO_MAGIC if data.startswith(magic)), None)
        if kind is None or (kind == "wav" and data[8:12] != b"WAVE"):
            raise ValueError(f"{origin} is not WAV, MP3 or FLAC audio: it starts with {data[:8]!r}")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "format", kind)

    def __repr__(self) -> str:
        return f"Audio({self.format}, {format_bytes(len(self.data))})"

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(self.data).decode(), "format": self.format},
        }


ContentPart = str | Image | Audio


def _part(value: object) -> ContentPart:
    """One content part: text, an Image or Audio, or their OpenAI-shaped dicts."""
    if isinstance(value, str | Image | Audio):
        return value
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "text" and isinstance(value.get("text"), str):
            return str(value["text"])
        if kind == "image_url":
            image = value.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            return Image(url)  # type: ignore[arg-type]
        if kind == "input_audio" and isinstance(value.get("input_audio"), Mapping):
            return Audio("data:;base64," + str(value["input_audio"].get("data", "")))
        raise ValueError(f"unknown message content part {dict(value)!r}: expected text, image_url or input_audio")
    raise TypeError(f"a message content part is text, an Image, Audio or a mapping, not {type(value).__name__}")


_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name", "reasoning", "reasoning_content"})


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message.

    ``role`` is one of system, user, assistant, tool, developer. ``content``
    is text, or a sequence of parts: text, :class:`Image` and :class:`Audio`
    (or their OpenAI-shaped dicts, ``image_url`` and ``input_audio``). An
    assistant message may carry the ``tool_calls`` it made and the
    ``reasoning`` it showed; a tool message answers the call ``tool_call_id`` (``name``: the
    tool's name) with its result as ``content``. ``content`` may be ``""``
    for an assistant message that only calls tools.
    """

    role: str
    content: str | tuple[ContentPart, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise ValueError(f"invalid message role {self.role!r}: expected one of {sorted(ROLES)}")
        if isinstance(self.content, list | tuple):
            object.__setattr__(self, "content", tuple(_part(p) for p in self.content))
        elif not isinstance(self.content, str):
            raise TypeError(f"message content must be str or a list of parts, not {type(self.content).__name__}")
        calls = tuple(ToolCall.coerce(c) for c in self.tool_calls)
        if calls and self.role != "assistant":
            raise ValueError(f"only an assistant message has tool_calls, not a {self.role!r} message")
        object.__setattr__(self, "tool_calls", calls)
        for name in ("tool_call_id", "name", "reasoning"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"message {name} must be str, not {type(value).__name__}")

    @property
    def text(self) -> str:
        """The message's text: its content, or the text parts of it joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p for p in self.content if isinstance(p, str))

    @property
    def media(self) -> tuple[Image | Audio, ...]:
        """The images and audio among the content's parts."""
        return tuple(p for p in self.content if isinstance(p, Image | Audio)) if isinstance(self.content, tuple) else ()

    def to_openai(self) -> dict[str, Any]:
        """This message in OpenAI's shape, as llama-server's chat endpoint takes it."""
        content: Any = self.content
        if isinstance(content, tuple):
            content = [{"type": "text", "text": p} if isinstance(p, str) else p.to_openai() for p in content]
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        if self.reasoning:
            out["reasoning_content"] = self.reasoning
        return out

    @classmethod
    def coerce(cls, value: Message | Mapping[str, object]) -> Message:
        """Accept a Message or an OpenAI-shaped message mapping; raise otherwise.

        The mapping's keys are ``role`` and ``content`` and, where they apply,
        ``tool_calls`` (OpenAI's shape), ``tool_call_id``, ``name`` and
        ``reasoning_content`` (or ``reasoning``). An assistant message that
        only calls tools may have ``content: None``.
        """
        if isinstance(value, Message):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - _MESSAGE_KEYS
            if unknown:
                raise ValueError(f"unknown message keys {sorted(unknown)}: expected some of {sorted(_MESSAGE_KEYS)}")
            if "role" not in value or ("content" not in value and "tool_calls" not in value):
                raise ValueError(f"a message needs 'role' and 'content', got keys {sorted(value)}")
            content = value.get("content")
            if content is None and value.get("role") == "assistant" and value.get("tool_calls"):
                content = ""
            calls = value.get("tool_calls") or ()
            if not isinstance(calls, list | tuple):
                raise TypeError(f"tool_calls must be a list, not {type(calls).__name__}")
            return cls(
                value["role"],  # type: ignore[arg-type]
                content,  # type: ignore[arg-type]
                tool_calls=tuple(calls),
                tool_call_id=value.get("tool_call_id"),  # type: ignore[arg-type]
                name=value.get("name"),  # type: ignore[arg-type]
                reasoning=value.get("reasoning_content", value.get("reasoning")),  # type: ignore[arg-type]
            )
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

    ``draft_tokens`` and ``draft_accepted`` are the tokens a draft model (or a
    draft-free speculative mode) proposed and the target model accepted, as
    llama-server counts them (0 without speculative decoding).
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
    draft_tokens: int = 0
    draft_accepted: int = 0

    def __repr__(self) -> str:
        vram = ""
        if self.draft_tokens:
            vram += f", draft={self.draft_accepted}/{self.draft_tokens} accepted"
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
    * ``pooling``: how an embedding model turns token vectors into one
      (``<arch>.pooling_type``: ``"mean"``, ``"cls"``, ``"last"``, ``"rank"``
      for a reranker, ``"none"``); ``None`` when the file does not say.
    * ``fim``: True when the file names fill-in-the-middle tokens
      (``tokenizer.ggml.fim_pre/suf/mid_token_id``), False when it has none
      of them, None when it cannot be told from the header.
    * ``chat_capabilities`` (a loaded model): what llama-server found its chat
      template can do, from ``/props`` ``chat_template_caps`` without the
      ``supports_`` prefix: ``"tools"``, ``"tool_calls"``,
      ``"parallel_tool_calls"``, ``"system_role"``, ``"reasoning_effort"`` …
    * ``modalities`` (a loaded model): the inputs it takes: ``"text"``, and
      ``"vision"`` / ``"audio"`` / ``"video"`` when its projector provides
      them; empty for a file that is not loaded.
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
    pooling: str | None = None
    fim: bool | None = None
    tensor_count: int | None = None
    split_count: int = 1
    gguf_version: int | None = None
    chat_capabilities: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()

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
class RerankResult:
    """One document's relevance to a query: its ``index`` in the documents given, the
    reranker's ``score`` (higher is more relevant), and the ``document`` itself."""

    index: int
    score: float
    document: str


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


@dataclass(frozen=True, slots=True)
class Completion:
    """Everything one generation produced: what ``await model.generate(...)`` and
    ``await model.chat(...)`` return.

    ``text`` is the content (the answer), ``reasoning`` a thinking model's
    reasoning (``""`` if none), ``tool_calls`` the complete tool calls of a
    chat reply, ``finish_reason`` why it ended (``"stop"``, ``"length"``,
    ``"tool_calls"``), ``tokens`` every token in order, ``metrics`` the
    server's figures and ``message`` the assistant Message to append to the
    history. ``parsed``, when a schema was given (``response_format``,
    ``json_schema``), is the output as a value of it: a pydantic instance or
    the validated dict.
    """

    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    tokens: tuple[Token, ...]
    metrics: GenerateMetrics
    message: Message
    parsed: Any = field(default=None, compare=False)

    def __repr__(self) -> str:
        calls = f", tool_calls={[c.name for c in self.tool_calls]}" if self.tool_calls else ""
        reasoning = f", reasoning={_short(self.reasoning)}" if self.reasoning else ""
        return (
            f"Completion(text={_short(self.text)}{reasoning}{calls}, finish_reason={self.finish_reason!r}, "
            f"tokens={len(self.tokens)})"
        )


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
