"""CUDA-graph replay: a graph re-run with new inputs is captured once, then replayed with no
Python kernel launches, and gives the same results as eager runs and as NumPy."""
from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.backends import cuda_available
from conftest import rel_err


def _build(sess, K, V):
    g = sess.graph()
    x = g.input((1, 2, 16), tg.float32, name="x")        # [T, kv heads, d]
    pos = g.input((1,), tg.int32, name="pos")
    tg.set_rows(K, tg.permute(x, (1, 0, 2)), pos)
    tg.set_rows(V, tg.permute(tg.scale(x, -1.0), (1, 0, 2)), pos)
    kt = tg.view(K, (2, 1, 16, 64), (64 * 16, 0, 1, 16))
    vv = tg.view(V, (2, 1, 64, 16), (64 * 16, 0, 16, 1))
    q = tg.reshape(tg.rope(tg.reshape(x, (1, 2, 16)), pos, 10000.0), (2, 1, 1, 16))
    g.output(tg.attention(q, kt, vv, 0.25, causal=True, past=pos))
    return g, x, pos


def _run(backend, steps):
    sess = tg.Session(backend=backend)
    K = sess.persistent((2, 64, 16), tg.float32, name="K")
    V = sess.persistent((2, 64, 16), tg.float32, name="V")
    sess.finalize()
    g, x, pos = _build(sess, K, V)
    outs, launches = [], []
    for p, xv in steps:
        (o,) = sess.compute(g, {x: xv, pos: np.array([p], np.int32)})
        outs.append(o)
        launches.append(getattr(sess.backend, "launches", 0))
    return outs, launches


def test_replay_matches_numpy_and_launches_nothing():
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"CUDA backend not testable here: {why}")
    rng = np.random.default_rng(0)
    steps = [(p, rng.standard_normal((1, 2, 16)).astype(np.float32)) for p in range(12)]
    ref, _ = _run("numpy", steps)
    got, launches = _run("cuda", steps)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert rel_err(a, b) < 1e-5, f"step {k}"
    assert launches[2] == launches[-1], f"kernels launched from Python after capture: {launches}"
