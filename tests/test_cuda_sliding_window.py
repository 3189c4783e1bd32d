"""Sliding-window attention on the GPU: every CUDA attention kernel with a window (attn_fa on
tensor cores for prefill, attn_split / attn_pipe / attn_gqa, attn_store / attn_gqa_store for decode, the softmax kernel of the
unfused path) against float64 references and the NumPy backend; decode and prefill, f16 / bf16 /
f32, heads of 64 and 128, grouped queries, positions far beyond the window, and keys outside the
window poisoned with NaN (they must not be read). Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import cuda_support  # noqa: F401  (skips this module without a GPU)
import tinygraph as tg
from conftest import TOL, attention_views, kv_cache, rel_err, rounded
from cuda_support import launched_names
from test_sliding_window import SEQ, _model_dir, attention64, forward64, mask64

DT = {"f32": tg.float32, "f16": tg.float16, "bf16": tg.bfloat16}


def run_attention(monkeypatch, rng, dtype, T, S, d, past, window, kv=2, g=4, nan_before=0):
    """The fused attention of q [kv, g, T, d] over [kv, S, d] caches (past from a tensor, as in a
    model's step graph) with keys/values before ``nan_before`` and after the last visible one set
    to NaN. Returns (output, float64 reference, launched kernel names)."""
    names = launched_names(monkeypatch)
    q = rng.standard_normal((kv, g, T, d)).astype(np.float32)
    k = rng.standard_normal((kv, S, d)).astype(np.float32)
    v = rng.standard_normal((kv, S, d)).astype(np.float32)
    ks, vs = rounded(k, dtype), rounded(v, dtype)   # the reference reads finite values
    k[:, :nan_before] = v[:, :nan_before] = np.nan
    k[:, T + past:] = v[:, T + past:] = np.nan
    sess = tg.Session(backend="cuda")
    kt, vv = attention_views(*kv_cache(sess, k, v, dtype))
    gr = sess.graph()
    qi = gr.input(q.shape, dtype, name="q")
    pos = gr.input((T,), tg.int32, name="pos")
    scale = d ** -0.5
    gr.output(tg.attention(qi, kt, vv, scale, causal=True, past=pos, window=window))
    (out,) = sess.compute(gr, {qi: q, pos: np.arange(past, past + T, dtype=np.int32)})
    sess.close()
    ref = attention64(rounded(q, dtype), ks[:, None].transpose(0, 1, 3, 2), vs[:, None], scale, True, past, window)
    return out, ref, names


@pytest.mark.parametrize("dtype", [tg.float16, tg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("T,S,past,window", [(64, 64, 0, 1), (200, 333, 5, 17), (130, 1200, 1000, 64),
                                             (256, 256, 0, 100), (100, 2000, 1800, 300), (77, 500, 0, 1000)])
def test_flash_attention_window(monkeypatch, rng, dtype, d, T, S, past, window):
    """attn_fa: key tiles wholly before a block's window are not loaded (NaN there stays out)."""
    skip = max(0, past + 1 - window) // 64 * 64   # tiles before the first block's window
    out, ref, names = run_attention(monkeypatch, rng, dtype, T, S, d, past, window, nan_before=skip)
    assert f"attn_fa_{dtype.short}_{d}" in names, names
    err = rel_err(out, ref)
    assert err < 2 * TOL[dtype.name], f"relative error {err:.3g}"


@pytest.mark.parametrize("gqa", [True, False], ids=["gqa", "no_gqa"])
@pytest.mark.parametrize("dt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("T,S,past,window", [(1, 3000, 2999, 1), (1, 3000, 2500, 700), (1, 4096, 4000, 2048),
                                             (1, 100, 50, 8), (3, 4096, 3900, 1000), (8, 500, 400, 33),
                                             (1, 64, 10, 100)])
