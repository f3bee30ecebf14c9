"""Write a tiny llama-architecture GGUF whose greedy output is a known script.

Reasoning, tool calls and structured output have to be proved against the real ``llama-server``,
and a random-weight model never writes a well-formed ``<tool_call>``.  This model does: under greedy
decoding (``temperature: 0``) it says exactly what a :class:`Script` says, chosen by the prompt.

Usable as a module (:func:`make_scripted_model`) and as a script::

    python -m rocm_infer.scripted_model scripted.gguf --noise 0.5

This module needs the ``gguf`` and ``numpy`` packages (rocm_infer's ``demo`` extra); nothing else in
rocm_infer imports it.

How it is built
---------------

*Weights.*  Every token embedding is one-hot (the embedding width is the vocabulary size rounded
up to a whole number of 64-wide heads), and the one layer's output matrices (``attn_output``,
``ffn_down``) are zero, so the residual stream reaches the final RMSNorm holding exactly the
current token's one-hot vector.  Column ``i`` of ``output.weight`` (kept in F32) is then the logit
vector after token ``i``: a large logit for ``i``'s successor and fixed base logits for everything
else.  Greedy decoding walks a successor table: the next token depends only on the current token.

*Vocabulary* (SentencePiece "llama" tokenizer, ``add_space_prefix`` off, no merges):

* ``<unk>``, ``<s>``, ``<|im_end|>`` (end of turn and end of sequence) and ``<|im_start|>``;
* a CONTROL cue token ``<|cue:NAME|>`` per script, and for ``nothink`` the USER_DEFINED token
  ``"\\n\\n"`` (a two-character CONTROL token could be assembled by SentencePiece merges);
* ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>`` as single USER_DEFINED tokens;
* every printable ASCII character (space as ``"\u2581"``) and ``"\\n"``, so a GBNF or json_schema
  grammar can spell anything, and the 256 byte tokens for whatever else a prompt holds;
* the pieces the scripts are cut into, USER_DEFINED: they print as themselves (the chat parser
  sees ``<think>`` and ``<tool_call>``), and the prompt tokenizer keeps them whole.

llama.cpp's vocabulary loader refuses two tokens with the same text (``token_to_id`` must stay as
long as ``id_to_token``), and a token has one successor, so every piece of every script is a text
used nowhere else.  Scripts are cut at tags and before whitespace (``" user"``, ``" wants"``); a piece
whose text is taken grows by the next character (``<tool_call>`` -> ``<tool_call>\\n`` ->
``<tool_call>\\n{``), and one that cannot grow merges into the piece before it.  A tag is a single
token only in the first script that uses it: in :data:`DEFAULT_SCRIPTS`, ``default`` owns
``<think>``, ``</think>``, ``<tool_call>`` and ``</tool_call>``.  Two texts are never pieces: the
tool-call trigger ``<tool_call>\\n`` (a token with exactly that text would have to be one of the
server's trimmed "preserved" tokens, and every request with tools would fail with a 400), and any
piece that would change how a generation prompt ends (checked by replaying llama.cpp's
special-token split on each one).

*Chat template* (:data:`SCRIPTED_CHAT_TEMPLATE`, written for this model; :func:`chat_template` for
other scripts): ChatML turns; tools in the system turn, one JSON object each inside ``<tools>``;
assistant history with ``reasoning_content`` as a ``<think>`` block and tool calls as Hermes blocks
``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``; tool results as
``<tool_response>`` blocks in one user turn.  Because the next token depends only on the last one,
the generation prompt ends with a *cue* token that picks the script, first match wins:

1. ``enable_thinking`` defined and false -> ``nothink``, after an empty think block
   (``<think>\\n\\n</think>\\n\\n``, whose last token is the nothink cue);
2. the last message has role ``tool`` -> ``answer``;
3. the last user message's content is a script name (exactly) -> that script;
4. otherwise -> ``default``.

The generation prompt, cue included, is the prefix llama-server's chat parser strips, so a cue
never shows up in what a client receives.  llama-server matches none of its hand-written formats to
this template and runs its differential template analysis (the "auto-parser"), which settles on
the generic ``peg-native`` chat format (``/slots`` shows it per request): tag-based reasoning
between ``<think>`` and ``</think>``, plain content, JSON-native tool calls between per-call
markers ``<tool_call>\\n`` and ``</tool_call>``.  ``/props`` reports ``supports_tools``,
``supports_tool_calls`` and ``supports_parallel_tool_calls``.

Thinking off: llama-server sets ``enable_thinking`` to false from the request field
``"chat_template_kwargs": {"enable_thinking": false}``, from ``"reasoning_effort": "none"``, and for
the whole server from ``--reasoning off``.  ``"reasoning_budget_tokens": 0`` (alias
``thinking_budget_tokens``; ``--reasoning-budget 0`` for the server) does not touch the template:
the sampler forces ``</think>`` right after the model's own ``<think>`` token, so ``default`` gives no
reasoning and still makes its tool call.  The budget only sees the exact ``<think>`` token, so it
never cuts ``think_forever`` (whose think block starts with a longer piece).

What it can and cannot script
-----------------------------

* Any text, in order, then end of turn; or then a ``loop`` text repeated until ``max_tokens`` or the
  client leaves.  A script cannot react to anything but its cue: not to the rest of the prompt, the
  tools offered (names and arguments are whatever the script says) or the history.
* A one-character script is impossible (its only piece would be a character token).
* Where a grammar is active the model follows its script while the grammar allows each piece, and
  otherwise falls back to single characters.  With ``tools`` (``tool_choice`` ``auto``)
  llama-server's lazy tool-call grammar wakes on the text ``<tool_call>\\n``: valid scripted calls
  pass unchanged, ``call_forever``'s string grows until ``max_tokens`` (finish reason ``length``,
  the call's arguments cut off mid-string: not valid JSON), and ``bad_args`` is repaired: the
  unclosed object is closed by fallback characters, so the server sends a call with valid
  arguments and the city cut short, never an error or broken JSON.  ``tool_choice: "required"``
  with a script that makes no call cannot end the turn: the fallback writes characters until
  ``max_tokens``.  Without ``tools`` there is no grammar and the same
  text comes back verbatim as content.  ``response_format`` (with ``reasoning_format: "none"``,
  else the grammar allows a think block first) overrides every script but ``json`` under a schema
  it fits.
* The fallback is steered so that JSON values end: script pieces, specials and bytes are never
  chosen by it, whitespace, ``,``, ``{``, ``[`` and ``\\`` are disfavoured, ``"`` is favoured (strings
  hold one character), and runs of other characters (numbers) follow a ranking shuffled by
  ``seed``, so they end.  ``noise`` adds seeded random logits on top, so the choice among allowed
  characters is pseudo-random but reproducible; with ``noise=0`` ties go to the lowest token id.
  :data:`GRAMMAR_NOISE` lets json_schema grammars finish objects with integer, boolean, enum,
  string, array and nested fields in well under 64 tokens.  The model has no
  sense of position, so a grammar that keeps offering the same choice could still run it to
  ``max_tokens``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import gguf
import numpy as np
import numpy.typing as npt

from .tiny_model import write_gguf

__all__ = [
    "DEFAULT_SCRIPTS",
    "GRAMMAR_NOISE",
    "SCRIPTED_CHAT_TEMPLATE",
    "THINK_END",
    "THINK_START",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "Script",
    "chat_template",
    "main",
    "make_scripted_model",
]


@dataclass(frozen=True, slots=True)
class Script:
    """What the model says after one cue.

    ``text`` is said once, in order; then ``loop`` is repeated forever (until ``max_tokens`` or the
    client closes).  With an empty ``loop`` the turn ends after ``text``.
    """

    text: str
    loop: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not isinstance(self.loop, str):
            raise TypeError("Script text and loop must be strings")
        if not self.text and not self.loop:
            raise ValueError("a Script needs text or a loop")


THINK_START = "<think>"
THINK_END = "</think>"
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


def _tool_call(name: str, arguments: str) -> str:
    """A Hermes tool call block with raw ``arguments`` text (so broken JSON can be scripted)."""
    return f'{TOOL_CALL_START}\n{{"name": "{name}", "arguments": {arguments}}}\n{TOOL_CALL_END}'


_PARIS_CALL = _tool_call("get_weather", '{"city": "Paris"}')
_TIME_CALL = _tool_call("get_time", '{"zone": "CET"}')

DEFAULT_SCRIPTS: Mapping[str, Script] = MappingProxyType(
    {
        "default": Script(f"{THINK_START}The user wants the weather. I will call get_weather.{THINK_END}{_PARIS_CALL}"),
        "answer": Script("It is sunny in Paris today."),
        "nothink": Script("Hello! How can I help?"),
        "plain": Script("Hi there."),
        "two_calls": Script(f"{_PARIS_CALL}\n{_TIME_CALL}"),
        "think_forever": Script(f"{THINK_START}Let me think.", loop=" Still thinking."),
        "call_forever": Script(f'{TOOL_CALL_START}\n{{"name": "get_weather", "arguments": {{"city": "', loop="aaaa"),
        "bad_args": Script(
            f'{TOOL_CALL_START}\n{{"name": "get_weather", "arguments": {{"city": "Paris"\n{TOOL_CALL_END}'
        ),
        "json": Script('{"city": "Paris", "temp": 21}'),
    }
)

# Scripts the template's cues name without being asked for by the user's text.
_REQUIRED = ("default", "answer", "nothink")
_NOTHINK = "nothink"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")

# Recommended ``noise`` for grammar-constrained requests (see the module docstring).
GRAMMAR_NOISE = 0.5

_UNK = "<unk>"
_BOS = "<s>"
_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"
# The empty think block of the thinking-off generation prompt; its last token is the nothink cue.
_EMPTY_THINK = f"{THINK_START}\n\n{THINK_END}\n\n"
_NOTHINK_CUE = "\n\n"
_ASSISTANT_TURN = f"{_IM_START}assistant\n"
# llama-server arms the lazy tool-call grammar on this text; a single token with exactly this text
# would have to be a "preserved" token (a trimmed marker), or every request with tools fails.
_TRIGGER_WORDS = (f"{TOOL_CALL_START}\n",)

_SPACE = "\u2581"  # SentencePiece writes a space as U+2581; llama.cpp escapes prompt spaces to it
_CHARS = (*(chr(c) for c in range(0x20, 0x7F)), "\n")

# Logits (at temperature 0 only their order matters).  A successor always wins when allowed.
_SUCCESSOR_LOGIT = 30.0
_NEVER = -40.0  # specials, cues, bytes: only if a grammar allows nothing else
_PIECE = -20.0  # script pieces come only after their predecessor
# Single characters, for when a grammar forbids the successor.  JSON is the usual grammar, and the
# model only knows its current token, so these push every choice towards finishing the value:
_CHAR_BIAS = {
    '"': 6.0,  # a string ends after one character; a free value is a string
    "\\": -8.0,  # no escapes unless the grammar insists
    ",": -3.0,  # another item or property only where the grammar requires one: "]" or "}" instead
    "{": -1.0,  # nesting only where nothing else fits
    "[": -1.0,
    " ": -3.0,  # whitespace only where nothing else fits
    "\n": -3.0,
}
_EMPTY_STRING = -8.0  # '"' right after '"': no empty strings
# A free character (not JSON punctuation, a quote, a backslash or whitespace) rarely follows one
# ranked at or above it, so a run of them (a number) ends within as many characters as there are.
_STRUCTURE = frozenset('",:]}{[\\ \n')
_BACKWARD = -8.0
_RMS_EPS = 1e-5


def _cue_text(name: str) -> str:
    return _NOTHINK_CUE if name == _NOTHINK else f"<|cue:{name}|>"


def _generation_tail(name: str) -> str:
    """What the template writes after the last turn when it cues script ``name``."""
    return _ASSISTANT_TURN + (_EMPTY_THINK if name == _NOTHINK else _cue_text(name))


def chat_template(scripts: Mapping[str, Script] = DEFAULT_SCRIPTS) -> str:
    """The Jinja chat template for a model of ``scripts``; raises ValueError for bad script names."""
    _check_names(scripts)
    names = ", ".join(f"'{name}'" for name in scripts)
    # Literal text is emitted through {{- '...' -}} pieces: "{%-" after a literal newline would eat it.
    return (
        "{%- set script_names = [" + names + "] -%}\n"
        "{%- set ns = namespace(last_role='', last_user='') -%}\n"
        "{%- for message in messages -%}\n"
        "{%- set ns.last_role = message.role -%}\n"
        "{%- if message.role == 'user' and message.content is string -%}"
        "{%- set ns.last_user = message.content -%}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if tools -%}\n"
        "{{- '<|im_start|>system\\n' -}}\n"
        "{%- if messages and messages[0].role == 'system' -%}{{- messages[0].content ~ '\\n\\n' -}}{%- endif -%}\n"
        "{{- 'You can use these tools, each described by a JSON schema:\\n<tools>' -}}\n"
        "{%- for tool in tools -%}{{- '\\n' ~ (tool | tojson) -}}{%- endfor -%}\n"
        "{{- '\\n</tools>\\nTo use one, answer with its name and arguments as one JSON object between tags:\\n' -}}\n"
        '{{- \'<tool_call>\\n{"name": "tool name", "arguments": {"argument": "value"}}\\n</tool_call>\' -}}\n'
        "{{- '<|im_end|>\\n' -}}\n"
        "{%- elif messages and messages[0].role == 'system' -%}\n"
        "{{- '<|im_start|>system\\n' ~ messages[0].content ~ '<|im_end|>\\n' -}}\n"
        "{%- endif -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if message.role == 'system' -%}\n"
        "{%- if not loop.first -%}{{- '<|im_start|>system\\n' ~ message.content ~ '<|im_end|>\\n' -}}{%- endif -%}\n"
        "{%- elif message.role == 'user' -%}\n"
        "{{- '<|im_start|>user\\n' ~ message.content ~ '<|im_end|>\\n' -}}\n"
        "{%- elif message.role == 'assistant' -%}\n"
        "{{- '<|im_start|>assistant\\n' -}}\n"
        "{%- if message.reasoning_content is string and message.reasoning_content -%}"
        "{{- '<think>\\n' ~ message.reasoning_content ~ '\\n</think>\\n\\n' -}}{%- endif -%}\n"
        "{%- if message.content is string -%}{{- message.content -}}{%- endif -%}\n"
        "{%- if message.tool_calls -%}\n"
        "{%- for tool_call in message.tool_calls -%}\n"
        "{%- if not loop.first or message.content -%}{{- '\\n' -}}{%- endif -%}\n"
        "{%- set call = tool_call.function if tool_call.function is defined else tool_call -%}\n"
        '{{- \'<tool_call>\\n{"name": "\' ~ call.name ~ \'", "arguments": \' -}}\n'
        "{%- if call.arguments is string -%}{{- call.arguments -}}{%- else -%}{{- call.arguments | tojson -}}"
        "{%- endif -%}\n"
        "{{- '}\\n</tool_call>' -}}\n"
        "{%- endfor -%}\n"
        "{%- endif -%}\n"
        "{{- '<|im_end|>\\n' -}}\n"
        "{%- elif message.role == 'tool' -%}\n"
        "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}\n"
        "{{- '\\n<tool_response>\\n' ~ message.content ~ '\\n</tool_response>' -}}\n"
        "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "{{- '<|im_start|>assistant\\n' -}}\n"
        "{%- if enable_thinking is defined and not enable_thinking -%}{%- set script = 'nothink' -%}\n"
        "{%- elif ns.last_role == 'tool' -%}{%- set script = 'answer' -%}\n"
        "{%- elif ns.last_user in script_names -%}{%- set script = ns.last_user -%}\n"
        "{%- else -%}{%- set script = 'default' -%}\n"
        "{%- endif -%}\n"
        "{%- if script == 'nothink' -%}{{- '<think>\\n\\n</think>\\n\\n' -}}\n"
        "{%- else -%}{{- '<|cue:' ~ script ~ '|>' -}}\n"
        "{%- endif -%}\n"
        "{%- endif -%}"
    )


def _check_names(scripts: Mapping[str, Script]) -> None:
    for name in _REQUIRED:
        if name not in scripts:
            raise ValueError(f"scripts must include {name!r} (the template cues it)")
    for name, script in scripts.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"script name {name!r} must be letters, digits, '_', '.' or '-'")
        if not isinstance(script, Script):
            raise TypeError(f"scripts[{name!r}] must be a Script, not {type(script).__name__}")


SCRIPTED_CHAT_TEMPLATE: str = chat_template(DEFAULT_SCRIPTS)


def _segment_ends(text: str) -> list[int]:
    """Where the natural pieces of ``text`` end: tags alone, words with their leading whitespace.

    Whitespace before a tag (or at the end) joins the piece before it, so tags stay whole.
    """
    ends: list[int] = []
    pos = 0
    for chunk in re.split(r"(</?[A-Za-z_][\w-]*>)", text):
        if not chunk:
            continue
        if chunk.startswith("<") and chunk.endswith(">") and re.fullmatch(r"</?[A-Za-z_][\w-]*>", chunk):
            ends.append(pos + len(chunk))
        else:
            words = re.findall(r"\s*\S+", chunk)
            offset = pos
            for word in words:
                offset += len(word)
                ends.append(offset)
            if offset < pos + len(chunk):  # trailing whitespace
                if ends:
                    ends[-1] = pos + len(chunk)
                else:
                    ends.append(pos + len(chunk))
        pos += len(chunk)
    return ends


def _cut(
    text: str, taken: Callable[[str], bool], claim: Callable[[str], None], free: Callable[[str], None]
) -> list[str]:
    """Cut ``text`` into pieces no other place uses (``taken``), claiming each one.

    A taken piece grows by the following character; at the end of the text it merges into the
    piece before it.  Raises ValueError when no cut exists.
    """
    ends = _segment_ends(text)
    pieces: list[str] = []
    pos = 0
    while pos < len(text):
        end = next(e for e in ends if e > pos)
        while taken(text[pos:end]) and end < len(text):
            end += 1
        while taken(text[pos:end]):
            if not pieces:
                raise ValueError(f"cannot cut {text!r} into tokens no other script uses")
            previous = pieces.pop()
            free(previous)
            pos -= len(previous)
        claim(text[pos:end])
        pieces.append(text[pos:end])
        pos = end
    return pieces


def _partition(text: str, specials: Sequence[str]) -> list[tuple[bool, str]]:
    """llama.cpp's special-token pre-pass: each special text, longest first, splits the raw text."""
    fragments: list[tuple[bool, str]] = [(False, text)]
    for special in specials:
        split: list[tuple[bool, str]] = []
        for is_token, fragment in fragments:
            if is_token:
                split.append((is_token, fragment))
                continue
            for i, part in enumerate(fragment.split(special)):
                if i:
                    split.append((True, special))
                if part:
                    split.append((False, part))
        fragments = split
    return fragments


