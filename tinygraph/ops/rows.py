"""Row-wise ops over the last axis: ``softmax`` (with the causal / sliding-window mask),
``attention``, ``layer_norm``, ``rms_norm``, ``rope``."""
from __future__ import annotations

import numpy as np

from ..dtypes import float32, int32
from ..errors import GraphError, ShapeError
from ..tensor import Tensor
from .arith import cap_value
from .registry import Array, _f32, _need_float, _node, _reference, _row_param


def _past_arg(op: str, past: "int | Tensor", rows: int | None = None) -> tuple[tuple[Tensor, ...], dict]:
    """``past`` as node params (+ a source when it is a tensor whose first element is read at run
    time, e.g. the positions input of a decode step). ``rows`` (per-row mode, ``past_rows=True``):
    ``past`` is an int32 tensor [rows], one value per index of the first axis; stored as
    ``past = -1`` (the kernels read ``past_dev[i0]`` then)."""
    if rows is not None:
        if not isinstance(past, Tensor) or past.dtype != int32 or past.shape != (rows,):
            what = past.describe() if isinstance(past, Tensor) else repr(past)
            raise ShapeError(f"{op}: past_rows needs past as an int32 tensor of shape ({rows},), got {what}")
        return (past,), {"past": -1, "past_src": True}
    if isinstance(past, Tensor):
        if past.dtype != int32 or past.ndim != 1 or past.shape[0] < 1:
            raise ShapeError(f"{op}: past {past.describe()} must be a non-empty 1-D int32 tensor")
        return (past,), {"past": 0, "past_src": True}
    if past < 0:
        raise GraphError(f"{op}: past must be >= 0, got {past}")
    return (), {"past": int(past), "past_src": False}


def _past_value(p: dict, srcs: tuple) -> int:
    return int(srcs[0].reshape(-1)[0]) if p["past_src"] else p["past"]


def _per_row(p: dict, srcs: tuple, f, *xs: Array) -> Array | None:
    """Per-row ``past`` (``p["past"] == -1``): ``f(past, *slices)`` for each index of the first
    axis of ``xs`` (size-1 first axes broadcast), stacked; None in the ordinary mode."""
    if p["past"] != -1:
        return None
    pasts = srcs[0].reshape(-1)
    return np.stack([f(int(pasts[i]), *(x[i if x.shape[0] > 1 else 0] for x in xs)) for i in range(pasts.size)])


