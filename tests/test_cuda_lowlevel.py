"""CUDA low level: driver wrapper and the kernels vs a float64 NumPy reference (needs a GPU); the
row-wise kernels (norms, softmax, RoPE) are in test_cuda_rowwise.py.

Each output buffer is poisoned (all bytes 0xFF = NaN / -1) before a launch, so an unwritten
element shows up as NaN; strided outputs also check that the gaps stay untouched.
Set TINYGRAPH_BENCH=1 to also run the timing test (GEMV bandwidth etc., printed with -s).
"""
from __future__ import annotations

import ctypes
import json
import math
import os

import numpy as np
import pytest


from tinygraph.backends.cuda import compiler, driver, kernels  # noqa: E402
Arg = kernels.Arg

from cuda_support import (DT, DTYPES, NP, TOL, assert_close, assert_poison_kept, dev, f64,  # noqa: E402,F401
                          lib, replay_in_graph, rnd, rng)


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def test_device_info(dev):
    assert dev.sm_count > 0 and dev.total_memory > 0
    assert dev.compute_capability[0] >= 7
    assert dev.arch.startswith("sm_")
    free, total = driver.mem_get_info()
    assert 0 < free <= total
    print(dev, f"free {driver.format_bytes(free)}", "include:", compiler.cuda_include_dirs(),
          "nvrtc", compiler.nvrtc_version())


def test_out_of_memory_message(dev):
    n = 1 << 50
    with pytest.raises(driver.CudaError) as ei:
        driver.DeviceBuffer(n, what="loading weights")
    msg = str(ei.value)
    assert f"cuMemAlloc of {n} bytes while loading weights" in msg
    assert "CUDA_ERROR_OUT_OF_MEMORY" in msg and "free" in msg and "GiB" in msg
    assert ei.value.out_of_memory


def test_bad_launch_names_kernel(lib):
    f = lib.get("add", "f32")
    a = driver.DeviceBuffer(64)
    d = kernels.td((4,))
    with pytest.raises(driver.CudaError) as ei:
        driver.launch(f, 1, 2048, [a, d, a, d, a, d])
    assert "add_f32" in str(ei.value) and "CUDA_ERROR_INVALID_VALUE" in str(ei.value)
    with pytest.raises(driver.KernelArgumentError) as ei:
        driver.launch(f, 1, 32, [a, d, a, d, a])
    assert "add_f32" in str(ei.value) and "6 parameters" in str(ei.value)
    with pytest.raises(driver.KernelArgumentError):
        driver.launch(f, 1, 32, [a, d, a, d, a, ctypes.c_int32(0)])
    # the context is still fine
    driver.launch(f, 1, 32, [a, d, a, d, a, d])
    dev = lib.device
    dev.synchronize()


def test_missing_function_error(lib):
    with pytest.raises(driver.CudaError) as ei:
        lib.module("elementwise.cu").get_function("no_such_kernel")
    assert "no_such_kernel" in str(ei.value)
    with pytest.raises(TypeError):
        lib.get("matmul_tc3_64_3", "f32")


def test_memcpy_roundtrip_and_streams(dev, rng):
    x = rng.standard_normal(12345).astype(np.float32)
    a = driver.DeviceBuffer.from_array(x)
    b = driver.DeviceBuffer(a.nbytes)
    b.copy_from(a)
    assert np.array_equal(b.to_array(np.float32, x.shape), x)
    s = driver.Stream()
    pin = driver.PinnedBuffer(x.nbytes)
    pin.array(np.float32)[:] = x * 2
    driver.memcpy_htod(b, pin.ptr, x.nbytes, stream=s)
    out = driver.PinnedBuffer(x.nbytes)
    driver.memcpy_dtoh(out.ptr, b, x.nbytes, stream=s)
    s.synchronize()
    assert np.array_equal(out.array(np.float32), x * 2)
    driver.memcpy_dtod(a, b, x.nbytes, stream=s)
    s.synchronize()
    assert np.array_equal(a.to_array(np.float32, x.shape), x * 2)
    a.free()
    a.free()  # idempotent


