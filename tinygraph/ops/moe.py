"""Mixture-of-experts ops: ``moe_route`` (router softmax + top-k), and ``moe_gate_up`` /
``moe_down``, the experts' matrix products over only the experts each token was routed to.

A token's experts are the non-zero entries of its row of routing weights (``moe_route``'s
output): slot ``j`` holds the ``j``-th non-zero expert in index order, at most ``top_k`` slots.
An expert whose weight is exactly 0 would add ``0 * its output``, so skipping it changes no
finite result. Weights are float (16/32-bit); the block-quantized experts of GGUF files run the
dense form in ``models/moe.py``."""
from __future__ import annotations

import numpy as np

from ..errors import GraphError, ShapeError
from ..tensor import Tensor
from .arith import _gelu_ref, _silu_ref
from .registry import Array, _f32, _need_float, _node, _reference

#: the activations moe_gate_up applies to the gate rows (codes as the fused linear's)
MOE_ACTS = ("gelu", "silu")
#: most experts per token (the CUDA kernels keep a token's experts in 32 shared slots)
MOE_MAX_TOP_K = 32
#: most experts (the CUDA router keeps a row of logits in registers: 8 per lane)
MOE_MAX_EXPERTS = 256


def moe_route(logits: Tensor, top_k: int, norm_topk: bool, name: str | None = None) -> Tensor:
    """Routing weights [T, E] from router logits [T, E]: ``p = softmax(logits)`` in float32, the
    ``top_k`` largest ``p`` of each row kept (ties: the lowest index), divided by their sum when
    ``norm_topk`` (Mixtral; Qwen's ``norm_topk_prob``), every other entry 0; in the logits' dtype
    (HF transformers' ``routing_weights.to(hidden_states.dtype)``)."""
    _need_float("moe_route", logits)
    if logits.ndim != 2:
        raise ShapeError(f"moe_route: logits must be [tokens, experts], got {logits.describe()}")
    E = logits.shape[1]
    if not 1 <= int(top_k) <= min(E, MOE_MAX_TOP_K) or E > MOE_MAX_EXPERTS:
        raise GraphError(f"moe_route: top_k {top_k} must be in 1..min(experts, {MOE_MAX_TOP_K}) and experts "
                         f"<= {MOE_MAX_EXPERTS}: {logits.describe()}")
    return _node("moe_route", (logits,), logits.shape, logits.dtype,
                 {"top_k": int(top_k), "norm_topk": bool(norm_topk)}, name)


@_reference("moe_route", "reduce")
def _moe_route_ref(p, logits):
    x = _f32(logits)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    # stable sort of -p: the largest first, the lowest index first among equals
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :p["top_k"]]
    picked = np.take_along_axis(probs, top, axis=-1)
    if p["norm_topk"]:
        picked = picked / picked.sum(axis=-1, keepdims=True)
    out = np.zeros_like(probs)
    np.put_along_axis(out, top, picked, axis=-1)
    return out


def moe_slots(route_row: Array, top_k: int) -> list[int]:
    """The experts of one row of routing weights, slot by slot (the non-zero entries in index
    order, at most ``top_k``)."""
    return [int(e) for e in np.flatnonzero(route_row)[:top_k]]


def _check_route(op: str, route: Tensor, T: int) -> None:
    _need_float(op, route)
    if route.ndim != 2 or route.shape[0] != T:
        raise ShapeError(f"{op}: routing weights {route.describe()} must be [{T}, experts]")


def moe_gate_up(x: Tensor, w: Tensor, route: Tensor, top_k: int, act: str = "silu",
                name: str | None = None) -> Tensor:
    """The chosen experts' gated activations: ``[T, top_k, I]``, slot ``j`` of token ``t`` =
    ``act(gate_e @ x[t]) * (up_e @ x[t])`` for the slot's expert ``e`` (zeros for an empty slot).

    ``x`` [T, K]; ``w`` [2 E I, K]: every expert's gate rows (expert-major, ``I`` each), then
    every expert's up rows; ``route`` [T, E] routing weights (``moe_route``); ``act`` "silu" or
    "gelu" (tanh form)."""
    _need_float("moe_gate_up", x, w)
    if act not in MOE_ACTS:
        raise GraphError(f"moe_gate_up: act must be one of {MOE_ACTS}, got {act!r}")
    if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1] or w.strides != (w.shape[1], 1):
        raise ShapeError(f"moe_gate_up: x {x.describe()} must be [T, K] and w {w.describe()} a row-contiguous "
                         f"[2 E I, K] matrix")
    _check_route("moe_gate_up", route, x.shape[0])
    E = route.shape[1]
    if w.shape[0] % (2 * E) or not 1 <= top_k <= min(E, MOE_MAX_TOP_K):
        raise ShapeError(f"moe_gate_up: w {w.describe()} must have 2 * {E} * I rows, top_k {top_k} in "
                         f"1..min({E}, {MOE_MAX_TOP_K})")
    I = w.shape[0] // (2 * E)
    return _node("moe_gate_up", (x, w, route), (x.shape[0], int(top_k), I), x.dtype,
                 {"top_k": int(top_k), "act": act}, name)


@_reference("moe_gate_up", "matmul")
def _moe_gate_up_ref(p, x, w, route):
    T, k = x.shape[0], p["top_k"]
    E = route.shape[1]
    I = w.shape[0] // (2 * E)
    x, w = _f32(x), _f32(w)
    act = _silu_ref if p["act"] == "silu" else _gelu_ref
    out = np.zeros((T, k, I), np.float32)
    for t in range(T):
        for j, e in enumerate(moe_slots(route[t], k)):
            gate = w[e * I:(e + 1) * I] @ x[t]
            up = w[(E + e) * I:(E + e + 1) * I] @ x[t]
            out[t, j] = act(None, gate) * up
    return out


def moe_down(h: Tensor, w: Tensor, route: Tensor, name: str | None = None) -> Tensor:
    """The chosen experts' down projections, weighted and summed: ``[T, H]``, row ``t`` =
    ``sum_j route[t, e_j] * (down_{e_j} @ h[t, j])`` over the filled slots of ``moe_gate_up``.

    ``h`` [T, top_k, I]; ``w`` [H, E I]: expert ``e``'s down matrix in columns ``e I .. e I + I``;
    ``route`` [T, E]."""
    _need_float("moe_down", h, w)
    if h.ndim != 3 or w.ndim != 2 or w.strides != (w.shape[1], 1):
        raise ShapeError(f"moe_down: h {h.describe()} must be [T, top_k, I] and w {w.describe()} a "
                         f"row-contiguous [H, E I] matrix")
    T, k, I = h.shape
    _check_route("moe_down", route, T)
    E = route.shape[1]
    if w.shape[1] != E * I or k > min(E, MOE_MAX_TOP_K):
        raise ShapeError(f"moe_down: w {w.describe()} must have {E} * {I} columns for h {h.describe()} and "
                         f"routing weights {route.describe()}")
    return _node("moe_down", (h, w, route), (T, w.shape[0]), h.dtype, {}, name)


@_reference("moe_down", "matmul")
def _moe_down_ref(p, h, w, route):
    T, k, I = h.shape
    h, w = _f32(h), _f32(w)
    out = np.zeros((T, w.shape[0]), np.float32)
    for t in range(T):
        for j, e in enumerate(moe_slots(route[t], k)):
            out[t] += np.float32(route[t, e]) * (w[:, e * I:(e + 1) * I] @ h[t, j])
    return out
