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


# ----------------------------------------------------------------------------------------------
# Session.compute_loop: the next step's inputs made from this step's outputs
# ----------------------------------------------------------------------------------------------
def _toy_decoder(backend, V=50, d=16, S=64, sess=None, seed=1):
    """token -> embedding -> RoPE at pos -> written into a cache row -> logits -> argmax."""
    rng = np.random.default_rng(seed)
    sess = sess or tg.Session(backend=backend, verbose=False)
    E = sess.persistent((V, d), tg.float32, name=f"E{seed}")
    W = sess.persistent((d, V), tg.float32, name=f"W{seed}")
    C = sess.persistent((1, S, d), tg.float32, name=f"cache{seed}")
    sess.finalize()
    sess.upload(E, rng.standard_normal((V, d)))
    sess.upload(W, rng.standard_normal((d, V)))
    g = sess.graph()
    tok = g.input((1,), tg.int32, name="tok")
    pos = g.input((1,), tg.int32, name="pos")
    x = tg.rope(tg.reshape(tg.get_rows(E, tok), (1, 1, d)), pos, 100.0)
    tg.set_rows(C, tg.permute(x, (1, 0, 2)), pos)
    nxt = tg.argmax(tg.matmul(tg.reshape(x, (1, d)), W), name="next")
    g.output(tg.reshape(nxt, (1,)))
    return sess, g, tok, pos, C


def _host_sequence(backend, steps, t0=3, p0=5):
    sess, g, tok, pos, C = _toy_decoder(backend)
    toks, t = [], t0
    for i in range(steps):
        (o,) = sess.compute(g, {tok: np.array([t], np.int32), pos: np.array([p0 + i], np.int32)})
        t = int(o[0])
        toks.append(t)
    return toks, sess.download(C)


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
@pytest.mark.parametrize("lookahead", [1, 4])
def test_compute_loop_matches_step_by_step(backend, lookahead):
    if backend == "cuda":
        ok, why = cuda_available()
        if not ok:
            pytest.skip(f"CUDA backend not testable here: {why}")
    ref, ref_cache = _host_sequence("numpy", 30)
    assert len(set(ref)) > 3, "toy decoder too degenerate to test feedback"
    sess, g, tok, pos, C = _toy_decoder(backend)
    loop = sess.compute_loop(g, {tok: np.array([3], np.int32), pos: np.array([5], np.int32)}, 30,
                             feedback={tok: g.outputs[0]}, advance={pos: 1}, lookahead=lookahead)
    got = [int(o[0]) for (o,) in loop]
    assert got == ref
    cache = sess.download(C)
    np.testing.assert_allclose(cache, ref_cache, rtol=1e-5, atol=1e-5)
    # stopping early: the queued steps finish, later calls see a consistent session
    loop = sess.compute_loop(g, {tok: np.array([3], np.int32), pos: np.array([5], np.int32)}, 30,
                             feedback={tok: g.outputs[0]}, advance={pos: 1}, lookahead=lookahead)
    first = [int(next(loop)[0][0]) for _ in range(7)]
    loop.close()
    assert first == ref[:7]
    (o,) = sess.compute(g, {tok: np.array([ref[9]], np.int32), pos: np.array([15], np.int32)})
    assert int(o[0]) == ref[10]


def test_compute_loop_argument_errors():
    sess, g, tok, pos, C = _toy_decoder("numpy")
    feeds = {tok: np.array([3], np.int32), pos: np.array([5], np.int32)}
    with pytest.raises(tg.GraphError, match="not an input"):
        sess.compute_loop(g, feeds, 3, feedback={"nope": g.outputs[0]})
    with pytest.raises(tg.GraphError, match="must be an output"):
        sess.compute_loop(g, feeds, 3, feedback={tok: tok})
    with pytest.raises(tg.ShapeError, match="one int or 1"):
        sess.compute_loop(g, feeds, 3, advance={pos: [1, 2]})
    with pytest.raises(ValueError, match="steps"):
        sess.compute_loop(g, feeds, -1)
    assert list(sess.compute_loop(g, feeds, 0)) == []
    # advance without feedback: a fixed token at consecutive positions
    outs = [int(o[0]) for (o,) in sess.compute_loop(g, feeds, 3, advance={"pos": 1})]
    want = [int(sess.compute(g, {tok: np.array([3], np.int32), pos: np.array([p], np.int32)})[0][0]) for p in (5, 6, 7)]
    assert outs == want


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_compute_loops_interleaved_in_one_session(backend):
    """Two decode loops over two graphs of one session, advanced alternately (they share the
    backend's input area, arena and stream), each with plain computes of the other in between."""
    if backend == "cuda":
        ok, why = cuda_available()
        if not ok:
            pytest.skip(f"CUDA backend not testable here: {why}")
    refs = []
    for seed in (1, 2):
        s_, g_, t_, p_, _ = _toy_decoder("numpy", seed=seed)
        toks, t = [], 3
        for i in range(20):
            t = int(s_.compute(g_, {t_: np.array([t], np.int32), p_: np.array([5 + i], np.int32)})[0][0])
            toks.append(t)
        refs.append(toks)
    sess = tg.Session(backend=backend, verbose=False)
    decs = [_toy_decoder(backend, sess=sess, seed=seed) for seed in (1, 2)]
    feeds = [{tok: np.array([3], np.int32), pos: np.array([5], np.int32)} for _, g, tok, pos, _ in decs]
    loops = [sess.compute_loop(g, f, 20, feedback={tok: g.outputs[0]}, advance={pos: 1})
             for (_, g, tok, pos, _), f in zip(decs, feeds)]
    got = [[], []]
    for i in range(20):
        for j in (0, 1):
            got[j].append(int(next(loops[j])[0][0]))
            _, g, tok, pos, _ = decs[1 - j]  # a plain step of the other graph in between
            sess.compute(g, {tok: np.array([7], np.int32), pos: np.array([40], np.int32)})
    assert got == refs


def test_profiled_decode_step_on_cuda():
    """--profile's CUDA path: every compute node of a decode step gets a GPU time (events around
    each kernel, launched one by one), and the step still computes the right token."""
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"CUDA backend not testable here: {why}")
    from pathlib import Path

    from tinygraph.models import load_model
    fix = Path(__file__).resolve().parent / "fixtures" / "llama"
    with load_model(fix, backend="cuda", dtype="float32") as m:
        first = m.step([1, 2, 3], 0, "argmax")
        want = m.step([first], 3, "argmax")
        g, times = m.profile_decode(first, 3)
        assert set(times) == {n.id for n in g.plan().order}
        assert all(t > 0 for t in times.values()) and sum(times.values()) < 1e6
        assert m.step([first], 3, "argmax") == want  # the replayed graph is unaffected