def test_split_and_pipe_window(monkeypatch, rng, gqa, dt, d, T, S, past, window):
    """attn_gqa (f16 / bf16, a group of <= 16 query rows), attn_pipe (<= 4 queries: decode; with
    TINYGRAPH_ATTN_GQA=0 for f16 / bf16 too) and attn_split: the splits start at the first visible
    key, so nothing before the window is read (NaN there stays out), long caches split across blocks."""
    dtype = DT[dt]
    if not gqa:
        if dt == "f32":
            pytest.skip("f32 never takes attn_gqa")
        monkeypatch.setenv("TINYGRAPH_ATTN_GQA", "0")
    out, ref, names = run_attention(monkeypatch, rng, dtype, T, S, d, past, window,
                                    nan_before=max(0, past + 1 - window))
    kind = "gqa" if gqa and dt != "f32" and 4 * T <= 16 else "pipe" if T <= 4 else "split"
    assert any(n.startswith(f"attn_{kind}_{dt}_") for n in names), names
    err = rel_err(out, ref)
    assert err < 2 * TOL[dtype.name], f"relative error {err:.3g}"


@pytest.mark.parametrize("T", [40, 300])
def test_split_window_many_queries_f32(monkeypatch, rng, T):
    """f32 prefill (no tensor cores): attn_split, one row's window per query."""
    out, ref, names = run_attention(monkeypatch, rng, tg.float32, T, 700, 64, 300, 50, nan_before=251)
    assert any(n.startswith("attn_split_f32_") for n in names), names
    assert rel_err(out, ref) < 2 * TOL["float32"]


@pytest.mark.parametrize("dtype,T", [(tg.float32, 1), (tg.float16, 3), (tg.float16, 64), (tg.bfloat16, 70)])
def test_rows_that_see_no_key_are_zero(monkeypatch, rng, dtype, T):
    """Positions whose window lies past the last key (S = 50, window 10) give zeros, not NaN or
    stale memory, in every kernel (the NumPy reference does the same)."""
    names = launched_names(monkeypatch)
    S, d, past, w = 50, 64, 45, 10
    q = rng.standard_normal((2, 4, T, d)).astype(np.float32)
    kv = rng.standard_normal((2, S, d)).astype(np.float32)
    outs = []
    for backend in ("cuda", "numpy"):
        sess = tg.Session(backend=backend)
        K = sess.persistent(kv.shape, dtype, name="K")
        sess.finalize()
        sess.upload(K, kv)
        gr = sess.graph()
        qi = gr.input(q.shape, dtype)
        kt, vv = attention_views(K, K)
        gr.output(tg.attention(qi, kt, vv, 0.125, causal=True, past=past, window=w))
        outs.append(sess.compute(gr, {qi: q})[0].astype(np.float64))
        sess.close()
    assert any(n.startswith("attn_") for n in names)
    assert np.isfinite(outs[0]).all()
    blind = np.arange(T) + past - w + 1 >= S   # rows whose window starts past the keys
    assert (outs[0][..., blind, :] == 0).all() and (outs[1][..., blind, :] == 0).all()
    assert rel_err(outs[0], outs[1]) < 2 * TOL[dtype.name]


def _store_graph(sess, K, V, H, window, theta=10000.0):
    KV, ctx, hd = K.shape
    g = sess.graph()
    q = g.input((1, H, hd), K.dtype, name="q")
    k = g.input((1, KV, hd), K.dtype, name="k")
    v = g.input((1, KV, hd), K.dtype, name="v")
    pos = g.input((1,), tg.int32, name="pos")
    g.output(tg.attention_store(q, k, v, pos, K, V, hd ** -0.5, theta, window=window, name="l0.attn_store"))
    return g, q, k, v, pos


