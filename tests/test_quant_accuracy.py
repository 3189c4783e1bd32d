"""Accuracy of block-quantized weights on the real model: SmolLM2-135M-Instruct requantized by
llama.cpp's llama-quantize (Q8_0, Q4_K_M, Q6_K, Q5_K_M, Q4_0, Q2_K), loaded with its block types
kept, must reproduce HF transformers' float32 greedy ids on the dequantized weights
(tests/fixtures/quant_accuracy, made by tools/make_quant_accuracy.py): NumPy float32 all 32 tokens
of every prompt, CUDA float16 at least the first 16.

The requantized files live in the user cache, outside the repo; where one is missing, the test
makes it when ``$TINYGRAPH_LLAMA_QUANTIZE`` names a llama-quantize binary, else it skips (CI has no
llama.cpp)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_quant_accuracy as mqa  # noqa: E402

REF: dict[str, Any] = json.loads(mqa.FIXTURE.read_text(encoding="utf-8"))
MIN_CUDA_F16_TOKENS = 16
# float16 activations move logits by up to a few hundredths; below this HF top-2 gap a differing
# pick is a near-tie, not an error (the tiny-model fixtures hold half precision to gaps >= 0.1)
F16_TIE = 0.1
_FLOAT_TYPES = {"f32": "f32", "f16": "f16", "bf16": "bf16"}


def test_fixture_covers_every_type_and_prompt() -> None:
    """The fixture was made for the types and prompts the tool names, N_NEW tokens each."""
    assert tuple(REF["types"]) == mqa.TYPES
    assert [p["name"] for p in REF["prompts"]] == [p["name"] for p in mqa.PROMPTS]
    assert REF["n_new"] == mqa.N_NEW
    for qtype, rec in REF["types"].items():
        assert len(rec["greedy"]) == len(REF["prompts"]), qtype
        assert all(len(ids) == mqa.N_NEW for ids in rec["greedy"]), qtype
        assert any(t.startswith("q") for t in rec["tensor_types"]), qtype


def _model_file(qtype: str) -> Path:
    """The requantized file the fixture was made from; made here with $TINYGRAPH_LLAMA_QUANTIZE
    when missing, else the test skips."""
    path = mqa.quant_path(qtype)
    if not path.is_file():
        exe = os.environ.get(mqa.ENV_QUANTIZE)
        if not exe:
            pytest.skip(f"{path.name} is not in {path.parent}: make it with `python tools/make_quant_accuracy.py "
                        f"quantize --llama-quantize BIN` or set ${mqa.ENV_QUANTIZE} to a llama-quantize binary")
        from tinygraph.hub import DownloadError
        try:
            mqa.requantize(exe, qtype, path)
        except DownloadError as e:
            pytest.skip(f"default model not downloadable here: {e}")
    want = REF["types"][qtype]["sha256"]
    got = mqa.sha256(path)
    if got != want:
        pytest.skip(f"{path} (sha256 {got[:12]}) is not the file the fixture was made from ({want[:12]}): "
                    "another llama-quantize build; rerun tools/make_quant_accuracy.py to renew the fixture")
    return path


def _quant_names(types: dict[str, int]) -> set[str]:
    return {t for t in types if t not in _FLOAT_TYPES}


def _first_diff(got: list[int], want: list[int]) -> int:
    """Length of the common prefix of ``got`` and ``want``."""
    n = 0
    while n < min(len(got), len(want)) and got[n] == want[n]:
        n += 1
    return n


def _explain(model: Any, prompt_ids: list[int], want: list[int], step: int, gaps: list[float]) -> str:
    """At the first differing step: tinygraph's top-2 logits there and HF's top-1/top-2 gap."""
    logits = _logits(model, list(prompt_ids) + list(want[:step]))
    top = np.argsort(-logits, kind="stable")[:2]
    return (f"first difference at token {step}: HF picks {want[step]} (HF gap to its runner-up "
            f"{gaps[step]:.4f}); tinygraph's logits there: {int(top[0])}: {logits[top[0]]:.4f}, "
            f"{int(top[1])}: {logits[top[1]]:.4f}, HF's pick {logits[want[step]]:.4f}")


def _logits(model: Any, ctx: list[int]) -> np.ndarray:
    return np.asarray(model.step(ctx, 0, "logits"), np.float64).reshape(-1)


def _forced_disagreements(model: Any, prompt_ids: list[int], want: list[int], gaps: list[float],
                          steps: int, tie: float) -> list[str]:
    """Teacher-forced check of HF's first ``steps`` tokens (each step sees HF's ids before it):
    tinygraph's argmax must be HF's pick, except at a near-tie, where HF's top-2 gap is below
    ``tie`` and HF's pick is within ``tie`` of tinygraph's top logit. Returns the steps that fail."""
    bad = []
    for k in range(steps):
        logits = _logits(model, list(prompt_ids) + list(want[:k]))
        top = int(np.argmax(logits))
        tied = gaps[k] < tie and logits[want[k]] >= logits[top] - tie
        if top != want[k] and not tied:
            bad.append(f"token {k}: tinygraph {top} ({logits[top]:.4f}), HF {want[k]} ({logits[want[k]]:.4f} "
                       f"here, HF gap {gaps[k]:.4f})")
    return bad


def _check_model(model: Any, qtype: str, min_tokens: int, tie: float = 0.0) -> list[int]:
    """Greedy-decode every prompt; each must match HF's ids for ``min_tokens`` tokens. With
    ``tie`` > 0, a prompt that parts earlier still passes when its first ``min_tokens`` tokens agree
    teacher-forced up to near-ties (see :func:`_forced_disagreements`). Returns the matched token
    counts per prompt."""
    rec = REF["types"][qtype]
    types = model.memory_usage()["weight_types"]
    assert _quant_names(types) == _quant_names(rec["tensor_types"]), (types, rec["tensor_types"])
    matched, errors = [], []
    for prompt, want, gaps in zip(REF["prompts"], rec["greedy"], rec["gaps"]):
        text = prompt["rendered"]
        assert model.tokenizer.encode(text, add_special_tokens=False).ids == prompt["ids"], prompt["name"]
        out = model.generate(prompt["ids"], max_new_tokens=mqa.N_NEW, temperature=0, ignore_eos=True)
        got = out[len(prompt["ids"]):]
        n = _first_diff(got, want)
        matched.append(n)
        if n < min_tokens and tie > 0:
            bad = _forced_disagreements(model, prompt["ids"], want, gaps, min_tokens, tie)
            if not bad:
                print(f"{qtype} {prompt['name']}: parts from HF at token {n}, a near-tie (HF gap {gaps[n]:.4f}); "
                      f"the first {min_tokens} agree teacher-forced")
                continue
            errors.append(f"{prompt['name']}: {n}/{len(want)} tokens equal; teacher-forced: " + "; ".join(bad))
        elif n < min_tokens:
            errors.append(f"{prompt['name']}: {n}/{len(want)} tokens equal; "
                          f"{_explain(model, prompt['ids'], want, n, gaps)}")
    print(f"{qtype}: tokens equal to HF per prompt: {matched} of {mqa.N_NEW}")
    assert not errors, f"{qtype}: " + "\n".join(errors)
    return matched


@pytest.mark.parametrize("qtype", mqa.TYPES)
def test_numpy_float32_reproduces_hf_greedy(qtype: str) -> None:
    from tinygraph.models import load_model
    path = _model_file(qtype)
    with load_model(path, dtype="float32", backend="numpy", max_context=256) as model:
        _check_model(model, qtype, mqa.N_NEW)


@pytest.mark.parametrize("qtype", mqa.TYPES)
def test_cuda_float16_reproduces_hf_greedy(qtype: str) -> None:
    from tinygraph.backends.cuda import driver
    if not driver.driver_available():
        pytest.skip(f"no CUDA driver/GPU: {driver.driver_unavailable_reason()}")
    from tinygraph.models import load_model
    path = _model_file(qtype)
    with load_model(path, dtype="float16", backend="cuda", max_context=256) as model:
        _check_model(model, qtype, MIN_CUDA_F16_TOKENS, tie=F16_TIE)