def _tails_intact(specials: Sequence[str], cues: Mapping[str, str]) -> bool:
    """Whether each generation prompt still ends with its cue token (and ``</think>`` before nothink).

    Ties in length are tried in both orders: llama.cpp sorts specials by length with ``std::sort``.
    """
    by_length = sorted(specials, key=len, reverse=True)
    orders = (by_length, sorted(reversed(by_length), key=len, reverse=True))
    for name, cue in cues.items():
        tail = f"{_IM_END}\n" + _generation_tail(name)
        expected = [(True, THINK_END), (True, cue)] if name == _NOTHINK else [(True, cue)]
        for order in orders:
            if _partition(tail, order)[-len(expected) :] != expected:
                return False
    return True


@dataclass(frozen=True, slots=True)
class _Vocab:
    tokens: list[str]
    types: list[int]
    successor: list[int]
    bias: npt.NDArray[np.float64]
    chars: dict[str, int]  # single-character tokens by character
    eot: int


def _build_vocab(scripts: Mapping[str, Script]) -> _Vocab:
    cues = {name: _cue_text(name) for name in scripts}
    markers = (THINK_START, THINK_END, TOOL_CALL_START, TOOL_CALL_END)
    fixed_specials = [_UNK, _BOS, _IM_END, _IM_START, *cues.values(), *markers]
    for name, script in scripts.items():
        # A piece holding "\u2581" could be assembled by SentencePiece merges from a prompt's " x".
        for special in (_UNK, _BOS, _IM_END, _IM_START, _SPACE, *(c for c in cues.values() if c != _NOTHINK_CUE)):
            if special in script.text or special in script.loop:
                raise ValueError(f"script {name!r} contains the special token text {special!r}")

    # Texts already in the vocabulary, markers aside (a marker may be claimed once).
    reserved = {_UNK, _BOS, _IM_END, _IM_START, *cues.values(), *_TRIGGER_WORDS, *_CHARS, _SPACE}
    reserved |= {f"<0x{b:02X}>" for b in range(256)}
    used: dict[str, None] = {}  # insertion-ordered set of claimed piece texts

    def taken(piece: str) -> bool:
        if piece in reserved or piece in used or len(piece) < 2:
            return True
        return not _tails_intact([*fixed_specials, *used, piece], cues)

    def claim(piece: str) -> None:
        used[piece] = None

    def free(piece: str) -> None:
        del used[piece]

    cut: dict[str, tuple[list[str], list[str]]] = {}
    for name, script in scripts.items():
        cut[name] = (_cut(script.text, taken, claim, free), _cut(script.loop, taken, claim, free))
    if not _tails_intact([*fixed_specials, *used], cues):
        raise ValueError("the scripts' pieces break the prompt's cue tokens; reword them")

    tokens: list[str] = []
    types: list[int] = []
    biases: list[float] = []

    def add(text: str, ttype: gguf.TokenType, bias: float) -> int:
        tokens.append(text)
        types.append(int(ttype))
        biases.append(bias)
        return len(tokens) - 1

    add(_UNK, gguf.TokenType.UNKNOWN, _NEVER)
    add(_BOS, gguf.TokenType.CONTROL, _NEVER)
    eot = add(_IM_END, gguf.TokenType.CONTROL, 0.0)
    add(_IM_START, gguf.TokenType.CONTROL, _NEVER)
    ids: dict[str, int] = {}
    for cue in cues.values():
        # The nothink cue is plain text ("\n\n") in the prompt: USER_DEFINED keeps it whole however
        # the prompt is tokenized, where a two-character CONTROL token could be assembled by merges.
        ttype = gguf.TokenType.USER_DEFINED if cue == _NOTHINK_CUE else gguf.TokenType.CONTROL
        ids[cue] = add(cue, ttype, _NEVER)
    for marker in markers:
        ids[marker] = add(marker, gguf.TokenType.USER_DEFINED, _PIECE)
    chars: dict[str, int] = {}
    for ch in _CHARS:
        chars[ch] = ids[ch] = add(_SPACE if ch == " " else ch, gguf.TokenType.NORMAL, _CHAR_BIAS.get(ch, 0.0))
    for byte in range(256):
        add(f"<0x{byte:02X}>", gguf.TokenType.BYTE, _NEVER)
    for piece in used:
        if piece not in ids:
            ids[piece] = add(piece, gguf.TokenType.USER_DEFINED, _PIECE)

    successor = [eot] * len(tokens)
    for name, (text_pieces, loop_pieces) in cut.items():
        chain = [ids[cues[name]], *(ids[p] for p in text_pieces)]
        loop = [ids[p] for p in loop_pieces]
        for current, following in zip(chain, chain[1:] + (loop[:1] or [eot]), strict=True):
            successor[current] = following
        for current, following in zip(loop, loop[1:] + loop[:1], strict=True):
            successor[current] = following
    return _Vocab(tokens, types, successor, np.asarray(biases), chars, eot)


