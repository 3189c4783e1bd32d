"""Hopper's TMA-fed wgmma GEMM (cuda_src/gemm_wgmma.cu, sm_90a; both tile widths) vs float64 NumPy:
C = A @ W^T for whole tiles, ragged edges (zero-filled loads, masked stores) and a strided C, in
f16 and bf16. Skipped without an sm_90 GPU. Every output is poisoned (NaN) first, so an unwritten
element fails, and the bytes around a strided C must stay untouched."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tinygraph.backends.cuda import gemm_launch, kernels  # noqa: E402
from cuda_support import DT, assert_close, assert_poison_kept, dev, f64, rnd, rng  # noqa: E402,F401


def _gemm(lib, dt, c, a, w_ptr, ldw, N):
    gemm_launch.gemm_tma(lib, dt, c, a, w_ptr, ldw, N, bn=lib.bn)


@pytest.fixture(scope="module", params=[128, 192, 256], ids=lambda bn: f"tma{bn}")
def lib(dev, tmp_path_factory, request):
    old = os.environ.get("TINYGRAPH_CACHE_DIR")
    if old is None:
        os.environ["TINYGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcache"))
    try:
        lib = kernels.KernelLibrary(dev)
        lib.bn = request.param  # the tile width under test
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


def _act(z: np.ndarray, act: int) -> np.ndarray:
    if act == 1:
        return 0.5 * z * (1 + np.tanh(0.7978845608028654 * (z + 0.044715 * z ** 3)))
    return z / (1 + np.exp(-z)) if act == 2 else z


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("M,N,K,with_bias,res_mode", [(200, 136, 72, True, "own"), (128, 256, 128, False, "none"),
                                                      (300, 1000, 256, True, "alias"), (64, 72, 64, False, "own")])
def test_fused_epilogue_matches_float64(lib, rng, act, M, N, K, with_bias, res_mode):
    """C = act(A @ W^T + bias) + res in the GEMM's stores (swiglu: W has 2N rows, gate then up;
    res "alias": res is C itself, read before it is written)."""
    dt = "f16"
    rows = 2 * N if act == 3 else N
    a = DT(rnd(rng, (M, K), dt))
    w = DT(rnd(rng, (rows, K), dt, scale=K ** -0.5))
    bias = DT(rnd(rng, (rows,), dt)) if with_bias else None
    z = f64(a.view) @ f64(w.view).T + (f64(bias.view) if bias is not None else 0.0)
    want = _act(z[:, :N], 2) * z[:, N:] if act == 3 else _act(z, act)
    res = None
    if res_mode == "own":
        res = DT(rnd(rng, (M, N), dt))
        c = DT.empty((M, N), a.host.dtype)
    elif res_mode == "alias":
        c = DT(rnd(rng, (M, N), dt))
        res = c
    else:
        c = DT.empty((M, N), a.host.dtype)
    if res is not None:
        want = want + f64(res.view)
    gemm_launch.gemm_tma(lib, dt, c.arg, a.arg, w.ptr, K, N, bn=lib.bn, bias=bias.ptr if bias is not None else None,
                         res=res.arg if res is not None else None, act=act)
    assert_close(c.fetch(), want, dt, what=f"act {act} {M}x{N}x{K}")


def test_bad_shapes_are_refused(lib, rng):
    a = DT(rnd(rng, (4, 12), "f16"))
    c = DT.empty((4, 16), np.float16)
    with pytest.raises(ValueError, match="multiples of 8"):
        _gemm(lib, "f16", c.arg, a.arg, a.ptr, 12, 16)


def _prefill_chain(backend: str, dt, M: int, K: int, offset: int = 0, seed: int = 0):
    """x [M, K] (a view ``offset`` elements into its input) -> swiglu up (2F; x itself is the
    GEMM's A) -> down + residual -> layer-normed gelu with bias: three prefill-sized linears
    through the backend's lowering, as a model's layers use them."""
    import tinygraph as tg
    rng = np.random.default_rng(seed)
    F = 3 * K // 2
    sess = tg.Session(backend=backend, verbose=False)
    shapes = {"up": ((2 * F, K), K ** -0.5), "down": ((K, F), F ** -0.5),
              "lw": ((K,), 1.0), "lb": ((K,), 0.1), "fc": ((K, K), K ** -0.5), "b": ((K,), 0.1)}
    ws = {k: (sess.persistent(s, dt, name=k), (rng.standard_normal(s) * sc).astype(np.float32))
          for k, (s, sc) in shapes.items()}
    sess.finalize()
    for t, v in ws.values():
        sess.upload(t, v.astype(dt.np))
    g = sess.graph()
    xin = g.input((M * K + offset,), dt, name="x")
    x = tg.view(xin, (M, K), offset=offset)
    w = {k: t for k, (t, _) in ws.items()}
    h = tg.linear(x, w["up"], act="swiglu")
    h = tg.linear(h, w["down"], residual=x)
    g.output(tg.linear(h, w["fc"], bias=w["b"], norm="layer", norm_w=w["lw"], norm_b=w["lb"], act="gelu"))
    xv = rng.standard_normal((M * K + offset,)).astype(dt.np)
    out = sess.compute(g, {xin: xv})[0]
    sess.close()
    return out


@pytest.mark.parametrize("dtn,M,K,offset,want", [("float16", 100, 576, 0, "gemm_tma128"),
                                                 ("bfloat16", 300, 1024, 0, "gemm_tma"),
                                                 ("float16", 130, 512, 4, "matmul_tc3")])
def test_prefill_linears_take_gemm_tma(dev, monkeypatch, dtn, M, K, offset, want):
    """Prefill-sized linears run on gemm_tma on an sm_90 GPU (an activation 8 bytes off a 16-byte
    boundary falls back to matmul_tc3 for the product that reads it), and agree with the NumPy backend; TINYGRAPH_WGMMA=0 puts
    them back on matmul_tc3 with the same result up to float32 rounding order."""
    import tinygraph as tg
    from cuda_support import launched_names
    if kernels.KernelLibrary(dev).file_arch("gemm_wgmma.cu") != "sm_90a":
        pytest.skip("gemm_tma needs sm_90")
    dt = getattr(tg, dtn)
    names = launched_names(monkeypatch)
    on = _prefill_chain("cuda", dt, M, K, offset)
    gemms = [n for n in names if n.startswith(("gemm_tma", "matmul_tc3"))]
    assert len(gemms) == 3 and gemms[0].startswith(want) and all(n.startswith("gemm_tma") for n in gemms[1:]), gemms
    # the epilogues (swiglu, residual, bias + gelu) ride in gemm_tma's stores; matmul_tc3 needs its own
    assert sum(n.startswith("linear_epilogue") for n in names) == (1 if want == "matmul_tc3" else 0), names
    monkeypatch.setenv("TINYGRAPH_WGMMA", "0")
    del names[:]
    off = _prefill_chain("cuda", dt, M, K, offset)
    assert not any(n.startswith("gemm_tma") for n in names)
    ref = _prefill_chain("numpy", dt, M, K, offset)
    tol = 3e-2
    np.testing.assert_allclose(on.astype(np.float32), ref.astype(np.float32), rtol=tol, atol=tol)
    np.testing.assert_allclose(on.astype(np.float32), off.astype(np.float32), rtol=tol, atol=tol)
