"""``attention_store`` over a paged cache (a rows table [N, S]: sequence n's position p is cache
row ``rows[n, p]``), the op ``models.paged`` builds for a decode step over many sequences: against
a float64 computation per sequence on every backend (on CUDA: attn_gqa_paged), the fusion pass
that folds RoPE and q/k norms into it, and batched decoding on CUDA equal to one-at-a-time."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from conftest import TOL, rel_err, rounded
from test_sliding_window import attention64
from tinygraph.backends import cuda_available
from tinygraph.models import load_model
from tinygraph.models.batch import BatchRunner
from tinygraph.models.paged import KVPool
from tinygraph.passes import optimize

FIX = Path(__file__).parent / "fixtures"


def _norm_rope64(x, w, pos, theta):
    """[n, hd] float64: RMS norm * w (w None: no norm), then neox RoPE at ``pos``."""
    hd = x.shape[-1]
    if w is not None:
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    if theta is None:
        return x
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[:, : hd // 2], x[:, hd // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


CASES = [  # hd, G, S, positions (-1: a padding row over scratch at position 0), window, rope, norm
    (64, 2, 64, [0, 17, 63, -1], None, True, True),
    (128, 4, 256, [200, 5, 255], None, True, False),
    (64, 1, 128, [100, 127, 30, 64, -1, 7], 32, False, False),
    (128, 16, 128, [90], None, True, True),
]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float16, tg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("hd,G,S,positions,window,rope,norm", CASES)
def test_paged_attention_store_matches_float64(backend, rng, dtype, hd, G, S, positions, window, rope, norm):
    """N sequences in one op: each writes its new key/value into its row of its position (no
    other row changes) and attends over its own rows, scattered over the pool in random order,
    with RoPE, q/k norms and a sliding window as asked; a padding row (all scratch) disturbs
    nobody."""
    if backend == "cuda" and dtype == tg.float32:
        pytest.skip("attn_gqa_paged: f16 / bf16 only (models.paged keeps float32 decode steps unfused on CUDA)")
    KV, N = 2, len(positions)
    H, pool_rows = KV * G, N * S + 1
    scratch = pool_rows - 1
    perm = rng.permutation(N * S).astype(np.int32)
    table = perm.reshape(N, S)
    pos = np.array([max(p, 0) for p in positions], np.int32)
    for n, p in enumerate(positions):
        if p < 0:
            table[n] = scratch
    k0 = rng.standard_normal((KV, pool_rows, hd)).astype(np.float32)
    v0 = rng.standard_normal((KV, pool_rows, hd)).astype(np.float32)
    q = rng.standard_normal((N, H, hd)).astype(np.float32)
    k = rng.standard_normal((N, KV, hd)).astype(np.float32)
    v = rng.standard_normal((N, KV, hd)).astype(np.float32)
    nw = (rng.standard_normal((2, hd)) * 0.3 + 1.0).astype(np.float32)
    theta, scale = (10000.0 if rope else None), hd ** -0.5
    sess = tg.Session(backend=backend, verbose=False)
    W = sess.persistent((2, hd), dtype, name="norm_w")
    K = sess.persistent(k0.shape, dtype, name="K")
    V = sess.persistent(v0.shape, dtype, name="V")
    sess.finalize()
    for t, a in ((W, nw), (K, k0), (V, v0)):
        sess.upload(t, a)
    g = sess.graph()
    qi, ki, vi = g.input(q.shape, dtype), g.input(k.shape, dtype), g.input(v.shape, dtype)
    pi, ti = g.input((N,), tg.int32), g.input((N, S), tg.int32)
    wq, wk = (tg.view(W, (hd,), (1,), o) for o in (0, hd))
    g.output(tg.attention_store(qi, ki, vi, pi, K, V, scale, theta=theta, q_norm_w=wq if norm else None,
                                k_norm_w=wk if norm else None, q_norm=norm, k_norm=norm, eps=1e-6,
                                window=window, rows=ti))
    (out,) = sess.compute(g, {qi: q, ki: k, vi: v, pi: pos, ti: table})
    assert out.shape == (N * KV, G, 1, hd)
    kc, vc = sess.download(K).astype(np.float64), sess.download(V).astype(np.float64)
    wr = rounded(nw, dtype) if norm else (None, None)
    kk, vv = rounded(k0, dtype), rounded(v0, dtype)
    real = [n for n, p in enumerate(positions) if p >= 0]
    for n in real:  # every write before any read
        kk[:, table[n, pos[n]]] = rounded(_norm_rope64(rounded(k[n], dtype), wr[1], pos[n], theta), dtype)
        vv[:, table[n, pos[n]]] = rounded(v[n], dtype)
    kept = np.ones(pool_rows, bool)
    kept[[table[n, pos[n]] for n in real] + [scratch]] = False
    np.testing.assert_array_equal(kc[:, kept], kk[:, kept])
    np.testing.assert_array_equal(vc[:, kept], vv[:, kept])
    for n in real:
        r = table[n, pos[n]]
        assert rel_err(kc[:, r], kk[:, r]) < TOL[dtype.name]
        np.testing.assert_array_equal(vc[:, r], vv[:, r])
        qr = _norm_rope64(rounded(q[n], dtype), wr[0], pos[n], theta)
        keys, vals = kk[:, table[n]], vv[:, table[n]]                          # [KV, S, hd]
        ref = attention64(qr.reshape(KV, G, 1, hd), keys[:, None].transpose(0, 1, 3, 2), vals[:, None],
                          scale, True, int(pos[n]), window)
        got = np.asarray(out[n * KV:(n + 1) * KV], np.float64)
        assert rel_err(got, ref) < TOL[dtype.name], f"sequence {n}"


def test_paged_decode_step_is_one_attention_store_per_layer():
    """A paged decode graph: per layer one attention_store with the RoPE and q/k norms folded in
    (no rope, set_rows or gather left); Gemma 2's capped scores too (the cap a parameter)."""
    with load_model(FIX / "qwen3", backend="numpy") as m:
        pool = KVPool(m, num_blocks=8, block_size=16)
        g, layout = BatchRunner(m, pool, max_batch=4).graph(4, 1, 64, "argmax")
        ops = Counter(n.op for n in g.nodes)
        stores = [n for n in g.nodes if n.op == "attention_store"]
        assert layout.fused and ops["attention_store"] == m.config.num_layers
        assert all(n.params["rope"] and n.params["q_norm"] and n.params["k_norm"] and n.params.get("has_rows")
                   for n in stores)
        assert not ops["rope"] and not ops["set_rows"] and ops["get_rows"] == 2  # embedding, picked rows
        assert [t.name for t in g._inputs if t.name.startswith("kv_")] == ["kv_table"]
        pool.close()
    with load_model(FIX / "gemma2", backend="numpy") as m:
        pool = KVPool(m, num_blocks=8, block_size=16)
        g, layout = BatchRunner(m, pool, max_batch=4).graph(4, 1, 64, "argmax")
        stores = [n for n in g.nodes if n.op == "attention_store"]
        assert layout.fused and len(stores) == m.config.num_layers
        assert all(n.params["softcap"] == m.config.attn_softcap for n in stores)
        assert "softcap" not in {n.op for n in g.nodes if n.name != "logits_capped"}
        pool.close()


