#!/usr/bin/env python3
"""TFLOP/s of the prefill GEMMs on the GPU: matmul_tc3 (mma.sync, cuda_src/matmul.cu) and the
Hopper wgmma kernel (cuda_src/gemm_wgmma.cu, sm_90a), C[M, N] = A[M, K] @ W[N, K]^T, f16, timed as
CUDA-graph replays (driver.graph_time_us), on Qwen3-8B's prefill-512 shapes by default.

    python tools/bench_gemm.py [--m 512] [--shapes N:K,...] [--dtype f16]
"""
from __future__ import annotations

import argparse

import numpy as np

# Qwen3-8B: qkv (4096 + 2 x 1024), o, gate_up (2 x 12288), down
SHAPES = "6144:4096,4096:4096,24576:4096,4096:12288"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=512, help="rows (prompt tokens)")
    ap.add_argument("--shapes", default=SHAPES, help="N:K,... (default Qwen3-8B's projections)")
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16"])
    args = ap.parse_args(argv)
    from tinygraph.backends.cuda import driver, gemm_launch, kernels
    from tinygraph.backends.cuda.kernels import Arg
    dev = driver.get_device(0)
    lib = kernels.KernelLibrary(dev)
    s = driver.Stream()
    rng = np.random.default_rng(0)
    npd = np.float16 if args.dtype == "f16" else None
    print(f"{dev.name if hasattr(dev, 'name') else 'GPU'}, {args.dtype}, M={args.m}")
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split(":"))
        M = args.m
        bufs = {}
        for name, shp in (("a", (M, K)), ("w", (N, K)), ("c1", (M, N)), ("c2", (M, N))):
            b = driver.DeviceBuffer(int(np.prod(shp)) * 2, what=name)
            if name in ("a", "w"):
                x = (rng.standard_normal(shp) * (K ** -0.25)).astype(np.float32)
                b.upload(x.astype(npd) if npd else _bf16(x))
            bufs[name] = b
        A = Arg(bufs["a"].ptr, (M, K))
        Bt = Arg(bufs["w"].ptr, (K, N), (1, K))
        flops = 2.0 * M * N * K
        t_tc = driver.graph_time_us(lambda i: lib.matmul(args.dtype, Arg(bufs["c1"].ptr, (M, N)), A, Bt, stream=s), s)
        t_wg = driver.graph_time_us(lambda i: gemm_launch.gemm_wgmma(lib, args.dtype, Arg(bufs["c2"].ptr, (M, N)), A,
                                                                     bufs["w"].ptr, K, N, stream=s), s)
        c1, c2 = np.empty((M, N), np.uint16), np.empty((M, N), np.uint16)
        bufs["c1"].download(c1)
        bufs["c2"].download(c2)
        same = np.mean(c1 == c2)
        print(f"N={N:6d} K={K:6d}: matmul {t_tc:8.1f} us {flops / t_tc / 1e6:6.0f} TFLOP/s | "
              f"wgmma {t_wg:8.1f} us {flops / t_wg / 1e6:6.0f} TFLOP/s | outputs equal: {same:.3f}", flush=True)
        for b in bufs.values():
            b.free()
    return 0


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


if __name__ == "__main__":
    raise SystemExit(main())
