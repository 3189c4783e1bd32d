"""Device facts for the bench record and the bandwidth floor (a device-to-device copy)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench_util import copy_bandwidth, median


def device_info(backend: str) -> dict[str, Any]:
    info: dict[str, Any] = {"backend": backend, "host": platform.node(), "platform": platform.platform(),
                            "python": sys.version.split()[0], "cpu_count": os.cpu_count()}
    if backend == "cuda":
        from tinygraph.backends.cuda import driver
        dev = driver.get_device(0)
        info.update(name=dev.name, arch=dev.arch, sm_count=dev.sm_count, total_memory=dev.total_memory)
        v = int(driver.check(driver._drv().cuDriverGetVersion(), "cuDriverGetVersion"))
        info["cuda_driver_api_version"] = f"{v // 1000}.{(v % 1000) // 10}"
        try:
            from tinygraph.backends.cuda.compiler import nvrtc_version
            info["nvrtc_version"] = ".".join(map(str, nvrtc_version()))
        except Exception as e:  # noqa: BLE001
            info["nvrtc_version"] = f"unknown ({e})"
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                "clocks.max.mem,power.limit", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            if q.stdout.strip():
                info["driver_version"] = q.stdout.strip().split(",")[1].strip()
        except Exception as e:  # noqa: BLE001
            info["nvidia_smi"] = f"unavailable ({e})"
    else:
        info["name"] = f"CPU ({platform.processor() or platform.machine()}), tinygraph {backend} backend"
    for mod in ("tinygraph", "numpy", "torch", "transformers", "cuda.bindings"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info.setdefault("versions", {})[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info.setdefault("versions", {})[mod] = None
    try:
        import torch
        info["torch_cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001
        pass
    return info


def measure_floor(backend: str, nbytes: int, reps: int) -> dict[str, Any]:
    """Device-to-device copy bandwidth (bytes read + written) through tinygraph's driver."""
    rec: dict[str, Any] = {"bytes_per_copy": nbytes, "reps": reps}
    if backend != "cuda":
        n = min(nbytes, 256 << 20)
        src = np.full(n, 0x5A, np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        samples = []
        for _ in range(reps):
            t = time.perf_counter()
            np.copyto(dst, src)
            samples.append((time.perf_counter() - t) * 1e3)
        rec.update(method="host numpy copyto (no GPU)", bytes_per_copy=n)
    else:
        from tinygraph.backends.cuda import driver
        dev = driver.get_device(0)
        src = driver.DeviceBuffer(nbytes, "bench copy source", dev)
        dst = driver.DeviceBuffer(nbytes, "bench copy destination", dev)
        try:
            driver.memset_d8(src.ptr, 0x5A, nbytes)      # not zeros
            s = driver.Stream()
            e0, e1 = driver.Event(), driver.Event()
            for _ in range(3):                          # warm-up
                driver.memcpy_dtod(dst.ptr, src.ptr, nbytes, s)
            s.synchronize("copy warm-up")
            samples = []
            for _ in range(reps):
                e0.record(s)
                driver.memcpy_dtod(dst.ptr, src.ptr, nbytes, s)
                e1.record(s)
                e1.synchronize()
                samples.append(driver.Event.elapsed_ms(e0, e1))
            s.destroy()
        finally:
            src.free()
            dst.free()
        rec["method"] = "tinygraph driver memcpy_dtod (cuMemcpyDtoDAsync), CUDA events"
    rec["samples_ms"] = samples
    rec["median_ms"] = median(samples)
    rec["bandwidth_Bps"] = copy_bandwidth(rec["bytes_per_copy"], rec["median_ms"] / 1e3)
    rec["bandwidth_GBps"] = rec["bandwidth_Bps"] / 1e9
    return rec


def torch_copy_check(nbytes: int, reps: int) -> dict[str, Any] | None:
    """The same copy through PyTorch, as a cross-check of the floor."""
    import torch
    if not torch.cuda.is_available():
        return None
    a = torch.full((nbytes,), 0x5A, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    samples = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        samples.append(e0.elapsed_time(e1))
    del a, b
    torch.cuda.empty_cache()
    med = median(samples)
    return {"samples_ms": samples, "median_ms": med, "bandwidth_GBps": copy_bandwidth(nbytes, med / 1e3) / 1e9}


