"""Rewrite passes: attention fusion keeps results and is visible in the graph."""
from __future__ import annotations

import numpy as np

import tinygraph as tg
from tinygraph.passes import fuse_attention, optimize
from conftest import attention_views, rel_err


def _chain(sess, q_shape, K, past):
    g = sess.graph()
    q = g.input(q_shape, tg.float32, name="q")
    pos = g.input((q_shape[-2],), tg.int32, name="pos")
    kt, vv = attention_views(K, K)
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
    assert optimize(g2) == {"fuse_attention": 1, "fuse_rope_store": 0, "fuse_attention_store": 0, "fuse_linear": 0}
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


def test_fuse_linear_layers_of_every_family(backend):
    """Every tiny model: the fused graph has linear nodes and gives the unfused graph's logits."""
    from pathlib import Path
    from tinygraph.models import load_model
    fix = Path(__file__).parent / "fixtures"
    for fam in ["gpt2", "llama", "qwen2", "qwen3"]:
        ref = np.load(fix / fam / "reference.npz")
        ids = ref["input_ids"][0].astype(np.int32)
        with load_model(fix / fam, dtype="float32", backend=backend) as m:
            outs = []
            for fuse in (False, True):
                g, tid, pid = m.step_graph(len(ids), "all_logits", fuse=fuse)
                ops = [n.op for n in g.nodes]
                if fuse:
                    L = m.config.num_layers
                    assert ops.count("linear") == 4 * L + 1, (fam, ops.count("linear"))
                    assert ops.count("rope_store") == (0 if fam == "gpt2" else L)
                    assert "softmax" not in ops and "silu" not in ops and "gelu" not in ops
                (o,) = m.session.compute(g, {tid: ids, pid: np.arange(len(ids), dtype=np.int32)})
                outs.append(o)
            assert rel_err(outs[1], outs[0]) < 1e-5, fam
            assert rel_err(outs[1], ref["logits"][0]) < 1e-4, fam


def test_linear_op_matches_formula(backend, rng):
    x = rng.standard_normal((3, 40)).astype(np.float32)
    w = rng.standard_normal((16, 40)).astype(np.float32) / 6
    b = rng.standard_normal(16).astype(np.float32)
    nw = rng.standard_normal(40).astype(np.float32)
    r = rng.standard_normal((3, 8)).astype(np.float32)
    sess = tg.Session(backend=backend)
    W, B, NW = (sess.persistent(a.shape, tg.float32, name=n) for a, n in ((w, "w"), (b, "b"), (nw, "nw")))
    sess.finalize()
    for t, a in ((W, w), (B, b), (NW, nw)):
        sess.upload(t, a)
    g = sess.graph()
    xi, ri = g.input(x.shape, tg.float32), g.input(r.shape, tg.float32)
    g.output(tg.linear(xi, W, B, ri, norm="rms", norm_w=NW, eps=1e-6, act="swiglu"))
    (o,) = sess.compute(g, {xi: x, ri: r})
    h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * nw
    z = h @ w.T + b
    ref = z[:, :8] / (1 + np.exp(-z[:, :8])) * z[:, 8:] + r
    assert rel_err(o, ref) < 1e-5


def test_detached_building_and_replace():
    """A rewrite builds its replacement detached (nothing added, no side effect recorded), then
    Graph.replace puts it in the old node's place and id."""
    import numpy as np

    import tinygraph as tg
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    x = g.input((2, 3), tg.float32, name="x")
    a = tg.scale(x, 2.0, name="a")
    b = tg.add(a, a, name="b")
    g.output(b)
    n_before, old_id = len(g.nodes), a.id
    with g.detached() as held:
        a2 = tg.scale(x, 3.0, name="a2")
    assert len(g.nodes) == n_before and held == [a2] and not g.side_effects
    g.replace(a, a2)
    assert a2.id == old_id and g.nodes[g.nodes.index(a2)] is a2 and b.srcs == (a2, a2)
    (out,) = sess.compute(g, {"x": np.ones((2, 3), np.float32)})
    assert np.allclose(out, 6.0)
    sess.close()


