#!/usr/bin/env python3
"""Compile every cuda_src/*.cu with NVRTC for sm_80 and sm_90 (no GPU needed).

Prints one line per file and architecture with the compile time, the NVRTC log of any failure,
and exits non-zero if anything failed. Uses no kernel cache (every file really compiles).
It also checks that every kernel named in the registry (tinygraph/backends/cuda/kernels.py) is
present in the CUBIN of its file.

    python tools/check_kernels.py [--arch sm_80 --arch sm_90] [files...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", help="target (repeatable); default sm_80 and sm_90")
    ap.add_argument("files", nargs="*", help="sources to compile (default: cuda_src/*.cu)")
    args = ap.parse_args(argv)
    from tinygraph.backends.cuda import compiler, kernels
    archs = args.arch or ["sm_80", "sm_90"]
    src_dir = compiler.cuda_src_dir()
    files = [Path(f) for f in args.files] if args.files else sorted(src_dir.glob("*.cu"))
    try:
        v = compiler.nvrtc_version()
        inc = compiler.cuda_include_dirs()
    except Exception as e:
        print(f"FAIL: NVRTC unusable: {type(e).__name__}: {e}")
        return 2
    print(f"NVRTC {v[0]}.{v[1]}; CUDA headers: {inc[0] if inc else 'NOT FOUND'}; sources: {src_dir}")
    expected: dict[str, list[str]] = {}
    for file, name in kernels.all_kernel_names():
        expected.setdefault(file, []).append(name)
    failures = 0
    for f in files:
        for arch in archs:
            t0 = time.perf_counter()
            try:
                cubin = compiler.compile_source(f, arch, cache=False)
            except compiler.CompileError as e:
                dt = time.perf_counter() - t0
                print(f"FAIL {f.name:18s} {arch:7s} {dt:6.2f}s")
                print(e.log or str(e))
                failures += 1
                continue
            dt = time.perf_counter() - t0
            missing = [n for n in expected.get(f.name, []) if n.encode() + b"\x00" not in cubin]
            if missing:
                print(f"FAIL {f.name:18s} {arch:7s} {dt:6.2f}s  missing kernels: {', '.join(missing)}")
                failures += 1
            else:
                nk = len(expected.get(f.name, []))
                print(f"ok   {f.name:18s} {arch:7s} {dt:6.2f}s  {len(cubin):8d} bytes, {nk} registered kernels")
    known = {p.name for p in files}
    for file in expected:
        if file not in known and not args.files:
            print(f"FAIL registry names {file}, which does not exist in {src_dir}")
            failures += 1
    print(f"{'FAILED' if failures else 'all ok'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
