"""The mixture-of-experts ops ``moe_gate_up`` and ``moe_down`` against a float64 NumPy loop over
each token's chosen experts, on NumPy and (on a GPU) CUDA: sizes for the 16-byte and the scalar
kernels, rows with fewer chosen experts than slots, every dtype. (``moe_route``: tests/test_moe.py.)"""
from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from conftest import rel_err


def _route(rng: np.random.Generator, T: int, E: int, k: int) -> np.ndarray:
    """Routing weights [T, E]: k random experts per row with positive weights; row 1 has only
    one expert (its other slots stay empty), row 2 none."""
    r = np.zeros((T, E), np.float32)
    for t in range(T):
        n = k if t not in (1, 2) else (1 if t == 1 else 0)
        r[t, rng.choice(E, n, replace=False)] = rng.uniform(0.1, 1.0, n)
    return r


def _want(x, w_gu, w_down, route, k, act):
    """(h [T, k, I], y [T, H]) in float64, slot j = the j-th chosen expert by index."""
    x, w_gu, w_down, route = (a.astype(np.float64) for a in (x, w_gu, w_down, route))
    T, E = route.shape
    I = w_gu.shape[0] // (2 * E)
    h = np.zeros((T, k, I))
    y = np.zeros((T, w_down.shape[0]))
    for t in range(T):
        for j, e in enumerate(np.flatnonzero(route[t])[:k]):
            g, u = w_gu[e * I:(e + 1) * I] @ x[t], w_gu[(E + e) * I:(E + e + 1) * I] @ x[t]
            a = g / (1 + np.exp(-g)) if act == "silu" else 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
            h[t, j] = a * u
            y[t] += route[t, e] * (w_down[:, e * I:(e + 1) * I] @ h[t, j])
    return h, y


@pytest.mark.parametrize("T, K, I, E, k, H", [(1, 64, 16, 8, 2, 64), (5, 256, 48, 16, 3, 40),
                                              (4, 37, 13, 6, 2, 29), (3, 8, 8, 4, 4, 8)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_moe_gate_up_and_down(T, K, I, E, k, H, dtype, act, backend):
    rng = np.random.default_rng(T * 1000 + K + I)
    x = rng.standard_normal((T, K)).astype(np.float32)
    w_gu = (rng.standard_normal((2 * E * I, K)) / np.sqrt(K)).astype(np.float32)
    w_down = (rng.standard_normal((H, E * I)) / np.sqrt(I)).astype(np.float32)
    route = _route(rng, T, E, k)
    dt = tg.dtypes.as_dtype(dtype)
    # the expected values from the inputs as the model dtype stores them
    rt = [np.asarray(a, dt.np).astype(np.float32) for a in (x, w_gu, w_down, route)]
    want_h, want_y = _want(*rt, k, act)
    with tg.Session(backend=backend) as s:
        W = {n: s.persistent(a.shape, dt, name=n) for n, a in (("gu", w_gu), ("down", w_down))}
        s.finalize()
        s.upload(W["gu"], w_gu)
        s.upload(W["down"], w_down)
        g = s.graph()
        xi = g.input((T, K), dt, name="x")
        ri = g.input((T, E), dt, name="route")
        h = tg.moe_gate_up(xi, W["gu"], ri, k, act)
        y = tg.moe_down(h, W["down"], ri)
        g.output(h)
        g.output(y)
        got_h, got_y = s.compute(g, {xi: x, ri: route})
    tol = {"float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}[dtype]
    assert got_h.shape == (T, k, I) and got_y.shape == (T, H)
    assert rel_err(got_h.astype(np.float64), want_h) < tol
    assert rel_err(got_y.astype(np.float64), want_y) < tol
    if T > 2:
        assert not got_h[2].any() and not got_y[2].any()  # no expert: zeros
        assert not got_h[1, 1:].any()  # one expert: the later slots empty


def test_moe_op_arguments():
    with tg.Session(backend="numpy") as s:
        g = s.graph()
        x = g.input((2, 8), tg.float32)
        r = g.input((2, 4), tg.float32)
        w = g.input((2 * 4 * 3, 8), tg.float32)
        with pytest.raises(tg.GraphError, match="act"):
            tg.moe_gate_up(x, w, r, 2, act="relu")
        with pytest.raises(tg.ShapeError, match="2 \\* 4 \\* I rows"):
            tg.moe_gate_up(x, g.input((7, 8), tg.float32), r, 2)
        h = tg.moe_gate_up(x, w, r, 2)
        assert h.shape == (2, 2, 3)
        with pytest.raises(tg.ShapeError, match="columns"):
            tg.moe_down(h, g.input((5, 11), tg.float32), r)
        with pytest.raises(tg.GraphError, match="top_k"):
            tg.moe_route(r, 5, True)
