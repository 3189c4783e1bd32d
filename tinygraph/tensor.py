"""The tensor node of a lazy graph.

A :class:`Tensor` is a node: the op that makes it, its sources, and the layout of its result —
shape (NumPy order, outermost first), dtype, strides and offset in **elements** of its dtype into
the memory of ``storage``, the node that owns the memory. Owners are persistent buffers (weights,
KV caches), graph inputs, and compute nodes, whose memory the planner places in the graph's arena.
View ops (``view``, ``reshape``, ``transpose``, ``permute``) and ``cpy`` make nodes that own nothing:
they describe memory of an owner.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .dtypes import DType
from .util import contiguous_strides

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph
    from .session import Session

#: ops whose node is a leaf owner of memory
LEAF_OPS = frozenset({"persistent", "input"})


def extent(shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Number of elements spanned from the first to one past the last element (0 if empty)."""
    if any(n == 0 for n in shape):
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides))


class Tensor:
    """A node of a lazy graph (or a persistent buffer). Build with the ops in ``tinygraph.ops``."""

    __slots__ = ("id", "name", "op", "srcs", "params", "shape", "dtype", "strides", "offset",
                 "storage", "graph", "session", "__weakref__")

    _next_id = 0

    def __init__(self, op: str, srcs: tuple["Tensor", ...], shape: tuple[int, ...], dtype: DType,
                 *, params: dict[str, Any] | None = None, name: str | None = None,
                 strides: tuple[int, ...] | None = None, offset: int = 0,
                 storage: "Tensor | None" = None, graph: "Graph | None" = None,
                 session: "Session | None" = None) -> None:
        Tensor._next_id += 1
        self.id = Tensor._next_id
        self.op = op
        self.srcs = srcs
        self.params = params or {}
        # callers pass tuples of Python ints (the ops in tinygraph/ops/ normalise user input at the API boundary)
        self.shape = shape
        self.dtype = dtype
        self.strides = contiguous_strides(shape) if strides is None else strides
        self.offset = offset
        self.storage = self if storage is None else storage
        self.graph = graph
        self.session = session
        self.name = name or f"{op}_{self.id}"

    # -- layout -----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.size)

    @property
    def is_owner(self) -> bool:
        """True when this node owns its memory (persistent, input or computed)."""
        return self.storage is self

    @property
    def is_persistent(self) -> bool:
        return self.storage.op == "persistent"

    @property
    def is_contiguous(self) -> bool:
        """True when the elements are densely packed in row-major order (size-1 axes ignored)."""
        expect = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expect:
                return False
            expect *= n
        return True

    @property
    def extent(self) -> int:
        return extent(self.shape, self.strides)

    def region(self) -> tuple[int, int]:
        """Half-open element interval ``[lo, hi)`` of ``storage`` this tensor touches."""
        return self.offset, self.offset + self.extent

    def describe(self) -> str:
        """Short text used in error messages: name, op, shape, dtype."""
        return f"'{self.name}' ({self.op}, shape {self.shape}, {self.dtype.name})"

    def __repr__(self) -> str:
        lay = "" if self.is_contiguous and self.offset == 0 else f", strides={self.strides}, offset={self.offset}"
        return f"Tensor({self.name!r}, op={self.op}, shape={self.shape}, dtype={self.dtype.name}{lay})"

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:  # identity: tensors are nodes, not values
        return self is other

    # -- operator sugar (the functions in tinygraph.ops are the definitions) --------------------
    def __add__(self, other: "Tensor") -> "Tensor":
        from . import ops
        return ops.add(self, other)

    def __mul__(self, other: "Tensor | float") -> "Tensor":
        from . import ops
        return ops.scale(self, other) if isinstance(other, (int, float)) else ops.mul(self, other)

    def __matmul__(self, other: "Tensor") -> "Tensor":
        from . import ops
        return ops.matmul(self, other)

    @property
    def T(self) -> "Tensor":
        from . import ops
        return ops.transpose(self)

    def reshape(self, *shape: int) -> "Tensor":
        from . import ops
        return ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
