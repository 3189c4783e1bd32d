#!/usr/bin/env python3
"""Where a replayed decode step's time goes, by subtraction: the step timed with kernels left out.

There is no per-node timer inside a captured CUDA graph (and no nsys in the device image), and
kernels launched one by one (``tools/profile_step.py``) neither overlap nor pay what they pay in
the replay. Here each ``--skip`` set (``;``-separated; each a comma list of kernel-name prefixes,
``TINYGRAPH_PROFILE_SKIP`` in ``tinygraph/backends/cuda/launch.py``) runs in a fresh process
whose launches of those kernels are dropped, and its greedy decode rate (as ``tools/bench.py``
measures it) is set beside the full step's. The difference is what those kernels cost in the
replay, overlap with their neighbours included. The outputs of a run with kernels left out are
wrong (its tokens are not compared); ids stay in range (argmax of NaN logits is an index).

    python tools/profile_skip.py M.gguf --skip "attn;linear_qr;rms_norm,rope_store;argmax"
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_sets(text: str) -> list[str]:
    """``"attn;linear_qr,linear_qmma"`` -> ``["attn", "linear_qr,linear_qmma"]`` (blanks dropped)."""
    return [",".join(p.strip() for p in s.split(",") if p.strip()) for s in text.split(";") if s.strip()]


def rows(full_tok_s: float, results: dict[str, float]) -> list[tuple[str, float, float, float]]:
    """(set, tok/s, ms per token, ms per token saved against the full step) per left-out set."""
    full_ms = 1e3 / full_tok_s
    return [(name, r, 1e3 / r, full_ms - 1e3 / r) for name, r in results.items()]


def _child(args) -> int:
    import numpy as np

    from bench_tinygraph import measure_decode
    from tinygraph.models import load_model
    with load_model(args.model, backend="cuda", dtype=args.dtype,
                    max_context=args.prompt + args.new_tokens + 8) as m:
        rng = np.random.default_rng(0)
        prompt = [int(i) for i in rng.integers(3, m.config.vocab_size, args.prompt)]
        dec = measure_decode(m, args, prompt)
    print(json.dumps({"tok_s": dec["median_decode_tok_s"]}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="checkpoint or GGUF (default: the default model)")
    ap.add_argument("--skip", default="attn;linear", help="';'-separated sets of kernel-name prefixes to leave out")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    sets = [""] + parse_sets(args.skip)
    results: dict[str, float] = {}
    for s in sets:
        cmd = [sys.executable, __file__, "--child", "--dtype", args.dtype, "--prompt", str(args.prompt),
               "--new-tokens", str(args.new_tokens), "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--warmup-seconds", str(args.warmup_seconds)] + ([args.model] if args.model else [])
        env = dict(os.environ, TINYGRAPH_PROFILE_SKIP=s)
        print(f"profile_skip: {'full step' if not s else 'without ' + s} ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr[-4000:])
            print(f"profile_skip: the run without {s!r} failed (exit {out.returncode})", file=sys.stderr)
            return 1
        results[s] = json.loads(out.stdout.strip().splitlines()[-1])["tok_s"]
    full = results.pop("")
    print(f"full step: {full:.1f} tok/s, {1e3 / full:.3f} ms a token")
    print("| left out | tok/s | ms a token | ms a token saved |")
    print("|---|---|---|---|")
    for name, r, ms, saved in rows(full, results):
        print(f"| {name} | {r:.1f} | {ms:.3f} | {saved:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
