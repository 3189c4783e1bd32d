#!/usr/bin/env python3
"""Tensor-parallel decode on several GPUs (one process each): decode tok/s and greedy ids of a
random-weight bench config split over the launcher's ranks, against the same model on one GPU.

    python tools/bench_tp.py --config qwen3-8b --work /tmp/tp                  # 1 GPU (the baseline)
    python -m tinygraph.launch --gpus 2 tools/bench_tp.py --config qwen3-8b --work /tmp/tp
    python -m tinygraph.launch --gpus 4 tools/bench_tp.py --config qwen3-8b --work /tmp/tp
    python -m tinygraph.launch --gpus 4 tools/bench_tp.py --config llama3-70b --dtype bfloat16 --work /data/tp

The checkpoint (``tools/bench_configs.py``'s config, random weights, numpy + safetensors) is
written once to ``--work/<config>`` by rank 0; the other ranks wait for it. Decode tok/s is
measured as in ``tools/bench.py``: a 32-token prompt, ``--new`` greedy tokens, (new - 1) /
(total time - time to the first token, both from the same run), the median of ``--runs``.
Rank 0 appends one JSON line to ``--work/results.jsonl`` (ranks, tok/s, the ids, the device)
and says whether the ids equal the 1-GPU run's, if that is already there, and the share of the
bandwidth floor (every GPU reading its part of the weights once per token at ``--bandwidth``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_configs as bc  # noqa: E402

from tinygraph.distributed import DistEnv  # noqa: E402


def _checkpoint(work: Path, name: str, rank: int, seed: int, tiny: bool, timeout: float = 3600.0) -> Path:
    """The config's checkpoint directory, written by rank 0 (the others wait for its marker)."""
    name = name + ("-tiny" if tiny else "")
    d, done = work / name, work / f"{name}.done"
    if rank == 0 and not done.exists():
        d.mkdir(parents=True, exist_ok=True)
        print(f"bench_tp: writing {name}'s random-weight checkpoint to {d}", file=sys.stderr, flush=True)
        hf = bc.CONFIGS[name.removesuffix("-tiny")]["hf"]
        bc.write_numpy_checkpoint(bc.tiny(hf) if tiny else hf, d, seed=seed)
        done.touch()
    end = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"rank {rank}: no checkpoint at {d} after {timeout:g} s")
        time.sleep(1.0)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="qwen3-8b", choices=sorted(bc.CONFIGS), help="bench config (default qwen3-8b)")
    ap.add_argument("--work", type=Path, required=True, help="directory for the checkpoint and results.jsonl")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--new", type=int, default=128, help="new tokens per run (default 128)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="weights' seed")
    ap.add_argument("--backend", default="cuda", choices=["cuda", "numpy"],
                    help="numpy: one process only (a check of the tool, not a measurement)")
    ap.add_argument("--tiny", action="store_true", help="a small config of the same family (tests)")
    ap.add_argument("--bandwidth", type=float, default=4.2e12,
                    help="bytes/s one GPU copies (default 4.2e12: the H200's measured copy rate); the floor is "
                         "ranks * bandwidth / the weights' bytes tokens per second")
    args = ap.parse_args(argv)
    env = DistEnv.from_env()
    ranks, rank = (env.world_size, env.rank) if env else (1, 0)
    path = _checkpoint(args.work, args.config, rank, args.seed, args.tiny)

    from tinygraph.models import load_model
    with load_model(path, backend=args.backend, dtype=args.dtype, max_context=512,
                    tensor_parallel=ranks if ranks > 1 else None) as m:
        ids = ((np.arange(32) * 7 + 11) % m.config.vocab_size).tolist()
        m.generate(ids, 8, temperature=0, ignore_eos=True)  # warm-up: compiles, captures
        first, total, out = [], [], []
        for _ in range(args.runs):  # the first token's time and the total, from the same run
            out, t = [], time.perf_counter()
            for tok in m.generate_stream(ids, args.new, temperature=0, ignore_eos=True):
                if not out:
                    first.append(time.perf_counter() - t)
                out.append(tok)
            total.append(time.perf_counter() - t)
        rate = (args.new - 1) / statistics.median([b - a for a, b in zip(first, total)])
        device = getattr(getattr(m.session.backend, "device", None), "name", args.backend)
    if rank == 0:
        hf = bc.CONFIGS[args.config]["hf"]
        floor = ranks * args.bandwidth / (bc.param_count(bc.tiny(hf) if args.tiny else hf) * 2)
        row = {"config": args.config + ("-tiny" if args.tiny else ""), "backend": args.backend, "dtype": args.dtype,
               "ranks": ranks, "decode_tok_s": rate, "floor_tok_s": floor, "pct_of_floor": 100 * rate / floor,
               "ttft_s": statistics.median(first), "new": args.new, "runs": args.runs, "device": str(device),
               "ids": out}
        res = args.work / "results.jsonl"
        one = [json.loads(x) for x in res.read_text().splitlines()] if res.exists() else []
        one = [r for r in one if all(r.get(k) == row[k] for k in ("config", "backend", "dtype")) and r["ranks"] == 1]
        with res.open("a") as f:
            f.write(json.dumps(row) + "\n")
        same = "" if not one or ranks == 1 else f"; ids equal to 1 GPU's: {one[-1]['ids'] == row['ids']}" \
            f"; {rate / one[-1]['decode_tok_s']:.2f}x its rate"
        print(f"{row['config']} {args.dtype} on {ranks} GPU(s): {rate:.1f} tok/s decode "
              f"({row['pct_of_floor']:.0f}% of the {floor:.0f} tok/s floor){same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
