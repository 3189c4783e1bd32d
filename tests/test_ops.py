"""Every op against an independent float64 NumPy formula, on each backend and dtype."""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinygraph as tg
from conftest import TOL, attention_views, kv_cache, rel_err, rounded

FLOATS = [tg.float32, tg.float16, tg.bfloat16]


def run(backend, build, feeds_np, dtype):
    """Build a graph with one input per array in ``feeds_np`` (cast to ``dtype``), return outputs."""
    sess = tg.Session(backend=backend)
    g = sess.graph()
    ins = [g.input(a.shape, dtype if a.dtype.kind == "f" else tg.int32, name=f"in{i}") for i, a in enumerate(feeds_np)]
    outs = build(*ins)
    g.output(*(outs if isinstance(outs, tuple) else (outs,)))
    res = sess.compute(g, {t: a for t, a in zip(ins, feeds_np)})
    sess.close()
    return res


def check(out, ref, dtype, factor=1.0):
    err = rel_err(out, ref)
    assert err < TOL[dtype.name] * factor, f"relative error {err:.3g} for {dtype.name}"


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("shapes", [((3, 37), (3, 37)), ((2, 5, 33), (33,)), ((4, 1, 7), (1, 6, 7)), ((65,), (1,))])
def test_add_mul_broadcast(backend, dtype, shapes, rng):
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    add, mul = run(backend, lambda x, y: (tg.add(x, y), tg.mul(x, y)), [a, b], dtype)
    check(add, rounded(a, dtype) + rounded(b, dtype), dtype)
    check(mul, rounded(a, dtype) * rounded(b, dtype), dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_unary(backend, dtype, rng):
    x = rng.standard_normal((5, 131)).astype(np.float32) * 3
    xs = rounded(x, dtype)
    s, ge, si = run(backend, lambda t: (tg.scale(t, 0.37), tg.gelu(t), tg.silu(t)), [x], dtype)
    check(s, xs * 0.37, dtype)
    check(ge, 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs ** 3))), dtype)
    check(si, xs / (1 + np.exp(-xs)), dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("mkn", [(1, 64, 96), (7, 33, 65), (130, 70, 3), (1, 257, 1000)])
def test_matmul(backend, dtype, mkn, rng):
    m, k, n = mkn
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)  # HF [out, in] layout, used transposed
    b = rng.standard_normal((k, n)).astype(np.float32)
    o1, o2 = run(backend, lambda x, wt, y: (tg.matmul(x, tg.transpose(wt)), tg.matmul(x, y)), [a, w, b], dtype)
    check(o1, rounded(a, dtype) @ rounded(w, dtype).T, dtype, 5)
    check(o2, rounded(a, dtype) @ rounded(b, dtype), dtype, 5)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_matmul_batched_broadcast(backend, dtype, rng):
    # GQA shape: q [kv, groups, T, d] @ k^T [kv, 1, d, S]
    q = rng.standard_normal((3, 2, 5, 16)).astype(np.float32)
    k = rng.standard_normal((3, 1, 16, 9)).astype(np.float32)
    (o,) = run(backend, lambda x, y: tg.matmul(x, y), [q, k], dtype)
    check(o, np.matmul(rounded(q, dtype), rounded(k, dtype)), dtype, 5)


