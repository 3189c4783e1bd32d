"""Split-K products (``select.split_k``, ``matmul_tc3s`` + ``matmul_splitk_reduce``): a batched
decode's 9..64 rows against a 2048-wide weight give few 128x128 output tiles, so K is split over
about one block per SM; 2..64 rows take ``matmul_tc3s_m<16|32|64>`` (output tiles of that many
rows, ``select.small_m_splits``). The choice on the CPU; the products against float64 on NumPy
and (on a GPU) CUDA, as ``linear`` (the fused op's prefill path) and as a plain ``matmul``."""
from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from conftest import rel_err
from tinygraph.backends.cuda import select

H200 = select.DeviceCaps(90, 132, 227 * 1024)


def test_split_choice():
    assert select.split_k(64, 2048, 2048, 1, "f16", H200) == 8      # 16 tiles, 32 K tiles: 8 x 4
    assert select.split_k(32, 2048, 5632, 1, "bf16", H200) == 8     # 132 // 16
    assert select.split_k(64, 576, 1536, 1, "f16", H200) == 6      # 5 tiles, 24 K tiles: 4 each
    assert select.split_k(64, 11264, 2048, 1, "f16", H200) == 1     # 88 tiles: most SMs busy already
    assert select.split_k(512, 2048, 2048, 1, "f16", H200) == 1     # prefill rows: unchanged
    assert select.split_k(64, 2048, 2048, 4, "f16", H200) == 1      # batched products: never
    assert select.split_k(64, 2048, 2048, 1, "f32", H200) == 1      # the f32 kernel has no split
    assert select.split_k(64, 2048, 192, 1, "f16", H200) == 1       # 3 K tiles: nothing to split
    assert select.split_k(64, 2048, 2048, 1, "f16", select.DeviceCaps(89, 128, 99 * 1024)) == 1  # 147 KB smem


@pytest.mark.parametrize("M, K, N", [(64, 2048, 2048), (33, 5632, 2048), (17, 1000, 576), (64, 4160, 300),
                                     (2, 4160, 300), (9, 2048, 24576), (16, 72, 130), (32, 4096, 6144),
                                     (5, 1000, 576), (8, 2048, 2048)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_split_products(M, K, N, dtype, backend):
    rng = np.random.default_rng(M + K + N)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    dt = tg.dtypes.as_dtype(dtype)
    xs, ws = (np.asarray(a, dt.np).astype(np.float64) for a in (x, w))
    want = xs @ ws.T
    with tg.Session(backend=backend) as s:
        W = s.persistent((N, K), dt, name="w")
        s.finalize()
        s.upload(W, w)
        g = s.graph()
        xi = g.input((M, K), dt, name="x")
        g.output(tg.linear(xi, W, residual=None, act="silu"))
        g.output(tg.matmul(xi, tg.transpose(W)))
        lin, mm = s.compute(g, {xi: x})
    tol = 3e-3 if dtype == "float16" else 2e-2
    assert rel_err(mm.astype(np.float64), want) < tol
    assert rel_err(lin.astype(np.float64), want / (1 + np.exp(-want))) < tol


@pytest.mark.parametrize("M, tile", [(40, 64), (8, 16)])
@pytest.mark.parametrize("act", ["swiglu", "gelu", None])
def test_split_linear_epilogue(act, M, tile, backend):
    """A split linear with every epilogue part (RMS norm, bias, activation or SwiGLU, residual):
    on CUDA the kernel that adds split-K's partials up applies them (linear_splitk_epilogue).
    8 rows: past the fused GEMV's limit (select.gemv_limit), on 16-row tiles."""
    K, N = 2048, 2048
    rng = np.random.default_rng(7)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) * 0.1
    nw = (1 + 0.1 * rng.standard_normal(K)).astype(np.float32)
    Nout = N // 2 if act == "swiglu" else N
    r = rng.standard_normal((M, Nout)).astype(np.float32)
    dt = tg.float16
    xs, ws, bs, ns, rs = (np.asarray(a, dt.np).astype(np.float64) for a in (x, w, b, nw, r))
    h = np.asarray(xs / np.sqrt((xs * xs).mean(-1, keepdims=True) + 1e-6) * ns, dt.np).astype(np.float64)
    z = h @ ws.T + bs
    if act == "swiglu":
        g_, u = z[:, :Nout], z[:, Nout:]
        a = g_ / (1 + np.exp(-g_)) * u
    elif act == "gelu":
        a = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    else:
        a = z
    with tg.Session(backend=backend) as s:
        W, B, NW = (s.persistent(sh, dt, name=nm) for sh, nm in (((N, K), "w"), ((N,), "b"), ((K,), "nw")))
        s.finalize()
        for t, v in ((W, w), (B, b), (NW, nw)):
            s.upload(t, v)
        g = s.graph()
        xi, ri = g.input((M, K), dt, name="x"), g.input((M, Nout), dt, name="r")
        g.output(tg.linear(xi, W, bias=B, residual=ri, norm="rms", norm_w=NW, eps=1e-6, act=act))
        (y,) = s.compute(g, {xi: x, ri: r})
        if backend == "cuda":  # output tiles of `tile` rows; the epilogue adds the partials
            assert any(k == ["rms_norm_f16", f"matmul_tc3s_m{tile}_f16", "linear_splitk_epilogue_f16"]
                       for k in g.kernels.values()), g.kernels
    assert rel_err(y.astype(np.float64), a + rs) < 3e-3
