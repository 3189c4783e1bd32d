"""Tokenizers from GGUF metadata, and chat-template rendering.

``tokenizer_from_gguf`` rebuilds a Hugging Face ``tokenizers.Tokenizer`` for
GGUF files whose ``tokenizer.ggml.model`` is ``"gpt2"`` (byte-level BPE: GPT-2,
SmolLM, Llama 3, Qwen) or ``"llama"`` (SentencePiece: Llama 2, Mistral 7B,
TinyLlama). The byte-level pre-tokenizer follows ``tokenizer.ggml.pre`` the
way llama.cpp does (e.g. "smollm" splits digits individually before the GPT-2
regex, "llama-bpe" and "qwen2" have their own regexes).

Every tokenizer tinygraph hands out is a :class:`SafeTokenizer`: the
``tokenizers`` object behind the same surface, whose Rust panics (pyo3's
``PanicException``, a BaseException) and errors become :class:`TokenizerError`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .errors import LoadError, UnsupportedModelError

# Regexes as written in the models' own tokenizer.json files (Oniguruma syntax).
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre value -> pre-tokenizer family (names as llama.cpp's converter writes them).
_PRE_FAMILY = {
    **dict.fromkeys(("gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"), "digits+gpt2"),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3", "pixtral"), "llama3"),
    **dict.fromkeys(("qwen2", "qwen3", "stablelm2", "deepseek-r1-qwen", "megrez", "hunyuan"), "qwen2"),
}

TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4


def _byte_level_table() -> tuple[set[str], list[str]]:
    """GPT-2's byte -> printable-char table: (alphabet, char for each byte 0..255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:  # unprintable bytes are shifted past 255, in byte order
            chars.append(chr(256 + extra))
            extra += 1
    return set(chars), chars


_ALPHABET, _BYTE_CHAR = _byte_level_table()


def _byte_level_spelling(token: str) -> str:
    """A normal token as the merges spell it.

    llama.cpp stores byte-level tokens in GPT-2's spelling, except that some
    (e.g. a lone U+FFFD) come back raw; re-spell those from their UTF-8 bytes so
    the vocabulary and the merges agree.
    """
    if set(token) <= _ALPHABET:
        return token
    return "".join(_BYTE_CHAR[b] for b in token.encode("utf-8"))


def _pre_tokenizer(pre: str | None) -> tuple[Any, bool]:
    """Return (pre_tokenizer, ignore_merges) for a ``tokenizer.ggml.pre`` value."""
    fam = _PRE_FAMILY.get(str(pre or "").lower())
    if fam is None:
        warnings.warn(
            f"GGUF tokenizer pre-type {pre!r} is not known to tinygraph; using the GPT-2 split pattern",
            stacklevel=3,
        )
        fam = "gpt2"
    byte_level_no_re = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if fam == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    if fam == "digits+gpt2":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]), False
    rx = _LLAMA3_RE if fam == "llama3" else _QWEN2_RE
    split = pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False)
    # Llama 3's tokenizer.json sets ignore_merges: whole-word vocab hits win over merges.
    return pre_tokenizers.Sequence([split, byte_level_no_re]), fam == "llama3"


