"""Fused ops, made by ``tinygraph.passes`` (usable directly): ``linear`` (norm, matmul, bias,
activation, residual), ``rope_store`` (RoPE + KV-cache write) and ``attention_store`` (a decode
token's q/k norm, RoPE, cache write and attention). Their references compose the plain ops'."""
from __future__ import annotations

import numpy as np

from ..dtypes import int32
from ..errors import GraphError, ShapeError
from ..tensor import Tensor
from .arith import _gelu_ref, _silu_ref
from .registry import OPS, _f32, _need_float, _need_weight, _node, _reference, _row_param
from .rows import _attention_ref, _layer_norm_ref, _rms_norm_ref, _rope_args, _rope_ref, _window_arg, softcap_param


_NORMS = (None, "rms", "layer")
#: the linear op's optional sources, in order, with the flags that say they are there
LINEAR_OPTIONAL = (("bias", "has_bias"), ("residual", "has_residual"), ("norm_w", "has_norm_w"), ("norm_b", "has_norm_b"))
_ACTS = (None, "gelu", "silu", "swiglu")


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None, residual: Tensor | None = None,
           norm: str | None = None, norm_w: Tensor | None = None, norm_b: Tensor | None = None,
           eps: float = 1e-5, act: str | None = None, name: str | None = None) -> Tensor:
    """A whole linear layer as one op (made by the ``fuse_linear`` pass; usable directly):
    ``act(norm(x) @ w.T + bias) + residual``.

    ``x`` [..., K]; ``w`` [N, K] (HF ``[out, in]``, rows contiguous); ``bias`` [N]; ``norm``:
    None, "rms" (``rms_norm(x, norm_w, eps)``) or "layer" (``layer_norm(x, norm_w, norm_b, eps)``);
    ``act``: None, "gelu" (tanh form), "silu", or "swiglu" (``silu(z[..., :N/2]) * z[..., N/2:]``,
    output width N/2); ``residual`` has the output's shape [..., Nout]. ``w`` may be
    block-quantized (``tg.q8_0``, ``tg.q4_k``, ...): its dequantized values, float32 math."""
    _need_float("linear", x)
    _need_weight("linear", w)
    if norm not in _NORMS or act not in _ACTS:
        raise GraphError(f"linear: norm must be one of {_NORMS} and act one of {_ACTS}, got {norm!r}, {act!r}")
    if w.ndim != 2 or w.shape[1] != x.shape[-1] or w.strides != (w.shape[1], 1):
        raise ShapeError(f"linear: weight {w.describe()} must be a row-contiguous [N, {x.shape[-1]}] matrix "
                         f"for x {x.describe()}")
    N = w.shape[0]
    if act == "swiglu" and N % 2:
        raise ShapeError(f"linear(act='swiglu'): weight {w.describe()} needs an even number of rows")
    out_shape = x.shape[:-1] + ((N // 2,) if act == "swiglu" else (N,))
    if bias is not None and bias.shape != (N,):
        raise ShapeError(f"linear: bias {bias.describe()} must have shape ({N},)")
    if residual is not None and residual.shape != out_shape:
        raise ShapeError(f"linear: residual {residual.describe()} must have the output shape {out_shape}")
    if norm is None and (norm_w is not None or norm_b is not None):
        raise GraphError("linear: norm weights given without a norm")
    _row_param("linear", x, norm_w, "norm weight")
    _row_param("linear", x, norm_b, "norm bias")
    parts = {"bias": bias, "residual": residual, "norm_w": norm_w, "norm_b": norm_b}
    srcs = (x, w) + tuple(t for t in parts.values() if t is not None)
    params = {"norm": norm, "eps": float(eps), "act": act, **{f"has_{k}": v is not None for k, v in parts.items()}}
    return _node("linear", srcs, out_shape, x.dtype, params, name)


@_reference("linear", "matmul", required=2, optional=LINEAR_OPTIONAL)
def _linear_ref(p, x, w, *rest):
    o = OPS["linear"].named(p, (x, w) + rest)
    bias, res, nw, nb = o["bias"], o["residual"], o["norm_w"], o["norm_b"]
    if p["norm"] == "rms":
        x = _rms_norm_ref({"eps": p["eps"], "has_w": nw is not None}, x, *([nw] if nw is not None else []))
    elif p["norm"] == "layer":
        x = _layer_norm_ref({"eps": p["eps"], "has_w": nw is not None, "has_b": nb is not None}, x,
                            *[t for t in (nw, nb) if t is not None])
    z = np.matmul(_f32(x), _f32(w).T)
    if bias is not None:
        z = z + _f32(bias)
    if p["act"] == "gelu":
        z = _gelu_ref(p, z)
    elif p["act"] == "silu":
        z = _silu_ref(p, z)
    elif p["act"] == "swiglu":
        half = z.shape[-1] // 2
        z = _silu_ref(p, z[..., :half]) * z[..., half:]
    return z + _f32(res) if res is not None else z


def rope_store(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
               theta: float = 10000.0, mode: str = "neox", freq_factors: Tensor | None = None,
               name: str | None = None) -> Tensor:
    """RoPE on queries and keys plus the KV-cache write, as one op (made by the
    ``fuse_rope_store`` pass): returns ``rope(q)`` and, as side effects,
    ``k_cache[:, positions[i], :] = rope(k)[i]`` and ``v_cache[:, positions[i], :] = v[i]``.
    ``q`` [T, heads, hd], ``k``/``v`` [T, kv_heads, hd], caches [kv_heads, ctx, hd]."""
    for t in (k, v):
        if t.ndim != 3 or t.shape[0] != q.shape[0] or t.shape[2] != q.shape[2]:
            raise ShapeError(f"rope_store: {t.describe()} does not match q {q.describe()}")
    for c, t in ((k_cache, k), (v_cache, v)):
        if c.ndim != 3 or c.shape[0] != t.shape[1] or c.shape[2] != t.shape[2] or c.dtype != t.dtype:
            raise ShapeError(f"rope_store: cache {c.describe()} does not fit {t.describe()}")
    extra, params = _rope_args("rope_store", q, positions, theta, mode, freq_factors)
    t = _node("rope_store", (q, k, v, positions, k_cache, v_cache) + extra, q.shape, q.dtype, params, name)
    t.graph._side_effect(t)
    return t


@_reference("rope_store", "rope", side_dsts=(4, 5), required=6, optional=(("freq_factors", "has_ff"),))
def _rope_store_ref(p, q, k, v, positions, k_cache, v_cache, *ff):
    if positions.size and (positions.min() < 0 or positions.max() >= k_cache.shape[-2]):
        raise IndexError(f"rope_store: position out of range [0, {k_cache.shape[-2]})")
    k_cache[:, positions, :] = _rope_ref(p, k, positions, *ff).transpose(1, 0, 2)
    v_cache[:, positions, :] = v.transpose(1, 0, 2)
    return _rope_ref(p, q, positions, *ff)


def attention_store(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                    scale: float, theta: float | None = None, mode: str = "neox",
                    freq_factors: Tensor | None = None, q_norm_w: Tensor | None = None,
                    k_norm_w: Tensor | None = None, q_norm: bool = False, k_norm: bool = False,
                    eps: float = 1e-6, window: int | None = None, name: str | None = None,
                    rows: Tensor | None = None, softcap: float | None = None) -> Tensor:
    """One decode step's attention with its cache write, as one op (made by the
    ``fuse_attention_store`` pass, or by ``models.paged`` for many sequences; on CUDA one kernel
    per layer). For each of the N sequences n, at position pos = positions[n]:

        q' = rope(rms_norm(q) * q_norm_w)  k' = rope(rms_norm(k) * k_norm_w)   (each part optional)
        k_cache[:, row(pos), :] = k'[n];  v_cache[:, row(pos), :] = v[n]         (side effects)
        out[n] = attention(q'[n] grouped [KV, G, 1, hd], the cache rows row(0..S-1), scale,
                           causal, past=pos, window)

    ``q`` [N, H, hd], ``k``/``v`` [N, KV, hd] (one token per sequence; any strides),
    ``positions`` int32 [N], caches [KV, ctx, hd] of q's dtype, H a multiple of KV (G = H / KV).
    ``rows`` None: one sequence (N = 1) whose position p is cache row p (S = ctx). ``rows``
    int32 [N, S] (a paged cache): sequence n's position p is cache row ``rows[n, p]``; every
    write happens before any read, and sequences may share rows only where neither writes.
    ``theta`` None: no RoPE; else as :func:`rope` (``mode``, ``freq_factors``). ``q_norm`` /
    ``k_norm``: RMS norm over hd (weights [hd] optional). Returns [N * KV, G, 1, hd] (N = 1: the
    layout of the grouped :func:`attention` it replaces). The normalised, rotated q stays in
    float32 (the unfused graph rounds it to the storage dtype). ``window`` (None = off): only
    positions ``pos - window < j <= pos`` are attended to (see :func:`softmax`). ``softcap``
    (None = off): the scores soft-capped as in :func:`attention`."""
    _need_float("attention_store", q, k, v)
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape or k.shape[0] != q.shape[0] \
            or k.shape[2] != q.shape[2] or q.shape[1] % k.shape[1]:
        raise ShapeError(f"attention_store: q [N, H, hd], k/v [N, KV, hd] with KV dividing H: "
                         f"{q.describe()}, {k.describe()}, {v.describe()}")
    N, (KV, hd) = q.shape[0], k.shape[1:]
    for c in (k_cache, v_cache):
        if c.ndim != 3 or c.shape[0] != KV or c.shape[2] != hd or c.dtype != q.dtype or c.shape != k_cache.shape:
            raise ShapeError(f"attention_store: cache {c.describe()} must be [{KV}, ctx, {hd}] of {q.dtype.name}")
    if positions.dtype != int32 or positions.shape != (N,):
        raise ShapeError(f"attention_store: positions {positions.describe()} must be int32 ({N},)")
    if rows is None and N != 1:
        raise ShapeError(f"attention_store: {N} sequences need a rows table [N, S]")
    if rows is not None and (rows.dtype != int32 or rows.ndim != 2 or rows.shape[0] != N or not rows.is_contiguous):
        raise ShapeError(f"attention_store: rows {rows.describe()} must be a contiguous int32 [{N}, S]")
    extra: tuple[Tensor, ...] = ()
    params = {"scale": float(scale), "rope": theta is not None, "theta": float(theta or 0.0), "mode": mode,
              "has_ff": False, "q_norm": bool(q_norm), "k_norm": bool(k_norm), "eps": float(eps),
              "has_qn": q_norm_w is not None, "has_kn": k_norm_w is not None,
              "window": _window_arg("attention_store", window, True),
              **softcap_param("attention_store", softcap)}
    if theta is not None:
        extra, rp = _rope_args("attention_store", q, positions, theta, mode, freq_factors)
        params["has_ff"] = rp["has_ff"]
    for w, flag in ((q_norm_w, q_norm), (k_norm_w, k_norm)):
        if w is not None:
            if not flag:
                raise GraphError("attention_store: a norm weight needs q_norm / k_norm=True")
            _row_param("attention_store", q, w, "norm weight")
            extra += (w,)
    if rows is not None:  # the flag only when set: one-sequence graphs keep their params
        params["has_rows"] = True
        extra += (rows,)
    t = _node("attention_store", (q, k, v, positions, k_cache, v_cache) + extra,
              (N * KV, q.shape[1] // KV, 1, hd), q.dtype, params, name)
    t.graph._side_effect(t)
    return t


@_reference("attention_store", "attention", side_dsts=(4, 5), required=6,
            optional=(("freq_factors", "has_ff"), ("q_norm_w", "has_qn"), ("k_norm_w", "has_kn"),
                      ("rows", "has_rows")))
def _attention_store_ref(p, q, k, v, positions, k_cache, v_cache, *extra):
    o = OPS["attention_store"].named(p, (q, k, v, positions, k_cache, v_cache) + extra)
    ff = [o["freq_factors"]] if o["freq_factors"] is not None else []
    qn, kn = o["q_norm_w"], o["k_norm_w"]
    N, table = q.shape[0], o["rows"]
    S = table.shape[1] if table is not None else k_cache.shape[-2]
    for pos in positions:
        if not 0 <= pos < S:
            raise IndexError(f"attention_store: position {pos} out of range [0, {S})")
    if table is not None and table.size and (table.min() < 0 or table.max() >= k_cache.shape[-2]):
        raise IndexError(f"attention_store: a cache row out of range [0, {k_cache.shape[-2]})")
    norm = {"eps": p["eps"], "has_w": False}
    qf = _rms_norm_ref(norm, q) * (_f32(qn) if qn is not None else 1) if p["q_norm"] else _f32(q)
    kf = _rms_norm_ref(norm, k) * (_f32(kn) if kn is not None else 1) if p["k_norm"] else _f32(k)
    if p["rope"]:  # rope_ref rotates row t of x at positions[t]: one token per sequence
        qf, kf = (_rope_ref(p, x, positions, *ff) for x in (qf, kf))
    for n in range(N):  # every write before any read
        r = table[n, positions[n]] if table is not None else positions[n]
        k_cache[:, r, :] = kf[n]
        v_cache[:, r, :] = v[n]
    KV, hd = k_cache.shape[0], k_cache.shape[2]
    outs = []
    for n in range(N):  # the sequence's rows [KV, S, hd] (one sequence: the caches themselves)
        kc, vc = (k_cache[:, table[n]], v_cache[:, table[n]]) if table is not None else (k_cache, v_cache)
        qg = qf[n:n + 1].reshape(1, KV, -1, hd).transpose(1, 2, 0, 3)         # [KV, G, 1, hd]
        outs.append(_attention_ref({"scale": p["scale"], "causal": True, "past": int(positions[n]),
                                    "past_src": False, "window": p.get("window"),
                                    **({"softcap": p["softcap"]} if "softcap" in p else {})},
                                   qg, kc[:, None].transpose(0, 1, 3, 2), vc[:, None]))
    return np.concatenate(outs, axis=0)
