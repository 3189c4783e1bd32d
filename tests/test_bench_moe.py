"""tools/bench_moe.py on the CPU: the sparse random checkpoint loads as the family it names (HF
tensor names and shapes), its active-bytes floor counts top_k experts per layer, and a small
config runs both forms end to end on NumPy."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_moe as bm  # noqa: E402


def _small(name: str) -> dict:
    hf = dict(bm.MOE_CONFIGS[name])
    hf.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    if name.startswith("qwen"):
        hf.update(head_dim=16, moe_intermediate_size=32, num_experts=16)
    else:
        hf.update(intermediate_size=32)
    return hf


def test_active_bytes_of_the_real_configs():
    q = bm.MOE_CONFIGS["qwen3-30b-a3b"]
    # 48 layers x (attention 2048 x (4096 + 2 * 512) + o 4096 x 2048 + 8 experts x 3 x 768 x 2048 + router)
    per_layer = 2048 * (4096 + 1024) + 4096 * 2048 + 8 * 3 * 768 * 2048 + 128 * 2048 + 2 * 2048 + 2 * 128
    want = 48 * per_layer + 151936 * 2048 + 2048 + 2048
    assert bm.active_bytes(q) == 2 * want  # ~3.3 B active parameters, bfloat16


@pytest.mark.parametrize("name", list(bm.MOE_CONFIGS))
def test_sparse_checkpoint_runs_both_forms(name, tmp_path):
    hf = _small(name)
    size = bm.write_sparse_checkpoint(hf, tmp_path / name)
    assert (tmp_path / name / "model.safetensors").stat().st_size == size
    args = types.SimpleNamespace(backend="numpy", prefill_tokens=24, prompt_tokens=8, new_tokens=4, runs=1,
                                 warmup=1, warmup_seconds=0.0)
    recs = [bm.measure(tmp_path / name, hf, args, grouped) for grouped in (True, False)]
    for r in recs:
        assert r["decode"]["median_decode_tok_s"] > 0 and r["prefill"]["median_tok_s"] > 0
    assert recs[0]["decode"]["tokens"] == recs[1]["decode"]["tokens"]
    assert np.isfinite(recs[0]["weight_bytes"])
