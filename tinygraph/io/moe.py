"""Mixture-of-experts hyper-parameters and canonical weight names (Mixtral, Qwen2-MoE, Qwen3-MoE).

:class:`MoEConfig` is ``TransformerConfig.moe`` (None for dense families); :func:`moe_config`
reads it from an HF ``config.json`` dict with the defaults of transformers' config classes.
Which layers hold an MoE block follows transformers: Mixtral every layer; Qwen2-MoE / Qwen3-MoE
layer ``i`` when ``i not in mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0`` (and
``num_experts > 0``), the others a dense MLP of ``intermediate_size``.

Canonical names of an MoE layer ``i`` (HF ``[out, in]`` orientation; ``{e}`` = expert)::

    layers.{i}.moe.router.weight             [experts, hidden]   Mixtral block_sparse_moe.gate,
                                                                 Qwen mlp.gate
    layers.{i}.moe.experts.{e}.gate.weight   [expert_size, hidden]   w1 / gate_proj
    layers.{i}.moe.experts.{e}.up.weight     [expert_size, hidden]   w3 / up_proj
    layers.{i}.moe.experts.{e}.down.weight   [hidden, expert_size]   w2 / down_proj
    layers.{i}.moe.shared.{gate,up,down}.weight                      Qwen2-MoE shared_expert
    layers.{i}.moe.shared_gate.weight        [1, hidden]             Qwen2-MoE shared_expert_gate

GGUF files of these models (3-D ``ffn_*_exps`` expert tensors) map onto the same names: see ``gguf_moe``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import LoadError, UnsupportedModelError

if TYPE_CHECKING:
    from .config import TransformerConfig

#: model types with an MoE block, and transformers' config-class defaults for absent keys
MOE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mixtral": dict(num_experts=8, top_k=2),
    "qwen2_moe": dict(num_experts=60, top_k=4, moe_intermediate_size=1408, shared=5632),
    "qwen3_moe": dict(num_experts=128, top_k=8, moe_intermediate_size=768),
}


@dataclass(frozen=True)
class MoEConfig:
    """The MoE block of a model.

    Attributes:
        num_experts: experts per MoE layer (E).
        top_k: experts each token is routed to (k <= E).
        expert_size: intermediate size of each expert's gated MLP (Mixtral: ``intermediate_size``;
            Qwen: ``moe_intermediate_size``).
        norm_topk: routing weights renormalised over the k chosen experts, i.e. a softmax over
            the chosen router logits (Mixtral always; Qwen ``norm_topk_prob``); otherwise the
            softmax over all E logits, kept at the chosen experts.
        shared_size: intermediate size of Qwen2-MoE's shared expert (its output scaled by
            ``sigmoid(shared_expert_gate(x))``), None without one.
        sparse: per layer, True where the layer's MLP is the MoE block.
    """

    num_experts: int
    top_k: int
    expert_size: int
    norm_topk: bool
    shared_size: int | None
    sparse: tuple[bool, ...]


def moe_config(d: dict[str, Any], where: str, mt: str, num_layers: int, intermediate: int) -> MoEConfig | None:
    """The MoE block of model type ``mt`` from config dict ``d`` (None for dense families, and for
    Qwen MoE configs with ``num_experts`` 0, which transformers builds as dense). LoadError for
    bad values, naming the key."""
    if mt not in MOE_DEFAULTS:
        return None
    from .config import _as_bool, _as_int  # config imports this module

    dflt = MOE_DEFAULTS[mt]
    # transformers' Qwen3MoeConfig writes num_local_experts (an alias of num_experts); hub configs
    # write num_experts; Mixtral's own key is num_local_experts
    given = {k: d[k] for k in ("num_experts", "num_local_experts") if d.get(k) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise LoadError(f"{where}: bad value: num_experts {given['num_experts']!r} and num_local_experts "
                        f"{given['num_local_experts']!r} differ")
    key, E = next(iter(given.items()), ("num_experts", dflt["num_experts"]))
    E = _as_int(E, key, where, minimum=1 if mt == "mixtral" else 0)
    if E == 0:
        return None
    k = _as_int(d.get("num_experts_per_tok", dflt["top_k"]), "num_experts_per_tok", where)
    if k > E:
        raise LoadError(f"{where}: bad value: num_experts_per_tok {k} exceeds the {E} experts")
    if mt == "mixtral":
        return MoEConfig(E, k, intermediate, True, None, (True,) * num_layers)
    size = _as_int(d.get("moe_intermediate_size", dflt["moe_intermediate_size"]), "moe_intermediate_size", where)
    norm = d.get("norm_topk_prob")
    norm = False if norm is None else _as_bool(norm, "norm_topk_prob", where)
    step = _as_int(d.get("decoder_sparse_step", 1) if d.get("decoder_sparse_step") is not None else 1,
                   "decoder_sparse_step", where)
    only = d.get("mlp_only_layers") or []
    if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise LoadError(f"{where}: bad value: mlp_only_layers must be a list of layer indices, got {only!r}")
    sparse = tuple(i not in only and (i + 1) % step == 0 for i in range(num_layers))
    shared = None
    if mt == "qwen2_moe":
        sv = d.get("shared_expert_intermediate_size", dflt["shared"])
        shared = _as_int(sv, "shared_expert_intermediate_size", where)
    return MoEConfig(E, k, size, norm, shared, sparse)


def moe_names(i: int, cfg: TransformerConfig) -> list[str]:
    """Canonical names of MoE layer ``i``'s tensors (see the module docstring)."""
    m = cfg.moe
    assert m is not None
    L = f"layers.{i}.moe."
    names = [L + "router.weight"]
    for e in range(m.num_experts):
        names += [f"{L}experts.{e}.{p}.weight" for p in ("gate", "up", "down")]
    if m.shared_size is not None:
        names += [f"{L}shared.{p}.weight" for p in ("gate", "up", "down")] + [L + "shared_gate.weight"]
    return names