def _logits(vocab: _Vocab, rng: np.random.Generator, noise: float) -> npt.NDArray[np.float64]:
    """``[current, next]`` logits: base biases, character-pair penalties, seeded noise, successors."""
    n = len(vocab.tokens)
    logits = np.tile(vocab.bias, (n, 1))
    free = np.asarray([i for ch, i in vocab.chars.items() if ch not in _STRUCTURE])
    rank = rng.permutation(len(free))
    logits[np.ix_(free, free)] += np.where(rank[None, :] <= rank[:, None], _BACKWARD, 0.0)
    logits[vocab.chars['"'], vocab.chars['"']] += _EMPTY_STRING
    if noise:
        logits += noise * rng.standard_normal((n, n))
    logits[np.arange(n), vocab.successor] = _SUCCESSOR_LOGIT
    return logits


def _tensors(
    logits: npt.NDArray[np.float64], *, n_embd: int, n_layer: int, n_ff: int
) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
    """llama weights (PyTorch ``[out, in]`` layout) that turn ``logits[current]`` into the output."""
    n_vocab = logits.shape[0]
    embd = np.zeros((n_vocab, n_embd), dtype=np.float32)
    embd[np.arange(n_vocab), np.arange(n_vocab)] = 1.0
    yield "token_embd.weight", embd
    square = np.zeros((n_embd, n_embd), dtype=np.float32)
    for i in range(n_layer):
        yield f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            yield f"blk.{i}.{name}.weight", square
        yield f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32)
        yield f"blk.{i}.ffn_gate.weight", np.zeros((n_ff, n_embd), dtype=np.float32)
        yield f"blk.{i}.ffn_up.weight", np.zeros((n_ff, n_embd), dtype=np.float32)
        yield f"blk.{i}.ffn_down.weight", np.zeros((n_embd, n_ff), dtype=np.float32)
    yield "output_norm.weight", np.ones(n_embd, dtype=np.float32)
    # The final RMSNorm turns the one-hot residual into `scale` at the current token's index.
    scale = 1.0 / np.sqrt(1.0 / n_embd + _RMS_EPS)
    out = np.zeros((n_vocab, n_embd), dtype=np.float32)
    out[:, :n_vocab] = (logits.T / scale).astype(np.float32)
    yield "output.weight", out


