"""Rewrite passes: attention fusion keeps results and is visible in the graph."""
from __future__ import annotations

import numpy as np

import tinygraph as tg
from tinygraph.passes import fuse_attention, optimize
from conftest import rel_err


def _chain(sess, q_shape, K, past):
    g = sess.graph()
    q = g.input(q_shape, tg.float32, name="q")
    pos = g.input((q_shape[-2],), tg.int32, name="pos")
    kv, S, d = K.shape
    kt = tg.view(K, (kv, 1, d, S), (S * d, 0, 1, d))
    vv = tg.view(K, (kv, 1, S, d), (S * d, 0, d, 1))
    s = tg.matmul(q, kt, name="l0.scores")
    p = tg.softmax(s, 0.2, causal=True, past=pos if past is None else past, name="l0.probs")
    o = tg.matmul(p, vv, name="l0.mix")
    g.output(tg.scale(o, 2.0))
    return g, q, pos


def test_fuse_attention_rewrites_and_matches(backend, rng):
    sess = tg.Session(backend=backend)
    K = sess.persistent((2, 50, 16), tg.float32, name="K")
    sess.finalize()
    sess.upload(K, rng.standard_normal((2, 50, 16)))
    qv = rng.standard_normal((2, 3, 4, 16)).astype(np.float32)
    feeds = lambda q, pos: {q: qv, pos: np.arange(20, 24, dtype=np.int32)}
    g1, q1, p1 = _chain(sess, qv.shape, K, None)
    (unfused,) = sess.compute(g1, feeds(q1, p1))
    g2, q2, p2 = _chain(sess, qv.shape, K, None)
    n_before = len(g2.nodes)
    assert optimize(g2) == {"fuse_attention": 1}
    ops_after = [n.op for n in g2.nodes]
    assert "attention" in ops_after and "softmax" not in ops_after and len(g2.nodes) == n_before - 2
    assert any(n.name == "l0.attention" for n in g2.nodes)
    (fused,) = sess.compute(g2, feeds(q2, p2))
    assert rel_err(fused, unfused) < 1e-5


def test_fusion_skips_when_scores_are_used_elsewhere():
    sess = tg.Session(backend="numpy")
    K = sess.persistent((2, 10, 8), tg.float32, name="K")
    g, q, pos = _chain(sess, (2, 1, 1, 8), K, 3)
    s = next(n for n in g.nodes if n.name == "l0.scores")
    g.output(s)
    assert fuse_attention(g) == 0
