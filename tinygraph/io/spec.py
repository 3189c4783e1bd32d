"""Architecture descriptions (:class:`ModelSpec`) and the HF -> canonical weight-name mapping.

The model builder only ever sees *canonical* names (``layers.{i}.attn.q.weight``
...), all in HF ``[out, in]`` orientation. Each spec carries, as plain data,
the rules that produce a canonical tensor from a Hugging Face tensor:
a name template, optionally a transpose (GPT-2's Conv1D stores ``[in, out]``)
and optionally a row split (GPT-2's fused ``c_attn`` holds q, k and v).

Canonical names (``{i}`` = layer index)::

    tok_emb.weight                [vocab, hidden]
    pos_emb.weight                [max_pos, hidden]          learned positions only
    layers.{i}.attn_norm.weight   [hidden]                   (+ .bias for layernorm)
    layers.{i}.attn.q.weight      [heads*head_dim, hidden]   (+ .bias if qkv_bias)
    layers.{i}.attn.k.weight      [kv_heads*head_dim, hidden]
    layers.{i}.attn.v.weight      [kv_heads*head_dim, hidden]
    layers.{i}.attn.o.weight      [hidden, heads*head_dim]   (+ .bias if o_bias)
    layers.{i}.attn.q_norm.weight [head_dim]                 qk_norm only ([heads*head_dim] when
    layers.{i}.attn.k_norm.weight [head_dim]                 qk_norm_over == "all": OLMo 2)
    layers.{i}.attn_post_norm.weight [hidden]                post_norms only (OLMo 2)
    layers.{i}.mlp_norm.weight    [hidden]                   (+ .bias); absent without pre_norms
    layers.{i}.mlp_post_norm.weight  [hidden]                post_norms only
    layers.{i}.mlp.gate.weight    [inter, hidden]            gated only
    layers.{i}.mlp.up.weight      [inter, hidden]            (+ .bias if mlp_bias)
    layers.{i}.mlp.down.weight    [hidden, inter]            (+ .bias)
    layers.{i}.moe.*                                         MoE layers instead of mlp.* (see
                                                             tinygraph.io.moe; {e} = expert)
    final_norm.weight             [hidden]                   (+ .bias)
    lm_head.weight                [vocab, hidden]            absent when tied to tok_emb
    lm_head.bias                  [vocab]                    lm_head_bias only (Phi-2)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import LoadError, UnsupportedModelError
from .moe import moe_names, moe_shape

if TYPE_CHECKING:
    from .config import TransformerConfig


@dataclass(frozen=True)
class WeightRule:
    """How one canonical tensor is made from one HF tensor.

    Attributes:
        canonical: canonical name template (``{i}`` = layer, ``{e}`` = expert).
        hf: HF name template, without the ``model.`` / ``transformer.`` prefix.
        transpose: the HF tensor is ``[in, out]`` (GPT-2 Conv1D); transpose it.
        split: ``(part, parts)``: after the optional transpose, take row block
            ``part`` of ``parts`` equal blocks (fused q/k/v).
        add: a constant added to the tensor, in float32 (Gemma's RMSNorm computes
            ``x * (1 + w)``: the 1 is folded into the weight at load).
        layout: how ``split`` cuts the rows (see :func:`split_rows`): "blocks" (equal
            blocks), "qkv" (q | k | v with the config's head counts: Phi-3's ``qkv_proj``) or
            "heads" (per head ``[q, k, v]`` interleaved: GPT-NeoX's ``query_key_value``).
    """

    canonical: str
    hf: str
    transpose: bool = False
    split: tuple[int, int] | None = None
    add: float = 0.0
    layout: str = "blocks"


@dataclass(frozen=True)
class ModelSpec:
    """What distinguishes one decoder-only architecture from another.

    Attributes:
        name: "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "granite", "olmo2", "stablelm", "phi3",
            "phi", "gpt_neox", "gemma2", "gemma3", "mixtral", "qwen2_moe", "qwen3_moe".
        norm: "layernorm" (weight+bias, mean-centred) or "rmsnorm".
        activation: "gelu_tanh", "silu" or "gelu" (exact).
        gated_mlp: MLP is ``down(act(gate(x)) * up(x))`` rather than ``down(act(up(x)))``.
        position: "learned" (``pos_emb``) or "rope".
        rope_mode: "neox" (rotate halves: pairs (j, j + head_dim/2)); None without RoPE.
        qkv_bias / o_bias / mlp_bias: which linear layers carry a bias.
        qk_norm: RMSNorm on q and k before RoPE (Qwen3, OLMo 2).
        rules: HF -> canonical weight rules (data, see :class:`WeightRule`).
        ignore: HF name templates that are buffers, not weights (skipped silently).
        qk_norm_over: "head" (over each head's head_dim, Qwen3) or "all" (over the whole q / k
            projection, [T, heads*head_dim], before splitting into heads: OLMo 2).
        pre_norms: a norm before attention and before the MLP (every family but OLMo 2).
        post_norms: a norm on the attention and MLP outputs, before the residual add (OLMo 2).
        scale_embeddings: embeddings times sqrt(hidden), the factor rounded to the model dtype
            first, as HF's ``GemmaTextScaledWordEmbedding`` does (Gemma).
        lm_head_bias: the output projection has a bias (Phi-2).
        parallel_mlp_norm: with the config's parallel residual, the MLP reads its own norm
            (``mlp_norm``) of the layer input rather than the attention's (GPT-NeoX).
        activation "gelu" is the exact (erf) GELU; for the GELU specs the config's GELU form is
            used (HF's ``hidden_act``: "gelu" exact, "gelu_new" / "gelu_pytorch_tanh" tanh).
    """

    name: str
    norm: str
    activation: str
    gated_mlp: bool
    position: str
    rope_mode: str | None
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    rules: tuple[WeightRule, ...]
    ignore: tuple[str, ...] = ()
    qk_norm_over: str = "head"
    pre_norms: bool = True
    post_norms: bool = False
    scale_embeddings: bool = False
    lm_head_bias: bool = False
    parallel_mlp_norm: bool = False

    # PyGPUkit-compatible aliases.
    @property
    def norm_type(self) -> str:
        return self.norm

    @property
    def use_rope(self) -> bool:
        return self.position == "rope"

    @property
    def use_qk_norm(self) -> bool:
        return self.qk_norm

    @property
    def norm_bias(self) -> bool:
        """LayerNorm has a bias; RMSNorm has none."""
        return self.norm == "layernorm"


# Checkpoints may or may not nest everything under one of these.
HF_PREFIXES = ("model.", "transformer.", "gpt_neox.")


def _llama_rules(post_norms: bool = False, norm_add: float = 0.0, norm_bias: bool = False) -> tuple[WeightRule, ...]:
    """LLaMA-layout names. ``post_norms``: OLMo 2's layout, where ``post_attention_layernorm``
    normalises the attention output (not the MLP input) and ``post_feedforward_layernorm`` the MLP
    output. ``norm_add``: added to every norm weight (Gemma's 1 + w). ``norm_bias``: LayerNorms
    with biases (StableLM)."""
    if post_norms:
        norms = [("layers.{i}.attn_post_norm", "layers.{i}.post_attention_layernorm"),
                 ("layers.{i}.mlp_post_norm", "layers.{i}.post_feedforward_layernorm")]
    else:
        norms = [("layers.{i}.attn_norm", "layers.{i}.input_layernorm"),
                 ("layers.{i}.mlp_norm", "layers.{i}.post_attention_layernorm")]
    norms += [("layers.{i}.attn.q_norm", "layers.{i}.self_attn.q_norm"),
              ("layers.{i}.attn.k_norm", "layers.{i}.self_attn.k_norm"), ("final_norm", "norm")]
    r = [WeightRule("tok_emb.weight", "embed_tokens.weight")]
    r += [WeightRule(f"{c}.weight", f"{h}.weight", add=norm_add) for c, h in norms]
    if norm_bias:
        r += [WeightRule(f"{c}.bias", f"{h}.bias") for c, h in norms]
    r.append(WeightRule("lm_head.weight", "lm_head.weight"))
    # Biases are mapped for every family; whether they are *required* depends on the spec flags.
    for p in ("q", "k", "v", "o"):
        for kind in ("weight", "bias"):
            r.append(WeightRule(f"layers.{{i}}.attn.{p}.{kind}", f"layers.{{i}}.self_attn.{p}_proj.{kind}"))
    for p in ("gate", "up", "down"):
        for kind in ("weight", "bias"):
            r.append(WeightRule(f"layers.{{i}}.mlp.{p}.{kind}", f"layers.{{i}}.mlp.{p}_proj.{kind}"))
    return tuple(r)


def _gpt2_rules() -> tuple[WeightRule, ...]:
    r = [
        WeightRule("tok_emb.weight", "wte.weight"),
        WeightRule("pos_emb.weight", "wpe.weight"),
        WeightRule("lm_head.weight", "lm_head.weight"),
    ]
    for kind in ("weight", "bias"):
        r += [
            WeightRule(f"layers.{{i}}.attn_norm.{kind}", f"h.{{i}}.ln_1.{kind}"),
            WeightRule(f"layers.{{i}}.mlp_norm.{kind}", f"h.{{i}}.ln_2.{kind}"),
            WeightRule(f"final_norm.{kind}", f"ln_f.{kind}"),
        ]
        t = kind == "weight"  # Conv1D weights are [in, out]; biases are 1-D
        r += [
            WeightRule(f"layers.{{i}}.attn.{p}.{kind}", f"h.{{i}}.attn.c_attn.{kind}", transpose=t, split=(n, 3))
            for n, p in enumerate("qkv")
        ]
        r += [
            WeightRule(f"layers.{{i}}.attn.o.{kind}", f"h.{{i}}.attn.c_proj.{kind}", transpose=t),
            WeightRule(f"layers.{{i}}.mlp.up.{kind}", f"h.{{i}}.mlp.c_fc.{kind}", transpose=t),
            WeightRule(f"layers.{{i}}.mlp.down.{kind}", f"h.{{i}}.mlp.c_proj.{kind}", transpose=t),
        ]
    return tuple(r)


GPT2_SPEC = ModelSpec(
    name="gpt2", norm="layernorm", activation="gelu_tanh", gated_mlp=False, position="learned",
    rope_mode=None, qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=False,
    rules=_gpt2_rules(), ignore=("h.{i}.attn.bias", "h.{i}.attn.masked_bias"),
)
_LLAMA_KW = dict(norm="rmsnorm", activation="silu", gated_mlp=True, position="rope", rope_mode="neox",
                 o_bias=False, mlp_bias=False, rules=_llama_rules(),
                 ignore=("layers.{i}.self_attn.rotary_emb.inv_freq",))
LLAMA_SPEC = ModelSpec(name="llama", qkv_bias=False, qk_norm=False, **_LLAMA_KW)  # type: ignore[arg-type]
MISTRAL_SPEC = ModelSpec(name="mistral", qkv_bias=False, qk_norm=False, **_LLAMA_KW)  # type: ignore[arg-type]
QWEN2_SPEC = ModelSpec(name="qwen2", qkv_bias=True, qk_norm=False, **_LLAMA_KW)  # type: ignore[arg-type]
QWEN3_SPEC = ModelSpec(name="qwen3", qkv_bias=False, qk_norm=True, **_LLAMA_KW)  # type: ignore[arg-type]
_NO_BIAS = dict(qkv_bias=False, o_bias=False, mlp_bias=False)
GEMMA_SPEC = ModelSpec(
    name="gemma", norm="rmsnorm", activation="gelu_tanh", gated_mlp=True, position="rope", rope_mode="neox",
    qk_norm=False, rules=_llama_rules(norm_add=1.0), ignore=_LLAMA_KW["ignore"], scale_embeddings=True,
    **_NO_BIAS)  # type: ignore[arg-type]
# Granite is LLaMA's layout; its multipliers are config values (TransformerConfig)
GRANITE_SPEC = ModelSpec(name="granite", qkv_bias=False, qk_norm=False, **_LLAMA_KW)  # type: ignore[arg-type]
OLMO2_SPEC = ModelSpec(
    name="olmo2", norm="rmsnorm", activation="silu", gated_mlp=True, position="rope", rope_mode="neox",
    qk_norm=True, qk_norm_over="all", pre_norms=False, post_norms=True, rules=_llama_rules(post_norms=True),
    ignore=_LLAMA_KW["ignore"], **_NO_BIAS)  # type: ignore[arg-type]
# StableLM: LLaMA's layout with biased LayerNorms (q/k/v biases when present: use_qkv_bias); partial
# rotary and the parallel residual are config values
STABLELM_SPEC = ModelSpec(
    name="stablelm", norm="layernorm", activation="silu", gated_mlp=True, position="rope", rope_mode="neox",
    qk_norm=False, rules=_llama_rules(norm_bias=True), ignore=_LLAMA_KW["ignore"], **_NO_BIAS)  # type: ignore[arg-type]


def _fused_rules(rules: tuple[WeightRule, ...], qkv: str, layout: str, mlp: tuple[tuple[str, str], ...] = ()
                 ) -> tuple[WeightRule, ...]:
    """``rules`` plus q/k/v (weight and bias) cut from the fused HF tensor ``qkv`` in ``layout``
    and the canonical MLP tensors ``mlp`` = ((canonical part, HF name), ...); a part named
    "gate_up" is Phi-3's ``gate_up_proj``, gate rows first (HF chunks it in two)."""
    r = list(rules)
    for kind in ("weight", "bias"):
        r += [WeightRule(f"layers.{{i}}.attn.{p}.{kind}", f"layers.{{i}}.{qkv}.{kind}", split=(n, 3), layout=layout)
              for n, p in enumerate("qkv")]
        for c, h in mlp:
            if c == "gate_up":
                r += [WeightRule(f"layers.{{i}}.mlp.{p}.{kind}", f"layers.{{i}}.{h}.{kind}", split=(n, 2))
                      for n, p in enumerate(("gate", "up"))]
            else:
                r.append(WeightRule(f"layers.{{i}}.mlp.{c}.{kind}", f"layers.{{i}}.{h}.{kind}"))
    return tuple(r)


# Phi-3 / Phi-3.5 / Phi-4-mini: LLaMA's layout with fused qkv_proj (q | k | v) and gate_up_proj;
# LongRoPE, partial rotary and the sliding window are config values
PHI3_SPEC = ModelSpec(
    name="phi3", qkv_bias=False, qk_norm=False, **{**_LLAMA_KW, "rules": _fused_rules(  # type: ignore[arg-type]
        _llama_rules(), "self_attn.qkv_proj", "qkv", (("gate_up", "mlp.gate_up_proj"),))})


def _renamed_rules(names: dict[str, str], qkv: str | None = None) -> tuple[WeightRule, ...]:
    """Rules for a layout given as canonical -> HF name stems (``{i}`` = layer), weight and bias
    each; ``qkv``: a fused per-head q/k/v tensor stem ("heads" layout) instead of q/k/v stems."""
    r = [WeightRule(f"{c}.{kind}", f"{h}.{kind}") for c, h in names.items() for kind in ("weight", "bias")]
    if qkv is not None:
        r += [WeightRule(f"layers.{{i}}.attn.{p}.{kind}", f"{qkv}.{kind}", split=(n, 3), layout="heads")
              for kind in ("weight", "bias") for n, p in enumerate("qkv")]
    return tuple(r)


_PHI_NAMES = {"tok_emb": "embed_tokens", "final_norm": "final_layernorm", "lm_head": "lm_head",
              "layers.{i}.attn_norm": "layers.{i}.input_layernorm",
              **{f"layers.{{i}}.attn.{p}": f"layers.{{i}}.self_attn.{p}_proj" for p in "qkv"},
              "layers.{i}.attn.o": "layers.{i}.self_attn.dense",
              "layers.{i}.mlp.up": "layers.{i}.mlp.fc1", "layers.{i}.mlp.down": "layers.{i}.mlp.fc2"}
_NEOX_NAMES = {"tok_emb": "embed_in", "final_norm": "final_layer_norm", "lm_head": "embed_out",
               "layers.{i}.attn_norm": "layers.{i}.input_layernorm",
               "layers.{i}.mlp_norm": "layers.{i}.post_attention_layernorm",
               "layers.{i}.attn.o": "layers.{i}.attention.dense",
               "layers.{i}.mlp.up": "layers.{i}.mlp.dense_h_to_4h",
               "layers.{i}.mlp.down": "layers.{i}.mlp.dense_4h_to_h"}
_GELU_KW = dict(norm="layernorm", gated_mlp=False, position="rope", rope_mode="neox", qk_norm=False, **_NO_BIAS)
# Phi-2: one LayerNorm feeds attention and MLP (the config's parallel residual), partial rotary,
# biases everywhere (found in the file), gelu_new, a biased lm_head
PHI_SPEC = ModelSpec(name="phi", activation="gelu_tanh", rules=_renamed_rules(_PHI_NAMES),
                     ignore=("layers.{i}.self_attn.rotary_emb.inv_freq",), **_GELU_KW)  # type: ignore[arg-type]
# GPT-NeoX / Pythia: parallel residual with two LayerNorms, rotary_pct, fused per-head q/k/v,
# exact GELU; transformers 5 saves the head as lm_head, the hub's files as embed_out
GPT_NEOX_SPEC = ModelSpec(
    name="gpt_neox", activation="gelu", parallel_mlp_norm=True,
    rules=_renamed_rules(_NEOX_NAMES, qkv="layers.{i}.attention.query_key_value")
    + (WeightRule("lm_head.weight", "lm_head.weight"),),
    ignore=tuple(f"layers.{{i}}.attention.{b}" for b in ("bias", "masked_bias", "rotary_emb.inv_freq")),
    **_GELU_KW)  # type: ignore[arg-type]
# Gemma 2 / Gemma 3 (text): Gemma's (1 + w) RMSNorms before *and* after attention and MLP
# (post_attention_layernorm normalises the attention output, pre_feedforward_layernorm the MLP
# input); soft-caps, the attention scale, per-layer windows and Gemma 3's local RoPE base are
# config values; Gemma 3 adds per-head q/k norms
_GEMMA2_RULES = _llama_rules(post_norms=True, norm_add=1.0) + tuple(
    WeightRule(f"layers.{{i}}.{c}.weight", f"layers.{{i}}.{h}.weight", add=1.0)
    for c, h in (("attn_norm", "input_layernorm"), ("mlp_norm", "pre_feedforward_layernorm")))
_GEMMA2_KW = dict(norm="rmsnorm", activation="gelu_tanh", gated_mlp=True, position="rope", rope_mode="neox",
                  rules=_GEMMA2_RULES, ignore=_LLAMA_KW["ignore"], scale_embeddings=True, post_norms=True, **_NO_BIAS)
GEMMA2_SPEC = ModelSpec(name="gemma2", qk_norm=False, **_GEMMA2_KW)  # type: ignore[arg-type]
GEMMA3_SPEC = ModelSpec(name="gemma3", qk_norm=True, **_GEMMA2_KW)  # type: ignore[arg-type]


def _moe_rules(rules: tuple[WeightRule, ...], block: str, parts: tuple[str, str, str], shared: bool = False
               ) -> tuple[WeightRule, ...]:
    """``rules`` plus an MoE block's router (``{block}.gate``) and experts (``{block}.experts.{e}``,
    their gate / up / down matrices named ``parts``); ``shared``: Qwen2-MoE's shared expert and
    its gate. Dense layers of the same model keep the ``mlp.*`` names of ``rules``."""
    L = "layers.{i}"
    r = list(rules) + [WeightRule(f"{L}.moe.router.weight", f"{L}.{block}.gate.weight")]
    r += [WeightRule(f"{L}.moe.experts.{{e}}.{c}.weight", f"{L}.{block}.experts.{{e}}.{h}.weight")
          for c, h in zip(("gate", "up", "down"), parts)]
    if shared:
        r += [WeightRule(f"{L}.moe.shared.{c}.weight", f"{L}.{block}.shared_expert.{c}_proj.weight")
              for c in ("gate", "up", "down")]
        r.append(WeightRule(f"{L}.moe.shared_gate.weight", f"{L}.{block}.shared_expert_gate.weight"))
    return tuple(r)


_QWEN_EXPERT = ("gate_proj", "up_proj", "down_proj")
# Mixtral: Mistral with a top-k MoE block in every layer; Qwen2-MoE: Qwen2 (q/k/v biases) with a
# shared expert; Qwen3-MoE: Qwen3 (q/k norms); the routing details are config values (io/moe.py)
MIXTRAL_SPEC = ModelSpec(name="mixtral", qkv_bias=False, qk_norm=False, **{**_LLAMA_KW, "rules": _moe_rules(  # type: ignore[arg-type]
    _llama_rules(), "block_sparse_moe", ("w1", "w3", "w2"))})
QWEN2_MOE_SPEC = ModelSpec(name="qwen2_moe", qkv_bias=True, qk_norm=False, **{**_LLAMA_KW, "rules": _moe_rules(  # type: ignore[arg-type]
    _llama_rules(), "mlp", _QWEN_EXPERT, shared=True)})
QWEN3_MOE_SPEC = ModelSpec(name="qwen3_moe", qkv_bias=False, qk_norm=True, **{**_LLAMA_KW, "rules": _moe_rules(  # type: ignore[arg-type]
    _llama_rules(), "mlp", _QWEN_EXPERT)})

MODEL_SPECS: dict[str, ModelSpec] = {
    "gpt2": GPT2_SPEC,
    "llama": LLAMA_SPEC,
    "mistral": MISTRAL_SPEC,
    "qwen2": QWEN2_SPEC,
    "qwen3": QWEN3_SPEC,
    "gemma": GEMMA_SPEC,
    "granite": GRANITE_SPEC,
    "olmo2": OLMO2_SPEC,
    "stablelm": STABLELM_SPEC,
    "phi3": PHI3_SPEC,
    "phi": PHI_SPEC,
    "gpt_neox": GPT_NEOX_SPEC,
    "gemma2": GEMMA2_SPEC,
    "gemma3": GEMMA3_SPEC,
    "mixtral": MIXTRAL_SPEC,
    "qwen2_moe": QWEN2_MOE_SPEC,
    "qwen3_moe": QWEN3_MOE_SPEC,
}

# config.json model_type values that are architecturally one of the above.
_TYPE_ALIASES = {"gemma3_text": "gemma3", "smollm": "llama", "smollm2": "llama", "tinyllama": "llama", "llama2": "llama", "llama3": "llama"}


def strip_prefix(name: str) -> str:
    """Drop a leading ``model.`` / ``transformer.`` from an HF tensor name."""
    for p in HF_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def spec_for_model_type(model_type: str) -> ModelSpec:
    """ModelSpec for a config.json ``model_type`` (smollm/tinyllama are llama)."""
    key = str(model_type).lower()
    key = _TYPE_ALIASES.get(key, key)
    if key not in MODEL_SPECS:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(MODEL_SPECS)})"
        )
    return MODEL_SPECS[key]


