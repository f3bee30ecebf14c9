"""Tests for discover_models: a folder of GGUF files, split models, broken files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import gguf
import pytest
from test_gguf_info import write_model

from rocm_infer import LoadConfig, ModelList, ModelNotFoundError, discover_models, read_gguf_info

QT = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType


@pytest.fixture
def folder(tmp_path: Path, tiny_model_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(tiny_model_path, d / "tiny.gguf")
    write_model(d / "q4.gguf", FT.MOSTLY_Q4_K_M, QT.Q4_K)
    write_model(d / "split.gguf", FT.MOSTLY_Q8_0, QT.Q8_0, split_max_tensors=4)
    (d / "broken.gguf").write_bytes(b"PK\x03\x04 not a model")
    (d / "notes.txt").write_text("not a model, not a .gguf name")
    sub = d / "sub"
    sub.mkdir()
    write_model(sub / "deep.GGUF", FT.MOSTLY_F16, QT.F16)
    return d


def test_lists_models_once_and_reports_skipped(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rocm_infer.discovery"):
        found = discover_models(folder)
    assert isinstance(found, ModelList) and isinstance(found, list)
    names = [Path(m.path or "").name for m in found]
    assert names == ["q4.gguf", "split-00001-of-00003.gguf", "tiny.gguf"]
    split = found[1]
    assert split == read_gguf_info(folder / "split-00001-of-00003.gguf")
    assert split.split_count == 3
    assert split.file_size == sum(p.stat().st_size for p in folder.glob("split-*.gguf"))
    assert [Path(s.path).name for s in found.skipped] == ["broken.gguf"]
    assert "ZIP archive" in found.skipped[0].reason
    assert found.skipped[0].error.offset == 0  # type: ignore[attr-defined]
    assert "skipped" in caplog.text and "broken.gguf" in caplog.text


def test_recursive(folder: Path) -> None:
    names = [Path(m.path or "").name for m in discover_models(folder, recursive=True)]
    assert names == ["q4.gguf", "split-00001-of-00003.gguf", "deep.GGUF", "tiny.gguf"]


def test_split_model_with_a_missing_shard_is_skipped(folder: Path) -> None:
    (folder / "split-00002-of-00003.gguf").unlink()
    found = discover_models(folder)
    assert [Path(s.path).name for s in found.skipped] == ["broken.gguf", "split-00001-of-00003.gguf"]
    assert "shard 2 of 3" in found.skipped[1].reason
    (folder / "split-00001-of-00003.gguf").unlink()
    found = discover_models(folder)
    assert [Path(s.path).name for s in found.skipped] == ["broken.gguf", "split-00003-of-00003.gguf"]
    assert "first shard is missing" in found.skipped[1].reason


def test_empty_folder(tmp_path: Path) -> None:
    found = discover_models(tmp_path)
    assert found == [] and found.skipped == ()


def test_missing_folder_or_a_file(tmp_path: Path, tiny_model_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model directory not found"):
        discover_models(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        discover_models(tiny_model_path)


def test_a_leading_tilde_is_the_home_as_in_a_shell(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copyfile(tiny_model_path, tmp_path / "mine.gguf")
    assert read_gguf_info("~/mine.gguf").path == str(tmp_path / "mine.gguf")
    assert [info.path for info in discover_models("~")] == [str(tmp_path / "mine.gguf")]
    config = LoadConfig(server_path="~/bin/llama-server", adapter_path="~/lora.gguf")
    assert config.server_path == str(tmp_path / "bin" / "llama-server")
    assert config.adapter_path == str(tmp_path / "lora.gguf")
