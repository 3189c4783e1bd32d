"""The breadth families (issue 16) against HF transformers' outputs in tests/fixtures (made by
tools/make_fixtures.py with tools/fixture_families.py): full-sequence logits, incremental logits
through the KV cache, greedy ids (an argmax loop over HF's full forward; with the cache, HF's
cached argmax loop where its semantics differ: longrope), on NumPy and (on a GPU) CUDA."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import rel_err
from hf_checks import reference as _ref, hf_config as _cfg
from hf_checks import reference_tests
from tinygraph.io import LoadError, UnsupportedModelError
from tinygraph.io.config import config_from_hf
from tinygraph.io.rope_scaling import rope_scaling
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
FAMILIES = ["qwen3_yarn", "llama_dynamic", "phi3", "phi3_partial", "phi", "gpt_neox", "gpt_neox_sequential",
            "gemma2", "gemma3_text"]
# llama_dynamic's max_position_embeddings is 10: its 15-token runs need a longer cache
LOAD = {"llama_dynamic": {"max_context": 32}}


def _load(fam: str, backend: str, dtype: str = "float32"):
    return load_model(FIX / fam, dtype=dtype, backend=backend, **LOAD.get(fam, {}))


test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision = \
    reference_tests(FAMILIES, _load)


@pytest.mark.parametrize("fam", FAMILIES)
def test_decode_graph_fuses(fam):
    """Full-rotary scalings are frequency divisors + the attention scale: the decode step fuses
    as before (one attention_store per layer, RoPE inside it)."""
    with _load(fam, "numpy") as m:
        g, _, _ = m.step_graph(1, "argmax")
        ops = [n.op for n in g.nodes]
        partial = m.config.rotary_dim is not None
        capped = m.config.attn_softcap is not None
        caps = [n.params.get("softcap") for n in g.nodes if n.op == "attention_store"]
    # Gemma 2: scores -> scale -> softcap -> softmax fuses too, the cap an attention_store param;
    # only the final logits' cap stays a softcap node
    assert ops.count("softcap") == (1 if m.config.final_softcap is not None else 0)
    assert caps == [m.config.attn_softcap] * m.config.num_layers if capped else caps == [None] * m.config.num_layers
    assert ops.count("attention_store") == m.config.num_layers
    assert "linear" in ops and "softmax" not in ops and "set_rows" not in ops
    assert ops.count("rope") == (2 * m.config.num_layers if partial else 0)


# ----------------------------------------------------------------------------------- RoPE scalings
def test_yarn_factors_and_attention_factor():
    c = config_from_hf(_cfg("qwen3_yarn"))
    rs = rope_scaling(c)
    assert rs.factors.shape == (8,) and rs.factors.dtype == np.float32
    assert rs.attention_factor == pytest.approx(0.1 * np.log(4.0) + 1.0)
    # the fastest pairs keep their frequency, the slowest are interpolated by the factor
    assert rs.factors[0] == pytest.approx(1.0) and rs.factors[-1] == pytest.approx(4.0, rel=1e-6)
    assert np.all(np.diff(rs.factors) >= 0)
    # an explicit attention_factor wins; mscale / mscale_all_dim (DeepSeek form) set it otherwise
    rp = dict(_cfg("qwen3_yarn")["rope_parameters"])
    assert rope_scaling(config_from_hf(_cfg("qwen3_yarn", rope_parameters=dict(rp, attention_factor=1.5)))) \
        .attention_factor == 1.5
    m = rope_scaling(config_from_hf(_cfg("qwen3_yarn", rope_parameters=dict(rp, mscale=2.0, mscale_all_dim=1.0))))
    assert m.attention_factor == pytest.approx((0.2 * np.log(4) + 1) / (0.1 * np.log(4) + 1))
    # v4 form (rope_scaling + rope_theta at top level) reads the same
    d = _cfg("qwen3_yarn")
    sc = dict(d.pop("rope_parameters"))
    d["rope_theta"] = sc.pop("rope_theta")
    d["rope_scaling"] = sc
    np.testing.assert_array_equal(rope_scaling(config_from_hf(d)).factors, rs.factors)


def test_dynamic_ntk_divisors():
    """Plain RoPE up to max_position_embeddings (10), then a base enlarged per step; the decode
    loop runs the steps past 10 on the host, each with its own divisors."""
    from tinygraph.io.rope_scaling import dynamic_factors
    c = config_from_hf(_cfg("llama_dynamic"))
    rs = rope_scaling(c)
    assert rs.dynamic == 2.0 and rs.switch_at == 10 and np.all(rs.factors == 1)
    assert np.all(dynamic_factors(c, 2.0, 10) == 1)
    f = dynamic_factors(c, 2.0, 15)  # base 1e4 * (2 * 15 / 10 - 1) ** (16 / 14)
    want = (1e4 * 2.0 ** (16 / 14)) ** (np.arange(0, 16, 2) / 16) / 1e4 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(f, want, rtol=1e-5)
    with _load("llama_dynamic", "numpy") as m:
        assert "rope.freq_factors" in m.W


def test_unknown_rope_type_and_bad_parameters():
    with pytest.raises(UnsupportedModelError, match="llama.*mrope"):
        rope_scaling(config_from_hf(_cfg("llama_dynamic", rope_parameters={"rope_type": "mrope", "factor": 2.0,
                                                                           "rope_theta": 1e4})))
    with pytest.raises(LoadError, match="factor"):
        config_from_hf(_cfg("llama_dynamic", rope_parameters={"rope_type": "yarn", "factor": -1.0,
                                                             "rope_theta": 1e4}))
    # parameters whose float32 frequencies underflow or divide by zero: refused, not NaN rotations
    for rp in ({"rope_type": "yarn", "factor": 1e-45, "original_max_position_embeddings": 32, "rope_theta": 1e4},
               {"rope_type": "linear", "factor": 1e-45, "rope_theta": 1e4}):
        with pytest.raises(LoadError, match="finite|factor"):
            rope_scaling(config_from_hf(_cfg("llama_dynamic", rope_parameters=rp)))


# ----------------------------------------------------------------------------------------- Phi-3
def test_phi3_longrope_config():
    c = config_from_hf(_cfg("phi3"))
    rs = rope_scaling(c)
    assert c.layer_window(0) == c.layer_window(1) == 6 and rs.switch_at == 12
    assert rs.factors.shape == rs.long_factors.shape == (8,)
    # attention factor from max_position_embeddings / original (128 / 12), as HF
    assert rs.attention_factor == pytest.approx(np.sqrt(1 + np.log(128 / 12) / np.log(12)))
    np.testing.assert_allclose(rs.factors, _cfg("phi3")["rope_parameters"]["short_factor"], rtol=1e-6)
    # Phi-3's legacy type names are longrope; the top-level original_max_position_embeddings wins
    rp = dict(_cfg("phi3")["rope_parameters"], rope_type="su", original_max_position_embeddings=99)
    assert rope_scaling(config_from_hf(_cfg("phi3", rope_parameters=rp))).switch_at == 12
    c = config_from_hf(_cfg("phi3_partial"))
    assert c.rotary_dim == 12 and rope_scaling(c).factors.shape == (6,)
    with pytest.raises(LoadError, match="long_factor must be a list of 8"):
        rope_scaling(config_from_hf(_cfg("phi3", rope_parameters=dict(rp, long_factor=[1.0] * 7))))


def test_phi3_long_and_short_graphs():
    """Steps ending at or before position 12 use the short factors, later ones the long set; a
    decode loop that crosses 12 runs both graphs."""
    ref = _ref("phi3")
    with load_model(FIX / "phi3", backend="numpy") as m:
        assert "rope.freq_factors_long" in m.W and m.windows == [6, 6]
        m.generate(ref["input_ids"][0], max_new_tokens=8, temperature=0)
        assert {(1, "argmax"), (1, "argmax", True)} <= set(m._graphs)


def test_phi3_fused_weights_split_at_load(tmp_path):
    import shutil
    from safetensors.numpy import load_file, save_file
    stored = load_file(str(FIX / "phi3" / "model.safetensors"))
    with load_model(FIX / "phi3", backend="numpy") as m:
        qkv = m.session.download(m.W["layers.0.attn.qkv.weight"])
        gu = m.session.download(m.W["layers.0.mlp.gate_up.weight"])
    np.testing.assert_array_equal(qkv, stored["model.layers.0.self_attn.qkv_proj.weight"])
    np.testing.assert_array_equal(gu, stored["model.layers.0.mlp.gate_up_proj.weight"])
    d = tmp_path / "phi3"
    shutil.copytree(FIX / "phi3", d)
    stored["model.layers.0.self_attn.qkv_proj.weight"] = stored["model.layers.0.self_attn.qkv_proj.weight"][:-16]
    save_file(stored, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LoadError, match="qkv_proj"):
        load_model(d, backend="numpy")


# ------------------------------------------------------------------------- Phi-2, GPT-NeoX, GELU
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_exact_gelu_op(dtype, backend):
    """gelu(approximate="none") is 0.5 x (1 + erf(x / sqrt 2)); the default stays the tanh form
    with no params (so existing graphs are unchanged). On CUDA it runs elementwise.cu's gelu_erf."""
    import math
    import tinygraph as tg
    from conftest import TOL, rounded
    x = np.linspace(-6, 6, 1001, dtype=np.float32).reshape(7, 143)
    with tg.Session(backend=backend) as s:
        s.finalize()
        g = s.graph()
        xi = g.input(x.shape, tg.dtypes.as_dtype(dtype), name="x")
        exact, tanh = tg.gelu(xi, approximate="none"), tg.gelu(xi)
        assert exact.params == {"approximate": "none"} and tanh.params == {}
        g.output(exact)
        (out,) = s.compute(g, {xi: x.astype(tg.dtypes.as_dtype(dtype).np)})
    xr = rounded(x, tg.dtypes.as_dtype(dtype))
    want = 0.5 * xr * (1 + np.vectorize(math.erf)(xr / math.sqrt(2)))
    assert rel_err(out, want) < TOL[dtype]
    with pytest.raises(Exception, match="approximate"):
        tg.gelu(xi, approximate="erf")


