"""GGUF files of the newer families, as llama.cpp's converter writes them (tests/fixtures/gguf, made by
tools/make_gguf_fixtures.py from the HF fixtures), against HF transformers' outputs of the same
weights: full-sequence logits, incremental decode through the KV cache, greedy ids, half precision,
with the safetensors fixtures' tolerances; every canonical tensor equals the safetensors one; the
metadata keys each architecture reads; clear refusals for what is not built (q/k LayerNorm, other MoE
kinds). The MoE families' GGUF files: tests/test_io_gguf_moe.py."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import rel_err
from hf_checks import reference as _ref
from hf_checks import reference_tests
from tinygraph.io import LoadError, UnsupportedModelError, load_checkpoint
from tinygraph.io.gguf_loader import load_gguf
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
# HF fixture folder (reference.npz, model.safetensors) -> its GGUF's llama.cpp architecture
FAMILIES = {
    "gemma": "gemma", "gemma2_gguf": "gemma2", "gemma3_gguf": "gemma3", "phi": "phi2", "phi3": "phi3",
    "phi3_partial": "phi3", "gpt_neox": "gptneox", "gpt_neox_sequential": "gptneox", "stablelm": "stablelm",
    "stablelm_parallel": "stablelm", "olmo2": "olmo2", "granite": "granite",
}


def _gguf(fam: str) -> Path:
    return FIX / "gguf" / f"{fam}.gguf"


test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision = reference_tests(
    FAMILIES, lambda fam, backend, dtype: load_model(_gguf(fam), dtype=dtype, backend=backend))


@pytest.mark.parametrize("fam", FAMILIES)
def test_same_model_as_safetensors(fam):
    """The GGUF's architecture, spec, config and every canonical tensor equal the safetensors
    fixture's: Gemma's stored 1 + w, GPT-NeoX's re-laid-out q/k/v, Granite's un-permuted Q/K, Phi-3's
    fused tensors, Phi-2's sizes from the tensor shapes."""
    with load_checkpoint(_gguf(fam)) as g, load_checkpoint(FIX / fam) as s:
        assert g.format == "gguf" and g.config.model_type == FAMILIES[fam]
        assert g.spec == s.spec, fam
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                    "vocab_size", "max_position_embeddings", "norm_eps", "rope_theta", "tie_word_embeddings",
                    "activation", "rotary_dim", "parallel_residual", "attn_softcap", "final_softcap",
                    "rope_theta_local", "embedding_multiplier", "residual_multiplier", "logits_scaling",
                    "bos_token_id", "eos_token_id"):
            assert getattr(g.config, key) == getattr(s.config, key), key
        am = s.config.attention_multiplier  # Gemma 2/3: llama.cpp's 1/sqrt(head_dim) vs HF's scalar ** -0.5
        assert g.config.attention_multiplier == (None if am is None else pytest.approx(am, rel=1e-7))
        assert [g.config.layer_window(i) for i in range(g.config.num_layers)] == \
            [s.config.layer_window(i) for i in range(s.config.num_layers)]
        gs, ss = g.rope_scaling, s.rope_scaling
        for a, b in ((gs.factors, ss.factors), (gs.long_factors, ss.long_factors)):
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
        assert (gs.switch_at, gs.dynamic) == (ss.switch_at, ss.dynamic)
        assert gs.attention_factor == pytest.approx(ss.attention_factor, rel=1e-6)
        assert g.names == s.names
        for n in g.names:
            np.testing.assert_array_equal(g.tensor(n), s.tensor(n).astype(np.float32), err_msg=n)


