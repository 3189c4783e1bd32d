"""The op registry (:class:`OpDef`, :data:`OPS`) and the helpers every op builder uses: joining
a graph, making a node, checking dtypes and shapes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..dtypes import DType
from ..errors import DTypeError, GraphError, ShapeError
from ..tensor import Tensor


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
    sources in ``side_dsts``; their reference writes into the arrays it is given for them.

    Optional sources (a norm's weight, a linear's bias, ...) follow the ``required`` ones, in the
    order of ``optional``: (name, the boolean param that says it is there). ``named(params,
    srcs)`` reads them by name, for the reference, the passes and the lowerings alike."""

    name: str
    family: str
    reference: Callable[..., Array]
    elementwise: bool = False
    dst: int | None = None
    side_dsts: tuple[int, ...] = ()
    required: int = 0
    optional: tuple[tuple[str, str], ...] = ()

    def written_srcs(self) -> tuple[int, ...]:
        """Indices of sources this op writes rather than reads."""
        return self.side_dsts + ((self.dst,) if self.dst is not None else ())

    def named(self, params: dict, srcs: Sequence[Any]) -> dict[str, Any]:
        """The optional sources of a node (or of its reference's arrays) by name, None where the
        node has none."""
        rest = iter(srcs[self.required:])
        return {name: next(rest) if params.get(flag) else None for name, flag in self.optional}


OPS: dict[str, OpDef] = {}


def _reference(name: str, family: str, elementwise: bool = False, dst: int | None = None,
               side_dsts: tuple[int, ...] = (), required: int = 0, optional: tuple[tuple[str, str], ...] = ()):
    def deco(fn: Callable[..., Array]) -> Callable[..., Array]:
        OPS[name] = OpDef(name, family, fn, elementwise, dst, side_dsts, required, optional)
        return fn
    return deco


def optional_srcs(n: Tensor) -> dict[str, Tensor | None]:
    """Node ``n``'s optional sources by name (see :class:`OpDef`)."""
    return OPS[n.op].named(n.params, n.srcs)


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


def _row_param(op: str, x: Tensor, w: Tensor | None, what: str) -> None:
    if w is not None and w.shape != (x.shape[-1],):
        raise ShapeError(f"{op}: {what} {w.describe()} must have shape ({x.shape[-1]},) to match {x.describe()}")
