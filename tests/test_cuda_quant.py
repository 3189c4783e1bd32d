"""Block-quantized weights on CUDA (cuda_src/linear_q.cu) against the NumPy reference and float64
(needs a GPU): the fused decode GEMV for every ggml type, dtype, norm, activation and awkward
shapes (columns not a multiple of the warps of a block; K = 32n and 256n), the prefill path
(dequantize into scratch, then the tensor-core GEMM), quantized embedding rows, and whole models."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.backends.cuda import driver
from tinygraph.quant import dequantize, quantize

if not driver.driver_available():
    pytest.skip(f"no CUDA driver/GPU: {driver.driver_unavailable_reason()}", allow_module_level=True)

TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
TOL = {tg.float32: 2e-4, tg.float16: 2e-2, tg.bfloat16: 4e-2}


@pytest.fixture(scope="module")
def cuda():
    s = tg.Session(backend="cuda")
    s.finalize()
    yield s
    s.close()


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _case(sess, qt, dt, rows, N, K, norm, act, bias, res, rng):
    q = tg.dtypes.as_dtype(qt)
    w = rng.standard_normal((N, K)).astype(np.float32)
    raw = quantize(w, qt)
    W = sess.persistent((N, K), q)
    nw = sess.persistent((K,), dt)
    B = sess.persistent((N,), dt)
    sess.upload(W, raw)
    nwv = (1 + 0.1 * rng.standard_normal(K)).astype(np.float32)
    bv = rng.standard_normal(N).astype(np.float32)
    sess.upload(nw, nwv)
    sess.upload(B, bv)
    nout = N // 2 if act == "swiglu" else N
    x = rng.standard_normal((rows, K)).astype(dt.np)
    r = rng.standard_normal((rows, nout)).astype(dt.np)
    g = sess.graph()
    xi = g.input((rows, K), dt, name="x")
    ri = g.input((rows, nout), dt, name="r")
    g.output(tg.linear(xi, W, bias=B if bias else None, residual=ri if res else None, norm=norm,
                       norm_w=nw if norm else None, eps=1e-5, act=act))
    (y,) = sess.compute(g, {xi: x, ri: r})
    # float64 reference on the dequantized weight
    h = x.astype(np.float64)
    if norm == "rms":
        h = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5) * nwv.astype(dt.np).astype(np.float64)
    elif norm == "layer":
        c = h - h.mean(-1, keepdims=True)
        h = c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5) * nwv.astype(dt.np).astype(np.float64)
    z = h @ dequantize(raw, qt, K).astype(np.float64).T
    if bias:
        z = z + bv.astype(dt.np).astype(np.float64)
    if act == "silu":
        z = z / (1 + np.exp(-z))
    elif act == "gelu":
        z = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    elif act == "swiglu":
        z = z[:, :nout] / (1 + np.exp(-z[:, :nout])) * z[:, nout:]
    if res:
        z = z + r.astype(np.float64)
    sess.free([W, nw, B])
    return y, z


def _gemv_cases(blk: int) -> list[tuple]:
    """(rows, N, K, norm, act, bias, res) decode GEMV cases for a type of block size ``blk``: columns
    not a multiple of a block's warps or tiles, K = 2, 3, 1 and 16 (or 2) blocks, every norm and
    activation."""
    return [
        (1, 37, 2 * blk, "rms", None, False, False),
        (1, 66, 3 * blk, None, "swiglu", True, True),
        (3, 19, blk, "layer", "silu", True, False),
        (1, 300, 16 * blk if blk == 32 else 2 * blk, "rms", "gelu", False, True),
    ]


@pytest.mark.parametrize("qt", TYPES)
@pytest.mark.parametrize("dt", [tg.float32, tg.float16, tg.bfloat16], ids=lambda d: d.short)
def test_linear_q_decode_and_prefill(cuda, qt, dt) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{qt}{dt.name}".encode()))
    blk = tg.dtypes.as_dtype(qt).block
    cases = _gemv_cases(blk) + [(40, 70, 2 * blk, "rms", "swiglu", True, True)]  # prefill: dequant + GEMM
    for rows, N, K, norm, act, bias, res in cases:
        y, ref = _case(cuda, qt, dt, rows, N, K, norm, act, bias, res, rng)
        assert np.all(np.isfinite(np.asarray(y, np.float32))), (qt, rows, N, K)
        assert _rel(y, ref) < TOL[dt], (qt, dt.name, rows, N, K, norm, act, _rel(y, ref))


@pytest.mark.parametrize("qt", TYPES)
def test_get_rows_of_a_quantized_table(cuda, qt) -> None:
    rng = np.random.default_rng(5)
    K = 2 * tg.dtypes.as_dtype(qt).block
    w = rng.standard_normal((50, K)).astype(np.float32)
    raw = quantize(w, qt)
    T = cuda.persistent((50, K), qt)
    cuda.upload(T, raw)
    g = cuda.graph()
    ids = g.input((5,), tg.int32, name="ids")
    g.output(tg.get_rows(T, ids, dtype=tg.float16))
    g.output(tg.get_rows(T, ids))
    pick = np.array([49, 0, 7, 7, 31], np.int32)
    h, f = cuda.compute(g, {ids: pick})
    want = dequantize(raw, qt, K)[pick]
    np.testing.assert_allclose(f, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h.astype(np.float32), want, rtol=2e-3, atol=2e-3)
    cuda.free([T])


@pytest.mark.parametrize("qt", ["q8_0", "q4_0", "q5_1"])
def test_quantized_model_on_cuda_matches_numpy(qt) -> None:
    from tinygraph.models import load_model
    ids = [3, 17, 40, 9, 100, 5, 77, 12, 31, 8, 2, 66, 90, 41, 13, 7, 19, 23]   # 18 tokens: prefill path
    mn = load_model("tests/fixtures/llama", backend="numpy", quantize=qt)
    mc = load_model("tests/fixtures/llama", backend="cuda", quantize=qt)
    np.testing.assert_allclose(mc.step(ids, 0), mn.step(ids, 0), rtol=2e-3, atol=2e-3)
    a = mn.generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True)
    b = mc.generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True)
    assert a == b
    assert mc.memory_usage()["weights"] == mn.memory_usage()["weights"]
    mc.close()


@pytest.mark.parametrize("qt", ["q4_k", "q8_0"])
def test_linear_qr_model_matches_numpy(qwen3_256, qt, monkeypatch) -> None:
    # every linear of a whole model on linear_qr (the wiring: test_cuda_launches), float16 on the
    # GPU, against the NumPy float32 model on the same dequantized weights: the logits of a prompt
    # and of each decode step fed NumPy's greedy ids, then the captured decode loop's greedy ids,
    # equal up to the first near-tie (top-2 gap of NumPy's logits under 0.1)
    from tinygraph.models import load_model
    monkeypatch.setenv("TINYGRAPH_QUANT_GEMV", "linear_qr")
    ids, n_new = [3, 17, 40, 9, 100, 5, 77, 12], 12
    mn = load_model(qwen3_256, backend="numpy", quantize=qt)
    mc = load_model(qwen3_256, backend="cuda", dtype="float16", quantize=qt)
    want, gaps, pos, feed = [], [], 0, list(ids)
    for _ in range(n_new):
        ln = np.asarray(mn.step(feed, pos), np.float64).reshape(-1, 512)[-1]
        lc = np.asarray(mc.step(feed, pos), np.float64).reshape(-1, 512)[-1]
        assert np.abs(lc - ln).max() <= 0.02 * np.abs(ln).max() + 0.02, (qt, pos, np.abs(lc - ln).max())
        top = np.sort(ln)
        gaps.append(top[-1] - top[-2])
        want.append(int(np.argmax(ln)))
        pos += len(feed)
        feed = [want[-1]]
    got = mc.generate(ids, max_new_tokens=n_new, temperature=0, ignore_eos=True)[len(ids):]
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            assert gaps[i] < 0.1, (qt, i, want, got, gaps[i])
            break
    mc.close()
    mn.close()


@pytest.mark.parametrize("qt", ["q8_0", "q4_k", "q6_k"])
def test_linear_q_two_columns_per_warp_and_long_rows(cuda, qt) -> None:
    # N large enough that the grid cap leaves each warp two columns (the P=1 second-row path),
    # 8 rows (the most the GEMV takes), and K beyond the GEMV's shared-memory staging (the
    # dequantize + GEMM fallback)
    rng = np.random.default_rng(11)
    for rows, N, K in ((1, 4104, 512), (8, 4104, 256), (1, 64, 28672)):
        y, ref = _case(cuda, qt, tg.float16, rows, N, K, "rms", None, True, True, rng)
        assert _rel(y, ref) < TOL[tg.float16], (qt, rows, N, K, _rel(y, ref))


@pytest.mark.parametrize("qt", ["q8_0", "q4_k"])
def test_download_and_unfused_matmul_of_a_quantized_weight(cuda, qt) -> None:
    rng = np.random.default_rng(12)
    N, K = 24, 256
    raw = quantize(rng.standard_normal((N, K)).astype(np.float32), qt)
    W = cuda.persistent((N, K), qt)
    cuda.upload(W, raw)
    assert np.array_equal(cuda.download(W), raw)
    g = cuda.graph()
    x = g.input((3, K), tg.float32, name="x")
    g.output(tg.matmul(x, tg.transpose(W)))
    xv = rng.standard_normal((3, K)).astype(np.float32)
    (y,) = cuda.compute(g, {x: xv})
    ref = xv.astype(np.float64) @ dequantize(raw, qt, K).astype(np.float64).T
    assert _rel(y, ref) < TOL[tg.float32]
    cuda.free([W])


@pytest.mark.parametrize("qt", ["q8_0", "q4_1", "q5_0", "q4_k", "q6_k"])
def test_int8_activation_gemv_against_the_exact_one(cuda, qt, monkeypatch) -> None:
    # TINYGRAPH_QUANT_ACT=int8: f16 decode GEMVs round the normalised row to int8 per 32
    # (linear_q8a); linear_q keeps float32 products. Both against float64.
    rng = np.random.default_rng(zlib.crc32(qt.encode()))
    blk = tg.dtypes.as_dtype(qt).block
    seed, got = int(rng.integers(1 << 30)), {}
    for exact in ("0", "1"):  # the same data both times
        monkeypatch.setenv("TINYGRAPH_QUANT_ACT", "exact" if exact == "1" else "int8")
        monkeypatch.setenv("TINYGRAPH_QUANT_GEMV", "linear_q" if exact == "1" else "")
        y, ref = _case(cuda, qt, tg.float16, 1, 96, 8 * blk, "rms", "swiglu", True, True, np.random.default_rng(seed))
        got[exact] = (np.asarray(y, np.float64), ref)
    (y8, ref), (yx, ref2) = got["0"], got["1"]
    assert np.array_equal(ref, ref2)
    assert _rel(yx, ref) < 2e-3, _rel(yx, ref)   # float32 math, f16 output
    # + int8 activations: a NumPy model of the rounding (per-32 scale max|h| / 127, to nearest)
    # gives 0.7-1.2% on these cases (swiglu multiplies two rounded products)
    assert _rel(y8, ref) < 2e-2, _rel(y8, ref)


def _nan_in_x_gives_nan(cuda, qt: str, K: int, rng, dt=tg.float16) -> list[str]:
    """A 16 x K ``qt`` linear of a row with one NaN: every output is NaN. Returns the kernels run."""
    N = 16
    W = cuda.persistent((N, K), qt)
    cuda.upload(W, quantize(rng.standard_normal((N, K)).astype(np.float32), qt))
    g = cuda.graph()
    x = g.input((1, K), dt, name="x")
    g.output(tg.linear(x, W))
    xv = np.ones((1, K), dt.np)
    xv[0, 7] = np.nan
    (y,) = cuda.compute(g, {x: xv})
    assert np.isnan(np.asarray(y, np.float32)).all()
    cuda.free([W])
    return [k for ks in g.kernels.values() for k in ks]


def test_int8_activation_gemv_propagates_non_finite_input(cuda, monkeypatch) -> None:
    monkeypatch.setenv("TINYGRAPH_QUANT_ACT", "int8")
    assert "linear_q8a_q4_k_f16" in _nan_in_x_gives_nan(cuda, "q4_k", 256, np.random.default_rng(3))


@pytest.mark.parametrize("qt", TYPES)
def test_tensor_core_gemv_against_float64(cuda, qt, monkeypatch) -> None:
    # TINYGRAPH_QUANT_GEMV=linear_qmma (cuda_src/linear_qmma.cu): weights as float16 scale * code
    # and the normalised row as float16 into mma.m16n8k16, float32 sums. Tiles of 16 rows with
    # columns past the end, swiglu's 8 + 8 rows, K not a multiple of 4 units, several x rows,
    # more tiles than one wave of blocks (a block loops over tiles), and a NaN in x.
    monkeypatch.setenv("TINYGRAPH_QUANT_GEMV", "linear_qmma")
    rng = np.random.default_rng(zlib.crc32(f"mma{qt}".encode()))
    blk = tg.dtypes.as_dtype(qt).block
    cases = _gemv_cases(blk) + [(8, 130, 5 * blk, "rms", "swiglu", True, True), (1, 20000, 512, "rms", None, True, True)]
    for rows, N, K, norm, act, bias, res in cases:
        y, ref = _case(cuda, qt, tg.float16, rows, N, K, norm, act, bias, res, rng)
        assert np.all(np.isfinite(np.asarray(y, np.float32))), (qt, rows, N, K)
        assert _rel(y, ref) < 3e-3, (qt, rows, N, K, norm, act, _rel(y, ref))
    assert f"linear_qmma_{qt}_f16" in _nan_in_x_gives_nan(cuda, qt, 2 * blk, rng)


@pytest.mark.parametrize("qt", ["q4_k", "q8_0", "q6_k"])
@pytest.mark.parametrize("dt", [tg.float16, tg.bfloat16], ids=lambda d: d.short)
def test_register_slice_gemv_against_float64(cuda, qt, dt, monkeypatch) -> None:
    # TINYGRAPH_QUANT_GEMV=linear_qr (cuda_src/linear_qr.cu): a lane keeps its 128-weight slice of
    # the row in registers as two int8 planes (16-bit fixed point per 32). Teams of 8 lanes (idle
    # lanes), 16, 32, 64 (two warps: 44 slices) and 96 (three warps, blocks of 192), several x rows,
    # swiglu's gate and up rows, columns past the end, many trips per team; q8_0's 34-byte blocks;
    # q6_k's 210-byte blocks at both 2-byte offsets of a word, the last ones at a stage's end.
    monkeypatch.setenv("TINYGRAPH_QUANT_GEMV", "linear_qr")
    rng = np.random.default_rng(zlib.crc32(f"qr{qt}{dt.short}".encode()))
    tol = 3e-3 if dt == tg.float16 else 8e-3  # the output's rounding
    if qt != "q6_k":
        cases = [(1, 37, 512, "rms", None, False, False), (1, 66, 2048, None, "swiglu", True, True),
                 (3, 19, 4096, "layer", "silu", True, False), (1, 300, 5632, "rms", "gelu", False, True),
                 (2, 130, 12288, "rms", "swiglu", True, True), (1, 20000, 1024, "rms", None, True, True)]
    else:  # rows of 16n bytes (bulk copies): K a multiple of 2048
        cases = [(1, 37, 2048, "rms", None, False, False), (1, 66, 4096, None, "swiglu", True, True),
                 (3, 19, 6144, "layer", "silu", True, False), (2, 130, 12288, "rms", "swiglu", True, True),
                 (1, 5000, 2048, "rms", "gelu", True, True), (1, 3000, 4096, "rms", None, False, True)]
    for rows, N, K, norm, act, bias, res in cases:
        y, ref = _case(cuda, qt, dt, rows, N, K, norm, act, bias, res, rng)
        assert np.all(np.isfinite(np.asarray(y, np.float32))), (rows, N, K)
        assert _rel(y, ref) < tol, (rows, N, K, norm, act, _rel(y, ref))
    assert f"linear_qr_{qt}_{dt.short}" in _nan_in_x_gives_nan(cuda, qt, cases[0][2], rng, dt)


def test_register_slice_gemv_falls_back_where_it_has_no_kernel(cuda, monkeypatch) -> None:
    # linear_qr asked for a type it does not have (q4_0): the default family runs, correctly
    monkeypatch.setenv("TINYGRAPH_QUANT_GEMV", "linear_qr")
    kernels = _nan_in_x_gives_nan(cuda, "q4_0", 64, np.random.default_rng(5))
    assert not any(k.startswith("linear_qr") for k in kernels), kernels