def softmax64(x, scale=1.0, causal=False, past=0):
    x = x * scale
    if causal:
        q, k = x.shape[-2:]
        x = np.where(np.arange(k)[None, :] <= np.arange(q)[:, None] + past, x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("causal,past", [(False, 0), (True, 0), (True, 4)])
def test_softmax(backend, dtype, causal, past, rng):
    x = rng.standard_normal((2, 3, 6, 6 + past)).astype(np.float32)
    (o,) = run(backend, lambda t: tg.softmax(t, 0.7, causal=causal, past=past), [x], dtype)
    check(o, softmax64(rounded(x, dtype), 0.7, causal, past), dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_norms(backend, dtype, rng):
    x = rng.standard_normal((3, 4, 77)).astype(np.float32) * 2 + 0.5
    w = rng.standard_normal(77).astype(np.float32)
    b = rng.standard_normal(77).astype(np.float32)
    ln, rms, ln0 = run(backend, lambda t, ww, bb: (tg.layer_norm(t, ww, bb, 1e-5), tg.rms_norm(t, ww, 1e-6),
                                                   tg.layer_norm(t, eps=1e-5)), [x, w, b], dtype)
    xs, ws, bs = rounded(x, dtype), rounded(w, dtype), rounded(b, dtype)
    xc = xs - xs.mean(-1, keepdims=True)
    norm = xc / np.sqrt((xc ** 2).mean(-1, keepdims=True) + 1e-5)
    check(ln, norm * ws + bs, dtype)
    check(ln0, norm, dtype)
    check(rms, xs / np.sqrt((xs ** 2).mean(-1, keepdims=True) + 1e-6) * ws, dtype)


def rope64(x, pos, theta, mode, ff=None):
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    if ff is not None:
        inv = inv / ff
    ang = pos[:, None].astype(np.float64) * inv[None]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    if mode == "neox":
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        out[..., : hd // 2], out[..., hd // 2:] = a * c - b * s, b * c + a * s
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("mode", ["neox", "normal"])
def test_rope(backend, dtype, mode, rng):
    x = rng.standard_normal((5, 3, 12)).astype(np.float32)
    pos = np.array([0, 1, 7, 30, 100], np.int32)
    ff = (1 + rng.random(6) * 7).astype(np.float32)
    sess = tg.Session(backend=backend)
    F = sess.persistent((6,), tg.float32, name="ff")
    sess.finalize()
    sess.upload(F, ff)
    g = sess.graph()
    xi, pi = g.input(x.shape, dtype), g.input((5,), tg.int32)
    g.output(tg.rope(xi, pi, 10000.0, mode), tg.rope(xi, pi, 500000.0, mode, freq_factors=F))
    o1, o2 = sess.compute(g, {xi: x, pi: pos})
    check(o1, rope64(rounded(x, dtype), pos, 10000.0, mode), dtype, 2)
    check(o2, rope64(rounded(x, dtype), pos, 500000.0, mode, ff.astype(np.float64)), dtype, 2)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_get_rows_concat_argmax_cast(backend, dtype, rng):
    table = rng.standard_normal((50, 24)).astype(np.float32)
    ids = np.array([3, 0, 49, 3, 17], np.int32)
    a = rng.standard_normal((4, 5, 3)).astype(np.float32)
    b = rng.standard_normal((4, 2, 3)).astype(np.float32)
    rows, cat, am, cast = run(backend, lambda t, i, x, y: (tg.get_rows(t, i), tg.concat(x, y, axis=1),
                                                            tg.argmax(t), tg.cast(x, tg.float32)),
                              [table, ids, a, b], dtype)
    check(rows, rounded(table, dtype)[ids], dtype, 0.01)
    check(cat, np.concatenate([rounded(a, dtype), rounded(b, dtype)], axis=1), dtype, 0.01)
    assert am.dtype == np.int32
    np.testing.assert_array_equal(am, np.argmax(rounded(table, dtype), -1))
    assert cast.dtype == np.float32
    check(cast, rounded(a, dtype), dtype, 0.01)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_strided_inputs_and_cont(backend, dtype, rng):
    """Ops read permuted, sliced and stride-0 views without needless copies, and cont packs them."""
    x = rng.standard_normal((6, 4, 10)).astype(np.float32)

    def build(t):
        p = tg.permute(t, (1, 0, 2))                                   # [4, 6, 10]
        sl = tg.view(t, (3, 5), strides=(40, 2), offset=1)             # every other element
        bc = tg.view(t, (3, 10), strides=(0, 1), offset=20)            # one row broadcast
        return tg.cont(p), tg.silu(sl), tg.add(bc, tg.view(t, (3, 10), (10, 1), 0)), tg.reshape(p, (4, 60))
    c, s, a, r = run(backend, build, [x], dtype)
    xs = rounded(x, dtype)
    flat = xs.reshape(-1)
    check(c, xs.transpose(1, 0, 2), dtype, 0.01)
    sl = np.lib.stride_tricks.as_strided(flat[1:], (3, 5), (40 * 8, 2 * 8))
    check(s, sl / (1 + np.exp(-sl)), dtype)
    check(a, flat[20:30][None, :] + flat[:30].reshape(3, 10), dtype)
    check(r, xs.transpose(1, 0, 2).reshape(4, 60), dtype, 0.01)


def test_cpy_casts_into_persistent(backend, rng):
    sess = tg.Session(backend=backend)
    buf = sess.persistent((4, 8), tg.float16, name="kv")
    sess.finalize()
    g = sess.graph()
    x = g.input((2, 8), tg.float32)
    tg.cpy(x, tg.view(buf, (2, 8), (8, 1), offset=16))
    a = rng.standard_normal((2, 8)).astype(np.float32)
    assert sess.compute(g, {x: a}) == []
    got = sess.download(buf)
    np.testing.assert_array_equal(got[2:], a.astype(np.float16))
    np.testing.assert_array_equal(got[:2], 0)


# -- build-time errors ----------------------------------------------------------------------------
def test_errors_at_build_time():
    sess = tg.Session(backend="numpy")
    K = sess.persistent((32, 8), tg.float32, name="K")
    g = sess.graph()
    x = g.input((1, 16), tg.float32, name="x")
    ids = g.input((3,), tg.int32, name="ids")
    with pytest.raises(ValueError, match=r"matmul.*'x'.*\(1, 16\)"):
        tg.matmul(x, K)
    with pytest.raises(IndexError, match="K"):
        tg.view(K, (5, 8), (8, 1), offset=28 * 8)
    with pytest.raises(ValueError, match="broadcast"):
        tg.add(x, tg.view(K, (3, 8)))
    with pytest.raises(TypeError, match="int32"):
        tg.get_rows(K, x)
    with pytest.raises(TypeError, match="float"):
        tg.softmax(ids)
    with pytest.raises(ValueError, match="reshape"):
        tg.reshape(x, (3, 5))
    with pytest.raises(ValueError, match="shape"):
        tg.cpy(x, tg.view(K, (1, 8)))
    with pytest.raises(ValueError, match="positions"):
        tg.rope(tg.reshape(x, (1, 2, 8)), ids)
    other = tg.Session(backend="numpy").graph()
    y = other.input((16, 1), tg.float32)
    with pytest.raises(ValueError, match="different graphs"):
        tg.matmul(x, y)
    for exc in (tg.ShapeError, tg.BoundsError, tg.DTypeError):
        assert issubclass(exc, tg.TinygraphError)


def test_compute_checks_feeds():
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    x = g.input((2, 3), tg.float32, name="x")
    g.output(tg.scale(x, 2.0))
    with pytest.raises(ValueError, match="no value fed"):
        sess.compute(g, {})
    with pytest.raises(ValueError, match="shape"):
        sess.compute(g, {"x": np.zeros((3, 2))})
    (out,) = sess.compute(g, {"x": np.ones((2, 3))})
    np.testing.assert_array_equal(out, 2.0)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("T,S,past,d", [(1, 300, 157, 64), (5, 40, 0, 64), (3, 700, 600, 64), (1, 64, 63, 64),
                                        (1, 300, 50, 32), (1, 300, 250, 80), (2, 300, 140, 128),
                                        (1, 300, 250, 256), (1, 40, 7, 256),
                                        # prefill shapes (CUDA: the tensor-core kernel from 16 queries)
                                        (100, 300, 37, 64), (70, 70, 0, 128), (130, 200, 10, 128),
                                        (17, 1000, 900, 64)])
def test_attention_over_a_cache(backend, dtype, T, S, past, d, rng):
    """GQA attention over a cache longer than the visible part, past from a tensor or an int;
    head sizes of the kernels' register sizes and between them, decode and prefill."""
    kv, g = 2, 3
    q = rng.standard_normal((kv, g, T, d)).astype(np.float32)
    k = rng.standard_normal((kv, S, d)).astype(np.float32)
    v = rng.standard_normal((kv, S, d)).astype(np.float32)
    v[:, min(S, T + past):] = np.nan        # keys the mask hides must never be read
    k[:, min(S, T + past):] = np.nan
    sess = tg.Session(backend=backend)
    kt, vv = attention_views(*kv_cache(sess, k, v, dtype))
    g_ = sess.graph()
    qi = g_.input(q.shape, dtype)
    pos = g_.input((T,), tg.int32)
    g_.output(tg.attention(qi, kt, vv, 0.125, causal=True, past=pos), tg.attention(qi, kt, vv, 0.125, True, past))
    o1, o2 = sess.compute(g_, {qi: q, pos: np.arange(past, past + T, dtype=np.int32)})
    vis = min(S, T + past)
    qs, ks, vs = rounded(q, dtype), rounded(k[:, :vis], dtype), rounded(v[:, :vis], dtype)
    ref = softmax64(qs @ ks[:, None].transpose(0, 1, 3, 2), 0.125, True, past) @ vs[:, None]
    check(o1, ref, dtype, 2)
    check(o2, ref, dtype, 2)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_set_rows(backend, dtype, rng):
    sess = tg.Session(backend=backend)
    C = sess.persistent((2, 10, 8), dtype, name="cache")
    sess.finalize()
    base = rng.standard_normal((2, 10, 8)).astype(np.float32)
    sess.upload(C, base)
    g = sess.graph()
    x = g.input((3, 2, 8), tg.float32)
    rows = g.input((3,), tg.int32)
    w = tg.set_rows(C, tg.permute(x, (1, 0, 2)), rows)
    g.output(tg.scale(tg.view(C, (2, 10, 8)), 1.0))       # reads after the write
    xv = rng.standard_normal((3, 2, 8)).astype(np.float32)
    (after,) = sess.compute(g, {x: xv, rows: np.array([7, 2, 9], np.int32)})
    ref = rounded(base, dtype)
    ref[:, [7, 2, 9], :] = rounded(xv.transpose(1, 0, 2), dtype)
    check(after, ref, dtype, 0.01)
    assert w.storage is C


def test_set_rows_shape_errors():
    sess = tg.Session(backend="numpy")
    C = sess.persistent((2, 10, 8), tg.float32, name="cache")
    g = sess.graph()
    x = g.input((2, 3, 7), tg.float32)
    r = g.input((3,), tg.int32)
    with pytest.raises(ValueError, match="set_rows"):
        tg.set_rows(C, x, r)
    with pytest.raises(ValueError, match="rows"):
        tg.set_rows(C, g.input((2, 3, 8), tg.float32), g.input((2,), tg.int32))


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("mode", ["neox", "normal"])
def test_rope_store(backend, dtype, mode, rng):
    T, H, KV, hd, ctx = 3, 6, 2, 16, 20
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, KV, hd)).astype(np.float32)
    v = rng.standard_normal((T, KV, hd)).astype(np.float32)
    pos = np.array([11, 12, 13], np.int32)
    sess = tg.Session(backend=backend)
    Kc = sess.persistent((KV, ctx, hd), dtype, name="Kc")
    Vc = sess.persistent((KV, ctx, hd), dtype, name="Vc")
    sess.finalize()
    g = sess.graph()
    qkv = g.input((T, H + 2 * KV, hd), dtype)
    pi = g.input((T,), tg.int32)
    row = (H + 2 * KV) * hd
    qv = tg.view(qkv, (T, H, hd), (row, hd, 1), 0)
    kv_ = tg.view(qkv, (T, KV, hd), (row, hd, 1), H * hd)
    vv = tg.view(qkv, (T, KV, hd), (row, hd, 1), (H + KV) * hd)
    g.output(tg.rope_store(qv, kv_, vv, pi, Kc, Vc, 1000.0, mode))
    (qo,) = sess.compute(g, {qkv: np.concatenate([q, k, v], axis=1), pi: pos})
    check(qo, rope64(rounded(q, dtype), pos, 1000.0, mode), dtype, 2)
    kc, vc = sess.download(Kc), sess.download(Vc)
    check(kc[:, 11:14], rope64(rounded(k, dtype), pos, 1000.0, mode).transpose(1, 0, 2), dtype, 2)
    check(vc[:, 11:14], rounded(v, dtype).transpose(1, 0, 2), dtype, 0.01)
    assert not np.asarray(kc[:, :11], np.float32).any() and not np.asarray(vc[:, 14:], np.float32).any()


def _unfused_step(g, q, k, v, pos, K, V, scale, rope, norm):
    """q/k RMS norm -> RoPE -> both cache writes -> grouped attention: what attention_store fuses."""
    KV, S, hd = K.shape
    if norm is not None:
        q, k = tg.rms_norm(q, norm[0], 1e-6), tg.rms_norm(k, norm[1], 1e-6)
    if rope is not None:
        q, k = (tg.rope(x, pos, 10000.0, rope) for x in (q, k))
    tg.set_rows(K, tg.permute(k, (1, 0, 2)), pos)
    tg.set_rows(V, tg.permute(v, (1, 0, 2)), pos)
    qg = tg.permute(tg.reshape(q, (1, KV, q.shape[1] // KV, hd)), (1, 2, 0, 3))
    kt, vv = attention_views(K, V)
    return tg.attention(qg, kt, vv, scale, True, pos)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("rope,norm,hd,G,pos", [("neox", False, 64, 3, 40), ("normal", False, 64, 1, 0),
                                                (None, False, 64, 1, 300), ("neox", True, 128, 2, 150),
                                                ("neox", True, 128, 4, 399), (None, True, 32, 2, 7)])
def test_attention_store_matches_unfused_step(backend, dtype, rope, norm, hd, G, pos, rng):
    """attention_store == norm -> rope -> set_rows x2 -> attention: same output, same caches
    (the step's row written, every other row untouched), through the fusion pass too."""
    KV, S = 2, 400
    H = KV * G
    k0 = rng.standard_normal((KV, S, hd)).astype(np.float32)
    v0 = rng.standard_normal((KV, S, hd)).astype(np.float32)
    qkv = rng.standard_normal((1, (H + 2 * KV) * hd)).astype(np.float32)
    nw = rng.standard_normal((2, hd)).astype(np.float32) * 0.3 + 1.0
    outs = {}
    for mode in ("unfused", "op", "pass"):
        sess = tg.Session(backend=backend, verbose=False)
        K = sess.persistent((KV, S, hd), dtype, name="K")
        V = sess.persistent((KV, S, hd), dtype, name="V")
        W = sess.persistent((2, hd), dtype, name="norm_w")
        sess.finalize()
        sess.upload(K, k0)
        sess.upload(V, v0)
        sess.upload(W, nw)
        g = sess.graph()
        x = g.input(qkv.shape, dtype, name="qkv")
        p = g.input((1,), tg.int32, name="pos")
        row = qkv.shape[1]
        q = tg.view(x, (1, H, hd), (row, hd, 1), 0)
        k = tg.view(x, (1, KV, hd), (row, hd, 1), H * hd)
        v = tg.view(x, (1, KV, hd), (row, hd, 1), (H + KV) * hd)
        wq, wk = tg.view(W, (hd,), (1,), 0), tg.view(W, (hd,), (1,), hd)
        if mode == "op":
            out = tg.attention_store(q, k, v, p, K, V, hd ** -0.5, theta=10000.0 if rope else None,
                                     mode=rope or "neox", q_norm_w=wq if norm else None,
                                     k_norm_w=wk if norm else None, q_norm=norm, k_norm=norm, eps=1e-6)
        else:
            out = _unfused_step(g, q, k, v, p, K, V, hd ** -0.5, rope, (wq, wk) if norm else None)
        g.output(tg.scale(out, 1.0))
        if mode == "pass":
            from tinygraph.passes import optimize
            assert optimize(g)["fuse_attention_store"] == 1
            assert "attention_store" in {n.op for n in g.nodes} and "set_rows" not in {n.op for n in g.nodes}
            assert "rms_norm" not in {n.op for n in g.nodes} and "rope" not in {n.op for n in g.nodes}
        (o,) = sess.compute(g, {x: qkv, p: np.array([pos], np.int32)})
        outs[mode] = (o, sess.download(K).astype(np.float32), sess.download(V).astype(np.float32))
    ref_o, ref_k, ref_v = outs["unfused"]
    for mode in ("op", "pass"):
        o, kc, vc = outs[mode]
        check(o, ref_o, dtype, 2)
        other = np.arange(S) != pos
        np.testing.assert_array_equal(kc[:, other], ref_k[:, other])
        np.testing.assert_array_equal(vc, ref_v)
        check(kc[:, pos], ref_k[:, pos], dtype, 2)
