#!/usr/bin/env python3
"""TFLOP/s of the prefill GEMMs on the GPU: matmul_tc3 (mma.sync, cuda_src/matmul.cu), the Hopper
wgmma + TMA kernel (cuda_src/gemm_wgmma.cu, sm_90a) at both tile widths, and optionally cuBLAS through torch (dev tooling only), C[M, N] = A[M, K] @ W[N, K]^T, timed as CUDA-graph replays
(driver.graph_time_us; medians), on Qwen3-8B's prefill shapes by default, and the tile width
``select.gemm_tile`` would pick. Every wgmma output is compared with matmul_tc3's (max |difference|
relative to max |C|).

    python tools/bench_gemm.py [--m 512,2048] [--shapes N:K,...] [--dtype f16]
        [--torch] [--json OUT]
"""
from __future__ import annotations

import argparse

import numpy as np

# Qwen3-8B: qkv (4096 + 2 x 1024), o, gate_up (2 x 12288), down
SHAPES = "6144:4096,4096:4096,24576:4096,4096:12288"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", default="512", help="rows (prompt tokens), comma-separated")
    ap.add_argument("--shapes", default=SHAPES, help="N:K,... (default Qwen3-8B's projections)")
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16"])
    ap.add_argument("--torch", action="store_true", help="also time torch.nn.functional.linear (cuBLAS)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    from tinygraph.backends.cuda import driver, gemm_launch, kernels
    from tinygraph.backends.cuda.kernels import Arg
    dev = driver.get_device(0)
    from tinygraph.backends.cuda.select import DeviceCaps, gemm_tile
    from tinygraph.dtypes import as_dtype
    base = kernels.KernelLibrary(dev)
    caps = DeviceCaps.of(base.arch, dev)
    npd = as_dtype(args.dtype).np
    s = driver.Stream()
    rng = np.random.default_rng(0)
    print(f"{getattr(dev, 'name', 'GPU')}, {args.dtype}; TFLOP/s (median of CUDA-graph replays)")
    rows = []
    for M in (int(m) for m in args.m.split(",")):
        for shape in args.shapes.split(","):
            N, K = (int(v) for v in shape.split(":"))
            flops = 2.0 * M * N * K
            bufs = {}
            for name, shp in (("a", (M, K)), ("w", (N, K)), ("c", (M, N)), ("c2", (M, N))):
                b = driver.DeviceBuffer(int(np.prod(shp)) * 2, what=name)
                if name in ("a", "w"):
                    x = (rng.standard_normal(shp) * (K ** -0.25)).astype(np.float32)
                    b.upload(x.astype(npd))
                bufs[name] = b
            A = Arg(bufs["a"].ptr, (M, K))
            Bt = Arg(bufs["w"].ptr, (K, N), (1, K))
            t = driver.graph_time_us(lambda i: base.matmul(args.dtype, Arg(bufs["c"].ptr, (M, N)), A, Bt, stream=s), s)
            ref = np.empty((M, N), npd)
            bufs["c"].download(ref)
            ref = ref.astype(np.float32)
            line = f"M={M:5d} N={N:6d} K={K:6d}: matmul_tc3 {flops / t / 1e6:5.0f}"
            row = {"M": M, "N": N, "K": K, "matmul_tc3": flops / t / 1e6}
            for bn in (128, 192, 256):
                def run(i, bn=bn):
                    gemm_launch.gemm_tma(base, args.dtype, Arg(bufs["c2"].ptr, (M, N)), A, bufs["w"].ptr, K, N,
                                         bn=bn, stream=s)
                t = driver.graph_time_us(run, s)
                out = np.empty((M, N), npd)
                bufs["c2"].download(out)
                err = float(np.max(np.abs(out.astype(np.float32) - ref)) / max(np.max(np.abs(ref)), 1e-30))
                line += f" | tma{bn} {flops / t / 1e6:5.0f} (err {err:.1e})"
                row[f"tma{bn}"] = flops / t / 1e6
            row["picked"] = f"tma{gemm_tile(M, N, caps)}"
            line += f" | picked {row['picked']}"
            if args.torch:
                row["cublas"] = _torch_tflops(M, N, K, args.dtype)
                line += f" | cuBLAS {row['cublas']:5.0f}"
            print(line, flush=True)
            rows.append(row)
            for b in bufs.values():
                b.free()
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"device": getattr(dev, "name", "GPU"), "dtype": args.dtype, "unit": "TFLOP/s", "rows": rows},
                      f, indent=1)
    return 0


def _torch_tflops(M: int, N: int, K: int, dtype: str) -> float:
    import torch
    dt = torch.float16 if dtype == "f16" else torch.bfloat16
    a = torch.randn(M, K, device="cuda", dtype=dt)
    w = torch.randn(N, K, device="cuda", dtype=dt)
    f = torch.nn.functional.linear
    for _ in range(3):
        f(a, w)
    ts = []
    for _ in range(15):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(20):
            f(a, w)
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / 20 * 1e3)
    return 2.0 * M * N * K / float(np.median(ts)) / 1e6


if __name__ == "__main__":
    raise SystemExit(main())
