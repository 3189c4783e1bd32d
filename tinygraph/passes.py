"""Rewrite passes over a built graph. Each pass mutates the graph in place and returns how many
rewrites it made; ``optimize`` runs them all. Dump the graph before and after to see the change.

``fuse_attention``: ``matmul(q, kt) -> softmax(causal, past, window) -> matmul(p, v)`` becomes
one ``attention`` node when the scores and probabilities have no other reader (Gemma 2's
``matmul -> scale -> softcap -> softmax -> matmul`` too: the cap becomes the op's ``softcap``). The fused op never
materialises the [.., T, S] scores and reads only the keys the mask (and sliding window) lets
through, so a decode graph may span the whole KV cache.

``fuse_rope_store``: ``rope(q)``, ``rope(k)``, ``set_rows(k cache, rope(k))`` and
``set_rows(v cache, v)`` over the same positions become one ``rope_store`` node (RoPE + KV-slot
write in one kernel).

``fuse_attention_store`` (decode graphs: one query token): an ``attention`` over a KV cache,
the write of this step's keys/values into it (``rope_store`` or two ``set_rows``) and the q/k
RMS norms before RoPE become one ``attention_store`` node; an ``attention_store`` built without
RoPE (``models.paged``'s decode steps) takes in the ``rope`` nodes of its q and k, and their
norms.

``fuse_linear``: ``norm -> matmul(x, transpose(W)) -> + bias -> activation -> + residual``
(any prefix of that chain after the matmul, with swiglu = ``silu(gate view) * up view``) becomes
one ``linear`` node: on CUDA one kernel per layer of a decode step instead of up to six.
"""
from __future__ import annotations

from collections import Counter

from .graph import Graph
from .ops.registry import optional_srcs
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


def fuse_attention(g: Graph) -> int:
    """Fuse matmul -> softmax -> matmul chains into ``attention`` nodes. Returns the count."""
    from . import ops
    count = 0
    readers = _readers(g)
    c = _consumers(g)
    for mix in list(g.nodes):
        if mix.op != "matmul":
            continue
        probs, v = mix.srcs
        if probs.op != "softmax" or readers[probs.id] != 1:
            continue
        p = probs.params
        scale, cap, capped = p["scale"], None, _capped_scores(probs.srcs[0], readers)
        if capped is not None:  # Gemma 2: matmul -> scale -> softcap -> softmax(scale 1)
            if p["scale"] != 1.0:
                continue
            scores, scale, cap, dead = capped
        else:
            scores, dead = probs.srcs[0], set()
        if scores.op != "matmul" or readers[scores.id] != 1 or scores.dtype != mix.dtype or probs.dtype != mix.dtype:
            continue
        q, kt = scores.srcs
        past = probs.srcs[1] if p["past_src"] else p["past"]
        name = mix.name.rsplit(".", 1)[0] + ".attention" if "." in mix.name else f"attention_{mix.id}"
        with g.detached():
            fused = ops.attention(q, kt, v, scale, p["causal"], past, window=p.get("window"), name=name,
                                  past_rows=p["past"] == -1, softcap=cap)
        if fused.shape != mix.shape:  # broadcasting differs from the chain's: leave it alone
            continue
        _replace(g, c, mix, fused, {scores.id, probs.id} | dead)
        count += 1
    return count


def _capped_scores(x: Tensor, readers: Counter) -> tuple[Tensor, float, float, set[int]] | None:
    """``x = softcap(scale(scores, a), cap)`` with each step read only by the next: (scores, a,
    cap, ids of the scale and softcap nodes); else None. The fused kernels compute the capped
    scores in float32 (the chain rounds them to the storage dtype twice)."""
    if x.op != "softcap" or readers[x.id] != 1 or x.srcs[0].op != "scale":
        return None
    sc = x.srcs[0]
    if readers[sc.id] != 1 or sc.dtype != x.dtype or sc.shape != x.shape or sc.srcs[0].shape != x.shape:
        return None
    return sc.srcs[0], sc.params["scale"], x.params["cap"], {sc.id, x.id}


