"""Mixture-of-experts families (issue 16): Mixtral, Qwen3-MoE (norm_topk_prob on / off,
mlp_only_layers, decoder_sparse_step) and Qwen2-MoE (shared expert with its sigmoid gate) against
HF transformers' outputs in tests/fixtures (tools/make_fixtures.py with tools/fixture_moe.py):
full-sequence logits, incremental logits through the KV cache, greedy ids (argmax loops over
HF's forward with and without its cache), on NumPy and (on a GPU) CUDA; the grouped (chosen
experts only) and dense forms; ``moe_route`` against a NumPy top-k; config keys and refused variants. (qwen3_moe_gguf: the HF model of the
Qwen3-MoE GGUF fixture, every layer MoE; GGUF files: tests/test_io_gguf_moe.py.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from conftest import rel_err
from hf_checks import reference as _ref, hf_config as _cfg
from hf_checks import reference_tests
from tinygraph.io import LoadError, UnsupportedModelError, load_checkpoint
from tinygraph.io.config import config_from_hf
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
FAMILIES = ["mixtral", "qwen3_moe", "qwen3_moe_step", "qwen2_moe", "qwen3_moe_gguf"]


def _check_spec(m, fam: str) -> None:
    assert m.spec.name == fam.removesuffix("_step").removesuffix("_gguf") and m.config.moe is not None


test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision = reference_tests(
    FAMILIES, lambda fam, backend, dtype: load_model(FIX / fam, dtype=dtype, backend=backend), _check_spec)


@pytest.mark.parametrize("fam", FAMILIES)
def test_every_expert_is_routed_in_the_reference(fam):
    """The fixtures' greedy sequences send tokens to every expert of every MoE layer (HF's
    routers, counted by tools/fixture_moe.py), and the MoE layers are the ones tinygraph reads
    from the config (dense layers: mlp_only_layers, decoder_sparse_step)."""
    hits = _ref(fam)["expert_hits"]
    moe = config_from_hf(_cfg(fam)).moe
    assert hits.shape == (len(moe.sparse), moe.num_experts)
    assert [bool(r.any()) for r in hits] == list(moe.sparse)
    assert all(r.min() > 0 for r, s in zip(hits, moe.sparse) if s)


@pytest.mark.parametrize("fam", FAMILIES)
def test_decode_graph_fuses(fam):
    """The decode step keeps the fused attention; each MoE layer is one ``moe_route`` and the
    grouped ``moe_gate_up`` / ``moe_down`` (only the chosen experts); SwiGLU ``linear``s remain
    for the dense MLP layers and the shared expert."""
    with load_model(FIX / fam, backend="numpy") as m:
        g, _, _ = m.step_graph(1, "argmax")
        moe, n_layers = m.config.moe, m.config.num_layers
        ops = [n.op for n in g.nodes]
        swiglu = [n for n in g.nodes if n.op == "linear" and n.params.get("act") == "swiglu"]
    n_moe = sum(moe.sparse)
    assert ops.count("attention_store") == n_layers and "set_rows" not in ops
    assert ops.count("argmax") == 1  # the next token only: routing is moe_route
    assert ops.count("moe_route") == ops.count("moe_gate_up") == ops.count("moe_down") == n_moe
    assert len(swiglu) == n_layers - n_moe + (n_moe if moe.shared_size else 0)  # dense MLP layers, + shared


@pytest.mark.parametrize("fam", ["qwen3_moe", "mixtral"])
def test_prefill_runs_every_expert_densely(fam):
    """Where most experts see a token (``T * top_k > E``, more than 8 rows), the block runs the dense form: one
    SwiGLU ``linear`` over all experts' gate/up rows, the routing weights applied before ``down``."""
    with load_model(FIX / fam, backend="numpy") as m:
        moe = m.config.moe
        T = max(moe.num_experts // moe.top_k + 1, 9)  # more than 8 rows (decode-like rows stay grouped)
        g, _, _ = m.step_graph(T, "argmax")
        ops = [n.op for n in g.nodes]
    assert "moe_gate_up" not in ops and ops.count("moe_route") == sum(moe.sparse)


def test_grouped_and_dense_forms_agree(monkeypatch):
    """One decode step and the greedy ids, grouped form vs ``TINYGRAPH_MOE=dense`` (its down
    matrices in groups), on the Qwen2-MoE fixture (shared expert too)."""
    import tinygraph.models.moe as moe_mod
    ref = _ref("qwen2_moe")
    out = {}
    for grouped in (True, False):
        monkeypatch.setattr(moe_mod, "GROUPED", grouped)
        with load_model(FIX / "qwen2_moe", backend="numpy") as m:
            assert m._moe_group == (8 if grouped else 16384 // 16)
            out[grouped] = m.generate(ref["input_ids"][0], max_new_tokens=8, temperature=0)
    assert out[True] == out[False] == list(ref["greedy"][0])


@pytest.mark.parametrize("fam", ["mixtral", "qwen2_moe"])
def test_unfused_graph_gives_the_same_logits(fam):
    ref = _ref(fam)
    ids = ref["input_ids"][0].astype(np.int32)
    with load_model(FIX / fam, backend="numpy") as m:
        g, tid, pid = m.step_graph(len(ids), "all_logits", fuse=False)
        (logits,) = m.session.compute(g, {tid: ids, pid: np.arange(len(ids), dtype=np.int32)})
    assert rel_err(logits, ref["logits"][0]) < 1e-4


@pytest.mark.parametrize("fam", ["qwen3_moe", "qwen2_moe"])
def test_down_projection_in_groups_of_experts(fam, backend, monkeypatch):
    """With the grouped form off (``TINYGRAPH_MOE=dense``; block-quantized experts), experts whose
    down matrices together are wider than MAX_DOWN_K go through several packed matrices (3 + 3 +
    2 experts here), summed: same logits and greedy ids."""
    import tinygraph.models.moe as moe_mod
    monkeypatch.setattr(moe_mod, "MAX_DOWN_K", 3 * 16 + 5)
    monkeypatch.setattr(moe_mod, "GROUPED", False)  # the grouped form packs every expert in one matrix
    ref = _ref(fam)
    with load_model(FIX / fam, backend=backend) as m:
        assert [n for n in m.W if n.startswith("layers.0.moe.down.")] == [f"layers.0.moe.down.{g}.weight"
                                                                          for g in (0, 3, 6)]
        assert m.W["layers.0.moe.down.6.weight"].shape == (64, 32)
        logits = m.get_logits(m(ref["input_ids"][0])[0]).to_numpy()
        assert m.generate(ref["input_ids"][0], max_new_tokens=8, temperature=0) == list(ref["greedy"][0])
    assert rel_err(logits, ref["logits"][0]) < 1e-4


# ----------------------------------------------------------------------------------- routing
def _numpy_routing(logits: np.ndarray, k: int, norm: bool) -> np.ndarray:
    """Routing weights [T, E]: top-k by a stable sort (ties: lowest index), softmax over the
    chosen (norm) or over all, kept at the chosen."""
    x = logits.astype(np.float64)
    top = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    mask = np.zeros_like(x, bool)
    np.put_along_axis(mask, top, True, axis=-1)
    if norm:
        e = np.where(mask, np.exp(x - x.max(-1, keepdims=True)), 0.0)
    else:
        e = np.exp(x - x.max(-1, keepdims=True)) * 1.0
        e = e / e.sum(-1, keepdims=True) * mask
        return e
    return e / e.sum(-1, keepdims=True)


def _route(backend: str, x: np.ndarray, k: int, norm: bool, dtype: str = "float32") -> np.ndarray:
    with tg.Session(backend=backend) as s:
        g = s.graph()
        inp = g.input(x.shape, tg.dtypes.as_dtype(dtype), name="router_logits")
        g.output(tg.moe_route(inp, k, norm))
        (w,) = s.compute(g, {inp: x})
    return w


@pytest.mark.parametrize("fam", ["qwen3_moe", "qwen3_moe_step", "mixtral"])
def test_routing_matches_numpy_top_k(fam, backend):
    """``moe_route`` with each fixture's (E, top_k, norm), on random logits and on logits with
    ties (equal values across the k-th place: the lowest index wins; torch.topk's pick among
    exactly equal values is unspecified, e.g. experts 6 and 5 of 8 equal ones on CPU)."""
    rng = np.random.default_rng(0)
    moe = config_from_hf(_cfg(fam)).moe
    E, k, norm = moe.num_experts, moe.top_k, moe.norm_topk
    rows = [rng.standard_normal(E) * 3, np.zeros(E), np.repeat([1.0, 2.0], E // 2), np.arange(E) % 2 * 1.0]
    rows += [rng.integers(0, 3, E).astype(np.float64) for _ in range(4)]
    x = np.stack(rows).astype(np.float32)
    w = _route(backend, x, k, norm)
    np.testing.assert_allclose(w, _numpy_routing(x, k, norm), rtol=1e-5, atol=1e-7)
    assert ((w > 0).sum(-1) == k).all() and np.isfinite(w).all()


@pytest.mark.parametrize("E, k, norm", [(64, 8, True), (128, 8, False), (60, 4, False), (8, 8, True), (8, 1, False),
                                        (256, 8, True), (33, 3, False)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_routing_at_real_model_sizes(E, k, norm, dtype, backend):
    """Routing alone at Qwen/Mixtral-like expert counts, on logits in steps of 1/8 (exact in
    float16, so many ties, broken as a stable sort does): the chosen set and weights."""
    x = (np.random.default_rng(E + k).integers(-40, 40, (33, E)) / 8).astype(np.float32)
    w = _route(backend, x, k, norm, dtype)
    want = _numpy_routing(x, k, norm)
    assert ((w > 0) == (want > 0)).all()  # the same experts (ties: lowest index)
    np.testing.assert_allclose(w.astype(np.float64), want, rtol=2e-3 if dtype == "float16" else 1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- config
def test_moe_config_keys():
    c = config_from_hf(_cfg("qwen3_moe")).moe
    assert (c.num_experts, c.top_k, c.expert_size, c.norm_topk, c.shared_size) == (8, 3, 16, True, None)
    assert c.sparse == (True, False, True)
    assert config_from_hf(_cfg("qwen3_moe_step")).moe.sparse == (False, True, False)
    # hub Qwen3-MoE configs say num_experts; transformers writes num_local_experts
    d = _cfg("qwen3_moe")
    d["num_experts"] = d.pop("num_local_experts")
    assert config_from_hf(d).moe == c
    assert config_from_hf(_cfg("qwen3_moe", decoder_sparse_step=3, mlp_only_layers=[])).moe.sparse == \
        (False, False, True)
    q2 = config_from_hf(_cfg("qwen2_moe")).moe
    assert (q2.shared_size, q2.norm_topk, q2.sparse) == (32, False, (True, True))
    mx = config_from_hf(_cfg("mixtral")).moe
    assert (mx.num_experts, mx.top_k, mx.expert_size, mx.norm_topk) == (8, 2, 16, True)
    # num_experts 0: transformers builds every layer dense
    assert config_from_hf(_cfg("qwen3_moe", num_local_experts=0)).moe is None
    # Qwen2-MoE's sliding layers: 0, 2, ... below max_window_layers, only with use_sliding_window
    d = _cfg("qwen2_moe", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    d.pop("layer_types")
    c2 = config_from_hf(d)
    assert [c2.layer_window(i) for i in range(2)] == [4, None]
    assert config_from_hf(_cfg("qwen3_moe", sliding_window=4)).layer_window(0) is None  # off by default


@pytest.mark.parametrize("changes, match", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok 9 exceeds"),
    (dict(decoder_sparse_step=0), "decoder_sparse_step"),
    (dict(mlp_only_layers="1"), "mlp_only_layers"),
    (dict(norm_topk_prob="yes"), "norm_topk_prob"),
    (dict(num_experts=4), "num_experts 4 and num_local_experts 8 differ"),
    (dict(moe_intermediate_size=-1), "moe_intermediate_size"),
])
def test_bad_moe_config_values(changes, match):
    with pytest.raises(LoadError, match=match):
        config_from_hf(_cfg("qwen3_moe", **changes))


@pytest.mark.parametrize("mt", ["olmoe", "deepseek_v2", "phimoe", "granitemoe", "qwen3_next"])
def test_other_moe_types_are_unsupported(tmp_path, mt):
    d = tmp_path / mt
    shutil.copytree(FIX / "mixtral", d)
    (d / "config.json").write_text(json.dumps(_cfg("mixtral", model_type=mt)))
    with pytest.raises(UnsupportedModelError, match=f"model_type '{mt}' is not supported"):
        load_checkpoint(d)


# ----------------------------------------------------------------------------------- files
def _copy(tmp_path: Path, fam: str) -> tuple[Path, dict]:
    from safetensors.numpy import load_file
    d = tmp_path / fam
    shutil.copytree(FIX / fam, d)
    return d, load_file(str(d / "model.safetensors"))


def _save(d: Path, tensors: dict) -> None:
    from safetensors.numpy import save_file
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_experts_packed_at_load():
    from safetensors.numpy import load_file
    st = load_file(str(FIX / "qwen2_moe" / "model.safetensors"))
    with load_model(FIX / "qwen2_moe", backend="numpy") as m:
        gu = m.session.download(m.W["layers.1.moe.gate_up.weight"])
        down = m.session.download(m.W["layers.1.moe.down.0.weight"])
        pair = m.session.download(m.W["layers.1.moe.shared_gate_pair.weight"])
        assert "layers.1.moe.experts.0.gate.weight" not in m.W
    E, I = 8, 16
    pre = "model.layers.1.mlp"
    np.testing.assert_array_equal(gu[3 * I:4 * I], st[f"{pre}.experts.3.gate_proj.weight"])
    np.testing.assert_array_equal(gu[(E + 3) * I:(E + 4) * I], st[f"{pre}.experts.3.up_proj.weight"])
    np.testing.assert_array_equal(down[:, 5 * I:6 * I], st[f"{pre}.experts.5.down_proj.weight"])
    np.testing.assert_array_equal(pair, np.concatenate([st[f"{pre}.shared_expert_gate.weight"], np.zeros((1, 64))]))


def test_missing_or_misshapen_expert(tmp_path):
    d, st = _copy(tmp_path, "mixtral")
    name = "model.layers.1.block_sparse_moe.experts.7.w2.weight"
    w2 = st.pop(name)
    _save(d, st)
    with pytest.raises(LoadError, match=r"layers\.1\.moe\.experts\.7\.down\.weight"):
        load_checkpoint(d)
    st[name] = w2[:, :8].copy()
    _save(d, st)
    with pytest.raises(LoadError, match=r"experts\.7\.down.*\(64, 8\).*\(64, 16\)"):
        load_checkpoint(d)


def test_fused_3d_experts_are_refused(tmp_path):
    d, st = _copy(tmp_path, "qwen3_moe")
    pre = "model.layers.0.mlp.experts"
    gu = np.stack([np.concatenate([st.pop(f"{pre}.{e}.gate_proj.weight"), st.pop(f"{pre}.{e}.up_proj.weight")])
                   for e in range(8)])
    st[f"{pre}.gate_up_proj"] = gu
    st[f"{pre}.down_proj"] = np.stack([st.pop(f"{pre}.{e}.down_proj.weight") for e in range(8)])
    _save(d, st)
    with pytest.raises(UnsupportedModelError, match="qwen3_moe.*fused as 3-D"):
        load_checkpoint(d)


def test_surplus_experts_are_refused(tmp_path):
    d, st = _copy(tmp_path, "qwen3_moe")
    (d / "config.json").write_text(json.dumps(_cfg("qwen3_moe", num_local_experts=7)))
    with pytest.raises(LoadError, match="expert 7 .* config says 7 experts"):
        load_checkpoint(d)
    (d / "config.json").write_text(json.dumps(_cfg("qwen3_moe", mlp_only_layers=[0, 1])))
    st.update({k.replace("layers.1.", "layers.0."): v for k, v in st.items() if k.startswith("model.layers.1.mlp.")})
    _save(d, st)
    with pytest.raises(LoadError, match="layer 0 a dense MLP"):
        load_checkpoint(d)


def test_quantize_keeps_the_router_in_the_model_dtype():
    ref = _ref("qwen3_moe")
    with load_model(FIX / "qwen3_moe", backend="numpy", quantize="q8_0") as m:
        assert m.W["layers.0.moe.router.weight"].dtype == tg.float32
        assert m.W["layers.0.moe.gate_up.weight"].dtype == tg.q8_0
        assert m.W["layers.0.moe.down.0.weight"].dtype == tg.q8_0
        logits = m.get_logits(m(ref["input_ids"][0])[0]).to_numpy()
    assert rel_err(logits, ref["logits"][0]) < 3e-2