def detect_model_spec(tensor_names: Iterable[str]) -> ModelSpec:
    """Guess the architecture from HF tensor names.

    GPT-2 by ``h.0.attn.c_attn.weight`` / ``wte.weight``; Qwen3 by ``q_norm``;
    Qwen2 by ``q_proj.bias``; otherwise LLaMA when the LLaMA layout is present.
    """
    names = {strip_prefix(n) for n in tensor_names}
    if "h.0.attn.c_attn.weight" in names or "wte.weight" in names:
        return GPT2_SPEC
    if any(n.endswith("self_attn.q_norm.weight") for n in names):
        return QWEN3_SPEC
    if any(n.endswith("self_attn.q_proj.bias") for n in names):
        return QWEN2_SPEC
    if "embed_tokens.weight" in names or "layers.0.self_attn.q_proj.weight" in names:
        return LLAMA_SPEC
    sample = sorted(names)[:5]
    raise UnsupportedModelError(f"cannot recognise the architecture from tensor names (first few: {sample})")


# --------------------------------------------------------------------------- name matching
def _template_regex(template: str) -> re.Pattern[str]:
    """``{i}`` (layer) and ``{e}`` (expert) match integers, as named groups."""
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
                      + "$")


@dataclass(frozen=True)
class Source:
    """Where a canonical tensor comes from in the HF checkpoint (``hf_name`` is the full stored name)."""

    hf_name: str
    transpose: bool = False
    split: tuple[int, int] | None = None
    add: float = 0.0
    layout: str = "blocks"


