"""Prefill attention on tensor cores (attn_fa, cuda_src/attention_tc.cu): that the backend picks it
for prefill layouts and falls back where it cannot run, and that it matches a float64 softmax.
Shape coverage over a cache (GQA, past, tile edges) is in tests/test_ops.py's
test_attention_over_a_cache, which runs on every backend."""
from __future__ import annotations

import numpy as np
import pytest

import cuda_support  # noqa: F401  (skips this module without a GPU)
import tinygraph as tg
from conftest import TOL, attention_views, kv_cache, rel_err, rounded
from cuda_support import launched_names


def softmax64(x, causal, past):
    if causal:
        q, k = x.shape[-2:]
        x = np.where(np.arange(k)[None, :] <= np.arange(q)[:, None] + past, x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def run_attention(monkeypatch, dtype, T, S, d, causal, past, rng, kv=2, g=4):
    """q [kv, g, T, d] against [kv, S, d] caches; returns (output, reference, kernel names)."""
    names = launched_names(monkeypatch)
    q = rng.standard_normal((kv, g, T, d)).astype(np.float32)
    k = rng.standard_normal((kv, S, d)).astype(np.float32)
    v = rng.standard_normal((kv, S, d)).astype(np.float32)
    sess = tg.Session(backend="cuda")
    kt, vv = attention_views(*kv_cache(sess, k, v, dtype))
    gr = sess.graph()
    qi = gr.input(q.shape, dtype)
    scale = d ** -0.5
    gr.output(tg.attention(qi, kt, vv, scale, causal=causal, past=past))
    (out,) = sess.compute(gr, {qi: q})
    seen = min(S, T + past) if causal else S
    qs, ks, vs = rounded(q, dtype), rounded(k[:, :seen], dtype), rounded(v[:, :seen], dtype)
    ref = softmax64(qs @ ks[:, None].transpose(0, 1, 3, 2) * scale, causal, past) @ vs[:, None]
    return out, ref, names


@pytest.mark.parametrize("dtype", [tg.float16, tg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("T,S,causal,past", [(64, 64, True, 0), (200, 333, True, 5), (37, 500, False, 0),
                                             (300, 300, False, 0), (16, 2000, True, 1900)])
def test_flash_attention_matches_float64(monkeypatch, rng, dtype, d, T, S, causal, past):
    out, ref, names = run_attention(monkeypatch, dtype, T, S, d, causal, past, rng)
    assert f"attn_fa_{dtype.short}_{d}" in names, names
    err = rel_err(out, ref)
    assert err < 2 * TOL[dtype.name], f"relative error {err:.3g}"


@pytest.mark.parametrize("dtype,T,d", [(tg.float32, 64, 64), (tg.float16, 8, 64), (tg.float16, 64, 72)],
                         ids=["f32", "few_queries", "head72"])
def test_other_attention_falls_back(monkeypatch, rng, dtype, T, d):
    """f32, decode-sized query counts and head sizes without an attn_fa (limits.FLASH_HEADS) take attn_split / pipe."""
    out, ref, names = run_attention(monkeypatch, dtype, T, 100, d, True, 20, rng)
    assert not any(n.startswith("attn_fa") for n in names), names
    assert any(n.startswith("attn_") for n in names), names
    assert rel_err(out, ref) < 2 * TOL[dtype.name]
