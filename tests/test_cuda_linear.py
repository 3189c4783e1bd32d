"""Fused linear kernels (cuda_src/linear.cu) vs a float64 NumPy reference (needs a GPU).

    y = act(norm(x) @ w.T + bias) + residual          linear_gemv_<T>   (decode: a few rows)
    y = act(z + bias) + residual                      linear_epilogue_<T> (prefill tail)

Every output buffer is poisoned with 0xFF bytes (NaN) before the launch, so an unwritten element
fails; strided outputs also check that the gaps between their elements stay untouched.
"""
from __future__ import annotations

import ctypes
import itertools
import math
import os

import numpy as np
import pytest

from tinygraph.backends.cuda import driver, kernels  # noqa: E402
from cuda_support import (DT, DTYPES, NP, TOL, Arg, assert_close, assert_poison_kept, dev, f64,  # noqa: E402,F401
                          replay_in_graph, rnd, rng)

NORMS = [0, 1, 2]
ACTS = [0, 1, 2, 3]
EPS = 1e-5


@pytest.fixture(scope="module")
def lib(dev, tmp_path_factory):
    # an existing TINYGRAPH_CACHE_DIR is kept (lets a benchmark run reuse the compiled cubins)
    old = os.environ.get("TINYGRAPH_CACHE_DIR")
    if old is None:
        os.environ["TINYGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcache"))
    try:
        lib = kernels.KernelLibrary(dev)
        lib.module("linear.cu")
        yield lib
    finally:
        if old is None:
            os.environ.pop("TINYGRAPH_CACHE_DIR", None)


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------
def _silu(z):
    return z / (1 + np.exp(-z))


def _gelu(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def act_ref(z, act, bias=None):
    if bias is not None:
        z = z + f64(bias)
    if act == 1:
        return _gelu(z)
    if act == 2:
        return _silu(z)
    if act == 3:
        h = z.shape[-1] // 2
        return _silu(z[..., :h]) * z[..., h:]
    return z


def linear_ref(x, w, bias=None, res=None, norm=0, nw=None, nb=None, eps=EPS, act=0):
    """float64 reference from the (already rounded) inputs."""
    h = f64(x)
    if norm == 1:
        h = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps)
        if nw is not None:
            h = h * f64(nw)
    elif norm == 2:
        mu = np.mean(h, axis=-1, keepdims=True)
        var = np.mean((h - mu) ** 2, axis=-1, keepdims=True)
        h = (h - mu) / np.sqrt(var + eps)
        if nw is not None:
            h = h * f64(nw)
        if nb is not None:
            h = h + f64(nb)
    a = act_ref(h @ f64(w).T, act, bias)
    return a + f64(res) if res is not None else a


