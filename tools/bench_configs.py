"""The published configs of the models that ``tools/bench.py`` benchmarks, as plain dicts.

No torch, no downloads: each entry holds the fields of the model's ``config.json`` on the Hub
(checked against the real files: openai-community/gpt2, HuggingFaceTB/SmolLM2-135M,
Qwen/Qwen3-0.6B, TinyLlama/TinyLlama-1.1B-Chat-v1.0, Qwen/Qwen3-8B) that decide the shapes and
the math. ``transformers.AutoConfig.for_model(cfg["model_type"], **fields)`` builds the HF
config; :func:`hf_tensor_shapes` gives the tensors ``save_pretrained`` writes, and
:func:`param_count` their total, computed arithmetically.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

#: name -> {"label": row label, "hf": config.json fields (model_type included)}
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "label": "GPT-2 124M",
        "hf": {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "vocab_size": 50257,
            "n_positions": 1024, "n_ctx": 1024, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
            "tie_word_embeddings": True,
        },
    },
    "smollm2": {
        "label": "SmolLM2-135M",
        "hf": {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
            "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
        },
    },
    "qwen3-0.6b": {
        "label": "Qwen3-0.6B",
        "hf": {
            "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
            "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False,
            "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": 28, "bos_token_id": 151643, "eos_token_id": 151645,
        },
    },
    "tinyllama": {
        "label": "TinyLlama-1.1B",
        "hf": {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000,
            "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        },
    },
    "qwen3-8b": {
        "label": "Qwen3-8B",
        "hf": {
            "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
            "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False,
            "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": 36, "bos_token_id": 151643, "eos_token_id": 151645,
        },
    },
    # issue 16's dense families, measured against HF only (bench_gguf writes no GGUF for them):
    # google/gemma-2-2b and microsoft/Phi-3-mini-4k-instruct
    "gemma2-2b": {
        "label": "Gemma-2-2B",
        "hf": {
            "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"],
            "hidden_size": 2304, "num_hidden_layers": 26, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216, "vocab_size": 256000,
            "max_position_embeddings": 8192, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "attention_bias": False,
            "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        },
    },
    "phi3-mini": {
        "label": "Phi-3-mini-4k",
        "hf": {
            "model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
            "hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064,
            "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "hidden_act": "silu", "sliding_window": 2047, "rope_scaling": None,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
        },
    },
    # issue 19's 70B-class config (meta-llama/Meta-Llama-3-70B's shapes), for tools/bench_tp.py on
    # several GPUs: ~141 GB in 16 bits, more than one H200 holds
    "llama3-70b": {
        "label": "Llama-3-70B",
        "hf": {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
            "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
        },
    },
}

#: the models ``tools/bench.py`` runs by default (the others by name with ``--models``)
DEFAULT_MODELS = ("gpt2", "smollm2", "qwen3-0.6b", "tinyllama", "qwen3-8b")

#: parameter counts of the real checkpoints (for the tests; tied heads counted once)
EXPECTED_PARAMS = {
    "gpt2": 124_439_808,
    "smollm2": 134_515_008,
    "qwen3-0.6b": 596_049_920,
    "tinyllama": 1_100_048_384,
    "qwen3-8b": 8_190_735_360,
    "gemma2-2b": 2_614_341_888,
    "phi3-mini": 3_821_079_552,
    "llama3-70b": 70_553_706_496,
}


def dims(hf: dict[str, Any]) -> dict[str, Any]:
    """The shape-deciding numbers of a config dict, under one set of names."""
    if hf["model_type"] == "gpt2":
        d = hf["n_embd"]
        return dict(family="gpt2", hidden=d, layers=hf["n_layer"], heads=hf["n_head"], kv_heads=hf["n_head"],
                    head_dim=d // hf["n_head"], inter=hf.get("n_inner") or 4 * d, vocab=hf["vocab_size"],
                    max_pos=hf["n_positions"], tied=True)
    h, nh = hf["hidden_size"], hf["num_attention_heads"]
    return dict(family=hf["model_type"], hidden=h, layers=hf["num_hidden_layers"], heads=nh,
                kv_heads=hf.get("num_key_value_heads") or nh, head_dim=hf.get("head_dim") or h // nh,
                inter=hf["intermediate_size"], vocab=hf["vocab_size"], max_pos=hf["max_position_embeddings"],
                tied=bool(hf.get("tie_word_embeddings", False)))


def hf_tensor_shapes(hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, as transformers' ``save_pretrained`` writes them (a tied head is
    not stored). Supports gpt2, llama, qwen3, gemma2 and phi3."""
    k = dims(hf)
    d, L, V, I = k["hidden"], k["layers"], k["vocab"], k["inter"]
    out: dict[str, tuple[int, ...]] = {}
    if k["family"] == "gpt2":
        p = "transformer."
        out[p + "wte.weight"] = (V, d)
        out[p + "wpe.weight"] = (k["max_pos"], d)
        for i in range(L):
            b = f"{p}h.{i}."
            for ln in ("ln_1", "ln_2"):
                out[b + ln + ".weight"] = (d,)
                out[b + ln + ".bias"] = (d,)
            out[b + "attn.c_attn.weight"] = (d, 3 * d)          # Conv1D: [in, out]
            out[b + "attn.c_attn.bias"] = (3 * d,)
            out[b + "attn.c_proj.weight"] = (d, d)
            out[b + "attn.c_proj.bias"] = (d,)
            out[b + "mlp.c_fc.weight"] = (d, I)
            out[b + "mlp.c_fc.bias"] = (I,)
            out[b + "mlp.c_proj.weight"] = (I, d)
            out[b + "mlp.c_proj.bias"] = (d,)
        out[p + "ln_f.weight"] = (d,)
        out[p + "ln_f.bias"] = (d,)
        return out
    if k["family"] not in ("llama", "qwen3", "gemma2", "phi3"):
        raise ValueError(f"unsupported model_type {k['family']!r}")
    hd, nh, nkv = k["head_dim"], k["heads"], k["kv_heads"]
    out["model.embed_tokens.weight"] = (V, d)
    for i in range(L):
        b = f"model.layers.{i}."
        out[b + "input_layernorm.weight"] = (d,)
        out[b + "post_attention_layernorm.weight"] = (d,)
        if k["family"] == "gemma2":  # norms before and after attention and MLP
            out[b + "pre_feedforward_layernorm.weight"] = (d,)
            out[b + "post_feedforward_layernorm.weight"] = (d,)
        if k["family"] == "phi3":  # fused q | k | v and gate | up
            out[b + "self_attn.qkv_proj.weight"] = ((nh + 2 * nkv) * hd, d)
        else:
            out[b + "self_attn.q_proj.weight"] = (nh * hd, d)
            out[b + "self_attn.k_proj.weight"] = (nkv * hd, d)
            out[b + "self_attn.v_proj.weight"] = (nkv * hd, d)
        out[b + "self_attn.o_proj.weight"] = (d, nh * hd)
        if k["family"] == "qwen3":
            out[b + "self_attn.q_norm.weight"] = (hd,)
            out[b + "self_attn.k_norm.weight"] = (hd,)
        if k["family"] == "phi3":
            out[b + "mlp.gate_up_proj.weight"] = (2 * I, d)
        else:
            out[b + "mlp.gate_proj.weight"] = (I, d)
            out[b + "mlp.up_proj.weight"] = (I, d)
        out[b + "mlp.down_proj.weight"] = (d, I)
    out["model.norm.weight"] = (d,)
    if not k["tied"]:
        out["lm_head.weight"] = (V, d)
    return out


