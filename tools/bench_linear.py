#!/usr/bin/env python3
"""Time the fused linear kernels (cuda_src/linear.cu) against the unfused kernel sequence.

For decode shapes of SmolLM2-135M, TinyLlama-1.1B and Qwen3-8B (f16, one row), each layer is
timed as (a) one ``linear_gemv`` launch, (b) the unfused sequence the backend would otherwise
run (rms_norm + gemv [+ silu + mul] [+ add]), (c) the bare gemv -- all as CUDA-graph replays
timed with events (median), rotating over enough weight copies that every call reads its
weights from DRAM rather than L2. GB/s counts the weight bytes only.

    PYTHONPATH=. python3 tools/bench_linear.py [--sweep] [--rows] [--json out.json]
    PYTHONPATH=. python3 tools/bench_linear.py --precompile    # fill the kernel cache in parallel

--sweep also times launch variants (block size, grid cap, loads in flight, the specialised
kernels of -DTG_LINEAR_VARIANTS) and --rows the batched-decode crossover (linear_gemv for B rows
against rms_norm + matmul_tc3 + linear_epilogue). Every variant's output is checked against the
unfused sequence first.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


from tinygraph.backends.cuda import compiler, driver, kernels  # noqa: E402
Arg = kernels.Arg


def _decode_shapes() -> list[tuple[str, str, int, int, int, int, bool]]:
    """(model, layer, K, N, norm, act, residual) of each decode linear, from the published configs
    in bench_configs.py (one source for the shapes): qkv, o, gate_up, down; SmolLM2's and Qwen3-8B's lm_head too."""
    from bench_configs import CONFIGS, dims

    out: list[tuple[str, str, int, int, int, int, bool]] = []
    for key, label in (("smollm2", "SmolLM2"), ("tinyllama", "TinyLlama"), ("qwen3-8b", "Qwen3-8B")):
        k = dims(CONFIGS[key]["hf"])
        d, q, kv = k["hidden"], k["heads"] * k["head_dim"], k["kv_heads"] * k["head_dim"]
        out += [(label, "qkv", d, q + 2 * kv, 1, 0, False), (label, "o", q, d, 0, 0, True),
                (label, "gate_up", d, 2 * k["inter"], 1, 3, False), (label, "down", k["inter"], d, 0, 0, True)]
        if key in ("smollm2", "qwen3-8b"):  # (appended last: the indices above stay)
            out.append((label, "lm_head", d, k["vocab"], 1, 0, False))
    return out


SHAPES = _decode_shapes()  # order kept: code below picks rows by index (SHAPES[2], [10], [11])
VARIANT_OPTS = {"U2": ["-DTG_LINEAR_U=2"], "PB1": ["-DTG_LINEAR_PB=1"]}
SOURCES = ("linear.cu", "matmul.cu", "norms.cu", "elementwise.cu")


def _compile_one(args):
    src, arch, opts = args
    t0 = time.perf_counter()
    compiler.compile_source(compiler.cuda_src_dir() / src, arch, opts)
    return src, opts, time.perf_counter() - t0


def precompile(arch: str, variants: bool) -> None:
    import multiprocessing as mp

    jobs = [(s, arch, []) for s in SOURCES]
    if variants:
        jobs += [("linear.cu", arch, o) for o in VARIANT_OPTS.values()]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        for src, opts, dt in pool.imap_unordered(_compile_one, jobs):
            print(f"compiled {src} {' '.join(opts)} in {dt:.1f}s", flush=True)
    print(f"precompile: {time.perf_counter() - t0:.1f}s wall", flush=True)


# ----------------------------------------------------------------------------------------------
def graph_time_us(fn, s, n_inner=20, reps=15):
    """Median µs per fn(i), timed as replays of a CUDA graph holding n_inner calls."""
    return driver.graph_time_us(fn, s, n_inner, reps)


class Buf:
    def __init__(self, shape, np_dtype, data=None, rng=None, scale=1.0, shift=0.0):
        self.shape, self.dtype = tuple(shape), np_dtype
        n = math.prod(self.shape)
        self.nbytes = n * np.dtype(np_dtype).itemsize
        self.buf = driver.DeviceBuffer(max(self.nbytes, 1), what="bench")
        if data is None and rng is not None:
            data = (rng.standard_normal(self.shape, dtype=np.float32) * scale + shift).astype(np_dtype)
        if data is not None:
            self.buf.upload(np.ascontiguousarray(data))
        else:
            driver.memset_d8(self.buf, 0xFF, self.nbytes)

    def arg(self, shape=None, strides=None, off=0):
        return Arg(self.buf.ptr + off * np.dtype(self.dtype).itemsize, tuple(shape or self.shape), strides)

    def get(self):
        return self.buf.to_array(self.dtype, self.shape)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class Layer:
    """Weights (rotating copies), inputs and the unfused / fused launch functions for one shape."""

    def __init__(self, lib, rng, dt, K, N, norm, act, has_res, rows=1, l2_bytes=160 << 20):
        self.lib, self.dt, self.K, self.N, self.norm, self.act = lib, dt, K, N, norm, act
        self.np = {"f16": np.float16, "f32": np.float32}.get(dt)
        if self.np is None:
            import ml_dtypes

            self.np = ml_dtypes.bfloat16
        isz = np.dtype(self.np).itemsize
        self.wbytes = N * K * isz
        self.copies = max(2, -(-l2_bytes // self.wbytes))
        base = (rng.standard_normal((N, K), dtype=np.float32) * K ** -0.5).astype(self.np)
        self.w = [Buf((N, K), self.np, np.roll(base, i, axis=0)) for i in range(self.copies)]
        del base
        self.rows = rows
        self.nout = N // 2 if act == 3 else N
        # x [1, rows, K]: one sequence of `rows` tokens (rows = 1: decode)
        self.x = Buf((1, rows, K), self.np, rng=rng)
        self.nw = Buf((K,), self.np, rng=rng, scale=0.2, shift=1.0) if norm else None
        self.res = Buf((1, rows, self.nout), self.np, rng=rng) if has_res else None
        self.y = Buf((1, rows, self.nout), self.np)
        # unfused scratch
        self.h = Buf((1, rows, K), self.np)
        self.z = Buf((1, rows, N), self.np)
        self.t = Buf((1, rows, max(1, N // 2)), self.np)

    def wT(self, i):
        return self.w[i % self.copies].arg((self.K, self.N), (1, self.K))

    def fused(self, s, func=None, **kw):
        lib = self.lib

        def f(i):
            lib.linear(self.dt, self.y.arg(), self.x.arg(), self.w[i % self.copies].buf.ptr, self.K,
                       self.N, self.K, res=self.res.arg() if self.res else None, norm=self.norm,
                       norm_w=self.nw.buf.ptr if self.nw else None, eps=1e-6, act=self.act,
                       stream=s, func=func, **kw)
        return f

    def unfused(self, s, algo=None):
        """rms_norm -> matmul (gemv for one row) -> [silu, mul] -> [add residual]; returns
        (fn, kernels per call, output Buf)."""
        lib, dt, rows, N = self.lib, self.dt, self.rows, self.N
        nk = 1 + (self.norm != 0) + (2 if self.act == 3 else 0) + (self.res is not None)
        out = self.y

        def f(i):
            src = self.x.arg()
            if self.norm:
                lib.rms_norm(dt, self.h.arg(), src, self.nw.buf.ptr, 1e-6, stream=s)
                src = self.h.arg()
            if self.act == 3:
                lib.matmul(dt, self.z.arg(), src, self.wT(i), stream=s, algo=algo)
                half = N // 2
                zst = (rows * N, N, 1)
                gate = self.z.arg((1, rows, half), zst)
                up = self.z.arg((1, rows, half), zst, off=half)
                lib.unary("silu", dt, self.t.arg((1, rows, half)), gate, stream=s)
                dst = self.z.arg((1, rows, half), zst) if self.res is not None else out.arg()
                lib.binary("mul", dt, dst, self.t.arg((1, rows, half)), up, stream=s)
                if self.res is not None:
                    lib.binary("add", dt, out.arg(), dst, self.res.arg(), stream=s)
            elif self.res is not None:
                lib.matmul(dt, self.z.arg(), src, self.wT(i), stream=s, algo=algo)
                lib.binary("add", dt, out.arg(), self.z.arg(), self.res.arg(), stream=s)
            else:
                lib.matmul(dt, out.arg(), src, self.wT(i), stream=s, algo=algo)
        return f, nk, out

    def prefill_path(self, s):
        """rms_norm -> matmul_tc3 -> linear_epilogue (what the backend runs for many rows)."""
        lib, dt = self.lib, self.dt

        def f(i):
            src = self.x.arg()
            if self.norm:
                lib.rms_norm(dt, self.h.arg(), src, self.nw.buf.ptr, 1e-6, stream=s)
                src = self.h.arg()
            lib.matmul(dt, self.z.arg(), src, self.wT(i), stream=s, algo="matmul_tc3")
            lib.linear_epilogue(dt, self.y.arg(), self.z.arg(), res=self.res.arg() if self.res else None,
                                act=self.act, stream=s)
        return f

    def bare_gemv(self, s):
        lib, dt = self.lib, self.dt
        return lambda i: lib.matmul(dt, self.z.arg(), self.x.arg(), self.wT(i), stream=s)

    def run_once(self, fn, s):
        driver.memset_d8(self.y.buf, 0xFF, self.y.nbytes)
        fn(0)
        s.synchronize()
        return self.y.get()

    def free(self):
        for b in self.w:
            b.buf.free()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precompile", action="store_true")
    ap.add_argument("--variants", action="store_true", help="with --precompile: also the tuning builds")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--rows", action="store_true")
    ap.add_argument("--dtype", default="f16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="substring filter on 'model/layer'")
    args = ap.parse_args(argv)

    if args.precompile:
        arch = "sm_90"
        if driver.driver_available():
            arch = driver.get_device(0).arch
        precompile(compiler.normalize_arch(arch), args.variants)
        return 0

    dev = driver.get_device(0)
    lib = kernels.KernelLibrary(dev)
    s = driver.Stream()
    rng = np.random.default_rng(0)
    sm = dev.sm_count
    print(f"{dev}; nvrtc {compiler.nvrtc_version()}", flush=True)
    var_mods = {}
    if args.sweep:
        for name, opts in VARIANT_OPTS.items():
            var_mods[name] = driver.Module(compiler.compile_source(lib.src_dir / "linear.cu", lib.arch, opts),
                                           f"linear.cu {name}")
    for base in ("linear_gemv", "linear_gemv1"):
        f = lib.get(base, args.dtype)
        print(f"{base}_{args.dtype}: {f.num_regs} registers, {lib._blocks_per_sm(f, 256, 4608)} blocks/SM "
              f"at 256 threads and K=1152", flush=True)
    for name, m in var_mods.items():
        print(f"  {name}: {m.get_function(f'linear_gemv1_{args.dtype}').num_regs} registers")

    results = []
    table = []
    for model, layer, K, N, norm, act, has_res in SHAPES:
        key = f"{model}/{layer}"
        if args.only and args.only not in key:
            continue
        L = Layer(lib, rng, args.dtype, K, N, norm, act, has_res)
        gb = L.wbytes / 1e3  # bytes / µs -> GB/s factor
        unf, nk, _ = L.unfused(s)
        ref = L.run_once(unf, s)
        r = {"model": model, "layer": layer, "K": K, "N": N, "norm": norm, "act": act, "res": has_res,
             "weight_MB": L.wbytes / 1e6}
        r["unfused_us"] = graph_time_us(unf, s)
        r["unfused_kernels"] = nk
        r["gemv_us"] = graph_time_us(L.bare_gemv(s), s)
        variants = {"fused": {}}
        if args.sweep:
            variants["nocap"] = {"max_blocks": 0}
            for c in (1, 2, 4):
                variants[f"cap{c}"] = {"max_blocks": c * sm}
            for b in (64, 128):
                variants[f"b{b}"] = {"block": b}
                variants[f"b{b}nocap"] = {"block": b, "max_blocks": 0}
            variants["generic"] = {"func": lib.get("linear_gemv", args.dtype)}
            for name, m in var_mods.items():
                variants[name] = {"func": m.get_function(f"linear_gemv1_{args.dtype}")}
        for vname, kw in variants.items():
            fn = L.fused(s, **kw)
            got = L.run_once(fn, s)
            e = rel(got, ref)
            if not e < 1e-2:
                print(f"MISMATCH {key} {vname}: rel err {e:.3g}", flush=True)
                r[f"{vname}_err"] = e
                continue
            r[f"{vname}_us"] = graph_time_us(fn, s)
        results.append(r)
        if "fused_us" not in r:
            L.free()
            continue
        best = min((k for k in r if k.endswith("_us") and k not in ("unfused_us", "gemv_us")),
                   key=lambda k: r[k])
        r["best"] = best[:-3]
        line = (f"{model:9s} {layer:7s} K={K:5d} N={N:5d} {L.wbytes / 1e6:7.1f}MB | fused "
                f"{r['fused_us']:7.2f}us {gb / r['fused_us']:6.0f}GB/s | unfused({nk}) "
                f"{r['unfused_us']:7.2f}us {gb / r['unfused_us']:6.0f}GB/s | gemv {r['gemv_us']:7.2f}us "
                f"{gb / r['gemv_us']:6.0f}GB/s | best {r['best']} {r[best]:.2f}us")
        table.append(line)
        print(line, flush=True)
        if args.sweep:
            print("   " + " ".join(f"{k[:-3]}={v:.2f}" for k, v in r.items()
                                   if k.endswith("_us") and k not in ("unfused_us", "gemv_us")), flush=True)
        L.free()

    if args.rows:
        print("\nbatched decode: linear_gemv (rows) vs rms_norm + matmul_tc3 + linear_epilogue", flush=True)
        for model, layer, K, N, norm, act, has_res in (SHAPES[10], SHAPES[11], SHAPES[2]):
            for rows in (1, 2, 4, 8, 16):
                L = Layer(lib, rng, args.dtype, K, N, norm, act, has_res, rows=rows)
                unf, nk, _ = L.unfused(s, algo="matmul_tc3" if rows > 1 else None)
                ref = L.run_once(unf, s)
                fz = L.fused(s)
                e = rel(L.run_once(fz, s), ref)
                tf = graph_time_us(fz, s)
                tp = graph_time_us(L.prefill_path(s), s)
                line = (f"{model:9s} {layer:7s} rows={rows:2d} rb={kernels.linear_rows_per_block(rows, K)} "
                        f"fused {tf:7.2f}us ({L.wbytes / 1e3 / tf:5.0f}GB/s, err {e:.1e}) | "
                        f"norm+tc3+epilogue {tp:7.2f}us")
                print(line, flush=True)
                results.append({"model": model, "layer": layer, "rows": rows, "fused_us": tf,
                                "prefill_path_us": tp, "err": e})
                L.free()

    if table:
        print("\nsummary (f16 = %s):" % args.dtype)
        for line in table:
            print(line)
    out = args.json or (os.path.join(os.environ["OUT"], "bench_linear.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