class Case:
    """One linear_gemv problem on the device. x: (rows, K) host base viewed as (B, 1, K) (or a
    strided view); w: [N, ldw] rows (the first K columns used)."""

    def __init__(self, rng, dt, K, N, rows=1, norm=0, act=0, bias=False, res=False, ldw=None,
                 x_fn=None, x_shape=None, res_fn=None, w_misalign=False, x_shift=0.0):
        self.dt, self.K, self.N, self.norm, self.act = dt, K, N, norm, act
        self.ldw = ldw or K
        nout = N // 2 if act == 3 else N
        if x_fn is None:
            shape = x_shape or (rows, 1, K)
            self.x = DT(rnd(rng, shape, dt, 1.0, x_shift))
        else:
            self.x = x_fn(rng)
        self.out_shape = tuple(self.x.view.shape[:-1]) + (nout,)
        # weight: rows of ldw elements, optionally starting one element into the buffer
        extra = 1 if w_misalign else 0
        wb = rnd(rng, (N * self.ldw + extra,), dt, K ** -0.5)
        self.wbuf = DT(wb)
        self.w_ptr = self.wbuf.buf.ptr + extra * wb.itemsize
        self.w = wb[extra:].reshape(N, self.ldw)[:, :K]
        self.bias = DT(rnd(rng, (N,), dt, 0.5)) if bias else None
        self.nw = DT(rnd(rng, (K,), dt, 0.3, 1.0)) if norm else None
        self.nb = DT(rnd(rng, (K,), dt, 0.2)) if norm == 2 else None
        if res:
            self.res = res_fn(rng, self.out_shape) if res_fn else DT(rnd(rng, self.out_shape, dt))
        else:
            self.res = None

    def ref(self):
        return linear_ref(self.x.view, self.w, None if self.bias is None else self.bias.host,
                          None if self.res is None else self.res.view, self.norm,
                          None if self.nw is None else self.nw.host,
                          None if self.nb is None else self.nb.host, EPS, self.act)

    def run(self, lib, y: DT | None = None, alias_res=False, **kw):
        if alias_res:
            y = self.res
        elif y is None:
            y = DT.empty(self.out_shape, NP[self.dt])
        lib.linear(self.dt, y.arg, self.x.arg, self.w_ptr, self.ldw, self.N, self.K,
                   bias=None if self.bias is None else self.bias.ptr,
                   res=None if self.res is None else self.res.arg, norm=self.norm,
                   norm_w=None if self.nw is None else self.nw.ptr,
                   norm_b=None if self.nb is None else self.nb.ptr, eps=EPS, act=self.act, **kw)
        return y

    def check(self, lib, what="", alias_res=False, y=None, **kw):
        ref = self.ref()  # before the launch: y may overwrite the residual
        y = self.run(lib, y=y, alias_res=alias_res, **kw)
        assert_close(y.fetch(), ref, self.dt, what=f"{what} {self.dt} K={self.K} N={self.N} "
                     f"norm={self.norm} act={self.act} {kw}")
        return y


# ----------------------------------------------------------------------------------------------
# linear_gemv: every norm x act x bias x residual x dtype, rows 1 and 3
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("norm", NORMS)
def test_linear_combinations(lib, rng, dt, norm, act):
    N = 200 if act == 3 else 96
    for bias, res, rows in itertools.product((False, True), (False, True), (1, 3)):
        c = Case(rng, dt, 576, N, rows=rows, norm=norm, act=act, bias=bias, res=res)
        c.check(lib, f"combo bias={bias} res={res} rows={rows}")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("K,N,act", [(64, 96, 0), (576, 96, 2), (1000, 1000, 1), (4096, 1000, 0),
                                     (576, 3072, 3), (1000, 3072, 3), (4096, 3072, 3),
                                     (64, 49152, 0), (576, 49152, 0)])
def test_linear_sizes(lib, rng, dt, K, N, act):
    for norm in (1, 2):
        c = Case(rng, dt, K, N, norm=norm, act=act, bias=norm == 2, res=True)
        c.check(lib, "sizes")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("rows", [2, 4, 5, 16])
def test_linear_rows(lib, rng, dt, rows):
    # rows per block RB = 2 / 4 (the last group partly masked for 5), and RB shrinking with K
    for K, act, norm in ((576, 3, 1), (1000, 0, 2), (8192, 2, 1), (12288, 0, 0)):
        if K > 4096 and rows > 5:
            continue
        c = Case(rng, dt, K, 384, rows=rows, norm=norm, act=act, bias=True, res=True)
        c.check(lib, f"rows={rows} rb={kernels.linear_rows_per_block(rows, K)}")


