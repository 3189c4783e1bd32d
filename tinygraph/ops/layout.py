"""Views (a new layout over the same memory, no compute) and copies: ``view``, ``reshape``,
``permute``, ``transpose``, ``cont``, ``cast``, ``cpy``, ``set_rows``, ``get_rows``, ``concat``."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..dtypes import DType, as_dtype, float32, int32
from ..errors import BoundsError, DTypeError, GraphError, ShapeError
from ..tensor import Tensor, extent
from ..util import contiguous_strides
from .registry import _need_weight, _node, _norm_axis, _reference


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
def _no_quant(op: str, *ts: "Tensor | DType") -> None:
    """Block-quantized tensors are weights read by matmul / linear / get_rows only: copying,
    converting or writing them element-wise has no meaning (their elements are not addressable)."""
    for t in ts:
        dt = t if isinstance(t, DType) else t.dtype
        if dt.is_quant:
            what = f"dtype {dt.name}" if isinstance(t, DType) else t.describe()
            raise DTypeError(f"{op}: {what} is block-quantized: such tensors are weights, read only by matmul, "
                             "linear and get_rows")


def cont(t: Tensor, name: str | None = None) -> Tensor:
    """A contiguous copy of ``t``."""
    _no_quant("cont", t)
    return _node("cont", (t,), t.shape, t.dtype, None, name)


@_reference("cont", "copy")
def _cont_ref(p, x):
    return x


def cast(t: Tensor, dtype: DType | str, name: str | None = None) -> Tensor:
    """A contiguous copy of ``t`` converted to ``dtype``."""
    _no_quant("cast", t, as_dtype(dtype))
    return _node("cast", (t,), t.shape, as_dtype(dtype), None, name)


@_reference("cast", "copy")
def _cast_ref(p, x):
    return x


def cpy(src: Tensor, dst: Tensor, name: str | None = None) -> Tensor:
    """Write ``src`` into the memory ``dst`` describes (converting dtype). A side effect: it runs
    without being an output, and accesses to overlapping memory keep build order. Returns a tensor
    with ``dst``'s layout whose reads see the written values."""
    _no_quant("cpy", src, dst)
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
    _no_quant("set_rows", src, dst)
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
    _no_quant("get_rows", out)
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
    _no_quant("concat", a, b)
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
