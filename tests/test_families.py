"""Gemma (1), Granite, OLMo 2 and StableLM against HF transformers' outputs in tests/fixtures (made by
tools/make_fixtures.py): full-sequence logits, incremental decode through the KV cache, greedy
generation, on NumPy and (on a GPU) CUDA; their decode graphs still fuse; their config keys."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tinygraph.io import LoadError, UnsupportedModelError
from tinygraph.io.config import config_from_hf
from tinygraph.models import load_model
from hf_checks import hf_config as _cfg
from hf_checks import reference_tests

FIX = Path(__file__).parent / "fixtures"
FAMILIES = ["gemma", "granite", "olmo2", "stablelm", "stablelm_parallel"]


def _load(fam, backend, dtype="float32", path=None):
    return load_model(path or FIX / fam, dtype=dtype, backend=backend)


def _check_spec(m, fam: str) -> None:
    assert m.spec.name == fam.split("_")[0]


test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision = \
    reference_tests(FAMILIES, _load, _check_spec)


@pytest.mark.parametrize("fam", FAMILIES)
def test_decode_graph_fuses(fam):
    """The decode step runs fused: one attention_store per layer and linear nodes. What stays
    unfused is listed in the README (GeGLU's gelu * up, post-norms, Granite's scales, StableLM's
    partial rotary: rope + concat on q and k before the attention_store, which then has no RoPE)."""
    with _load(fam, "numpy") as m:
        g, _, _ = m.step_graph(1, "argmax")
        ops = [n.op for n in g.nodes]
        n_layers, partial = m.config.num_layers, m.config.rotary_dim is not None
    assert ops.count("attention_store") == n_layers
    assert "linear" in ops and "softmax" not in ops and "set_rows" not in ops
    assert ops.count("rope") == ops.count("concat") == (2 * n_layers if partial else 0)


def test_gemma_norm_weights_are_one_plus_w():
    from safetensors.numpy import load_file
    stored = load_file(str(FIX / "gemma" / "model.safetensors"))
    with _load("gemma", "numpy") as m:
        got = m.session.download(m.W["layers.0.attn_norm.weight"])
    np.testing.assert_array_equal(got, stored["model.layers.0.input_layernorm.weight"] + np.float32(1))


def test_gemma_legacy_gelu_is_tanh():
    # transformers' GemmaConfig reads hidden_act "gelu" as gelu_pytorch_tanh
    assert config_from_hf(_cfg("gemma", hidden_act="gelu")).activation == "gelu_tanh"
    assert config_from_hf(_cfg("gemma", hidden_act=None, hidden_activation="gelu_pytorch_tanh")).activation == "gelu_tanh"


def test_granite_multipliers_read_and_checked():
    c = config_from_hf(_cfg("granite"))
    assert (c.embedding_multiplier, c.residual_multiplier, c.attention_multiplier, c.logits_scaling) == \
        (0.5, 0.7, 0.1, 0.5)
    d = _cfg("granite")
    for k in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
        del d[k]
    c = config_from_hf(d)  # GraniteConfig's defaults: all 1.0 (attention scale 1.0 too)
    assert (c.embedding_multiplier, c.residual_multiplier, c.attention_multiplier, c.logits_scaling) == (1.0,) * 4
    with pytest.raises(LoadError, match="logits_scaling"):
        config_from_hf(_cfg("granite", logits_scaling=0))
    # other families ignore the keys (their configs never mean them)
    assert config_from_hf(_cfg("olmo2", logits_scaling=2.0)).logits_scaling == 1.0


def test_olmo2_qk_norm_shape_checked(tmp_path):
    """OLMo 2's q_norm covers heads * head_dim: a per-head [head_dim] weight is refused, named."""
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "olmo2"
    shutil.copytree(FIX / "olmo2", d)
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.0.self_attn.q_norm.weight"] = t["model.layers.0.self_attn.q_norm.weight"][:16].copy()
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LoadError, match="q_norm"):
        load_model(d, backend="numpy")


def test_stablelm_config():
    c = config_from_hf(_cfg("stablelm"))
    assert (c.rotary_dim, c.parallel_residual, c.head_dim) == (4, False, 16)
    c = config_from_hf(_cfg("stablelm_parallel"))
    assert (c.rotary_dim, c.parallel_residual) == (8, True)
    # v4 form: the factor at top level; StableLmConfig's default is 0.25
    d = _cfg("stablelm")
    d.pop("rope_parameters")
    assert config_from_hf(dict(d, partial_rotary_factor=0.5, rope_theta=1e4)).rotary_dim == 8
    assert config_from_hf(dict(d, rope_theta=1e4)).rotary_dim == 4
    with pytest.raises(UnsupportedModelError, match="qk_layernorm"):
        config_from_hf(_cfg("stablelm", qk_layernorm=True))
    with pytest.raises(LoadError, match="partial_rotary_factor"):
        config_from_hf(dict(d, partial_rotary_factor=0.1, rope_theta=1e4))  # 1.6 -> 1: odd
    # partial rotary with a scaling: the divisors cover the rotated pairs only (HF's dim)
    from tinygraph.io.rope_scaling import rope_scaling
    c = config_from_hf(dict(d, rope_theta=1e4, rope_scaling={"rope_type": "linear", "factor": 2.0}))
    np.testing.assert_array_equal(rope_scaling(c).factors, np.full(2, 2.0, np.float32))
    with load_model(FIX / "stablelm", backend="numpy") as m:
        assert m.spec.qkv_bias and "layers.0.attn_norm.bias" in m.W
    with load_model(FIX / "stablelm_parallel", backend="numpy") as m:
        assert not m.spec.qkv_bias and "layers.0.mlp_norm.weight" not in m.W
