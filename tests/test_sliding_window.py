"""Sliding-window attention on the NumPy backend: the op semantics (HF's ``kv_idx > q_idx -
sliding_window`` on top of the causal mask), the blocked reference (tinygraph/attention_ref.py)
against the plain formula, its memory, the fusion passes, and models whose config slides
(Mistral's ``sliding_window``, Qwen2's ``use_sliding_window`` / ``max_window_layers``, a generic
``layer_types`` list) against an independent float64 forward pass."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import tinygraph as tg
from conftest import attention_views, kv_cache
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


def qkv(rng, q_shape, kt_shape, v_shape, dtype=np.float32) -> tuple[np.ndarray, ...]:
    """Random q, k^T and v of these shapes (standard normal, drawn in this order) as ``dtype``."""
    return tuple(rng.standard_normal(s).astype(dtype) for s in (q_shape, kt_shape, v_shape))


def check_blocked(q, kt, v, scale, causal, past, window, block) -> np.ndarray:
    """The blocked reference against the plain float64 formula; returns the blocked result."""
    got = blocked_attention(q, kt, v, scale, causal, past, window, block=block)
    np.testing.assert_allclose(got, attention64(q, kt, v, scale, causal, past, window), rtol=2e-5, atol=2e-6)
    return got


# ---------------------------------------------------------------------------------------------
# the blocked reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [None, 1, 5, 16, 1000])
@pytest.mark.parametrize("T,S,past,block", [(1, 40, 39, 8), (23, 23, 0, 8), (37, 60, 20, 16), (64, 64, 0, 64),
                                             (50, 90, 40, 7)])
def test_blocked_equals_plain_formula_gqa(rng, T, S, past, block, window):
    # q [KV, G, T, D], k^T [KV, 1, D, S], v [KV, 1, S, Dv] with Dv != D
    q, kt, v = qkv(rng, (2, 3, T, 16), (2, 1, 16, S), (2, 1, S, 12))
    got = check_blocked(q, kt, v, 0.3, True, past, window, block)
    assert got.dtype == np.float32 and got.shape == (2, 3, T, 12)


@pytest.mark.parametrize("block", [1, 5, 256])
def test_blocked_not_causal_and_broadcast_queries(rng, block):
    q, kt, v = qkv(rng, (1, 4, 19, 8), (3, 1, 8, 31), (3, 1, 31, 8))
    check_blocked(q, kt, v, 0.5, False, 0, None, block)


@pytest.mark.parametrize("qs,ks,vs", [((9, 8), (8, 20), (20, 5)),                      # no leading axes
                                      ((2, 1, 3, 9, 8), (1, 3, 1, 8, 20), (2, 1, 1, 20, 5))])
def test_blocked_other_ranks(rng, qs, ks, vs):
    check_blocked(*qkv(rng, qs, ks, vs), 0.3, True, 11, 4, 2)


def test_blocked_half_inputs_math_in_float32(rng):
    got = check_blocked(*qkv(rng, (2, 9, 8), (2, 8, 30), (2, 30, 8), np.float16), 0.4, True, 21, 6, 4)
    assert got.dtype == np.float32


def test_rows_that_see_nothing_are_zero(rng):
    # keys 0..9 exist; positions 20.. with a window of 5 see none of them
    out = check_blocked(*qkv(rng, (1, 4, 8), (1, 8, 10), (1, 10, 8)), 1.0, True, 12, 5, 2)
    assert np.isfinite(out).all()
    assert (out[0, 2:] == 0).all() and (out[0, 0] != 0).all()   # rows at 12, 13 see key 9 / 9..; 14, 15 none


def test_keys_outside_the_window_are_not_read(rng):
    """NaN keys/values outside every row's window do not reach the result (skipped, not masked)."""
    T, S, past, w = 20, 100, 80, 8
    q, kt, v = qkv(rng, (2, T, 8), (2, 8, S), (2, S, 8))
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
    q, kt, v = qkv(rng, (2, T, D), (2, D, T), (2, T, D))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        blocked_attention(q, kt, v, 0.35, True, 0, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    scores = 2 * T * T * 4
    assert peak < scores / 6, f"peak {peak / 2**20:.1f} MiB against {scores / 2**20:.0f} MiB of scores"


# ---------------------------------------------------------------------------------------------
# the ops
# ---------------------------------------------------------------------------------------------
def _session_with_cache(rng, KV=2, S=48, D=16):
    sess = tg.Session(backend="numpy")
    k, v = rng.standard_normal((KV, S, D)), rng.standard_normal((KV, S, D))
    K, V = kv_cache(sess, k, v, tg.float32)
    return sess, K, V, k.astype(np.float32), v.astype(np.float32)


def _chain(sess, K, V, T, G, window, fuse):
    KV, S, D = K.shape
    g = sess.graph()
    q = g.input((KV, G, T, D), tg.float32, name="q")
    pos = g.input((T,), tg.int32, name="pos")
    kt, vv = attention_views(K, V)
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


# ---------------------------------------------------------------------------------------------
# models: the one builder, per-layer windows from the config
# ---------------------------------------------------------------------------------------------
FIX = __import__("pathlib").Path(__file__).parent / "fixtures"


def forward64(fam: str, cfg: dict, ids, windows) -> np.ndarray:
    """An independent float64 forward pass of a LLaMA-style HF checkpoint (Mistral, Qwen2):
    logits [T, vocab] with layer i's sliding window ``windows[i]`` (None: full causal)."""
    from safetensors.numpy import load_file
    W = {k: v.astype(np.float64) for k, v in load_file(FIX / fam / "model.safetensors").items()}
    H, KV, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd = cfg.get("head_dim") or hidden // H
    theta = cfg["rope_parameters"]["rope_theta"]
    ids = np.asarray(ids)
    T = len(ids)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]) * w

    def proj(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    ang = np.arange(T)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # HF rotate_half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        P = f"model.layers.{i}"
        h = rms(x, W[f"{P}.input_layernorm.weight"])
        q = rope(proj(h, f"{P}.self_attn.q_proj").reshape(T, H, hd).transpose(1, 0, 2))
        k = rope(proj(h, f"{P}.self_attn.k_proj").reshape(T, KV, hd).transpose(1, 0, 2))
        v = proj(h, f"{P}.self_attn.v_proj").reshape(T, KV, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)
        s = np.where(mask64(T, T, 0, windows[i]), q @ k.transpose(0, 2, 1) / math.sqrt(hd), -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        o = (p / p.sum(-1, keepdims=True)) @ v
        x = x + proj(o.transpose(1, 0, 2).reshape(T, H * hd), f"{P}.self_attn.o_proj")
        h = rms(x, W[f"{P}.post_attention_layernorm.weight"])
        g = proj(h, f"{P}.mlp.gate_proj")
        x = x + proj(g / (1 + np.exp(-g)) * proj(h, f"{P}.mlp.up_proj"), f"{P}.mlp.down_proj")
    x = rms(x, W["model.norm.weight"])
    return x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def _model_dir(tmp_path, fam: str, **changes):
    import json
    import shutil
    cfg = json.loads((FIX / fam / "config.json").read_text())
    cfg.update(changes)
    d = tmp_path / fam
    d.mkdir()
    shutil.copy(FIX / fam / "model.safetensors", d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(cfg))
    return d, cfg


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("fam", ["mistral", "qwen2"])
def test_float64_forward_matches_hf_reference(fam):
    """The test's own forward pass reproduces HF's saved logits, so it can judge the windows."""
    import json
    ref = np.load(FIX / fam / "reference.npz")
    cfg = json.loads((FIX / fam / "config.json").read_text())
    logits = forward64(fam, cfg, ref["input_ids"][0], [None] * cfg["num_hidden_layers"])
    assert _rel(logits, ref["logits"][0]) < 1e-5


SEQ = np.load(FIX / "mistral" / "reference.npz")["greedy"][0]   # 15 tokens


@pytest.mark.parametrize("fam,changes,windows", [
    ("mistral", {"sliding_window": 4}, [4, 4]),
    ("mistral", {"sliding_window": 3, "layer_types": ["sliding_attention", "full_attention"]}, [3, None]),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1,
               "layer_types": None}, [None, 3]),
], ids=["mistral", "layer_types", "qwen2"])
def test_windowed_model_prefill_and_decode(tmp_path, fam, changes, windows):
    from tinygraph.models import load_model
    d, cfg = _model_dir(tmp_path, fam, **{k: v for k, v in changes.items() if v is not None})
    if changes.get("layer_types", 1) is None:
        cfg.pop("layer_types", None)
        (d / "config.json").write_text(__import__("json").dumps(cfg))
    want = forward64(fam, cfg, SEQ, windows)
    full = forward64(fam, cfg, SEQ, [None] * len(windows))
    assert _rel(full[-1], want[-1]) > 0.05   # the window matters at this length
    with load_model(d, backend="numpy") as m:
        assert m.windows == windows
        # prefill of the whole sequence (longer than the window)
        logits = m.get_logits(m(SEQ)[0]).to_numpy()
        for t in range(len(SEQ)):
            assert _rel(logits[t], want[t]) < 1e-4, f"prefill position {t}"
        # a short prefill, then one token at a time past the window
        hidden, cache = m(SEQ[:2])
        for t in range(2, len(SEQ)):
            hidden, cache = m([SEQ[t]], past_key_values=cache)
            got = m.get_logits(hidden).to_numpy()[-1]
            assert _rel(got, want[t]) < 1e-4, f"decode position {t}"
        # the decode loop (fused attention_store graph) picks the reference's greedy tokens
        ids = list(SEQ[:3])
        for _ in range(8):
            ids.append(int(np.argmax(forward64(fam, cfg, ids, windows)[-1])))
        assert m.generate(SEQ[:3], max_new_tokens=8, temperature=0, ignore_eos=True) == ids