@pytest.mark.parametrize("dt", DTYPES)
def test_linear_residual_alias_and_strides(lib, rng, dt):
    K, N = 576, 160
    # y aliasing the residual (in-place residual add), rows 1 and 3
    for rows, act in ((1, 0), (3, 3), (3, 1)):
        c = Case(rng, dt, K, N, rows=rows, norm=1, act=act, bias=True, res=True)
        c.check(lib, "alias", alias_res=True)
    # strided x (every other element of a wider row), x as [K] and [1, K]
    c = Case(rng, dt, K, N, norm=2, act=2, bias=True, res=True,
             x_fn=lambda r: DT(rnd(r, (2, 1, 2 * K), dt), lambda h: h[:, :, ::2]))
    c.check(lib, "strided x")
    for shape in ((K,), (1, K)):
        Case(rng, dt, K, N, norm=1, act=0, res=True, x_shape=shape).check(lib, f"x{shape}")
    # strided residual (a column slice of a wider buffer) and a strided output view
    c = Case(rng, dt, K, N, rows=3, norm=0, act=0, bias=True, res=True,
             res_fn=lambda r, s: DT(rnd(r, s[:-1] + (2 * s[-1] + 3,), dt), lambda h: h[..., 3::2]))
    y = DT.empty((3, 1, 2 * N + 1), NP[dt], lambda h: h[..., 1::2])
    c.check(lib, "strided res / y", y=y)
    assert_poison_kept(y, "strided y")
    # residual and y aliasing through the same strided view
    c = Case(rng, dt, K, N, rows=3, norm=1, act=0, res=True,
             res_fn=lambda r, s: DT(rnd(r, s[:-1] + (2 * s[-1],), dt), lambda h: h[..., ::2]))
    c.check(lib, "strided alias", alias_res=True)


@pytest.mark.parametrize("dt", DTYPES)
def test_linear_odd_k_and_scalar_paths(lib, rng, dt):
    vec = 16 // np.dtype(NP[dt]).itemsize
    for K, ldw, mis in ((1001, None, False),          # ldw odd: scalar weight loads
                        (1001, 1008, False),          # 16-byte rows + a scalar tail of K % vec
                        (1003, 1003 + (-1003) % vec, False),
                        (512, None, True),            # misaligned weight pointer: scalar
                        (24, None, False), (8, None, False), (5, None, False)):
        for act in (0, 3):
            c = Case(rng, dt, K, 130, rows=3 if K < 100 else 1, norm=1 if K > 8 else 2, act=act,
                     bias=True, res=True, ldw=ldw, w_misalign=mis)
            c.check(lib, f"odd ldw={ldw} mis={mis}")


@pytest.mark.parametrize("dt", ["f32", "f16"])
def test_linear_launch_shapes(lib, rng, dt):
    """Any block size and grid cap give the same result (warps loop over columns, the weight
    pipeline crosses column boundaries)."""
    c = Case(rng, dt, 1000, 1234, rows=1, norm=1, act=0, bias=True, res=True)
    c3 = Case(rng, dt, 576, 2 * 517, rows=3, norm=2, act=3, bias=True, res=True)
    for block, cap in ((32, None), (64, 1), (256, 3), (128, 7), (96, 1000), (256, None), (256, 0)):
        c.check(lib, "launch", block=block, max_blocks=cap)
        c3.check(lib, "launch rows=3", block=block, max_blocks=cap)
    # the generic kernel for one row, and the one-row-per-block kernel for several rows
    c.check(lib, "generic kernel", func=lib.get("linear_gemv", dt))
    c3.check(lib, "linear_gemv1, rows=3", func=lib.get("linear_gemv1", dt))


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_linear_large_k_dynamic_smem(lib, rng, dt):
    # K * 4 bytes > 48 KB of staged row: the helper raises the function's shared-memory limit
    for K in (16384, 20000):
        c = Case(rng, dt, K, 70, rows=2, norm=1, act=3 if K == 16384 else 0, bias=True, res=True)
        c.check(lib, "large K")


def test_linear_layer_norm_offset_mean(lib, rng):
    # layer norm on rows with a large mean: two-pass variance keeps float32 accurate
    c = Case(rng, "f32", 2048, 64, rows=2, norm=2, act=0, x_shift=50.0)
    c.check(lib, "ln offset")


