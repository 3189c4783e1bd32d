"""SentencePiece ("llama") GGUF vocabularies, and tokenizers' panics at tinygraph's boundary.

References: tests/fixtures/spm holds the vocabularies of Mistral's real SentencePiece
models (v1 = Mistral 7B v0.1, the Llama 2 layout; v3 = Mistral 7B v0.3 with control and
user-defined tokens) as metadata-only GGUFs, and the ids ``sentencepiece`` itself gives
for tricky strings with llama.cpp's conventions (tools/make_spm_fixtures.py). A second,
independent reference is below: llama.cpp's SPM merge loop (llm_tokenizer_spm) written
out in Python, run on random strings.

One known difference between llama.cpp and sentencepiece, kept here as llama.cpp does
it: after a special token written in the text, llama.cpp adds the "▁" space prefix to
the next fragment again ("[INST] Hi" -> [INST], "▁", "▁Hi"), where sentencepiece (which
does not parse control tokens in text at all) has no such rule; the reference ids split
the text at special tokens first, so they follow llama.cpp.
"""

from __future__ import annotations

import gzip
import heapq
import json
import random
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from tinygraph.io import LoadError, load_checkpoint, tokenizer_from_gguf
from tinygraph.io.errors import UnsupportedModelError
from tinygraph.io.gguf_loader import field_value, open_reader
from tinygraph.io.tokenizer import SafeTokenizer, TokenizerError

FIX = Path(__file__).parent / "fixtures"
SPM = FIX / "spm"
SP = "\u2581"