def tokenizer_from_gguf(reader: Any) -> SafeTokenizer:
    """Build a tokenizer from GGUF tokenizer metadata.

    Args:
        reader: a ``gguf.GGUFReader`` or a path to a ``.gguf`` file.

    ``tokenizer.ggml.model`` "gpt2" gives byte-level BPE, "llama" SentencePiece
    (see :func:`_spm_tokenizer`). Control tokens (``token_type`` 3) become
    special added tokens and user-defined ones (4) plain added tokens, so both
    encode atomically when written in the text. A BOS token is prepended when
    ``tokenizer.ggml.add_bos_token`` is true (default: false for "gpt2", true
    for "llama", as in llama.cpp) and ``add_special_tokens`` is not False.
    """
    from .gguf_loader import field_value, open_reader

    where = "GGUF"
    if isinstance(reader, (str, os.PathLike)):
        from pathlib import Path

        where = str(reader)
        reader = open_reader(Path(reader))
    model = field_value(reader, "tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise UnsupportedModelError(
            f"{where}: GGUF tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2' and "
            "SentencePiece 'llama'); use the model's tokenizer.json instead"
        )
    tokens: list[str] | None = field_value(reader, "tokenizer.ggml.tokens")
    merges: list[str] | None = field_value(reader, "tokenizer.ggml.merges")
    if not tokens:
        raise LoadError(f"{where}: tokenizer.ggml.tokens is missing or empty")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise LoadError(f"{where}: tokenizer.ggml.tokens must be an array of strings")
    if merges is not None and (not isinstance(merges, list) or not all(isinstance(m, str) for m in merges)):
        raise LoadError(f"{where}: tokenizer.ggml.merges must be an array of strings")
    types: list[int] = field_value(reader, "tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
    if not isinstance(types, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in types):
        raise LoadError(f"{where}: tokenizer.ggml.token_type must be an array of integers")
    if len(types) != len(tokens):
        raise LoadError(f"{where}: {len(tokens)} tokens but {len(types)} token types")
    if model == "llama":
        return SafeTokenizer(_spm_tokenizer(reader, where, tokens, types), where)

    vocab: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        # Added tokens match raw text, so only normal tokens are re-spelled.
        key = t if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) else _byte_level_spelling(t)
        vocab.setdefault(key, i)  # duplicates (rare padding entries) keep their first id
    pairs: list[tuple[str, str]] = []
    for k, m in enumerate(merges or []):
        a, sep, b = m.partition(" ")
        if not sep:
            raise LoadError(f"GGUF: malformed merge {m!r} (expected 'left right')")
        # tokenizers panics (a BaseException, not an Exception) on a merge whose result is not in
        # the vocabulary, so check every merge here
        for piece in (a, b, a + b):
            if piece not in vocab:
                raise LoadError(f"GGUF: merge {k} {m!r} uses {piece!r}, which is not in the vocabulary")
        pairs.append((a, b))

    pre, ignore_merges = _pre_tokenizer(field_value(reader, "tokenizer.ggml.pre"))
    try:
        bpe = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges, fuse_unk=False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # tokenizers raises bare Exception (or a pyo3 panic) on bad vocab/merges
        raise LoadError(f"GGUF: tokenizer vocab/merges are inconsistent: {exc}") from exc
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()

    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    if field_value(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None and 0 <= bos < len(tokens):
        b = tokens[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{b}:0 $A:0", pair=f"{b}:0 $A:0 {b}:1 $B:1", special_tokens=[(b, int(bos))]
        )
    return SafeTokenizer(tok, where)


# --------------------------------------------------------------------------- SentencePiece ("llama")
TOKEN_TYPE_UNKNOWN = 2
_SPACE = "\u2581"  # SentencePiece's visible space "▁"


def _spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Every pair of vocabulary pieces whose concatenation is a token, in merge order.

    llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose
    concatenation is the token of highest score (ties: the leftmost pair). A
    BPE whose merges are ranked by that score does the same; only the ties need
    care: Llama/Mistral vocabularies give every run of "▁" the same score, and
    llama.cpp's leftmost-first grows the first symbol of a run as far as the
    vocabulary allows. Ranking tied merges longer result first, then longer
    left part first, reproduces that.
    """
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, i in vocab.items():
        for k in range(1, len(tok)):
            a, b = tok[:k], tok[k:]
            if a in vocab and b in vocab:
                ranked.append((-scores[i], -len(tok), -k, a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def _spm_tokenizer(reader: Any, where: str, tokens: list[str], types: list[int]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes like llama.cpp's SPM tokenizer (``parse_special`` true).

    llama.cpp: the text is split at control, user-defined and unknown tokens
    written in it; each remaining fragment gets a " " prefix (when
    ``add_space_prefix``; llama.cpp adds it to the first fragment and to every
    fragment after a special token), spaces become "▁", and pieces merge by
    score; characters that end up in no token are spelled as ``<0xXX>`` byte
    tokens. Here: added tokens split the text, a Prepend/Replace normalizer
    (applied per fragment) adds the "▁", and a byte-fallback BPE with
    score-ranked merges (:func:`_spm_merges`) does the rest. Decoding turns "▁"
    back into spaces, reassembles byte tokens into UTF-8 and strips one leading
    space from the first token shown (as sentencepiece and HF's Llama tokenizer
    do; llama.cpp's detokenizer keeps it when it drops a leading BOS).
    """
    from tokenizers import normalizers

    from .gguf_loader import field_value

    n = len(tokens)
    scores = field_value(reader, "tokenizer.ggml.scores")
    if scores is None:
        # llama.cpp takes 0 for every score: then it merges leftmost pairs first, which no ranking
        # of merges reproduces in general
        warnings.warn(f"{where}: no tokenizer.ggml.scores; merges ranked by length only, so encodings "
                      "may differ from llama.cpp's", stacklevel=3)
        scores = [0.0] * n
    if (not isinstance(scores, list) or len(scores) != n
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in scores)):
        raise LoadError(f"{where}: tokenizer.ggml.scores must be {n} numbers (one per token, no NaN)")

    def token_id(key: str, default: int | None) -> int | None:
        v = field_value(reader, f"tokenizer.ggml.{key}", default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise LoadError(f"{where}: tokenizer.ggml.{key} = {v!r} is not a token id (vocabulary of {n})")
        return v

    # llama.cpp's defaults for "llama" vocabularies
    bos, eos, unk = token_id("bos_token_id", 1), token_id("eos_token_id", 2), token_id("unknown_token_id", 0)
    flags = {}
    for key, default in (("add_bos_token", True), ("add_eos_token", False), ("add_space_prefix", True)):
        v = field_value(reader, f"tokenizer.ggml.{key}", default)
        if not isinstance(v, (bool, int)):
            raise LoadError(f"{where}: tokenizer.ggml.{key} must be a boolean, got {v!r}")
        flags[key] = bool(v)

    vocab: dict[str, int] = {}
    names = list(tokens)
    for i, t in enumerate(tokens):
        if not t:  # llama.cpp renames empty tokens the same way
            names[i] = t = f"[EMPTY_{i}]"
        vocab[t] = i  # a duplicate keeps its last id, as llama.cpp's token_to_id does
    merges = _spm_merges(vocab, [float(x) for x in scores])
    has_bytes = all(f"<0x{b:02X}>" in vocab for b in range(256))
    try:
        bpe = models.BPE(vocab=vocab, merges=merges, unk_token=names[unk] if unk is not None else None,
                         fuse_unk=False, byte_fallback=has_bytes)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # tokenizers raises bare Exception (or a pyo3 panic) on bad input
        raise LoadError(f"{where}: SentencePiece vocabulary rejected by tokenizers: {exc}") from exc
    tok = Tokenizer(bpe)
    prefix = flags["add_space_prefix"]
    norm = [normalizers.Replace(" ", _SPACE)]
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend(_SPACE)] if prefix else []) + norm)
    dec = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))

    special = [AddedToken(names[i], special=True, normalized=False)
               for i, ty in enumerate(types) if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN)]
    user = [AddedToken(names[i], special=False, normalized=False)
            for i, ty in enumerate(types) if ty == TOKEN_TYPE_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    add_bos = flags["add_bos_token"] and bos is not None
    add_eos = flags["add_eos_token"] and eos is not None
    if add_bos or add_eos:
        single = " ".join([f"{names[bos]}:0"] * add_bos + ["$A:0"] + [f"{names[eos]}:0"] * add_eos)
        pair = single + " " + single.replace("$A", "$B").replace(":0", ":1")
        used = [(names[i], i) for i, on in ((bos, add_bos), (eos, add_eos)) if on]
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=used)
    return tok


