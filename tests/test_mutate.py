"""scripts/mutate.py's list is current: a refactor that makes it stale fails here, not only in `make mutate`."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import mutate
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutation", mutate.MUTATIONS, ids=lambda m: m.name)
def test_the_old_text_is_in_the_package_exactly_once(mutation: mutate.Mutation) -> None:
    source = (ROOT / mutation.file).read_text()
    assert source.count(mutation.old) == 1, f"{mutation.name}: its old text is not found once in {mutation.file}"
    assert mutate.mutated_source(mutation, source) != source


def _tests_in(path: Path) -> set[str]:
    """``name`` and ``Class::name`` of every test function in a test file."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef):
            found.update(
                f"{node.name}::{n.name}" for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return found


@pytest.mark.parametrize("mutation", mutate.MUTATIONS, ids=lambda m: m.name)
def test_the_tests_that_should_catch_it_exist(mutation: mutate.Mutation) -> None:
    assert mutation.tests
    for nodeid in mutation.tests:
        file, sep, name = nodeid.partition("::")
        assert sep and file.startswith("tests/test_"), f"{nodeid}: not a test node id"
        assert (ROOT / file).is_file(), f"{nodeid}: no such file"
        assert name.split("[")[0] in _tests_in(ROOT / file), f"{nodeid}: no such test"


def test_mutation_names_are_unique() -> None:
    names = [m.name for m in mutate.MUTATIONS]
    assert len(names) == len(set(names))


def test_a_stale_mutation_is_an_error_not_a_pass(tmp_path: Path) -> None:
    mutation = mutate.MUTATIONS[0]
    source = (ROOT / mutation.file).read_text()
    for stale in (source.replace(mutation.old, ""), source + "\n" + mutation.old):
        with pytest.raises(mutate.StaleMutationError, match="occurs"):
            mutate.mutated_source(mutation, stale)
    broken = dataclasses.replace(mutation, new=mutation.new + "    )(\n")
    with pytest.raises(mutate.StaleMutationError, match="does not compile"):
        mutate.mutated_source(broken, source)
    # Applied to a copy, the file is restored afterwards even when the run inside fails.
    copy = tmp_path / mutation.file
    copy.parent.mkdir(parents=True)
    copy.write_text(source)
    with pytest.raises(RuntimeError), mutate.applied(mutation, tmp_path):
        assert mutation.new in copy.read_text()
        raise RuntimeError
    assert copy.read_text() == source