# ------------------------------------------------------------------ metadata edge cases
def _write(path: Path, arch: str, meta: dict, tensors: dict[str, tuple[int, ...]], layers: int = 2) -> Path:
    """A GGUF of ``arch`` with the shared sizes (hidden 64, 4 heads, ``layers`` blocks, vocab 16),
    the extra metadata ``meta`` ({key without the arch prefix: value}) and zero tensors."""
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(32)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    for k, v in meta.items():
        key = f"{arch}.{k}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        else:
            w.add_array(key, v)
    for name, shape in {"token_embd.weight": (16, 64), **tensors}.items():
        w.add_tensor(name, np.zeros(shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_moe_gguf_is_refused_naming_the_architecture(tmp_path):
    """MoE GGUF files load for llama (Mixtral), qwen2moe and qwen3moe (tests/test_io_gguf_moe.py);
    other routing and other MoE architectures are refused by name."""
    p = _write(tmp_path / "moe.gguf", "llama", {"expert_count": 8, "expert_used_count": 2, "expert_gating_func": 2},
               {"blk.0.ffn_gate_exps.weight": (8, 32, 64)})
    with pytest.raises(UnsupportedModelError, match="'llama': expert_gating_func 2"):
        load_checkpoint(p)
    p = _write(tmp_path / "moe2.gguf", "olmoe", {}, {})
    with pytest.raises(UnsupportedModelError, match="'olmoe' is not supported.*gemma3.*phi3.*gptneox.*qwen3moe"):
        load_checkpoint(p)


def test_qk_layernorm_is_refused(tmp_path):
    p = _write(tmp_path / "s.gguf", "stablelm", {}, {"blk.0.attn_q_norm.weight": (4, 16)})
    with pytest.raises(UnsupportedModelError, match="'stablelm'.*qk_layernorm"):
        load_checkpoint(p)


def test_gemma_defaults_as_llama_cpp_reads_them(tmp_path):
    """Gemma 2 without the keys: soft-caps 50 / 30, window 4096, every 2nd layer global; the 27B
    (46 layers) scales attention by 1/sqrt(hidden/heads), the others by 1/sqrt(head_dim)."""
    c = load_gguf(_write(tmp_path / "g2.gguf", "gemma2", {"attention.key_length": 32}, {}, layers=4)).config
    assert (c.attn_softcap, c.final_softcap, c.sliding_window) == (50.0, 30.0, 4096)
    assert c.layer_types == ["sliding_attention", "full_attention"] * 2
    assert c.attention_multiplier == pytest.approx(32 ** -0.5) and c.activation == "gelu_tanh"
    c = load_gguf(_write(tmp_path / "g27.gguf", "gemma2", {"attention.key_length": 32}, {}, layers=46)).config
    assert c.attention_multiplier == pytest.approx(16 ** -0.5)
    # Gemma 3: no window, no sliding layers; a window with an int or per-layer pattern
    c = load_gguf(_write(tmp_path / "g3.gguf", "gemma3", {}, {}, layers=7)).config
    assert c.layer_types is None and c.sliding_window is None and c.final_softcap is None
    c = load_gguf(_write(tmp_path / "g3w.gguf", "gemma3", {"attention.sliding_window": 8}, {}, layers=7)).config
    assert [c.layer_window(i) for i in range(7)] == [8] * 5 + [None] + [8]
    assert c.rope_theta_local == 1e4
    c = load_gguf(_write(tmp_path / "g3p.gguf", "gemma3", {"attention.sliding_window": 8,
                                                            "attention.sliding_window_pattern": 3,
                                                            "rope.freq_base_swa": 5e3}, {}, layers=4)).config
    assert [c.layer_window(i) for i in range(4)] == [8, 8, None, 8] and c.rope_theta_local == 5e3
    c = load_gguf(_write(tmp_path / "g3a.gguf", "gemma3", {"attention.sliding_window": 8,
                                                            "attention.sliding_window_pattern": [True, False]},
                         {})).config
    assert [c.layer_window(i) for i in range(2)] == [8, None]
    with pytest.raises(LoadError, match="block_count' is 4294967295"):
        load_gguf(_write(tmp_path / "huge.gguf", "gemma2", {}, {}, layers=2**32 - 1))
    with pytest.raises(LoadError, match="sliding_window_pattern"):
        load_gguf(_write(tmp_path / "bad.gguf", "gemma3", {"attention.sliding_window": 8,
                                                            "attention.sliding_window_pattern": [True]}, {}))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "phi2", "llama"])