# --------------------------------------------------------------------------- panic-safe wrapper
class TokenizerError(LoadError):
    """A tokenizer failed (or panicked) while loading, encoding or decoding."""


def _guarded(where: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into ``tokenizers``, turning its errors and Rust panics into TokenizerError."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # PanicException derives from BaseException, not Exception
        kind = "panicked" if not isinstance(exc, Exception) else "failed"
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"{where}: tokenizer {kind} in {what}: {msg}") from exc


class SafeTokenizer:
    """A ``tokenizers.Tokenizer`` behind the same surface, with errors turned into TokenizerError.

    ``encode``, ``encode_batch``, ``decode``, ``decode_batch``, ``token_to_id``,
    ``id_to_token``, ``get_vocab`` and ``get_vocab_size`` are checked; any other
    attribute is the wrapped tokenizer's (``.inner`` is the tokenizer itself).
    """

    def __init__(self, inner: Tokenizer, where: str = "tokenizer") -> None:
        self.inner = inner
        self.where = where

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"SafeTokenizer({self.where!r}, vocab={self.get_vocab_size()})"

    def _text(self, text: Any, what: str) -> None:
        if not isinstance(text, str):
            raise TokenizerError(f"{self.where}: {what} takes text (str), got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates, e.g. from undecodable stdin bytes
            raise TokenizerError(f"{self.where}: {what}: text is not valid Unicode ({exc.reason} at "
                                 f"position {exc.start})") from None

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any:
        """``Tokenizer.encode``: an ``Encoding`` (``.ids``, ``.tokens``)."""
        self._text(text, "encode")
        return _guarded(self.where, "encode", self.inner.encode, text, *args, **kwargs)

    def encode_batch(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        """``Tokenizer.encode_batch``."""
        for t in texts:
            self._text(t, "encode_batch")
        return _guarded(self.where, "encode_batch", self.inner.encode_batch, list(texts), *args, **kwargs)

    def decode(self, ids: Sequence[int], *args: Any, **kwargs: Any) -> str:
        """``Tokenizer.decode``: the text of ``ids``."""
        return _guarded(self.where, "decode", self.inner.decode, list(ids), *args, **kwargs)

    def decode_batch(self, seqs: Sequence[Sequence[int]], *args: Any, **kwargs: Any) -> list[str]:
        """``Tokenizer.decode_batch``."""
        return _guarded(self.where, "decode_batch", self.inner.decode_batch, [list(s) for s in seqs],
                        *args, **kwargs)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None."""
        return _guarded(self.where, "token_to_id", self.inner.token_to_id, token)

    def id_to_token(self, i: int) -> str | None:
        """The token of id ``i``, or None."""
        return _guarded(self.where, "id_to_token", self.inner.id_to_token, i)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        """Token -> id."""
        return _guarded(self.where, "get_vocab", self.inner.get_vocab, with_added_tokens=with_added_tokens)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        """Number of tokens."""
        return _guarded(self.where, "get_vocab_size", self.inner.get_vocab_size,
                        with_added_tokens=with_added_tokens)


# --------------------------------------------------------------------------- chat templates
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.S)


def _render_chatml(template: str | None, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    """Built-in ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message.

    If the template hard-codes a default system prompt (SmolLM2 does, used when
    the first message is not a system message), it is honoured too.
    """
    out: list[str] = []
    if messages and messages[0].get("role") != "system" and template:
        m = _CHATML_DEFAULT_SYSTEM.search(template)
        if m and "{{" not in m.group(1) and "{%" not in m.group(1):
            out.append(f"<|im_start|>system\n{m.group(1)}<|im_end|>\n")
    for msg in messages:
        out.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def apply_chat_template(
    template: str | None,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    *,
    template_name: str = "chat template",
    **kwargs: Any,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}]``) into a prompt string.

    Uses jinja2 in a bounded sandbox (:mod:`tinygraph.io.chat_template`: time,
    size and output limits) when it is installed; without it, or when
    ``template`` is None, falls back to built-in ChatML. A non-ChatML template
    without jinja2 raises LoadError rather than rendering the wrong format.
    Extra ``kwargs`` (``bos_token``, ``eos_token``, ...) are passed to the template.

    Raises:
        ChatTemplateError: (a LoadError) naming ``template_name`` and the line,
            for every failure of the template, including the limits.
    """
    if template is None:
        return _render_chatml(None, messages, add_generation_prompt)
    try:
        import jinja2  # noqa: F401  (optional dependency)
    except ImportError:
        if "<|im_start|>" in template:
            return _render_chatml(template, messages, add_generation_prompt)
        raise LoadError("this chat template is not ChatML; install jinja2 to render it") from None
    from .chat_template import render_chat_template

    return render_chat_template(template, template_name, messages=list(messages),
                                add_generation_prompt=add_generation_prompt, **kwargs)


__all__ = ["tokenizer_from_gguf", "apply_chat_template", "SafeTokenizer", "TokenizerError"]