_HEAD_DIM = 64
_N_FF = 64
_CONTEXT_LENGTH = 4096


def make_scripted_model(
    path: str | os.PathLike[str],
    *,
    scripts: Mapping[str, Script] = DEFAULT_SCRIPTS,
    seed: int = 0,
    noise: float = 0.0,
    name: str = "rocm-infer-scripted",
    n_layer: int = 1,
    n_ff: int = _N_FF,
) -> pathlib.Path:
    """Write the scripted GGUF to ``path`` and return it as a :class:`pathlib.Path`.

    ``scripts`` must hold ``default``, ``answer`` and ``nothink`` (the template cues them); other
    names are chosen by a last user message equal to the name.  ``seed`` and ``noise`` only matter
    where a grammar overrides the script (see the module docstring).  The same arguments always
    give the same bytes.  The file is written under a temporary name next to ``path`` and renamed
    into place.

    ``n_layer`` and ``n_ff`` size the transformer layers, whose outputs are all zero: more or
    wider layers make the model costlier to run (weight-bound, for speculative decoding with the
    one-layer model as its draft) without changing a token it says.

    Raises ValueError for a script that cannot be cut into tokens of its own, a bad script name,
    a negative ``noise`` or a size below 1; TypeError for a value of the wrong type.
    """
    for size_name, size in (("n_layer", n_layer), ("n_ff", n_ff)):
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"{size_name} must be an int, not {type(size).__name__}")
        if size < 1:
            raise ValueError(f"{size_name} must be >= 1, not {size}")
    if not isinstance(noise, int | float) or isinstance(noise, bool):
        raise TypeError(f"noise must be a number, not {type(noise).__name__}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, not {noise!r}")
    if not isinstance(scripts, Mapping):
        raise TypeError(f"scripts must be a mapping of names to Script, not {type(scripts).__name__}")
    template = chat_template(scripts)
    vocab = _build_vocab(scripts)
    n_vocab = len(vocab.tokens)
    n_embd = -(-n_vocab // _HEAD_DIM) * _HEAD_DIM
    logits = _logits(vocab, np.random.default_rng(seed), float(noise))

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(name)
    writer.add_description("scripted test model: greedy decoding follows a fixed successor table")
    writer.add_context_length(_CONTEXT_LENGTH)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_embd // _HEAD_DIM)
    writer.add_head_count_kv(n_embd // _HEAD_DIM)
    writer.add_rope_dimension_count(_HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(_RMS_EPS)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(vocab.types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(vocab.eot)
    writer.add_eot_token_id(vocab.eot)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(template)

    for tensor_name, array in _tensors(logits, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff):
        # output.weight stays F32 so successor and noise logits keep their order exactly; the rest
        # is zeros and ones, exact in F16.  1-D norm weights must be F32 for llama.cpp.
        keep = array.ndim == 1 or tensor_name == "output.weight"
        writer.add_tensor(tensor_name, array if keep else array.astype(np.float16))

    out = pathlib.Path(path)
    return write_gguf(writer, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the model with the default scripts and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grammar-fallback choices")
    parser.add_argument("--noise", type=float, default=0.0, help=f"random logits under a grammar (try {GRAMMAR_NOISE})")
    args = parser.parse_args(argv)
    print(make_scripted_model(args.path, seed=args.seed, noise=args.noise))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
