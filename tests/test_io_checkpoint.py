"""load_checkpoint on HF safetensors: canonical names, GPT-2 split/transpose, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tinygraph.io import GPT2_SPEC, LLAMA_SPEC, QWEN2_SPEC, QWEN3_SPEC, Checkpoint, LoadError, load_checkpoint
from tinygraph.io.spec import required_names

RNG = np.random.default_rng(1)


def _r(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------ GPT-2
GPT2_CFG = {"model_type": "gpt2", "vocab_size": 11, "n_embd": 8, "n_head": 2, "n_layer": 2, "n_positions": 6,
            "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}


def _gpt2_tensors(prefix: str = "") -> dict[str, np.ndarray]:
    t = {"wte.weight": _r(11, 8), "wpe.weight": _r(6, 8), "ln_f.weight": _r(8), "ln_f.bias": _r(8)}
    for i in range(2):
        h = f"h.{i}."
        t |= {
            h + "ln_1.weight": _r(8), h + "ln_1.bias": _r(8), h + "ln_2.weight": _r(8), h + "ln_2.bias": _r(8),
            h + "attn.c_attn.weight": _r(8, 24), h + "attn.c_attn.bias": _r(24),  # Conv1D: [in, 3*out]
            h + "attn.c_proj.weight": _r(8, 8), h + "attn.c_proj.bias": _r(8),
            h + "mlp.c_fc.weight": _r(8, 32), h + "mlp.c_fc.bias": _r(32),
            h + "mlp.c_proj.weight": _r(32, 8), h + "mlp.c_proj.bias": _r(8),
            h + "attn.bias": np.tril(np.ones((1, 1, 6, 6), np.float32)),  # causal-mask buffer, ignored
        }
    return {prefix + k: v for k, v in t.items()}


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_gpt2_mapping(tmp_path: Path, prefix: str) -> None:
    t = _gpt2_tensors(prefix)
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CFG))
    ck = load_checkpoint(tmp_path)
    assert isinstance(ck, Checkpoint) and ck.spec is GPT2_SPEC and ck.format == "safetensors"
    assert ck.config.tie_word_embeddings and "lm_head.weight" not in ck
    assert ck.names == required_names(GPT2_SPEC, ck.config)
    g = lambda n: t[prefix + n]  # noqa: E731
    np.testing.assert_array_equal(ck.tensor("tok_emb.weight"), g("wte.weight"))
    np.testing.assert_array_equal(ck.tensor("pos_emb.weight"), g("wpe.weight"))
    for i in range(2):
        L, h = f"layers.{i}.", f"h.{i}."
        w, b = g(h + "attn.c_attn.weight"), g(h + "attn.c_attn.bias")
        for n, p in enumerate("qkv"):
            q = ck.tensor(f"{L}attn.{p}.weight")
            assert q.shape == (8, 8) and q.flags.c_contiguous
            np.testing.assert_array_equal(q, w[:, 8 * n:8 * (n + 1)].T)
            np.testing.assert_array_equal(ck.tensor(f"{L}attn.{p}.bias"), b[8 * n:8 * (n + 1)])
        np.testing.assert_array_equal(ck.tensor(L + "attn.o.weight"), g(h + "attn.c_proj.weight").T)
        np.testing.assert_array_equal(ck.tensor(L + "attn.o.bias"), g(h + "attn.c_proj.bias"))
        up = ck.tensor(L + "mlp.up.weight")
        assert up.shape == (32, 8) and up.flags.c_contiguous
        np.testing.assert_array_equal(up, g(h + "mlp.c_fc.weight").T)
        np.testing.assert_array_equal(ck.tensor(L + "mlp.down.weight"), g(h + "mlp.c_proj.weight").T)
        np.testing.assert_array_equal(ck.tensor(L + "mlp.up.bias"), g(h + "mlp.c_fc.bias"))
        np.testing.assert_array_equal(ck.tensor(L + "attn_norm.bias"), g(h + "ln_1.bias"))
        np.testing.assert_array_equal(ck.tensor(L + "mlp_norm.weight"), g(h + "ln_2.weight"))
    np.testing.assert_array_equal(ck.tensor("final_norm.bias"), g("ln_f.bias"))
    assert ck.shape("layers.0.mlp.down.weight") == (8, 32)
    assert ck.nbytes == sum(ck.tensor(n).nbytes for n in ck.names)
    assert ck.rope_freq_factors is None
    ck.close()


def test_gpt2_without_config_is_inferred(tmp_path: Path) -> None:
    save_file(_gpt2_tensors(), str(tmp_path / "gpt2.safetensors"))
    with pytest.warns(UserWarning, match="inferring a GPT-2 config"):
        ck = load_checkpoint(tmp_path / "gpt2.safetensors")
    c = ck.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.max_position_embeddings, c.intermediate_size) == (
        11, 8, 2, 6, 32)
    assert c.tie_word_embeddings and ck.spec is GPT2_SPEC


# ------------------------------------------------------------------ LLaMA family
def _llama_cfg(**kw: object) -> dict[str, object]:
    return {"model_type": "llama", "vocab_size": 10, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24,
            "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": False} | kw


def _llama_tensors(hd: int = 4, bias: bool = False, qk_norm: bool = False, dtype: type = np.float16,
                   tied: bool = False) -> dict[str, np.ndarray]:
    t = {"model.embed_tokens.weight": _r(10, 16, dtype=dtype), "model.norm.weight": _r(16, dtype=dtype)}
    if not tied:
        t["lm_head.weight"] = _r(10, 16, dtype=dtype)
    for i in range(2):
        L = f"model.layers.{i}."
        t |= {
            L + "input_layernorm.weight": _r(16, dtype=dtype),
            L + "post_attention_layernorm.weight": _r(16, dtype=dtype),
            L + "self_attn.q_proj.weight": _r(4 * hd, 16, dtype=dtype),
            L + "self_attn.k_proj.weight": _r(2 * hd, 16, dtype=dtype),
            L + "self_attn.v_proj.weight": _r(2 * hd, 16, dtype=dtype),
            L + "self_attn.o_proj.weight": _r(16, 4 * hd, dtype=dtype),
            L + "mlp.gate_proj.weight": _r(24, 16, dtype=dtype),
            L + "mlp.up_proj.weight": _r(24, 16, dtype=dtype),
            L + "mlp.down_proj.weight": _r(16, 24, dtype=dtype),
        }
        if bias:
            t |= {L + "self_attn.q_proj.bias": _r(4 * hd, dtype=dtype),
                  L + "self_attn.k_proj.bias": _r(2 * hd, dtype=dtype),
                  L + "self_attn.v_proj.bias": _r(2 * hd, dtype=dtype)}
        if qk_norm:
            t |= {L + "self_attn.q_norm.weight": _r(hd, dtype=dtype),
                  L + "self_attn.k_norm.weight": _r(hd, dtype=dtype)}
    return t


def _write(d: Path, tensors: dict[str, np.ndarray], cfg: dict[str, object] | None) -> Path:
    d.mkdir(exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    if cfg is not None:
        (d / "config.json").write_text(json.dumps(cfg))
    return d


LLAMA_MAP = {
    "tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "layers.1.attn_norm.weight": "model.layers.1.input_layernorm.weight",
    "layers.1.mlp_norm.weight": "model.layers.1.post_attention_layernorm.weight",
    "layers.1.attn.q.weight": "model.layers.1.self_attn.q_proj.weight",
    "layers.1.attn.k.weight": "model.layers.1.self_attn.k_proj.weight",
    "layers.1.attn.v.weight": "model.layers.1.self_attn.v_proj.weight",
    "layers.1.attn.o.weight": "model.layers.1.self_attn.o_proj.weight",
    "layers.1.mlp.gate.weight": "model.layers.1.mlp.gate_proj.weight",
    "layers.1.mlp.up.weight": "model.layers.1.mlp.up_proj.weight",
    "layers.1.mlp.down.weight": "model.layers.1.mlp.down_proj.weight",
}


def test_llama_mapping(tmp_path: Path) -> None:
    t = _llama_tensors()
    ck = load_checkpoint(_write(tmp_path / "m", t, _llama_cfg()))
    assert ck.spec is LLAMA_SPEC and ck.names == required_names(LLAMA_SPEC, ck.config)
    assert "lm_head.weight" in ck and len(ck.names) == 3 + 2 * 9
    for canon, hf in LLAMA_MAP.items():
        a = ck.tensor(canon)
        assert a.dtype == np.float16  # stored dtype preserved
        np.testing.assert_array_equal(a, t[hf])
    assert not ck.tensor("layers.0.attn.q.weight").flags.writeable  # zero-copy view of the mmap
    assert ck.rope_freq_factors is None
    # the same weights as a bare .safetensors file with config.json beside it
    ck2 = load_checkpoint(tmp_path / "m" / "model.safetensors")
    assert ck2.names == ck.names


def test_llama3_rope_factors_through_checkpoint(tmp_path: Path) -> None:
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
    ck = load_checkpoint(_write(tmp_path / "m", _llama_tensors(), _llama_cfg(rope_scaling=sc)))
    f = ck.rope_freq_factors
    assert f is not None and f.shape == (2,)


def test_qwen2_and_qwen3(tmp_path: Path) -> None:
    t2 = _llama_tensors(bias=True, tied=True, dtype=np.float32)
    ck = load_checkpoint(_write(tmp_path / "q2", t2, _llama_cfg(model_type="qwen2", tie_word_embeddings=True)))
    assert ck.spec is QWEN2_SPEC and "lm_head.weight" not in ck
    np.testing.assert_array_equal(ck.tensor("layers.0.attn.k.bias"), t2["model.layers.0.self_attn.k_proj.bias"])

    t3 = _llama_tensors(hd=8, qk_norm=True, dtype=np.float32)  # head_dim 8 != 16 / 4
    ck = load_checkpoint(_write(tmp_path / "q3", t3, _llama_cfg(model_type="qwen3", head_dim=8)))
    assert ck.spec is QWEN3_SPEC and ck.config.head_dim == 8
    assert ck.shape("layers.0.attn.q.weight") == (32, 16) and ck.shape("layers.0.attn.o.weight") == (16, 32)
    np.testing.assert_array_equal(
        ck.tensor("layers.1.attn.k_norm.weight"), t3["model.layers.1.self_attn.k_norm.weight"])


def test_llama_with_biases_turns_spec_flag_on(tmp_path: Path) -> None:
    ck = load_checkpoint(_write(tmp_path / "m", _llama_tensors(bias=True), _llama_cfg()))
    assert ck.spec.name == "llama" and ck.spec.qkv_bias and "layers.0.attn.q.bias" in ck


def test_missing_and_misshapen_tensors(tmp_path: Path) -> None:
    t = _llama_tensors()
    del t["model.layers.1.mlp.up_proj.weight"], t["model.norm.weight"]
    with pytest.raises(LoadError, match=r"missing tensors for llama: .*layers\.1\.mlp\.up\.weight.*final_norm\.weight"):
        load_checkpoint(_write(tmp_path / "a", t, _llama_cfg()))
    t = _llama_tensors()
    t["model.layers.0.self_attn.k_proj.weight"] = _r(16, 16, dtype=np.float16)
    with pytest.raises(LoadError, match=r"'layers\.0\.attn\.k\.weight'.*\(16, 16\), config expects \(8, 16\)"):
        load_checkpoint(_write(tmp_path / "b", t, _llama_cfg()))
    # tie_word_embeddings false but no lm_head
    with pytest.raises(LoadError, match="lm_head.weight"):
        load_checkpoint(_write(tmp_path / "c", _llama_tensors(tied=True), _llama_cfg()))


def test_llama_without_config_needs_config(tmp_path: Path) -> None:
    _write(tmp_path / "m", _llama_tensors(), None)
    with pytest.raises(LoadError, match="config.json is needed"):
        load_checkpoint(tmp_path / "m" / "model.safetensors")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth"])
def test_pickle_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x80\x04not really")
    with pytest.raises(LoadError, match="pickle.*execute arbitrary code.*safetensors"):
        load_checkpoint(tmp_path / name)
    with pytest.raises(LoadError, match="pickle"):
        load_checkpoint(tmp_path)  # directory holding only a pickle checkpoint


def test_tokenizer_and_chat_template_from_directory(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = _write(tmp_path / "m", _llama_tensors(), _llama_cfg())
    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    ck = load_checkpoint(d)
    assert ck.tokenizer is not None and ck.tokenizer.encode("hello world").ids == [0, 1]
    assert ck.chat_template == "{{ messages[0]['content'] }}"
    (d / "chat_template.jinja").write_text("JINJA")  # transformers v5 layout wins
    assert load_checkpoint(d).chat_template == "JINJA"


def test_generation_config_eos_ids_are_merged(tmp_path: Path) -> None:
    d = _write(tmp_path / "m", _llama_tensors(), _llama_cfg(eos_token_id=2))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    ck = load_checkpoint(d)
    assert ck.eos_token_ids == [2, 7] and ck.config.eos_token_id == [2, 7]


def test_sharded_directory(tmp_path: Path) -> None:
    t = _llama_tensors()
    d = tmp_path / "m"
    d.mkdir()
    names = sorted(t)
    half = len(names) // 2
    save_file({k: t[k] for k in names[:half]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({k: t[k] for k in names[half:]}, str(d / "model-00002-of-00002.safetensors"))
    wm = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (d / "config.json").write_text(json.dumps(_llama_cfg()))
    for p in (d, d / "model.safetensors.index.json"):
        ck = load_checkpoint(p)
        for canon, hf in LLAMA_MAP.items():
            np.testing.assert_array_equal(ck.tensor(canon), t[hf])


def test_unknown_canonical_name(tmp_path: Path) -> None:
    ck = load_checkpoint(_write(tmp_path / "m", _llama_tensors(), _llama_cfg()))
    with pytest.raises(KeyError, match="layers.0.attn.q.weight"):
        ck.tensor("layers.0.attn.q.weigth")
