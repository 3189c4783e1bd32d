"""Mixture-of-experts GGUF files: Mixtral (``llama`` with experts), ``qwen2moe``, ``qwen3moe``.

What llama.cpp's converter writes (``conversion/``: the HF per-expert matrices stacked per layer)
and how llama.cpp reads it (``src/models/{llama,qwen2moe,qwen3moe}.cpp``):

* ``blk.N.ffn_gate_inp.weight`` [E, hidden]: the router. A layer has an MoE block when it has MoE
  tensors (llama.cpp's ``llama`` builds a dense MLP where the router is absent), so per-layer
  sparsity is read from the tensors; one without its router is reported missing.
* ``blk.N.ffn_{gate,up,down}_exps.weight``: 3-D, NumPy ``[E, I, hidden]`` (gate, up) and
  ``[E, hidden, I]`` (down), i.e. expert ``e``'s HF matrix is ``[e]``. The converter's
  ``--fuse-gate-up-exps`` writes ``ffn_gate_up_exps`` ``[E, 2 I, hidden]``: gate rows, then up.
  Each expert maps to the canonical ``layers.N.moe.experts.{e}.*`` (:mod:`.moe`) as a slice of the
  3-D tensor; a block-quantized tensor's rows are whole blocks, so an expert's slice is its raw
  blocks (kept quantized, never re-quantized).
* Qwen2-MoE's shared expert: ``ffn_{gate,up,down}_shexp`` (2-D) and its gate ``ffn_gate_inp_shexp``
  ``[1, hidden]`` (``sigmoid`` of it scales the shared expert).
* Metadata: ``{arch}.expert_count``, ``expert_used_count`` (top-k), ``expert_feed_forward_length``
  (Qwen; Mixtral's experts are ``feed_forward_length`` wide; absent: the tensors' shape),
  ``expert_shared_feed_forward_length``.
* Routing: llama.cpp runs these three architectures with a softmax router, renormalising the
  top-k weights for ``llama`` and ``qwen3moe`` and not for ``qwen2moe``, whatever HF's
  ``norm_topk_prob`` was (the converter does not write it). ``{arch}.expert_weights_norm`` is taken
  when a file has it. A non-softmax ``expert_gating_func``, an ``expert_weights_scale`` other than
  1, grouped routing, or expert tensors of another kind (biases, per-expert scales, an ungated
  shared expert) are refused, naming them.
"""
from __future__ import annotations

import re
from typing import Any

from .errors import LoadError, UnsupportedModelError
from .moe import MoEConfig

#: llama.cpp's MoE architectures among ours -> whether it renormalises the top-k routing weights
NORM_TOPK = {"llama": True, "qwen3moe": True, "qwen2moe": False}
_SOFTMAX_GATING = 1  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX
_EXPS = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down|gate_up)_exps\.weight$")
_SHARED = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_shexp\.weight$")
_ROUTER = re.compile(r"^blk\.(\d+)\.ffn_gate_inp(_shexp)?\.weight$")
# any tensor of an MoE block (router, experts, shared expert, their biases / scales, selection bias)
_ANY_MOE = re.compile(r"^blk\.(\d+)\.(ffn_\w*(exps?|shexp|gate_inp)\w*|exp_probs_b)\.")

#: (canonical name, expert index or None, row range or None) of one stored MoE tensor
Part = tuple[str, int | None, tuple[int, int] | None]


def has_experts(g: Any) -> bool:
    """Whether the file declares experts (``expert_count`` > 0) or holds MoE tensors."""
    n = g.meta(f"{g.arch}.expert_count")
    return (isinstance(n, int) and not isinstance(n, bool) and n > 0) or any(
        _ANY_MOE.match(t) for t in g.tensor_names)