def _consumers(g: Graph) -> dict[int, list[Tensor]]:
    """Node id -> nodes reading it, plus a ``None`` entry per graph output, so "has exactly one
    reader" can be asked of any node (a view reads its source like any other node)."""
    c: dict[int, list] = {}
    for n in g.nodes:
        for s in n.srcs:
            c.setdefault(s.id, []).append(n)
    for o in g.outputs:
        c.setdefault(o.id, []).append(None)
    return c


def _replace(g: Graph, c: dict, old: Tensor, new: Tensor, dead: set[int], side_effect: bool = False,
             alive: dict | None = None) -> None:
    """``g.replace(old, new, dead, side_effect)`` with the reader index ``c`` (:func:`_consumers`)
    kept true: the dead nodes and ``old`` stop reading their sources, ``new`` reads its own.
    (Recomputing the index after each rewrite made the passes quadratic in the graph's size.)
    ``alive`` (id -> the node now in the graph, for a pass that walks a list of the nodes it
    started with): kept true too."""
    gone = [n for n in g.nodes if n.id in dead] + [old]
    g.replace(old, new, dead, side_effect=side_effect, readers=list(c.get(old.id, ())))
    for d in gone:
        for src in d.srcs:
            readers = c.get(src.id)
            if readers is not None:
                c[src.id] = [r for r in readers if r is not d]
        if d is not old:
            c.pop(d.id, None)
    for src in new.srcs:
        c.setdefault(src.id, []).append(new)
    if alive is not None:
        for i in dead:
            alive.pop(i, None)
        alive[new.id] = new


def _only_reader(c: dict, t: Tensor) -> Tensor | None:
    r = c.get(t.id, [])
    return r[0] if len(r) == 1 else None


def _norm_fusable(c: dict, x: Tensor, mm: Tensor) -> bool:
    """Whether norm ``x`` may be folded into matmul ``mm``: it is x's only reader, or every
    reader of x is a matmul of x by a weight (a quantized file's separate q / k / v of different
    types, a parallel block's attention and MLP inputs): each fused linear then normalises the
    row itself, which costs less than the norm's own kernel and its round trip through memory."""
    if x.dtype != mm.dtype:
        return False
    readers = c.get(x.id, [])
    return all(r is not None and r.op == "matmul" and r.srcs[0] is x and _weight_of(r.srcs[1]) is not None
               and r.dtype == x.dtype for r in readers) and mm in readers


def _weight_of(b: Tensor) -> Tensor | None:
    """The persistent [N, K] matrix W when ``b`` is ``transpose(W)`` (an HF [out, in] weight)."""
    w = b.storage
    if (w.op == "persistent" and w.ndim == 2 and b.ndim == 2 and b.offset == 0
            and b.shape == (w.shape[1], w.shape[0]) and b.strides == (1, w.shape[1])):
        return w
    return None


def _swiglu_tail(c: dict, z: Tensor) -> Tensor | None:
    """``mul(silu(view(z, first half)), view(z, second half))`` -> the mul node, if z feeds only it."""
    readers = c.get(z.id, [])
    if len(readers) != 2 or any(r is None or r.op != "view" for r in readers) or z.ndim < 1:
        return None
    half = z.shape[-1] // 2
    lo = next((r for r in readers if r.offset == z.offset), None)
    hi = next((r for r in readers if r.offset == z.offset + half), None)
    want = z.shape[:-1] + (half,)
    if lo is None or hi is None or lo.shape != want or hi.shape != want or \
            lo.strides != z.strides or hi.strides != z.strides:
        return None
    act = _only_reader(c, lo)
    mul = _only_reader(c, act) if act is not None and act.op == "silu" else None
    if mul is None or mul.op != "mul" or mul.srcs != (act, hi) or _only_reader(c, hi) is not mul:
        return None
    return mul


