"""Helpers shared by the kernel-level CUDA tests: device arrays with poisoned outputs, float64
references and closeness checks, and the ``dev``/``rng``/``lib`` fixtures. Importing it skips the
importing test module where no CUDA driver/GPU is usable."""
from __future__ import annotations

import math
import os
import zlib

import ml_dtypes
import numpy as np
import pytest

from tinygraph.backends.cuda import driver, kernels

if not driver.driver_available():
    pytest.skip(f"no CUDA driver/GPU: {driver.driver_unavailable_reason()}", allow_module_level=True)

Arg = kernels.Arg
NP = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
TOL = {"f32": 1e-5, "f16": 1e-2, "bf16": 1e-2}
DTYPES = ["f32", "f16", "bf16"]


@pytest.fixture(scope="module")
def dev():
    return driver.get_device(0)


@pytest.fixture(scope="module")
def lib(dev, tmp_path_factory):
    old = os.environ.get("TINYGRAPH_CACHE_DIR")
    os.environ["TINYGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcache"))
    try:
        lib = kernels.KernelLibrary(dev)
        lib.load_all()
        yield lib
    finally:
        if old is None:
            os.environ.pop("TINYGRAPH_CACHE_DIR", None)
        else:
            os.environ["TINYGRAPH_CACHE_DIR"] = old


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


class DT:
    """A host array mirrored in a device buffer, plus a NumPy view of it that the kernel sees.

    ``fn`` maps the (contiguous) host base array to the view (slicing / transposition), so the
    device Arg has the same element offset and strides as the NumPy view."""

    def __init__(self, base, fn=None, poison=False):
        self.host = np.ascontiguousarray(base)
        self.fn = fn
        self.view = fn(self.host) if fn else self.host
        self.buf = driver.DeviceBuffer(max(self.host.nbytes, 1), what="test tensor")
        if poison:
            driver.memset_d8(self.buf, 0xFF, self.host.nbytes)
            self.buf.download(self.host)
        else:
            self.buf.upload(self.host)

    @classmethod
    def empty(cls, shape, dtype, fn=None):
        return cls(np.zeros(shape, dtype), fn, poison=True)

    @property
    def ptr(self) -> int:
        return self.arg.ptr

    def remap(self, g):
        """A new DT whose base is g(base), with the same view function."""
        return DT(g(self.host), self.fn)

    def _offset_strides(self):
        isz = self.host.itemsize
        v = self.view
        assert v.size == 0 or np.shares_memory(v, self.host), "view function must return a view"
        off = v.__array_interface__["data"][0] - self.host.__array_interface__["data"][0]
        assert off % isz == 0 and all(st % isz == 0 for st in v.strides)
        return off // isz, tuple(st // isz for st in v.strides)

    @property
    def arg(self) -> Arg:
        off, st = self._offset_strides()
        return Arg(self.buf.ptr + off * self.host.itemsize, tuple(self.view.shape), st)

    def fetch(self):
        self.buf.download(self.host)
        return self.view

    def untouched_mask(self):
        """True where the host base is NOT part of the view."""
        off, st = self._offset_strides()
        m = np.ones(self.host.size, bool)
        mv = np.lib.stride_tricks.as_strided(m[off:], shape=self.view.shape, strides=st)
        mv[...] = False
        return m.reshape(self.host.shape)


def launched_names(monkeypatch) -> list[str]:
    """The names of the kernels launched from now on in this test, in order (driver.launch spied on)."""
    names: list[str] = []
    real = driver.launch

    def spy(f, *a, **k):
        names.append(f.name)
        return real(f, *a, **k)

    monkeypatch.setattr(driver, "launch", spy)
    return names


def replay_in_graph(launches) -> None:
    """Capture recorded launches (``lib.record()``) into a CUDA graph on a new stream, launch the
    graph once and wait for it."""
    s = driver.Stream()
    g = driver.Graph()
    with driver.capture(s, g):
        for p in launches:
            p(s)
    g.instantiate().launch(s)
    s.synchronize()


def rnd(rng, shape, dt, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(NP[dt])


def f64(a):
    return np.asarray(a).astype(np.float64)


def assert_close(out, ref, dt, tol=None, what=""):
    tol = TOL[dt] if tol is None else tol
    out = f64(out)
    ref = np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    bad = ~np.isfinite(out) & np.isfinite(ref)
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} outputs non-finite (unwritten?)"
    fin = np.isfinite(ref)
    o, r = out[fin], ref[fin]
    if r.size == 0:
        return
    nrm = np.linalg.norm(r)
    err = np.linalg.norm(o - r) / max(nrm, 1e-30)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:g}"
    rms = nrm / math.sqrt(r.size)
    lim = 8 * tol * (np.abs(r) + rms)
    worst = np.argmax(np.abs(o - r) - lim)
    assert (np.abs(o - r) <= lim).all(), (
        f"{what}: element {np.unravel_index(worst, r.shape)} off: got {o.flat[worst]!r}, "
        f"want {r.flat[worst]!r}")


def assert_poison_kept(t: DT, what=""):
    raw = t.host.view(np.uint8).reshape(t.host.shape + (t.host.itemsize,))
    m = t.untouched_mask()
    assert (raw[m] == 0xFF).all(), f"{what}: wrote outside the output view"
