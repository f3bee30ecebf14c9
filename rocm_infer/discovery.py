"""Find the GGUF models in a folder: :func:`discover_models`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ModelNotFoundError, RocmInferError
from .gguf import read_gguf_info, shard_path, split_name
from .types import ModelInfo

__all__ = ["ModelList", "SkippedFile", "discover_models"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A ``*.gguf`` file :func:`discover_models` could not read: its path and why."""

    path: str
    error: RocmInferError

    @property
    def reason(self) -> str:
        return str(self.error)


class ModelList(list[ModelInfo]):
    """The models :func:`discover_models` found (a plain list of ModelInfo),
    with ``skipped``: the files it could not read, as :class:`SkippedFile`."""

    __slots__ = ("skipped",)

    def __init__(self, models: Iterable[ModelInfo] = (), skipped: Iterable[SkippedFile] = ()) -> None:
        super().__init__(models)
        self.skipped: tuple[SkippedFile, ...] = tuple(skipped)


def _gguf_files(directory: str, recursive: bool) -> list[str]:
    if not recursive:
        with os.scandir(directory) as entries:
            return [e.path for e in entries if e.name.lower().endswith(".gguf") and e.is_file()]
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if f.lower().endswith(".gguf")]
    return [f for f in found if os.path.isfile(f)]


def discover_models(directory: str | os.PathLike[str], recursive: bool = False) -> ModelList:
    """Read every ``*.gguf`` file in ``directory`` (and below it, with
    ``recursive``) and return their :class:`~rocm_infer.types.ModelInfo`,
    sorted by path.

    A split model (``name-00001-of-00003.gguf`` …) is listed once, by its
    first shard, with the size of all its shards. Files that cannot be read
    (not GGUF, truncated, a split model with a shard missing …) are not
    listed: they are reported in the result's ``skipped`` tuple, each with
    the error that :func:`~rocm_infer.read_gguf_info` raised, and logged at
    WARNING. Only headers are read, in the calling thread (blocking I/O: run
    it in a worker thread from async code).

    Raises :class:`~rocm_infer.errors.ModelNotFoundError` if ``directory``
    does not exist or is not a directory.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if not os.path.isdir(path):
        what = "model directory not found" if not os.path.exists(path) else "not a directory"
        raise ModelNotFoundError(path, message=f"{what}: {path!r}")
    files = sorted(_gguf_files(path, recursive))
    present = set(files)
    models: list[ModelInfo] = []
    skipped: list[SkippedFile] = []
    for file in files:
        split = split_name(file)
        if split is not None and split[1] != 1:
            prefix, _, count = split
            if shard_path(prefix, 1, count) in present:
                continue  # read with its first shard
            error: RocmInferError = ModelNotFoundError(
                shard_path(prefix, 1, count),
                message=f"shard {split[1]} of {count} of a split model whose first shard is missing",
            )
            skipped.append(SkippedFile(file, error))
            continue
        try:
            models.append(read_gguf_info(file))
        except RocmInferError as exc:
            skipped.append(SkippedFile(file, exc))
    for skip in skipped:
        logger.warning("skipped %s: %s", skip.path, skip.reason)
    return ModelList(models, skipped)