def test_gelu_forms_in_the_graphs():
    """GPT-NeoX's "gelu" is exact and stays an op of its own (the fused linear has only the tanh
    form); Phi-2's gelu_new is tanh and fuses into the MLP's linear."""
    with _load("gpt_neox", "numpy") as m:
        g, _, _ = m.step_graph(1, "argmax")
        gel = [n for n in g.nodes if n.op == "gelu"]
        assert len(gel) == m.config.num_layers and all(n.params == {"approximate": "none"} for n in gel)
    with _load("phi", "numpy") as m:
        g, _, _ = m.step_graph(1, "argmax")
        assert not [n for n in g.nodes if n.op == "gelu"]
        assert any(n.op == "linear" and n.params["act"] == "gelu" for n in g.nodes)


def test_phi_and_neox_configs():
    c = config_from_hf(_cfg("phi"))
    assert (c.rotary_dim, c.parallel_residual, c.activation) == (8, True, "gelu_tanh")
    with pytest.raises(UnsupportedModelError, match="qk_layernorm"):
        config_from_hf(_cfg("phi", qk_layernorm=True))
    c = config_from_hf(_cfg("gpt_neox"))
    assert (c.rotary_dim, c.parallel_residual, c.activation) == (4, True, "gelu")
    assert not config_from_hf(_cfg("gpt_neox_sequential")).parallel_residual
    # the hub's v4 keys: rotary_pct, rotary_emb_base
    d = _cfg("gpt_neox")
    d.pop("rope_parameters"), d.pop("rope_theta", None)
    c = config_from_hf(dict(d, rotary_pct=0.5, rotary_emb_base=5000))
    assert (c.rotary_dim, c.rope_theta) == (8, 5000.0)
    with load_model(FIX / "phi", backend="numpy") as m:
        assert m.spec.lm_head_bias and m.spec.qkv_bias and m.spec.mlp_bias
        assert "layers.0.mlp_norm.weight" not in m.W