def param_count(hf: dict[str, Any]) -> int:
    """Number of parameters, computed arithmetically (a tied head counted once)."""
    k = dims(hf)
    d, L, V, I = k["hidden"], k["layers"], k["vocab"], k["inter"]
    if k["family"] == "gpt2":
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * I + I) + (I * d + d)
        return V * d + k["max_pos"] * d + L * per_layer + 2 * d
    hd, nh, nkv = k["head_dim"], k["heads"], k["kv_heads"]
    attn = d * nh * hd + 2 * d * nkv * hd + nh * hd * d + (2 * hd if k["family"] == "qwen3" else 0)
    norms = 4 * d if k["family"] == "gemma2" else 2 * d
    per_layer = norms + attn + 3 * d * I
    return V * d * (1 if k["tied"] else 2) + L * per_layer + d


def kv_bytes_per_token(hf: dict[str, Any], itemsize: int = 2) -> int:
    """KV-cache bytes one position takes over all layers."""
    k = dims(hf)
    return 2 * k["layers"] * k["kv_heads"] * k["head_dim"] * itemsize


def tiny(hf: dict[str, Any]) -> dict[str, Any]:
    """A small config of the same family and head layout (GQA groups, explicit head_dim, tying,
    max positions kept) for dry runs without a GPU."""
    t = copy.deepcopy(hf)
    if t["model_type"] == "gpt2":
        t.update(n_embd=64, n_layer=2, n_head=4, n_inner=None, vocab_size=512, bos_token_id=511, eos_token_id=511)
        return t
    k = dims(hf)
    groups = k["heads"] // k["kv_heads"]
    nkv = min(k["kv_heads"], 2)
    nh = nkv * min(groups, 3)
    t.update(num_hidden_layers=2, num_attention_heads=nh, num_key_value_heads=nkv, intermediate_size=128,
             vocab_size=512, bos_token_id=1, eos_token_id=2)
    if "head_dim" in hf:
        t.update(head_dim=16, hidden_size=64)
    else:
        t.update(hidden_size=16 * nh)
    if "max_window_layers" in t:
        t["max_window_layers"] = 2
    return t