def test_linear_errors(lib):
    y, x = Arg(0, (1, 1, 10)), Arg(0, (1, 1, 64))
    with pytest.raises(ValueError):
        lib.linear("f16", y, x, 0, 64, 11, 64)          # y has the wrong width
    with pytest.raises(ValueError):
        lib.linear("f16", Arg(0, (1, 1, 5)), x, 0, 64, 11, 64, act=3)   # odd N for swiglu
    with pytest.raises(ValueError):
        lib.linear("f16", y, x, 0, 32, 10, 64)          # ldw < K
    with pytest.raises(ValueError):
        lib.linear("f16", y, Arg(0, (1, 1, 63)), 0, 64, 10, 64)
    with pytest.raises(ValueError):
        lib.linear("f16", y, x, 0, 64, 10, 64, norm="batch")
    with pytest.raises(ValueError):
        lib.linear("f16", y, x, 0, 64, 10, 64, res=Arg(0, (1, 2, 10)))
    with pytest.raises(ValueError):
        lib.linear("f16", y, x, 0, 64, 10, 64, block=48)
    with pytest.raises(ValueError):
        lib.linear_epilogue("f16", Arg(0, (2, 10)), Arg(0, (2, 10)), act=3)


def test_linear_in_graph_and_record(lib, rng):
    """Recorded (PreparedLaunch) and graph-captured launches, with dynamic shared memory."""
    c = Case(rng, "f16", 576, 960, norm=1, act=0, res=True)
    big = Case(rng, "f16", 16384, 64, norm=1, act=0)
    y, yb = DT.empty(c.out_shape, np.float16), DT.empty(big.out_shape, np.float16)
    ref, refb = c.ref(), big.ref()
    with lib.record() as launches:
        c.run(lib, y=y)
        big.run(lib, y=yb)
    assert len(launches) == 2
    assert np.isnan(f64(y.fetch())).all(), "record() must not launch"
    replay_in_graph(launches)
    assert_close(y.fetch(), ref, "f16", what="graph")
    assert_close(yb.fetch(), refb, "f16", what="graph big K")


# ----------------------------------------------------------------------------------------------
# linear_epilogue
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_linear_epilogue(lib, rng, dt, act):
    B, M, N = 2, 37, 2 * 83
    nout = N // 2 if act == 3 else N
    for bias, res, alias in ((False, False, False), (True, False, False), (False, True, False),
                             (True, True, False), (True, True, True)):
        z = DT(rnd(rng, (B, M, N), dt, 2.0))
        b = DT(rnd(rng, (N,), dt)) if bias else None
        r = DT(rnd(rng, (B, M, nout), dt)) if res else None
        ref = act_ref(f64(z.host), act, None if b is None else b.host)
        if r is not None:
            ref = ref + f64(r.host)
        y = r if alias else DT.empty((B, M, nout), NP[dt])
        lib.linear_epilogue(dt, y.arg, z.arg, bias=None if b is None else b.ptr,
                            res=None if r is None else r.arg, act=act)
        assert_close(y.fetch(), ref, dt, what=f"epilogue act={act} bias={bias} res={res} alias={alias}")


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_linear_epilogue_strided(lib, rng, dt):
    # z a strided view (every other row of a scratch buffer), residual transposed, y strided
    M, N = 33, 2 * 40
    for act in (0, 3):
        nout = N // 2 if act == 3 else N
        z = DT(rnd(rng, (2 * M, N), dt), lambda h: h[::2])
        r = DT(rnd(rng, (nout, M), dt), lambda h: h.T)
        b = DT(rnd(rng, (N,), dt))
        y = DT.empty((M, 2 * nout), NP[dt], lambda h: h[:, ::2])
        ref = act_ref(f64(z.view), act, b.host) + f64(r.view)
        lib.linear_epilogue(dt, y.arg, z.arg, bias=b.ptr, res=r.arg, act=act)
        assert_close(y.fetch(), ref, dt, what=f"epilogue strided act={act}")
        assert_poison_kept(y, "epilogue strided y")


