#!/usr/bin/env python3
"""Time one decode step's attention (the ``attention_store`` op: q/k norm, RoPE, the KV write and
the attention over the cache) on model head layouts and context depths, for each decode kernel:
``gqa`` (cuda_src/attention_gqa.cu, a key head's query group per block on tensor cores) and
``pipe`` (cuda_src/attention.cu, one query head per block).

Each call is one kernel launch at position ``d`` (a cache of d + 1 rows read), timed as
CUDA-graph replays (median), rotating over enough cache copies (as a model's layers) that the
keys and values come from DRAM, not L2. GB/s counts the key and value bytes read; the floor is
that many bytes at the device's copy bandwidth (``--bandwidth``, GB/s). ``--gqa-blocks 2,3``
times attn_gqa at other numbers of blocks per multiprocessor (select.GQA_BLOCKS_PER_SM),
``--variants 'PF0:-DTG_GQA_PREFETCH=0'`` attn_gqa built with other options.

    PYTHONPATH=. python3 tools/bench_attention.py [--models qwen3-8b,qwen3-0.6b] [--contexts 2048,8192,32768]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygraph.backends.cuda import driver, kernels, select  # noqa: E402
from tinygraph.backends.cuda.kernels import Arg, StoreArgs, f32, i32, ptr  # noqa: E402
from tinygraph.backends.cuda.limits import COUNTER_BYTES  # noqa: E402
from tinygraph.backends.cuda.select import DeviceCaps, attn_splits  # noqa: E402

#: query heads, key heads, head size, q/k norm
HEADS = {"smollm2": (9, 3, 64, False), "tinyllama": (32, 4, 64, False), "qwen3-0.6b": (16, 8, 128, True),
         "qwen3-8b": (32, 8, 128, True), "llama-3-8b": (32, 8, 128, False)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,qwen3-0.6b,qwen3-8b")
    ap.add_argument("--contexts", default="128,512,2048,8192,32768")
    ap.add_argument("--gqa-blocks", default="", help="also time attn_gqa at these blocks per SM, e.g. 3,4")
    ap.add_argument("--variants", default="", help="attn_gqa built with other options: 'NAME:-DX=1;NAME2:...'")
    ap.add_argument("--kernels", default="gqa,pipe")
    ap.add_argument("--bandwidth", type=float, default=4200.0, help="copy bandwidth for the floor, GB/s")
    args = ap.parse_args(argv)
    dev = driver.get_device(0)
    lib = kernels.KernelLibrary(dev)
    caps = DeviceCaps.of(lib.arch, dev)
    runs = [(k, lib, None) for k in args.kernels.split(",")]
    runs += [(f"gqa/b{b}", lib, int(b)) for b in filter(None, args.gqa_blocks.split(","))]
    for item in filter(None, args.variants.split(";")):
        name, opts = item.split(":", 1)
        runs.append((f"gqa/{name}", kernels.KernelLibrary(dev, options=opts.split()), None))
    s = driver.Stream()
    rng = np.random.default_rng(0)
    work = driver.DeviceBuffer(64 << 20, what="bench work")
    driver.memset_d8(work, 0, 64 << 20)
    print(f"{'model':11s} {'ctx':>6s} {'kernel':8s} {'us':>8s} {'GB/s':>6s} {'floor us':>8s} {'splits':>6s}")
    for model in args.models.split(","):
        H, KV, hd, norm = HEADS[model]
        G = H // KV
        q = driver.DeviceBuffer(H * hd * 2, what="q")
        kv = driver.DeviceBuffer(2 * KV * hd * 2, what="k, v")
        q.upload((rng.standard_normal(H * hd) * 0.5).astype(np.float16))
        kv.upload((rng.standard_normal(2 * KV * hd) * 0.5).astype(np.float16))
        nw = driver.DeviceBuffer(2 * hd * 2, what="norm w")
        nw.upload(np.ones(2 * hd, np.float16))
        out = driver.DeviceBuffer(H * hd * 2, what="out")
        for ctx in (int(c) for c in args.contexts.split(",")):
            S = ctx + 1
            nbytes = 2 * KV * S * hd * 2
            copies = max(2, -(-(256 << 20) // nbytes))
            caches = []
            for _ in range(copies):
                b = driver.DeviceBuffer(nbytes, what="kv cache")
                b.upload((rng.standard_normal(nbytes // 2) * 0.5).astype(np.float16))
                caches.append(b)
            pos = driver.DeviceBuffer(4, what="pos")
            pos.upload(np.array([ctx], np.int32))
            for kern, klib, blocks in runs:
                saved = select.GQA_BLOCKS_PER_SM
                select.GQA_BLOCKS_PER_SM = blocks or saved
                sp = attn_splits(1, H, S, hd, hd, 0, G if kern.startswith("gqa") else 0, "f16", caps)
                select.GQA_BLOCKS_PER_SM = saved
                store = "attn_gqa_store" if sp.kind == "gqa" else "attn_store"
                f = klib.function(f"{store}_f16_{sp.maxd}")
                cache_td = Arg(0, (1, KV, S, hd)).td
                o = Arg(out.ptr, (KV, G, 1, hd))
                qa = Arg(q.ptr, (1, 1, H, hd))
                ka = Arg(kv.ptr, (1, 1, KV, hd))
                va = Arg(kv.ptr + KV * hd * 2, (1, 1, KV, hd))

                def run(i, f=f, sp=sp, o=o, qa=qa, ka=ka, va=va):
                    c = caches[i % len(caches)]
                    sa = StoreArgs(ka.ptr, ka.td, va.ptr, va.td, c.ptr, cache_td, c.ptr + nbytes // 2, cache_td,
                                   0, nw.ptr if norm else 0, nw.ptr + hd * 2 if norm else 0, 1e-6, 1e6, 2,
                                   int(norm), int(norm), 0)
                    driver.launch(f, sp.grid, 128, [ptr(work.ptr + COUNTER_BYTES), ptr(work.ptr), o.addr, o.td,
                                                    qa.addr, qa.td, sa, f32(hd ** -0.5), ptr(pos.ptr), i32(0),
                                                    i32(sp.chunk)], stream=s)
                us = driver.graph_time_us(run, s, 20, 15)
                read = 2 * KV * S * hd * 2
                print(f"{model:11s} {ctx:6d} {kern:8s} {us:8.1f} {read / us / 1e3:6.0f} "
                      f"{read / args.bandwidth / 1e3:8.1f} {sp.grid[2]:6d}", flush=True)
            for b in caches:
                b.free()
            pos.free()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
