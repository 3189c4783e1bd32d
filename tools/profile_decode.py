#!/usr/bin/env python3
"""Greedy decode rate and per-kernel time per token of a checkpoint, for whichever tinygraph is
on ``sys.path`` (dev tooling: needs torch and a GPU) -- so two revisions can be compared in one
device call by running this file under each one's ``PYTHONPATH``.

The rate: 128 new tokens after a 32-token prompt, timed as generate(129) - generate(1) (the
prompt's prefill and first token cancel), median of ``--reps``. Then one generate(129) under
torch.profiler (CUPTI sees the CUDA-graph replays): every kernel's summed time and launches per
token. With programmatic dependent launch on (the default) a kernel's time includes its wait for
the previous one (``tools/profile_batch.py``'s caveat); ``TINYGRAPH_PDL=0`` gives times that add up.

    PYTHONPATH=<old revision> python tools/profile_decode.py CKPT --json old.json --label old
    python tools/profile_decode.py CKPT --json new.json --label new
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict


def measure(ckpt: str, reps: int = 7, prompt_len: int = 32, new: int = 128) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import tinygraph
    from tinygraph.models import load_model

    m = load_model(ckpt, dtype="float16", backend="cuda", max_context=prompt_len + new + 32)
    prompt = list(range(5, 5 + prompt_len))
    kw = dict(temperature=0, ignore_eos=True)

    def timed(n: int) -> float:
        t = time.perf_counter()
        m.generate(prompt, max_new_tokens=n, **kw)
        return time.perf_counter() - t
    for _ in range(3):
        timed(new + 1)
    rates = [new / (timed(new + 1) - timed(1)) for _ in range(reps)]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m.generate(prompt, max_new_tokens=new + 1, **kw)
    k: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k[e.name][0] += e.device_time_total
            k[e.name][1] += 1
    m.close()
    per = new + 1
    return {"tinygraph": tinygraph.__file__, "pdl": os.environ.get("TINYGRAPH_PDL", "1"), "rates": rates,
            "median_tok_s": statistics.median(rates), "sum_us_per_token": sum(v[0] for v in k.values()) / per,
            "kernels_us_per_token": sorted(((n, v[0] / per, v[1] / per) for n, v in k.items()), key=lambda x: -x[1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--json", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    res = {"label": args.label, **measure(args.checkpoint, args.reps)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print(f"{args.label} pdl={res['pdl']}: {res['median_tok_s']:.1f} tok/s, kernels {res['sum_us_per_token']:.1f} µs/token")
    for n, us, c in res["kernels_us_per_token"][:14]:
        print(f"  {us:8.2f} µs  x{c:5.1f}  {n[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
