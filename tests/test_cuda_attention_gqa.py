"""Decode attention on tensor cores, a key head's whole query group per block (attn_gqa,
cuda_src/attention_gqa.cu): against a float64 softmax at 1, 100, 4k and 32k keys for group sizes
1, 2, 4 and 8, with a position read from device memory, a sliding window and a few queries per
row; attention_store (its cache write, norms and RoPE) against float64 too; and that layouts it
cannot read take attn_pipe."""
from __future__ import annotations

import numpy as np
import pytest

import cuda_support  # noqa: F401  (skips this module without a GPU)
import tinygraph as tg
from conftest import TOL, kv_cache, rel_err, rounded
from cuda_support import launched_names
from test_cuda_sliding_window import run_attention
from test_sliding_window import attention64


def run_decode(monkeypatch, rng, dtype, d, G, S, T=1, past=None, window=None):
    """q [2, G, T, d] at position ``past`` (a device tensor; default S - T) over [2, S, d] caches:
    test_cuda_sliding_window's run (keys past the last visible one NaN)."""
    return run_attention(monkeypatch, rng, dtype, T, S, d, S - T if past is None else past, window, g=G)


@pytest.mark.parametrize("dtype", [tg.float16, tg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("G", [1, 2, 4, 8])
@pytest.mark.parametrize("S", [1, 100, 4096, 32768])
def test_gqa_decode_matches_float64(monkeypatch, rng, dtype, d, G, S):
    out, ref, names = run_decode(monkeypatch, rng, dtype, d, G, S)
    assert f"attn_gqa_{dtype.short}_{d}" in names, names
    err = rel_err(out, ref)
    assert err < TOL[dtype.name], f"relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [tg.float16, tg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("G,T,S,past,window", [(4, 1, 5000, 77, None), (4, 1, 5000, 4999, 1000),
                                               (8, 2, 3000, 2000, None), (3, 5, 700, 600, 64),
                                               (16, 1, 300, 299, None), (2, 8, 9000, 8990, None)])
def test_gqa_positions_windows_and_query_rows(monkeypatch, rng, dtype, G, T, S, past, window):
    """A position short of the cache (splits past it idle), a sliding window, several queries per
    row (each its own causal limit), the largest group (16 rows)."""
    out, ref, names = run_decode(monkeypatch, rng, dtype, 128, G, S, T, past, window)
    assert f"attn_gqa_{dtype.short}_128" in names, names
    assert rel_err(out, ref) < TOL[dtype.name]


def test_gqa_falls_back_where_it_cannot_run(monkeypatch, rng):
    """float32, head sizes other than 64 / 128 and groups of more than 16 rows take attn_pipe."""
    for dtype, d, G, T in ((tg.float32, 64, 4, 1), (tg.float16, 80, 4, 1), (tg.float16, 64, 9, 2)):
        out, ref, names = run_decode(monkeypatch, rng, dtype, d, G, 300, T)
        assert not any(n.startswith("attn_gqa") for n in names), names
        assert any(n.startswith("attn_pipe") for n in names), names
        assert rel_err(out, ref) < TOL[dtype.name]


@pytest.mark.parametrize("dtype", [tg.float16, tg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("hd,G,S,pos", [(128, 4, 9000, 8500), (64, 3, 2048, 0), (128, 2, 40000, 39999)])
def test_gqa_store_matches_float64(monkeypatch, rng, dtype, hd, G, S, pos):
    """attention_store on attn_gqa_store: q/k RMS norm, neox RoPE, the new key and value written
    into row pos (every other row kept), attention over rows <= pos against float64."""
    names = launched_names(monkeypatch)
    KV = 2
    H = KV * G
    k0 = rng.standard_normal((KV, S, hd)).astype(np.float32)
    v0 = rng.standard_normal((KV, S, hd)).astype(np.float32)
    q = rng.standard_normal((1, H, hd)).astype(np.float32)
    k = rng.standard_normal((1, KV, hd)).astype(np.float32)
    v = rng.standard_normal((1, KV, hd)).astype(np.float32)
    nw = (rng.standard_normal((2, hd)) * 0.3 + 1.0).astype(np.float32)
    sess = tg.Session(backend="cuda")
    W = sess.persistent((2, hd), dtype, name="norm_w")
    K, V = kv_cache(sess, k0, v0, dtype)
    sess.upload(W, nw)
    gr = sess.graph()
    qi, ki, vi = gr.input(q.shape, dtype), gr.input(k.shape, dtype), gr.input(v.shape, dtype)
    pi = gr.input((1,), tg.int32)
    wq, wk = tg.view(W, (hd,), (1,), 0), tg.view(W, (hd,), (1,), hd)
    theta, scale = 10000.0, hd ** -0.5
    gr.output(tg.attention_store(qi, ki, vi, pi, K, V, scale, theta=theta, mode="neox", q_norm_w=wq,
                                 k_norm_w=wk, q_norm=True, k_norm=True, eps=1e-6))
    (out,) = sess.compute(gr, {qi: q, ki: k, vi: v, pi: np.array([pos], np.int32)})
    assert f"attn_gqa_store_{dtype.short}_{hd}" in names, names

    def norm_rope(x, w):  # [n, hd] float64: RMS norm * w, then neox RoPE at pos
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
        inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
        c, s = np.cos(pos * inv), np.sin(pos * inv)
        a, b = x[:, : hd // 2], x[:, hd // 2:]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    wr = rounded(nw, dtype)
    qr = norm_rope(rounded(q[0], dtype), wr[0])
    kr = norm_rope(rounded(k[0], dtype), wr[1])
    kc, vc = sess.download(K).astype(np.float64), sess.download(V).astype(np.float64)
    assert rel_err(kc[:, pos], kr) < TOL[dtype.name]
    np.testing.assert_array_equal(vc[:, pos], rounded(v[0], dtype))
    other = np.arange(S) != pos
    np.testing.assert_array_equal(kc[:, other], rounded(k0, dtype)[:, other])
    kk = rounded(k0, dtype).copy()
    kk[:, pos] = rounded(kr, dtype)
    vv = rounded(v0, dtype).copy()
    vv[:, pos] = rounded(v[0], dtype)
    ref = attention64(qr.reshape(KV, G, 1, hd), kk[:, None].transpose(0, 1, 3, 2), vv[:, None], scale, True, pos, None)
    assert rel_err(out, ref) < TOL[dtype.name]
