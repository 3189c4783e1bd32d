"""A planned graph as tasks for a persistent kernel: split, ordered by counters, scheduled per SM.

The first, backend-free part of a persistent decode kernel (issue 18): the graph's compute nodes
become *tasks* (a decode ``linear`` split into tiles of output columns; every other node one
task), each node gets a completion counter, and a task may start once the counters of the nodes
it *waits on* are full. A node waits on every earlier node whose memory it conflicts with: it reads
what that node writes (RAW), writes what it reads (WAR: the memory planner reuses arena blocks,
so a later node may overwrite a buffer an earlier, slower task still reads) or writes what it
writes (WAW). Tasks go to per-SM queues in plan order, so a queue never waits on a task behind
it: with waits only on earlier nodes the schedule cannot deadlock. Of those waits a task needs to
check only the *needs* (:func:`reduce_waits`): a wait implied by another (node j waits on i and on
i', and i' itself, directly or not, waits on i) is dropped, since i' cannot finish before i has.

:meth:`TaskPlan.tables` flattens the plan into the int32 arrays a persistent kernel reads: per
task its node, part and slice of the needs list; per need a counter (the node) and the count it
must reach (the node's task count); per SM the start of its slice of the task queue.

:func:`simulate` runs those tables on NumPy as the kernel would -- a task starts when every
counter it needs has reached its count, and adds one to its node's counter when done -- in a
random interleaving of the SM queues, and gives the graph's outputs: equal to an ordinary run
when the waits are right (``tests/test_tasks.py``). On CUDA, ``backends/cuda/persistent.py`` plans
runs of one-row fused linears this way (``task_plan`` with its own ``split``: a task per block's
worth of columns) and ``cuda_src/persist.cu`` consumes the tables: one block per queue walks its
tasks, spins on acquire loads of the needed counters, runs ``linear_gemv_body`` with a virtual
block index (activations read through L2), and releases its node's counter; nodes without a task
form (attention first) run as ordinary kernels around the segments. It is opt-in
(``TINYGRAPH_PERSISTENT=1``): on the H200 it measured 6-10% slower than the kernel-per-node step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .graph import ExecPlan, Graph
from .memory import MemoryPlan
from .ops.registry import OPS
from .tensor import Tensor

#: output columns per task of a split decode linear (a GEMV tile)
TILE_COLS = 64
#: most input rows of a linear that is split into column tiles (decode-like)
SPLIT_ROWS = 8


@dataclass(frozen=True)
class Task:
    """Part ``part`` of ``parts`` of the node at position ``step`` of the plan."""

    step: int
    part: int
    parts: int


@dataclass(frozen=True)
class TaskTables:
    """A task plan as the flat int32 arrays a persistent kernel reads (:meth:`TaskPlan.tables`).

    ``tasks`` [n_tasks, 5]: node (its counter), part, parts, first need, number of needs.
    ``needs`` [n_needs, 2]: counter, the count it must reach before the task starts.
    ``queue_start`` [n_sms + 1]: SM s runs ``queue_tasks[queue_start[s]:queue_start[s + 1]]``
    (task indices into ``tasks``), in order. ``counters``: how many (one per node, from 0)."""

    tasks: np.ndarray
    needs: np.ndarray
    queue_start: np.ndarray
    queue_tasks: np.ndarray
    counters: int


@dataclass
class TaskPlan:
    """``order``: the plan's compute nodes; ``parts[i]``: tasks of node i; ``waits[i]``: the
    earlier nodes node i conflicts with (must run after); ``queues[s]``: SM s's tasks, in order;
    ``memory``: the plan's arena placement (the tasks share it); ``needs[i]``: the waits node i's
    tasks check (:func:`reduce_waits` of ``waits`` unless given)."""

    order: list[Tensor]
    parts: list[int]
    waits: list[list[int]]
    queues: list[list[Task]] = field(default_factory=list)
    memory: MemoryPlan = field(default_factory=MemoryPlan)
    needs: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.needs is None:
            self.needs = reduce_waits(self.waits)

    @property
    def num_tasks(self) -> int:
        return sum(self.parts)

    def dump(self) -> str:
        """One line per node: step, op, name, tasks, the steps it needs (checks) and how many it
        conflicts with in all."""
        needs = self.needs or []
        lines = [f"{len(self.order)} nodes, {self.num_tasks} tasks on {len(self.queues)} SMs, "
                 f"{sum(map(len, needs))} needs of {sum(map(len, self.waits))} waits"]
        for i, n in enumerate(self.order):
            lines.append(f"{i:4d} {n.op:16s} {n.name:28s} tasks {self.parts[i]:3d}  needs {needs[i]} "
                         f"(of {len(self.waits[i])} waits)")
        return "\n".join(lines)

    def tables(self) -> TaskTables:
        """The plan as :class:`TaskTables` (what the kernel reads; :func:`simulate` runs them)."""
        needs = self.needs or []
        start = np.zeros(len(self.order) + 1, np.int64)
        start[1:] = np.cumsum([len(w) for w in needs])
        flat = [(i, self.parts[i]) for w in needs for i in w]
        need_arr = np.array(flat, np.int32).reshape(-1, 2)
        ids: dict[tuple[int, int], int] = {}
        rows = []
        for q in self.queues:
            for t in q:
                ids[(t.step, t.part)] = len(rows)
                rows.append((t.step, t.part, t.parts, start[t.step], len(needs[t.step])))
        qs = np.zeros(len(self.queues) + 1, np.int32)
        qs[1:] = np.cumsum([len(q) for q in self.queues])
        qt = np.array([ids[(t.step, t.part)] for q in self.queues for t in q], np.int32)
        return TaskTables(np.array(rows, np.int32).reshape(-1, 5), need_arr, qs, qt, len(self.order))

    def dump_queues(self) -> str:
        """One line per SM: its tasks in the order it runs them, each as ``step.part/parts op``
        (``step``: the node's line in :meth:`dump`)."""
        lines = [f"{len(self.queues)} SMs, {self.num_tasks} tasks"]
        for s, q in enumerate(self.queues):
            items = " ".join(f"{t.step}.{t.part}/{t.parts} {self.order[t.step].op}" for t in q)
            lines.append(f"SM {s:3d} ({len(q):3d} tasks): {items}")
        return "\n".join(lines)


def split_parts(n: Tensor, tile_cols: int = TILE_COLS) -> int:
    """How many tasks node ``n`` becomes: a decode ``linear`` one per ``tile_cols`` output
    columns, any other node one."""
    if n.op == "linear" and n.srcs[0].size // n.srcs[0].shape[-1] <= SPLIT_ROWS:
        return max(1, -(-n.shape[-1] // tile_cols))
    return 1


def _region(t: Tensor, plan: ExecPlan) -> tuple[object, int, int]:
    """(memory, lo, hi): the arena's bytes a planned intermediate covers, else its storage's
    element interval."""
    off = plan.memory.offsets.get(t.storage.id)
    if off is not None:
        it = t.dtype.itemsize
        lo, hi = t.region()
        return "arena", off + lo * it, off + hi * it
    lo, hi = t.region()
    return t.storage.id, lo, hi


def _reads_writes(n: Tensor, plan: ExecPlan) -> tuple[list, list]:
    written = set(OPS[n.op].written_srcs())
    reads = [_region(s, plan) for i, s in enumerate(n.srcs) if i not in written]
    writes = [_region(n, plan)] + [_region(n.srcs[i], plan) for i in written]
    return reads, writes


def _overlap(a: list, b: list) -> bool:
    return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)


def reduce_waits(waits: list[list[int]]) -> list[list[int]]:
    """The waits each node must check: ``waits[j]`` (earlier nodes only) less those implied by
    another of its waits -- i is dropped when some other i' in ``waits[j]`` comes after i in the
    order that the waits impose (i' waits on i, directly or through others). A task that checks
    the result still starts only after every node in ``waits[j]`` is complete."""
    before: list[int] = []   # bit i of before[j]: node j runs after node i (transitively)
    out: list[list[int]] = []
    for j, w in enumerate(waits):
        if any(i >= j for i in w):
            raise ValueError(f"reduce_waits: node {j} waits on a node not before it: {w}")
        covered = 0
        for i in w:
            covered |= before[i]
        keep = [i for i in sorted(set(w)) if not covered >> i & 1]
        out.append(keep)
        b = 0
        for i in keep:
            b |= before[i] | (1 << i)
        before.append(b)
    return out


def task_plan(plan: ExecPlan, num_sms: int = 132, tile_cols: int = TILE_COLS,
              split: Callable[[Tensor], int] | None = None) -> TaskPlan:
    """Split ``plan``'s nodes into tasks (``split(n)`` of them; default :func:`split_parts` with
    ``tile_cols``), find what each node waits on, and deal the tasks to ``num_sms`` queues in plan
    order (each node's tasks round-robin from the SM after the last one used, so consecutive
    small nodes spread over the SMs)."""
    order = list(plan.order)
    rw = [_reads_writes(n, plan) for n in order]
    waits: list[list[int]] = []
    for j, (rj, wj) in enumerate(rw):
        waits.append([i for i in range(j) if _overlap(rw[i][1], rj) or _overlap(rw[i][0], wj)
                      or _overlap(rw[i][1], wj)])
    parts = [split(n) if split is not None else split_parts(n, tile_cols) for n in order]
    queues: list[list[Task]] = [[] for _ in range(max(1, num_sms))]
    sm = 0
    for i, k in enumerate(parts):
        for p in range(k):
            queues[sm].append(Task(i, p, k))
            sm = (sm + 1) % len(queues)
    return TaskPlan(order, parts, waits, queues, plan.memory)


def simulate(graph: Graph, tp: TaskPlan, inputs: dict[int, np.ndarray], buffers: dict[int, np.ndarray],
             rng: np.random.Generator, values: Callable[[Tensor], np.ndarray] | None = None) -> list[np.ndarray]:
    """Run ``tp`` on NumPy: repeatedly pick, at random, an SM whose next task's waits are all
    complete, run that task, count it. ``buffers``: flat arrays of the persistent tensors
    (written in place, as a device's would be); ``inputs``: flat arrays of the graph's inputs;
    ``values(t)``: float32 values of a quantized persistent. Returns the graph's outputs. Raises
    ``RuntimeError`` when no queue can move (a deadlock)."""
    m = tp.memory
    arena = np.zeros(max(1, m.peak), np.uint8)
    flat = {**buffers, **{k: v.reshape(-1) for k, v in inputs.items()},
            **{tid: arena[o: o + m.sizes[tid]] for tid, o in m.offsets.items()}}

    def arr(t: Tensor) -> np.ndarray:
        if t.dtype.is_quant:
            npd, buf = np.dtype(np.float32), values(t.storage)
        else:
            npd, buf = t.dtype.np, flat[t.storage.id]
        it = npd.itemsize
        return np.ndarray(t.shape, npd, buffer=buf, offset=t.offset * it, strides=tuple(s * it for s in t.strides))

    tb = tp.tables()
    counters = np.zeros(tb.counters, np.int64)
    heads = tb.queue_start[:-1].astype(np.int64)
    ends = tb.queue_start[1:]

    def can_start(s: int) -> bool:  # the kernel's spin: every needed counter at its count
        node, _, _, n0, nn = tb.tasks[tb.queue_tasks[heads[s]]]
        return all(counters[c] >= k for c, k in tb.needs[n0:n0 + nn])

    left = len(tb.queue_tasks)
    while left:
        ready = [s for s in range(len(heads)) if heads[s] < ends[s] and can_start(s)]
        if not ready:
            raise RuntimeError("task plan deadlocked: no SM's next task has its needs complete")
        s = ready[int(rng.integers(len(ready)))]
        node, part, parts, _, _ = (int(v) for v in tb.tasks[tb.queue_tasks[heads[s]]])
        _run_task(tp.order[node], Task(node, part, parts), arr)
        heads[s] += 1
        counters[node] += 1
        left -= 1
    return [arr(o).copy() for o in graph.outputs]


def _run_task(n: Tensor, task: Task, arr: Callable[[Tensor], np.ndarray]) -> None:
    d = OPS[n.op]
    if task.parts == 1:
        if d.dst is not None:
            d.reference(n.params, arr(n), *[arr(s) for i, s in enumerate(n.srcs) if i != d.dst])
        else:
            out = arr(n)
            r = d.reference(n.params, *[arr(s) for s in n.srcs])
            out[...] = r if r.dtype == out.dtype else r.astype(out.dtype)
        return
    # a tile of a linear: output columns [a, b); swiglu reads weight rows [a, b) and half + [a, b)
    nout = n.shape[-1]
    a = task.part * -(-nout // task.parts)
    b = min(nout, a + -(-nout // task.parts))
    if a >= b:
        return
    o = d.named(n.params, n.srcs)
    rows = np.arange(a, b)
    if n.params["act"] == "swiglu":
        rows = np.concatenate([rows, rows + nout])
    srcs = [arr(n.srcs[0]), arr(n.srcs[1])[rows]]
    for name, _flag in d.optional:
        t = o[name]
        if t is None:
            continue
        v = arr(t)
        srcs.append(v[rows] if name == "bias" else v[..., a:b] if name == "residual" else v)
    out = arr(n)
    r = d.reference(n.params, *srcs)
    out[..., a:b] = r if r.dtype == out.dtype else r.astype(out.dtype)