def test_rope_folds_only_with_the_stores_positions():
    """The pass leaves the RoPE alone when it rotates at other positions than the store's."""
    sess = tg.Session(backend="numpy", verbose=False)
    K = sess.persistent((2, 33, 16), tg.float32, name="K")
    V = sess.persistent((2, 33, 16), tg.float32, name="V")
    sess.finalize()
    for same in (True, False):
        g = sess.graph()
        q, k, v = g.input((2, 4, 16), tg.float32), g.input((2, 2, 16), tg.float32), g.input((2, 2, 16), tg.float32)
        pos, other, rows = g.input((2,), tg.int32), g.input((2,), tg.int32), g.input((2, 16), tg.int32)
        rp = pos if same else other
        g.output(tg.attention_store(tg.rope(q, rp, 1e4), tg.rope(k, rp, 1e4), v, pos, K, V, 0.25, rows=rows))
        optimize(g)
        ops = Counter(n.op for n in g.nodes)
        assert ops["rope"] == (0 if same else 2)


@pytest.mark.skipif(not cuda_available()[0], reason=f"needs a GPU: {cuda_available()[1]}")
def test_cuda_batched_decode_on_the_paged_kernel_equals_one_at_a_time(qwen3_256):
    """float16 on CUDA (heads of 64, groups of 2): generate_batch's decode steps run
    attn_gqa_paged, and each prompt's greedy tokens equal its tokens generated alone."""
    from cuda_support import launched_names
    mp = pytest.MonkeyPatch()
    try:
        names = launched_names(mp)
        with load_model(qwen3_256, backend="cuda", dtype="float16") as m:
            rng = np.random.default_rng(3)
            prompts = [[int(t) for t in rng.integers(3, m.config.vocab_size, n)] for n in (5, 40, 17, 1, 90)]
            kw = dict(max_new_tokens=24, temperature=0, ignore_eos=True)
            got = m.generate_batch(prompts, **kw)
            assert "attn_gqa_paged_f16_64" in names, sorted(set(names))
            alone = [m.generate(p, **kw)[len(p):] for p in prompts]
        # other kernels than alone (split-K products, the paged attention): float16 rounding
        # may flip a near tie late in a sequence, never early
        assert all(a[:8] == b[:8] for a, b in zip(got, alone)), (got, alone)
        assert sum(a == b for a, b in zip(got, alone)) >= len(prompts) - 1, (got, alone)
    finally:
        mp.undo()