def map_hf_names(spec: ModelSpec, hf_names: Iterable[str]) -> tuple[dict[str, Source], list[str]]:
    """Map stored HF tensor names to canonical names.

    Returns ``(plan, unused)``: ``plan[canonical] = Source`` for every canonical
    tensor that can be produced, and the stored names no rule (nor ignore
    template) matched.
    """
    rules = [(_template_regex(r.hf), r) for r in spec.rules]
    ignores = [_template_regex(t) for t in spec.ignore]
    plan: dict[str, Source] = {}
    unused: list[str] = []
    for full in hf_names:
        short = strip_prefix(full)
        hit = False
        for rx, rule in rules:
            m = rx.match(short)
            if m:
                canon = rule.canonical
                for key, val in m.groupdict().items():
                    canon = canon.replace("{" + key + "}", val)
                plan[canon] = Source(full, rule.transpose, rule.split, rule.add, rule.layout)
                hit = True
        if not hit and not any(rx.match(short) for rx in ignores):
            unused.append(full)
    return plan, unused


def upgrade_spec(spec: ModelSpec, canonical: set[str]) -> ModelSpec:
    """``spec`` with the bias / q-k-norm flags turned on where the file has those tensors (Phi-2's
    and GPT-NeoX's biases, a LLaMA with attention biases): tensors the family normally lacks must
    not be silently dropped. Both loaders (safetensors and GGUF) pass their canonical names."""
    flags = {
        "qkv_bias": any(n.endswith(".attn.q.bias") for n in canonical),
        "o_bias": any(n.endswith(".attn.o.bias") for n in canonical),
        "mlp_bias": any(n.endswith((".mlp.up.bias", ".mlp.down.bias")) for n in canonical),
        "qk_norm": any(n.endswith(".attn.q_norm.weight") for n in canonical),
        "lm_head_bias": "lm_head.bias" in canonical,
    }
    upgrade = {k: True for k, v in flags.items() if v and not getattr(spec, k)}
    return replace(spec, **upgrade) if upgrade else spec


