"""Hopper's wgmma GEMM (cuda_src/gemm_wgmma.cu, sm_90a; work in progress) vs float64 NumPy:
C = A @ W^T for whole tiles, ragged edges (zero-filled loads, masked stores) and a strided C, in
f16 and bf16. Skipped without an sm_90 GPU. Every output is poisoned (NaN) first, so an unwritten
element fails, and the bytes around a strided C must stay untouched."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tinygraph.backends.cuda import gemm_launch, kernels  # noqa: E402
from cuda_support import DT, assert_close, assert_poison_kept, dev, f64, rnd, rng  # noqa: E402,F401


#: kernels under test: gemm_wgmma (cp.async ring) in three compile-time shapes (the default, one
#: wgmma group left running, 128 x 256 tiles), and the TMA-fed gemm_tma128 / gemm_tma256
CONFIGS = [("wgmma", ()), ("wgmma", ("-DGW_INFLIGHT=1",)), ("wgmma", ("-DGW_BN=256", "-DGW_INFLIGHT=1")),
           ("tma128", ()), ("tma256", ())]


def _gemm(lib, dt, c, a, w_ptr, ldw, N):
    if lib.kind == "wgmma":
        gemm_launch.gemm_wgmma(lib, dt, c, a, w_ptr, ldw, N)
    else:
        gemm_launch.gemm_tma(lib, dt, c, a, w_ptr, ldw, N, bn=int(lib.kind[3:]))


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda p: " ".join((p[0],) + p[1]))
def lib(dev, tmp_path_factory, request):
    old = os.environ.get("TINYGRAPH_CACHE_DIR")
    if old is None:
        os.environ["TINYGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcache"))
    try:
        lib = kernels.KernelLibrary(dev, options=request.param[1])
        lib.kind = request.param[0]
        if lib.file_arch("gemm_wgmma.cu") != "sm_90a":
            pytest.skip(f"wgmma needs sm_90 (this GPU: {lib.arch})")
        yield lib
    finally:
        if old is None:
            os.environ.pop("TINYGRAPH_CACHE_DIR", None)


@pytest.mark.parametrize("dt", ["f16", "bf16"])
@pytest.mark.parametrize("M,N,K", [(128, 128, 64), (128, 128, 128), (256, 384, 512), (200, 130, 72),
                                   (1, 128, 64), (37, 1000, 8), (512, 4096, 4096)])
def test_gemm_matches_float64(lib, rng, dt, M, N, K):
    a = DT(rnd(rng, (M, K), dt))
    w = DT(rnd(rng, (N, K), dt, scale=K ** -0.5))
    c = DT.empty((M, N), a.host.dtype)
    _gemm(lib, dt, c.arg, a.arg, w.ptr, K, N)
    assert_close(c.fetch(), f64(a.view) @ f64(w.view).T, dt, what=f"{M}x{N}x{K}")


def test_a_strided_c_and_a(lib, rng):
    M, N, K = 130, 256, 192
    a = DT(rnd(rng, (M, K + 64), "f16"), lambda h: h[:, 16:16 + K])     # rows of K + 64, offset 16
    w = DT(rnd(rng, (N, K + 8), "f16", scale=K ** -0.5), lambda h: h[:, :K])
    c = DT.empty((M, N + 24), np.float16, lambda h: h[:, 8:8 + N])
    _gemm(lib, "f16", c.arg, a.arg, w.ptr, K + 8, N)
    assert_close(c.fetch(), f64(a.view) @ f64(w.view).T, "f16")
    assert_poison_kept(c, "strided C")


def test_odd_c_stride_and_offset(lib, rng):
    """C rows of an odd length at an odd element offset: the epilogue's 4-byte stores must fall
    back to 2-byte ones."""
    M, N, K = 70, 200, 64
    a = DT(rnd(rng, (M, K), "bf16"))
    w = DT(rnd(rng, (N, K), "bf16", scale=K ** -0.5))
    c = DT.empty((M, N + 3), a.host.dtype, lambda h: h[:, 1:1 + N])
    _gemm(lib, "bf16", c.arg, a.arg, w.ptr, K, N)
    assert_close(c.fetch(), f64(a.view) @ f64(w.view).T, "bf16")
    assert_poison_kept(c, "odd C")


def test_bad_shapes_are_refused(lib, rng):
    a = DT(rnd(rng, (4, 12), "f16"))
    c = DT.empty((4, 16), np.float16)
    with pytest.raises(ValueError, match="multiples of 8"):
        _gemm(lib, "f16", c.arg, a.arg, a.ptr, 12, 16)