_EXPERT_RE = re.compile(r"moe\.(?:experts\.(\d+)|(shared))\.(gate|up|down)\.weight")


def moe_shape(base: str, cfg: TransformerConfig) -> tuple[int, ...] | None:
    """Shape of MoE tensor ``base`` (a canonical name without ``layers.{i}.``), None if unknown."""
    m, h = cfg.moe, cfg.hidden_size
    if m is None:
        return None
    if base == "moe.router.weight":
        return (m.num_experts, h)
    if base == "moe.shared_gate.weight":
        return (1, h)
    hit = _EXPERT_RE.fullmatch(base)
    if hit is None:
        return None
    size = m.shared_size if hit.group(2) else m.expert_size
    if size is None or (hit.group(1) is not None and int(hit.group(1)) >= m.num_experts):
        return None
    return (h, size) if hit.group(3) == "down" else (size, h)


def check_expert_names(where: object, cfg: TransformerConfig, unused: list[str], canonical: list[str]) -> None:
    """Refuse checkpoints whose experts are stored fused as 3-D tensors (transformers' in-memory
    ``experts.gate_up_proj`` [E, 2I, hidden] / ``experts.down_proj``; its ``save_pretrained``
    writes one tensor per expert and matrix, which is what tinygraph reads), and MoE tensors
    the config has no place for (an expert index >= num_experts, a layer the config makes dense):
    dropping them silently would run another model than the file's."""
    fused = [n for n in unused if re.search(r"experts\.(gate_up_proj|down_proj|gate_proj|up_proj)$", n)]
    if fused:
        raise UnsupportedModelError(
            f"{where}: {cfg.model_type}: experts stored fused as 3-D tensors ({fused[0]!r}) are not supported; "
            "save the model with transformers' save_pretrained (one tensor per expert and matrix)")
    for n in canonical:
        hit = re.match(r"layers\.(\d+)\.moe\.(?:experts\.(\d+)\.)?", n)
        if hit is None or int(hit.group(1)) >= cfg.num_layers:
            continue  # (extra layers are reported by the loader)
        m = cfg.moe
        if m is None or not m.sparse[int(hit.group(1))]:
            raise LoadError(f"{where}: {cfg.model_type}: the weights hold MoE tensor {n!r} but the config makes "
                            f"layer {hit.group(1)} a dense MLP (num_experts, mlp_only_layers, decoder_sparse_step)")
        if hit.group(2) is not None and int(hit.group(2)) >= m.num_experts:
            raise LoadError(f"{where}: {cfg.model_type}: the weights hold expert {hit.group(2)} ({n!r}) but the "
                            f"config says {m.num_experts} experts")


__all__ = ["MoEConfig", "MOE_DEFAULTS", "moe_config", "moe_names", "moe_shape", "check_expert_names"]
