"""Every op of tinygraph, each defined once: argument checks, shape/dtype rule, reference semantics.

The public functions (``matmul``, ``softmax``, ...) check their arguments and add a node to the graph;
nothing runs until ``Session.compute``. The reference functions registered in :data:`OPS` give each
op's exact meaning on NumPy arrays (float32 math, results cast to the node's dtype by the backend);
the NumPy backend runs them and every other backend is tested against them.

Conventions: shapes are NumPy order; strides and offsets are in elements of the tensor's dtype;
``matmul(a, b)`` is ``a @ b`` over the last two axes with NumPy broadcasting of the leading axes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .dtypes import FLOAT_DTYPES, DType, as_dtype, float32, int32
from .errors import BoundsError, DTypeError, GraphError, ShapeError
from .tensor import Tensor, contiguous_strides, extent

Array = np.ndarray


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpDef:
    """One op: its ``family`` (for display and kernel grouping), its NumPy reference
    ``reference(params, *srcs) -> array``, and whether its output may reuse the memory of its
    first source (element-wise ops with equal layout).

    Ops that write into memory they did not create (``cpy``, ``set_rows``) name the source that
    is the destination (``dst``, an index into ``srcs``): it is written, not read. Their
    reference is called as ``reference(params, out, *other_srcs)`` and writes ``out`` in place.
    Ops with a result of their own that also write other buffers (``rope_store``) list those
    sources in ``side_dsts``; their reference writes into the arrays it is given for them."""

    name: str
    family: str
    reference: Callable[..., Array]
    elementwise: bool = False
    dst: int | None = None
    side_dsts: tuple[int, ...] = ()

    def written_srcs(self) -> tuple[int, ...]:
        """Indices of sources this op writes rather than reads."""
        return self.side_dsts + ((self.dst,) if self.dst is not None else ())


OPS: dict[str, OpDef] = {}


def _reference(name: str, family: str, elementwise: bool = False, dst: int | None = None,
               side_dsts: tuple[int, ...] = ()):
    def deco(fn: Callable[..., Array]) -> Callable[..., Array]:
        OPS[name] = OpDef(name, family, fn, elementwise, dst, side_dsts)
        return fn
    return deco


def _f32(x: Array) -> Array:
    """Upcast half types for math; float32 and int arrays pass through without a copy."""
    return x if x.dtype == np.float32 or x.dtype.kind in "iu" else x.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# node construction helpers
# ----------------------------------------------------------------------------------------------
def _graph_for(op: str, srcs: Sequence[Tensor], floating: bool = False):
    """The graph a new node joins: its sources' graph. A view of persistent buffers alone joins
    no graph (``floating``): it is a layout that any later graph may use, e.g. ``transpose(W)``."""
    g = None
    for s in srcs:
        if s.graph is not None:
            if g is not None and s.graph is not g:
                names = ", ".join(x.describe() for x in srcs)
                raise GraphError(f"{op}: sources belong to different graphs: {names}")
            g = s.graph
    if g is not None or floating:
        return g
    session = srcs[0].session
    g = session.current_graph if session is not None else None
    if g is None:
        raise GraphError(f"{op}: no graph to add to: call sess.graph() before building on {srcs[0].describe()}")
    return g


def _node(op: str, srcs: tuple[Tensor, ...], shape: tuple[int, ...], dtype: DType, params: dict | None = None,
          name: str | None = None, **layout: Any) -> Tensor:
    for s in srcs:
        if not isinstance(s, Tensor):
            raise GraphError(f"{op}: expected tinygraph Tensors, got {type(s).__name__}")
    g = _graph_for(op, srcs, floating=op == "view")
    t = Tensor(op, srcs, shape, dtype, params=params, name=name, graph=g,
               session=srcs[0].session if g is None else g.session, **layout)
    if g is not None:
        g._add(t)
    return t


def _need_float(op: str, *ts: Tensor) -> None:
    for t in ts:
        if not t.dtype.is_float:
            raise DTypeError(f"{op}: {t.describe()} must be a float tensor (float32, float16, bfloat16)")


def _need_weight(op: str, w: Tensor) -> None:
    """A weight operand: float, or a ggml block type (a whole [N, K] persistent matrix or a view of one)."""
    if w.dtype.is_quant:
        if not w.is_persistent or w.storage.ndim != 2:
            raise DTypeError(f"{op}: {w.describe()}: {w.dtype.name} operands must be [N, K] persistent weights")
        return
    _need_float(op, w)


def _broadcast_shape(op: str, a: Tensor, b: Tensor) -> tuple[int, ...]:
    if a.shape == b.shape:
        return a.shape
    try:
        return tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ShapeError(f"{op}: shapes do not broadcast: {a.describe()} and {b.describe()}") from None


def _norm_axis(op: str, t: Tensor, axis: int) -> int:
    if not -t.ndim <= axis < t.ndim:
        raise ShapeError(f"{op}: axis {axis} out of range for {t.describe()}")
    return axis % t.ndim


# ----------------------------------------------------------------------------------------------
# views: no compute, a new layout over the same memory
# ----------------------------------------------------------------------------------------------
def view(t: Tensor, shape: Sequence[int], strides: Sequence[int] | None = None, offset: int = 0,
         name: str | None = None) -> Tensor:
    """A view of ``t``'s memory: ``shape``; ``strides`` in elements of the underlying buffer
    (default: contiguous); ``offset`` in elements, added to ``t``'s own offset. Checked against
    the extent of the buffer that owns the memory."""
    shape = tuple(int(n) for n in shape)
    strides = contiguous_strides(shape) if strides is None else tuple(int(s) for s in strides)
    if len(strides) != len(shape):
        raise ShapeError(f"view of {t.describe()}: shape {shape} and strides {strides} differ in rank")
    if any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise ShapeError(f"view of {t.describe()}: negative size or stride in shape {shape}, strides {strides}")
    start = t.offset + int(offset)
    limit = t.storage.size
    end = start + extent(shape, strides)
    if start < 0 or end > limit:
        raise BoundsError(
            f"view of {t.describe()}: shape {shape}, strides {strides}, offset {start} reaches elements "
            f"[{start}, {end}) but buffer {t.storage.describe()} has {limit} elements")
    return _node("view", (t,), shape, t.dtype, {"kind": "view"}, name,
                 strides=strides, offset=start, storage=t.storage)


def reshape(t: Tensor, shape: Sequence[int], name: str | None = None) -> Tensor:
    """Same elements, new shape (one axis may be -1). A non-contiguous ``t`` is copied first (``cont``)."""
    shape = list(int(n) for n in shape)
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape of {t.describe()}: at most one -1 in {tuple(shape)}")
    if -1 in shape:
        known = math.prod(n for n in shape if n != -1)
        if known == 0 or t.size % known:
            raise ShapeError(f"reshape of {t.describe()} to {tuple(shape)}: sizes do not divide")
        shape[shape.index(-1)] = t.size // known
    if math.prod(shape) != t.size:
        raise ShapeError(f"reshape of {t.describe()} to {tuple(shape)}: {t.size} elements vs {math.prod(shape)}")
    src = t if t.is_contiguous else cont(t)
    shape = tuple(shape)
    return _node("view", (src,), shape, t.dtype, {"kind": "reshape"}, name,
                 strides=contiguous_strides(shape), offset=src.offset, storage=src.storage)


def permute(t: Tensor, axes: Sequence[int], name: str | None = None) -> Tensor:
    """Reorder axes (a view): result axis i is ``t``'s axis ``axes[i]``."""
    axes = tuple(int(a) % t.ndim if t.ndim else int(a) for a in axes)
    if sorted(axes) != list(range(t.ndim)):
        raise ShapeError(f"permute of {t.describe()}: {axes} is not a permutation of {t.ndim} axes")
    return _node("view", (t,), tuple(t.shape[a] for a in axes), t.dtype, {"kind": "permute", "axes": axes}, name,
                 strides=tuple(t.strides[a] for a in axes), offset=t.offset, storage=t.storage)


