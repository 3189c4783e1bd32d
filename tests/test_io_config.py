"""HF config parsing (v4/v5/GPT-2 forms), RoPE scaling factors, and ModelSpec detection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinygraph.io import (GPT2_SPEC, LLAMA_SPEC, MISTRAL_SPEC, MODEL_SPECS, QWEN2_SPEC, QWEN3_SPEC, LoadError,
                          TransformerConfig, config_from_hf, detect_model_spec, load_hf_config,
                          rope_freq_factors, spec_for_model_type)
from tinygraph.io.errors import UnsupportedModelError

LLAMA3_COMMON = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
}
LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
V4 = {**LLAMA3_COMMON, "rope_theta": 500000.0, "rope_scaling": {**LLAMA3_SCALING, "rope_type": "llama3"},
      "torch_dtype": "bfloat16"}
V5 = {**LLAMA3_COMMON, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", **LLAMA3_SCALING},
      "dtype": "bfloat16"}


def test_v4_and_v5_forms_agree() -> None:
    a, b = config_from_hf(V4), config_from_hf(V5)
    assert a == b
    assert a.rope_theta == 500000.0
    assert a.rope_scaling == {"rope_type": "llama3", **LLAMA3_SCALING}
    assert a.dtype == "bfloat16"
    assert (a.head_dim, a.num_kv_heads, a.num_kv_groups) == (128, 8, 4)
    assert a.eos_token_ids == [128001, 128008, 128009]
    assert a.activation == "silu" and a.tie_word_embeddings is False
    # legacy "type" key and explicit "default" type
    legacy = {**LLAMA3_COMMON, "rope_scaling": {**LLAMA3_SCALING, "type": "llama3"}, "rope_theta": 500000.0}
    assert config_from_hf(legacy).rope_scaling == a.rope_scaling
    plain = config_from_hf({**LLAMA3_COMMON, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e4


def test_defaults_kv_heads_and_head_dim() -> None:
    d = {k: v for k, v in LLAMA3_COMMON.items() if k != "num_key_value_heads"}
    cfg = config_from_hf(d)
    assert cfg.num_kv_heads == cfg.num_heads == 32 and cfg.num_kv_groups == 1
    assert cfg.rope_theta == 10000.0 and cfg.rope_scaling is None


def test_qwen3_explicit_head_dim() -> None:
    d = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "num_hidden_layers": 28,
         "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
         "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
         "tie_word_embeddings": True, "hidden_act": "silu", "sliding_window": None, "use_sliding_window": False}
    cfg = config_from_hf(d)
    assert cfg.head_dim == 128 != cfg.hidden_size // cfg.num_heads
    assert cfg.norm_eps == 1e-6 and cfg.rope_theta == 1e6 and cfg.tie_word_embeddings
    assert cfg.sliding_window is None


def test_gpt2_keys() -> None:
    d = {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_head": 12, "n_layer": 12,
         "n_positions": 1024, "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
         "bos_token_id": 50256, "eos_token_id": 50256}
    cfg = config_from_hf(d)
    assert (cfg.hidden_size, cfg.num_heads, cfg.num_layers) == (768, 12, 12)
    assert cfg.intermediate_size == 4 * 768 and cfg.max_position_embeddings == 1024
    assert cfg.head_dim == 64 and cfg.num_kv_heads == 12
    assert cfg.activation == "gelu_tanh" and cfg.tie_word_embeddings is True
    assert cfg.norm_eps == 1e-5 and cfg.eos_token_ids == [50256]
    assert config_from_hf({**d, "n_inner": 1000}).intermediate_size == 1000
    # model_type may be missing; architectures or GPT-2 keys identify it
    assert config_from_hf({k: v for k, v in d.items() if k != "model_type"}).model_type == "gpt2"


def test_bad_configs() -> None:
    with pytest.raises(LoadError, match="hidden_size"):
        config_from_hf({k: v for k, v in LLAMA3_COMMON.items() if k != "hidden_size"})
    with pytest.raises(LoadError, match="multiple of num_kv_heads"):
        config_from_hf({**LLAMA3_COMMON, "num_key_value_heads": 5})
    with pytest.raises(UnsupportedModelError, match="activation"):
        config_from_hf({**LLAMA3_COMMON, "hidden_act": "relu"})
    with pytest.raises(UnsupportedModelError):
        config_from_hf({"vocab_size": 3})


def test_load_hf_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(V5))
    assert load_hf_config(tmp_path / "config.json") == config_from_hf(V4)
    assert load_hf_config(tmp_path) == config_from_hf(V4)  # directory form
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(LoadError, match="bad.json"):
        load_hf_config(tmp_path / "bad.json")


# ------------------------------------------------------------------ RoPE scaling
def _llama3_reference(theta: float, dim: int, factor: float, low: float, high: float, old: float) -> np.ndarray:
    """Independent float64 restatement of Meta's llama3 frequency scaling, returned as divisors."""
    out = []
    for j in range(dim // 2):
        freq = theta ** (-2 * j / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            new = freq
        elif wavelen > old / low:
            new = freq / factor
        else:
            s = (old / wavelen - low) / (high - low)
            new = (1 - s) * freq / factor + s * freq
        out.append(freq / new)
    return np.array(out)


def _cfg(**kw: object) -> TransformerConfig:
    base = dict(model_type="llama", vocab_size=10, hidden_size=64 * 4, num_layers=1, num_heads=4, head_dim=64,
                intermediate_size=8, rope_theta=500000.0)
    return TransformerConfig(**(base | kw))  # type: ignore[arg-type]


def test_llama3_freq_factors() -> None:
    cfg = _cfg(rope_scaling={"rope_type": "llama3", **LLAMA3_SCALING})
    f = rope_freq_factors(cfg)
    assert f is not None and f.dtype == np.float32 and f.shape == (32,)
    ref = _llama3_reference(500000.0, 64, 8.0, 1.0, 4.0, 8192.0)
    np.testing.assert_allclose(f, ref, rtol=1e-6)
    # hand-computed: high-frequency pairs untouched, low-frequency pairs divided by `factor`
    assert f[0] == 1.0 and f[1] == 1.0 and f[14] == 1.0
    assert f[18] == 8.0 and f[31] == 8.0
    # pair 16: wavelen = 2*pi*sqrt(5e5) = 4442.88; s = (8192/4442.88 - 1)/3 = 0.28129;
    # divisor = 1 / ((1 - s)/8 + s) = 2.6945
    assert f[16] == pytest.approx(2.6945, abs=1e-3)
    assert np.all(np.diff(f) >= 0)  # monotone between the two plateaus


def test_other_rope_types() -> None:
    assert rope_freq_factors(_cfg()) is None
    lin = rope_freq_factors(_cfg(rope_scaling={"rope_type": "linear", "factor": 2.0}))
    assert lin is not None
    np.testing.assert_array_equal(lin, np.full(32, 2.0, np.float32))
    with pytest.raises(UnsupportedModelError, match="mrope"):
        rope_freq_factors(_cfg(rope_scaling={"rope_type": "mrope", "factor": 4.0}))
    with pytest.raises(LoadError, match="low_freq_factor"):
        rope_freq_factors(_cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0}))