def _window_arg(op: str, window: "int | None", causal: bool) -> int | None:
    """A sliding window: None (off) or an int >= 1, only with ``causal``."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise GraphError(f"{op}: window must be None or an int >= 1, got {window!r}")
    if not causal:
        raise GraphError(f"{op}: a sliding window needs causal=True (window={window})")
    return int(window)


def softmax(x: Tensor, scale: float = 1.0, causal: bool = False, past: "int | Tensor" = 0,
            window: int | None = None, name: str | None = None, past_rows: bool = False) -> Tensor:
    """Softmax over the last axis of ``x * scale``. With ``causal``, query row ``i`` (the
    second-to-last axis) is at position ``p = i + past`` and sees keys ``j <= p``: the
    prefill/decode attention mask. ``past`` may be an int32 tensor (its first element is used),
    so the mask can move without rebuilding the graph.

    ``window`` (causal only; None = off): a sliding window of that many keys, query ``p`` sees
    ``p - window < j <= p`` (HF transformers' ``sliding_window_causal_mask_function``:
    ``kv_idx > q_idx - sliding_window``; Mistral's / Qwen2's ``sliding_window``). Masked
    entries are 0; a row that sees no key at all comes out all 0.

    ``past_rows``: ``x`` is [N, H, queries, keys] and ``past`` an int32 tensor [N], one position
    per index of the first axis (a decode step over N sequences, each at its own position)."""
    _need_float("softmax", x)
    if causal and x.ndim < 2:
        raise ShapeError(f"softmax(causal=True) needs [..., queries, keys]: {x.describe()}")
    if past_rows and (not causal or x.ndim != 4):
        raise ShapeError(f"softmax: past_rows needs causal=True and a 4-D [N, H, queries, keys] input: {x.describe()}")
    extra, pp = _past_arg("softmax", past, x.shape[0] if past_rows else None)
    return _node("softmax", (x,) + extra, x.shape, x.dtype,
                 {"scale": float(scale), "causal": bool(causal), **pp,
                  "window": _window_arg("softmax", window, causal)}, name)


def _causal_mask(q: int, k: int, past: int, window: int | None = None, k0: int = 0) -> Array:
    """[q, k] visibility of keys ``k0..k0+k-1`` to query rows at positions ``past..past+q-1``."""
    j = np.arange(k0, k0 + k)[None, :]
    p = np.arange(q)[:, None] + past
    return (j <= p) & (j > p - window) if window else j <= p


@_reference("softmax", "softmax")
def _softmax_ref(p, x, *past):
    rows = _per_row(p, past, lambda pa, xi: _softmax_ref({**p, "past": pa, "past_src": False}, xi), x)
    if rows is not None:
        return rows
    x = _f32(x) * np.float32(p["scale"])
    if p["causal"]:
        x = np.where(_causal_mask(x.shape[-2], x.shape[-1], _past_value(p, past), p.get("window")), x, -np.inf)
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isneginf(m), np.float32(0), m))  # a row with nothing visible: all 0
    d = e.sum(axis=-1, keepdims=True)
    return e / np.where(d > 0, d, np.float32(1))


def attention(q: Tensor, kt: Tensor, v: Tensor, scale: float = 1.0, causal: bool = False,
              past: "int | Tensor" = 0, window: int | None = None, name: str | None = None,
              past_rows: bool = False, softcap: float | None = None) -> Tensor:
    """``softmax(q @ kt * scale, causal, past, window) @ v`` as one op: ``q`` [..., T, D], ``kt``
    (keys, transposed) [..., D, S], ``v`` [..., S, Dv] -> [..., T, Dv]; leading axes broadcast as
    in ``matmul`` (grouped-query attention: a size-1 KV axis). With ``causal`` only keys
    ``j <= i + past`` exist for query ``i``; keys beyond ``T + past`` are never read, so ``kt``/``v``
    may span a whole KV cache. ``window`` (see :func:`softmax`): query ``p = i + past`` sees only
    ``p - window < j <= p``, and keys before the window are never read either. A row that sees
    no key gives zeros. Made by the fusion pass from matmul -> softmax -> matmul.
    ``past_rows`` (4-D only): ``past`` is an int32 tensor [N] for an output [N, H, T, Dv], each
    index of the first axis at its own position (see :func:`softmax`). ``softcap`` (Gemma 2;
    None: off): the scores become ``softcap * tanh(scores * scale / softcap)`` before the mask
    and the softmax (the fusion pass folds a ``scale`` -> ``softcap`` chain in here)."""
    _need_float("attention", q, kt, v)
    if q.ndim < 2 or kt.ndim < 2 or v.ndim < 2 or q.shape[-1] != kt.shape[-2] or kt.shape[-1] != v.shape[-2]:
        raise ShapeError(f"attention: shapes do not chain: q {q.describe()}, kt {kt.describe()}, v {v.describe()}")
    try:
        lead = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ShapeError(f"attention: leading axes do not broadcast: {q.describe()}, {kt.describe()}, "
                         f"{v.describe()}") from None
    if past_rows and (not causal or len(lead) != 2):
        raise ShapeError(f"attention: past_rows needs causal=True and 4-D operands: {q.describe()}")
    extra, pp = _past_arg("attention", past, int(lead[0]) if past_rows else None)
    return _node("attention", (q, kt, v) + extra, tuple(lead) + (q.shape[-2], v.shape[-1]), q.dtype,
                 {"scale": float(scale), "causal": bool(causal), **pp,
                  "window": _window_arg("attention", window, causal), **softcap_param("attention", softcap)}, name)


def softcap_param(op: str, cap: float | None) -> dict:
    """``{"softcap": cap}`` for a finite cap > 0, ``{}`` for None (the key only when set, so
    graphs without a cap keep their params)."""
    return {} if cap is None else {"softcap": cap_value(op, cap)}


@_reference("attention", "attention")
def _attention_ref(p, q, kt, v, *past):
    # in blocks of queries and keys (online softmax): memory grows with T, not T^2
    from ..attention_ref import blocked_attention, rowwise_attention
    if p["past"] == -1:  # one position per index of the first axis
        return rowwise_attention(q, kt, v, p["scale"], past[0].reshape(-1), p.get("window"), p.get("softcap"))
    return blocked_attention(q, kt, v, p["scale"], p["causal"], _past_value(p, past), p.get("window"),
                             softcap=p.get("softcap"))


def layer_norm(x: Tensor, w: Tensor | None = None, b: Tensor | None = None, eps: float = 1e-5,
               name: str | None = None) -> Tensor:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * w + b`` (``w``/``b`` [D] optional)."""
    _need_float("layer_norm", x)
    _row_param("layer_norm", x, w, "weight")
    _row_param("layer_norm", x, b, "bias")
    srcs = (x,) + tuple(t for t in (w, b) if t is not None)
    return _node("layer_norm", srcs, x.shape, x.dtype,
                 {"eps": float(eps), "has_w": w is not None, "has_b": b is not None}, name)


