"""A canonical text listing of a step graph's structure, for snapshot tests: every node the
outputs and side effects need, in build order, with op, name, shape, dtype, strides, offset,
params, its sources (as listing indices) and its storage. Node ids are process-global counters,
so they are replaced by listing indices (and default names ``{op}_{id}`` by ``{op}_#``)."""
from __future__ import annotations

import hashlib
import re

import tinygraph as tg
from tinygraph.schedule import needed_nodes


def graph_listing(g: tg.Graph) -> str:
    """The listing (one line per node, then outputs and side effects)."""
    nodes = needed_nodes(g)
    idx = {n.id: i for i, n in enumerate(nodes)}

    def name(n: tg.Tensor) -> str:
        return f"{n.op}_#" if re.fullmatch(rf"{re.escape(n.op)}_\d+", n.name) else n.name

    def param(v: object) -> str:
        return f"@{idx[v.id]}" if isinstance(v, tg.Tensor) else repr(v)

    lines = []
    for i, n in enumerate(nodes):
        params = ",".join(f"{k}={param(v)}" for k, v in sorted(n.params.items()))
        srcs = ",".join(str(idx[s.id]) for s in n.srcs)
        store = "self" if n.storage is n else f"@{idx.get(n.storage.id, name(n.storage))}"
        lines.append(f"{i} {n.op} {name(n)} {n.shape} {n.dtype.name} {n.strides} {n.offset} "
                     f"[{params}] ({srcs}) {store}")
    lines.append("outputs " + ",".join(str(idx[t.id]) for t in g.outputs))
    lines.append("side_effects " + ",".join(str(idx[t.id]) for t in g.side_effects))
    return "\n".join(lines) + "\n"


def graph_hash(g: tg.Graph) -> str:
    """sha256 of :func:`graph_listing`."""
    return hashlib.sha256(graph_listing(g).encode()).hexdigest()