# ------------------------------------------------------------------ specs
def test_spec_registry_and_flags() -> None:
    assert set(MODEL_SPECS) >= {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "granite", "olmo2", "stablelm",
                                "phi3", "phi", "gpt_neox", "gemma2", "gemma3"}
    assert GPT2_SPEC.norm == "layernorm" and GPT2_SPEC.position == "learned" and not GPT2_SPEC.gated_mlp
    assert GPT2_SPEC.qkv_bias and GPT2_SPEC.o_bias and GPT2_SPEC.mlp_bias and not GPT2_SPEC.use_rope
    for s in (LLAMA_SPEC, MISTRAL_SPEC, QWEN2_SPEC, QWEN3_SPEC):
        assert s.norm == "rmsnorm" and s.activation == "silu" and s.gated_mlp and s.rope_mode == "neox"
        assert not s.o_bias and not s.mlp_bias
    assert QWEN2_SPEC.qkv_bias and not QWEN2_SPEC.qk_norm
    assert QWEN3_SPEC.qk_norm and QWEN3_SPEC.use_qk_norm and not QWEN3_SPEC.qkv_bias
    hash(LLAMA_SPEC)  # frozen and hashable


def test_spec_for_model_type() -> None:
    assert spec_for_model_type("gpt2") is GPT2_SPEC
    assert spec_for_model_type("mistral") is MISTRAL_SPEC
    assert spec_for_model_type("smollm") is LLAMA_SPEC
    assert spec_for_model_type("TinyLlama") is LLAMA_SPEC
    assert spec_for_model_type("qwen3") is QWEN3_SPEC
    with pytest.raises(UnsupportedModelError, match="mamba"):
        spec_for_model_type("mamba")


def test_detect_model_spec() -> None:
    llama = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]
    assert detect_model_spec(["wte.weight", "h.0.attn.c_attn.weight"]) is GPT2_SPEC
    assert detect_model_spec(["transformer.h.0.attn.c_attn.weight"]) is GPT2_SPEC
    assert detect_model_spec(llama) is LLAMA_SPEC
    assert detect_model_spec(llama + ["model.layers.0.self_attn.q_proj.bias"]) is QWEN2_SPEC
    assert detect_model_spec(llama + ["model.layers.0.self_attn.q_norm.weight"]) is QWEN3_SPEC
    with pytest.raises(UnsupportedModelError, match="encoder.weight"):
        detect_model_spec(["encoder.weight"])