def test_upload_staged(dev, rng):
    x = rng.integers(0, 255, size=(5 << 20) + 77, dtype=np.uint8)
    buf = driver.DeviceBuffer(x.nbytes)
    driver.upload_staged(buf, x, chunk_bytes=1 << 20)
    assert np.array_equal(buf.to_array(np.uint8, x.shape), x)
    mv = memoryview(x.tobytes())  # read-only host buffer
    buf2 = driver.DeviceBuffer(x.nbytes)
    driver.upload_staged(buf2, mv, chunk_bytes=3 << 20, stream=driver.Stream())
    assert np.array_equal(buf2.to_array(np.uint8, x.shape), x)


def test_buffers_collected_during_capture_are_freed_after_it(lib, rng):
    """A buffer garbage-collected while a capture is open (another model dropped while a step is
    captured) must not call cuMemFree then: that would invalidate the capture."""
    import gc

    x = DT(rnd(rng, (256,), "f32"))
    y = DT.empty((256,), np.float32)
    s = driver.Stream()
    g = driver.Graph()
    doomed = driver.DeviceBuffer(1 << 20, what="dropped during capture")
    with driver.capture(s, g):
        lib.scale("f32", y.arg, x.arg, 2.0, stream=s)
        del doomed
        gc.collect()
        assert driver._deferred, "the free was not deferred"
        lib.scale("f32", y.arg, y.arg, 0.5, stream=s)
    assert not driver._deferred
    exe = g.instantiate()
    exe.launch(s)
    s.synchronize()
    np.testing.assert_allclose(y.fetch(), x.host, rtol=1e-6)


def test_events_and_graph_capture(lib, rng):
    n = 1000
    x = DT(rnd(rng, (n,), "f32"))
    y = DT.empty((n,), np.float32)
    s = driver.Stream()
    g = driver.Graph()
    with driver.capture(s, g):
        lib.scale("f32", y.arg, x.arg, 2.0, stream=s)
        lib.unary("silu", "f32", y.arg, y.arg, stream=s)
    assert g.num_nodes() == 2
    exe = g.instantiate()
    e0, e1 = driver.Event(), driver.Event()
    for trial in range(3):
        xv = rng.standard_normal(n).astype(np.float32)
        x.buf.upload(xv)
        e0.record(s)
        exe.launch(s)
        e1.record(s)
        s.synchronize()
        assert driver.Event.elapsed_ms(e0, e1) >= 0
        z = 2.0 * f64(xv)
        assert_close(y.fetch(), z / (1 + np.exp(-z)), "f32", what=f"graph replay {trial}")


# ----------------------------------------------------------------------------------------------
# elementwise
# ----------------------------------------------------------------------------------------------
BIN_REF = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _binary_cases(rng, dt):
    # (out_shape, a DT, b DT)
    yield "same", (37, 53), DT(rnd(rng, (37, 53), dt)), DT(rnd(rng, (37, 53), dt))
    yield "bcast_row", (5, 37, 53), DT(rnd(rng, (5, 37, 53), dt)), DT(rnd(rng, (53,), dt))
    yield "bcast_both", (4, 7, 33), DT(rnd(rng, (4, 1, 33), dt)), DT(rnd(rng, (1, 7, 1), dt))
    yield ("transposed", (29, 41), DT(rnd(rng, (41, 29), dt), lambda h: h.T),
           DT(rnd(rng, (29, 82), dt), lambda h: h[:, ::2]))
    yield "rank4", (2, 3, 5, 67), DT(rnd(rng, (2, 3, 5, 67), dt)), DT(rnd(rng, (2, 1, 5, 1), dt))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary(lib, rng, op, dt):
    for name, oshape, a, b in _binary_cases(rng, dt):
        if op == "div":
            b = b.remap(lambda h: (np.abs(f64(h)) + 0.5).astype(NP[dt]))
        out = DT.empty(oshape, NP[dt])
        lib.binary(op, dt, out.arg, a.arg, b.arg)
        ref = BIN_REF[op](f64(a.view), f64(b.view))
        assert_close(out.fetch(), ref, dt, what=f"{op} {name}")


