"""A lazy graph: the nodes of one step (a prefill or a decode token) in build order."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING, Iterator, Sequence

import networkx as nx

from .dtypes import DType, as_dtype
from .errors import DTypeError, GraphError
from .memory import MemoryPlan, plan_memory
from .schedule import dependency_graph, needed_nodes, schedule
from .tensor import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session


@dataclass
class ExecPlan:
    """What a backend needs to run a graph: compute nodes in order and their arena placement."""

    order: list[Tensor]
    memory: MemoryPlan
    inputs_read: list[Tensor] | None = None  # filled on first use by Session.compute
    #: backend kernel choices per node id, made once by the backend that first runs the plan
    #: (CUDA: ``select.plan_choices``)
    choices: dict[int, Any] | None = None
    #: runs of nodes the backend runs as one persistent kernel, made with ``choices``
    #: (CUDA: ``persistent.plan_segments``)
    segments: list[Any] | None = None

    @property
    def arena_bytes(self) -> int:
        return self.memory.peak


class Graph:
    """One step's nodes. Make with ``sess.graph()``; add inputs with :meth:`input`, build with the ops,
    mark results with :meth:`output`, run with ``sess.compute(g, feeds)``."""

    def __init__(self, session: "Session") -> None:
        self.session = session
        self.nodes: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.side_effects: list[Tensor] = []
        self._inputs: list[Tensor] = []
        self._plan: ExecPlan | None = None
        self._held: list[Tensor] | None = None  # nodes built while detached()
        #: node id -> names of the kernels it launched, filled by the CUDA backend each time it
        #: lowers this graph (a direct run, or the run it captures for replay); shown by dump()
        self.kernels: dict[int, list[str]] = {}

    # -- building ---------------------------------------------------------------------------
    def _add(self, t: Tensor) -> None:
        if self._held is not None:
            self._held.append(t)
            return
        self.nodes.append(t)
        self._plan = None

    def _side_effect(self, t: Tensor) -> None:
        if self._held is None:
            self.side_effects.append(t)

    @contextlib.contextmanager
    def detached(self) -> Iterator[list[Tensor]]:
        """Nodes built inside are made (joining this graph) but not added to it, nor their side
        effects recorded: a rewrite builds its replacement with the ordinary op builders, then
        puts it in place with :meth:`replace`. Yields the list of nodes built."""
        prev, self._held = self._held, []
        try:
            yield self._held
        finally:
            self._held = prev

    def replace(self, old: Tensor, new: Tensor, dead: set[int] = frozenset(), side_effect: bool = False,
                readers: "Sequence[Tensor] | None" = None) -> None:
        """Put ``new`` (built :meth:`detached`) where ``old`` was (same id, same place in build
        order), point every reference to ``old`` at ``new``, drop the nodes whose ids are in
        ``dead``; ``side_effect``: ``new`` writes buffers (``set_rows``-like), keep it as one.
        ``readers``: every node with ``old`` among its sources, when the caller knows them (a
        pass's reader index): only those are rewritten instead of every node's sources scanned."""
        new.id = old.id
        if dead:
            nodes = [new if n is old else n for n in self.nodes if n.id not in dead]
        else:
            nodes = [new if n is old else n for n in self.nodes]
        for n in nodes if readers is None else readers:
            if n is None:  # a pass's index marks graph outputs so
                continue
            for s in n.srcs:  # a loop, not any(genexpr): this may run per node per rewrite
                if s is old:
                    n.srcs = tuple(new if x is old else x for x in n.srcs)
                    break
        for n in nodes:  # views of old (of a view of it, too) have it as their storage
            if n.storage is old:
                n.storage = new
        self.nodes = nodes
        self.outputs = [new if o is old else o for o in self.outputs]
        self.side_effects = [new if e is old else e for e in self.side_effects if e.id not in dead]
        if side_effect and all(e is not new for e in self.side_effects):
            self.side_effects.append(new)
        self._plan = None

    def input(self, shape: Sequence[int], dtype: DType | str, name: str | None = None) -> Tensor:
        """A tensor fed at ``compute`` time (NumPy array of this shape)."""
        dt = as_dtype(dtype)
        if dt.is_quant:
            raise DTypeError(f"input {name!r}: {dt.name} is a block-quantized weight type; graph inputs are float "
                             "or int32 (declare weights with Session.persistent)")
        t = Tensor("input", (), tuple(int(n) for n in shape), dt, name=name, graph=self, session=self.session)
        self._add(t)
        self._inputs.append(t)
        return t

    def output(self, *tensors: Tensor) -> "Tensor | tuple[Tensor, ...]":
        """Mark results returned by ``compute``, in this order. Returns its argument(s)."""
        for t in tensors:
            if t.graph is not self and not (t.graph is None and t.session is self.session):
                raise GraphError(f"output {t.describe()} belongs to another graph")
            self.outputs.append(t)
        self._plan = None
        return tensors[0] if len(tensors) == 1 else tensors

    def __enter__(self) -> "Graph":
        self._prev = self.session.current_graph
        self.session.current_graph = self
        return self

    def __exit__(self, *exc) -> None:
        self.session.current_graph = self._prev

    # -- analysis ---------------------------------------------------------------------------
    @property
    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def signature(self) -> tuple:
        """A key that is equal for graphs with the same structure, shapes and layouts (view offsets
        and scalar parameters aside), so a plan computed for one serves the other."""
        pos = {n.id: i for i, n in enumerate(self.nodes)}

        def ref(s: Tensor):  # a node of this graph, or a persistent buffer / view of one
            i = pos.get(s.id)
            return i if i is not None else (s.storage.id, s.shape, s.strides)
        out = [(n.op, n.shape, n.dtype.name, n.strides, tuple(map(ref, n.srcs))) for n in self.nodes]
        return (tuple(out), tuple(map(ref, self.outputs)), tuple(pos[s.id] for s in self.side_effects))

    def plan(self) -> ExecPlan:
        """Schedule and memory plan (cached by the session per :meth:`signature`)."""
        if self._plan is None:
            self._plan = self.session._plan_for(self)
        return self._plan

    def _compute_plan(self) -> ExecPlan:
        order = schedule(self)
        return ExecPlan(order, plan_memory(order, self.outputs))

    def to_networkx(self) -> nx.DiGraph:
        """Needed nodes and their data/hazard edges (see :func:`tinygraph.schedule.dependency_graph`)."""
        return dependency_graph(self)

    def dump(self) -> str:
        """Text table: id, name, op, shape, dtype, strides, offset, base buffer, arena offset/size,
        and, once the CUDA backend has run the graph, the kernels each node launched."""
        plan = self.plan()
        mem = plan.memory
        step = {n.id: i for i, n in enumerate(plan.order)}
        kern = bool(self.kernels)
        rows = [("step", "id", "name", "op", "shape", "dtype", "strides", "offset", "buffer", "arena")
                + (("kernels",) if kern else ())]
        for n in sorted(needed_nodes(self), key=lambda t: (step.get(t.id, -1), t.id)):
            if n.op == "persistent":
                continue
            if n.id in mem.offsets:
                arena = f"{mem.offsets[n.id]}+{mem.sizes[n.id]}" + (" (in place)" if n.id in mem.inplace else "")
            else:
                arena = "-"
            buf = "arena" if n.storage.id in mem.offsets and n.storage is n else n.storage.name
            rows.append((str(step.get(n.id, "-")), str(n.id), n.name, n.op, str(n.shape), n.dtype.short,
                         str(n.strides), str(n.offset), buf, arena)
                        + ((" ".join(self.kernels.get(n.id, [])) or "-",) if kern else ()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"{len(plan.order)} compute nodes, {len(self.outputs)} outputs, "
                     f"{len(self.side_effects)} side effects; arena peak {mem.peak} bytes "
                     f"(without reuse {mem.total})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.dump()
