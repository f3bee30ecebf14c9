"""The package's public names: __all__ is sorted and lists exactly what is public."""

from __future__ import annotations

import importlib
import types

import pytest

import rocm_infer


def test_all_is_sorted_and_complete() -> None:
    assert rocm_infer.__all__ == sorted(rocm_infer.__all__)
    public = {
        name
        for name, value in vars(rocm_infer).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(rocm_infer.__all__) - {"__version__"}


@pytest.mark.parametrize(
    "module",
    ["backend", "cli", "client", "config", "discovery", "errors", "gguf", "gpu", "model", "server", "sse", "types"],
)
def test_module_all_names_exist(module: str) -> None:
    mod = importlib.import_module(f"rocm_infer.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"rocm_infer.{module}.__all__ names missing {name}"


def test_every_error_derives_from_the_root() -> None:
    from rocm_infer import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RocmInferError)
    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.APITimeoutError, TimeoutError)
    assert issubclass(errors.APIConnectionError, ConnectionError)
    assert issubclass(errors.ContextLengthError, errors.APIError)