@pytest.mark.parametrize("dt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("hd", [64, 128])
@pytest.mark.parametrize("pos,window", [(0, 16), (15, 16), (16, 16), (3000, 16), (3000, 1), (2500, 1000),
                                        (4095, 4000), (40, 4096)])
def test_attention_store_window(rng, dt, hd, pos, window):
    """attn_store (one decode token: RoPE, cache write, attention over the window) against the
    NumPy backend; cache rows before the window are NaN on both (never read)."""
    dtype, KV, H, ctx = DT[dt], 2, 8, 4096
    kc = rng.standard_normal((KV, ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((KV, ctx, hd)).astype(np.float32)
    first = max(0, pos - window + 1)
    kc[:, :first] = vc[:, :first] = np.nan
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, H, hd), (1, KV, hd), (1, KV, hd)))
    res = {}
    for backend in ("cuda", "numpy"):
        sess = tg.Session(backend=backend)
        K, V = kv_cache(sess, kc, vc, dtype)
        g, qi, ki, vi, pi = _store_graph(sess, K, V, H, window)
        for _ in range(3):  # eager runs, then the captured CUDA graph replays
            (out,) = sess.compute(g, {qi: q, ki: k, vi: v, pi: np.array([pos], np.int32)})
        res[backend] = (out.astype(np.float64), sess.download(K)[:, pos].astype(np.float64))
        sess.close()
    assert np.isfinite(res["cuda"][0]).all()
    assert rel_err(res["cuda"][1], res["numpy"][1]) < TOL[dtype.name]      # the written key row
    assert rel_err(res["cuda"][0], res["numpy"][0]) < 2 * TOL[dtype.name]


@pytest.mark.parametrize("dt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape,past,window", [((2, 3, 5, 40), 35, 4), ((1, 4, 1, 300), 299, 7),
                                               ((2, 2, 9, 9), 0, 1), ((1, 2, 3, 600), 100, 1000)])
def test_softmax_window(rng, dt, shape, past, window):
    """The unfused path's softmax kernel: zeros outside the window, past from a tensor."""
    dtype = DT[dt]
    x = rng.standard_normal(shape).astype(np.float32)
    sess = tg.Session(backend="cuda")
    g = sess.graph()
    xi = g.input(shape, dtype)
    pi = g.input((shape[-2],), tg.int32)
    g.output(tg.softmax(xi, 0.7, causal=True, past=pi, window=window))
    (y,) = sess.compute(g, {xi: x, pi: np.arange(past, past + shape[-2], dtype=np.int32)})
    sess.close()
    m = mask64(shape[-2], shape[-1], past, window)
    s = np.where(m, rounded(x, dtype) * 0.7, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    assert (y.astype(np.float64)[..., ~m] == 0).all()
    assert rel_err(y, ref) < TOL[dtype.name]


@pytest.mark.parametrize("fam,changes,windows", [
    ("mistral", {"sliding_window": 4}, [4, 4]),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}, [None, 3]),
])
def test_windowed_model_on_cuda(tmp_path, fam, changes, windows):
    """A windowed model on the GPU: prefill past the window, token-by-token decode and the
    replayed decode loop (the captured graph serves every position) against the float64 forward."""
    import json
    from tinygraph.models import load_model
    d, cfg = _model_dir(tmp_path, fam, **changes)
    cfg.pop("layer_types", None)
    (d / "config.json").write_text(json.dumps(cfg))
    want = forward64(fam, cfg, SEQ, windows)
    with load_model(d, backend="cuda", dtype="float32") as m:
        assert m.windows == windows
        logits = m.get_logits(m(SEQ)[0]).to_numpy()
        assert rel_err(logits, want) < 1e-4
        hidden, cache = m(SEQ[:2])
        for t in range(2, len(SEQ)):
            hidden, cache = m([SEQ[t]], past_key_values=cache)
            assert rel_err(m.get_logits(hidden).to_numpy()[-1], want[t]) < 1e-4, f"decode position {t}"
        ids = list(SEQ[:3])
        for _ in range(10):
            ids.append(int(np.argmax(forward64(fam, cfg, ids, windows)[-1])))
        assert m.generate(SEQ[:3], max_new_tokens=10, temperature=0, ignore_eos=True) == ids
