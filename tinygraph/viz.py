"""Look at a graph: a summary, and files to read it in (text table, Graphviz DOT/SVG, and one
self-contained interactive HTML page).

>>> from tinygraph.viz import graph_summary, write_graph_files
>>> graph_summary(g)["compute_nodes"]                      # kernels per step on the CUDA backend
>>> write_graph_files(g, "out/viz", stem="decode")         # decode.txt, decode.dot, (decode.svg), decode.html

The HTML page embeds the graph as JSON (see :func:`graph_data`): one entry per needed node with
its op, layout (shape, dtype, strides, view offset), base buffer, arena placement and schedule step,
and one per edge of ``g.to_networkx()`` (``kind`` = ``"data"`` or ``"hazard"``). A backend that
knows more about each node (``kernel``, ``launch``, ``time_us``) passes ``extra={node_id: {...}}``;
those keys are added to the node's entry, shown in the details panel, and ``time_us`` is summed
in the summary bar.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from .dump import (FAMILY_COLORS, KIND_COLORS, OTHER_COLOR, is_cache_name, memory_class, node_family,
                   node_groups, node_kind, to_dot)
from .graph import Graph
from .ops import OPS
from .schedule import writes_into


def written_tensors(t) -> list:
    """The memory a node writes besides its own result: cpy/set_rows destinations, rope_store's and attention_store's caches."""
    if not writes_into(t):
        return []
    return [t.srcs[i] for i in OPS[t.op].written_srcs()]
from .tensor import Tensor
from .util import format_bytes

FORMATS = ("txt", "dot", "svg", "html")
#: node-entry keys the JSON always has; ``extra`` keys with these names are kept under ``"extra"``
CORE_KEYS = frozenset({"id", "name", "op", "kind", "family", "memory", "shape", "dtype", "itemsize", "strides",
                       "offset", "contiguous", "nbytes", "storage", "buffer", "step", "arena", "params", "srcs",
                       "group", "output", "side_effect", "writes", "written", "extra"})
DOT_TIMEOUT_S = 120


def _jsonable(x: Any) -> Any:
    """Params as JSON: tuples become lists, NumPy scalars/arrays plain values, NaN/inf strings."""
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, Tensor):
        return {"tensor": x.id, "name": x.name}
    tolist = getattr(x, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    return repr(x)


def _needed(g: Graph) -> tuple[list[Tensor], Any]:
    nxg = g.to_networkx()
    return [d["tensor"] for _, d in nxg.nodes(data=True)], nxg


def _summary(g: Graph, tensors: list[Tensor], nxg, groups: dict, extra: Mapping[int, Mapping] | None) -> dict:
    mem = g.plan().memory
    kinds = [node_kind(t) for t in tensors]
    persist = [t for t in tensors if t.op == "persistent"]
    times = [float(x["time_us"]) for x in (extra or {}).values()
             if isinstance(x, Mapping) and x.get("time_us") is not None]
    hazard = sum(1 for _, _, d in nxg.edges(data=True) if d.get("kind") == "hazard")
    return {
        "nodes": len(tensors),
        "compute_nodes": kinds.count("compute"),
        "views": kinds.count("view"),
        "persistent_buffers": len(persist),
        "inputs": kinds.count("input"),
        "outputs": len(g.outputs),
        "side_effects": len(g.side_effects),
        "edges": nxg.number_of_edges(),
        "data_edges": nxg.number_of_edges() - hazard,
        "hazard_edges": hazard,
        "layers": len({v for v in groups.values() if v is not None}),
        "arena_peak_bytes": mem.peak,
        "arena_total_bytes": mem.total,
        "weight_bytes": sum(t.nbytes for t in persist if not is_cache_name(t.name)),
        "kv_cache_bytes": sum(t.nbytes for t in persist if is_cache_name(t.name)),
        "total_time_us": sum(times) if times else None,
    }


def graph_summary(g: Graph, extra: Mapping[int, Mapping] | None = None) -> dict:
    """Counts and sizes of the needed part of ``g``: ``nodes`` (every needed node: compute nodes,
    views, persistent buffers and inputs; :func:`node_count_text` words it),
    ``compute_nodes`` (what a backend launches: kernels per token on CUDA), ``views``,
    ``persistent_buffers``, ``inputs``, ``outputs``, ``side_effects``, ``edges``/``data_edges``/
    ``hazard_edges``, ``layers`` (groups ``layers.{i}``), ``arena_peak_bytes``/``arena_total_bytes``
    (with and without reuse), ``weight_bytes`` (persistent buffers the graph touches, not named
    ``cache.*``), ``kv_cache_bytes`` (those named ``cache.*``), ``total_time_us`` (sum of
    ``extra[id]["time_us"]``; None when not profiled)."""
    tensors, nxg = _needed(g)
    return _summary(g, tensors, nxg, node_groups(tensors), extra)


def graph_data(g: Graph, extra: Mapping[int, Mapping] | None = None) -> dict:
    """The JSON-able description of ``g`` that the HTML page embeds: ``{"summary", "nodes",
    "edges", "colors"}``.

    Each node: ``id``, ``name``, ``op``, ``kind`` (persistent/input/view/compute), ``family`` (op family,
    or the kind), ``memory`` (weight/kv_cache/input/arena), ``shape``, ``dtype``, ``itemsize``,
    ``strides`` and ``offset`` (elements), ``contiguous``, ``nbytes``, ``storage`` (id of the node owning
    the memory) and ``buffer`` (its name), ``step`` (schedule position of compute nodes, else null),
    ``arena`` (``{"offset", "size", "inplace_of", "lifetime": [first, last]}`` for nodes the planner
    placed, else null), ``params``, ``srcs`` (ids), ``group`` (``layers.{i}`` or null), ``output``,
    ``side_effect``, ``writes`` (writes memory of ``buffer``: ``cpy``, ``set_rows``), ``written`` (each
    memory written besides the node's result: ``buffer``, ``storage`` id, ``memory`` class, ``offset``,
    ``shape``, ``strides``; e.g. ``attention_store``'s two KV caches), plus the keys
    of ``extra[id]`` (``kernel``, ``launch``, ``time_us``, ...; a key that clashes with one of these
    goes under ``"extra"``); ``kernel`` defaults to the names in ``g.kernels`` (CUDA runs). Each edge: ``src``, ``dst``, ``kind``
    (``"data"``/``"hazard"``) and, for hazards, ``buffer``."""
    plan = g.plan()
    mem = plan.memory
    step = {n.id: i for i, n in enumerate(plan.order)}
    tensors, nxg = _needed(g)
    groups = node_groups(tensors)
    outputs = {o.id for o in g.outputs}
    effects = {s.id for s in g.side_effects}
    extra = extra or {}
    nodes = []
    for t in tensors:
        arena = None
        if t.id in mem.offsets:
            arena = {"offset": mem.offsets[t.id], "size": mem.sizes[t.id], "inplace_of": mem.inplace.get(t.id),
                     "lifetime": list(mem.lifetimes.get(t.id, (step.get(t.id), step.get(t.id))))}
        node = {
            "id": t.id, "name": t.name, "op": t.op, "kind": node_kind(t), "family": node_family(t),
            "memory": memory_class(t), "shape": list(t.shape), "dtype": t.dtype.name, "itemsize": t.dtype.itemsize,
            "strides": list(t.strides), "offset": t.offset, "contiguous": t.is_contiguous, "nbytes": t.nbytes,
            "storage": t.storage.id, "buffer": t.storage.name, "step": step.get(t.id), "arena": arena,
            "params": _jsonable(t.params), "srcs": [s.id for s in t.srcs], "group": groups.get(t.id),
            "output": t.id in outputs, "side_effect": t.id in effects, "writes": writes_into(t),
            "written": [{"buffer": w.storage.name, "storage": w.storage.id, "memory": memory_class(w),
                         "offset": w.offset, "shape": list(w.shape), "strides": list(w.strides)}
                        for w in written_tensors(t)],
        }
        if g.kernels.get(t.id):  # what the CUDA backend launched for it (Graph.kernels)
            node["kernel"] = " ".join(g.kernels[t.id])
        x = extra.get(t.id)
        if x:
            for k, v in x.items():
                if k in CORE_KEYS:
                    node.setdefault("extra", {})[k] = _jsonable(v)
                else:
                    node[k] = _jsonable(v)
        nodes.append(node)
    edges = []
    for a, b, d in nxg.edges(data=True):
        e = {"src": a, "dst": b, "kind": d.get("kind", "data")}
        if "buffer" in d:
            e["buffer"] = d["buffer"]
        edges.append(e)
    return {"summary": _summary(g, tensors, nxg, groups, extra), "nodes": nodes, "edges": edges,
            "colors": {"family": FAMILY_COLORS, "memory": KIND_COLORS, "other": OTHER_COLOR}}


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can appear."""
    s = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def to_html(g: Graph, title: str | None = None, before: Graph | None = None,
            extra: Mapping[int, Mapping] | None = None, before_extra: Mapping[int, Mapping] | None = None) -> str:
    """One self-contained HTML page (inline CSS/JS, no network) showing ``g``; with ``before``, a
    toggle switches between ``before`` and ``g`` (e.g. around a fusion pass)."""
    from .viz_html import render_page
    payload = {"title": title or "tinygraph graph", "graphs": {"after": graph_data(g, extra)}}
    if before is not None:
        payload["graphs"]["before"] = graph_data(before, before_extra)
    return render_page(payload["title"], _script_json(payload))


class GraphFiles(dict):
    """``write_graph_files``' result: format -> path written (``None`` for a format skipped);
    ``notes[format]`` says why it was skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: dict[str, str] = {}


def _formats(formats: Iterable[str] | str) -> list[str]:
    fs = [f.strip().lower().lstrip(".") for f in (formats.split(",") if isinstance(formats, str) else formats)]
    bad = [f for f in fs if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown graph format(s) {bad}; choose from {', '.join(FORMATS)}")
    return fs


def write_svg(dot_path: Path, svg_path: Path, timeout: float = DOT_TIMEOUT_S) -> str | None:
    """Render ``dot_path`` with Graphviz ``dot``; returns None on success, else why it did not."""
    exe = shutil.which("dot")
    if exe is None:
        return "Graphviz 'dot' is not installed"
    try:
        r = subprocess.run([exe, "-Tsvg", str(dot_path), "-o", str(svg_path)], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"Graphviz 'dot' took longer than {timeout:.0f} s"
    if r.returncode != 0:
        return f"Graphviz 'dot' failed: {(r.stderr or '').strip()[:200]}"
    return None


def write_graph_files(g: Graph, out_dir: str | Path, stem: str = "graph",
                      formats: Iterable[str] | str = ("txt", "dot", "html"), title: str | None = None,
                      before: Graph | None = None, extra: Mapping[int, Mapping] | None = None) -> GraphFiles:
    """Write ``{stem}.txt`` (``g.dump()``), ``{stem}.dot`` (:func:`tinygraph.dump.to_dot`),
    ``{stem}.svg`` (from the DOT, when Graphviz ``dot`` is installed; otherwise ``files["svg"]`` is
    None and ``files.notes["svg"]`` says why) and ``{stem}.html`` (:func:`to_html`) into ``out_dir``.
    ``formats``: any of txt, dot, svg, html (svg comes with dot). Returns format -> path."""
    fs = _formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = GraphFiles()
    if "txt" in fs:
        p = out / f"{stem}.txt"
        p.write_text(g.dump() + "\n")
        files["txt"] = p
    if "dot" in fs or "svg" in fs:
        p = out / f"{stem}.dot"
        p.write_text(to_dot(g, extra))
        if "dot" in fs:
            files["dot"] = p
        svg = out / f"{stem}.svg"
        why = write_svg(p, svg)
        if why is None:
            files["svg"] = svg
        else:
            files["svg"] = None
            files.notes["svg"] = why
        if "dot" not in fs:
            p.unlink()
    if "html" in fs:
        p = out / f"{stem}.html"
        p.write_text(to_html(g, title=title, before=before, extra=extra), encoding="utf-8")
        files["html"] = p
    return files


def model_step_graph(model, T: int = 1, start: int = 0, fuse: bool = True) -> Graph:
    """The graph a loaded model (``tinygraph.models.load_model``) runs for one step over ``T``
    tokens, ending in the argmax of the last position's logits: ``model.step_graph(T, "argmax",
    fuse=fuse)``. Positions are graph inputs, so ``start`` (where the step begins) does not change
    the graph; it is accepted for the callers that name it."""
    g, _, _ = model.step_graph(T, "argmax", fuse=fuse)
    return g


def node_count_text(s: Mapping) -> str:
    """The one way tinygraph counts a graph's nodes (the page's summary bar says the same):
    ``'547 nodes in all (153 compute, 150 views, 242 weights/KV-cache buffers, 2 inputs)'``, from
    :func:`graph_summary`'s dict. "In all" is every needed node, leaves included; ``Graph.nodes``
    is shorter, as persistent buffers and their views belong to no graph."""
    return (f"{s['nodes']} nodes in all ({s['compute_nodes']} compute, {s['views']} views, "
            f"{s['persistent_buffers']} weights/KV-cache buffers, {s['inputs']} inputs)")


def summary_line(s: Mapping) -> str:
    """One line from :func:`graph_summary`'s dict."""
    line = (f"{node_count_text(s)}; {s['compute_nodes']} compute nodes = kernels per step; "
            f"{s['hazard_edges']} hazard edges; arena peak {format_bytes(s['arena_peak_bytes'])}, "
            f"weights {format_bytes(s['weight_bytes'])}, KV cache {format_bytes(s['kv_cache_bytes'])}")
    if s.get("total_time_us") is not None:
        line += f", {s['total_time_us'] / 1000:.3f} ms"
    return line
