"""Model hyper-parameters: one :class:`TransformerConfig` for every supported family.

``config_from_hf`` accepts Hugging Face ``config.json`` dictionaries in both the
transformers v4 form (``rope_theta`` / ``rope_scaling`` / ``torch_dtype``) and
the v5 form (``rope_parameters`` / ``dtype``), and GPT-2's own key names
(``n_embd``, ``n_head``, ...). Both forms normalise to equal configs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LoadError, UnsupportedModelError
from .files import read_text
from .moe import MoEConfig, moe_config
from .rope_scaling import rope_freq_factors, rope_inv_freq

ACTIVATIONS = ("gelu_tanh", "silu", "gelu")

# HF `hidden_act` / `activation_function` values -> our activations ("gelu": exact, erf; HF's
# GELUActivation)
_ACT_ALIASES = {
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}

# `architectures[0]` -> model_type, for configs that lack model_type.
_ARCH_TO_TYPE = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "GraniteForCausalLM": "granite",
    "Olmo2ForCausalLM": "olmo2",
    "StableLmForCausalLM": "stablelm",
    "Phi3ForCausalLM": "phi3",
    "PhiForCausalLM": "phi",
    "GPTNeoXForCausalLM": "gpt_neox",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}


@dataclass
class TransformerConfig:
    """Hyper-parameters of a decoder-only transformer.

    Sizes are element counts; ``norm_eps`` is the epsilon added to the variance
    (RMSNorm/LayerNorm); ``rope_theta`` is the RoPE base. ``head_dim`` defaults to
    ``hidden_size // num_heads`` (Qwen3 sets it explicitly), ``num_kv_heads`` to
    ``num_heads`` (no GQA). ``rope_scaling`` is None for plain RoPE, else a dict
    with ``rope_type`` (e.g. "llama3", "linear") and that type's parameters
    (llama3: factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings).

    Granite's multipliers (1.0 / None: not used): ``embedding_multiplier`` scales the
    embeddings, ``residual_multiplier`` each block's output before its residual add,
    ``attention_multiplier`` is the attention scale (instead of 1/sqrt(head_dim)), and the logits
    are divided by ``logits_scaling``.

    ``rotary_dim``: RoPE turns only the first ``rotary_dim`` elements of each head (HF
    ``partial_rotary_factor`` x head_dim, their frequencies over ``rotary_dim``); None: all.
    ``parallel_residual``: attention and MLP both read the one pre-norm of the layer input and
    both outputs are added to it (StableLM's ``use_parallel_residual``).

    Gemma 2 / 3: ``attn_softcap`` / ``final_softcap`` (None: off) cap the attention scores (after
    the scale) and the logits as ``cap * tanh(x / cap)``; ``rope_theta_local``: the RoPE base of
    the sliding-window layers, which get no scaling (Gemma 3; None: every layer alike).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    activation: str = "silu"
    dtype: str | None = None  # storage dtype the checkpoint declares ("bfloat16", ...), informative
    sliding_window: int | None = None  # Mistral-style local attention window, if the config enables one
    # per layer "sliding_attention" | "full_attention" (HF ``layer_types``; Qwen2's from
    # max_window_layers); None: every layer slides when sliding_window is set (Mistral)
    layer_types: list[str] | None = None
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    rotary_dim: int | None = None
    parallel_residual: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    rope_theta_local: float | None = None
    moe: MoEConfig | None = None  # Mixtral / Qwen2-MoE / Qwen3-MoE (tinygraph.io.moe)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None and self.num_heads:
            self.head_dim = self.hidden_size // self.num_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.rope_theta = float(self.rope_theta)
        self.norm_eps = float(self.norm_eps)
        self.validate()

    def validate(self) -> None:
        """Raise LoadError when sizes are missing/non-positive or inconsistent."""
        name = f"config ({self.model_type})"
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                    "intermediate_size", "max_position_embeddings"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise LoadError(f"{name}: {key} must be a positive int, got {v!r}")
        assert self.num_kv_heads is not None
        if self.num_heads % self.num_kv_heads:
            raise LoadError(f"{name}: num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.activation not in ACTIVATIONS:
            raise LoadError(f"{name}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise LoadError(f"{name}: norm_eps must be a finite number > 0, got {self.norm_eps}")
        f32 = np.finfo(np.float32)
        if not (float(f32.tiny) <= self.rope_theta <= float(f32.max)):  # RoPE runs in float32
            raise LoadError(f"{name}: rope_theta must be a finite number > 0 (within float32), got {self.rope_theta}")
        for key in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling",
                    "attn_softcap", "final_softcap", "rope_theta_local"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) and v > 0):
                raise LoadError(f"{name}: {key} must be a finite number > 0, got {v!r}")
        if self.rotary_dim is not None and not (_is_int(self.rotary_dim, 2) and self.rotary_dim % 2 == 0
                                                and self.rotary_dim <= self.head_dim):
            raise LoadError(f"{name}: rotary_dim (partial_rotary_factor x head_dim) must be an even int in "
                            f"2..{self.head_dim}, got {self.rotary_dim!r}")
        if self.sliding_window is not None and not _is_int(self.sliding_window, 1):
            raise LoadError(f"{name}: sliding_window must be a positive int or None, got {self.sliding_window!r}")
        if not isinstance(self.tie_word_embeddings, (bool, np.bool_)):  # 0.5 or NaN is no answer
            raise LoadError(f"{name}: tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
        if self.rope_scaling is not None:
            _check_rope_params(self.rope_scaling, "rope_scaling", name)
        eos = self.eos_token_id
        ids = [self.bos_token_id, eos] if not isinstance(eos, list) else [self.bos_token_id, *(eos or [0])]
        for i, v in enumerate(ids):
            if (v is not None or (isinstance(eos, list) and i > 0)) and (
                    not isinstance(v, (int, np.integer)) or isinstance(v, bool)):
                raise LoadError(f"{name}: bos/eos token ids must be ints, got {v!r}")

    @property
    def num_kv_groups(self) -> int:
        """Query heads sharing one K/V head (GQA group size)."""
        assert self.num_kv_heads is not None
        return self.num_heads // self.num_kv_heads

    @property
    def rope_type(self) -> str:
        """"default" for plain RoPE, else rope_scaling["rope_type"]."""
        return (self.rope_scaling or {}).get("rope_type", "default")

    def layer_window(self, i: int) -> int | None:
        """Layer ``i``'s sliding window (query ``p`` sees keys ``p - window < j <= p``, HF's
        convention), or None for full causal attention."""
        if self.sliding_window is None or (self.layer_types is not None and
                                           self.layer_types[i] != "sliding_attention"):
            return None
        return int(self.sliding_window)

    @property
    def eos_token_ids(self) -> list[int]:
        """eos_token_id as a (possibly empty) list."""
        e = self.eos_token_id
        return [] if e is None else [int(x) for x in (e if isinstance(e, list) else [e])]


# --------------------------------------------------------------------------- value checks
def _is_int(v: Any, minimum: int) -> bool:
    """An int (not a bool) >= minimum."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= minimum


def _as_int(v: Any, key: str, where: str, minimum: int = 1) -> int:
    """``v`` as an int >= ``minimum``, or LoadError naming ``key``.

    JSON has one number type, so a float is accepted only when it is a whole number (4096.0,
    as some converters write it); 2.5, NaN, strings ("64") and bools are refused, never rounded
    or parsed.
    """
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if not _is_int(v, minimum):
        want = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise LoadError(f"{where}: bad value: {key} must be {want}, got {v!r}")
    return int(v)


def _as_float(v: Any, key: str, where: str) -> float:
    """``v`` as a finite float > 0 (epsilons, RoPE bases and factors), or LoadError naming ``key``."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if not ok or not (math.isfinite(v) and v > 0):  # 0, negative or NaN factors give NaN logits
        raise LoadError(f"{where}: bad value: {key} must be a finite number > 0, got {v!r}")
    return float(v)


def _as_bool(v: Any, key: str, where: str) -> bool:
    """``v`` as a bool: JSON true/false, or 0/1 (which HF's Python treats as bools); nothing else."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    raise LoadError(f"{where}: bad value: {key} must be true or false (or 0/1), got {v!r}")


_MISSING = object()


def _get(d: dict[str, Any], keys: tuple[str, ...], default: Any = _MISSING) -> tuple[str, Any]:
    """(key, value) of the first of ``keys`` present and not null (GPT-2 and HF spell sizes
    differently; HF writes absent optional sizes as null); ``default`` under ``keys[0]`` when
    none is, KeyError when there is no default."""
    for k in keys:
        if d.get(k) is not None:
            return k, d[k]
    if default is _MISSING:
        raise KeyError(keys[0])
    return keys[0], default


def _int_key(d: dict[str, Any], where: str, *keys: str, default: Any = _MISSING) -> Any:
    """The int under the first present of ``keys`` (checked by :func:`_as_int`), else ``default``
    (KeyError when there is none)."""
    for k in keys:
        if d.get(k) is not None:
            return _as_int(d[k], k, where)
    if default is _MISSING:
        raise KeyError(keys[0])
    return default


def _float_key(d: dict[str, Any], where: str, *keys: str, default: float) -> float:
    k, v = _get(d, keys, default)
    return _as_float(v, k, where)


def _bool_key(d: dict[str, Any], where: str, key: str, default: bool) -> bool:
    k, v = _get(d, (key,), default)
    return _as_bool(v, k, where)


# RoPE-scaling parameters that are positive numbers / positive ints when present.
_ROPE_FLOATS = ("factor", "low_freq_factor", "high_freq_factor", "attention_factor", "beta_fast", "beta_slow")
_ROPE_INTS = ("original_max_position_embeddings",)


def _check_rope_params(scaling: dict[str, Any], key: str, where: str) -> None:
    """Refuse RoPE-scaling parameters that are not positive numbers (``key``: the dict's name in
    the config, "rope_scaling" or "rope_parameters", for the message)."""
    for k in _ROPE_FLOATS:  # null means "HF's default" for these
        if k in scaling and not (k in ("attention_factor", "beta_fast", "beta_slow") and scaling[k] is None):
            _as_float(scaling[k], f"{key}.{k}", where)
    for k in ("mscale", "mscale_all_dim"):  # YaRN (DeepSeek form); 0 / null: unused
        v = scaling.get(k)
        if v is not None and v != 0:
            _as_float(v, f"{key}.{k}", where)
    for k in _ROPE_INTS:
        if k in scaling:
            _as_int(scaling[k], f"{key}.{k}", where)


# --------------------------------------------------------------------------- parsing
def _act(value: Any, where: str) -> str:
    act = _ACT_ALIASES.get(str(value))
    if act is None:
        raise UnsupportedModelError(
            f"{where}: activation {value!r} is not supported (supported: {sorted(_ACT_ALIASES)})"
        )
    return act


def _normalise_rope(d: dict[str, Any], where: str = "config", mt: str = "") -> tuple[float, dict[str, Any] | None]:
    """Return (rope_theta, rope_scaling) from either config form.

    v5: ``rope_parameters = {rope_theta, rope_type, factor, ...}``.
    v4: ``rope_theta`` at top level, ``rope_scaling = {rope_type|type, factor, ...}`` or None.
    The scaling dict comes back with ``rope_type`` (never the legacy ``type``) and
    without ``rope_theta``; "default" scaling becomes None. Numeric parameters are checked
    here, so messages name the key as the file spells it. As transformers does: Phi-3's legacy
    types "su" and "yarn" are longrope; llama3/yarn/longrope get
    ``original_max_position_embeddings`` from the top level when there is one (Phi-3's config
    class has 4096 there by default), else keep their own, else ``max_position_embeddings``.
    """
    params = d.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise LoadError(f"{where}: bad value: rope_parameters must be an object, got {params!r}")
    if isinstance(params, dict) and "sliding_attention" in params:  # per-layer-type form (Gemma 3)
        if mt != "gemma3_text":
            raise UnsupportedModelError(f"{where}: per-layer-type rope_parameters are not supported")
        params = params.get("full_attention") or {}  # the global layers'; the sliding ones': _gemma
        if not isinstance(params, dict):
            raise LoadError(f"{where}: bad value: rope_parameters.full_attention must be an object")
    theta_key, scaling_key = "rope_theta", "rope_scaling"
    default = {"gpt_neox": d.get("rotary_emb_base", 10000.0), "gemma3_text": 1e6}.get(mt, 10000.0)
    theta = d.get("rope_theta", default)
    scaling = d.get("rope_scaling")
    if isinstance(params, dict):
        if "rope_theta" in params:
            theta_key, theta = "rope_parameters.rope_theta", params["rope_theta"]
        scaling_key = "rope_parameters"
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    theta = _as_float(theta, theta_key, where)
    if not scaling:
        return theta, None
    if not isinstance(scaling, dict):
        raise LoadError(f"{where}: bad value: {scaling_key} must be an object or null, got {scaling!r}")
    scaling = dict(scaling)
    rtype = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rtype == "default":
        return theta, None
    if mt == "phi3" and rtype in ("su", "yarn"):
        rtype = "longrope"
    if rtype in ("llama3", "yarn", "longrope"):
        top = d.get("original_max_position_embeddings", 4096 if mt == "phi3" else None)
        if top is not None:
            scaling["original_max_position_embeddings"] = top
        elif scaling.get("original_max_position_embeddings") is None:
            scaling["original_max_position_embeddings"] = d.get("max_position_embeddings", 2048)
    _check_rope_params(scaling, scaling_key, where)
    return theta, {"rope_type": rtype, **scaling}


def _infer_model_type(d: dict[str, Any]) -> str:
    mt = d.get("model_type")
    if mt:
        return str(mt)
    for arch in d.get("architectures") or []:
        if arch in _ARCH_TO_TYPE:
            return _ARCH_TO_TYPE[arch]
    if "n_embd" in d:
        return "gpt2"
    raise UnsupportedModelError("config: no model_type and no recognised architectures entry")


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    """Build a TransformerConfig from a parsed HF ``config.json`` (v4 or v5 form, or GPT-2 keys).

    Every size must be a positive JSON integer (a float only when it is a whole number, e.g.
    ``4096.0``); strings, bools, fractions, NaN and non-positive values raise LoadError naming
    the key, as do epsilons, RoPE bases and scaling factors that are not finite numbers > 0 and
    a ``tie_word_embeddings`` that is not true/false/0/1.
    """
    if not isinstance(d, dict):
        raise LoadError(f"config: expected a JSON object, got {type(d).__name__}")
    if d.get("model_type") == "gemma3" and "text_config" in d:
        raise UnsupportedModelError("config (gemma3): the multimodal Gemma 3 is not supported (its text model, "
                                    "model_type gemma3_text, is)")
    try:
        mt = _infer_model_type(d)
    except (TypeError, ValueError) as exc:  # e.g. "architectures": 5
        if isinstance(exc, LoadError):
            raise
        raise LoadError(f"config: cannot tell the model type: {exc}") from exc
    where = f"config ({mt})"
    dtype = d.get("dtype") or d.get("torch_dtype")
    try:
        if mt == "gpt2" or "n_embd" in d:
            hidden = _int_key(d, where, "n_embd", "hidden_size")
            return TransformerConfig(
                model_type=mt,
                vocab_size=_int_key(d, where, "vocab_size"),
                hidden_size=hidden,
                num_layers=_int_key(d, where, "n_layer", "num_hidden_layers"),
                num_heads=_int_key(d, where, "n_head", "num_attention_heads"),
                intermediate_size=_int_key(d, where, "n_inner", default=4 * hidden),
                max_position_embeddings=_int_key(d, where, "n_positions", "n_ctx", default=1024),
                norm_eps=_float_key(d, where, "layer_norm_epsilon", default=1e-5),
                tie_word_embeddings=_bool_key(d, where, "tie_word_embeddings", True),
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"),
                activation=_act(d.get("activation_function", "gelu_new"), "config"),
                dtype=dtype,
            )
        theta, scaling = _normalise_rope(d, where, mt)
        heads = _int_key(d, where, "num_attention_heads")
        # Qwen2/Qwen3 slide only with use_sliding_window (HF's default: false); Mistral always does
        use_sw = _bool_key(d, where, "use_sliding_window", mt not in _QWEN_WINDOWS + _QWEN_MOE)
        return TransformerConfig(
            model_type=mt,
            vocab_size=_int_key(d, where, "vocab_size"),
            hidden_size=_int_key(d, where, "hidden_size"),
            num_layers=_int_key(d, where, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=_int_key(d, where, "num_key_value_heads", default=heads),
            head_dim=_int_key(d, where, "head_dim", default=None),
            intermediate_size=_int_key(d, where, "intermediate_size"),
            max_position_embeddings=_int_key(d, where, "max_position_embeddings", default=2048),
            norm_eps=_float_key(d, where, "rms_norm_eps", "layer_norm_eps", default=1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            # Llama/Mistral/Qwen config classes default to untied heads.
            tie_word_embeddings=_bool_key(d, where, "tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            activation=_act(_hidden_act(d, mt), "config"),
            dtype=dtype,
            **_multipliers(d, where, mt),
            **_parallel(d, where, mt),
            **_gemma(d, where, mt),
            rotary_dim=_rotary_dim(d, where, mt, heads),
            sliding_window=_int_key(d, where, "sliding_window", default=None) if use_sw else None,
            layer_types=_layer_types(d, where, mt),
            moe=moe_config(d, where, mt, _int_key(d, where, "num_hidden_layers"),
                           _int_key(d, where, "intermediate_size")),
        )
    except KeyError as exc:
        raise LoadError(f"{where}: required key {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        if isinstance(exc, LoadError):
            raise
        raise LoadError(f"{where}: bad value: {exc}") from exc


def _hidden_act(d: dict[str, Any], mt: str) -> Any:
    """The MLP activation's HF name. Gemma prefers ``hidden_activation`` and, as transformers'
    GemmaConfig does, reads its legacy ``"gelu"`` as the tanh approximation."""
    if mt in ("gemma", "gemma2", "gemma3_text"):
        act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
        return "gelu_pytorch_tanh" if act == "gelu" else act
    return d.get("hidden_act", {"phi": "gelu_new", "gpt_neox": "gelu"}.get(mt, "silu"))


def _multipliers(d: dict[str, Any], where: str, mt: str) -> dict[str, Any]:
    """Granite's four multipliers (transformers' GraniteConfig defaults: all 1.0, so its
    attention scale is 1.0 unless given); other families have none."""
    if mt != "granite":
        return {}
    keys = ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")
    return {k: _float_key(d, where, k, default=1.0) for k in keys}


def _gemma(d: dict[str, Any], where: str, mt: str) -> dict[str, Any]:
    """Gemma 2 / 3: the attention scale ``query_pre_attn_scalar ** -0.5`` (default 256), the
    soft-caps (Gemma2Config's defaults 50 / 30 when absent; Gemma 3's none) and Gemma 3's local
    RoPE base (``rope_parameters.sliding_attention.rope_theta``, v4 ``rope_local_base_freq``,
    default 1e4; a scaling there is refused)."""
    if mt not in ("gemma2", "gemma3_text"):
        return {}
    g2 = mt == "gemma2"
    out: dict[str, Any] = {"attention_multiplier": _float_key(d, where, "query_pre_attn_scalar", default=256) ** -0.5}
    for key, name, dflt in (("attn_softcap", "attn_logit_softcapping", 50.0),
                            ("final_softcap", "final_logit_softcapping", 30.0)):
        v = d.get(name, dflt if g2 else None)
        out[key] = None if v is None else _as_float(v, name, where)
    if not g2:
        params = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else {}
        local = params.get("sliding_attention") or {}
        if not isinstance(local, dict) or local.get("rope_type", "default") != "default":
            raise UnsupportedModelError(f"{where}: a RoPE scaling on the sliding-window layers is not supported")
        key, theta = ("rope_parameters.sliding_attention.rope_theta", local["rope_theta"]) if "rope_theta" in local \
            else ("rope_local_base_freq", d.get("rope_local_base_freq", 10000.0))
        out["rope_theta_local"] = _as_float(theta, key, where)
    return out


def _parallel(d: dict[str, Any], where: str, mt: str) -> dict[str, Any]:
    """The parallel residual: StableLM's ``use_parallel_residual`` (default false), GPT-NeoX's
    (default true), Phi-2's always; StableLM's and Phi's per-head LayerNorm q/k (``qk_layernorm``)
    is refused."""
    if mt not in ("stablelm", "phi", "gpt_neox"):
        return {}
    if mt != "gpt_neox" and _bool_key(d, where, "qk_layernorm", False):
        raise UnsupportedModelError(f"{where}: qk_layernorm (per-head LayerNorm on q and k) is not supported")
    if mt == "phi":
        return {"parallel_residual": True}
    return {"parallel_residual": _bool_key(d, where, "use_parallel_residual", mt == "gpt_neox")}


def _rotary_dim(d: dict[str, Any], where: str, mt: str, heads: int) -> int | None:
    """``int(head_dim * partial_rotary_factor)`` (top level, or in v5's ``rope_parameters``, or
    GPT-NeoX's ``rotary_pct``; HF's rounding), None for full rotary. The config classes' defaults:
    StableLM 0.25, Phi 0.5, GPT-NeoX 0.25, else 1."""
    params = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else {}
    key, f = "partial_rotary_factor", d.get("partial_rotary_factor")
    if f is None and params.get(key) is not None:
        key, f = f"rope_parameters.{key}", params[key]
    if f is None and mt == "gpt_neox" and d.get("rotary_pct") is not None:
        key, f = "rotary_pct", d["rotary_pct"]
    if f is None:
        f = {"stablelm": 0.25, "phi": 0.5, "gpt_neox": 0.25}.get(mt, 1.0)
    f = _as_float(f, key, where)
    hd = _int_key(d, where, "head_dim", default=None) or _int_key(d, where, "hidden_size") // heads
    if f > 1.0:
        raise LoadError(f"{where}: bad value: {key} must be in (0, 1], got {f}")
    if int(hd * f) == hd:
        return None
    return int(hd * f)


_QWEN_WINDOWS = ("qwen2", "qwen3")  # model types whose layers slide by max_window_layers
_QWEN_MOE = ("qwen2_moe", "qwen3_moe")  # no sliding window unless use_sliding_window (HF's default)
LAYER_TYPES = ("full_attention", "sliding_attention")


def _layer_types(d: dict[str, Any], where: str, mt: str) -> list[str] | None:
    """HF ``layer_types`` (checked), else Qwen2/Qwen3's rule (transformers' Qwen2Config: layer
    ``i`` slides when ``i >= max_window_layers``, default 28), else None (every layer alike)."""
    n = _int_key(d, where, "num_hidden_layers")
    if n > 1 << 16 and mt in (*_QWEN_WINDOWS, "gemma2", "gemma3_text"):  # no per-layer list for a hostile 2**40
        raise LoadError(f"{where}: bad value: num_hidden_layers {n} is more layers than any model has")
    lt = d.get("layer_types")
    if lt is not None:
        if not isinstance(lt, list) or len(lt) != n:
            raise LoadError(f"{where}: bad value: layer_types must be a list of {n} entries, got {lt!r}")
        bad = [t for t in lt if t not in LAYER_TYPES]
        if bad:
            raise UnsupportedModelError(f"{where}: layer_types entry {bad[0]!r} is not supported "
                                        f"(supported: {', '.join(LAYER_TYPES)})")
        return list(lt)
    if mt == "qwen2_moe":  # transformers' Qwen2MoeConfig: layers 0, 2, 4, ... below max_window_layers
        mwl = _as_int(d.get("max_window_layers", 28), "max_window_layers", where, minimum=0)
        return ["sliding_attention" if (i + 1) % 2 and i < mwl else "full_attention" for i in range(n)]
    if mt in _QWEN_WINDOWS:
        mwl = d.get("max_window_layers", 28)
        mwl = _as_int(mwl, "max_window_layers", where, minimum=0)
        return ["sliding_attention" if i >= mwl else "full_attention" for i in range(n)]
    if mt in ("gemma2", "gemma3_text"):  # their config classes' patterns: every 2nd / 6th layer is global
        every = 2 if mt == "gemma2" else _int_key(d, where, "sliding_window_pattern", default=6)
        return ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    return None


def load_hf_config(path: str | os.PathLike[str]) -> TransformerConfig:
    """Read a ``config.json`` file (or the one inside a directory)."""
    p = Path(path)
    if os.path.isdir(p):
        p = p / "config.json"
    text = read_text(p, "config")  # refuses FIFOs, devices, directories, unreadable files at once
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise LoadError(f"{p}: cannot read config JSON: {exc}") from exc
    try:
        return config_from_hf(d)
    except LoadError as exc:
        raise type(exc)(f"{p}: {exc}") from exc


__all__ = [
    "TransformerConfig",
    "config_from_hf",
    "load_hf_config",
    "rope_inv_freq",
    "rope_freq_factors",
    "ACTIVATIONS",
]
