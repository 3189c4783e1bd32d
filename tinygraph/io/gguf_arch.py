"""What each llama.cpp architecture means: GGUF metadata -> TransformerConfig values, tensor names.

``gguf_loader`` reads what every architecture shares (sizes, RoPE base, token ids); this module
holds the per-architecture knowledge, taken from llama.cpp's converter (``convert_hf_to_gguf.py`` /
``conversion/``) and from how llama.cpp itself reads the keys (``src/models/<arch>.cpp``), so a
file written by the converter loads to the model HF defines:

* **Norm epsilon key**: LayerNorm families (gpt2, phi2, gptneox, stablelm) write
  ``{arch}.attention.layer_norm_epsilon``, the RMSNorm ones ``layer_norm_rms_epsilon``.
* **Q/K permutation**: the converter permutes Q/K rows only for llama.cpp's "normal" RoPE families
  (llama, granite); every other family here is NeoX-style and stored as HF has it.
* **Gemma**: the converter stores RMSNorm weights with the ``+ 1`` already added (every tensor whose
  name ends in ``norm.weight``, q/k norms included), so they load as they are. Gemma 2 drops
  ``lm_head`` (tied). The attention scale is not written: llama.cpp uses ``1/sqrt(head_dim)``, or
  ``1/sqrt(hidden/heads)`` for the 27B models (46 / 62 layers), which equals HF's
  ``query_pre_attn_scalar`` on the published models. Sliding layers follow
  ``{arch}.attention.sliding_window_pattern`` (an int n: layer i slides unless ``i % n == n - 1``;
  or one bool per layer), default 2 (Gemma 2) / 6 (Gemma 3). Gemma 3's sliding layers use
  ``rope.freq_base_swa`` (default 1e4) unscaled, the global ones ``rope.freq_base`` and the scaling.
  Soft-caps: Gemma 2's default to 50 / 30 when absent (llama.cpp's defaults), Gemma 3's final cap
  only when written.
* **Partial rotary**: ``{arch}.rope.dimension_count`` (Phi-2, Phi-4-mini, GPT-NeoX, StableLM).
* **Phi-2**: the converter writes ``feed_forward_length = 4 * hidden`` and ``head_count_kv = heads``
  whatever the checkpoint has; the tensors are authoritative, so both are read from their shapes.
* **Phi-3**: fused ``attn_qkv`` (q | k | v) and ``ffn_up`` (gate rows, then up rows); LongRoPE as the
  ``rope_factors_short`` / ``rope_factors_long`` tensors with ``rope.scaling.original_context_length``
  and ``rope.scaling.attn_factor``; ``attention.sliding_window`` (0: none) applies to every layer, as
  in HF (llama.cpp currently ignores it for Phi-3).
* **GPT-NeoX**: the converter rewrites the per-head ``query_key_value`` into plain q | k | v rows;
  ``use_parallel_residual``; the exact (erf) GELU of HF's Pythia configs (llama.cpp runs its tanh
  GELU there).
* **Granite**: ``attention.scale`` (absent: ``1/sqrt(head_dim)``), ``embedding_scale``,
  ``residual_scale``, ``logit_scale`` (logits divided by it).
* **OLMo 2**: post-norms ``post_attention_norm`` / ``post_ffw_norm``, q/k norms over the whole
  projection; a sliding window only when written (pattern default 4).
* **Mixture of experts** (Mixtral as ``llama`` with experts, ``qwen2moe``, ``qwen3moe``): see
  :mod:`.gguf_moe`.
"""

from __future__ import annotations

import math

import numpy as np
from typing import Any

from .errors import LoadError, UnsupportedModelError
from .gguf_moe import check_moe_supported, has_experts, moe_config
from .moe import MoEConfig
from .spec import (
    GEMMA2_SPEC,
    GEMMA3_SPEC,
    GEMMA_SPEC,
    GPT2_SPEC,
    GPT_NEOX_SPEC,
    GRANITE_SPEC,
    LLAMA_SPEC,
    MIXTRAL_SPEC,
    OLMO2_SPEC,
    PHI3_SPEC,
    PHI_SPEC,
    QWEN2_MOE_SPEC,
    QWEN2_SPEC,
    QWEN3_MOE_SPEC,
    QWEN3_SPEC,
    STABLELM_SPEC,
    ModelSpec,
    upgrade_spec,  # re-exported: the GGUF loader's import (it lives with the specs, shared with safetensors)
)

# llama.cpp architecture name (``general.architecture``) -> the builder's spec
ARCH_SPECS: dict[str, ModelSpec] = {
    "llama": LLAMA_SPEC,
    "qwen2": QWEN2_SPEC,
    "qwen3": QWEN3_SPEC,
    "gpt2": GPT2_SPEC,
    "gemma": GEMMA_SPEC,
    "gemma2": GEMMA2_SPEC,
    "gemma3": GEMMA3_SPEC,
    "phi2": PHI_SPEC,
    "phi3": PHI3_SPEC,
    "gptneox": GPT_NEOX_SPEC,
    "stablelm": STABLELM_SPEC,
    "olmo2": OLMO2_SPEC,
    "granite": GRANITE_SPEC,
    "qwen2moe": QWEN2_MOE_SPEC,  # mixture-of-experts: gguf_moe.py (Mixtral is "llama" with experts)
    "qwen3moe": QWEN3_MOE_SPEC,
}

