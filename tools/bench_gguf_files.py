#!/usr/bin/env python3
"""tinygraph on given GGUF files, measured as tools/bench.py measures (the peer: llama-bench on
the same files, run beside it in the same device call).

For each file: load with its own tensor types (``load_model(path, dtype="float16")``), decode
(``--prompt`` random tokens, ``--new-tokens`` greedy tokens past any end-of-text, median of
``--runs`` after warm-up) and a ``--prefill`` token forward pass; one markdown table, JSON with
``--json``.

    PYTHONPATH=tools python3 tools/bench_gguf_files.py /tmp/llgguf/*.gguf [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tinygraph import measure_decode, measure_prefill  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import numpy as np

    from tinygraph.models import load_model
    rows = []
    for f in args.files:
        t0 = time.perf_counter()
        m = load_model(f, dtype="float16", backend="cuda", max_context=max(args.prefill, args.prompt + args.new_tokens) + 8)
        load_s = time.perf_counter() - t0
        use = m.memory_usage()
        rng = np.random.default_rng(0)
        V = m.config.vocab_size
        dec = measure_decode(m, args, [int(i) for i in rng.integers(3, V, args.prompt)])
        pre = measure_prefill(m, args, [int(i) for i in rng.integers(3, V, args.prefill)])
        rows.append({"file": f.name, "load_s": load_s, "weights": use["weights"], "weight_types": use["weight_types"],
                     "decode_tok_s": dec["median_decode_tok_s"], "prefill_tok_s": pre["median_tok_s"],
                     "decode_runs": dec["decode_tok_s"], "prefill_runs": pre["tok_s"]})
        m.close()
    print("| file | weights GB | types | decode tok/s | prefill-%d tok/s |" % args.prefill)
    print("|---|---|---|---|---|")
    for r in rows:
        types = ", ".join(f"{k} {v}" for k, v in sorted(r["weight_types"].items()))
        print(f"| {r['file']} | {r['weights'] / 1e9:.3f} | {types} | {r['decode_tok_s']:.1f} | {r['prefill_tok_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