def write_numpy_checkpoint(hf: dict[str, Any], out_dir: str | os.PathLike, seed: int = 0,
                           std: float = 0.04) -> Path:
    """Write a random-weight float16 checkpoint (config.json + model.safetensors, HF names) with
    NumPy alone: the fallback when torch/transformers are not installed (``--no-hf`` dry runs).
    Same recipe as the torch path: matrices ~ N(0, std), biases ~ N(0, std), norm weights
    ~ 1 + N(0, std)."""
    import numpy as np
    from safetensors.numpy import save_file

    import zlib
    from concurrent.futures import ThreadPoolExecutor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = hf_tensor_shapes(hf)
    tensors = {name: np.empty(shape, np.float16) for name, shape in shapes.items()}
    # Pieces of <= 2**24 values, each from its own generator seeded by (seed, tensor name, piece):
    # the same weights whatever the thread count, and NumPy fills arrays without the GIL, so an
    # 8B model takes seconds on 16 cores instead of ~3.5 minutes on one.
    piece = 1 << 24
    jobs = [(name, i) for name, a in tensors.items() for i in range(0, a.size, piece)]

    def fill(job: tuple[str, int]) -> None:
        name, i = job
        flat = tensors[name].reshape(-1)
        n = min(piece, flat.size - i)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), i // piece])
        a = rng.standard_normal(n, dtype=np.float32)
        a *= std
        if _is_norm_weight(name):
            a += 1.0
        flat[i:i + n] = a

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, jobs))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = {k: v for k, v in hf.items() if k != "rope_theta"}
    if "rope_theta" in hf:
        cfg["rope_parameters"] = {"rope_theta": hf["rope_theta"], "rope_type": "default"}
    cfg["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def _is_norm_weight(name: str) -> bool:
    return name.endswith(".weight") and any(s in name for s in ("norm", "ln_1", "ln_2", "ln_f"))


def is_norm_param(name: str) -> bool:
    """True for a norm's scale (LayerNorm/RMSNorm weight, QK-norm weight): initialised near 1."""
    return _is_norm_weight(name)


def gb(nbytes: float) -> float:
    return nbytes / 1e9

