"""Every model family against HF transformers' outputs saved in tests/fixtures (no torch here):
full-sequence logits, incremental decode through the KV cache, and greedy generation."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import KVCache, load_model, load_model_from_safetensors
from conftest import rel_err

FIX = Path(__file__).parent / "fixtures"
FAMILIES = ["gpt2", "gpt2_prefixed", "llama", "llama3", "mistral", "qwen2", "qwen3"]
DTYPES = {"float32": (1e-4, 8), "float16": (3e-2, 8), "bfloat16": (5e-2, 4)}


def _load(fam, backend, dtype="float32"):
    return load_model(FIX / fam, dtype=dtype, backend=backend)


@pytest.mark.parametrize("fam", FAMILIES)
def test_full_sequence_logits(fam, backend):
    ref = np.load(FIX / fam / "reference.npz")
    with _load(fam, backend) as m:
        hidden, cache = m(ref["input_ids"][0])
        assert isinstance(cache, KVCache) and cache.length == ref["input_ids"].shape[1]
        logits = m.get_logits(hidden).to_numpy()
    for t in range(logits.shape[0]):
        assert rel_err(logits[t], ref["logits"][0, t]) < 1e-4, f"position {t}"


@pytest.mark.parametrize("fam", FAMILIES)
def test_incremental_decode_and_greedy(fam, backend):
    ref = np.load(FIX / fam / "reference.npz")
    prompt, greedy = ref["input_ids"][0], ref["greedy"][0]
    with _load(fam, backend) as m:
        # prefill, then one token at a time through the KV cache, comparing every step's logits
        hidden, cache = m(prompt)
        steps = [m.get_logits(hidden).to_numpy()[-1]]
        for tok in greedy[len(prompt):-1]:
            hidden, cache = m([tok], past_key_values=cache)
            steps.append(m.get_logits(hidden).to_numpy()[-1])
        for k, (got, want) in enumerate(zip(steps, ref["decode_logits"])):
            assert rel_err(got, want) < 1e-4, f"decode step {k}"
        assert m.generate(prompt, max_new_tokens=8, temperature=0) == list(greedy)
        assert m.generate(prompt, max_new_tokens=8, temperature=0, use_cache=False) == list(greedy)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fam", ["gpt2", "llama", "qwen3"])
def test_half_precision(fam, dtype, backend):
    tol, n_same = DTYPES[dtype]
    ref = np.load(FIX / fam / "reference.npz")
    prompt, greedy = ref["input_ids"][0], ref["greedy"][0]
    with _load(fam, backend, dtype) as m:
        logits = m.get_logits(m(prompt)[0]).to_numpy()
        assert rel_err(logits, ref["logits"][0]) < tol
        out = m.generate(prompt, max_new_tokens=8, temperature=0)
    assert out[: len(prompt) + n_same] == list(greedy[: len(prompt) + n_same])


def test_v4_and_v5_configs_agree(tmp_path):
    d = tmp_path / "llama3_v4"
    shutil.copytree(FIX / "llama3", d)
    shutil.copy(d / "config_v4.json", d / "config.json")
    ref = np.load(FIX / "llama3" / "reference.npz")
    with load_model(d, backend="numpy") as m:
        logits = m.get_logits(m(ref["input_ids"][0])[0]).to_numpy()
    assert rel_err(logits, ref["logits"][0]) < 1e-4


def test_single_file_and_loader_names(tmp_path):
    ref = np.load(FIX / "qwen2" / "reference.npz")
    with load_model_from_safetensors(FIX / "qwen2" / "model.safetensors", dtype="float32", backend="numpy") as m:
        assert m.spec.name == "qwen2" and m.config.num_kv_groups >= 1
        assert m.generate(ref["input_ids"][0], max_new_tokens=8, temperature=0) == list(ref["greedy"][0])


def test_sampling_is_seeded_and_streams():
    ref = np.load(FIX / "llama" / "reference.npz")
    prompt = ref["input_ids"][0]
    with _load("llama", "numpy") as m:
        a = m.generate(prompt, max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=3)
        b = m.generate(prompt, max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=3)
        c = m.generate(prompt, max_new_tokens=12, temperature=5.0, top_k=0, seed=4)
        assert a == b and len(a) == len(prompt) + 12 and a != c
        stream = m.generate_stream(prompt, max_new_tokens=5, temperature=0)
        assert [next(stream) for _ in range(5)] == list(ref["greedy"][0][len(prompt):len(prompt) + 5])
        eos = int(ref["greedy"][0][len(prompt) + 2])
        assert m.generate(prompt, max_new_tokens=8, temperature=0, eos_token_id=eos)[-1] == eos


@pytest.mark.parametrize("kw,bad", [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                    ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
                                    ({"max_new_tokens": -2}, "max_new_tokens")])
def test_generation_argument_errors(kw, bad):
    with _load("llama", "numpy") as m:
        with pytest.raises(ValueError, match=bad):
            m.generate([1, 2, 3], **kw)
        with pytest.raises(ValueError, match="empty"):
            m.generate([], max_new_tokens=1)
        with pytest.raises(ValueError, match="vocabulary"):
            m.generate([1, m.config.vocab_size], max_new_tokens=1)
        with pytest.raises(ValueError, match="context"):
            m.generate(list(range(10)) * 100, max_new_tokens=1)


def test_context_limit_stops_with_notice(capsys):
    with load_model(FIX / "llama", backend="numpy", max_context=12) as m:
        out = m.generate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], max_new_tokens=50, temperature=0)
    assert len(out) == 12
    assert "context" in capsys.readouterr().err


def test_decode_plan_is_reused():
    ref = np.load(FIX / "llama" / "reference.npz")
    with _load("llama", "numpy") as m:
        m.generate(ref["input_ids"][0], max_new_tokens=20, temperature=0)
        # one prefill plan + one decode plan (all positions fall in the first attention bucket)
        assert len(m.session._plans) == 2
