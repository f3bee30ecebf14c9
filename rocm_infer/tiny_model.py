"""Write a tiny llama-architecture GGUF model with random weights.

The SDK's integration tests and ``make demo`` need *a* model that a real ``llama-server`` loads and
runs quickly on a couple of CPU cores, without downloading anything.  Random weights are enough for
that, but a random byte-level model prints unreadable bytes, so this model has a word-level
SentencePiece ("llama") vocabulary of common English words: whatever it generates is readable
(if meaningless) English, and prompts tokenize into whole words.

Usable both as a module (:func:`make_tiny_model`, :func:`demo_model`) and as a script::

    python -m rocm_infer.tiny_model tiny.gguf --seed 0

The same seed always produces a byte-identical file, so callers may cache the result.

This module needs the ``gguf`` and ``numpy`` packages (rocm_infer's ``demo`` extra);
nothing else in rocm_infer imports it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

import gguf
import numpy as np
import numpy.typing as npt

__all__ = ["CHAT_TEMPLATE", "DEMO_MODEL_NAME", "WORDS", "demo_model", "main", "make_tiny_model", "write_gguf"]

DEMO_MODEL_NAME = "tiny-llama.gguf"

# SentencePiece marks a preceding space with U+2581 ("▁") instead of " ".
SPACE = "\u2581"

# ChatML: llama.cpp's Jinja engine renders it, and its legacy (non-Jinja) template detector recognises
# "<|im_start|>" as chatml too, so the server works with either --jinja or --no-jinja.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Roughly frequency-ordered common English words (lowercase ASCII only). Duplicates are dropped
# when the vocabulary is built, so the list does not need to be curated by hand.
WORDS: tuple[str, ...] = tuple(
    """
    the of and to a in is it you that he was for on are with as i his they be at one have this from
    or had by word but what some we can out other were all there when up use your how said an each
    she which do their time if will way about many then them write would like so these her long make
    thing see him two has look more day could go come did number sound no most people my over know
    water than call first who may down side been now find any new work part take get place made live
    where after back little only round man year came show every good me give our under name very
    through just form sentence great think say help low line differ turn cause much mean before move
    right boy old too same tell does set three want air well also play small end put home read hand
    port large spell add even land here must big high such follow act why ask men change went light
    kind off need house picture try us again animal point mother world near build self earth father
    head stand own page should country found answer school grow study still learn plant cover food
    sun four between state keep eye never last let thought city tree cross farm hard start might
    story saw far sea draw left late run while press close night real life few north open seem
    together next white children begin got walk example ease paper group always music those both mark
    often letter until mile river car feet care second book carry took science eat room friend began
    idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
    usual young ready above ever red list though feel talk bird soon body dog family direct pose leave
    song measure door product black short numeral class wind question happen complete ship area half
    rock order fire south problem piece told knew pass since top whole king space heard best hour
    better true during hundred five remember step early hold west ground interest reach fast verb sing
    listen six table travel less morning ten simple several vowel toward war lay against pattern slow
    center love person money serve appear road map rain rule govern pull cold notice voice unit power
    town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
    correct able pound done beauty drive stood contain front teach week final gave green oh quick
    develop ocean warm free minute strong special mind behind clear tail produce fact street inch
    multiply nothing course stay wheel full force blue object decide surface deep moon island foot
    system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
    check game shape equate hot miss brought heat snow tire bring yes distant fill east paint language
    among grand ball yet wave drop heart am present heavy dance engine position arm wide sail material
    size vary settle speak weight general ice matter circle pair include divide syllable felt perhaps
    pick sudden count square reason length represent art subject region energy hunt probable bed
    brother egg ride cell believe fraction forest sit race window store summer train sleep prove lone
    leg exercise wall catch mount wish sky board joy winter sat written wild instrument kept glass
    grass cow job edge sign visit past soft fun bright gas weather month million bear finish happy
    hope flower clothe strange gone jump baby eight village meet root buy raise solve metal whether
    push seven paragraph third shall held hair describe cook floor either result burn hill safe cat
    century consider type law bit coast copy phrase silent tall sand soil roll temperature finger
    industry value fight lie beat excite natural view sense ear else quite broke case middle kill son
    lake moment scale loud spring observe child straight consonant nation dictionary milk speed method
    organ pay age section dress cloud surprise quiet stone tiny climb cool design poor lot experiment
    bottom key iron single stick flat twenty skin smile crease hole trade melody trip office receive
    row mouth exact symbol die least trouble shout except wrote seed tone join suggest clean break
    lady yard rise bad blow oil blood touch grew cent mix team wire cost lost brown wear garden equal
    sent choose fell fit flow fair bank collect save control decimal gentle woman captain practice
    separate difficult doctor please protect noon whose locate ring character insect caught period
    indicate radio spoke atom human history effect electric expect crop modern element hit student
    corner party supply bone rail imagine provide agree thus capital chair danger fruit rich thick
    soldier process operate guess necessary sharp wing create neighbor wash bat rather crowd corn
    compare poem string bell depend meat rub tube famous dollar stream fear sight thin triangle planet
    hurry chief colony clock mine tie enter major fresh search send yellow gun allow print dead spot
    desert suit current lift rose continue block chart hat sell success company subtract event
    particular deal swim term opposite wife shoe shoulder spread arrange camp invent cotton born
    determine quart nine truck noise level chance gather shop stretch throw shine property column
    molecule select wrong gray repeat require broad prepare salt nose plural anger claim continent
    oxygen sugar death pretty skill women season solution magnet silver thank branch match suffix
    especially fig afraid huge sister steel discuss forward similar guide experience score apple
    bought led pitch coat mass card band rope slip win dream evening condition feed tool total basic
    smell valley nor double seat arrive master track parent shore division sheet substance favor
    connect post spend chord fat glad original share station dad bread charge proper bar offer segment
    slave duck instant market degree populate chick dear enemy reply drink occur support speech nature
    range steam motion path liquid log meant quotient teeth shell neck fox jumps lazy quick brown hello
    computer program data code server model token stream answer request response network file memory
    engine process thread queue signal error retry health check timeout window message user assistant
    system chat story garden river bridge castle dragon forest lantern candle window mirror shadow
    whisper thunder silver golden ancient quiet gentle bright happy calm brave clever curious eager
    """.split()
)

# Single characters every vocabulary gets so that arbitrary prompts tokenize into something sensible.
_ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PUNCTUATION = ".,!?;:'\"()[]{}<>-_/\\@#$%^&*+=~`|"
# The most common words also get a capitalised form, for sentence starts in prompts.
_N_CAPITALISED = 200

# Output-logit offsets (before the random part) per kind of token.  Only space-prefixed whole words
# (and a little punctuation) should ever be generated, so fragments, bytes and specials are pushed
# far down: a random model that emits "▁wor" or "<0x1F>" would print unreadable text.
_BIAS_WORD = 0.0
_BIAS_PUNCT = 4.0  # words compete with each other; "." and "," each only with the best word
_GENERATED_PUNCTUATION = ".,"
_BIAS_NEVER = -40.0

# Norm of each word's row in output.weight (excluding the bias column): the spread of word logits.
_WORD_LOGIT_SCALE = 4.0
# How many logits the positional heads' chosen position beats every other position by.
_POSITION_MARGIN = 20.0
_ROPE_BASE = 10000.0


def _unique(items: Iterable[str]) -> list[str]:
    """Keep the first occurrence of each item: the word list is frequency-ordered."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _prefixes(piece: str, start: int) -> list[str]:
    """All prefixes of ``piece`` from length ``start`` up to the whole piece.

    llama.cpp's SentencePiece tokenizer only merges two adjacent symbols when their concatenation is
    itself a token, so a whole word is reachable only if a chain of its prefixes is in the vocabulary.
    """
    return [piece[:n] for n in range(start, len(piece) + 1)]


