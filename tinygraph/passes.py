"""Rewrite passes over a built graph. Each pass mutates the graph in place and returns how many
rewrites it made; ``optimize`` runs them all. Dump the graph before and after to see the change.

``fuse_attention``: ``matmul(q, kt) -> softmax(causal, past) -> matmul(p, v)`` becomes one
``attention`` node when the scores and probabilities have no other reader. The fused op never
materialises the [.., T, S] scores and reads only the keys the mask lets through, so a decode
graph may span the whole KV cache.
"""
from __future__ import annotations

from collections import Counter

from .graph import Graph
from .tensor import Tensor


def _readers(g: Graph) -> Counter:
    """How many times each node id is read: as a source, as an output, or as the owner of a view."""
    c: Counter = Counter()
    for n in g.nodes:
        for s in n.srcs:
            c[s.id] += 1
        if n.storage is not n:
            c[n.storage.id] += 1
    for o in g.outputs:
        c[o.id] += 1
    return c


def _replace(g: Graph, old: Tensor, new: Tensor, dead: set[int]) -> None:
    """Put ``new`` where ``old`` was (same id, same place in build order) and point every
    reference to ``old`` at ``new``; drop the nodes in ``dead``."""
    new.id = old.id
    nodes = []
    for n in g.nodes:
        if n is old:
            nodes.append(new)
        elif n.id not in dead:
            if any(s is old for s in n.srcs):
                n.srcs = tuple(new if s is old else s for s in n.srcs)
            if n.storage is old:
                n.storage = new
            nodes.append(n)
    g.nodes = nodes
    g.outputs = [new if o is old else o for o in g.outputs]
    g._plan = None


def fuse_attention(g: Graph) -> int:
    """Fuse matmul -> softmax -> matmul chains into ``attention`` nodes. Returns the count."""
    from . import ops
    count = 0
    readers = _readers(g)
    for mix in list(g.nodes):
        if mix.op != "matmul":
            continue
        probs, v = mix.srcs
        if probs.op != "softmax" or readers[probs.id] != 1 or probs.srcs[0].op != "matmul":
            continue
        scores = probs.srcs[0]
        if readers[scores.id] != 1 or scores.dtype != mix.dtype or probs.dtype != mix.dtype:
            continue
        q, kt = scores.srcs
        p = probs.params
        past = probs.srcs[1] if p["past_src"] else p["past"]
        name = mix.name.rsplit(".", 1)[0] + ".attention" if "." in mix.name else f"attention_{mix.id}"
        fused = ops.attention(q, kt, v, p["scale"], p["causal"], past, name=name)
        g.nodes.pop()  # ops.attention appended it; _replace puts it at mix's place instead
        if fused.shape != mix.shape:  # broadcasting differs from the chain's: leave it alone
            continue
        _replace(g, mix, fused, {scores.id, probs.id})
        count += 1
    return count


PASSES = (fuse_attention,)


def optimize(g: Graph) -> dict[str, int]:
    """Run every pass; returns ``{pass name: rewrites}``."""
    return {p.__name__: p(g) for p in PASSES}
