"""Graph export: node classification shared by the exporters, and Graphviz DOT.

The text table is ``Graph.dump()``; the interactive HTML view is :mod:`tinygraph.viz`, which uses
the classification here (kind, family, memory class, layer group, colours) so that DOT and HTML
agree.
"""
from __future__ import annotations

import re
from typing import Iterable

from .graph import Graph
from .ops import OPS
from .schedule import writes_into
from .tensor import LEAF_OPS, Tensor

#: fill colours by op family (compute nodes) and by memory class (leaves); DOT and HTML share them
FAMILY_COLORS = {"matmul": "#f4a582", "attention": "#ef8fb8", "norm": "#92c5de", "softmax": "#e7826d",
                 "rope": "#b8aee0", "elementwise": "#bfe3b4", "copy": "#fee090", "reduce": "#c8c8c8",
                 "collective": "#ffb000"}  # all_reduce: what a tensor-parallel rank waits on
#: compute nodes of a family without a colour of its own
OTHER_COLOR = "#e8e8e8"
KIND_COLORS = {"weight": "#d4d4d4", "kv_cache": "#d9c2ec", "input": "#ffffff"}

#: a layer group is the name up to the first ``.<number>.``: ``layers.7.attn.k_store`` -> ``layers.7``
_GROUP_RE = re.compile(r"^(.*?\.\d+)\.")


def is_cache_name(name: str) -> bool:
    """KV-cache buffers are the persistent buffers named ``cache.*``."""
    return name.startswith("cache.")


def node_kind(t: Tensor) -> str:
    """``"persistent"``, ``"input"``, ``"view"`` (no compute, a layout over other memory) or
    ``"compute"`` (run by a backend; ``cpy`` included)."""
    if t.op in LEAF_OPS:
        return t.op
    return "view" if t.op == "view" else "compute"


def node_family(t: Tensor) -> str:
    """The op family of a compute node (``OPS[op].family``), else its kind."""
    d = OPS.get(t.op)
    return d.family if d is not None and node_kind(t) == "compute" else node_kind(t)


def memory_class(t: Tensor) -> str:
    """Where the node's bytes live: ``"weight"`` (a persistent buffer not named ``cache.*``),
    ``"kv_cache"`` (one named ``cache.*``), ``"input"`` (fed at compute time) or ``"arena"``
    (an intermediate placed by the memory planner)."""
    s = t.storage
    if s.op == "persistent":
        return "kv_cache" if is_cache_name(s.name) else "weight"
    if s.op == "input":
        return "input"
    return "arena"


def node_groups(nodes: Iterable[Tensor]) -> dict[int, str | None]:
    """Layer group of each node (``layers.{i}``), by name prefix. A node without one (an unnamed
    view, a layer's ``cache.k.{i}`` buffer) takes the group all its consumers share, if it is a
    leaf or was not named by the builder; so ``positions``, read by every layer, and ``tok_emb``
    belong to none."""
    nodes = list(nodes)
    ids = {t.id for t in nodes}
    consumers: dict[int, list[int]] = {}
    for t in nodes:
        for s in t.srcs:
            if s.id in ids:
                consumers.setdefault(s.id, []).append(t.id)
    out: dict[int, str | None] = {}
    # consumers are always built after their sources, so ids descend from consumer to source
    for t in sorted(nodes, key=lambda n: n.id, reverse=True):
        m = _GROUP_RE.match(t.name)
        if m:
            out[t.id] = m.group(1)
        elif t.op in LEAF_OPS or t.name == f"{t.op}_{t.id}":
            gs = {out.get(c) for c in consumers.get(t.id, ())}
            out[t.id] = gs.pop() if len(gs) == 1 else None
        else:
            out[t.id] = None
    return out


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _shape(x: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, x)) + ("," if len(x) == 1 else "") + ")"


def node_label_lines(t: Tensor, mem, step: int | None) -> list[str]:
    """The lines a node's DOT label shows (the HTML shows the same facts)."""
    lines = [t.name, f"{t.op} {list(t.shape)} {t.dtype.short}"]
    if not t.is_owner:  # views, and writes into another buffer (cpy, set_rows)
        if writes_into(t):
            lines.append(f"writes {t.storage.name}: strides {_shape(t.strides)} offset {t.offset}")
        else:
            lines.append(f"strides {_shape(t.strides)} offset {t.offset} of {t.storage.name}")
    if t.id in mem.offsets:
        where = f"arena @{mem.offsets[t.id]} +{mem.sizes[t.id]}"
        if t.id in mem.inplace:
            where += " (in place)"
        lines.append(where)
    if step is not None:
        lines.append(f"step {step}")
    return lines


