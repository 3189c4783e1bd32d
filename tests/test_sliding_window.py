"""Sliding-window attention on the NumPy backend: the op semantics (HF's ``kv_idx > q_idx -
sliding_window`` on top of the causal mask), the blocked reference (tinygraph/attention_ref.py)
against the plain formula, its memory, the fusion passes, and models whose config slides
(Mistral's ``sliding_window``, Qwen2's ``use_sliding_window`` / ``max_window_layers``, a generic
``layer_types`` list) against an independent float64 forward pass."""
from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.attention_ref import blocked_attention
from tinygraph.passes import optimize


def mask64(T: int, S: int, past: int, window: int | None) -> np.ndarray:
    """[T, S]: query row t (position t + past) sees key j; written from HF's definition."""
    q_idx = np.arange(T)[:, None] + past
    kv_idx = np.arange(S)[None, :]
    m = kv_idx <= q_idx
    if window is not None:
        m &= kv_idx > q_idx - window
    return m


def attention64(q, kt, v, scale, causal, past, window):
    """The plain formula in float64: all scores, masked, softmax, mix. Rows seeing nothing: 0."""
    s = np.matmul(q.astype(np.float64), kt.astype(np.float64)) * scale
    if causal:
        s = np.where(mask64(s.shape[-2], s.shape[-1], past, window), s, -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    d = e.sum(-1, keepdims=True)
    return np.matmul(e / np.where(d > 0, d, 1), v.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# the blocked reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [None, 1, 5, 16, 1000])
@pytest.mark.parametrize("T,S,past,block", [(1, 40, 39, 8), (23, 23, 0, 8), (37, 60, 20, 16), (64, 64, 0, 64),
                                             (50, 90, 40, 7)])
def test_blocked_equals_plain_formula_gqa(rng, T, S, past, block, window):
    q = rng.standard_normal((2, 3, T, 16)).astype(np.float32)        # [KV, G, T, D]
    kt = rng.standard_normal((2, 1, 16, S)).astype(np.float32)       # [KV, 1, D, S]
    v = rng.standard_normal((2, 1, S, 12)).astype(np.float32)        # Dv != D
    got = blocked_attention(q, kt, v, 0.3, True, past, window, block=block)
    want = attention64(q, kt, v, 0.3, True, past, window)
    assert got.dtype == np.float32 and got.shape == (2, 3, T, 12)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("block", [1, 5, 256])
def test_blocked_not_causal_and_broadcast_queries(rng, block):
    q = rng.standard_normal((1, 4, 19, 8)).astype(np.float32)
    kt = rng.standard_normal((3, 1, 8, 31)).astype(np.float32)
    v = rng.standard_normal((3, 1, 31, 8)).astype(np.float32)
    got = blocked_attention(q, kt, v, 0.5, False, 0, None, block=block)
    np.testing.assert_allclose(got, attention64(q, kt, v, 0.5, False, 0, None), rtol=2e-5, atol=2e-6)


def test_blocked_half_inputs_math_in_float32(rng):
    q = rng.standard_normal((2, 9, 8)).astype(np.float16)
    kt = rng.standard_normal((2, 8, 30)).astype(np.float16)
    v = rng.standard_normal((2, 30, 8)).astype(np.float16)
    got = blocked_attention(q, kt, v, 0.4, True, 21, 6, block=4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, attention64(q, kt, v, 0.4, True, 21, 6), rtol=2e-5, atol=2e-6)


def test_rows_that_see_nothing_are_zero(rng):
    # keys 0..9 exist; positions 20.. with a window of 5 see none of them
    q = rng.standard_normal((1, 4, 8)).astype(np.float32)
    kt = rng.standard_normal((1, 8, 10)).astype(np.float32)
    v = rng.standard_normal((1, 10, 8)).astype(np.float32)
    out = blocked_attention(q, kt, v, 1.0, True, 12, 5, block=2)
    want = attention64(q, kt, v, 1.0, True, 12, 5)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-6)
    assert (out[0, 2:] == 0).all() and (out[0, 0] != 0).all()   # rows at 12, 13 see key 9 / 9..; 14, 15 none


def test_keys_outside_the_window_are_not_read(rng):
    """NaN keys/values outside every row's window do not reach the result (skipped, not masked)."""
    T, S, past, w = 20, 100, 80, 8
    q = rng.standard_normal((2, T, 8)).astype(np.float32)
    kt = rng.standard_normal((2, 8, S)).astype(np.float32)
    v = rng.standard_normal((2, S, 8)).astype(np.float32)
    want = blocked_attention(q, kt, v, 0.3, True, past, w, block=4)
    kt[..., : past - w + 1] = np.nan   # before the first row's window
    v[:, : past - w + 1] = np.nan
    kt[..., past + T:] = np.nan        # after the last row's position
    v[:, past + T:] = np.nan
    got = blocked_attention(q, kt, v, 0.3, True, past, w, block=4)
    np.testing.assert_array_equal(got, want)


def test_blocked_memory_grows_with_T_not_T_squared(rng):
    """2 heads x 3072 queries: the plain formula would hold 72 MiB of scores at once."""
    T, D = 3072, 8
    q = rng.standard_normal((2, T, D)).astype(np.float32)
    kt = rng.standard_normal((2, D, T)).astype(np.float32)
    v = rng.standard_normal((2, T, D)).astype(np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        blocked_attention(q, kt, v, 0.35, True, 0, None)
        full = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        t0 = time.perf_counter()
        blocked_attention(q, kt, v, 0.35, True, 0, 64)
        windowed = time.perf_counter() - t0
    finally:
        tracemalloc.stop()
    scores = 2 * T * T * 4
    assert peak < scores / 6, f"peak {peak / 2**20:.1f} MiB against {scores / 2**20:.0f} MiB of scores"
    assert windowed < full  # a window of 64 reads ~64 keys per query, not ~T/2


# ---------------------------------------------------------------------------------------------
# the ops
# ---------------------------------------------------------------------------------------------
def _session_with_cache(rng, KV=2, S=48, D=16):
    sess = tg.Session(backend="numpy")
    K = sess.persistent((KV, S, D), tg.float32, name="K")
    V = sess.persistent((KV, S, D), tg.float32, name="V")
    sess.finalize()
    k, v = rng.standard_normal((KV, S, D)), rng.standard_normal((KV, S, D))
    sess.upload(K, k)
    sess.upload(V, v)
    return sess, K, V, k.astype(np.float32), v.astype(np.float32)


def _chain(sess, K, V, T, G, window, fuse):
    KV, S, D = K.shape
    g = sess.graph()
    q = g.input((KV, G, T, D), tg.float32, name="q")
    pos = g.input((T,), tg.int32, name="pos")
    kt = tg.view(K, (KV, 1, D, S), (S * D, 0, 1, D))
    vv = tg.view(V, (KV, 1, S, D), (S * D, 0, D, 1))
    s = tg.matmul(q, kt, name="l0.scores")
    p = tg.softmax(s, 0.25, causal=True, past=pos, window=window, name="l0.probs")
    g.output(tg.matmul(p, vv, name="l0.mix"))
    if fuse:
        assert optimize(g)["fuse_attention"] == 1
        (a,) = [n for n in g.nodes if n.op == "attention"]
        assert a.params["window"] == window   # the pass carries the window
    return g, q, pos


@pytest.mark.parametrize("window", [None, 1, 3, 10])
@pytest.mark.parametrize("T,start", [(1, 0), (1, 30), (5, 0), (7, 40)])
def test_softmax_and_fused_attention_match_plain_formula(rng, window, T, start):
    sess, K, V, k, v = _session_with_cache(rng)
    qv = rng.standard_normal((2, 3, T, 16)).astype(np.float32)
    feeds = lambda q, pos: {q: qv, pos: np.arange(start, start + T, dtype=np.int32)}
    want = attention64(qv, k[:, None].transpose(0, 1, 3, 2), v[:, None], 0.25, True, start, window)
    for fuse in (False, True):
        g, q, pos = _chain(sess, K, V, T, 3, window, fuse)
        (out,) = sess.compute(g, feeds(q, pos))
        np.testing.assert_allclose(out, want, rtol=3e-5, atol=3e-6, err_msg=f"fuse={fuse}")


def test_window_changes_the_result(rng):
    sess, K, V, k, v = _session_with_cache(rng)
    qv = rng.standard_normal((2, 3, 1, 16)).astype(np.float32)
    outs = []
    for window in (None, 4):
        g, q, pos = _chain(sess, K, V, 1, 3, window, True)
        outs.append(sess.compute(g, {q: qv, pos: np.array([30], np.int32)})[0])
    assert np.abs(outs[0] - outs[1]).max() > 1e-2


def test_window_arguments_are_checked():
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    x = g.input((2, 4, 4), tg.float32)
    for bad in (0, -3, 2.5, True, "4"):
        with pytest.raises(tg.GraphError, match="window"):
            tg.softmax(x, causal=True, window=bad)
        with pytest.raises(tg.GraphError, match="window"):
            tg.attention(x, x, x, causal=True, window=bad)
    with pytest.raises(tg.GraphError, match="causal"):
        tg.softmax(x, window=4)
    with pytest.raises(tg.GraphError, match="causal"):
        tg.attention(x, x, x, window=4)
    assert tg.softmax(x, causal=True, window=np.int64(3)).params["window"] == 3


def test_softmax_window_reference_rows(rng):
    x = rng.standard_normal((3, 6, 9)).astype(np.float32)
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    xi = g.input(x.shape, tg.float32)
    g.output(tg.softmax(xi, 0.5, causal=True, past=3, window=2))
    (y,) = sess.compute(g, {xi: x})
    m = mask64(6, 9, 3, 2)
    assert (y[..., ~m] == 0).all() and (m.sum(-1) == 2).all()
    e = np.exp(np.where(m, x * 0.5, -np.inf) - np.where(m, x * 0.5, -np.inf).max(-1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_fused_prefill_of_8k_tokens_stays_small(rng):
    """The fused attention of an 8192-token prompt (2 KV heads x 2 queries each) through a
    session: the [4, 8192, 8192] float32 scores would be 1 GiB; the blocked reference stays far
    below (the issue's bound for a whole model is 2 GiB)."""
    T, KV, G, D = 8192, 2, 2, 8
    sess = tg.Session(backend="numpy")
    K = sess.persistent((KV, T, D), tg.float32, name="K")
    sess.finalize()
    sess.upload(K, rng.standard_normal((KV, T, D)).astype(np.float32))
    g = sess.graph()
    q = g.input((KV, G, T, D), tg.float32, name="q")
    pos = g.input((T,), tg.int32, name="pos")
    kt = tg.view(K, (KV, 1, D, T), (T * D, 0, 1, D))
    vv = tg.view(K, (KV, 1, T, D), (T * D, 0, D, 1))
    g.output(tg.attention(q, kt, vv, 0.35, causal=True, past=pos, window=512))
    qv = rng.standard_normal((KV, G, T, D)).astype(np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        (out,) = sess.compute(g, {q: qv, pos: np.arange(T, dtype=np.int32)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(out).all() and out.shape == (KV, G, T, D)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    # spot-check the last rows against the plain formula over their window
    k = sess.download(K)
    tail = attention64(qv[..., -3:, :], k[:, None, -600:].transpose(0, 1, 3, 2), k[:, None, -600:], 0.35,
                       True, 597, 512)
    np.testing.assert_allclose(out[..., -3:, :], tail, rtol=3e-5, atol=3e-6)
