"""Load progress through load_model, and library logging: one logger per module, named for it, no
handlers; llama-server's output at DEBUG."""

from __future__ import annotations

import ast
import importlib
import logging
import pkgutil
from pathlib import Path

import pytest

import rocm_infer

PACKAGE = Path(rocm_infer.__file__).parent
# With the package's own prefix, so subpackages (rocm_infer.gguf) are walked as ours,
# never confused with a top-level package of the same name.
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], "rocm_infer."))


# Entry points are applications: configuring logging is theirs to do (in main(), never at import).
APPLICATIONS = {"rocm_infer.cli"}


@pytest.mark.parametrize("module", [m for m in MODULES if m not in APPLICATIONS])
def test_each_module_logs_only_through_a_logger_named_for_it(module: str) -> None:
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            assert name not in ("basicConfig", "addHandler", "setLevel"), f"{module} configures logging ({name})"
            if name == "getLogger":
                assert [ast.unparse(a) for a in node.args] == ["__name__"], f"{module}: {ast.unparse(node)}"
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "logging":
                assert name in ("getLogger", "isEnabledFor"), f"{module} logs through the root logger ({name})"


def test_importing_everything_installs_no_handler() -> None:
    for module in MODULES:
        importlib.import_module(module)
    loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict if name.startswith("rocm_infer")]
    assert loggers and all(not lg.handlers for lg in loggers)
    assert all(lg.level == logging.NOTSET for lg in loggers)


@pytest.mark.integration
async def test_llama_servers_own_output_is_logged_at_debug(
    tiny_model_path: Path, no_leaked_servers: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="rocm_infer.server"):
        async with rocm_infer.load_model(tiny_model_path) as model:
            pid = model.server.pid if model.server else None
    lines = [r.getMessage() for r in caplog.records if r.name == "rocm_infer.server" and r.levelno == logging.DEBUG]
    assert any(line.startswith(f"llama-server[{pid}]: ") and "model loaded" in line for line in lines), lines[-5:]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"llama-server pid {pid} ready on port" in m for m in info)


@pytest.mark.integration
async def test_load_model_reports_progress_from_starting_to_ready(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    seen: list[rocm_infer.LoadProgress] = []
    async with rocm_infer.load_model(tiny_model_path, on_progress=seen.append) as model:
        assert seen and seen[-1].stage == "ready"  # reported before load_model returned
        assert model.server is not None and model.server.running
    order = ["starting", "loading", "initializing", "ready"]
    stages = [p.stage for p in seen]
    assert stages[0] == "starting" and stages == sorted(stages, key=order.index)
    assert len(set(zip(stages, (p.fraction for p in seen), strict=True))) == len(seen)  # each report is news
    assert all(p.fraction is None or 0.0 <= p.fraction <= 1.0 for p in seen)
    assert [p.elapsed for p in seen] == sorted(p.elapsed for p in seen)
    assert any(p.stage == "loading" and "loading model" in p.message for p in seen)


@pytest.mark.integration
async def test_a_failing_progress_callback_fails_the_load_and_leaves_nothing_running(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    def broken(progress: rocm_infer.LoadProgress) -> None:
        if progress.stage == "initializing":
            raise RuntimeError("the progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke"):
        await rocm_infer.load_model(tiny_model_path, on_progress=broken)


def test_a_progress_callback_that_is_not_callable_is_refused_at_once(tiny_model_path: Path) -> None:
    with pytest.raises(TypeError, match="on_progress must be callable"):
        rocm_infer.load_model(tiny_model_path, on_progress="print")  # type: ignore[arg-type]
