"""Tokenizers from GGUF metadata, and chat-template rendering.

``tokenizer_from_gguf`` rebuilds a Hugging Face ``tokenizers.Tokenizer`` for
GGUF files whose ``tokenizer.ggml.model`` is ``"gpt2"`` (byte-level BPE: GPT-2,
SmolLM, Llama 3, Qwen). The pre-tokenizer follows ``tokenizer.ggml.pre`` the
way llama.cpp does (e.g. "smollm" splits digits individually before the GPT-2
regex, "llama-bpe" and "qwen2" have their own regexes).
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


def tokenizer_from_gguf(reader: Any) -> Tokenizer:
    """Build a byte-level BPE ``tokenizers.Tokenizer`` from GGUF tokenizer metadata.

    Args:
        reader: a ``gguf.GGUFReader`` or a path to a ``.gguf`` file.

    Control tokens (``token_type`` 3) become special added tokens and
    user-defined ones (4) plain added tokens, so both encode atomically.
    A BOS token is prepended only when ``tokenizer.ggml.add_bos_token`` is true.
    """
    from .gguf_loader import field_value, open_reader

    if isinstance(reader, (str, os.PathLike)):
        from pathlib import Path

        reader = open_reader(Path(reader))
    model = field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedModelError(
            f"GGUF tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2'); "
            "use the model's tokenizer.json instead"
        )
    tokens: list[str] | None = field_value(reader, "tokenizer.ggml.tokens")
    merges: list[str] | None = field_value(reader, "tokenizer.ggml.merges")
    if not tokens:
        raise LoadError("GGUF: tokenizer.ggml.tokens is missing or empty")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise LoadError("GGUF: tokenizer.ggml.tokens must be an array of strings")
    if merges is not None and (not isinstance(merges, list) or not all(isinstance(m, str) for m in merges)):
        raise LoadError("GGUF: tokenizer.ggml.merges must be an array of strings")
    types: list[int] = field_value(reader, "tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
    if not isinstance(types, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in types):
        raise LoadError("GGUF: tokenizer.ggml.token_type must be an array of integers")
    if len(types) != len(tokens):
        raise LoadError(f"GGUF: {len(tokens)} tokens but {len(types)} token types")

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
    return tok


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
    **kwargs: Any,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}]``) into a prompt string.

    Uses jinja2 (sandboxed, as transformers does) when it is installed; without
    it, or when ``template`` is None, falls back to built-in ChatML. A non-ChatML
    template without jinja2 raises LoadError rather than rendering the wrong format.
    Extra ``kwargs`` (``bos_token``, ``eos_token``, ...) are passed to the template.
    """
    if template is None:
        return _render_chatml(None, messages, add_generation_prompt)
    try:
        import jinja2  # optional dependency
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        if "<|im_start|>" in template:
            return _render_chatml(template, messages, add_generation_prompt)
        raise LoadError("this chat template is not ChatML; install jinja2 to render it") from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **kwargs
        )
    except jinja2.exceptions.TemplateError as exc:
        raise LoadError(f"chat template failed to render: {exc}") from exc


__all__ = ["tokenizer_from_gguf", "apply_chat_template"]