def test_registry_linear(lib):
    """The registry's parameter lists match the kernels' (count and sizes)."""
    size = {"ptr": 8, "td": 64, "f32": 4, "i32": 4, "i64": 8}
    for base in ("linear_gemv", "linear_gemv1", "linear_epilogue"):
        spec = kernels.KERNELS[base]
        for (dt,) in spec.dtypes:
            f = lib.get(base, dt)
            assert f.num_regs > 0
            sizes = f.param_sizes()
            if sizes is not None:
                assert sizes == [size[k] for _, k in spec.params], (f.name, sizes)


# ----------------------------------------------------------------------------------------------
# programmatic dependent launch: kernels that start before their predecessor finishes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "graph"])
def test_linear_chain_with_early_weight_loads(lib, rng, captured):
    """A residual stack x += rms(x) @ W_i.T of 24 layers, each launched with weight_ready=True
    (weights loaded before the kernel waits for the one before it): every layer must see the
    previous layer's output. Also in-place (y is the residual) like the models' decode graph."""
    if not lib.pdl:
        pytest.skip(f"programmatic dependent launch needs sm_90+ (library built for {lib.arch})")
    K, L = 1024, 24
    ws = [DT(rnd(rng, (K, K), "f16", K ** -0.5)) for _ in range(L)]
    nw = DT(rnd(rng, (K,), "f16", 0.3, 1.0))
    x0 = rnd(rng, (1, 1, K), "f16")
    x = DT(x0.copy())
    ref = x0.astype(np.float16)
    for w in ws:  # reference, rounded to float16 after each layer like the device buffer
        ref = linear_ref(ref, w.host, res=ref, norm=1, nw=nw.host).astype(np.float16)
    s = driver.Stream()

    def run_all():
        for w in ws:
            lib.linear("f16", x.arg, x.arg, w.ptr, K, K, K, res=x.arg, norm=1, norm_w=nw.ptr, eps=EPS,
                       stream=s, weight_ready=True)
    if captured:
        with lib.record() as launches:
            run_all()
        g = driver.Graph()
        with driver.capture(s, g):
            for p in launches:
                p(s)
        assert all(p.pdl for p in launches)
        g.instantiate().launch(s)
    else:
        run_all()
    s.synchronize()
    assert_close(x.fetch(), ref, "f16", tol=3e-2, what=f"24-layer chain ({'graph' if captured else 'eager'})")


def test_elementwise_chain_with_pdl(dev, rng):
    """200 dependent in-place elementwise launches over a multi-wave grid, launched with and
    without programmatic dependent launch: both must equal the NumPy result exactly."""
    lib = kernels.KernelLibrary(dev)
    n = 1 << 22
    a0 = rng.integers(-8, 8, n).astype(np.float32)
    results = []
    for pdl in (False, True):
        a, one = DT(a0.copy()), DT(np.ones(n, np.float32))
        f_add, f_scale = lib.get("add", "f32"), lib.get("scale", "f32")
        s = driver.Stream()
        grid, block = kernels.elementwise_config(n, lib.sm_count)
        for i in range(100):
            driver.launch(f_scale, grid, block, [a.arg.addr, a.arg.td, a.arg.addr, a.arg.td, ctypes.c_float(0.5)],
                          stream=s, pdl=pdl and lib.pdl)
            driver.launch(f_add, grid, block, [a.arg.addr, a.arg.td, a.arg.addr, a.arg.td, one.arg.addr, one.arg.td],
                          stream=s, pdl=pdl and lib.pdl)
        s.synchronize()
        results.append(a.fetch().copy())
    ref = a0.copy()
    for _ in range(100):  # the same float32 operations, one at a time
        ref = (ref * np.float32(0.5)) + np.float32(1.0)
    for r in results:
        np.testing.assert_array_equal(r, ref)