@pytest.mark.parametrize("dt", DTYPES)
def test_binary_explicit_stride0(lib, rng, dt):
    # broadcasting spelled as ne = out's ne with stride 0 (instead of ne = 1)
    a = DT(rnd(rng, (31, 45), dt))
    b = DT(rnd(rng, (45,), dt))
    out = DT.empty((31, 45), NP[dt])
    lib.binary("add", dt, out.arg, a.arg, Arg(b.buf.ptr, (31, 45), (0, 1)))
    assert_close(out.fetch(), f64(a.host) + f64(b.host)[None, :], dt, what="stride0")


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_erf(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


UN_REF = {"gelu": _gelu, "gelu_erf": _gelu_erf, "silu": lambda x: x / (1 + np.exp(-x))}


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", ["gelu", "gelu_erf", "silu", "scale"])
def test_unary(lib, rng, op, dt):
    cases = [
        ("contig", DT(rnd(rng, (3, 7, 129), dt, 3.0)), (3, 7, 129)),
        ("strided", DT(rnd(rng, (65, 40), dt, 3.0), lambda h: h[::2, 1:34].T), (33, 33)),
    ]
    for name, x, oshape in cases:
        out = DT.empty(oshape, NP[dt])
        if op == "scale":
            lib.scale(dt, out.arg, x.arg, -0.37)
            ref = f64(x.view) * np.float64(np.float32(-0.37))
        else:
            lib.unary(op, dt, out.arg, x.arg)
            ref = UN_REF[op](f64(x.view))
        assert_close(out.fetch(), ref, dt, what=f"{op} {name}")


@pytest.mark.parametrize("dt", DTYPES)
def test_inplace_unary(lib, rng, dt):
    x = DT(rnd(rng, (1000,), dt))
    ref = UN_REF["silu"](f64(x.host))
    lib.unary("silu", dt, x.arg, x.arg)
    assert_close(x.fetch(), ref, dt, what="silu in place")


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_cpy_cast(lib, rng, src, dst):
    # transposed strided source -> contiguous destination, with conversion
    x = DT(rnd(rng, (45, 37), src), lambda h: h.T)
    out = DT.empty((37, 45), NP[dst])
    lib.copy(out.arg, x.arg, src, dst)
    ref = np.asarray(x.view).astype(NP[dst])  # ml_dtypes / numpy: round to nearest even
    got = out.fetch()
    assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(ref).view(np.uint8)) or \
        np.array_equal(f64(got), f64(ref)), f"cpy {src}->{dst} not exact"


@pytest.mark.parametrize("dt", DTYPES)
def test_cpy_reshape_and_concat(lib, rng, dt):
    # reshape-copy: a (6, 35) transposed view copied into a flat (210,) buffer (row-major order)
    x = DT(rnd(rng, (35, 6), dt), lambda h: h.T)
    flat = DT.empty((210,), NP[dt])
    lib.copy(flat.arg, x.arg, dt)
    assert np.array_equal(f64(flat.fetch()), f64(x.view).reshape(-1))
    # concat along the last axis as two copies into views of the output (3, 5, 17 + 30)
    a = DT(rnd(rng, (3, 5, 17), dt))
    b = DT(rnd(rng, (3, 5, 30), dt), None)
    out = DT.empty((3, 5, 47), NP[dt])
    isz = out.host.itemsize
    ost = (5 * 47, 47, 1)
    lib.copy(Arg(out.buf.ptr, (3, 5, 17), ost), a.arg, dt)
    lib.copy(Arg(out.buf.ptr + 17 * isz, (3, 5, 30), ost), b.arg, dt)
    assert np.array_equal(f64(out.fetch()), np.concatenate([f64(a.host), f64(b.host)], axis=-1))
    # a copy into a strided destination view leaves the rest alone
    dstv = DT.empty((8, 20), NP[dt], lambda h: h[1:7:2, 3:14])
    src = DT(rnd(rng, (3, 11), dt))
    lib.copy(dstv.arg, src.arg, dt)
    assert np.array_equal(f64(dstv.fetch()), f64(src.host))
    assert_poison_kept(dstv, "strided cpy")


@pytest.mark.parametrize("dt", DTYPES)
def test_cpy_16_byte_vectors(lib, rng, dt):
    # the attention's head-major output back to rows: [H, T, hd] viewed as [T, H, hd], copied in
    # 16-byte vectors (last axes contiguous, strides multiples of the vector)
    H, T, hd = 5, 37, 64
    x = DT(rnd(rng, (H, T, hd), dt), lambda h: h.transpose(1, 0, 2))
    out = DT.empty((T, H * hd), NP[dt])
    lib.copy(out.arg, x.arg, dt)
    assert np.array_equal(f64(out.fetch()), f64(x.view).reshape(T, H * hd))
    # shapes that differ (a reshape), the destination a strided view with its rows padded
    dst = DT.empty((T * H, 72), NP[dt], lambda h: h[:, :hd])
    lib.copy(dst.arg, x.arg, dt)
    assert np.array_equal(f64(dst.fetch()), f64(x.view).reshape(T * H, hd))
    assert_poison_kept(dst, "vector cpy into a strided view")
    # one element off the 16-byte boundary: the element-wise path, same result
    y = DT(rnd(rng, (T, hd + 1), dt), lambda h: h[:, 1:])
    out2 = DT.empty((T, hd), NP[dt])
    lib.copy(out2.arg, y.arg, dt)
    assert np.array_equal(f64(out2.fetch()), f64(y.view))