@pytest.fixture(scope="module", params=["mistral_v1", "mistral_v3"])
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(gguf path, tokenizer, reference json) of a real SentencePiece vocabulary."""
    name = request.param
    path = tmp_path_factory.mktemp("spm") / f"{name}.gguf"
    path.write_bytes(gzip.decompress((SPM / f"{name}.gguf.gz").read_bytes()))
    ref = json.loads((SPM / f"{name}.json").read_text(encoding="utf-8"))
    return path, tokenizer_from_gguf(path), ref


# ------------------------------------------------------------------ llama.cpp's algorithm, as a reference
def llama_cpp_spm(text: str, vocab: dict[str, int], scores: list[float], add_prefix: bool = True) -> list[int]:
    """One plain-text fragment through llama.cpp's SPM tokenizer: merge the adjacent pair whose
    concatenation is the highest-scoring token (ties: leftmost), then byte-fallback."""
    sym = list(((" " if add_prefix else "") + text).replace(" ", SP))
    if not sym:
        return []
    nxt = [*range(1, len(sym)), -1]
    prev = list(range(-1, len(sym) - 1))
    heap: list[tuple[float, int, int, int]] = []

    def push(a: int, b: int) -> None:
        if a >= 0 and b >= 0 and (i := vocab.get(sym[a] + sym[b])) is not None:
            heapq.heappush(heap, (-scores[i], a, b, len(sym[a]) + len(sym[b])))

    for k in range(1, len(sym)):
        push(k - 1, k)
    while heap:
        _, a, b, n = heapq.heappop(heap)
        if not sym[a] or not sym[b] or len(sym[a]) + len(sym[b]) != n:
            continue  # stale: one side was merged since
        sym[a], sym[b] = sym[a] + sym[b], ""
        nxt[a] = nxt[b]
        if nxt[b] >= 0:
            prev[nxt[b]] = a
        push(prev[a], a)
        push(a, nxt[a])
    out, k = [], 0
    while k != -1:
        t = sym[k]
        out += [vocab[t]] if t in vocab else [vocab[f"<0x{c:02X}>"] for c in t.encode("utf-8")]
        k = nxt[k]
    return out


# ------------------------------------------------------------------ the real vocabularies
def test_real_vocab_matches_sentencepiece(real) -> None:
    _, tok, ref = real
    assert isinstance(tok, SafeTokenizer) and tok.get_vocab_size() == ref["vocab_size"]
    assert len(ref["cases"]) >= 40
    for c in ref["cases"]:
        enc = tok.encode(c["text"])  # add_special_tokens defaults to True: BOS first (add_bos_token)
        assert enc.ids == c["ids"], (c["text"], enc.tokens, c["pieces"])
        assert enc.tokens == c["pieces"], c["text"]
        assert tok.encode(c["text"], add_special_tokens=False).ids == c["ids"][1:], c["text"]


def test_real_vocab_decodes_like_sentencepiece(real) -> None:
    _, tok, ref = real
    for c in ref["cases"]:
        text, plain = c["text"], c["plain_ids"]
        assert tok.decode(plain, skip_special_tokens=False) == c["plain_decoded"], text
        if SP not in text:  # a literal "▁" in the text comes back as a space, as in sentencepiece
            ids = tok.encode(text, add_special_tokens=False).ids
            if not any(s in text for s in ("<s>", "</s>", "<unk>", "[INST]", "[REFERENCE_DOC")):
                assert tok.decode(ids) == text, text  # byte tokens reassembled, prefix space stripped


def test_real_vocab_matches_llama_cpp_algorithm(real) -> None:
    path, tok, _ = real
    r = open_reader(path)
    tokens, scores = field_value(r, "tokenizer.ggml.tokens"), field_value(r, "tokenizer.ggml.scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    rng = random.Random(7)
    chars = list(" \t\n\r.,;:!?'\"()-_/abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éüßñ中文한😀ठ") + ["  ", "    "]
    words = [t.replace(SP, " ") for t in tokens[1100:9000]]
    texts = [" " * n for n in range(1, 70)] + [f"a{' ' * n}b" for n in range(1, 40)]
    for k in range(600):
        if k % 2:
            texts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 50))))
        else:
            texts.append("".join(rng.choice(words) + " " * rng.choice((0, 0, 0, 1, 2, 5)) for _ in range(12)))
    for t in texts:
        assert tok.encode(t, add_special_tokens=False).ids == llama_cpp_spm(t, vocab, scores), repr(t)
        assert tok.decode(tok.encode(t).ids) == t, repr(t)


def test_real_vocab_special_tokens(real) -> None:
    _, tok, ref = real
    bos, eos = ref["bos_id"], ref["eos_id"]
    ids = tok.encode("Hi</s>").ids
    assert ids[0] == bos and ids[-1] == eos  # "</s>" in the text is the EOS token (parse_special)
    assert tok.decode(ids) == "Hi"  # skip_special_tokens defaults to True
    assert tok.decode(ids, skip_special_tokens=False) == "<s> Hi</s>"  # llama.cpp's piece text too
    assert tok.token_to_id("<s>") == bos and tok.id_to_token(eos) == "</s>"
    assert tok.encode("<0x41>", add_special_tokens=False).tokens[:2] == [f"{SP}<", "0"]  # bytes: not in text


# ------------------------------------------------------------------ a small synthetic vocabulary
def write_spm_gguf(path: Path, *, arch: str | None = None, tensors: bool = False, **meta) -> list[str]:
    """A tiny "llama" vocabulary: <unk>, <s>, </s>, 256 byte tokens, a few pieces (tied "▁" runs)."""
    pieces = [SP, SP * 2, SP * 4, SP * 8, "h", "e", "l", "o", "w", "r", "d", "!", "he", "ll", "llo", "hello",
              f"{SP}h", f"{SP}hello", f"{SP}w", "or", "ld", f"{SP}wor", f"{SP}world", "[INST]", "<tool>"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    types[tokens.index("[INST]")], types[tokens.index("<tool>")] = 3, 4
    scores = [0.0] * 259 + [-1e9 if set(p) == {SP} else -float(i) for i, p in enumerate(pieces)]
    w = gguf.GGUFWriter(str(path), arch or "llama")
    w.add_tokenizer_model(meta.pop("model", "llama"))
    w.add_token_list(tokens)
    if not meta.pop("no_scores", False):
        w.add_token_scores(meta.pop("scores", scores))
    w.add_token_types(types)
    w.add_bos_token_id(meta.pop("bos", 1))
    w.add_eos_token_id(2)
    for key, val in meta.items():  # add_bos_token / add_eos_token / add_space_prefix
        getattr(w, f"add_{key}")(val)
    if tensors:  # enough of a 1-layer LLaMA for load_checkpoint
        h, f, v = 16, 32, len(tokens)
        for k, v_ in (("block_count", 1), ("context_length", 32), ("embedding_length", h),
                      ("feed_forward_length", f), ("head_count", 2), ("head_count_kv", 2)):
            getattr(w, f"add_{k}")(v_)
        w.add_layer_norm_rms_eps(1e-5)
        rng = np.random.default_rng(0)
        shapes = {"token_embd.weight": (v, h), "output_norm.weight": (h,), "blk.0.attn_norm.weight": (h,),
                  "blk.0.ffn_norm.weight": (h,), "blk.0.attn_q.weight": (h, h), "blk.0.attn_k.weight": (h, h),
                  "blk.0.attn_v.weight": (h, h), "blk.0.attn_output.weight": (h, h),
                  "blk.0.ffn_gate.weight": (f, h), "blk.0.ffn_up.weight": (f, h), "blk.0.ffn_down.weight": (h, f)}
        for name, shape in shapes.items():
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


def test_small_vocab_merges_ties_and_bytes(tmp_path: Path) -> None:
    p = tmp_path / "v.gguf"
    tokens = write_spm_gguf(p)
    tok = tokenizer_from_gguf(p)
    vocab = {t: i for i, t in enumerate(tokens)}
    r = open_reader(p)
    scores = field_value(r, "tokenizer.ggml.scores")
    assert tok.encode("hello world!").tokens == ["<s>", f"{SP}hello", f"{SP}world", "!"]
    assert tok.encode("hé", add_special_tokens=False).tokens == [f"{SP}h", "<0xC3>", "<0xA9>"]  # byte fallback
    # "▁" runs all score -1e9 and "▁▁▁" is missing: llama.cpp's leftmost-first decides the split
    for n in range(1, 40):
        for t in (" " * n, f"he{' ' * n}llo", f"{' ' * n}!"):
            want = llama_cpp_spm(t, vocab, scores)
            assert tok.encode(t, add_special_tokens=False).ids == want, (repr(t), [tokens[i] for i in want])
            assert tok.decode(want) == t
    # special / user-defined tokens in the text are atomic; the next fragment gets a space prefix again
    assert tok.encode("[INST]hello<tool>hello").tokens == ["<s>", "[INST]", f"{SP}hello", "<tool>", f"{SP}hello"]
    # decoding strips one leading space, from the first token shown (as sentencepiece and HF do)
    assert tok.decode(tok.encode("[INST]hello").ids) == "hello"
    assert tok.decode(tok.encode("[INST]hello").ids, skip_special_tokens=False) == "<s>[INST] hello"


@pytest.mark.parametrize("flags, text, want_tokens, decoded", [
    ({"add_bos_token": False}, "hello", [f"{SP}hello"], "hello"),
    ({"add_eos_token": True}, "hello", ["<s>", f"{SP}hello", "</s>"], "hello"),
    ({"add_space_prefix": False}, "hello world", ["<s>", "hello", f"{SP}world"], "hello world"),
    ({"add_space_prefix": False, "add_bos_token": False}, " hello", [f"{SP}hello"], " hello"),
])
def test_small_vocab_flags(tmp_path: Path, flags: dict, text: str, want_tokens: list[str], decoded: str) -> None:
    p = tmp_path / "v.gguf"
    write_spm_gguf(p, **flags)
    tok = tokenizer_from_gguf(p)
    enc = tok.encode(text)
    assert enc.tokens == want_tokens
    assert tok.decode(enc.ids) == decoded


def test_missing_scores_warn(tmp_path: Path) -> None:
    p = tmp_path / "v.gguf"
    write_spm_gguf(p, no_scores=True)
    with pytest.warns(UserWarning, match="no tokenizer.ggml.scores"):
        tok = tokenizer_from_gguf(p)
    for t in ("hello world", "  hello", "ll ll!"):
        assert tok.decode(tok.encode(t).ids) == t


@pytest.mark.parametrize("meta, match", [
    ({"scores": [0.0, 1.0]}, "tokenizer.ggml.scores"),
    ({"bos": 100000}, "bos_token_id"),
    ({"model": "bert"}, "'bert' is not supported"),
])
def test_bad_metadata(tmp_path: Path, meta: dict, match: str) -> None:
    p = tmp_path / "bad.gguf"
    write_spm_gguf(p, **meta)
    err = UnsupportedModelError if meta.get("model") else LoadError
    with pytest.raises(err, match=match) as ei:
        tokenizer_from_gguf(p)
    assert str(p) in str(ei.value)  # the message names the file


def test_llama_gguf_model_loads_with_spm_tokenizer(tmp_path: Path) -> None:
    p = tmp_path / "tiny-llama.gguf"
    write_spm_gguf(p, tensors=True)
    ck = load_checkpoint(p)  # before: "no tokenizer" warning and tokenizer None
    assert ck.tokenizer is not None
    ids = ck.tokenizer.encode("hello world", add_special_tokens=False).ids
    assert ck.tokenizer.decode(ids) == "hello world"


# ------------------------------------------------------------------ panics and errors at the boundary
# Oniguruma gives up on this backtracking pattern ("retry-limit-in-match over") and tokenizers
# turns that into a Rust panic: pyo3_runtime.PanicException, a BaseException.
_BACKTRACK = {
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
    "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a|aa)+b"}, "behavior": "Isolated", "invert": False},
    "post_processor": None, "decoder": None,
    "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"},
}


def test_panic_in_encode_becomes_tokenizer_error(tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(FIX / "llama", d)
    (d / "tokenizer.json").write_text(json.dumps(_BACKTRACK))
    tok = load_checkpoint(d).tokenizer
    assert tok.encode("aaa b").ids  # works on short input
    with pytest.raises(TokenizerError, match=r"tokenizer panicked in encode: .*retry-limit") as ei:
        tok.encode("a" * 60)
    assert str(d / "tokenizer.json") in str(ei.value)
    assert isinstance(ei.value, ValueError) and type(ei.value.__cause__).__name__ == "PanicException"


def test_wrapper_converts_every_failure() -> None:
    class PanicException(BaseException):  # stand-in for pyo3_runtime.PanicException
        pass

    class Boom:
        def encode(self, *a, **k):
            raise PanicException("boom")

        def decode(self, *a, **k):
            raise Exception("bad id")  # tokenizers raises plain Exception

        def get_vocab_size(self, with_added_tokens: bool = True) -> int:
            return 3

    tok = SafeTokenizer(Boom(), "toy.json")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="toy.json: tokenizer panicked in encode: boom"):
        tok.encode("x")
    with pytest.raises(TokenizerError, match="failed in decode: bad id"):
        tok.decode([1])
    with pytest.raises(TokenizerError, match="takes text"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tok.encode("bad \udcff surrogate")  # what undecodable stdin bytes turn into
    assert tok.get_vocab_size() == 3


def test_real_tokenizer_errors_are_tinygraph_errors(real) -> None:
    _, tok, ref = real
    with pytest.raises(TokenizerError):
        tok.decode([ref["vocab_size"] + 10**12])  # not an id tokenizers can take
    with pytest.raises(TokenizerError):
        tok.encode("x\ud800")