def beside(tensors: Iterable[Tensor], step: dict[int, int]) -> dict[int, int]:
    """Where to draw memory from outside the arena: each weight, KV-cache buffer, input, or view of
    one, maps to the id of the first compute node (by schedule ``step``) that reads it, directly or
    through views. Drawing it beside that node keeps a graph's hundreds of weights from forming
    one very wide top row."""
    tensors = list(tensors)
    consumers: dict[int, list[Tensor]] = {}
    for t in tensors:
        for s in t.srcs:
            consumers.setdefault(s.id, []).append(t)
    best: dict[int, tuple[int, int]] = {}
    for t in sorted(tensors, key=lambda n: n.id, reverse=True):  # consumers before their sources
        if node_kind(t) == "compute" or memory_class(t) == "arena":
            continue
        cands = [(step[c.id], c.id) if c.id in step else best[c.id]
                 for c in consumers.get(t.id, ()) if c.id in step or c.id in best]
        if cands:
            best[t.id] = min(cands)
    return {k: v[1] for k, v in best.items()}


def to_dot(g: Graph, extra: dict[int, dict] | None = None, clusters: bool = True) -> str:
    """DOT text of the needed part of ``g``.

    Compute nodes are filled by op family; views are dashed ellipses labelled with strides, offset
    and base buffer; weights grey boxes, KV-cache buffers (``cache.*``) lilac boxes, inputs white
    boxes; outputs have a double border. Data edges are solid, hazard-ordering edges dashed red
    (labelled with the buffer). Nodes of one layer (name prefix ``layers.{i}.``) form a cluster;
    weights, caches and inputs sit beside their first reader (:func:`beside`).
    ``extra`` (node id -> dict, e.g. from a profiling backend) adds ``kernel`` and ``time_us`` to labels.
    """
    plan = g.plan()
    mem = plan.memory
    step = {n.id: i for i, n in enumerate(plan.order)}
    nxg = g.to_networkx()
    tensors = [d["tensor"] for _, d in nxg.nodes(data=True)]
    groups = node_groups(tensors) if clusters else {}
    outputs = {o.id for o in g.outputs}
    extra = extra or {}

    decl: dict[str | None, list[str]] = {}
    for t in tensors:
        kind = node_kind(t)
        lines = node_label_lines(t, mem, step.get(t.id))
        x = extra.get(t.id) or {}
        if x.get("kernel"):
            lines.append(f"kernel {x['kernel']}")
        if x.get("time_us") is not None:
            lines.append(f"{x['time_us']} us")
        attrs = [f'label="{_esc(chr(10).join(lines))}"']
        if kind == "persistent":
            mc = memory_class(t)
            attrs.append(f'shape=box, style="filled,rounded", fillcolor="{KIND_COLORS[mc]}"')
        elif kind == "input":
            attrs.append('shape=box, style="filled,bold", fillcolor="#ffffff"')
        elif kind == "view":
            attrs.append("style=dashed")
        else:
            fill = FAMILY_COLORS.get(node_family(t), OTHER_COLOR)
            attrs.append(f'shape=box, style="filled,rounded", fillcolor="{fill}"')
        if t.id in outputs:
            attrs.append("peripheries=2, penwidth=2")
        decl.setdefault(groups.get(t.id), []).append(f"n{t.id} [{', '.join(attrs)}];")

    lines = ["digraph tinygraph {",
             "  graph [rankdir=TB, newrank=true, fontname=Helvetica, fontsize=11];",
             "  node [fontname=Helvetica, fontsize=10];",
             '  edge [color="#555555", fontname=Helvetica, fontsize=9];']
    for grp, ds in decl.items():
        if grp is None:
            lines.extend("  " + d for d in ds)
            continue
        lines.append(f'  subgraph "cluster_{_esc(grp)}" {{')
        lines.append(f'    label="{_esc(grp)}"; style="rounded"; color="#9aa7b8";')
        lines.extend("    " + d for d in ds)
        lines.append("  }")
    rows: dict[int, list[int]] = {}
    for f, a in beside(tensors, step).items():
        rows.setdefault(a, []).append(f)
    for a, fs in rows.items():
        lines.append(f"  {{ rank=same; n{a}; " + " ".join(f"n{f};" for f in sorted(fs)) + " }")
    for a, b, data in nxg.edges(data=True):
        if data.get("kind") == "hazard":
            lines.append(f'  n{a} -> n{b} [style=dashed, color=red, fontcolor=red, '
                         f'label="hazard {_esc(str(data.get("buffer", "")))}"];')
        else:
            lines.append(f"  n{a} -> n{b};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def profile_table(g: Graph, times: dict[int, float], top: int = 15) -> str:
    """The ``top`` slowest nodes of a profiled run of ``g`` (``times``: node id -> microseconds),
    then the time per op and the total."""
    nodes = {n.id: n for n in g.plan().order}
    total = sum(times.values()) or 1e-9
    rows = sorted(((t, nodes[i]) for i, t in times.items() if i in nodes), key=lambda r: -r[0])
    lines = [f"{'us':>9}  {'%':>5}  {'op':<11} {'shape':<18} name"]
    for t, n in rows[:top]:
        lines.append(f"{t:9.1f}  {100 * t / total:5.1f}  {n.op:<11} {str(list(n.shape)):<18} {n.name}")
    per_op: dict[str, list[float]] = {}
    for t, n in rows:
        per_op.setdefault(n.op, []).append(t)
    lines.append("per op: " + ", ".join(f"{op} {sum(v):.0f} us ({len(v)})"
                                        for op, v in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))))
    lines.append(f"total {total:.0f} us over {len(rows)} nodes")
    return "\n".join(lines)
