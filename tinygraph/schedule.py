"""Execution order: data edges plus hazard edges, topologically sorted with networkx.

A node that writes memory another node also touches (``cpy`` into a KV-cache slot, say) must keep
its place in build order relative to every overlapping access of the same buffer: a read of the
history after the write (read-after-write), an earlier read before a later overwrite
(write-after-read), and two writes in order (write-after-write). Overlap is tested on the element
interval each access spans, which is conservative for interleaved strided views.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx

from .ops import OPS
from .tensor import LEAF_OPS, Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph


def writes_into(t: Tensor) -> bool:
    """True for nodes that write memory owned by another node (``cpy``, ``set_rows``)."""
    return t.op in OPS and bool(OPS[t.op].written_srcs())


def is_compute(t: Tensor) -> bool:
    """True for nodes a backend runs (everything but leaves and pure views)."""
    return t.op not in LEAF_OPS and t.op != "view"


@dataclass(frozen=True)
class Access:
    node: Tensor
    storage: Tensor
    lo: int
    hi: int
    write: bool


def needed_nodes(graph: "Graph") -> list[Tensor]:
    """Nodes the outputs and side effects depend on (leaves included), in build order."""
    seen: dict[int, Tensor] = {}
    stack = list(graph.outputs) + list(graph.side_effects)
    while stack:
        t = stack.pop()
        if t.id in seen:
            continue
        seen[t.id] = t
        stack.extend(t.srcs)
    return sorted(seen.values(), key=lambda t: t.id)


def accesses(node: Tensor) -> list[Access]:
    """Memory a compute node reads and writes. Only ops with a destination (``cpy``,
    ``set_rows``) or side destinations (``rope_store``'s caches) write memory they did not
    create; a destination is not read."""
    written = OPS[node.op].written_srcs()
    out = [Access(node, s.storage, *s.region(), i in written) for i, s in enumerate(node.srcs)
           if i != OPS[node.op].dst]
    out.append(Access(node, node.storage, *node.region(), True))
    return out


def hazard_edges(nodes: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``(earlier, later, buffer)`` for every pair of overlapping accesses, one a write, in a buffer
    that some ``cpy``/``set_rows`` writes into. Earlier/later is build order."""
    written = {s.storage.id for n in nodes if writes_into(n)
               for i, s in enumerate(n.srcs) if i in OPS[n.op].written_srcs()}
    by_buf: dict[int, list[Access]] = {}
    for n in nodes:
        if is_compute(n):
            for a in accesses(n):
                if a.storage.id in written and a.hi > a.lo:
                    by_buf.setdefault(a.storage.id, []).append(a)
    edges = []
    for accs in by_buf.values():
        for j, b in enumerate(accs):
            for a in accs[:j]:
                if a.node is not b.node and (a.write or b.write) and a.lo < b.hi and b.lo < a.hi:
                    edges.append((a.node, b.node, a.storage))
    return edges


def dependency_graph(graph: "Graph") -> nx.DiGraph:
    """The needed part of ``graph`` as a networkx DiGraph on node ids; edges carry ``kind`` =
    ``"data"`` or ``"hazard"`` (with the ``buffer`` name)."""
    nodes = needed_nodes(graph)
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n.id, tensor=n)
    for n in nodes:
        for s in n.srcs:
            g.add_edge(s.id, n.id, kind="data")
    for a, b, buf in hazard_edges(nodes):
        if not g.has_edge(a.id, b.id):
            g.add_edge(a.id, b.id, kind="hazard", buffer=buf.name)
    return g


def schedule(graph: "Graph") -> list[Tensor]:
    """Compute nodes in a deterministic topological order (ties broken by build order)."""
    g = dependency_graph(graph)
    order = nx.lexicographical_topological_sort(g, key=lambda i: i)
    return [g.nodes[i]["tensor"] for i in order if is_compute(g.nodes[i]["tensor"])]