def transpose(t: Tensor, name: str | None = None) -> Tensor:
    """Swap the last two axes (a view)."""
    if t.ndim < 2:
        raise ShapeError(f"transpose needs at least 2 axes: {t.describe()}")
    axes = list(range(t.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return permute(t, axes, name)


# ----------------------------------------------------------------------------------------------
# copies
# ----------------------------------------------------------------------------------------------
def cont(t: Tensor, name: str | None = None) -> Tensor:
    """A contiguous copy of ``t``."""
    return _node("cont", (t,), t.shape, t.dtype, None, name)


@_reference("cont", "copy")
def _cont_ref(p, x):
    return x


def cast(t: Tensor, dtype: DType | str, name: str | None = None) -> Tensor:
    """A contiguous copy of ``t`` converted to ``dtype``."""
    return _node("cast", (t,), t.shape, as_dtype(dtype), None, name)


@_reference("cast", "copy")
def _cast_ref(p, x):
    return x


def cpy(src: Tensor, dst: Tensor, name: str | None = None) -> Tensor:
    """Write ``src`` into the memory ``dst`` describes (converting dtype). A side effect: it runs
    without being an output, and accesses to overlapping memory keep build order. Returns a tensor
    with ``dst``'s layout whose reads see the written values."""
    if src.shape != dst.shape:
        raise ShapeError(f"cpy: source {src.describe()} and destination {dst.describe()} differ in shape")
    if dst.storage.op == "input":
        raise GraphError(f"cpy: destination {dst.describe()} is a graph input, which is read-only")
    # write-into-self with overlapping but different layouts would read half-written data
    if src.storage is dst.storage:
        (a0, a1), (b0, b1) = src.region(), dst.region()
        if a0 < b1 and b0 < a1 and (src.offset, src.strides) != (dst.offset, dst.strides):
            raise GraphError(f"cpy: source {src.describe()} overlaps destination {dst.describe()}")
    t = _node("cpy", (src, dst), dst.shape, dst.dtype, None, name,
              strides=dst.strides, offset=dst.offset, storage=dst.storage)
    t.graph._side_effect(t)
    return t


@_reference("cpy", "copy", dst=1)
def _cpy_ref(p, out, src):
    out[...] = src


def set_rows(dst: Tensor, src: Tensor, rows: Tensor, name: str | None = None) -> Tensor:
    """Write ``src`` [..., n, C] into rows ``rows`` (int32 [n]) of ``dst`` [..., R, C] along the
    second-to-last axis: ``dst[..., rows[i], :] = src[..., i, :]``. A side effect like ``cpy``, but
    the rows come from a tensor, so one graph serves every decode position (the KV-cache write of
    a replayed decode step). Rows must lie in ``[0, R)``; the whole of ``dst`` counts as written."""
    if dst.ndim < 2 or src.ndim != dst.ndim or src.shape[:-2] != dst.shape[:-2] or src.shape[-1] != dst.shape[-1]:
        raise ShapeError(f"set_rows: source {src.describe()} does not fit destination {dst.describe()} "
                         "(equal shapes except the row axis, -2)")
    if rows.dtype != int32 or rows.shape != (src.shape[-2],):
        raise ShapeError(f"set_rows: rows {rows.describe()} must be int32 of shape ({src.shape[-2]},)")
    if dst.storage.op == "input":
        raise GraphError(f"set_rows: destination {dst.describe()} is a graph input, which is read-only")
    t = _node("set_rows", (src, rows, dst), dst.shape, dst.dtype, None, name,
              strides=dst.strides, offset=dst.offset, storage=dst.storage)
    t.graph._side_effect(t)
    return t


@_reference("set_rows", "copy", dst=2)
def _set_rows_ref(p, out, src, rows):
    if rows.size and (rows.min() < 0 or rows.max() >= out.shape[-2]):
        raise IndexError(f"set_rows: row out of range [0, {out.shape[-2]}): {rows.min()}..{rows.max()}")
    out[..., rows, :] = src


def get_rows(table: Tensor, ids: Tensor, name: str | None = None, dtype: DType | str | None = None) -> Tensor:
    """Rows of ``table`` [V, D] picked by int32 ``ids`` (any shape) -> ``ids.shape + (D,)``, of
    ``dtype`` (default: the table's; float32 for a block-quantized table, whose rows are
    dequantized: ``tinygraph.quant.dequantize``)."""
    if table.ndim != 2:
        raise ShapeError(f"get_rows: table {table.describe()} must be 2-D [rows, width]")
    if ids.dtype != int32:
        raise DTypeError(f"get_rows: ids {ids.describe()} must be int32")
    if table.dtype.is_quant:
        _need_weight("get_rows", table)
    out = as_dtype(dtype) if dtype is not None else (float32 if table.dtype.is_quant else table.dtype)
    if out != table.dtype and not (out.is_float and (table.dtype.is_float or table.dtype.is_quant)):
        raise DTypeError(f"get_rows: cannot give {out.name} rows of {table.describe()}")
    return _node("get_rows", (table, ids), ids.shape + (table.shape[1],), out, None, name)


@_reference("get_rows", "copy")
def _get_rows_ref(p, table, ids):
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise IndexError(f"get_rows: id out of range [0, {table.shape[0]}): {ids.min()}..{ids.max()}")
    return table[ids]


def concat(a: Tensor, b: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    """``a`` and ``b`` joined along ``axis`` (other axes equal, same dtype)."""
    if a.ndim != b.ndim:
        raise ShapeError(f"concat: {a.describe()} and {b.describe()} differ in rank")
    ax = _norm_axis("concat", a, axis)
    if a.dtype != b.dtype:
        raise DTypeError(f"concat: {a.describe()} and {b.describe()} differ in dtype")
    if any(x != y for i, (x, y) in enumerate(zip(a.shape, b.shape)) if i != ax):
        raise ShapeError(f"concat on axis {ax}: {a.describe()} and {b.describe()} differ off that axis")
    shape = list(a.shape)
    shape[ax] += b.shape[ax]
    return _node("concat", (a, b), tuple(shape), a.dtype, {"axis": ax}, name)


@_reference("concat", "copy")
def _concat_ref(p, a, b):
    return np.concatenate([a, b], axis=p["axis"])


# ----------------------------------------------------------------------------------------------
# arithmetic
# ----------------------------------------------------------------------------------------------
def matmul(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    """``a @ b``: ``a`` [..., M, K], ``b`` [..., K, N] -> [..., M, N]; leading axes broadcast; either
    operand may be a strided view such as ``transpose(W)``; ``b`` may be block-quantized (a view
    of a persistent [N, K] weight: its dequantized values). Result dtype: ``a``'s."""
    _need_float("matmul", a)
    _need_weight("matmul", b)
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul needs operands with >= 2 axes: {a.describe()} @ {b.describe()}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: inner sizes differ: {a.describe()} @ {b.describe()}")
    try:
        lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ShapeError(f"matmul: leading axes do not broadcast: {a.describe()} @ {b.describe()}") from None
    return _node("matmul", (a, b), tuple(lead) + (a.shape[-2], b.shape[-1]), a.dtype, None, name)


@_reference("matmul", "matmul")
def _matmul_ref(p, a, b):
    return np.matmul(_f32(a), _f32(b))


def add(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    """``a + b`` with NumPy broadcasting; result dtype ``a``'s."""
    _need_float("add", a, b)
    return _node("add", (a, b), _broadcast_shape("add", a, b), a.dtype, None, name)


@_reference("add", "elementwise", elementwise=True)
def _add_ref(p, a, b):
    return _f32(a) + _f32(b)


def mul(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    """``a * b`` with NumPy broadcasting; result dtype ``a``'s."""
    _need_float("mul", a, b)
    return _node("mul", (a, b), _broadcast_shape("mul", a, b), a.dtype, None, name)


@_reference("mul", "elementwise", elementwise=True)
def _mul_ref(p, a, b):
    return _f32(a) * _f32(b)


def scale(x: Tensor, s: float, name: str | None = None) -> Tensor:
    """``x * s`` for a Python scalar ``s``."""
    _need_float("scale", x)
    return _node("scale", (x,), x.shape, x.dtype, {"scale": float(s)}, name)


@_reference("scale", "elementwise", elementwise=True)
def _scale_ref(p, x):
    return _f32(x) * np.float32(p["scale"])


def gelu(x: Tensor, name: str | None = None) -> Tensor:
    """GELU, tanh approximation (GPT-2's ``gelu_new``)."""
    _need_float("gelu", x)
    return _node("gelu", (x,), x.shape, x.dtype, None, name)


@_reference("gelu", "elementwise", elementwise=True)
def _gelu_ref(p, x):
    x = _f32(x)
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


def silu(x: Tensor, name: str | None = None) -> Tensor:
    """SiLU: ``x * sigmoid(x)``."""
    _need_float("silu", x)
    return _node("silu", (x,), x.shape, x.dtype, None, name)


@_reference("silu", "elementwise", elementwise=True)
def _silu_ref(p, x):
    x = _f32(x)
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


# ----------------------------------------------------------------------------------------------
# row-wise ops over the last axis
# ----------------------------------------------------------------------------------------------
def _past_arg(op: str, past: "int | Tensor") -> tuple[tuple[Tensor, ...], dict]:
    """``past`` as node params (+ a source when it is a tensor whose first element is read at run
    time, e.g. the positions input of a decode step)."""
    if isinstance(past, Tensor):
        if past.dtype != int32 or past.ndim != 1 or past.shape[0] < 1:
            raise ShapeError(f"{op}: past {past.describe()} must be a non-empty 1-D int32 tensor")
        return (past,), {"past": 0, "past_src": True}
    if past < 0:
        raise GraphError(f"{op}: past must be >= 0, got {past}")
    return (), {"past": int(past), "past_src": False}


def _past_value(p: dict, srcs: tuple) -> int:
    return int(srcs[0].reshape(-1)[0]) if p["past_src"] else p["past"]


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
            window: int | None = None, name: str | None = None) -> Tensor:
    """Softmax over the last axis of ``x * scale``. With ``causal``, query row ``i`` (the
    second-to-last axis) is at position ``p = i + past`` and sees keys ``j <= p``: the
    prefill/decode attention mask. ``past`` may be an int32 tensor (its first element is used),
    so the mask can move without rebuilding the graph.

    ``window`` (causal only; None = off): a sliding window of that many keys, query ``p`` sees
    ``p - window < j <= p`` (HF transformers' ``sliding_window_causal_mask_function``:
    ``kv_idx > q_idx - sliding_window``; Mistral's / Qwen2's ``sliding_window``). Masked
    entries are 0; a row that sees no key at all comes out all 0."""
    _need_float("softmax", x)
    if causal and x.ndim < 2:
        raise ShapeError(f"softmax(causal=True) needs [..., queries, keys]: {x.describe()}")
    extra, pp = _past_arg("softmax", past)
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
    x = _f32(x) * np.float32(p["scale"])
    if p["causal"]:
        x = np.where(_causal_mask(x.shape[-2], x.shape[-1], _past_value(p, past), p.get("window")), x, -np.inf)
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isneginf(m), np.float32(0), m))  # a row with nothing visible: all 0
    d = e.sum(axis=-1, keepdims=True)
    return e / np.where(d > 0, d, np.float32(1))


def attention(q: Tensor, kt: Tensor, v: Tensor, scale: float = 1.0, causal: bool = False,
              past: "int | Tensor" = 0, window: int | None = None, name: str | None = None) -> Tensor:
    """``softmax(q @ kt * scale, causal, past, window) @ v`` as one op: ``q`` [..., T, D], ``kt``
    (keys, transposed) [..., D, S], ``v`` [..., S, Dv] -> [..., T, Dv]; leading axes broadcast as
    in ``matmul`` (grouped-query attention: a size-1 KV axis). With ``causal`` only keys
    ``j <= i + past`` exist for query ``i``; keys beyond ``T + past`` are never read, so ``kt``/``v``
    may span a whole KV cache. ``window`` (see :func:`softmax`): query ``p = i + past`` sees only
    ``p - window < j <= p``, and keys before the window are never read either. A row that sees
    no key gives zeros. Made by the fusion pass from matmul -> softmax -> matmul."""
    _need_float("attention", q, kt, v)
    if q.ndim < 2 or kt.ndim < 2 or v.ndim < 2 or q.shape[-1] != kt.shape[-2] or kt.shape[-1] != v.shape[-2]:
        raise ShapeError(f"attention: shapes do not chain: q {q.describe()}, kt {kt.describe()}, v {v.describe()}")
    try:
        lead = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ShapeError(f"attention: leading axes do not broadcast: {q.describe()}, {kt.describe()}, "
                         f"{v.describe()}") from None
    extra, pp = _past_arg("attention", past)
    return _node("attention", (q, kt, v) + extra, tuple(lead) + (q.shape[-2], v.shape[-1]), q.dtype,
                 {"scale": float(scale), "causal": bool(causal), **pp,
                  "window": _window_arg("attention", window, causal)}, name)


@_reference("attention", "attention")
def _attention_ref(p, q, kt, v, *past):
    # in blocks of queries and keys (online softmax): memory grows with T, not T^2
    from .attention_ref import blocked_attention
    return blocked_attention(q, kt, v, p["scale"], p["causal"], _past_value(p, past), p.get("window"))


def _row_param(op: str, x: Tensor, w: Tensor | None, what: str) -> None:
    if w is not None and w.shape != (x.shape[-1],):
        raise ShapeError(f"{op}: {what} {w.describe()} must have shape ({x.shape[-1]},) to match {x.describe()}")


def layer_norm(x: Tensor, w: Tensor | None = None, b: Tensor | None = None, eps: float = 1e-5,
               name: str | None = None) -> Tensor:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * w + b`` (``w``/``b`` [D] optional)."""
    _need_float("layer_norm", x)
    _row_param("layer_norm", x, w, "weight")
    _row_param("layer_norm", x, b, "bias")
    srcs = (x,) + tuple(t for t in (w, b) if t is not None)
    return _node("layer_norm", srcs, x.shape, x.dtype,
                 {"eps": float(eps), "has_w": w is not None, "has_b": b is not None}, name)


@_reference("layer_norm", "norm")
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


@_reference("rms_norm", "norm")
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


@_reference("rope", "rope")
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


_NORMS = (None, "rms", "layer")
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


@_reference("linear", "matmul")
def _linear_ref(p, x, w, *rest):
    rest = list(rest)
    bias, res, nw, nb = (rest.pop(0) if p[f"has_{k}"] else None for k in ("bias", "residual", "norm_w", "norm_b"))
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


@_reference("rope_store", "rope", side_dsts=(4, 5))
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
                    eps: float = 1e-6, window: int | None = None, name: str | None = None) -> Tensor:
    """One decode step's attention with its cache write, as one op (made by the
    ``fuse_attention_store`` pass; on CUDA one kernel per layer):

        q' = rope(rms_norm(q) * q_norm_w)  k' = rope(rms_norm(k) * k_norm_w)   (each part optional)
        k_cache[:, pos, :] = k';  v_cache[:, pos, :] = v                         (side effects)
        out = attention(q' grouped [KV, G, 1, hd], k_cache^T, v_cache, scale, causal, past=pos,
                        window)

    ``q`` [1, H, hd], ``k``/``v`` [1, KV, hd] (one token; any strides), ``positions`` int32 [1]
    (pos), caches [KV, ctx, hd] of q's dtype, H a multiple of KV (G = H / KV). ``theta`` None:
    no RoPE; else as :func:`rope` (``mode``, ``freq_factors``). ``q_norm`` / ``k_norm``: RMS
    norm over hd (weights [hd] optional). Returns [KV, G, 1, hd], the layout of the grouped
    :func:`attention` it replaces. The normalised, rotated q stays in float32 (the unfused graph
    rounds it to the storage dtype). ``window`` (None = off): only the cache rows
    ``pos - window < j <= pos`` are attended to (see :func:`softmax`)."""
    _need_float("attention_store", q, k, v)
    if q.ndim != 3 or q.shape[0] != 1 or k.ndim != 3 or v.shape != k.shape or k.shape[0] != 1 \
            or k.shape[2] != q.shape[2] or q.shape[1] % k.shape[1]:
        raise ShapeError(f"attention_store: q [1, H, hd], k/v [1, KV, hd] with KV dividing H: "
                         f"{q.describe()}, {k.describe()}, {v.describe()}")
    KV, hd = k.shape[1], k.shape[2]
    for c in (k_cache, v_cache):
        if c.ndim != 3 or c.shape[0] != KV or c.shape[2] != hd or c.dtype != q.dtype or c.shape != k_cache.shape:
            raise ShapeError(f"attention_store: cache {c.describe()} must be [{KV}, ctx, {hd}] of {q.dtype.name}")
    if positions.dtype != int32 or positions.shape != (1,):
        raise ShapeError(f"attention_store: positions {positions.describe()} must be int32 (1,)")
    extra: tuple[Tensor, ...] = ()
    params = {"scale": float(scale), "rope": theta is not None, "theta": float(theta or 0.0), "mode": mode,
              "has_ff": False, "q_norm": bool(q_norm), "k_norm": bool(k_norm), "eps": float(eps),
              "has_qn": q_norm_w is not None, "has_kn": k_norm_w is not None,
              "window": _window_arg("attention_store", window, True)}
    if theta is not None:
        extra, rp = _rope_args("attention_store", q, positions, theta, mode, freq_factors)
        params["has_ff"] = rp["has_ff"]
    for w, flag in ((q_norm_w, q_norm), (k_norm_w, k_norm)):
        if w is not None:
            if not flag:
                raise GraphError("attention_store: a norm weight needs q_norm / k_norm=True")
            _row_param("attention_store", q, w, "norm weight")
            extra += (w,)
    t = _node("attention_store", (q, k, v, positions, k_cache, v_cache) + extra, (KV, q.shape[1] // KV, 1, hd),
              q.dtype, params, name)
    t.graph._side_effect(t)
    return t


@_reference("attention_store", "attention", side_dsts=(4, 5))
def _attention_store_ref(p, q, k, v, positions, k_cache, v_cache, *extra):
    rest = list(extra)
    ff = [rest.pop(0)] if p["has_ff"] else []
    qn = rest.pop(0) if p["has_qn"] else None
    kn = rest.pop(0) if p["has_kn"] else None
    pos = int(positions[0])
    if not 0 <= pos < k_cache.shape[-2]:
        raise IndexError(f"attention_store: position {pos} out of range [0, {k_cache.shape[-2]})")
    norm = {"eps": p["eps"], "has_w": False}
    qf = _rms_norm_ref(norm, q) * (_f32(qn) if qn is not None else 1) if p["q_norm"] else _f32(q)
    kf = _rms_norm_ref(norm, k) * (_f32(kn) if kn is not None else 1) if p["k_norm"] else _f32(k)
    if p["rope"]:
        qf, kf = (_rope_ref(p, x, positions, *ff) for x in (qf, kf))
    k_cache[:, pos, :] = kf[0]
    v_cache[:, pos, :] = v[0]
    KV, hd = k_cache.shape[0], k_cache.shape[2]
    qg = qf.reshape(1, KV, -1, hd).transpose(1, 2, 0, 3)                     # [KV, G, 1, hd]
    return _attention_ref({"scale": p["scale"], "causal": True, "past": pos, "past_src": False,
                           "window": p.get("window")}, qg, k_cache[:, None].transpose(0, 1, 3, 2), v_cache[:, None])


def argmax(x: Tensor, name: str | None = None) -> Tensor:
    """Index of the largest element over the last axis (first one on ties), int32 ``x.shape[:-1]``."""
    _need_float("argmax", x)
    return _node("argmax", (x,), x.shape[:-1], int32, None, name)


@_reference("argmax", "reduce")
def _argmax_ref(p, x):
    return np.argmax(x, axis=-1).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def sample_uniform(seed: int, counter: int) -> float:
    """The ``sample`` op's random number: the ``counter``-th output (0-based) of splitmix64
    started from state ``seed``, i.e. ``mix(seed + (counter + 1) * 0x9E3779B97F4A7C15)``, with its
    top 24 bits as a float in [0, 1) (exact in float32). ``seed`` is 64-bit, ``counter`` any
    non-negative int (the op passes ``counter + row``)."""
    x = (int(seed) + (int(counter) + 1) * _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return (x >> 40) / float(1 << 24)


def sample_params(temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  counter: int = 0) -> tuple[Array, Array]:
    """The two parameter arrays of :func:`sample`: float32 ``[temperature, top_p]`` and int32
    ``[top_k, seed low 32 bits, seed high 32 bits, counter]`` (top_k clipped to [0, 2**31 - 1],
    seed taken mod 2**64, counter mod 2**32, both stored as the bits of int32)."""
    seed = int(seed) & _MASK64
    m32 = 0xFFFFFFFF
    ints = np.array([min(max(int(top_k), 0), 0x7FFFFFFF), seed & m32, seed >> 32, int(counter) & m32], np.uint32)
    return np.array([temperature, top_p], np.float32), ints.view(np.int32)


def sample(logits: Tensor, fparams: Tensor, iparams: Tensor, name: str | None = None) -> Tensor:
    """One token id per row of ``logits`` [..., V] (float) -> int32 ``logits.shape[:-1]``.

    The parameters are tensors (graph inputs on the decode path), so a captured graph serves
    every temperature, seed and step: ``fparams`` float32 ``[temperature, top_p]``, ``iparams``
    int32 ``[top_k, seed_lo, seed_hi, counter]`` (:func:`sample_params` makes both). Row ``r``
    draws with counter ``counter + r``.

    Semantics (float32 math; the same on every backend up to float rounding):

    * ``temperature <= 0`` (or NaN): ``argmax`` (first maximum on ties, NaN wins as in NumPy).
    * else ``z = logits / temperature``; NaN counts as ``-inf``. If some ``z`` is ``+inf`` the
      first such index is returned; if every ``z`` is ``-inf``, the argmax of the logits.
    * top-k: ``0 < top_k < V`` keeps the tokens with ``z >=`` the k-th largest ``z`` (ties at
      the threshold kept); otherwise all.
    * weights ``w = exp(z - max z)``; top-p (``top_p < 1``): with ``S`` the total weight of the
      top-k set, keeps the tokens of that set whose ``z >= t``, for the largest ``t`` such that the
      weight of {top-k set, ``z >= t``} is ``>= top_p * S`` (ties kept; ``top_p <= 0`` keeps the
      largest value only).
    * with ``u = sample_uniform(seed, counter + r)`` and ``S'`` the kept weight, the result is the
      first index (vocabulary order) whose running sum of kept weights exceeds ``u * S'``.

    The NumPy reference sums in float64; the CUDA kernels sum exactly in 64-bit fixed point
    (2**-40 of the largest weight, so tokens more than ~27.7 below the largest ``z`` weigh 0
    there). So the backends pick the same token except when ``u * S'`` or ``top_p * S`` falls
    within rounding of a boundary; each backend is deterministic."""
    _need_float("sample", logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ShapeError(f"sample: logits {logits.describe()} must be [..., V] with V >= 1")
    if fparams.dtype != float32 or fparams.shape != (2,):
        raise ShapeError(f"sample: fparams {fparams.describe()} must be float32 of shape (2,): "
                         "[temperature, top_p]")
    if iparams.dtype != int32 or iparams.shape != (4,):
        raise ShapeError(f"sample: iparams {iparams.describe()} must be int32 of shape (4,): "
                         "[top_k, seed_lo, seed_hi, counter]")
    return _node("sample", (logits, fparams, iparams), logits.shape[:-1], int32, None, name)


def sample_weights(logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Array:
    """The reference's weights for one row ``logits`` [V]: float64, ``exp(z - max z)`` on the
    kept tokens and 0 elsewhere, or one-hot where :func:`sample` returns a fixed index (greedy,
    a ``+inf`` z, every z ``-inf``). The op draws from ``weights / weights.sum()``."""
    x = np.asarray(logits, np.float32).reshape(-1)
    temperature, top_p = np.float32(temperature), np.float32(top_p)
    V = x.size
    one = np.zeros(V)
    if not temperature > 0:
        one[np.argmax(x)] = 1.0
        return one
    with np.errstate(over="ignore", invalid="ignore"):
        z = x / temperature
    z[np.isnan(z)] = -np.inf
    m = z.max()
    if m == -np.inf or m == np.inf:
        one[np.argmax(x) if m == -np.inf else np.argmax(z == np.inf)] = 1.0
        return one
    w = np.exp(z - m).astype(np.float64)
    keep = np.ones(V, bool)
    if 0 < top_k < V:
        keep = z >= np.partition(z, V - top_k)[V - top_k]
    if top_p < 1:
        zk, wk = z[keep], w[keep]
        order = np.argsort(-zk, kind="stable")
        cum = np.cumsum(wk[order])
        i = min(int(np.searchsorted(cum, float(top_p) * cum[-1], side="left")), cum.size - 1)
        keep &= z >= zk[order[i]]
    return np.where(keep, w, 0.0)


def sample_draw(weights: Array, u: float) -> int:
    """The draw of :func:`sample`: the first index whose running sum of ``weights`` exceeds
    ``u * weights.sum()`` (the last index of positive weight if rounding leaves none)."""
    cum = np.cumsum(weights)
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))
    return i if i < cum.size else int(np.flatnonzero(weights > 0)[-1])


@_reference("sample", "reduce")
def _sample_ref(p, logits, fparams, iparams):
    x = _f32(logits).reshape(-1, logits.shape[-1])
    temperature, top_p = np.asarray(fparams, np.float32)
    bits = [int(v) for v in np.asarray(iparams, np.int32).view(np.uint32)]
    top_k, seed, counter = int(iparams[0]), bits[1] | (bits[2] << 32), bits[3]
    out = [sample_draw(sample_weights(row, temperature, top_k, top_p), sample_uniform(seed, counter + r))
           for r, row in enumerate(x)]
    return np.array(out, np.int32).reshape(logits.shape[:-1])


__all__ = ["OPS", "OpDef", "view", "reshape", "permute", "transpose", "cont", "cast", "cpy", "set_rows", "get_rows",
           "attention", "attention_store", "linear", "rope_store",
           "concat", "matmul", "add", "mul", "scale", "gelu", "silu", "softmax", "layer_norm", "rms_norm",
           "rope", "rope_angles", "argmax", "sample", "sample_params", "sample_uniform", "sample_weights", "sample_draw",
           "FLOAT_DTYPES"]