def test_cpy_i32(lib, rng):
    x = DT(rng.integers(-2**31, 2**31 - 1, size=(17, 9), dtype=np.int32), lambda h: h.T)
    out = DT.empty((9, 17), np.int32)
    lib.copy(out.arg, x.arg, "i32")
    assert np.array_equal(out.fetch(), x.view)


# ----------------------------------------------------------------------------------------------
# getrows / set_rows / argmax
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_getrows(lib, rng, dt):
    V, D = 101, 67
    table = DT(rnd(rng, (V, D), dt))
    ids = DT(np.array([[0, 5, 100, 5, 33], [99, 1, 2, 3, 4], [7, 7, 7, 0, 100]], np.int32))
    out = DT.empty((3, 5, D), NP[dt])
    lib.getrows(dt, out.arg, table.arg, ids.buf)
    assert np.array_equal(f64(out.fetch()), f64(table.host)[ids.host])
    # transposed table view and an out-of-range id
    tt = DT(rnd(rng, (D, V), dt), lambda h: h.T)
    ids2 = DT(np.array([3, -1, 101, 50], np.int32))
    out2 = DT.empty((4, D), NP[dt])
    lib.getrows(dt, out2.arg, tt.arg, ids2.buf)
    got = f64(out2.fetch())
    assert np.array_equal(got[[0, 3]], f64(tt.view)[[3, 50]])
    assert np.isnan(got[[1, 2]]).all()


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_set_rows(lib, rng, src, dst):
    # KV cache (B, H, Tmax, hd) written at positions idx from src (B, H, T, hd)
    cache = DT(rnd(rng, (2, 3, 50, 64), dst))
    before = f64(cache.host).copy()
    s = DT(rnd(rng, (2, 3, 5, 64), src))
    idx = DT(np.array([7, 0, 49, 20, 60], np.int32))  # 60 is out of range: skipped
    lib.set_rows(cache.arg, s.arg, idx.buf, src, dst)
    ref = before.copy()
    for j, p in enumerate(idx.host):
        if 0 <= p < 50:
            ref[:, :, p, :] = f64(np.asarray(s.host[:, :, j, :]).astype(NP[dst]))
    assert np.array_equal(f64(cache.fetch()), ref)


@pytest.mark.parametrize("dt", DTYPES)
def test_argmax(lib, rng, dt):
    x = rnd(rng, (9, 1000), dt)
    x[1, 17] = x[1, 900] = NP[dt](50.0)  # tie: first wins
    x[2, :] = NP[dt](1.0)  # all equal -> 0
    x[3, 500] = np.nan
    x[3, 600] = np.nan  # first NaN wins, as np.argmax
    x[4, 999] = NP[dt](1e4 if dt != "f16" else 6e4)
    xt = DT(x)
    out = DT.empty((9,), np.int32)
    lib.argmax(dt, out.arg, xt.arg)
    assert np.array_equal(out.fetch(), np.argmax(f64(x), axis=-1))
    # strided rows, vocab not a multiple of 32, 3-D
    y = DT(rnd(rng, (2, 3, 4099), dt), lambda h: h[:, :, 2:4001])
    out2 = DT.empty((2, 3), np.int32)
    lib.argmax(dt, out2.arg, y.arg)
    assert np.array_equal(out2.fetch(), np.argmax(f64(y.view), axis=-1))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n", [16384, 49152, 151936, 20001])