def test_neox_qkv_relaid_out_per_head():
    """query_key_value holds [heads, (q, k, v), head_size] rows: q is every third block of 16."""
    from safetensors.numpy import load_file
    w = load_file(str(FIX / "gpt_neox" / "model.safetensors"))["gpt_neox.layers.0.attention.query_key_value.weight"]
    with load_model(FIX / "gpt_neox", backend="numpy") as m:
        qkv = m.session.download(m.W["layers.0.attn.qkv.weight"])
    blocks = w.reshape(4, 3, 16, 64)
    for part in range(3):
        np.testing.assert_array_equal(qkv[part * 64:(part + 1) * 64], blocks[:, part].reshape(64, 64))


# -------------------------------------------------------------------------------- Gemma 2 / 3
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_softcap_op(dtype, backend):
    """softcap(x, c) = c * tanh(x / c); on CUDA elementwise.cu's softcap kernel."""
    import tinygraph as tg
    from conftest import TOL, rounded
    x = np.linspace(-40, 40, 999, dtype=np.float32).reshape(9, 111)
    dt = tg.dtypes.as_dtype(dtype)
    with tg.Session(backend=backend) as s:
        s.finalize()
        g = s.graph()
        xi = g.input(x.shape, dt, name="x")
        g.output(tg.softcap(xi, 5.0))
        (out,) = s.compute(g, {xi: x.astype(dt.np)})
    assert rel_err(out, 5.0 * np.tanh(rounded(x, dt) / 5.0)) < TOL[dtype]
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(Exception, match="cap"):
            tg.softcap(xi, bad)


