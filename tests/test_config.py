"""GenerateConfig and LoadConfig: every bad value fails on construction, before any request."""

from __future__ import annotations

from typing import Any

import pytest

from rocm_infer import GenerateConfig, LoadConfig, RestartPolicy


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_tokens": 0}, ValueError),
        ({"max_tokens": -5}, ValueError),
        ({"max_tokens": 2.5}, TypeError),
        ({"max_tokens": True}, TypeError),
        ({"temperature": -0.1}, ValueError),
        ({"temperature": float("nan")}, ValueError),
        ({"temperature": "hot"}, TypeError),
        ({"top_k": -1}, ValueError),
        ({"top_p": 1.5}, ValueError),
        ({"top_p": -0.01}, ValueError),
        ({"min_p": 2}, ValueError),
        ({"repeat_penalty": 0}, ValueError),
        ({"seed": -1}, ValueError),
        ({"stop": [""]}, TypeError),
        ({"stop": [1, 2]}, TypeError),
        ({"stop_tokens": [-3]}, ValueError),
        ({"stop_tokens": 7}, TypeError),
        ({"ignore_eos": "yes"}, TypeError),
        ({"extra_body": [("a", 1)]}, TypeError),
        ({"extra_body": {"stream": False}}, ValueError),
        ({"extra_body": {"prompt": "x"}}, ValueError),
    ],
)
def test_generate_config_rejects(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        GenerateConfig(**options)


def test_generate_config_defaults_and_normalisation() -> None:
    config = GenerateConfig(stop="END", stop_tokens=[5, 5, 7], extra_body={"mirostat": 2})
    assert config.max_tokens == 256 and config.temperature == 0.0
    assert config.stop == ("END",)
    assert config.stop_tokens == frozenset({5, 7})
    assert dict(config.extra_body) == {"mirostat": 2}
    with pytest.raises(TypeError):
        config.extra_body["x"] = 1  # type: ignore[index]
    assert GenerateConfig(max_tokens=None).max_tokens is None
    assert hash(GenerateConfig(stop=["a"])) == hash(GenerateConfig(stop=("a",)))


def test_build_applies_options_over_a_config_and_rejects_unknown_names() -> None:
    base = GenerateConfig(max_tokens=10, temperature=0.5)
    merged = GenerateConfig.build(base, max_tokens=20)
    assert (merged.max_tokens, merged.temperature) == (20, 0.5)
    assert GenerateConfig.build(None) == GenerateConfig()
    assert GenerateConfig.build(base) is base
    with pytest.raises(TypeError, match="max_new_tokens"):
        GenerateConfig.build(base, max_new_tokens=3)
    with pytest.raises(TypeError):
        GenerateConfig.build(LoadConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GenerateConfig.build(base, top_p=3)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"context_len": -1}, ValueError),
        ({"gpu_layers": -2}, ValueError),
        ({"parallel_slots": -1}, ValueError),
        ({"threads": 1.5}, TypeError),
        ({"devices": [-1]}, ValueError),
        ({"extra_args": "--flash-attn on"}, TypeError),
        ({"extra_args": ["-fa", 1]}, TypeError),
        ({"env": {"A": 1}}, TypeError),
        ({"startup_timeout": 0}, ValueError),
        ({"startup_timeout": float("inf")}, ValueError),
        ({"server_path": 42}, TypeError),
        ({"max_startup_time": 0}, ValueError),
        ({"max_startup_time": "60"}, TypeError),
        ({"restart": "always"}, TypeError),
        ({"restart": -1}, ValueError),
        ({"restart": 2.5}, TypeError),
        ({"idle_timeout": 0}, ValueError),
        ({"idle_timeout": float("nan")}, ValueError),
        ({"idle_timeout": "120"}, TypeError),
    ],
)
def test_load_config_rejects(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        LoadConfig(**options)


def test_load_config_normalises_sequences_and_paths(tmp_path: Any) -> None:
    config = LoadConfig(devices=[0, 1], extra_args=["-fa", "on"], env={"A": "b"}, adapter_path=tmp_path)
    assert config.devices == (0, 1)
    assert config.extra_args == ("-fa", "on")
    assert config.adapter_path == str(tmp_path)
    assert LoadConfig.build(config, threads=4).threads == 4


@pytest.mark.parametrize(
    ("restart", "expected"),
    [
        (None, None),
        (False, None),
        (0, None),
        (True, RestartPolicy()),
        (5, RestartPolicy(max_restarts=5)),
        (RestartPolicy(1, 30.0), RestartPolicy(1, 30.0)),
    ],
)
def test_load_config_restart_shorthands(restart: object, expected: RestartPolicy | None) -> None:
    assert LoadConfig(restart=restart).restart == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error"),
    [({"max_restarts": 0}, ValueError), ({"window": 0}, ValueError), ({"max_restarts": 1.0}, TypeError)],
)
def test_restart_policy_rejects(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        RestartPolicy(**options)