def fuse_linear(g: Graph) -> int:
    """Fuse norm/matmul/bias/activation/residual chains into ``linear`` nodes. Returns the count."""
    from . import ops
    count = 0
    c = _consumers(g)
    alive = {n.id: n for n in g.nodes}  # id -> the node now in the graph
    for mm in list(g.nodes):
        if mm.op != "matmul" or alive.get(mm.id) is not mm:
            continue
        x, b = mm.srcs
        w = _weight_of(b)
        if w is None or (w.dtype != mm.dtype and not w.dtype.is_quant) or x.dtype != mm.dtype:
            continue
        dead = {mm.id}
        kw: dict = {}
        if x.op in ("rms_norm", "layer_norm") and _norm_fusable(c, x, mm):
            if _only_reader(c, x) is mm:  # else the norm stays for its other matmuls (fused later)
                dead.add(x.id)
            o = optional_srcs(x)
            kw.update(norm="rms" if x.op == "rms_norm" else "layer", eps=x.params["eps"],
                      norm_w=o["w"], norm_b=o.get("b"))
            x = x.srcs[0]
        tail = mm
        nxt = _only_reader(c, tail)
        if nxt is not None and nxt.op == "add":
            other = nxt.srcs[1] if nxt.srcs[0] is tail else nxt.srcs[0]
            if other.is_persistent and other.shape == (mm.shape[-1],) and nxt.shape == mm.shape and \
                    other.dtype == mm.dtype and other.is_contiguous:
                kw["bias"], tail = other, nxt
                dead.add(nxt.id)
        nxt = _only_reader(c, tail)
        if nxt is not None and nxt.op in ("gelu", "silu") and "approximate" not in nxt.params:  # exact GELU: unfused
            kw["act"], tail = nxt.op, nxt
            dead.add(nxt.id)
        elif tail.shape[-1] % 2 == 0 and (mul := _swiglu_tail(c, tail)) is not None:
            kw["act"] = "swiglu"
            dead.update(n.id for n in c[tail.id])
            dead.update({mul.srcs[0].id, mul.id})
            tail = mul
        nxt = _only_reader(c, tail)
        if nxt is not None and nxt.op == "add" and nxt.shape == tail.shape:
            other = nxt.srcs[1] if nxt.srcs[0] is tail else nxt.srcs[0]
            if other is not tail and other.dtype == mm.dtype:
                kw["residual"], tail = other, nxt
                dead.add(nxt.id)
        if tail is mm and "norm" not in kw:
            continue  # a bare matmul: nothing to gain
        with g.detached():
            fused = ops.linear(x, w, name=mm.name, **kw)
        dead.discard(tail.id)
        _replace(g, c, tail, fused, dead, alive=alive)
        count += 1
    return count


def _stored_from(c: dict, st: Tensor) -> Tensor | None:
    """For ``set_rows(cache, permute(x, (1, 0, 2)), rows)``: x, if the permute has no other reader."""
    view = st.srcs[0]
    if view.op != "view" or view.params.get("axes") != (1, 0, 2) or _only_reader(c, view) is not st:
        return None
    return view.srcs[0]


def fuse_rope_store(g: Graph) -> int:
    """Fuse each layer's q/k RoPE and K/V cache writes into one ``rope_store`` node."""
    from . import ops
    count = 0
    c = _consumers(g)
    alive = {n.id: n for n in g.nodes}  # id -> the node now in the graph
    for sk in [n for n in g.nodes if n.op == "set_rows"]:
        if alive.get(sk.id) is not sk:
            continue
        rk = _stored_from(c, sk)
        rows = sk.srcs[1]
        if rk is None or rk.op != "rope" or rk.srcs[1] is not rows or _only_reader(c, rk) is None:
            continue
        def same_rope(r: Tensor) -> bool:
            return r.op == "rope" and r is not rk and r.srcs[1] is rows and r.params == rk.params \
                and r.srcs[2:] == rk.srcs[2:]

        def stored(r: Tensor) -> bool:  # a key rope: its output goes into a cache
            return any(x is not None and x.op == "view" and any(y is not None and y.op == "set_rows"
                                                                 for y in c.get(x.id, [])) for x in c.get(r.id, []))
        # the layer's q rope and V write: the nearest matching nodes in build order
        rq = min((n for n in g.nodes if same_rope(n) and not stored(n)), key=lambda n: abs(n.id - rk.id), default=None)
        sv = min((n for n in g.nodes if n.op == "set_rows" and n is not sk and n.srcs[1] is rows
                  and n.storage is not sk.storage and (v := _stored_from(c, n)) is not None and v.op != "rope"),
                 key=lambda n: abs(n.id - sk.id), default=None)
        if rq is None or sv is None:
            continue
        v = _stored_from(c, sv)
        kc, vc = sk.srcs[2], sv.srcs[2]
        if kc.shape[1:] != vc.shape[1:] or kc.dtype != rk.dtype or vc.dtype != v.dtype:
            continue
        ff = optional_srcs(rk)["freq_factors"]
        p = rk.params
        with g.detached():
            fused = ops.rope_store(rq.srcs[0], rk.srcs[0], v, rows, kc, vc, p["theta"], p["mode"], ff,
                                   name=sk.name.rsplit(".", 1)[0] + ".rope_store" if "." in sk.name else None)
        dead = {rk.id, sk.id, sv.id, sk.srcs[0].id, sv.srcs[0].id}
        _replace(g, c, rq, fused, dead, side_effect=True, alive=alive)
        count += 1
    return count


