"""Gemma 2's soft-capped attention fused on the GPU: every CUDA attention kernel with a cap
(attn_fa for prefill, attn_gqa / attn_pipe / attn_split, attn_store / attn_gqa_store and the
paged attn_gqa_paged for decode) against a float64 softmax(cap * tanh(s / cap)), with the cap
small enough that it changes the scores a great deal. Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import cuda_support  # noqa: F401  (skips this module without a GPU)
import tinygraph as tg
from conftest import TOL, attention_views, kv_cache, rel_err, rounded
from cuda_support import launched_names
from test_sliding_window import mask64

DT = {"f32": tg.float32, "f16": tg.float16, "bf16": tg.bfloat16}
CAP = 2.0  # scores of N(0, 1) q.k * scale reach +-3: a cap of 2 bends most of them


def capped64(q, kt, v, scale, cap, past, window=None):
    """softmax(cap * tanh(q @ kt * scale / cap), causal from ``past``, window) @ v in float64."""
    s = np.matmul(q.astype(np.float64), kt.astype(np.float64)) * scale
    s = cap * np.tanh(s / cap)
    s = np.where(mask64(s.shape[-2], s.shape[-1], past, window), s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return np.matmul(e / e.sum(-1, keepdims=True), v.astype(np.float64))


@pytest.mark.parametrize("dt,T,d,kind,gqa", [
    ("f16", 64, 128, "fa", True), ("bf16", 100, 64, "fa", True), ("f16", 70, 96, "fa", True),
    ("f16", 1, 128, "gqa", True), ("bf16", 3, 64, "gqa", True), ("f16", 1, 128, "pipe", False),
    ("f32", 1, 64, "pipe", True), ("f32", 40, 64, "split", True), ("f16", 20, 256, "fa", True),
    ("f16", 12, 256, "split", True),
    ("bf16", 1, 256, "pipe", True)])
@pytest.mark.parametrize("window", [None, 37])
def test_capped_attention_matches_float64(monkeypatch, rng, dt, T, d, kind, gqa, window):
    """tg.attention(..., softcap=CAP) over a cache, past from a tensor (as in a step graph)."""
    if not gqa:
        monkeypatch.setenv("TINYGRAPH_ATTN_GQA", "0")
    dtype, kv, g, S, past = DT[dt], 2, 4, 300, 300 - T
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((kv, g, T, d), (kv, S, d), (kv, S, d)))
    names = launched_names(monkeypatch)
    sess = tg.Session(backend="cuda")
    kt, vv = attention_views(*kv_cache(sess, k, v, dtype))
    gr = sess.graph()
    qi = gr.input(q.shape, dtype, name="q")
    pos = gr.input((T,), tg.int32, name="pos")
    gr.output(tg.attention(qi, kt, vv, d ** -0.5, causal=True, past=pos, window=window, softcap=CAP))
    (out,) = sess.compute(gr, {qi: q, pos: np.arange(past, past + T, dtype=np.int32)})
    sess.close()
    ref = capped64(rounded(q, dtype), rounded(k, dtype)[:, None].transpose(0, 1, 3, 2), rounded(v, dtype)[:, None],
                   d ** -0.5, CAP, past, window)
    plain = capped64(rounded(q, dtype), rounded(k, dtype)[:, None].transpose(0, 1, 3, 2),
                     rounded(v, dtype)[:, None], d ** -0.5, 1e9, past, window)
    assert rel_err(plain, ref) > 5 * TOL[dtype.name]  # the cap matters at this tolerance
    assert any(n.startswith(f"attn_{kind}_{dt}_") for n in names), names
    assert rel_err(out, ref) < 2 * TOL[dtype.name], f"relative error {rel_err(out, ref):.3g}"


@pytest.mark.parametrize("dt,hd", [("f16", 128), ("bf16", 64), ("f32", 64), ("f16", 256)])
@pytest.mark.parametrize("paged", [False, True], ids=["cache", "paged"])
def test_capped_attention_store_matches_numpy(rng, dt, hd, paged):
    """attention_store (RoPE, cache write, capped attention; one sequence or a paged batch of 2)
    on the GPU against the NumPy backend, eager and replayed."""
    if paged and (dt == "f32" or hd == 256):
        pytest.skip("a paged cache runs on attn_gqa only (f16 / bf16, heads of 64 or 128)")
    dtype, KV, H, ctx, pos = DT[dt], 2, 8, 512, np.array([200, 45], np.int32)
    N = 2 if paged else 1
    kc = rng.standard_normal((KV, ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((KV, ctx, hd)).astype(np.float32)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((N, H, hd), (N, KV, hd), (N, KV, hd)))
    table = np.stack([np.arange(256), np.arange(256, 512)]).astype(np.int32)
    res = {}
    for backend in ("cuda", "numpy"):
        sess = tg.Session(backend=backend)
        K, V = kv_cache(sess, kc, vc, dtype)
        g = sess.graph()
        qi, ki, vi = (g.input(a.shape, dtype) for a in (q, k, v))
        pi = g.input((N,), tg.int32)
        ti = g.input(table.shape, tg.int32) if paged else None
        g.output(tg.attention_store(qi, ki, vi, pi, K, V, hd ** -0.5, 10000.0, rows=ti, softcap=CAP))
        feeds = {qi: q, ki: k, vi: v, pi: pos[:N]}
        if paged:
            feeds[ti] = table
        for _ in range(3):  # eager runs, then the captured CUDA graph replays
            (out,) = sess.compute(g, feeds)
        res[backend] = out.astype(np.float64)
        sess.close()
    assert np.isfinite(res["cuda"]).all()
    assert rel_err(res["cuda"], res["numpy"]) < 2 * TOL[dtype.name]
