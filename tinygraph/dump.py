"""Graph export: Graphviz DOT (the text table is ``Graph.dump()``)."""
from __future__ import annotations

from .graph import Graph
from .ops import OPS

_COLORS = {"matmul": "#f4a582", "norm": "#92c5de", "softmax": "#d6604d", "rope": "#b2abd2",
           "elementwise": "#d9f0d3", "copy": "#fee090", "reduce": "#bababa"}


def to_dot(g: Graph) -> str:
    """DOT text of the needed part of ``g``: compute nodes coloured by op family, persistent
    buffers and inputs as boxes, views as dashed ellipses; hazard edges dashed red."""
    plan = g.plan()
    nxg = g.to_networkx()
    lines = ["digraph tinygraph {", "  rankdir=TB; node [fontname=Helvetica, fontsize=10];"]
    for nid, data in nxg.nodes(data=True):
        t = data["tensor"]
        label = f"{t.name}\\n{t.op} {list(t.shape)} {t.dtype.short}"
        if t.op == "view" or t.op == "cpy":
            label += f"\\nstrides {list(t.strides)} offset {t.offset} of {t.storage.name}"
        if t.id in plan.memory.offsets:
            label += f"\\narena @{plan.memory.offsets[t.id]}"
        if t.op in ("persistent", "input"):
            style = 'shape=box, style=filled, fillcolor="#cccccc"' if t.op == "persistent" else \
                'shape=box, style=filled, fillcolor="#ffffff"'
        elif t.op == "view":
            style = "style=dashed"
        else:
            style = f'style=filled, fillcolor="{_COLORS.get(OPS[t.op].family, "#ffffff")}"'
        lines.append(f'  n{nid} [label="{label}", {style}];')
    for a, b, data in nxg.edges(data=True):
        extra = ' [style=dashed, color=red, label="hazard"]' if data.get("kind") == "hazard" else ""
        lines.append(f"  n{a} -> n{b}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"
