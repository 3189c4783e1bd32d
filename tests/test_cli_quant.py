"""The CLI with quantized weights (--quantize / --dequantize, the load line's bytes and weight
types), and streamed text that keeps a SentencePiece word's leading space."""
from __future__ import annotations

import io
import types

import pytest

from tinygraph.models import load_model
from tinygraph.run import memory_line, stream_text

from test_first_run import TEXT, _cli, model_dir  # noqa: F401


def test_cli_quantize_loads_quantized_weights_and_says_so(capsys, monkeypatch, model_dir):  # noqa: F811
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", TEXT, "--backend", "numpy",
                        "--max-new-tokens", 6, "--ignore-eos", "--quantize", "q8_0")
    assert rc == 0, err
    line = next(x for x in err.splitlines() if "loaded" in x)
    assert "q8_0 10" in line and "f32 5" in line and "KV cache" in line, line
    m = load_model(model_dir, backend="numpy", quantize="q8_0")
    ids = m.tokenizer.encode(TEXT, add_special_tokens=False).ids
    new = m.generate(ids, max_new_tokens=6, temperature=0, ignore_eos=True)[len(ids):]
    assert out == TEXT + m.tokenizer.decode(new) + "\n"
    rc, _, err = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", TEXT, "--backend", "numpy",
                      "--max-new-tokens", 1, "--quantize", "q9_9")
    assert rc == 2 and "q9_9" in err


def test_memory_line() -> None:
    use = {"weights": 143_000_000, "kv_cache": 94_000_000, "workspace": 0, "weight_types": {"f16": 61, "q8_0": 121}}
    assert memory_line(use, "float16") == "weights 143 MB (q8_0 121, f16 61), KV cache 94 MB float16"


class _SpmLike:
    """Decodes like a SentencePiece tokenizer: '▁' is a space, and the first token's space is dropped."""
    vocab = ["<s>", "▁The", "▁capital", "▁is", "▁Paris", "."]

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i == 0)).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text


def test_streamed_text_keeps_the_first_words_space() -> None:
    model = types.SimpleNamespace(
        tokenizer=_SpmLike(), max_context=64, config=types.SimpleNamespace(eos_token_ids=[]),
        generate_stream=lambda *a, **k: (t for t in [4, 5]))
    args = types.SimpleNamespace(ignore_eos=True, max_new_tokens=2, temperature=0.0, top_k=0, top_p=1.0, seed=None)
    out = io.StringIO()
    r = stream_text(args, model, [0, 1, 2, 3], out=out)
    assert out.getvalue() == " Paris." and r.text == " Paris."