def test_decode_graph_carries_the_window(tmp_path):
    from tinygraph.models import load_model
    d, _ = _model_dir(tmp_path, "mistral", sliding_window=4)
    with load_model(d, backend="numpy") as m:
        g, _, _ = m.step_graph(1, "argmax")
        stores = [n for n in g.nodes if n.op == "attention_store"]
        assert len(stores) == 2 and all(n.params["window"] == 4 for n in stores)
        g, _, _ = m.step_graph(6, "logits")
        attn = [n for n in g.nodes if n.op == "attention"]
        assert len(attn) == 2 and all(n.params["window"] == 4 for n in attn)


@pytest.mark.parametrize("changes,windows", [
    ({}, [None, None]),                                                      # fixture: sliding_window null
    ({"sliding_window": 4096}, [None, None]),                                # wider than the cache: dropped
    ({"sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"]}, [None, 4]),
])
def test_mistral_windows_from_config(tmp_path, changes, windows):
    from tinygraph.models import load_model
    d, _ = _model_dir(tmp_path, "mistral", **changes)
    with load_model(d, backend="numpy") as m:
        assert m.windows == windows


def test_qwen2_window_rules():
    """transformers' Qwen2Config: no window unless use_sliding_window (default false); then
    layers i >= max_window_layers (default 28) slide; an explicit layer_types wins."""
    from tinygraph.io.config import config_from_hf
    base = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 30, "num_attention_heads": 2, "sliding_window": 8}
    w = lambda d: [config_from_hf({**base, **d}).layer_window(i) for i in range(30)]
    assert w({}) == [None] * 30
    assert w({"use_sliding_window": False, "max_window_layers": 0}) == [None] * 30
    assert w({"use_sliding_window": True}) == [None] * 28 + [8, 8]
    assert w({"use_sliding_window": True, "max_window_layers": 0}) == [8] * 30
    assert w({"use_sliding_window": True, "layer_types": ["sliding_attention"] * 30}) == [8] * 30


def test_bad_layer_types_are_refused():
    from tinygraph.io import LoadError
    from tinygraph.io.config import config_from_hf
    from tinygraph.io.errors import UnsupportedModelError
    base = {"architectures": ["MistralForCausalLM"], "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "sliding_window": 8}
    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        config_from_hf({**base, "layer_types": ["chunked_attention", "full_attention"]})
    with pytest.raises(LoadError, match="layer_types"):
        config_from_hf({**base, "layer_types": ["full_attention"]})
    with pytest.raises(LoadError, match="sliding_window"):
        config_from_hf({**base, "sliding_window": 0})