@_reference("layer_norm", "norm", required=1, optional=(("w", "has_w"), ("b", "has_b")))
def _layer_norm_ref(p, x, *wb):
    x = _f32(x)
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    y = xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + np.float32(p["eps"]))
    wb = list(wb)
    if p["has_w"]:
        y = y * _f32(wb.pop(0))
    if p["has_b"]:
        y = y + _f32(wb.pop(0))
    return y


def rms_norm(x: Tensor, w: Tensor | None = None, eps: float = 1e-6, name: str | None = None) -> Tensor:
    """RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * w``."""
    _need_float("rms_norm", x)
    _row_param("rms_norm", x, w, "weight")
    srcs = (x,) if w is None else (x, w)
    return _node("rms_norm", srcs, x.shape, x.dtype, {"eps": float(eps), "has_w": w is not None}, name)


@_reference("rms_norm", "norm", required=1, optional=(("w", "has_w"),))
def _rms_norm_ref(p, x, *w):
    x = _f32(x)
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(p["eps"]))
    return y * _f32(w[0]) if p["has_w"] else y


def rope(x: Tensor, positions: Tensor, theta: float = 10000.0, mode: str = "neox",
         freq_factors: Tensor | None = None, name: str | None = None) -> Tensor:
    """Rotary position embedding over the last axis of ``x`` [..., T, heads, head_dim] with int32
    ``positions`` [T]. ``mode="neox"`` rotates halves (pairs d, d + head_dim/2: HF LLaMA/Qwen);
    ``"normal"`` rotates interleaved pairs (2d, 2d+1). Pair d turns by ``pos * theta^(-2d/head_dim)
    / freq_factors[d]`` radians (``freq_factors`` float32 [head_dim/2], for Llama-3 scaling)."""
    extra, params = _rope_args("rope", x, positions, theta, mode, freq_factors)
    return _node("rope", (x, positions) + extra, x.shape, x.dtype, params, name)


def _rope_args(op: str, x: Tensor, positions: Tensor, theta: float, mode: str,
               freq_factors: Tensor | None) -> tuple[tuple[Tensor, ...], dict]:
    """Checks shared by ``rope`` and ``rope_store``: (optional freq_factors source, params)."""
    _need_float(op, x)
    if mode not in ("neox", "normal"):
        raise GraphError(f"{op}: mode must be 'neox' or 'normal', got {mode!r}")
    if x.ndim < 3 or x.shape[-1] % 2:
        raise ShapeError(f"{op}: x must be [..., T, heads, head_dim] with even head_dim: {x.describe()}")
    if positions.dtype != int32 or positions.shape != (x.shape[-3],):
        raise ShapeError(f"{op}: positions {positions.describe()} must be int32 of shape ({x.shape[-3]},) "
                         f"for x {x.describe()}")
    extra: tuple[Tensor, ...] = ()
    if freq_factors is not None:
        if freq_factors.dtype != float32 or freq_factors.shape != (x.shape[-1] // 2,):
            raise ShapeError(f"{op}: freq_factors {freq_factors.describe()} must be float32 ({x.shape[-1] // 2},)")
        extra = (freq_factors,)
    return extra, {"theta": float(theta), "mode": mode, "has_ff": freq_factors is not None}


def rope_angles(positions: Array, head_dim: int, theta: float, freq_factors: Array | None = None):
    """cos, sin of the rotation angles, float32 [T, head_dim/2], computed in float32 as HF does."""
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32)
                                                        / np.float32(head_dim)))).astype(np.float32)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.astype(np.float32)
    ang = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    return np.cos(ang), np.sin(ang)


@_reference("rope", "rope", required=2, optional=(("freq_factors", "has_ff"),))
def _rope_ref(p, x, positions, *ff):
    x = _f32(x)
    hd = x.shape[-1]
    cos, sin = rope_angles(positions, hd, p["theta"], ff[0] if p["has_ff"] else None)
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1 (heads), hd/2]
    if p["mode"] == "neox":
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out