def test_zero_heads_is_a_load_error(arch, tmp_path):
    """Sizes the per-architecture values derive from (head_dim = hidden / heads) fail as LoadError."""
    p = _write(tmp_path / "z.gguf", arch, {"attention.head_count": 0}, {"blk.0.attn_k.weight": (32, 64)})
    with pytest.raises(LoadError, match="num_heads must be a positive int"):
        load_gguf(p)


def test_family_keys(tmp_path):
    """Partial rotary, parallel residual, Phi-3's window 0 (none), Granite's absent attention scale."""
    c = load_gguf(_write(tmp_path / "n.gguf", "gptneox", {"rope.dimension_count": 4}, {})).config
    assert (c.rotary_dim, c.parallel_residual, c.activation) == (4, True, "gelu")  # converter's default
    c = load_gguf(_write(tmp_path / "s.gguf", "stablelm", {"rope.dimension_count": 8,
                                                           "use_parallel_residual": False}, {})).config
    assert (c.rotary_dim, c.parallel_residual, c.activation) == (8, False, "silu")
    c = load_gguf(_write(tmp_path / "p.gguf", "phi3", {"attention.sliding_window": 0,
                                                       "rope.dimension_count": 16}, {})).config
    assert c.sliding_window is None and c.rotary_dim is None and c.rope_scaling is None
    c = load_gguf(_write(tmp_path / "gr.gguf", "granite", {"logit_scale": 8.0}, {})).config
    assert (c.attention_multiplier, c.logits_scaling, c.embedding_multiplier) == (None, 8.0, 1.0)
    with pytest.raises(LoadError, match="rope_factors_short"):
        load_gguf(_write(tmp_path / "lr.gguf", "phi3", {}, {"rope_factors_long.weight": (8,)}))


# ------------------------------------------------------------------ quantized files
def _requantize_q8_0(src: Path, dst: Path) -> None:
    """``src`` with every 2-D weight (rows of whole 32-value blocks) stored as Q8_0 (gguf.quants,
    llama.cpp's reference bytes), metadata and the other tensors as they are."""
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=str(r.fields["general.architecture"].contents()))
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        w.add_key_value(key, f.contents(), f.types[0], f.types[-1] if f.types[0] == VT.ARRAY else None)
    for t in r.tensors:
        a = np.asarray(t.data, np.float32).reshape(tuple(reversed([int(x) for x in t.shape])))
        if a.ndim == 2 and a.shape[1] % 32 == 0:
            w.add_tensor(t.name, gguf.quants.quantize(a, QT.Q8_0), raw_dtype=QT.Q8_0)
        else:
            w.add_tensor(t.name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("fam", ["phi3", "gpt_neox", "granite", "gemma3_gguf"])
def test_q8_0_file_equals_quantizing_the_safetensors(fam, tmp_path):
    """A Q8_0 GGUF keeps its blocks (Phi-3's fused attn_qkv / ffn_up and GPT-NeoX's attn_qkv cut by
    whole block rows, Granite's Q/K rows un-permuted as raw blocks) and gives exactly the logits of
    the safetensors model quantized to Q8_0 at load (the same ggml bytes; Phi-3's LongRoPE attention
    factor is the file's float32 value, HF's is computed in float64: a 1e-7 difference)."""
    p = tmp_path / f"{fam}-q8_0.gguf"
    _requantize_q8_0(_gguf(fam), p)
    ids = _ref(fam)["input_ids"][0]
    with load_model(p, backend="numpy") as m:
        assert m.memory_usage()["weight_types"].get("q8_0", 0) >= 2 * m.config.num_layers
        got = m.get_logits(m(ids)[0]).to_numpy()
    with load_model(FIX / fam, backend="numpy", quantize="q8_0") as m:
        want = m.get_logits(m(ids)[0]).to_numpy()
    assert rel_err(got, want) < 1e-6