def test_argmax_split(lib, rng, dt, n):
    """argmax_split (several blocks per row, the last merges) == np.argmax, twice with the same
    counters (left at zero), on long rows with ties across chunks, NaNs, -inf and strided rows."""
    G = lib.argmax_splits(n)
    assert G > 1
    x = rnd(rng, (6, n), dt)
    x[1, 5] = x[1, n - 3] = NP[dt](50.0)              # tie in the first and last chunks: first wins
    x[2, :] = NP[dt](-np.inf)                          # all -inf -> 0
    x[3, n // 2] = np.nan
    x[3, n - 1] = np.nan                               # first NaN wins
    x[4, :] = NP[dt](1.0)                              # all equal -> 0
    x[5, kernels.ARGMAX_CHUNK] = NP[dt](40.0)          # first element of the second chunk
    counters = DT(np.zeros(8, np.int32))
    part = DT(np.zeros(6 * G, np.uint64))
    for xt in (DT(x), DT(np.concatenate([x, x], axis=1), lambda h: h[:, n:])):
        out = DT.empty((6,), np.int32)
        lib.argmax(dt, out.arg, xt.arg, part=part.ptr, counters=counters.ptr)
        assert np.array_equal(out.fetch(), np.argmax(f64(x), axis=-1))
        assert not counters.fetch().any(), "counters must be left at zero"


# ----------------------------------------------------------------------------------------------
# matmul
# ----------------------------------------------------------------------------------------------
MM_TOL = {"f32": 1e-4, "f16": 1e-2, "bf16": 1e-2}


def _mm_cases(rng, dt, k_mult8=False):
    K = 264 if k_mult8 else 129
    yield "plain", DT(rnd(rng, (67, K), dt)), DT(rnd(rng, (K, 93), dt))
    # B = transpose of an HF [out, in] weight
    yield "b_transposed", DT(rnd(rng, (67, K), dt)), DT(rnd(rng, (93, K), dt), lambda h: h.T)
    yield ("both_transposed", DT(rnd(rng, (K, 130), dt), lambda h: h.T),
           DT(rnd(rng, (200, K), dt), lambda h: h.T))
    # batch broadcast: B shared by all batches (ne = 1 / stride 0)
    yield "bcast_b", DT(rnd(rng, (2, 3, 17, 40), dt)), DT(rnd(rng, (40, 33), dt))
    yield "bcast_a", DT(rnd(rng, (19, 40), dt)), DT(rnd(rng, (3, 40, 33), dt), lambda h: h[None])
    # attention-like: q (H, T, hd) @ K^T (H, hd, S) with K a [S, H, hd] cache
    yield ("attn", DT(rnd(rng, (4, 31, 64), dt)),
           DT(rnd(rng, (45, 4, 64), dt), lambda h: h.transpose(1, 2, 0)))
    yield "odd_sizes", DT(rnd(rng, (130, 1), dt)), DT(rnd(rng, (1, 129), dt))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("algo", ["matmul", "matmul_tc3_32_3", "matmul_tc3_32_4", "matmul_tc3_64_3", "matmul_tc3_64_4"])
def test_matmul(lib, rng, dt, algo):
    if algo.startswith("matmul_tc") and dt == "f32":
        pytest.skip("tensor-core kernel is f16/bf16 only")
    for k8 in (False, True):
        for name, a, b in _mm_cases(rng, dt, k8):
            ref = np.matmul(f64(a.view), f64(b.view))
            out = DT.empty(ref.shape, NP[dt])
            lib.matmul(dt, out.arg, a.arg, b.arg, algo=algo)
            assert_close(out.fetch(), ref, dt, MM_TOL[dt], what=f"{algo} {name} K%8={k8}")


@pytest.mark.parametrize("dt", DTYPES)
def test_matmul_strided_out_and_big_tc(lib, rng, dt):
    # output into a column slice of a wider buffer (e.g. fused qkv)
    a = DT(rnd(rng, (70, 96), dt))
    b = DT(rnd(rng, (50, 96), dt), lambda h: h.T)
    out = DT.empty((70, 160), NP[dt], lambda h: h[:, 20:70])
    lib.matmul(dt, out.arg, a.arg, b.arg)
    assert_close(out.fetch(), f64(a.host) @ f64(b.view), dt, MM_TOL[dt], what="strided C")
    assert_poison_kept(out, "strided C")
    # a larger product through the default dispatch (tensor cores for f16/bf16)
    a = DT(rnd(rng, (300, 1024), dt))
    b = DT(rnd(rng, (520, 1024), dt), lambda h: h.T)
    out = DT.empty((300, 520), NP[dt])
    lib.matmul(dt, out.arg, a.arg, b.arg)
    assert_close(out.fetch(), f64(a.host) @ f64(b.view), dt, MM_TOL[dt], what="big")


def _check_matmul_kernel(lib, dt: str, a: DT, b: DT, kernel: str, what: str) -> None:
    """lib.matmul of a @ b picks a kernel whose name starts with ``kernel`` and matches float64."""
    ref = np.matmul(f64(a.view), f64(b.view))
    out = DT.empty(ref.shape, NP[dt])
    f = lib.plan_matmul(dt, out.arg, a.arg, b.arg).func
    assert f.name.startswith(kernel), f.name
    lib.matmul(dt, out.arg, a.arg, b.arg)
    assert_close(out.fetch(), ref, dt, MM_TOL[dt], what=what)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("K", [1000, 1001, 4096, 24])
def test_gemv(lib, rng, dt, K):
    N = 77
    cases = [
        ("weightT", DT(rnd(rng, (1, K), dt)), DT(rnd(rng, (N, K), dt), lambda h: h.T)),
        # batched decode attention: q (H, 1, hd) @ K^T (H, hd, S), cache (H, S, hd)
        ("batched", DT(rnd(rng, (3, 1, K), dt)), DT(rnd(rng, (3, N, K), dt), lambda h: h.transpose(0, 2, 1))),
        # misaligned row stride (K + 1) -> scalar path
        ("padded_rows", DT(rnd(rng, (1, K), dt)), DT(rnd(rng, (N, K + 1), dt), lambda h: h[:, :K].T)),
        # x is a strided view
        ("strided_x", DT(rnd(rng, (1, 2 * K), dt), lambda h: h[:, ::2]), DT(rnd(rng, (N, K), dt), lambda h: h.T)),
    ]
    for name, a, b in cases:
        _check_matmul_kernel(lib, dt, a, b, "gemv_", f"gemv {name} K={K}")


GEMV_TUNE = [(1, 2, 0), (1, 4, 0), (1, 8, 0), (1, 4, 1), (2, 2, 0), (2, 4, 0), (4, 1, 0), (4, 2, 0), (2, 2, 1)]


@pytest.fixture(scope="module")
def tuning_module(lib):
    cubin = compiler.compile_source(lib.src_dir / "matmul.cu", lib.arch, ["-DTG_GEMV_TUNING"])
    return driver.Module(cubin, "matmul.cu (tuning variants)")


@pytest.mark.parametrize("dt", ["f32", "f16"])
def test_gemv_tuning_variants(lib, tuning_module, rng, dt):
    mod = tuning_module
    for K in (1000, 1003):
        a = DT(rnd(rng, (2, 1, K), dt))
        b = DT(rnd(rng, (2, 77, K), dt), lambda h: h.transpose(0, 2, 1))
        ref = np.matmul(f64(a.view), f64(b.view))
        for (R, U, S) in GEMV_TUNE:
            f = mod.get_function(f"gemv_tune_{R}_{U}_{S}_{dt}")
            for block, gx in ((256, -(-77 // (8 * R))), (64, 1)):  # exact grid, and a 1-block grid
                out = DT.empty(ref.shape, NP[dt])
                driver.launch(f, (gx, 2, 1), block, [out.arg.addr, out.arg.td, a.arg.addr, a.arg.td,
                                                     b.arg.addr, b.arg.td])
                assert_close(out.fetch(), ref, dt, MM_TOL[dt], what=f"gemv_tune {R},{U},{S} K={K} b={block}")


@pytest.mark.parametrize("dt", DTYPES)
def test_gemv_nc(lib, rng, dt):
    # probs (H, 1, S) @ V (H, S, hd) with V N-contiguous; and a broadcast weight (K, N)
    for name, a, b in [
        ("attn_v", DT(rnd(rng, (4, 1, 301), dt)), DT(rnd(rng, (4, 301, 64), dt))),
        ("conv1d_weight", DT(rnd(rng, (1, 200), dt)), DT(rnd(rng, (200, 333), dt))),
    ]:
        _check_matmul_kernel(lib, dt, a, b, "gemv_nc_", f"gemv_nc {name}")
    # the generic path on a K-contiguous B, forced
    a, b = DT(rnd(rng, (1, 96), dt)), DT(rnd(rng, (50, 96), dt), lambda h: h.T)
    out = DT.empty((1, 50), NP[dt])
    lib.matmul(dt, out.arg, a.arg, b.arg, algo="gemv_nc")
    assert_close(out.fetch(), f64(a.host) @ f64(b.view), dt, MM_TOL[dt], what="gemv_nc forced")


def test_registry_functions_all_load(lib):
    for file, name in kernels.all_kernel_names():
        f = lib.function(name)
        assert f.num_regs > 0
        assert f.param_sizes() is None or len(f.param_sizes()) == len(
            kernels.KERNELS[next(b for b in sorted(kernels.KERNELS, key=len, reverse=True)
                                 if name.startswith(b + "_"))].params)


# ----------------------------------------------------------------------------------------------
# timing (TINYGRAPH_BENCH=1)
# ----------------------------------------------------------------------------------------------
def _graph_time_us(fn, s, n_inner, reps=10):
    """Median time per fn(i) call (us), timed as replays of a CUDA graph holding n_inner calls,
    so host-side launch cost stays out of the number."""
    return driver.graph_time_us(fn, s, n_inner, reps)


def test_prepared_launch_and_record(lib, rng):
    n = 999
    x = DT(rnd(rng, (n,), "f32"))
    x2 = DT(rnd(rng, (n,), "f32"))
    y = DT.empty((n,), np.float32)
    with lib.record() as launches:
        lib.scale("f32", y.arg, x.arg, 3.0)
        lib.unary("silu", "f32", y.arg, y.arg)
    assert len(launches) == 2 and all(isinstance(p, driver.PreparedLaunch) for p in launches)
    assert np.isnan(y.fetch()).all(), "record() must not launch"
    for p in launches:
        p()
    z = 3.0 * f64(x.host)
    assert_close(y.fetch(), z / (1 + np.exp(-z)), "f32", what="prepared")
    launches[0].set_arg(2, x2.buf)  # read from x2 instead
    replay_in_graph(launches)
    z = 3.0 * f64(x2.host)
    assert_close(y.fetch(), z / (1 + np.exp(-z)), "f32", what="prepared, patched, in a graph")
    with pytest.raises(driver.KernelArgumentError):
        launches[0].set_arg(4, ctypes.c_double(1.0))


@pytest.mark.skipif(os.environ.get("TINYGRAPH_BENCH") != "1", reason="set TINYGRAPH_BENCH=1 to time")
def test_bench(lib, tuning_module, rng):
    import time as _t

    s = driver.Stream()
    res = {}
    # ceiling: device-to-device copy, bytes read + written
    nb = 1 << 28
    src, dst = driver.DeviceBuffer(nb), driver.DeviceBuffer(nb)
    res["d2d_copy_GBps"] = 2 * nb / _graph_time_us(lambda i: driver.memcpy_dtod(dst, src, nb, s), s, 5) / 1e3
    del src, dst

    mod = tuning_module

    wcache = {}

    def gemv_bw(dt, K, N, fname=None, R=1, block=256, reps=40):
        isz = np.dtype(NP[dt]).itemsize
        copies = max(2, -(-(160 << 20) // (N * K * isz)))  # rotate > L2 (50 MB)
        if (dt, K, N) not in wcache:
            wcache.clear()
            base = rnd(rng, (N, K), dt)
            wcache[(dt, K, N)] = [DT(np.roll(base, i, axis=0), lambda h: h.T) for i in range(copies)]
        ws = wcache[(dt, K, N)]
        x = DT(rnd(rng, (1, K), dt))
        y = DT.empty((1, N), NP[dt])
        if fname is None:
            fn = lambda i: lib.matmul(dt, y.arg, x.arg, ws[i % copies].arg, stream=s)  # noqa: E731
        else:
            f = lib.function(fname) if fname.startswith("gemv_f") else mod.get_function(fname)
            grid = (-(-N // (R * block // 32)), 1, 1)
            args = [[y.arg.addr, y.arg.td, x.arg.addr, x.arg.td, w.arg.addr, w.arg.td] for w in ws]
            fn = lambda i: driver.launch(f, grid, block, args[i % copies], stream=s)  # noqa: E731
        us = _graph_time_us(fn, s, reps)
        last = (reps - 1) % copies
        assert_close(y.fetch(), f64(x.host) @ f64(ws[last].view), dt, MM_TOL[dt], what=f"bench {fname}")
        return (N * K + K + N) * isz / us / 1e3, us

    for dt in DTYPES:
        bw, us = gemv_bw(dt, 4096, 4096)
        res[f"gemv_{dt}_4096x4096_GBps"], res[f"gemv_{dt}_4096x4096_us"] = bw, us
    for dt in ("f16", "f32"):
        for (R, U, S) in GEMV_TUNE:
            for block in (128, 256, 512):
                bw, _ = gemv_bw(dt, 4096, 4096, f"gemv_tune_{R}_{U}_{S}_{dt}", R, block)
                res[f"tune_{dt}_R{R}_U{U}_S{S}_b{block}_GBps"] = bw
    for K, N in ((4096, 14336), (14336, 4096), (576, 1536), (1536, 576), (576, 576), (576, 49152)):
        bw, us = gemv_bw("f16", K, N)
        res[f"gemv_f16_K{K}_N{N}_GBps"] = bw
        res[f"gemv_f16_K{K}_N{N}_us"] = us
        if N <= 1536:
            for block in (64, 128, 256):
                res[f"gemv_f16_K{K}_N{N}_b{block}_us"] = gemv_bw("f16", K, N, "gemv_f16", 1, block)[1]
    # matmuls, K = N = 4096, B = transposed [out, in] weight
    K = N = 4096
    for M in (32, 128, 512, 2048):
        for dt, algo in (("f16", "matmul_tc3_64_3"), ("f16", "matmul_tc3_64_4"), ("bf16", "matmul_tc3")):
            a = DT(rnd(rng, (M, K), dt))
            w = DT(rnd(rng, (N, K), dt), lambda h: h.T)
            c = DT.empty((M, N), NP[dt])
            us = _graph_time_us(lambda i: lib.matmul(dt, c.arg, a.arg, w.arg, stream=s, algo=algo), s, 5)
            res[f"{algo}_{dt}_M{M}_TFLOPs"] = 2 * M * N * K / us / 1e6
    for algo in ("matmul_tc3_64_3", "matmul_tc3_64_4"):  # B row-major [in, out] (GPT-2 Conv1D): scalar B loads
        a = DT(rnd(rng, (512, K), "f16"))
        w = DT(rnd(rng, (K, N), "f16"))
        c = DT.empty((512, N), np.float16)
        us = _graph_time_us(lambda i: lib.matmul("f16", c.arg, a.arg, w.arg, stream=s, algo=algo), s, 5)
        res[f"{algo}_f16_M512_Browmajor_TFLOPs"] = 2 * 512 * N * K / us / 1e6
    a = DT(rnd(rng, (512, K), "f32"))
    w = DT(rnd(rng, (N, K), "f32"), lambda h: h.T)
    c = DT.empty((512, N), np.float32)
    us = _graph_time_us(lambda i: lib.matmul("f32", c.arg, a.arg, w.arg, stream=s), s, 3)
    res["matmul_f32_M512_TFLOPs"] = 2 * 512 * N * K / us / 1e6

    # launch overhead: eager vs CUDA-graph replay of tiny launches
    t = DT(rnd(rng, (256,), "f32"))
    f = lib.get("scale", "f32")
    args = [t.arg.addr, t.arg.td, t.arg.addr, t.arg.td, kernels.f32(1.0)]
    for _ in range(50):
        driver.launch(f, 1, 256, args, stream=s)
    s.synchronize()
    t0 = _t.perf_counter()
    for _ in range(2000):
        driver.launch(f, 1, 256, args, stream=s)
    res["eager_launch_host_us"] = (_t.perf_counter() - t0) / 2000 * 1e6
    s.synchronize()
    t0 = _t.perf_counter()
    for _ in range(500):
        lib.scale("f32", t.arg, t.arg, 1.0, stream=s)
    res["lib_helper_launch_host_us"] = (_t.perf_counter() - t0) / 500 * 1e6
    s.synchronize()
    with lib.record() as pls:
        lib.scale("f32", t.arg, t.arg, 1.0)
    pl = pls[0]
    t0 = _t.perf_counter()
    for _ in range(2000):
        pl(s)
    res["prepared_launch_host_us"] = (_t.perf_counter() - t0) / 2000 * 1e6
    s.synchronize()
    res["graph_replay_us_per_kernel"] = _graph_time_us(
        lambda i: driver.launch(f, 1, 256, args, stream=s), s, 200)
    print("\nBENCH " + json.dumps({k: round(v, 2) for k, v in res.items()}))
    out = os.environ.get("TINYGRAPH_BENCH_OUT")
    if out:
        with open(out, "w") as fh:
            json.dump(res, fh, indent=1)
    assert res["gemv_f16_4096x4096_GBps"] > 100