def required_names(spec: ModelSpec, cfg: TransformerConfig) -> list[str]:
    """Canonical names the builder needs for ``spec``/``cfg``, in model order."""
    nb = ("weight", "bias") if spec.norm_bias else ("weight",)
    names = ["tok_emb.weight"]
    if spec.position == "learned":
        names.append("pos_emb.weight")
    pre = nb if spec.pre_norms else ()
    for i in range(cfg.num_layers):
        L = f"layers.{i}."
        names += [L + "attn_norm." + k for k in pre]
        for p in "qkv":
            names.append(f"{L}attn.{p}.weight")
            if spec.qkv_bias:
                names.append(f"{L}attn.{p}.bias")
        names.append(L + "attn.o.weight")
        if spec.o_bias:
            names.append(L + "attn.o.bias")
        if spec.qk_norm:
            names += [L + "attn.q_norm.weight", L + "attn.k_norm.weight"]
        if spec.post_norms:
            names.append(L + "attn_post_norm.weight")
        names += [L + "mlp_norm." + k for k in (() if cfg.parallel_residual and not spec.parallel_mlp_norm else pre)]
        moe = cfg.moe is not None and cfg.moe.sparse[i]
        names += moe_names(i, cfg) if moe else []
        for p in () if moe else (("gate", "up", "down") if spec.gated_mlp else ("up", "down")):
            names.append(f"{L}mlp.{p}.weight")
            if spec.mlp_bias:
                names.append(f"{L}mlp.{p}.bias")
        if spec.post_norms:
            names.append(L + "mlp_post_norm.weight")
    names += ["final_norm." + k for k in nb]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    if spec.lm_head_bias:
        names.append("lm_head.bias")
    return names


