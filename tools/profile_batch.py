#!/usr/bin/env python3
"""Where the batched engine's step time goes, kernel by kernel (dev tooling: needs torch and a GPU).

Writes a random-weight float16 checkpoint of a ``tools/bench_configs.py`` config (NumPy builder),
runs ``models.engine.Engine`` on N prompts of 32 random tokens, 128 new tokens each (greedy), the
way ``tools/bench.py --batch`` drives it, twice as warm-up, then once under ``torch.profiler``:
CUPTI records every kernel of the process, the engine's CUDA-graph replays included. Printed per
N: the median step time (steps where all N decode; the clock read after a device sync), the summed
kernel time per step, and the kernels by summed time per step (and launches per step).

Caveat (H200, 2026-12-03): kernels launched with programmatic dependent launch (PDL, the default)
start before their predecessor ends and wait in ``griddepcontrol.wait``; CUPTI counts that wait in
their duration, so the per-kernel sums overlap and can exceed the step (SmolLM2 at N=1: 6.5 ms of
kernels in a 1.8 ms step). ``TINYGRAPH_PDL=0`` turns PDL off, which should give durations that add
up (not measured yet).

    python tools/profile_batch.py smollm2 1,8,64 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_configs as bc  # noqa: E402
from bench_batch import kv_memory_for  # noqa: E402


def profile_sizes(name: str, sizes: list[int], prompt: int = 32, new: int = 128, top: int = 40) -> dict:
    """{N: {"steps", "gpu_us_per_step", "median_step_ms", "kernels": [(name, µs/step, launches/step)]}}."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tinygraph.models import load_model
    from tinygraph.models.engine import Engine, SamplingParams

    hf = bc.CONFIGS[name]["hf"]
    ck = Path(f"/tmp/tinygraph-profile-{name}")
    if not (ck / "model.safetensors").exists():
        bc.write_numpy_checkpoint(hf, ck)
    m = load_model(str(ck), dtype="float16", backend="cuda", max_context=prompt + new)
    # sized as tools/bench.py --batch sizes it: every sequence's whole context, no preemption
    eng = Engine(m, max_batch=max(sizes), kv_memory=kv_memory_for(m, max(sizes), prompt + new, 16), block_size=16)
    eng.warmup()
    rng = np.random.default_rng(0)
    vocab = bc.dims(hf)["vocab"]

    def run(n: int) -> list[float]:
        params = SamplingParams(max_new_tokens=new, temperature=0.0, seed=0, eos=frozenset())
        reqs = [eng.submit(p, params) for p in rng.integers(0, vocab, (n, prompt)).tolist()]
        steps = []
        while not all(r.done for r in reqs):
            t = time.perf_counter()
            eng.step()
            torch.cuda.synchronize()
            steps.append(time.perf_counter() - t)
        return steps

    res: dict[int, dict] = {}
    try:
        for n in sizes:
            for _ in range(2):  # warm-up
                run(n)
            with profile(activities=[ProfilerActivity.CUDA]) as pr:
                steps = run(n)
            k: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
            for e in pr.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    k[e.name][0] += e.device_time_total
                    k[e.name][1] += 1
            total = sum(v[0] for v in k.values())
            full = steps[n // 8 + 2:-4] or steps       # after the prefill ramp, before the tail
            rows = sorted(k.items(), key=lambda kv_: -kv_[1][0])[:top]
            res[n] = {"steps": len(steps), "gpu_us_per_step": total / len(steps),
                      "median_step_ms": 1e3 * statistics.median(full),
                      "kernels": [(nm, v[0] / len(steps), v[1] / len(steps)) for nm, v in rows]}
    finally:
        eng.close()
        m.close()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=sorted(bc.CONFIGS))
    ap.add_argument("sizes", help="numbers of sequences, e.g. 1,8,64")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--top", type=int, default=25, help="kernels printed per N")
    a = ap.parse_args(argv)
    res = profile_sizes(a.model, [int(s) for s in a.sizes.split(",")])
    for n, r in res.items():
        print(f"== {a.model} N={n}: {r['steps']} steps, median step {r['median_step_ms']:.3f} ms, "
              f"kernels {r['gpu_us_per_step']:.0f} us/step")
        for nm, us, cnt in r["kernels"][:a.top]:
            print(f"  {us:9.1f} us  x{cnt:6.1f}  {nm[:90]}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