def _view_chain(t: Tensor, stop) -> list[Tensor] | None:
    """The view nodes from ``t`` down its first sources until ``stop(node)`` holds: [t, ..., last
    view] (the node where stop holds excluded), or None if a non-view comes first."""
    chain = []
    while not stop(t):
        if t.op != "view" or not t.srcs:
            return None
        chain.append(t)
        t = t.srcs[0]
    return chain


def _absorb_norm(c: dict, x: Tensor, reader: Tensor, hd: int) -> tuple[Tensor, dict]:
    """``x``, or its input when ``x`` is an RMS norm over the head (weight [hd] or none) that
    only ``reader`` reads: (tensor, attention_store norm arguments)."""
    if x.op == "rms_norm" and _only_reader(c, x) is reader and x.shape[-1] == hd:
        return x.srcs[0], {"w": optional_srcs(x)["w"], "eps": x.params["eps"], "id": x.id}
    return x, {}


def _norm_args(qn: dict, kn: dict) -> dict | None:
    """``attention_store``'s norm arguments from :func:`_absorb_norm`'s q and k results; None
    when both norms are there with different eps (the op has one eps)."""
    if qn and kn and qn["eps"] != kn["eps"]:
        return None
    kw: dict = {}
    for nm, info in (("q", qn), ("k", kn)):
        if info:
            kw.update({f"{nm}_norm": True, f"{nm}_norm_w": info["w"], "eps": info["eps"]})
    return kw