def _build_vocab(words: Sequence[str], eos_logit_bias: float) -> tuple[list[str], list[float], list[int], list[float]]:
    """Build tokens, SentencePiece scores, token types and per-token output-logit biases.

    Scores decide merge order in the tokenizer: every space-prefixed piece outranks every piece
    without the space marker, and longer pieces of a word chain outrank shorter ones, so " hello"
    always ends up as the single token "▁hello" rather than letters.
    """
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    biases: list[float] = []

    def add(token: str, score: float, ttype: gguf.TokenType, bias: float) -> None:
        tokens.append(token)
        scores.append(score)
        types.append(int(ttype))
        biases.append(bias)

    # Ids 0/1/2 are llama.cpp's SPM defaults for unk/bos/eos (also written to the metadata).
    add("<unk>", 0.0, gguf.TokenType.UNKNOWN, _BIAS_NEVER)
    add("<s>", 0.0, gguf.TokenType.CONTROL, _BIAS_NEVER)
    add("</s>", 0.0, gguf.TokenType.CONTROL, eos_logit_bias)
    # The chat template's markers are single control tokens; llama.cpp recognises "<|im_end|>" by
    # its text as an end-of-generation token, so it gets the same bias as </s>.
    add("<|im_start|>", 0.0, gguf.TokenType.CONTROL, _BIAS_NEVER)
    add("<|im_end|>", 0.0, gguf.TokenType.CONTROL, eos_logit_bias)
    # Byte fallback: any UTF-8 text the pieces cannot cover becomes <0xXX> tokens.
    for byte in range(256):
        add(f"<0x{byte:02X}>", 0.0, gguf.TokenType.BYTE, _BIAS_NEVER)

    known = set(tokens)
    whole_words = {SPACE + w for w in words}

    # Single characters: what the tokenizer starts from (their own scores are never used).
    for ch in [SPACE, *_ALPHANUMERIC, *_PUNCTUATION]:
        if ch not in known:
            known.add(ch)
            bias = _BIAS_PUNCT if ch in _GENERATED_PUNCTUATION else _BIAS_NEVER
            add(ch, -1000.0, gguf.TokenType.NORMAL, bias)

    variants = [*words, *(w.capitalize() for w in words[:_N_CAPITALISED])]
    spaced = _unique(p for w in variants for p in _prefixes(SPACE + w, 2))
    bare = _unique(p for w in variants for p in _prefixes(w, 2))
    spaced += _unique(SPACE + p for p in _PUNCTUATION)
    # Spaced pieces score in [-0.5, 0), bare ones in [-2.5, -2): a spaced word's prefix chain always
    # runs to its end before any merge inside the word; bare pieces (for words right after a newline
    # or bracket, where SentencePiece sees no space) only fill in what is left.
    for group, base in ((spaced, 0.0), (bare, -2.0)):
        for piece in group:
            if piece in known:
                continue
            known.add(piece)
            score = base - 1.0 / len(piece)
            add(piece, score, gguf.TokenType.NORMAL, _BIAS_WORD if piece in whole_words else _BIAS_NEVER)
    return tokens, scores, types, biases


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float32]:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _offset_head_qk(
    head_dim: int, offset: int, context_length: int, x0: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Query and key weights (reading only residual dimension 0) for a head that attends ``offset`` back.

    With a constant query q and key k, RoPE makes the attention score a function of the distance d
    alone: sum_p |q_p| |k_p| cos(theta_p * (d - offset)) when k is q rotated by offset * theta_p.
    That peaks at d == offset; the weights are scaled until every other distance up to the context
    length scores at least ``_POSITION_MARGIN`` below it, so softmax puts practically all weight on
    that one token.  Such heads turn the model into a higher-order Markov chain whose greedy output
    runs through long cycles instead of settling on one word repeated forever.

    ``x0`` is the value residual dimension 0 has after the layer's RMSNorm.  Returns the
    (head_dim,) columns of attn_q and attn_k.
    """
    thetas = _ROPE_BASE ** (-2.0 * np.arange(head_dim // 2) / head_dim)
    dist = np.arange(context_length + 1, dtype=np.float64)
    profile = np.cos(np.outer(thetas, dist - offset)).sum(axis=0)
    margin = float(profile[offset] - np.delete(profile, offset).max())
    if margin <= 0:
        raise ValueError(f"head_dim {head_dim} cannot single out one position in {context_length} tokens")
    # score(d) = alpha^2 * x0^2 * profile(d) / sqrt(head_dim)  (llama scales q.k by 1/sqrt(head_dim))
    alpha = np.sqrt(_POSITION_MARGIN * np.sqrt(head_dim) / (margin * x0 * x0))
    q = np.zeros(head_dim, dtype=np.float32)
    k = np.zeros(head_dim, dtype=np.float32)
    q[0::2] = alpha
    # llama.cpp's RoPE ("norm" type) rotates adjacent pairs (2p, 2p+1) by +position * theta_p.
    k[0::2] = alpha * np.cos(offset * thetas)
    k[1::2] = alpha * np.sin(offset * thetas)
    return q, k


def _tensors(
    rng: np.random.Generator,
    biases: Sequence[float],
    *,
    context_length: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_ff: int,
) -> dict[str, npt.NDArray[np.float32]]:
    """Random llama weights (PyTorch [out, in] layout), shaped so the output reads like words.

    Residual dimension 0 is held constant: every token embedding has the same value there, and no
    block writes to it (row 0 of attn_output and ffn_down is zero).  Blocks therefore see a constant
    input feature, which the positional heads use, and after the final RMSNorm it acts as a bias
    input for the output layer: column 0 of output.weight carries per-token logit biases, which is
    how fragments, bytes and specials are kept out of the generated text.
    """
    n_vocab = len(biases)
    head_dim = n_embd // n_head
    # Every embedding has the same norm, with half its energy in dimension 0, so after RMSNorm
    # dimension 0 is exactly sqrt(n_embd / 2) at the first layer for any token.
    embd = rng.standard_normal((n_vocab, n_embd))
    embd[:, 1:] *= np.sqrt(n_embd - 1) / np.linalg.norm(embd[:, 1:], axis=1, keepdims=True)
    embd[:, 0] = np.sqrt(n_embd - 1)
    x0 = float(np.sqrt(n_embd / 2))

    # Equal-norm output rows so no word is a "hub" that wins for most contexts; the norm gives word
    # logits a spread of a few units, enough for greedy decoding to follow the context.
    out = rng.standard_normal((n_vocab, n_embd))
    out[:, 1:] *= _WORD_LOGIT_SCALE / np.linalg.norm(out[:, 1:], axis=1, keepdims=True)
    out[:, 0] = np.asarray(biases) / x0  # x0 is approximate here; a bias only needs to be large.

    t: dict[str, npt.NDArray[np.float32]] = {"token_embd.weight": embd.astype(np.float32)}
    proj = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        wq = _normal(rng, (n_embd, n_embd), proj)
        wk = _normal(rng, (n_embd, n_embd), proj)
        if i == 0:
            # Heads 0 and 1 of the first layer look exactly 1 and 2 tokens back.
            for head in range(min(2, n_head)):
                rows = slice(head * head_dim, (head + 1) * head_dim)
                q, k = _offset_head_qk(head_dim, head + 1, context_length, x0)
                wq[rows, :] = 0.0
                wk[rows, :] = 0.0
                wq[rows, 0] = q
                wk[rows, 0] = k
        wv = _normal(rng, (n_embd, n_embd), proj)
        wo = _normal(rng, (n_embd, n_embd), proj)
        gate = _normal(rng, (n_ff, n_embd), proj)
        up = _normal(rng, (n_ff, n_embd), proj)
        down = _normal(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff))
        # Values and the FFN ignore the constant feature (only queries and keys may read it): it would
        # add the same vector to every position's output, and the word best aligned with that vector
        # would then win almost everywhere under greedy decoding.
        for w in (wv, gate, up):
            w[:, 0] = 0.0
        wo[0, :] = 0.0
        down[0, :] = 0.0
        t[f"blk.{i}.attn_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        t[f"blk.{i}.attn_q.weight"] = wq
        t[f"blk.{i}.attn_k.weight"] = wk
        t[f"blk.{i}.attn_v.weight"] = wv
        t[f"blk.{i}.attn_output.weight"] = wo
        t[f"blk.{i}.ffn_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        t[f"blk.{i}.ffn_gate.weight"] = gate
        t[f"blk.{i}.ffn_up.weight"] = up
        t[f"blk.{i}.ffn_down.weight"] = down
    t["output_norm.weight"] = np.ones(n_embd, dtype=np.float32)
    t["output.weight"] = out.astype(np.float32)
    return t


def make_tiny_model(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_vocab_words: int = len(WORDS),
    context_length: int = 8192,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    eos_logit_bias: float = _BIAS_NEVER,
    fim: bool = False,
) -> pathlib.Path:
    """Write a tiny random llama GGUF to ``path`` and return it as a :class:`pathlib.Path`.

    ``n_vocab_words`` takes the first (most common) words of :data:`WORDS`.  ``eos_logit_bias`` is
    added to the logits of ``</s>`` and ``<|im_end|>``: the default makes end-of-generation
    practically never chosen, so tests get exactly the number of tokens they ask for; raise it
    (e.g. to 0) for a model that stops by itself now and then.  ``fim`` adds fill-in-the-middle
    tokens (``<|fim_prefix|>``, ``<|fim_suffix|>``, ``<|fim_middle|>``, named in the metadata) at
    the end of the vocabulary, so llama-server's ``/infill`` works; without it the file is the same
    as before the option existed.

    The file is written under a temporary name next to ``path`` and renamed into place, so a reader
    never sees a half-written model and concurrent writers of the same seed are harmless.
    """
    if n_embd % n_head or (n_embd // n_head) % 2:
        raise ValueError("n_embd must split into n_head heads of even size")
    out = pathlib.Path(path)
    words = _unique(WORDS)[: max(1, n_vocab_words)]
    tokens, scores, types, biases = _build_vocab(words, eos_logit_bias)
    fim_ids: dict[str, int] = {}
    if fim:
        for key, text in (("pre", "<|fim_prefix|>"), ("suf", "<|fim_suffix|>"), ("mid", "<|fim_middle|>")):
            fim_ids[key] = len(tokens)
            tokens.append(text)
            scores.append(0.0)
            types.append(int(gguf.TokenType.CONTROL))
            biases.append(_BIAS_NEVER)
    rng = np.random.default_rng(seed)
    tensors = _tensors(
        rng,
        biases,
        context_length=context_length,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_ff=n_ff,
    )

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(f"rocm-infer-tiny-llama-seed{seed}{'-fim' if fim else ''}")
    writer.add_description("random-weight test model with a word-level vocabulary")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(_ROPE_BASE)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for key, token_id in fim_ids.items():
        writer.add_uint32(f"tokenizer.ggml.fim_{key}_token_id", token_id)

    for name, array in tensors.items():
        # F16 halves the file; 1-D norm weights must stay F32 for llama.cpp.
        writer.add_tensor(name, array.astype(np.float16) if array.ndim == 2 else array)

    return write_gguf(writer, out)


def write_gguf(writer: gguf.GGUFWriter, out: pathlib.Path) -> pathlib.Path:
    """Write ``writer``'s model to ``out`` atomically: under a temporary name next to it, then
    renamed into place, so a reader never sees a half-written model and concurrent writers of the
    same file are harmless. Returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.chmod(0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def demo_model(directory: str | os.PathLike[str]) -> pathlib.Path:
    """The tiny demo model (seed 0) in ``directory``, made there first if it is not there yet."""
    path = pathlib.Path(directory) / DEMO_MODEL_NAME
    if not path.exists():
        make_tiny_model(path, seed=0)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the model and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    print(make_tiny_model(args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