def check_moe_supported(g: Any) -> None:
    """Refuse MoE files tinygraph would run as another model than llama.cpp does, naming the part."""
    a = g.arch
    if a not in NORM_TOPK:
        raise UnsupportedModelError(
            f"GGUF architecture {a!r} with mixture-of-experts layers is not supported (MoE GGUF files: "
            f"{', '.join(sorted(NORM_TOPK))})")
    gating = g.meta(f"{a}.expert_gating_func")
    if gating is not None and gating != _SOFTMAX_GATING:
        raise UnsupportedModelError(f"GGUF architecture {a!r}: expert_gating_func {gating!r} (only softmax "
                                    f"routing, {_SOFTMAX_GATING}, is supported)")
    scale = g.meta(f"{a}.expert_weights_scale")
    if scale not in (None, 0, 0.0, 1, 1.0):  # llama.cpp: 0 (unset) and 1 leave the weights as they are
        raise UnsupportedModelError(f"GGUF architecture {a!r}: expert_weights_scale {scale!r} is not supported")
    groups = g.meta(f"{a}.expert_group_count")
    if groups not in (None, 0, 1):
        raise UnsupportedModelError(f"GGUF architecture {a!r}: grouped expert routing (expert_group_count "
                                    f"{groups!r}) is not supported")
    for t in g.tensor_names:
        if _ANY_MOE.match(t) and not (_EXPS.match(t) or _SHARED.match(t) or _ROUTER.match(t)):
            raise UnsupportedModelError(f"GGUF architecture {a!r}: mixture-of-experts tensor {t!r} "
                                        f"({g.tensor_type(t)}) is not supported")
    shared = [t for t in g.tensor_names if _SHARED.match(t)]
    if shared and not any(t.endswith("ffn_gate_inp_shexp.weight") for t in g.tensor_names):
        raise UnsupportedModelError(f"GGUF architecture {a!r}: a shared expert without a gate "
                                    f"('ffn_gate_inp_shexp', e.g. {shared[0]!r}) is not supported")


def _first(g: Any, rx: re.Pattern[str], kinds: tuple[str, ...]) -> str | None:
    return next((t for t in sorted(g.tensor_names) if (m := rx.match(t)) and m.group(2) in kinds), None)


def moe_config(g: Any, num_layers: int, intermediate: int) -> MoEConfig | None:
    """The :class:`MoEConfig` of an MoE file (None for a dense one); LoadError naming bad keys."""
    if not has_experts(g):
        return None
    a = g.arch
    E = g._int(f"{a}.expert_count")
    k = g._int(f"{a}.expert_used_count")
    exps = _first(g, _EXPS, ("gate", "up", "down", "gate_up"))
    if not E and exps is not None:
        E = g.stored_shape(exps)[0]
    if not E or E < 1:
        raise LoadError(f"GGUF metadata '{a}.expert_count' must be >= 1 for a mixture-of-experts file, got {E!r}")
    if k is None or not 1 <= k <= E:
        raise LoadError(f"GGUF metadata '{a}.expert_used_count' must be 1..{E} (the experts), got {k!r}")
    size = g._int(f"{a}.expert_feed_forward_length")
    if size is None:  # Mixtral: experts are feed_forward_length wide; else the tensors say
        fused = _first(g, _EXPS, ("gate_up",))
        gate = _first(g, _EXPS, ("gate", "up"))
        size = (g.stored_shape(gate)[1] if gate else g.stored_shape(fused)[1] // 2 if fused
                else intermediate)
    shared = None
    shexp = _first(g, _SHARED, ("gate", "up"))
    if shexp is not None:
        shared = g._int(f"{a}.expert_shared_feed_forward_length") or g.stored_shape(shexp)[0]
    norm = g.meta(f"{a}.expert_weights_norm", NORM_TOPK[a])
    if not isinstance(norm, (bool, int)):
        raise LoadError(f"GGUF metadata '{a}.expert_weights_norm' must be a bool, got {norm!r}")
    moe_layers = {int(m.group(1)) for t in g.tensor_names if (m := _ANY_MOE.match(t))}
    return MoEConfig(E, k, size, bool(norm), shared, tuple(i in moe_layers for i in range(num_layers)))


def moe_parts(g: Any, name: str, moe: MoEConfig | None) -> list[Part] | None:
    """The canonical tensors stored tensor ``name`` holds (None: not an MoE tensor): one per
    expert of a 3-D expert tensor (two per expert for a fused gate/up), or the router / shared
    expert's tensor as it is."""
    m = _EXPS.match(name) or _SHARED.match(name) or _ROUTER.match(name)
    if m is None or moe is None:
        return None
    P = f"layers.{m.group(1)}.moe."
    if m.re is _ROUTER:
        return [(P + ("shared_gate.weight" if m.group(2) else "router.weight"), None, None)]
    if m.re is _SHARED:
        return [(f"{P}shared.{m.group(2)}.weight", None, None)]
    shape = g.stored_shape(name)
    if len(shape) != 3 or shape[0] != moe.num_experts:
        raise LoadError(f"tensor {name!r} has shape {shape}: expected [{moe.num_experts} experts, rows, columns]")
    kind, E = m.group(2), moe.num_experts
    if kind != "gate_up":
        return [(f"{P}experts.{e}.{kind}.weight", e, None) for e in range(E)]
    half = shape[1] // 2  # gate rows, then up rows
    return [(f"{P}experts.{e}.{p}.weight", e, rows) for e in range(E)
            for p, rows in (("gate", (0, half)), ("up", (half, 2 * half)))]


__all__ = ["NORM_TOPK", "check_moe_supported", "has_experts", "moe_config", "moe_parts"]
