"""Dev tool: SentencePiece GGUF vocabulary fixtures and reference encodings.

Not a test dependency. Needs ``sentencepiece``, ``protobuf``, ``gguf`` and ``numpy``
in the environment that runs it, and real SentencePiece ``.model`` files. The
``mistral-common`` wheel ships Mistral's (no need to install it)::

    pip download --no-deps mistral-common && unzip -o mistral_common-*.whl 'mistral_common/data/*'
    python tools/make_spm_fixtures.py \\
        mistral_common/data/tokenizer.model.v1 \\
        mistral_common/data/mistral_instruct_tokenizer_240323.model.v3

For each model it writes ``tests/fixtures/spm/<name>.gguf.gz`` (tokenizer metadata
only, no tensors, gzip-compressed) and ``tests/fixtures/spm/<name>.json``: the
reference ids of tricky strings as llama.cpp tokenizes them (``parse_special``
true): the text is split at control / user-defined / unknown tokens written in
it (longest token first, as llama.cpp's partition does), every plain fragment is
encoded by ``sentencepiece`` itself (which adds the "▁" space prefix to each
fragment, as llama.cpp does after a special token), and BOS is prepended when
the GGUF says ``add_bos_token``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "spm"

# piece types: SentencePiece's enum numbers equal GGUF's tokenizer.ggml.token_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

STRINGS = [
    "Hello world",
    "Hello, world! How are you?",
    "The capital of France is",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "multiple   spaces    inside      here",
    " " * 20,
    "x" + " " * 37 + "y",
    "\n",
    "line1\nline2\n",
    "\n\nparagraph\n\n\n",
    "tab\tseparated\tvalues",
    "\t\tindented\n\t\t\tdeeper",
    "mixed\r\nline endings\r",
    "café naïve résumé façade",
    "combining e\u0301 accent",
    "Ünïcödé ÀÉÎÕÜ ẞ ß",
    "emoji 😀🎉👍🏽",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "中文测试：你好，世界！",
    "日本語のテキストです。",
    "한국어 텍스트",
    "Здравствуй, мир",
    "مرحبا بالعالم",
    "numbers 1234567890 3.14159 -42",
    "a" * 64,
    "ﬁ ligature, nbsp\u00a0here, zero\u200bwidth",
    '{"json": [1, 2, 3], "k": null}',
    "https://example.com/path?q=1&r=two#frag",
    "```python\ndef f(x):\n    return x * 2\n```",
    "▁already▁escaped",
    "<0x0A> is text, not a byte token",
    "<s>",
    "</s>",
    "<s>Hello</s>",
    "Hello <s> world </s>",
    "<s><s></s>",
    "<unk> unknown",
    "",
    " ",
]
# strings with this model's own special tokens are added from its vocabulary
SPECIAL_TEMPLATES = [
    "{0} What is 2+2? {1}",
    "{0}Hi{1}",
    "text{0}\n{1} more",
]


def _load(path: Path):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return proto, sp


def _partition(text: str, specials: dict[str, int]) -> list[str | int]:
    """Split ``text`` at special tokens the way llama.cpp's tokenizer_st_partition does."""
    frags: list[str | int] = [text] if text else []
    for tok in sorted(specials, key=len, reverse=True):
        out: list[str | int] = []
        for f in frags:
            if not isinstance(f, str):
                out.append(f)
                continue
            parts = f.split(tok)
            for k, p in enumerate(parts):
                if k:
                    out.append(specials[tok])
                if p:
                    out.append(p)
        frags = out
    return frags


def make(path: Path, name: str) -> None:
    import gguf
    import numpy as np

    proto, sp = _load(path)
    ns = proto.normalizer_spec
    if ns.name not in ("identity", "") or ns.remove_extra_whitespaces or not ns.escape_whitespaces:
        sys.exit(f"{path}: normalizer {ns.name!r} (remove_extra_whitespaces={ns.remove_extra_whitespaces}) "
                 "differs from what llama.cpp implements; its sentencepiece encodings are no reference")
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]
    ts = proto.trainer_spec
    add_prefix = bool(ns.add_dummy_prefix)

    OUT.mkdir(parents=True, exist_ok=True)
    raw = OUT / f"{name}.gguf"
    w = gguf.GGUFWriter(str(raw), "llama")
    w.add_name(f"{name} tokenizer fixture")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([float(np.float32(s)) for s in scores])
    w.add_token_types(types)
    w.add_bos_token_id(ts.bos_id)
    w.add_eos_token_id(ts.eos_id)
    w.add_unk_token_id(ts.unk_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(add_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gz = raw.with_suffix(".gguf.gz")
    gz.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=9, mtime=0))
    raw.unlink()

    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (UNKNOWN, CONTROL, USER_DEFINED)}
    extra = [t for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED) and t not in ("<s>", "</s>")][:2]
    strings = list(STRINGS)
    if len(extra) == 2:
        strings += [s.format(*extra) for s in SPECIAL_TEMPLATES]
    user = [t for t, ty in zip(tokens, types) if ty == USER_DEFINED][:1]
    strings += [f"see {u} here" for u in user]

    cases = []
    for s in strings:
        ids: list[int] = [ts.bos_id]
        for f in _partition(s, specials):
            ids += [f] if isinstance(f, int) else sp.encode(f, out_type=int)
        plain = sp.encode(s, out_type=int)  # no special-token parsing: the round trip
        cases.append({"text": s, "ids": ids, "pieces": [tokens[i] for i in ids],
                      "plain_ids": plain, "plain_decoded": sp.decode(plain)})
    ref = {
        "generated_by": "tools/make_spm_fixtures.py",
        "source": path.name,
        "sentencepiece": __import__("sentencepiece").__version__,
        "vocab_size": len(tokens),
        "bos_id": ts.bos_id, "eos_id": ts.eos_id, "unk_id": ts.unk_id,
        "add_space_prefix": add_prefix,
        "conventions": "ids = BOS + per-fragment sentencepiece ids, split at special tokens (llama.cpp, "
                       "parse_special=true); plain_ids = sentencepiece on the whole text (no BOS)",
        "cases": cases,
    }
    (OUT / f"{name}.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{name}: {len(tokens)} tokens, {gz.stat().st_size} bytes gz, {len(cases)} cases")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="SentencePiece .model files")
    args = ap.parse_args()
    for p in args.models:
        # tokenizer.model.v1 -> mistral_v1; mistral_instruct_tokenizer_240323.model.v3 -> mistral_v3
        name = "mistral_" + p.name.rsplit(".", 1)[-1] if "model.v" in p.name else p.stem
        make(p, name)


if __name__ == "__main__":
    main()
