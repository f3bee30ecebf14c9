"""Exceptions raised by rocm_infer.

Every exception the SDK raises on purpose derives from :class:`RocmInferError`.
Where a builtin exception describes the same failure, the SDK exception also
inherits it, so ``except FileNotFoundError`` or ``except TimeoutError`` keep
working::

    RocmInferError
    ├── BinaryNotFoundError          no usable llama-server binary
    ├── ModelNotFoundError           (also FileNotFoundError) the model path does not exist
    ├── InvalidModelError            (also ValueError) the file is not a readable GGUF model
    ├── InsufficientVRAMError        the model does not fit the GPU's free VRAM (LoadConfig.check_fit)
    ├── ServerError                  the llama-server process failed
    │   ├── ServerStartError         it exited or never became healthy during start-up
    │   └── ServerExitedError        it died while the model was in use
    ├── APIConnectionError           (also builtins.ConnectionError) the HTTP connection failed
    ├── APIError                     llama-server answered with an error
    │   └── ContextLengthError       the prompt does not fit the context window
    ├── ProtocolError                the response broke the SSE/JSON protocol
    ├── StructuredOutputError        the output does not fit the schema it was asked for
    ├── APITimeoutError              (also builtins.TimeoutError) a deadline passed
    ├── ModelClosedError             the model was used after close()
    └── EventLoopError               (also RuntimeError) the model was used from another event loop

Errors carry their context as attributes (``returncode``, ``output_tail``,
``status``, ``url`` …) as well as in the message. Where an error has a
``message`` attribute, it is the error's own text: for an ``APIError`` the
server's words, to which ``str()`` adds the type and status. No exception message or
attribute ever contains the server's API key.
"""

from __future__ import annotations

import builtins

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "BinaryNotFoundError",
    "ContextLengthError",
    "EventLoopError",
    "InsufficientVRAMError",
    "InvalidModelError",
    "ModelClosedError",
    "ModelNotFoundError",
    "ProtocolError",
    "RocmInferError",
    "ServerError",
    "ServerExitedError",
    "ServerStartError",
    "StructuredOutputError",
]


class RocmInferError(Exception):
    """Root of every exception rocm_infer raises on purpose."""


class BinaryNotFoundError(RocmInferError):
    """No usable llama-server binary was found.

    ``searched`` lists the places that were looked at, in order.
    """

    def __init__(self, message: str, *, searched: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.searched = searched


class ModelNotFoundError(RocmInferError, FileNotFoundError):
    """The model file (or the folder of models) does not exist.

    ``path`` is what was looked for; ``message`` the error's text (by
    default ``model file not found: PATH``; a caller may pass its own).
    """

    def __init__(self, path: str, *, message: str | None = None) -> None:
        # FileNotFoundError(errno, strerror, filename) fills .filename for callers.
        super().__init__(2, "model file not found", path)
        self.path = path
        self.message = message if message is not None else f"model file not found: {path!r}"

    def __str__(self) -> str:
        return self.message


class InvalidModelError(RocmInferError, ValueError):
    """The file exists but is not a GGUF model rocm_infer can read.

    ``offset`` is the byte offset at which reading failed, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class InsufficientVRAMError(RocmInferError):
    """The model file is larger than the free VRAM of the GPU it would go to.

    Raised before anything starts when ``LoadConfig(check_fit=True)`` and every
    layer is to be offloaded (``gpu_layers == -1``). ``required`` is the model
    file's size and ``available`` the GPU's free VRAM, in bytes; ``device`` is
    the ROCm device index and ``path`` the model file.
    """

    def __init__(self, message: str, *, required: int, available: int, device: int, path: str | None = None) -> None:
        super().__init__(message)
        self.required = required
        self.available = available
        self.device = device
        self.path = path


class ServerError(RocmInferError):
    """A supervised process (llama-server, or an RPC worker's rpc-server) failed.

    ``returncode`` is the exit status (negative for a signal, ``None`` if it
    was still running), ``output_tail`` the last lines it printed and
    ``program`` what it was.
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        output_tail: str = "",
        program: str = "llama-server",
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.output_tail = output_tail
        self.program = program

    def __str__(self) -> str:
        text = super().__str__()
        if self.output_tail:
            text += f"\n--- last {self.program} output ---\n" + self.output_tail
        return text


class ServerStartError(ServerError):
    """llama-server exited, or never became healthy, while starting."""


class ServerExitedError(ServerError):
    """llama-server died while the model was in use.

    Raised by the stream that was reading when it died, and by every later
    call on the same model.
    """


class APIConnectionError(RocmInferError, builtins.ConnectionError):
    """The HTTP connection to llama-server failed or broke."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class APIError(RocmInferError):
    """llama-server answered a request with an error.

    ``status`` is the HTTP status (or ``None`` for an error sent inside a
    stream), ``type`` llama-server's error type and ``message`` its text
    (``str()`` adds the type and status).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        url: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.url = url
        self.body = body

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        kind = f" [{self.type}]" if self.type else ""
        return f"{self.message}{kind}{where}"


class ContextLengthError(APIError):
    """The prompt (plus the tokens to generate) does not fit the context.

    ``prompt_tokens`` and ``context_len`` are filled in when llama-server
    reports them; ``index`` is the position of the text that did not fit
    when one of many did not (``embed``, ``rerank``).
    """

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        context_len: int | None = None,
        index: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.prompt_tokens = prompt_tokens
        self.context_len = context_len
        self.index = index


class ProtocolError(RocmInferError):
    """A response broke the SSE or JSON protocol (or ended too early), or held
    something the SDK cannot use as the protocol promises (a tool call whose
    arguments are not a JSON object).

    ``url`` is the request's URL when known; ``text`` the offending raw text
    when there is one (the tool call's arguments, say).
    """

    def __init__(self, message: str, *, url: str | None = None, text: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.text = text


class StructuredOutputError(RocmInferError):
    """A generation asked for structured output did not give a value of the schema.

    ``reason`` is ``"length"`` (cut off by the token limit), ``"not_json"``
    or ``"invalid"`` (JSON that does not fit the schema); ``text`` is the
    whole output. No partial object is ever returned instead.
    """

    def __init__(self, message: str, text: str, reason: str) -> None:
        super().__init__(message)
        self.text = text
        self.reason = reason


class APITimeoutError(RocmInferError, builtins.TimeoutError):
    """A deadline passed (a request, or a stream that went silent).

    ``url`` is the request's URL when known.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ModelClosedError(RocmInferError):
    """The model (or its server) was used after ``close()``."""


class EventLoopError(RocmInferError, builtins.RuntimeError):
    """The model was used from an event loop other than the one it was loaded in.

    Its HTTP session and process watcher belong to that loop. Load, use and
    close a model in one loop: one ``asyncio.run()`` for all of it (in a
    notebook, the kernel's loop). ``close()`` from another loop still stops
    the llama-server process.
    """