def test_position_rows_equals_the_row_lookup():
    """KVPool.position_rows (a decode step's table, built block by block) equals rows_at over
    every position: owned positions in their blocks, the rest and padding rows on scratch."""
    with load_model(FIX / "llama", backend="numpy") as m:
        pool = KVPool(m, num_blocks=40, block_size=16)
        seqs = ["a", "b", None, "c"]
        for s, n in (("a", 40), ("b", 16), ("c", 1)):
            assert pool.reserve(s, n)
        pool.release("b")
        assert pool.reserve("b", 33)
        for S in (1, 16, 17, 64, 100):
            want = pool.rows_at(seqs, np.broadcast_to(np.arange(S), (len(seqs), S)))
            got = pool.position_rows(seqs, S)
            assert got.dtype == np.int32 and got.shape == (len(seqs), S) and (got == want).all(), S
        assert (pool.position_rows(seqs, 64)[2] == pool.scratch).all()
        pool.close()


def test_unfused_paged_decode_still_equals_one_at_a_time(monkeypatch):
    """TINYGRAPH_PAGED_ATTN=0 (the A/B switch): decode steps gather and attend unfused, and the
    tokens are still each prompt's own."""
    monkeypatch.setenv("TINYGRAPH_PAGED_ATTN", "0")
    with load_model(FIX / "qwen3", backend="numpy") as m:
        rng = np.random.default_rng(5)
        prompts = [[int(t) for t in rng.integers(0, m.config.vocab_size, n)] for n in (3, 20, 9)]
        kw = dict(max_new_tokens=12, temperature=0, ignore_eos=True)
        got = m.generate_batch(prompts, **kw)
        assert got == [m.generate(p, **kw)[len(p):] for p in prompts]
        pool = KVPool(m, num_blocks=8, block_size=16)
        g, layout = BatchRunner(m, pool, max_batch=4).graph(4, 1, 64, "argmax")
        assert not layout.fused and "attention_store" not in {n.op for n in g.nodes}
        pool.close()
