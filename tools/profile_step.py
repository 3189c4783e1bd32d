#!/usr/bin/env python3
"""Where one decode step's (or, with ``--tokens T``, one T-token prefill step's) time goes, node by
node, for one model or two side by side.

Each model decodes ``--context`` tokens of a prompt, then its step graph of ``--tokens`` tokens
(default 1: a decode step; a prefill step's LM head runs on its last row) is run ``--runs`` times with ``Session.compute(..., times=...)``: on CUDA every node is launched on its own between
two events (no replay, no overlap between kernels: the sum is what the kernels take alone), on
NumPy timed on the host. Printed: per op, the median summed time and node count; the slowest
nodes with the kernels they launched (``Graph.kernels``); the total, and next to it the replayed
step's own time (decode: ``model.generate`` tok/s; prefill: the median wall time of the step run
as the captured graph), so that the gap between "kernels alone" and "in the
captured graph" is visible. With ``--compare OTHER`` the same for a second model, in columns.

Caveat (H200, 2026-12-02): on CUDA the "alone" time of a small kernel is dominated by the host's
launch loop between the two events (~75 µs a node for TinyLlama's 5-10 µs GEMVs), so it ranks
large nodes but cannot explain small ones; ``tools/bench_quant_kernels.py`` times kernels as
CUDA-graph replays instead.

    python tools/profile_step.py --model M.gguf --compare M-F16.gguf --backend cuda
    python tools/profile_step.py --model M.gguf --tokens 512 --context 0 # a 512-token prefill
    python tools/profile_step.py --backend numpy --runs 2          # the default model on the CPU
    python tools/profile_step.py --model M.gguf --timeline T.txt   # + the persistent kernel's timeline

``--timeline FILE`` (CUDA, decode): one more decode step with persistent segments on
(``TINYGRAPH_PERSISTENT``'s mode) and their kernel stamping each task (``persist_linear_stamps``);
FILE gets each segment's timeline (``tinygraph/task_timeline.py``: per node, then per block and
SM), and the tool fails if a task found its needs met before the tasks it needs were done.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygraph.models import load_model  # noqa: E402


def profile(path: str | None, backend: str, dtype: str, context: int, runs: int, quantize: str | None,
            tokens: int = 1) -> dict:
    """Per-node median times (µs) of one step of ``tokens`` tokens at position ``context``, the
    ops and kernels of the nodes, and the replayed rate (tokens per second)."""
    with load_model(path, backend=backend, dtype=dtype, quantize=quantize,
                    max_context=context + tokens + 64) as m:
        prompt = (np.arange(context, dtype=np.int32) * 7 + 11) % 1000
        if context:
            m.step(prompt, 0)
        g, ids, pos = m.step_graph(tokens, "logits" if tokens == 1 else "argmax")
        feeds = {ids: (np.arange(tokens, dtype=np.int32) * 13 + 5) % 1000,
                 pos: np.arange(context, context + tokens, dtype=np.int32)}
        m.session.compute(g, feeds)  # warm-up (compiles, sizes scratch)
        samples: dict[int, list[float]] = defaultdict(list)
        for _ in range(runs):
            t: dict[int, float] = {}
            m.session.compute(g, feeds, times=t)
            for k, v in t.items():
                samples[k].append(v)
        nodes = {n.id: n for n in g.plan().order}
        per_node = {k: statistics.median(v) for k, v in samples.items()}
        if tokens == 1:
            t0 = time.perf_counter()
            out = m.generate(list(prompt[:8]), max_new_tokens=32, temperature=0, ignore_eos=True)
            rate = len(out) / (time.perf_counter() - t0)
        else:  # the step replayed (its outputs come back to the host, so each call waits for it)
            m.session.compute(g, feeds)
            secs = []
            for _ in range(runs):
                t0 = time.perf_counter()
                m.session.compute(g, feeds)
                secs.append(time.perf_counter() - t0)
            rate = tokens / statistics.median(secs)
        return {"name": Path(path).name if path else "default model", "nodes": nodes, "us": per_node,
                "kernels": dict(g.kernels), "weights": m.memory_usage().get("weight_types"), "tok_s": rate,
                "tokens": tokens}


def report(profs: list[dict], top: int) -> str:
    lines = []
    ops = sorted({n.op for p in profs for n in p["nodes"].values()})
    head = f"{'op':20s}" + "".join(f" {p['name'][:28]:>30s}" for p in profs)
    lines += [head, "-" * len(head)]
    for op in ops:
        row = f"{op:20s}"
        for p in profs:
            ids = [i for i, n in p["nodes"].items() if n.op == op]
            row += f" {sum(p['us'].get(i, 0.0) for i in ids):20.1f} us ({len(ids):3d})"
        lines.append(row)
    tot = f"{'total (alone)':20s}" + "".join(f" {sum(p['us'].values()):20.1f} us      " for p in profs)
    rate = f"{'replayed step':20s}" + "".join(
        f" {1e6 / p['tok_s']:20.1f} us/tok  " if p["tokens"] == 1 else f" {p['tokens'] * 1e6 / p['tok_s']:20.1f} us/step "
        for p in profs)
    lines += [tot, rate]
    for p in profs:
        lines.append(f"\n{p['name']}: weights {p['weights']}; slowest {top} nodes")
        for i in sorted(p["us"], key=p["us"].get, reverse=True)[:top]:
            n = p["nodes"][i]
            ks = " ".join(p["kernels"].get(i, [])) or "-"
            lines.append(f"  {p['us'][i]:9.1f} us  {n.op:16s} {n.name[:36]:36s} {str(n.shape):16s} {ks}")
    return "\n".join(lines)


def timeline(path: str | None, dtype: str, context: int, out: Path) -> list[str]:
    """One decode step at position ``context`` with persistent segments on and stamped; their
    timelines written to ``out``. Returns the order violations (empty when the counters held)."""
    from tinygraph import task_timeline
    from tinygraph.backends.cuda import persistent
    was = persistent.ENABLED
    persistent.ENABLED = True
    try:
        with load_model(path, backend="cuda", dtype=dtype, max_context=context + 64) as m:
            be = m.session.backend
            persistent.record_timeline(be)
            g, ids, pos = m.step_graph(1, "logits")
            m.session.compute(g, {ids: np.array([5], np.int32), pos: np.array([context], np.int32)})
            texts, bad = [], []
            order = g.plan().order
            for seg, stamps in persistent.read_timeline(be):
                names = [n.name for n in order[seg.start:seg.stop]]
                texts.append(task_timeline.report(seg.tables, stamps, names, f"segment at node {seg.start}: "))
                bad += [f"segment at node {seg.start}: {v}" for v in task_timeline.order_violations(seg.tables, stamps)]
            if not texts:
                texts.append("no persistent segments in this step (no run of >= 2 one-row fused linears)")
            out.write_text("\n\n".join(texts) + "\n")
            return bad
    finally:
        persistent.ENABLED = was


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint or GGUF (default: the default model)")
    ap.add_argument("--compare", default=None, help="a second model, profiled the same way")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--quantize", default=None, help="quantize --model while loading (e.g. q8_0)")
    ap.add_argument("--context", type=int, default=32, help="tokens in the cache before the step")
    ap.add_argument("--tokens", type=int, default=1, help="tokens of the step (1: decode; more: a prefill step)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--timeline", default=None, metavar="FILE",
                    help="CUDA decode: write the persistent kernel's per-task timeline of one step to FILE")
    args = ap.parse_args(argv)
    if args.timeline:
        from tinygraph.backends import cuda_available
        ok, why = cuda_available()
        if args.backend not in ("cuda", "auto") or not ok:
            ap.error(f"--timeline needs the CUDA backend (the persistent kernel stamps its tasks on the GPU)"
                     + ("" if ok else f": {why}"))
    profs = [profile(args.model, args.backend, args.dtype, args.context, args.runs, args.quantize, args.tokens)]
    if args.compare:
        profs.append(profile(args.compare, args.backend, args.dtype, args.context, args.runs, None, args.tokens))
    print(report(profs, args.top))
    if args.timeline:
        bad = timeline(args.model, args.dtype, args.context, Path(args.timeline))
        print(f"timeline: {args.timeline}" + "".join(f"\n  ORDER VIOLATION {v}" for v in bad))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