def test_a_norm_read_by_several_weight_matmuls_is_folded_into_each(backend, rng):
    # a Q4_K_M file's q / k / v of different types stay separate matmuls of one normalised row:
    # each becomes a linear with the norm (no rms_norm kernel left); a norm something else also
    # reads (here a graph output) is left alone
    sess = tg.Session(backend=backend)
    K = 64
    ws = [sess.persistent((n, K), tg.float32, name=f"w{n}") for n in (32, 16, 16)]
    nw = sess.persistent((K,), tg.float32, name="nw")
    sess.finalize()
    for w in ws:
        sess.upload(w, rng.standard_normal(w.shape).astype(np.float32) / 8)
    sess.upload(nw, (1 + 0.1 * rng.standard_normal(K)).astype(np.float32))
    xv = rng.standard_normal((2, K)).astype(np.float32)
    for also_output in (False, True):
        g = sess.graph()
        x = g.input((2, K), tg.float32, name="x")
        h = tg.rms_norm(x, nw, 1e-6, name="n")
        for w in ws:
            g.output(tg.matmul(h, tg.transpose(w)))
        if also_output:
            g.output(h)
        ref = sess.compute(g, {x: xv})
        n = optimize(g)["fuse_linear"]
        ops = [t.op for t in g.nodes]
        assert (n, ops.count("rms_norm"), ops.count("linear")) == ((0, 1, 0) if also_output else (3, 0, 3))
        out = sess.compute(g, {x: xv})
        for a, b in zip(out, ref):
            assert rel_err(a, b) < 1e-5


def _capped_chain(sess, q_shape, K, softmax_scale=1.0):
    """Gemma 2's scores: matmul -> scale -> softcap -> softmax -> matmul."""
    g = sess.graph()
    q = g.input(q_shape, tg.float32, name="q")
    kt, vv = attention_views(K, K)
    s = tg.softcap(tg.scale(tg.matmul(q, kt, name="l0.scores"), 0.5, name="l0.scores_scaled"), 1.5,
                   name="l0.scores_capped")
    p = tg.softmax(s, softmax_scale, causal=True, past=20, name="l0.probs")
    g.output(tg.matmul(p, vv, name="l0.mix"))
    return g, q


def test_fuse_attention_folds_a_soft_cap(backend, rng):
    """scale -> softcap between the scores and the softmax becomes the attention's softcap; the
    result is softmax(cap * tanh(s * scale / cap)) @ v, checked in float64."""
    sess = tg.Session(backend=backend)
    kv = rng.standard_normal((2, 50, 16)).astype(np.float32)
    K = sess.persistent(kv.shape, tg.float32, name="K")
    sess.finalize()
    sess.upload(K, kv)
    qv = rng.standard_normal((2, 3, 4, 16)).astype(np.float32)
    g, q = _capped_chain(sess, qv.shape, K)
    assert fuse_attention(g) == 1
    (att,) = [n for n in g.nodes if n.op == "attention"]
    assert att.params["softcap"] == 1.5 and att.params["scale"] == 0.5
    assert not {"softcap", "scale", "softmax"} & {n.op for n in g.nodes}
    (got,) = sess.compute(g, {q: qv})
    s = 1.5 * np.tanh(qv.astype(np.float64) @ kv[:, None].transpose(0, 1, 3, 2).astype(np.float64) * 0.5 / 1.5)
    s = np.where(np.arange(50)[None, :] <= np.arange(4)[:, None] + 20, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    want = (e / e.sum(-1, keepdims=True)) @ kv[:, None].astype(np.float64)
    assert rel_err(got, want) < 1e-5
    # a softmax that scales the capped scores again, or capped scores read elsewhere: no fusion
    g2, _ = _capped_chain(sess, qv.shape, K, softmax_scale=0.7)
    assert fuse_attention(g2) == 0
    g3, _ = _capped_chain(sess, qv.shape, K)
    g3.output(next(n for n in g3.nodes if n.name == "l0.scores_capped"))
    assert fuse_attention(g3) == 0


def test_attention_softcap_must_be_a_positive_finite_number():
    import pytest
    from tinygraph.errors import GraphError
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    q, kt, v = (g.input(s, tg.float32) for s in ((1, 2, 3, 8), (1, 1, 8, 5), (1, 1, 5, 8)))
    for bad in (0, -1.0, float("nan"), float("inf"), True, "30"):
        with pytest.raises(GraphError, match="cap must be a finite number > 0"):
            tg.attention(q, kt, v, softcap=bad)
    assert tg.attention(q, kt, v, softcap=30).params["softcap"] == 30.0
    assert "softcap" not in tg.attention(q, kt, v).params  # graphs without a cap keep their params