def expected_shape(name: str, cfg: TransformerConfig, spec: ModelSpec | None = None) -> tuple[int, ...] | None:
    """Shape the canonical tensor ``name`` must have under ``cfg`` (and ``spec``: q/k norms over
    the whole projection are [heads*head_dim]; None if unknown name)."""
    assert cfg.head_dim is not None and cfg.num_kv_heads is not None and cfg.intermediate_size is not None
    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * hd, cfg.num_kv_heads * hd
    base = re.sub(r"^layers\.\d+\.", "", name)
    if base.startswith("moe."):
        return moe_shape(base, cfg)
    table: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (cfg.vocab_size, h),
        "pos_emb.weight": (cfg.max_position_embeddings, h),
        "lm_head.weight": (cfg.vocab_size, h), "lm_head.bias": (cfg.vocab_size,),
        "final_norm.weight": (h,), "final_norm.bias": (h,),
        "attn_norm.weight": (h,), "attn_norm.bias": (h,),
        "mlp_norm.weight": (h,), "mlp_norm.bias": (h,),
        "attn.q.weight": (q_out, h), "attn.q.bias": (q_out,),
        "attn.k.weight": (kv_out, h), "attn.k.bias": (kv_out,),
        "attn.v.weight": (kv_out, h), "attn.v.bias": (kv_out,),
        "attn.o.weight": (h, q_out), "attn.o.bias": (h,),
        "attn.q_norm.weight": (hd,), "attn.k_norm.weight": (hd,),
        "attn_post_norm.weight": (h,), "mlp_post_norm.weight": (h,),
        "mlp.gate.weight": (inter, h), "mlp.gate.bias": (inter,),
        "mlp.up.weight": (inter, h), "mlp.up.bias": (inter,),
        "mlp.down.weight": (h, inter), "mlp.down.bias": (h,),
    }
    if spec is not None and spec.qk_norm_over == "all":
        table.update({"attn.q_norm.weight": (q_out,), "attn.k_norm.weight": (kv_out,)})
    return table.get(base)