def test_gemma2_config():
    c = config_from_hf(_cfg("gemma2"))
    assert (c.attn_softcap, c.final_softcap) == (5.0, 8.0)
    assert c.attention_multiplier == pytest.approx(24 ** -0.5) and c.rope_theta_local is None
    assert [c.layer_window(i) for i in range(2)] == [4, None]
    # Gemma2Config's defaults when the keys are absent: caps 50 / 30, scalar 256, every 2nd layer global
    d = _cfg("gemma2")
    for k in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "layer_types"):
        d.pop(k)
    c = config_from_hf(dict(d, num_hidden_layers=4))
    assert (c.attn_softcap, c.final_softcap, c.attention_multiplier) == (50.0, 30.0, 256 ** -0.5)
    assert c.layer_types == ["sliding_attention", "full_attention"] * 2
    assert config_from_hf(_cfg("gemma2", attn_logit_softcapping=None)).attn_softcap is None
    with pytest.raises(LoadError, match="final_logit_softcapping"):
        config_from_hf(_cfg("gemma2", final_logit_softcapping=-1.0))


def test_gemma3_config():
    c = config_from_hf(_cfg("gemma3_text"))
    assert (c.rope_theta, c.rope_theta_local, c.attn_softcap, c.final_softcap) == (1e6, 1e4, None, None)
    assert c.rope_type == "linear"
    # v4 form: rope_theta (global), rope_local_base_freq, rope_scaling on the global layers,
    # sliding_window_pattern instead of layer_types
    d = _cfg("gemma3_text")
    d.pop("rope_parameters"), d.pop("layer_types")
    c4 = config_from_hf(dict(d, rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=2,
                             rope_scaling={"rope_type": "linear", "factor": 4.0}))
    assert (c4.rope_theta, c4.rope_theta_local, c4.rope_scaling, c4.layer_types) == \
        (1e6, 1e4, c.rope_scaling, c.layer_types)
    rp = _cfg("gemma3_text")["rope_parameters"]
    with pytest.raises(UnsupportedModelError, match="sliding-window layers"):
        config_from_hf(_cfg("gemma3_text", rope_parameters={
            **rp, "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}))
    with pytest.raises(UnsupportedModelError, match="multimodal"):
        config_from_hf({"model_type": "gemma3", "text_config": _cfg("gemma3_text")})
    with pytest.raises(UnsupportedModelError, match="per-layer-type"):
        config_from_hf(_cfg("llama_dynamic", rope_parameters=rp))
    with load_model(FIX / "gemma3_text", backend="numpy") as m:
        assert m.spec.name == "gemma3" and m.spec.qk_norm and m.windows == [4, None]
        g, _, _ = m.step_graph(1, "argmax", fuse=False)
        thetas = sorted({n.params["theta"] for n in g.nodes if n.op == "rope"})
        assert thetas == [1e4, 1e6]  # local layer 0, global layer 1 (the scaled one)
