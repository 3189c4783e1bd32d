"""Liveness-based placement of a graph's intermediates in one arena.

Walking the schedule, each compute node that owns memory gets the lowest arena block that is free
(first fit, 256-byte aligned); a block is freed after its last reader ran. An element-wise node
whose first source dies at that node, with the same shape, dtype and a dense layout, takes over
the source's block instead (in place). Outputs stay live to the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ops import OPS
from .tensor import Tensor

ALIGN = 256


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class MemoryPlan:
    """Arena placement, keyed by node id: ``offsets``/``sizes`` in bytes, ``inplace`` maps a node
    to the source whose block it reuses, ``lifetimes`` gives (first, last) schedule steps.
    ``peak`` is the arena size; ``total`` what the intermediates would take without reuse."""

    offsets: dict[int, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    inplace: dict[int, int] = field(default_factory=dict)
    lifetimes: dict[int, tuple[int, int]] = field(default_factory=dict)
    peak: int = 0
    total: int = 0


def owns_arena_memory(t: Tensor) -> bool:
    return t.is_owner and t.op not in ("persistent", "input", "view")


def _can_reuse(node: Tensor, step: int, last: dict[int, int], keep: set[int], written: set[int]) -> Tensor | None:
    """The source whose block ``node`` may take over, or None."""
    if not OPS[node.op].elementwise or not node.srcs:
        return None
    src = node.srcs[0]
    s = src.storage
    if (not owns_arena_memory(s) or s.id in keep or s.id in written or last.get(s.id) != step
            or src.shape != node.shape or src.dtype != node.dtype or not src.is_contiguous
            or src.offset != 0 or src.size != s.size):
        return None
    for other in node.srcs[1:]:  # another operand reading the same block must read the same elements
        if other.storage is s and (other.shape, other.strides, other.offset) != (src.shape, src.strides, src.offset):
            return None
    return s


def plan_memory(order: list[Tensor], outputs: list[Tensor]) -> MemoryPlan:
    """Place every arena-owning node of ``order`` (a schedule) so that no two live blocks overlap."""
    end = len(order)
    last: dict[int, int] = {}
    for step, n in enumerate(order):
        for s in n.srcs:
            last[s.storage.id] = step
    keep = {o.storage.id for o in outputs}
    for k in keep:
        last[k] = end
    written = {s.storage.id for n in order for i, s in enumerate(n.srcs) if i in OPS[n.op].written_srcs()}

    plan = MemoryPlan()
    live: list[tuple[int, int, int]] = []  # (offset, size, root id), sorted by offset
    block_of: dict[int, int] = {}  # node id -> id of the node that first took the block
    block_end: dict[int, int] = {}  # root id -> last step any holder of the block is read
    for step, n in enumerate(order):
        if owns_arena_memory(n):
            size = _align(max(n.nbytes, 1))
            plan.total += size
            n_last = last.get(n.id, step)
            src = _can_reuse(n, step, last, keep, written)
            if src is not None:
                root = block_of[src.id]
                plan.inplace[n.id] = src.id
                plan.offsets[n.id] = plan.offsets[src.id]
            else:
                root, off = n.id, 0
                for o, sz, _ in live:
                    if o - off >= size:
                        break
                    off = max(off, o + sz)
                live.append((off, size, root))
                live.sort()
                plan.offsets[n.id] = off
                plan.peak = max(plan.peak, off + size)
            block_of[n.id] = root
            block_end[root] = max(block_end.get(root, step), n_last)
            plan.sizes[n.id] = size
            plan.lifetimes[n.id] = (step, n_last)
        live = [b for b in live if block_end[b[2]] > step]
    return plan