def fuse_attention_store(g: Graph) -> int:
    """Fuse each one-token ``attention`` over a KV cache with the writes of this step's keys and
    values into that cache (a ``rope_store``, or two ``set_rows``) and the q/k RMS norms before
    RoPE into one ``attention_store`` node. Decode graphs only (one query token)."""
    from . import ops
    count = 0
    c = _consumers(g)
    for a in [n for n in g.nodes if n.op == "attention"]:
        p = a.params
        if not (p["causal"] and p["past_src"]) or p["past"] == -1 or a.ndim != 4 or a.shape[2] != 1:
            continue
        q4, kt, vv, rows = a.srcs[:4]
        kc, vc = kt.storage, vv.storage
        if kc.op != "persistent" or vc.op != "persistent" or kc.ndim != 3 or kc.shape != vc.shape:
            continue
        KV, ctx, hd = kc.shape
        if (kt.shape, kt.strides, kt.offset) != ((KV, 1, hd, ctx), (ctx * hd, 0, 1, hd), 0) or \
                (vv.shape, vv.strides, vv.offset) != ((KV, 1, ctx, hd), (ctx * hd, 0, hd, 1), 0):
            continue
        H = q4.shape[0] * q4.shape[1]
        dead: set[int] = set()
        writes = [n for n in g.nodes if n is not a and any(s.storage is kc or s.storage is vc for s in n.srcs)]
        rs = [n for n in writes if n.op == "rope_store" and n.srcs[4] is kc and n.srcs[5] is vc and n.srcs[3] is rows]
        st = {n.srcs[2].storage.id: n for n in writes if n.op == "set_rows" and n.srcs[1] is rows}
        kw: dict = {}
        if len(writes) == 1 and rs:
            r = rs[0]
            chain = _view_chain(q4, lambda t: t is r)
            views = [n for n in g.nodes if n.storage is r and n is not r]
            if chain is None or {n.id for n in views} != {n.id for n in chain} or \
                    any(x not in chain and x is not a for n in [r] + chain for x in c.get(n.id, [])):
                continue
            q, k, v = r.srcs[:3]
            kw.update(theta=r.params["theta"], mode=r.params["mode"],
                      freq_factors=optional_srcs(r)["freq_factors"])
            q, qn = _absorb_norm(c, q, r, hd)
            k, kn = _absorb_norm(c, k, r, hd)
            dead.update({r.id} | {n.id for n in chain})
        elif len(writes) == 2 and kc.id in st and vc.id in st:
            sk, sv = st[kc.id], st[vc.id]
            k, v = _stored_from(c, sk), _stored_from(c, sv)
            chain = _view_chain(q4, lambda t: t.shape == (1, H, hd))
            if k is None or v is None or chain is None or \
                    any(x not in chain and x is not a for n in chain for x in c.get(n.id, [])):
                continue
            q, qn = _absorb_norm(c, chain[-1].srcs[0], chain[-1], hd) if chain else (q4, {})
            k, kn = _absorb_norm(c, k, sk.srcs[0], hd)
            dead.update({sk.id, sv.id, sk.srcs[0].id, sv.srcs[0].id} | {n.id for n in chain})
        else:
            continue
        norms = _norm_args(qn, kn)
        if norms is None:
            continue
        kw.update(norms)
        dead.update(info["id"] for info in (qn, kn) if info)
        if q.shape != (1, H, hd) or k.shape != (1, KV, hd) or q.dtype != kc.dtype:
            continue
        name = a.name + "_store" if a.name else None
        with g.detached():
            fused = ops.attention_store(q, k, v, rows, kc, vc, p["scale"], window=p.get("window"), name=name,
                                        softcap=p.get("softcap"), **kw)
        _replace(g, c, a, fused, dead, side_effect=True)
        count += 1
    return count + _absorb_rope(g)


def _absorb_rope(g: Graph) -> int:
    """Fold into each ``attention_store`` without RoPE the ``rope`` nodes of its q and k (same
    positions as the store's, same parameters, read by nothing else) and the RMS norms over the
    head before them. Returns the count."""
    from . import ops
    count = 0
    c = _consumers(g)
    for a in [n for n in g.nodes if n.op == "attention_store" and not n.params["rope"]]:
        p, o = a.params, optional_srcs(a)
        q, k, v, pos, kc, vc = a.srcs[:6]
        if not (q.op == k.op == "rope" and q.params == k.params and q.srcs[1:] == k.srcs[1:] and q.srcs[1] is pos
                and _only_reader(c, q) is a and _only_reader(c, k) is a) or p["q_norm"] or p["k_norm"]:
            continue
        hd = kc.shape[2]
        q0, qn = _absorb_norm(c, q.srcs[0], q, hd)
        k0, kn = _absorb_norm(c, k.srcs[0], k, hd)
        kw = _norm_args(qn, kn)
        if kw is None:  # norms of different eps: RoPE alone
            q0, qn, k0, kn, kw = q.srcs[0], {}, k.srcs[0], {}, {}
        with g.detached():
            fused = ops.attention_store(q0, k0, v, pos, kc, vc, p["scale"], q.params["theta"], q.params["mode"],
                                        optional_srcs(q)["freq_factors"], window=p.get("window"), name=a.name,
                                        rows=o["rows"], softcap=p.get("softcap"), **kw)
        _replace(g, c, a, fused, {q.id, k.id} | {info["id"] for info in (qn, kn) if info}, side_effect=True)
        count += 1
    return count


PASSES = (fuse_attention, fuse_rope_store, fuse_attention_store, fuse_linear)


def optimize(g: Graph) -> dict[str, int]:
    """Run every pass; returns ``{pass name: rewrites}``."""
    return {p.__name__: p(g) for p in PASSES}