def source_shape(src: Source, stored: tuple[int, ...], cfg: TransformerConfig | None = None) -> tuple[int, ...]:
    """Canonical shape produced by ``src`` from a stored tensor of shape ``stored`` (``cfg`` for
    the "qkv" / "heads" layouts)."""
    shape = tuple(reversed(stored)) if src.transpose and len(stored) == 2 else tuple(stored)
    if src.split is not None and shape:
        if src.layout == "blocks" or cfg is None:
            return (shape[0] // src.split[1],) + shape[1:]
        rows = split_rows(src.split, src.layout, shape[0], cfg)
        n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        shape = (n,) + shape[1:]
    return shape


def split_rows(split: tuple[int, int], layout: str, rows: int, cfg: TransformerConfig) -> "slice | np.ndarray":
    """The rows of part ``split[0]`` of a fused ``[rows, ...]`` tensor (see WeightRule.layout):
    a slice, or an index array for the interleaved "heads" layout. LoadError when ``rows`` does
    not fit the layout."""
    part, parts = split
    hd = cfg.head_dim
    assert hd is not None and cfg.num_kv_heads is not None
    if layout == "qkv":  # [q (heads*hd) | k (kv*hd) | v (kv*hd)]
        q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
        if rows != q + 2 * kv:
            raise LoadError(f"a fused q/k/v tensor of {rows} rows, the config needs {q} + 2 x {kv}")
        starts = (0, q, q + kv, q + 2 * kv)
        return slice(starts[part], starts[part + 1])
    if layout == "heads":  # [heads, parts, hd]: head h's part p is rows (h*parts + p)*hd ...
        if rows % (parts * hd):
            raise LoadError(f"a fused per-head q/k/v tensor of {rows} rows is not heads x {parts} x {hd}")
        heads = rows // (parts * hd)
        return (np.arange(heads)[:, None] * parts * hd + part * hd + np.arange(hd)[None, :]).reshape(-1)
    n = rows // parts
    return slice(part * n, (part + 1) * n)


__all__ = [
    "ModelSpec",
    "WeightRule",
    "Source",
    "GPT2_SPEC",
    "LLAMA_SPEC",
    "MISTRAL_SPEC",
    "QWEN2_SPEC",
    "QWEN3_SPEC",
    "GEMMA_SPEC",
    "GRANITE_SPEC",
    "OLMO2_SPEC",
    "STABLELM_SPEC",
    "PHI3_SPEC",
    "PHI_SPEC",
    "GPT_NEOX_SPEC",
    "GEMMA2_SPEC",
    "GEMMA3_SPEC",
    "MIXTRAL_SPEC",
    "QWEN2_MOE_SPEC",
    "QWEN3_MOE_SPEC",
    "MODEL_SPECS",
    "HF_PREFIXES",
    "detect_model_spec",
    "spec_for_model_type",
    "strip_prefix",
    "map_hf_names",
    "upgrade_spec",
    "required_names",
    "expected_shape",
    "source_shape",
    "split_rows",
]
