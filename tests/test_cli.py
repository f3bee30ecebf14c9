"""The rocm-infer command, run as users run it: the installed console script in a
subprocess, against the real llama-server."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import openai
import pytest
from conftest import llama_server_pids
from test_gguf_info import write_model

import rocm_infer

pytestmark = pytest.mark.integration

QT = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

COMMAND = shutil.which("rocm-infer", path=os.path.dirname(sys.executable))


def run_cli(
    *args: str,
    stdin: str | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None, "the rocm-infer console script is not installed next to this Python"
    return subprocess.run(
        [COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )


@contextlib.contextmanager
def started(*args: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """The installed command running in the background (pipes for stdout and stderr, no stdin
    unless given); killed if it is still running on the way out, its pipes closed.

    Ctrl-C reaches it as from a terminal even where the suite itself was started in the
    background of a shell, which makes its children ignore SIGINT (and so Python too)."""
    assert COMMAND is not None, "the rocm-infer console script is not installed next to this Python"
    popen = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "stdin": subprocess.DEVNULL,
        "preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    }
    with subprocess.Popen([COMMAND, *args], **popen) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rocm-infer: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- run


@pytest.mark.usefixtures("no_leaked_servers")
def test_run_streams_then_prints_metrics(tiny_model_path: Path) -> None:
    result = run_cli("run", str(tiny_model_path), "the river", "--max-tokens", "16", "--ignore-eos")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 8  # random words from the word vocabulary
    assert "[3 prompt tokens, 16 generated (length), time to first token " in result.stderr
    assert "tokens/s]" in result.stderr
    assert "loading model" not in result.stderr  # no progress indicator on a pipe


@pytest.mark.usefixtures("no_leaked_servers")
def test_json_gives_one_object_per_token_and_the_same_text(tiny_model_path: Path) -> None:
    args = ("run", str(tiny_model_path), "the river", "--max-tokens", "12", "--ignore-eos", "--seed", "1")
    plain = run_cli(*args)
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    tokens, final = objects[:-1], objects[-1]
    assert all(set(t) == {"id", "text"} and isinstance(t["id"], int) for t in tokens)
    assert final["finish_reason"] == "length" and final["metrics"]["generated_tokens"] == 12
    assert "".join(t["text"] for t in tokens) + "\n" == plain.stdout  # greedy: the same text both times


@pytest.mark.usefixtures("no_leaked_servers")
def test_chat_and_sampling_flags(tiny_model_path: Path) -> None:
    result = run_cli(
        "run",
        str(tiny_model_path),
        "Hello",
        "--chat",
        "--system",
        "Be brief.",
        "-n",
        "8",
        "-t",
        "0.7",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--ignore-eos",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert " generated (length)" in result.stderr


@pytest.mark.usefixtures("no_leaked_servers")
def test_system_implies_a_chat_turn(tiny_model_path: Path) -> None:
    base = ("run", str(tiny_model_path), "Hello", "-n", "8", "--ignore-eos")
    plain, system, chat = (
        run_cli(*base, *extra) for extra in ((), ("--system", "Be brief."), ("--chat", "--system", "Be brief."))
    )
    for result in (plain, system, chat):
        assert result.returncode == 0, result.stderr
    prompt_tokens = [int(r.stderr.split("[", 1)[1].split()[0]) for r in (plain, system, chat)]
    assert prompt_tokens[1] == prompt_tokens[2] > prompt_tokens[0]  # the chat template and the system message
    assert system.stdout == chat.stdout  # greedy: the same reply to the same chat


@pytest.mark.usefixtures("no_leaked_servers")
def test_interactive_chat_loop_keeps_a_history(tiny_model_path: Path) -> None:
    result = run_cli(
        "run", str(tiny_model_path), "-i", "-n", "6", "--ignore-eos", stdin="What is a GPU?\n\nAnd a CPU?\n"
    )
    assert result.returncode == 0, result.stderr
    counts = [line for line in result.stderr.splitlines() if " generated (length)" in line]
    assert len(counts) == 2  # the empty line is skipped; end of input ends the loop
    first, second = (int(line.split()[0].lstrip("[")) for line in counts)
    assert second > first + 6  # the second turn's prompt holds the first turn and its reply
    assert "> " not in result.stderr  # no prompt when stdin is not a terminal


@pytest.mark.usefixtures("no_leaked_servers")
def test_ctrl_c_mid_generation_exits_130_and_stops_the_server(tiny_model_path: Path) -> None:
    with started("run", str(tiny_model_path), "the", "--max-tokens", "100000", "--ignore-eos") as proc:
        assert proc.stdout is not None
        received = b""
        deadline = time.monotonic() + 60
        while len(received.split()) < 20 and time.monotonic() < deadline:  # tokens are streaming
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                received += os.read(proc.stdout.fileno(), 4096)
        assert len(received.split()) >= 20, "no tokens streamed"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    # no_leaked_servers checks that the llama-server it started is gone


def test_ctrl_c_while_the_model_loads_stops_the_server(tmp_path: Path, tiny_model_path: Path) -> None:
    # A stand-in llama-server that starts and never becomes healthy: the load is in progress for good.
    pid_file, term_file = tmp_path / "pid", tmp_path / "terminated"
    fake = tmp_path / "llama-server"
    fake.write_text(
        f"#!/bin/sh\ntrap 'kill $!; echo yes > {term_file}; exit 0' TERM\necho $$ > {pid_file}\n"
        "echo 'loading model tensors'\nsleep 600 &\nwait\n"
    )
    fake.chmod(0o755)
    with started("run", str(tiny_model_path), "hi", "--server-path", str(fake)) as proc:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        server_pid = int(pid_file.read_text())
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert term_file.read_text() == "yes\n"  # stopped with SIGTERM by rocm-infer, not killed with it
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


@pytest.mark.usefixtures("no_leaked_servers")
def test_ctrl_c_while_the_chat_loop_waits_for_input(tiny_model_path: Path) -> None:
    with started("run", str(tiny_model_path), "-i", "-n", "4", "--ignore-eos", stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 60
        while b"generated (length)" not in seen and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                seen += os.read(proc.stderr.fileno(), 4096)
        assert b"generated (length)" in seen, seen  # one turn done; now it waits on stdin (kept open)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 130


@pytest.mark.usefixtures("no_leaked_servers")
def test_progress_indicator_on_a_terminal(tiny_model_path: Path) -> None:
    assert COMMAND is not None
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [COMMAND, "run", str(tiny_model_path), "the", "-n", "4"],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
        )
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=120)
        seen = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal is closed once the child has exited
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0
    assert b"loading model: starting" in seen
    assert b"\r\x1b[K" in seen  # the indicator line is cleared before the text
    assert out.strip()


@pytest.mark.usefixtures("no_leaked_servers")
def test_a_reader_that_goes_away_mid_stream_stops_it_quietly(tiny_model_path: Path) -> None:
    # `rocm-infer run M the --json | head -2`: the reader takes two lines and goes while tokens stream.
    with started("run", str(tiny_model_path), "the", "--json", "--max-tokens", "100000", "--ignore-eos") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=60)
    assert all(set(line) == {"id", "text"} for line in lines)
    assert proc.returncode == 141, stderr
    assert stderr == b""  # no error line, no traceback, no metrics line
    # no_leaked_servers checks that the llama-server it started is gone


@pytest.mark.usefixtures("no_leaked_servers")
@pytest.mark.parametrize(
    "args",
    [("run", "{model}", "hi", "--json"), ("info", "--json", "{model}"), ("models", "{folder}"), ("doctor",)],
)
def test_a_reader_that_has_gone_before_the_output_ends_it_quietly(args: tuple[str, ...], tiny_model_path: Path) -> None:
    # As `... | head -0`: stdout's reader is gone before the first write (or the last flush).
    command = [arg.format(model=tiny_model_path, folder=tiny_model_path.parent) for arg in args]
    with started(*command) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=120)
    assert proc.returncode == 141, stderr
    assert stderr == b""


# --------------------------------------------------------------------------- errors


def test_missing_model_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.gguf")
    assert_one_line_error(run_cli("run", missing, "hi"), "model file not found", "nope.gguf")
    # --debug, as the error line suggests, before the subcommand or after it, on every subcommand.
    for args in (("--debug", "run", missing, "hi"), ("run", missing, "hi", "--debug"), ("info", "--debug", missing)):
        debug = run_cli(*args)
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "ModelNotFoundError" in debug.stderr, args
        assert "(--debug for details)" not in debug.stderr
    debug = run_cli("models", str(tmp_path / "none"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.usefixtures("no_leaked_servers")
def test_error_paths(tmp_path: Path, tiny_model_path: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04zip")
    model = str(tiny_model_path)
    assert_one_line_error(run_cli("run", str(not_gguf), "hi"), "not a GGUF file", "ZIP archive")
    assert_one_line_error(run_cli("run", model, "hi", "--temperature", "-1"), "temperature must be >= 0")
    assert_one_line_error(run_cli("run", model, "hi", "--server-path", str(tmp_path)), "not a file")
    assert_one_line_error(run_cli("models", str(tmp_path / "none")), "model directory not found")
    assert_one_line_error(run_cli("info", str(not_gguf)), "not a GGUF file")
    bad_backend = run_cli("run", model, "hi", "--backend", "nope")
    assert bad_backend.returncode == 2 and bad_backend.stderr.startswith("usage: rocm-infer run "), bad_backend
    assert "argument --backend: invalid choice: 'nope' (choose from 'rocm', 'llama_cpp')" in bad_backend.stderr
    assert run_cli("frobnicate").returncode == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "{model}", "hi", "--temprature", "3"), "unrecognized arguments: --temprature 3"),
        (("run", "{model}"), "run needs a PROMPT"),
        (("run", "{model}", "hi", "extra"), "unrecognized arguments: extra"),
        (("info", "{model}", "--jsn"), "unrecognized arguments: --jsn"),
        (("demo", "-n", "many"), "argument -n/--max-tokens: invalid int value: 'many'"),
    ],
)
def test_usage_errors_show_the_subcommands_usage(args: tuple[str, ...], message: str, tiny_model_path: Path) -> None:
    result = run_cli(*(arg.format(model=tiny_model_path) for arg in args))
    assert result.returncode == 2, result
    command = args[0]
    assert result.stderr.startswith(f"usage: rocm-infer {command} [-h] [--debug]"), result.stderr
    assert f"rocm-infer {command}: error: {message}" in result.stderr


@pytest.mark.usefixtures("no_leaked_servers")
def test_server_that_fails_to_start_is_one_line(tmp_path: Path, tiny_model_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: this build is broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    result = run_cli("run", str(tiny_model_path), "hi", "--server-path", str(fake))
    assert_one_line_error(result, "exited", "3", "it said: error: this build is broken")


@pytest.mark.usefixtures("no_leaked_servers")
def test_a_model_llama_server_cannot_load_names_the_cause(tmp_path: Path, tiny_model_path: Path) -> None:
    # The tiny model with general.architecture renamed in place: the header still reads, llama-server
    # refuses it, and its last lines only say that it is exiting.
    bad = tmp_path / "bad.gguf"
    shutil.copy(tiny_model_path, bad)
    reader = gguf.GGUFReader(bad, "r+")
    field = reader.fields["general.architecture"]
    field.parts[field.data[0]][:] = np.frombuffer(b"llamb", dtype=np.uint8)
    del reader  # flushes the memory map
    result = run_cli("run", str(bad), "hi")
    assert_one_line_error(result, "exited during start-up", "it said: ")
    said = result.stderr.split("it said: ", 1)[1]
    assert said.startswith("error loading model: unknown model architecture: 'llamb'"), said
    assert "exiting due to" not in said


# --------------------------------------------------------------------------- models / info / doctor / demo


def test_models_table(tmp_path: Path, tiny_model_path: Path) -> None:
    shutil.copy(tiny_model_path, tmp_path / "tiny.gguf")
    write_model(tmp_path / "q4.gguf", FT.MOSTLY_Q4_K_M, QT.Q4_K)
    write_model(tmp_path / "big.gguf", FT.MOSTLY_Q8_0, QT.Q8_0, split_max_tensors=4)
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    result = run_cli("models", str(tmp_path))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "FILE"]
    assert len(rows) == 3
    assert rows[0].split()[-3:] == ["big-00001-of-00003.gguf", "(+2", "shards)"]
    assert "Q8_0" in rows[0] and "Q4_K_M" in rows[1]
    tiny = rocm_infer.read_gguf_info(tiny_model_path)
    assert rows[2].split()[:5] == [tiny.name, "llama", tiny.size_label, "F16", "8192"]
    assert result.stderr.startswith("skipped broken.gguf: ") and "truncated" in result.stderr

    as_json = json.loads(run_cli("models", str(tmp_path), "--json").stdout)
    assert [Path(m["path"]).name for m in as_json["models"]] == ["big-00001-of-00003.gguf", "q4.gguf", "tiny.gguf"]
    assert [Path(s["path"]).name for s in as_json["skipped"]] == ["broken.gguf"]


def test_info(tiny_model_path: Path) -> None:
    result = run_cli("info", str(tiny_model_path))
    assert result.returncode == 0, result.stderr
    fields = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    info = rocm_infer.read_gguf_info(tiny_model_path)
    assert fields["architecture"].strip() == "llama"
    assert fields["parameters"].strip() == f"{info.parameter_count:,}"
    assert fields["quantization"].strip() == "F16"
    assert fields["context length"].strip() == "8192"
    expected = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in dataclasses.asdict(info).items()}
    assert json.loads(run_cli("info", str(tiny_model_path), "--json").stdout) == expected


def test_doctor(server_binary: str) -> None:
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"llama-server: {server_binary}" in out
    assert "version:" in out and "ggml backends in this build:" in out
    assert ("/dev/kfd: present" in out) == os.path.exists("/dev/kfd")
    assert "rocm_infer backend llama_cpp: available" in out
    if not rocm_infer.gpus():
        assert "AMD GPUs: none" in out


@pytest.mark.usefixtures("no_leaked_servers")
def test_demo_makes_its_model_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_cli("demo", "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    assert "making the tiny demo model" in first.stderr
    assert first.stdout.startswith("Once upon a time")
    assert "200 generated (length)" in first.stderr
    assert (cache / "tiny-llama.gguf").is_file()
    again = run_cli("demo", "--cache-dir", str(cache), "-n", "5")
    assert again.returncode == 0 and "making" not in again.stderr and "5 generated (length)" in again.stderr


@pytest.mark.usefixtures("no_leaked_servers")
def test_demo_takes_a_quoted_tilde_cache_dir(tmp_path: Path) -> None:
    # As `rocm-infer demo --cache-dir '~/demo'`: the shell leaves the ~ to the command.
    env = {**os.environ, "HOME": str(tmp_path)}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    demo = run_cli("demo", "--cache-dir", "~/demo", "-n", "2", env=env, cwd=cwd)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "tiny-llama.gguf").is_file() and not (cwd / "~").exists()


def test_models_lists_a_quoted_tilde_folder_relative_to_it(tmp_path: Path, tiny_model_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "demo").mkdir()
    shutil.copy(tiny_model_path, tmp_path / "demo" / "tiny-llama.gguf")
    shutil.copy(tiny_model_path, tmp_path / "demo" / "other.gguf")
    models = run_cli("models", "~/demo", env=env, cwd=cwd)
    assert models.returncode == 0, models.stderr
    files = [row.split()[-1] for row in models.stdout.splitlines()[1:]]
    assert files == ["other.gguf", "tiny-llama.gguf"]  # relative to the folder, not to a ./~ that is not there


def test_demo_without_the_gguf_package_says_what_to_install(tmp_path: Path) -> None:
    # The same entry point with the gguf package hidden, as on an install without the demo extra.
    code = (
        "import sys; sys.modules['gguf'] = None; from rocm_infer.cli import main; "
        f"sys.exit(main(['demo', '--cache-dir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(result, "pip install gguf numpy")


# --------------------------------------------------------------------------- the README's command-line section

ROOT = Path(__file__).resolve().parent.parent


def _readme_cli_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Command line\n")
    return text[start : text.index("\n## ", start + 1)]


@pytest.mark.usefixtures("no_leaked_servers")
def test_the_readme_command_lines_run_as_written_after_make_demo(tmp_path: Path) -> None:
    assert COMMAND is not None
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(COMMAND)}{os.pathsep}{os.environ['PATH']}",
        "XDG_CACHE_HOME": str(tmp_path / "user-cache"),  # where a bare `rocm-infer demo` puts its model
    }
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    # What `make demo` runs, from the Makefile itself, in a stand-in for the checkout's root.
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].splitlines()[1].strip().replace("$(BIN)/", "")
    assert recipe.startswith("rocm-infer demo"), recipe
    subprocess.run(["bash", "-c", recipe], cwd=checkout, env=env, capture_output=True, timeout=120, check=True)

    def bash(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=checkout,
            env=env,
            stdin=subprocess.DEVNULL,  # the -i line's chat loop ends at once
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    section = _readme_cli_section()
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.startswith("rocm-infer ")]
    assert len(commands) == 8, block
    for line in commands:  # each one on its own, with the block's variables set
        prelude = "".join(ln + "\n" for ln in block.splitlines() if not ln.startswith("rocm-infer "))
        result = bash(prelude + line)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert "rocm-infer: error" not in result.stderr and "no GGUF models" not in result.stderr
    # The sample run prints what the README shows (greedy on a fixed model), bar the timings.
    sample = section.split("\n$ ", 1)[1].split("```", 1)[0].splitlines()
    result = bash(sample[0])
    assert result.returncode == 0, result.stderr
    assert result.stdout == sample[1] + "\n"
    shown = sample[2].split(", time to first token")[0]
    assert shown in result.stderr


@pytest.mark.integration
def test_serve_serves_a_pool_over_openais_api_until_ctrl_c(tiny_model_path: Path, server_binary: str) -> None:
    command = shutil.which("rocm-infer", path=str(Path(sys.executable).parent))
    assert command is not None
    before = llama_server_pids(server_binary)
    app = subprocess.Popen(
        [command, "serve", "--model", f"words={tiny_model_path}", "--port", "0", "--api-key", "k", "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stderr is not None
        seen = []
        for line in app.stderr:
            seen.append(line)
            if started := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        else:
            pytest.fail("".join(seen))
        with openai.OpenAI(base_url=f"{started.group(1)}/v1", api_key="k", max_retries=0) as client:
            assert [m.id for m in client.models.list().data] == ["words"]
            reply = client.completions.create(model="words", prompt="Once upon a time", max_tokens=3)
            assert reply.usage is not None and reply.usage.completion_tokens == 3
    finally:
        app.send_signal(signal.SIGINT)
        assert app.wait(timeout=60) == 0
        if app.stderr:
            app.stderr.close()
    assert not llama_server_pids(server_binary) - before


def test_serve_refuses_what_it_cannot_serve_before_starting(tmp_path: Path) -> None:
    assert run_cli("serve").returncode == 2
    open_bind = run_cli("serve", "--model", "m=x.gguf", "--host", "0.0.0.0")
    assert open_bind.returncode == 2 and "needs an API key" in open_bind.stderr
    missing = run_cli("serve", "--model", f"m={tmp_path / 'missing.gguf'}", "--port", "0")
    assert missing.returncode == 1 and "missing.gguf" in missing.stderr
