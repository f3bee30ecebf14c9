"""Speculative decoding on the CPU: tokens/s with and without a draft, on weight-bound models.

    python benchmarks/speculative.py [--tokens 64] [--rounds 3] [--smoke]

Two weight-bound targets (F16; a decode step costs what reading the weights
costs), each generating ``--tokens`` greedy tokens (``ignore_eos``) under each
setting, one llama-server at a time: no speculation; a small draft of the same
vocabulary (``draft_model_path``, ``draft_max`` 8); and the draft-free
``ngram-simple`` mode (``--spec-type``).

* A random target (n_embd 2048, 4 layers, n_ff 8192, the word vocabulary)
  with the tiny demo model as its draft: random weights never agree, so this
  is what a draft costs when it is always wrong.
* The scripted model made weight-bound (8 layers, n_ff 16384, outputs zero:
  it says what the one-layer scripted model says) with the one-layer model
  as its draft: a draft that always agrees, the most speculation can gain.

It reports llama-server's own decode tokens/s (median of the rounds), the
ratio to no speculation on the same target, how many drafted tokens were
accepted, and whether the text stayed the same. There is no goal on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _model import demo_model

import rocm_infer
from rocm_infer.scripted_model import DEFAULT_SCRIPTS, Script, make_scripted_model
from rocm_infer.tiny_model import make_tiny_model

PROMPT = "Once upon a time"
STORY = "story"  # the scripted models' script of that name
SCRIPTS = {**DEFAULT_SCRIPTS, STORY: Script("Once upon a time", loop=" there was a model that said it again.")}


@dataclass(frozen=True, slots=True)
class Setting:
    """One way of decoding one target, and what it gave."""

    target: str
    name: str
    tokens_per_second: float  # llama-server's decode tokens/s, median of the rounds
    ratio: float  # to no speculation on the same target
    drafted: int  # tokens proposed over all rounds
    accepted: int  # of them, accepted by the target
    same_text: bool  # the greedy text matched the one without speculation


async def _decode(
    path: Path, config: rocm_infer.LoadConfig, tokens: int, rounds: int, *, scripted: bool
) -> tuple[list[Any], str]:
    async with rocm_infer.load_model(path, config=config) as model:
        await model.generate(PROMPT, max_tokens=2).collect()  # the weights are paged in
        results = []
        for _ in range(rounds):
            if scripted:  # a script that loops until max_tokens; the draft says the same
                story = [rocm_infer.Message("user", STORY)]
                results.append(await model.chat(story, max_tokens=tokens, temperature=0.0))
            else:
                results.append(await model.generate(PROMPT, max_tokens=tokens, ignore_eos=True, temperature=0.0))
    return [r.metrics for r in results], results[-1].text


async def _target(label: str, make: Callable[[], Path], draft: Path, tokens: int, rounds: int) -> list[Setting]:
    path = await asyncio.to_thread(make)
    base = rocm_infer.LoadConfig(parallel_slots=1, context_len=1024)
    settings = {
        "no speculation": base,
        "draft model (draft_max 8)": dataclasses.replace(base, draft_model_path=str(draft), draft_max=8),
        "ngram-simple (draft-free)": dataclasses.replace(base, speculative=("ngram-simple",)),
    }
    figures: list[Setting] = []
    plain_text, plain_rate = "", 0.0
    for name, config in settings.items():
        metrics, text = await _decode(path, config, tokens, rounds, scripted=label.startswith("scripted"))
        rate = statistics.median(m.decode_tokens_per_sec for m in metrics)
        plain_text, plain_rate = plain_text or text, plain_rate or rate
        figures.append(
            Setting(
                target=label,
                name=name,
                tokens_per_second=rate,
                ratio=rate / plain_rate,
                drafted=sum(m.draft_tokens for m in metrics),
                accepted=sum(m.draft_accepted for m in metrics),
                same_text=text == plain_text,
            )
        )
    return figures


async def run(*, tokens: int = 64, rounds: int = 3, smoke: bool = False) -> list[Setting]:
    n_embd, n_layer, n_ff = (128, 2, 256) if smoke else (2048, 4, 8192)
    scripted_layers, scripted_ff = (2, 256) if smoke else (8, 16384)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small_scripted = make_scripted_model(work / "scripted-draft.gguf", scripts=SCRIPTS)
        random_target = (
            f"random (n_embd {n_embd}, {n_layer} layers, n_ff {n_ff}), the tiny demo model as draft",
            lambda: make_tiny_model(
                work / "random.gguf", n_embd=n_embd, n_layer=n_layer, n_head=n_embd // 64, n_ff=n_ff
            ),
            demo_model(),
        )
        scripted_target = (
            f"scripted ({scripted_layers} layers, n_ff {scripted_ff}), the one-layer scripted model as draft",
            lambda: make_scripted_model(
                work / "scripted.gguf", scripts=SCRIPTS, n_layer=scripted_layers, n_ff=scripted_ff
            ),
            small_scripted,
        )
        figures: list[Setting] = []
        for label, make, draft in (random_target, scripted_target):
            figures += await _target(label, make, draft, tokens, rounds)
            (work / "random.gguf").unlink(missing_ok=True)  # noqa: ASYNC240 (one big model on disk at a time)
    return figures


def report(figures: list[Setting]) -> str:
    lines = ["Speculative decoding, weight-bound targets, llama-server's decode tokens/s:"]
    for f in figures:
        if f.name == "no speculation":
            lines.append(f"  target {f.target}:")
        accepted = f", {f.accepted}/{f.drafted} drafted tokens accepted" if f.drafted else ""
        lines.append(
            f"    {f.name}: {f.tokens_per_second:.1f} tok/s ({f.ratio:.2f}x){accepted}"
            f"{'' if f.same_text else ', a different text'}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a small model and few tokens, to check the harness")
    args = parser.parse_args()
    if args.smoke:
        figures = await run(tokens=8, rounds=1, smoke=True)
    else:
        figures = await run(tokens=args.tokens, rounds=args.rounds)
    print(report(figures))


if __name__ == "__main__":
    asyncio.run(main())
