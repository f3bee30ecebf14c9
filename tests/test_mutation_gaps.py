"""Tests for the bugs `make mutate` showed the other tests let through (scripts/mutate.py).

* llama-server itself answers /v1/embeddings in input order, so no test against it can tell
  whether the SDK places each vector by the ``index`` the answer gives it or by where it
  comes in the list; a proxy or another OpenAI-compatible server may well reorder.
* A model closed from another event loop is stopped at once; its pid must also be forgotten
  then, or the exit hook signals it again at exit, when it may belong to another process.
"""

from __future__ import annotations

import array
import base64
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rocm_infer.endpoints.embeddings import vectors_from
from rocm_infer.errors import ProtocolError


def encoded(values: list[float]) -> str:
    return base64.b64encode(array.array("f", values).tobytes()).decode()


def test_vectors_follow_the_index_not_the_order_of_the_answer() -> None:
    wanted = [[float(i), float(i) / 2, -float(i)] for i in range(8)]
    data = [{"index": i, "embedding": encoded(v), "object": "embedding"} for i, v in enumerate(wanted)]
    random.Random(7).shuffle(data)
    assert [item["index"] for item in data] != sorted(item["index"] for item in data)
    vectors = vectors_from({"data": data}, len(wanted))
    assert [v.tolist() for v in vectors] == wanted


def test_an_answer_that_repeats_an_index_is_a_protocol_error() -> None:
    data = [{"index": 0, "embedding": encoded([1.0])}, {"index": 0, "embedding": encoded([2.0])}]
    with pytest.raises(ProtocolError, match="repeats an index"):
        vectors_from({"data": data}, 2)


_CLOSED_FROM_ANOTHER_LOOP = """
import asyncio, sys
import rocm_infer

model = asyncio.run(rocm_infer.load_model(sys.argv[1]))  # a loop that then closes
asyncio.run(model.close())  # from another loop: stopped synchronously
"""


@pytest.mark.integration
def test_a_model_closed_from_another_loop_is_never_signalled_at_exit(
    tiny_model_path: Path, no_leaked_servers: None
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CLOSED_FROM_ANOTHER_LOOP, str(tiny_model_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "a model was closed from another event loop" in result.stderr
    # The exit hook's warning names every pid still tracked at exit: there must be none.
    assert "stopping llama-server pid(s)" not in result.stderr, result.stderr
