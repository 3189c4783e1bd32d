"""GPU faults and limits: out of memory while allocating or loading says how many bytes were
asked for and how many are free, and leaves the process able to continue; a failing kernel
names the graph node and the kernel; after an error the session is usable (or, after a sticky
device fault, every later call fails with a clear CudaError rather than crashing).

Everything here skips without an NVIDIA GPU and driver; the compile-cache checks need only
NVRTC."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.backends import cuda_available

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def driver():
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"needs a CUDA GPU: {why}")
    from tinygraph.backends.cuda import driver as drv
    drv.get_device(0)
    return drv


def _free(driver) -> int:
    gc.collect()
    driver.get_device(0).synchronize()
    return driver.mem_get_info()[0]


def _small_compute(backend="cuda") -> np.ndarray:
    with tg.Session(backend=backend, verbose=False) as s:
        W = s.persistent((4, 3), tg.float32, name="W")
        s.finalize()
        s.upload(W, np.arange(12, dtype=np.float32).reshape(4, 3))
        g = s.graph()
        x = g.input((1, 4), tg.float32, name="x")
        g.output(tg.matmul(x, W))
        (out,) = s.compute(g, {x: np.ones((1, 4), np.float32)})
    return out


def test_out_of_memory_in_a_session_says_bytes_and_recovers(driver):
    free0 = _free(driver)
    sess = tg.Session(backend="cuda", verbose=False)
    small = sess.persistent((1 << 20,), tg.float32, name="small")
    n = free0 // 4 + (1 << 28)  # 1 GiB more than is free
    sess.persistent((n,), tg.float32, name="huge")
    with pytest.raises(driver.CudaError) as ei:
        sess.finalize()
    e = ei.value
    msg = str(e)
    assert e.out_of_memory and isinstance(e, tg.BackendError) and isinstance(e, tg.TinygraphError)
    assert f"cuMemAlloc of {4 * n} bytes while allocating persistent buffer 'huge'" in msg, msg
    assert "CUDA_ERROR_OUT_OF_MEMORY" in msg and re.search(r"free .* = \d+ bytes", msg), msg
    # all or nothing: 'small' was released again; the session is still open and can be closed
    assert not sess.finalized and sess.backend.buffers == {}
    sess.close()
    assert _free(driver) >= free0 - (8 << 20)
    np.testing.assert_array_equal(_small_compute(), [[18.0, 22.0, 26.0]])  # the process carries on
    del small


def test_out_of_memory_while_loading_a_model(driver):
    free0 = _free(driver)
    created = []
    real_init = tg.Session.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        created.append(self)

    tg.Session.__init__ = spy
    try:
        from tinygraph.models import load_model
        with pytest.raises(driver.CudaError, match=r"cuMemAlloc of \d+ bytes while allocating persistent buffer "
                                                   r"'cache\.[kv]\.0'.*OUT_OF_MEMORY.*free") as ei:
            load_model(FIX / "llama", backend="cuda", dtype="float32", max_context=2**31)  # 256 GiB KV cache
    finally:
        tg.Session.__init__ = real_init
    assert "bytes" in str(ei.value)
    assert len(created) == 1 and created[0].closed  # the half-built model's session was closed
    del created
    assert _free(driver) >= free0 - (8 << 20), "the failed load left device memory allocated"
    ref = np.load(FIX / "llama" / "reference.npz")
    with load_model(FIX / "llama", backend="cuda", dtype="float32") as m:  # and a normal load still works
        assert m.generate(ref["input_ids"][0], max_new_tokens=8, temperature=0) == list(ref["greedy"][0])


def test_failed_launch_names_node_and_kernel_and_session_stays_usable(driver, monkeypatch):
    import cuda.bindings.driver as cu

    with tg.Session(backend="cuda", verbose=False) as sess:
        W = sess.persistent((4, 3), tg.float32, name="W")
        sess.finalize()
        sess.upload(W, np.ones((4, 3)))

        def run():
            g = sess.graph()  # a fresh graph: launched kernel by kernel (not a replayed CUDA graph)
            x = g.input((2, 4), tg.float32, name="x")
            g.output(tg.silu(tg.matmul(x, W, name="proj"), name="act"))
            return sess.compute(g, {x: np.ones((2, 4), np.float32)})[0]

        good = run()
        real = cu.cuLaunchKernel, cu.cuLaunchKernelEx
        for name in ("cuLaunchKernel", "cuLaunchKernelEx"):  # plain and programmatic-dependent launches
            monkeypatch.setattr(cu, name, lambda *a: (cu.CUresult.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,))
        with pytest.raises(driver.CudaError) as ei:
            run()
        msg = str(ei.value)
        assert "while running node" in msg and re.search(r"'(proj|act)'", msg), msg
        assert re.search(r"cuLaunchKernel(Ex)?\(\w+", msg) and "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES" in msg, msg
        monkeypatch.setattr(cu, "cuLaunchKernel", real[0])
        monkeypatch.setattr(cu, "cuLaunchKernelEx", real[1])
        np.testing.assert_allclose(run(), good)  # the same session keeps working


_STICKY = r'''
import ctypes, json, os, sys
os.environ["TINYGRAPH_CUDA_SYNC"] = "1"  # report the fault at the launch that caused it
import numpy as np
import tinygraph as tg
from tinygraph.backends.cuda import compiler, driver
dev = driver.get_device(0)
src = 'extern "C" __global__ void tg_poke(float* p) { p[threadIdx.x] = 1.0f; }'
f = driver.Module(compiler.compile_source(src, dev.arch, name="poke.cu", cache=False), "poke").get_function("tg_poke")
res = {}
try:
    driver.launch(f, 1, 32, [ctypes.c_uint64(0x10)])  # writes to address 0x10
    dev.synchronize()
    res["first"] = "no error"
except Exception as e:
    res["first"], res["first_type"] = str(e), [c.__name__ for c in type(e).__mro__]
try:  # the context is now unusable: a clear error, not a crash or a hang
    with tg.Session(backend="cuda", verbose=False) as s:
        W = s.persistent((4,), tg.float32)
        s.finalize()
        s.upload(W, np.ones(4))
        s.download(W)
    res["after"] = "ok"
except Exception as e:
    res["after"] = type(e).__name__ + ": " + str(e)
print("RESULT " + json.dumps(res))
'''


def test_sticky_kernel_fault_is_reported_not_fatal(driver, tmp_path):
    """An illegal memory access inside a kernel, in a child process (it poisons the CUDA
    context): the error names the kernel, later calls raise CudaError, and the process exits
    normally."""
    env = dict(os.environ, TINYGRAPH_CUDA_SYNC="1")
    r = subprocess.run([sys.executable, "-c", _STICKY], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert "tg_poke" in res["first"] and "CUDA_ERROR_ILLEGAL_ADDRESS" in res["first"], res
    assert "CudaError" in res["first_type"] and "TinygraphError" in res["first_type"], res
    assert res["after"] == "ok" or res["after"].startswith(("CudaError", "BackendError")), res


def test_session_close_returns_device_memory(driver):
    free0 = _free(driver)
    sess = tg.Session(backend="cuda", verbose=False)
    sess.persistent((256 << 20,), tg.float32, name="big")  # 1 GiB
    sess.finalize()
    # margins: other test processes on the GPU (pytest -n) allocate and free meanwhile
    assert _free(driver) <= free0 - (768 << 20)
    sess.close()
    assert _free(driver) >= free0 - (64 << 20)


# ------------------------------------------------------------------ kernel compile cache (NVRTC only)
def _nvrtc():
    try:
        from tinygraph.backends.cuda import compiler
        compiler.nvrtc_version()
    except Exception as e:
        pytest.skip(f"NVRTC not usable: {e}")
    return compiler


SMALL = 'extern "C" __global__ void tg_small(float* p) { p[threadIdx.x] += 1.0f; }\n'


def test_compile_cache_unwritable_or_clobbered_still_compiles(tmp_path):
    compiler = _nvrtc()
    src = tmp_path / "small.cu"
    src.write_text(SMALL)
    cache = tmp_path / "cache"
    good = compiler.compile_source(src, "sm_90", cache_path=cache)
    (entry,) = cache.glob("*.cubin")
    # an entry replaced by a directory: detected as unreadable, recompiled, no crash
    entry.unlink()
    entry.mkdir()
    compiler.clear_memory_cache()
    assert compiler.compile_source(src, "sm_90", cache_path=cache) == good
    # a cache directory that cannot be created (a file is in the way): compiles without caching
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    compiler.clear_memory_cache()
    assert compiler.compile_source(src, "sm_90", cache_path=blocker / "cache") == good
