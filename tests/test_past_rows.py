"""``past_rows``: softmax and attention with one position per index of the first axis (a decode
step over many sequences, each at its own position), against the float64 formula per row, on
each backend (the fused attention kernels and the softmax kernel read ``past_dev[i0]``)."""
from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from conftest import TOL, rel_err, rounded
from test_sliding_window import attention64, mask64

FLOATS = [tg.float32, tg.float16, tg.bfloat16]


def _inputs(rng, N, G, T, D, S):
    q = rng.standard_normal((N, G, T, D)).astype(np.float32)
    kt = rng.standard_normal((N, 1, D, S)).astype(np.float32)
    v = rng.standard_normal((N, 1, S, D)).astype(np.float32)
    return q, kt, v


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("fused", [True, False], ids=["attention", "softmax"])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("D", [32, 64])
def test_attention_with_a_position_per_row(backend, dtype, fused, window, D, rng):
    N, G, T, S = 6, 3, 1, 80
    q, kt, v = _inputs(rng, N, G, T, D, S)
    pasts = np.array([0, 7, 79, 31, 3, 64], np.int32)
    sess = tg.Session(backend=backend)
    g = sess.graph()
    tq, tk, tv = (g.input(a.shape, dtype, name=n) for a, n in ((q, "q"), (kt, "kt"), (v, "v")))
    tp = g.input((N,), tg.int32, name="past")
    scale = 1 / np.sqrt(D)
    if fused:
        out = tg.attention(tq, tk, tv, scale, causal=True, past=tp, window=window, past_rows=True)
    else:
        probs = tg.softmax(tg.matmul(tq, tk), scale, causal=True, past=tp, window=window, past_rows=True)
        out = tg.matmul(probs, tv)
    g.output(out)
    (got,) = sess.compute(g, {"q": q, "kt": kt, "v": v, "past": pasts})
    sess.close()
    qr, kr, vr = (rounded(a, dtype) for a in (q, kt, v))
    ref = np.stack([attention64(qr[i], kr[i], vr[i], scale, True, int(pasts[i]), window) for i in range(N)])
    assert rel_err(np.asarray(got, np.float32), ref) < TOL[dtype.name] * 4


def test_softmax_rows_see_their_own_keys():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 1, 9)).astype(np.float32)
    pasts = np.array([0, 4, 8], np.int32)
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    tx = g.input(x.shape, tg.float32, name="x")
    tp = g.input((3,), tg.int32, name="past")
    g.output(tg.softmax(tx, 1.0, causal=True, past=tp, past_rows=True))
    (got,) = sess.compute(g, {"x": x, "past": pasts})
    for i, p in enumerate(pasts):
        visible = mask64(1, 9, int(p), None)[0]
        assert np.all(got[i][..., ~visible] == 0) and np.allclose(got[i].sum(-1), 1)


def test_past_rows_argument_errors():
    g = tg.Session(backend="numpy").graph()
    x = g.input((3, 2, 1, 9), tg.float32)
    p3, p2 = g.input((3,), tg.int32), g.input((2,), tg.int32)
    with pytest.raises(tg.ShapeError, match=r"shape \(3,\)"):
        tg.softmax(x, causal=True, past=p2, past_rows=True)
    with pytest.raises(tg.ShapeError, match="int32 tensor"):
        tg.softmax(x, causal=True, past=4, past_rows=True)
    with pytest.raises(tg.ShapeError, match="causal"):
        tg.softmax(x, causal=False, past=p3, past_rows=True)
    with pytest.raises(tg.ShapeError, match="4-D"):
        tg.softmax(g.input((2, 1, 9), tg.float32), causal=True, past=p2, past_rows=True)
    q, kt, v = g.input((3, 2, 1, 8), tg.float32), g.input((3, 1, 8, 9), tg.float32), g.input((3, 1, 9, 8), tg.float32)
    assert tg.attention(q, kt, v, causal=True, past=p3, past_rows=True).params["past"] == -1
    with pytest.raises(tg.ShapeError, match="4-D"):
        tg.attention(g.input((2, 1, 8), tg.float32), g.input((2, 8, 9), tg.float32), g.input((2, 9, 8), tg.float32),
                     causal=True, past=p2, past_rows=True)