LAYERNORM_ARCHS = frozenset({"gpt2", "phi2", "gptneox", "stablelm"})
# llama.cpp's LLAMA_ROPE_TYPE_NORM families among ours: their converter permutes Q/K rows
PERMUTED_ARCHS = frozenset({"llama", "granite"})
_ACTIVATIONS = {"gpt2": "gelu_tanh", "gemma": "gelu_tanh", "gemma2": "gelu_tanh", "gemma3": "gelu_tanh",
                "phi2": "gelu_tanh", "gptneox": "gelu"}

# Tensor names beyond the LLaMA set every family shares (see gguf_loader._GGUF_NAMES).
EXTRA_NAMES: tuple[tuple[str, str], ...] = (
    ("blk.{i}.post_attention_norm.weight", "layers.{i}.attn_post_norm.weight"),  # Gemma 2/3, OLMo 2
    ("blk.{i}.post_ffw_norm.weight", "layers.{i}.mlp_post_norm.weight"),
    ("output.bias", "lm_head.bias"),  # Phi-2
)
# Not weights of the builder: RoPE factors read into the config / rope scaling instead.
NOT_WEIGHTS = frozenset({"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})
FUSED_GATE_UP_ARCHS = frozenset({"phi3"})  # ffn_up holds [gate; up]
# the 27B models' layer counts: llama.cpp scales their attention by 1/sqrt(hidden / heads)
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_MAX_LAYERS = 1 << 16


def check_supported(g: Any) -> None:
    """Refuse, naming the architecture, files of a known architecture with parts tinygraph does
    not build: mixture-of-experts parts other than Mixtral's / Qwen-MoE's (:mod:`.gguf_moe`),
    StableLM / Phi-2's per-head q/k LayerNorm."""
    a = g.arch
    names = list(g.tensor_names)
    if has_experts(g):
        check_moe_supported(g)
    if a in ("stablelm", "phi2") and any(".attn_q_norm." in n or ".attn_k_norm." in n for n in names):
        raise UnsupportedModelError(f"GGUF architecture {a!r}: per-head q/k LayerNorm (qk_layernorm) is not supported")


def arch_spec(arch: str, moe: MoEConfig | None) -> ModelSpec:
    """The builder's spec of ``arch``: a ``llama`` file with experts is Mixtral."""
    return MIXTRAL_SPEC if arch == "llama" and moe is not None else ARCH_SPECS[arch]


def norm_eps_key(arch: str) -> str:
    """The metadata key of the norm epsilon (LayerNorm or RMSNorm family)."""
    kind = "layer_norm_epsilon" if arch in LAYERNORM_ARCHS else "layer_norm_rms_epsilon"
    return f"{arch}.attention.{kind}"


def _layer_types(g: Any, n_layers: int, default: int) -> list[str]:
    """Sliding / full per layer from ``{arch}.attention.sliding_window_pattern`` as llama.cpp reads
    it (``load_swa_pattern``): one bool per layer, or an int n (layer i slides unless
    ``i % n == n - 1``; 0: every layer), else ``default``."""
    key = f"{g.arch}.attention.sliding_window_pattern"
    if n_layers > _MAX_LAYERS:  # a corrupt block_count must not build a list of 2**32 entries
        raise LoadError(f"GGUF metadata '{g.arch}.block_count' is {n_layers}, more layers than any model has")
    v = g.meta(key)
    if isinstance(v, list):
        if len(v) != n_layers or not all(isinstance(x, (bool, int)) for x in v):
            raise LoadError(f"GGUF metadata {key!r} must be {n_layers} bools, got {v[:8]!r}")
        swa = [bool(x) for x in v]
    else:
        n = default if v is None else g._int(key)
        if n < 0:
            raise LoadError(f"GGUF metadata {key!r} must be >= 0, got {n}")
        swa = [n == 0 or i % n < n - 1 for i in range(n_layers)]
    return ["sliding_attention" if s else "full_attention" for s in swa]


def _rows(g: Any, name: str) -> int | None:
    """Rows of a stored tensor (its NumPy shape's first axis), None when absent."""
    return g.stored_shape(name)[0] if name in g.tensor_names else None


def _phi2_sizes(g: Any, heads: int, head_dim: int) -> dict[str, Any]:
    """Phi-2's intermediate size and KV heads from the tensors (the converter writes 4 * hidden and
    the head count regardless)."""
    out: dict[str, Any] = {}
    inter = _rows(g, "blk.0.ffn_up.weight")
    if inter:
        out["intermediate_size"] = inter
    k_rows = _rows(g, "blk.0.attn_k.weight")
    qkv = _rows(g, "blk.0.attn_qkv.weight")
    if k_rows is None and qkv is not None:
        k_rows = (qkv - heads * head_dim) // 2
    if k_rows and head_dim > 0 and k_rows % head_dim == 0:
        out["num_kv_heads"] = k_rows // head_dim
    return out


def _factors(g: Any, name: str) -> list[float]:
    return [float(x) for x in g.load_raw(name).reshape(-1)]


def arch_config(g: Any, base: dict[str, Any]) -> dict[str, Any]:
    """TransformerConfig values of ``g``'s architecture, over ``base`` (the shared ones: sizes,
    ``rope_theta``, the generic RoPE scaling ...)."""
    a, out = g.arch, dict(base)
    out["activation"] = _ACTIVATIONS.get(a, "silu")
    out["moe"] = moe_config(g, base["num_layers"], base["intermediate_size"])  # None: dense
    heads, hidden, layers = base["num_heads"], base["hidden_size"], base["num_layers"]
    # bad sizes (0 heads, ...) are left to TransformerConfig's checks: nothing here divides by them
    hd = base["head_dim"] or (hidden // heads if heads > 0 else 0)
    sw = g._int(f"{a}.attention.sliding_window") or None  # 0 means none (Phi-4-mini)
    out["sliding_window"] = sw
    rot = g._int(f"{a}.rope.dimension_count")
    if rot is not None and rot != hd:
        out["rotary_dim"] = rot
    if a == "phi2":
        out.update(_phi2_sizes(g, heads, hd), parallel_residual=True)
    elif a in ("gptneox", "stablelm"):
        v = g.meta(f"{a}.use_parallel_residual", True)  # both converters' default when HF has none
        if not isinstance(v, (bool, int)):
            raise LoadError(f"GGUF metadata '{a}.use_parallel_residual' must be a bool, got {v!r}")
        out["parallel_residual"] = bool(v)
    elif a in ("gemma2", "gemma3"):
        scale_hd = hidden // heads if layers == _GEMMA_27B_LAYERS[a] and heads > 0 else hd
        if scale_hd > 0:
            out["attention_multiplier"] = 1.0 / math.sqrt(scale_hd)
        if a == "gemma2":
            out["attn_softcap"] = g._float(f"{a}.attn_logit_softcapping", 50.0)
            out["final_softcap"] = g._float(f"{a}.final_logit_softcapping", 30.0)
            out["sliding_window"] = sw or 4096  # llama.cpp's default window for Gemma 2
            out["layer_types"] = _layer_types(g, layers, 2)
        else:
            cap = g.meta(f"{a}.final_logit_softcapping")
            out["final_softcap"] = g._float(f"{a}.final_logit_softcapping", 1.0) if cap else None
            if sw:
                out["layer_types"] = _layer_types(g, layers, 6)
                out["rope_theta_local"] = g._float(f"{a}.rope.freq_base_swa", 10000.0)
    elif a == "olmo2" and sw:
        out["layer_types"] = _layer_types(g, layers, 4)
    elif a == "granite":
        out["embedding_multiplier"] = g._float(f"{a}.embedding_scale", 1.0)
        out["residual_multiplier"] = g._float(f"{a}.residual_scale", 1.0)
        out["logits_scaling"] = g._float(f"{a}.logit_scale", 1.0)
        if g.meta(f"{a}.attention.scale") is not None:
            out["attention_multiplier"] = g._float(f"{a}.attention.scale", 1.0)
    if "rope_factors_long.weight" in g.tensor_names:  # LongRoPE (Phi-3)
        sc: dict[str, Any] = {"rope_type": "longrope", "long_factor": _factors(g, "rope_factors_long.weight"),
                              "short_factor": _factors(g, "rope_factors_short.weight")
                              if "rope_factors_short.weight" in g.tensor_names else None}
        if sc["short_factor"] is None:
            raise LoadError("tensor 'rope_factors_long.weight' without 'rope_factors_short.weight'")
        orig = g._int(f"{a}.rope.scaling.original_context_length")
        if orig:
            sc["original_max_position_embeddings"] = orig
        if g.meta(f"{a}.rope.scaling.attn_factor") is not None:
            sc["attention_factor"] = g._float(f"{a}.rope.scaling.attn_factor", 1.0)
        out["rope_scaling"] = sc
    return out


__all__ = ["ARCH_SPECS", "EXTRA_NAMES", "NOT_WEIGHTS", "PERMUTED_ARCHS", "FUSED_GATE_UP_ARCHS", "arch_config",
           "arch_spec", "check_supported", "norm_eps_key", "upgrade_spec"]


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (works on [rows, in] weights and [rows] biases).

    llama.cpp: ``w.reshape(h, 2, rows//h//2, ...).swapaxes(1, 2)``; inverse:
    ``w.reshape(h, rows//h//2, 2, ...).swapaxes(1, 2)``.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise LoadError(f"cannot un-permute {rows} rows over {n_head} heads (need a multiple of {2 * n_head})")
    rest = w.shape[1:]
    return np.ascontiguousarray(w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape))
