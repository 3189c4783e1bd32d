"""The persistent decode kernel (cuda_src/persist.cu via tinygraph/backends/cuda/persistent.py) on
a GPU: a chain of fused linears run as tasks ordered by counters gives what the same linears give
as separate kernels -- up to float32 rounding, since each output column is computed by the same
code in the same order -- and matches float64; whole decode steps and replayed decode loops give the same
logits and tokens with segments on and off."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.backends import cuda_available
from tinygraph.backends.cuda import persistent
from tinygraph.models import load_model
from cuda_support import launched_names

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _need_cuda():
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"CUDA backend not testable here: {why}")


def _chain(backend: str, dt, K: int, rng_seed: int = 0):
    """x [1, K] -> rms-normed swiglu up (2F) -> down + residual -> layer-normed gelu with bias ->
    a 3-column head: four linears on one row, each reading the one before."""
    rng = np.random.default_rng(rng_seed)
    F = 3 * K // 2
    sess = tg.Session(backend=backend, verbose=False)

    def weight(shape, scale, name):
        t = sess.persistent(shape, dt, name=name)
        return t, (rng.standard_normal(shape) * scale).astype(np.float32)
    ws = {k: weight(s, sc, k) for k, s, sc in (
        ("nw", (K,), 1.0), ("up", (2 * F, K), K ** -0.5), ("down", (K, F), F ** -0.5),
        ("lw", (K,), 1.0), ("lb", (K,), 0.1), ("fc", (K, K), K ** -0.5), ("b", (K,), 0.1),
        ("head", (3, K), K ** -0.5))}
    sess.finalize()
    for t, v in ws.values():
        sess.upload(t, v.astype(dt.np))
    g = sess.graph()
    x = g.input((1, K), dt, name="x")
    w = {k: t for k, (t, _) in ws.items()}
    h = tg.linear(x, w["up"], norm="rms", norm_w=w["nw"], act="swiglu", eps=1e-6)
    h = tg.linear(h, w["down"], residual=x)
    h = tg.linear(h, w["fc"], bias=w["b"], norm="layer", norm_w=w["lw"], norm_b=w["lb"], act="gelu")
    g.output(tg.linear(h, w["head"]))
    g.output(h)
    xv = rng.standard_normal((1, K)).astype(dt.np)
    outs = [sess.compute(g, {x: xv}) for _ in range(3)]  # eager, captured, replayed
    sess.close()
    return outs


@pytest.mark.parametrize("dt,K", [(tg.float16, 576), (tg.bfloat16, 2048), (tg.float32, 1000),
                                  (tg.float16, 14336)])
def test_a_linear_chain_matches_separate_kernels(monkeypatch, dt, K):
    names = launched_names(monkeypatch)
    monkeypatch.setattr(persistent, "ENABLED", True)
    on = _chain("cuda", dt, K)
    assert f"persist_linear_{dt.short}" in names
    monkeypatch.setattr(persistent, "ENABLED", False)
    del names[:]
    off = _chain("cuda", dt, K)
    assert not any(n.startswith("persist_") for n in names)
    ref = _chain("numpy", dt, K)
    for a, b, r in zip(on, off, ref):
        for u, v, w in zip(a, b, r):
            _same(u, v)
            tol = 2e-2 if dt != tg.float32 else 1e-4
            np.testing.assert_allclose(u.astype(np.float32), w.astype(np.float32), rtol=tol, atol=tol)


def _same(a: np.ndarray, b: np.ndarray, msg: str = "") -> None:
    """Equal up to float32 rounding: each column is the same sum in the same order, but the
    compiler may contract or schedule the float32 arithmetic differently in the two kernels."""
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-5, atol=1e-5, err_msg=msg)


def _decode(fam: str, dtype: str):
    with load_model(FIX / fam, backend="cuda", dtype=dtype) as m:
        prompt = np.arange(3, 10, dtype=np.int32)
        outs = [m.step(prompt, 0)]
        tok = int(np.argmax(outs[-1][-1]))
        for t in range(8):  # eager, captured, then replays
            outs.append(m.step(np.array([tok], np.int32), len(prompt) + t))
            tok = int(np.argmax(outs[-1][-1]))
        toks = list(m.decode_loop(tok, len(prompt) + 8, 24))  # replays queued ahead
    return outs, toks


@pytest.mark.parametrize("fam,dtype", [("llama", "float16"), ("qwen3", "bfloat16"), ("gpt2", "float16"),
                                       ("phi3", "float16"), ("llama", "float32"), ("gpt_neox", "float16"),
                                       ("mistral", "bfloat16")])
def test_decode_steps_are_the_same_with_and_without_segments(monkeypatch, fam, dtype):
    names = launched_names(monkeypatch)
    monkeypatch.setattr(persistent, "ENABLED", True)
    on, on_toks = _decode(fam, dtype)
    assert any(n.startswith("persist_linear_") for n in names)
    monkeypatch.setattr(persistent, "ENABLED", False)
    off, off_toks = _decode(fam, dtype)
    assert on_toks == off_toks
    for k, (a, b) in enumerate(zip(on, off)):
        _same(a, b, f"step {k}")


def test_the_stamped_kernel_keeps_the_order_and_the_outputs(monkeypatch):
    # persist_linear_stamps: the same logits as the plain persistent kernel, every task stamped
    # by a block on a real SM, and no task finding its needs met before they were done
    from tinygraph import task_timeline
    monkeypatch.setattr(persistent, "ENABLED", True)
    names = launched_names(monkeypatch)
    with load_model(FIX / "llama", backend="cuda", dtype="float16") as m:
        prompt = np.arange(3, 10, dtype=np.int32)
        m.step(prompt, 0)
        g, ids, pos = m.step_graph(1, "logits")
        feeds = {ids: np.array([11], np.int32), pos: np.array([len(prompt)], np.int32)}
        (plain,) = m.session.compute(g, feeds)
        persistent.record_timeline(m.session.backend)
        g2, ids2, pos2 = m.step_graph(1, "logits")
        (stamped,) = m.session.compute(g2, {ids2: feeds[ids], pos2: feeds[pos]})
        timelines = persistent.read_timeline(m.session.backend)
        sms = m.session.backend.lib.sm_count
    assert any(n.startswith("persist_linear_stamps_") for n in names) and timelines
    _same(stamped, plain)
    for seg, stamps in timelines:
        assert task_timeline.order_violations(seg.tables, stamps) == []
        assert ((stamps[:, 3] >> np.uint64(32)) < sms).all()
        assert "block" in task_timeline.report(seg.tables, stamps, [f"n{i}" for i in range(seg.tables.counters)])
