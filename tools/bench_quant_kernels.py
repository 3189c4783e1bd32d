#!/usr/bin/env python3
"""Time the block-quantized decode GEMV (cuda_src/linear_q.cu) on model layer shapes.

For each (model layer, ggml type) one fused GEMV launch (one row, f16 activations) of each
``--kernels`` family (``linear_q``: float32 products with the staged row; ``linear_q8a``: the row
rounded to int8, dp4a; ``linear_qmma``: float16 weights and row on tensor cores; ``linear_qr``: each
lane's slice of the row in registers as two int8 planes; see cuda_src/linear_q.cu, linear_qmma.cu,
linear_qr.cu) is timed as CUDA-graph replays (median), rotating over enough weight copies that every call reads
its weights from DRAM rather than L2; GB/s counts the weight bytes. The f16 ``linear_gemv`` of
the same shape is the baseline. With ``--dequant``, also timed: ``dequant`` of the whole weight
to f16 (the prefill path's extra pass; GB/s counts bytes read + written). Weights are random blocks (timing does not
depend on values).

    PYTHONPATH=. python3 tools/bench_quant_kernels.py [--types q8_0,q4_k,q6_k] [--models Qwen3-8B]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygraph import dtypes  # noqa: E402
from tinygraph.backends.cuda import driver, kernels, quant_launch  # noqa: E402
from tinygraph.backends.cuda.select import QUANT_GEMVS, qr_ok  # noqa: E402
from bench_linear import SHAPES, Buf, _compile_one  # noqa: E402

Arg = kernels.Arg


def _print_probe(f) -> None:
    """The last call's stamps (cuda_src/linear_qr.cu, TG_LQR_PROBE): per point, the median and the
    latest block, µs after the earliest block started."""
    from cuda.bindings import driver as cu

    err, dptr, size = cu.cuModuleGetGlobal(f.module.handle, b"lqr_probe")
    if err != cu.CUresult.CUDA_SUCCESS:
        print(f"    probe: no lqr_probe symbol ({err})")
        return
    t = np.zeros(int(size) // 8, np.uint64)
    driver.memcpy_dtoh(t, int(dptr))
    t = t.reshape(-1, 8)[:, [0, 1, 5, 6, 7, 2, 3, 4]].astype(np.int64)  # in the order the kernel passes them
    t = t[t[:, 0] > 0]
    if not len(t):
        return
    t = t[t[:, 0] >= t[:, 0].max() - 1_000_000]  # the last call's blocks (stamps of earlier calls are older)
    d = (t - t[:, 0].min()) / 1e3
    names = ("start", "waited", "staged", "rounded", "met", "row ready", "rows in", "end")
    print("    probe (µs, median / last block): " + ", ".join(
        f"{n} {np.median(d[:, i]):.2f}/{d[:, i].max():.2f}" for i, n in enumerate(names) if (t[:, i] > 0).all())
        + f"  [{len(t)} blocks]")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="q8_0,q4_0,q4_k,q5_k,q6_k")
    ap.add_argument("--models", default="SmolLM2,TinyLlama,Qwen3-8B")
    ap.add_argument("--kernels", default="linear_q,linear_q8a", help="GEMV families to time")
    ap.add_argument("--dequant", action="store_true", help="also time the prefill path's dequantization")
    ap.add_argument("--variants", default="", help="--variant-kernel built with other options, timed too: "
                    "'NAME:-DTG_LQ_ROWS=4 -DTG_LQ_UNROLL=1;NAME2:...'")
    ap.add_argument("--variant-kernel", default="linear_q8a", choices=QUANT_GEMVS,
                    help="the GEMV family the --variants rebuild")
    ap.add_argument("--pdl", action="store_true",
                    help="launch as the models do (programmatic dependent launch: a kernel loads its weights "
                         "before its predecessor ends); without it each call waits for the last")
    ap.add_argument("--probe", action="store_true",
                    help="also run linear_qr built with -DTG_LQR_PROBE=1 (as any --variants with that option) "
                         "and print where a call's time goes "
                         "(thread 0 of each block stamps %%globaltimer: start, after the wait, row staged, rounded, "
                         "block met, row in registers, first weight rows in shared memory, end; µs from the first block's start)")
    ap.add_argument("--layers", default="", help="only these layers (comma list, e.g. gate_up,down)")
    args = ap.parse_args(argv)
    dev = driver.get_device(0)
    lib = kernels.KernelLibrary(dev)
    variants = {"probe": ["-DTG_LQR_PROBE=1"]} if args.probe else {}
    if args.probe:
        args.variant_kernel = "linear_qr"
    for item in filter(None, args.variants.split(";")):
        name, opts = item.split(":", 1)
        variants[name] = opts.split()
    if variants:  # compile them side by side (the disk cache then serves the libraries)
        import multiprocessing as mp
        src = kernels.KERNELS[f"{args.variant_kernel}_q4_k"].file  # the family's source, from the registry
        jobs = [(src, lib.arch, o) for o in variants.values()]
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            pool.map(_compile_one, jobs)
    vlibs = {n: kernels.KernelLibrary(dev, options=o) for n, o in variants.items()}
    s = driver.Stream()
    rng = np.random.default_rng(0)
    print(f"{'model':10s} {'layer':8s} {'K':>6s} {'N':>6s} {'type':6s} {'kernel':10s} {'us':>8s} {'GB/s':>7s}")
    for model, layer, K, N, norm, act, has_res in SHAPES:
        if model not in args.models.split(",") or (args.layers and layer not in args.layers.split(",")):
            continue
        x = Buf((1, 1, K), np.float16, rng=rng)
        nw = Buf((K,), np.float16, rng=rng, scale=0.2, shift=1.0)
        nout = N // 2 if act == 3 else N
        res = Buf((1, 1, nout), np.float16, rng=rng) if has_res else None
        y = Buf((1, 1, nout), np.float16)
        for qt in ["f16"] + args.types.split(","):
            if qt != "f16" and K % dtypes.as_dtype(qt).block:
                continue
            nbytes = N * K * 2 if qt == "f16" else N * dtypes.as_dtype(qt).nbytes(K)
            copies = max(2, -(-(200 << 20) // nbytes))
            ws = []
            for _ in range(copies):
                b = driver.DeviceBuffer(nbytes, what="bench weight")
                raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
                if qt == "f16":  # finite halves
                    raw = (rng.standard_normal(N * K, dtype=np.float32) * 0.02).astype(np.float16).view(np.uint8)
                b.upload(raw)
                ws.append(b)

            kerns = [("linear", lib)] if qt == "f16" else [(k, lib) for k in args.kernels.split(",")]
            kerns += [] if qt == "f16" else [(f"{args.variant_kernel}/{n}", vl) for n, vl in vlibs.items()]
            kerns = [(k, kl) for k, kl in kerns if not k.startswith("linear_qr") or qr_ok(qt, K)]
            for kern, klib in kerns:
                def run(i, qt=qt, ws=ws, kern=kern, klib=klib):
                    w = ws[i % len(ws)]
                    kw = dict(bias=None, res=res.arg() if res else None, norm=norm,
                              norm_w=nw.buf.ptr if norm else None, eps=1e-5, act=act, stream=s,
                              weight_ready=args.pdl)
                    if qt == "f16":
                        klib.linear("f16", y.arg(), x.arg(), w.ptr, K, N, K, **kw)
                    else:
                        quant_launch.linear_q(klib, qt, "f16", y.arg(), x.arg(), w.ptr,
                                              dtypes.as_dtype(qt).nbytes(K), N, K,
                                              kernel=kern.split("/")[0], **kw)
                us = driver.graph_time_us(run, s, 20, 15)
                print(f"{model:10s} {layer:8s} {K:6d} {N:6d} {qt:6s} {kern:10s} {us:8.1f} {nbytes / us / 1e3:7.0f}",
                      flush=True)
                if "-DTG_LQR_PROBE=1" in variants.get(kern.partition("/")[2], []):  # a probe build
                    _print_probe(klib.get(f"linear_qr_{qt}", "f16"))
            if qt != "f16" and args.dequant:  # the prefill path: the whole weight dequantized to f16 scratch
                out = driver.DeviceBuffer(N * K * 2, what="bench dequant")

                def deq(i, qt=qt, ws=ws, out=out):
                    quant_launch.dequant(lib, qt, "f16", Arg(out.ptr, (N, K)), ws[i % len(ws)].ptr,
                                         dtypes.as_dtype(qt).nbytes(K), None, stream=s)
                dus = driver.graph_time_us(deq, s, 10, 9)
                print(f"{model:10s} {layer:8s} {K:6d} {N:6d} {qt:6s} {'dequant':10s} {dus:8.1f} "
                      f"{(nbytes + N * K * 2) / dus / 1e3:7.0f} (read + written)", flush=True)
                out.free()
            for b in ws:
                b.free()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
