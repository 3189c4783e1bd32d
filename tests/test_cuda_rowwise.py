"""CUDA row-wise kernels -- norms, softmax, RoPE -- against float64 NumPy references (needs a GPU).

Each output buffer is poisoned (all bytes 0xFF = NaN / -1) before a launch, so an unwritten
element shows up as NaN; strided outputs also check that the gaps stay untouched.
"""
from __future__ import annotations

import numpy as np
import pytest

from cuda_support import (DT, DTYPES, NP, assert_close, assert_poison_kept, dev, f64, lib,  # noqa: F401
                          rnd, rng)


# ----------------------------------------------------------------------------------------------
# norms
# ----------------------------------------------------------------------------------------------
def _rms_ref(x, w, eps):
    r = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return r * w if w is not None else r


def _ln_ref(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    r = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    if w is not None:
        r = r * w
    if b is not None:
        r = r + b
    return r


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 577), (5, 33), (2, 4097), (1, 1, 1, 31), (37, 128), (3, 9, 64)])
def test_rms_norm(lib, rng, dt, shape):
    D = shape[-1]
    x = DT(rnd(rng, shape, dt) + NP[dt](0.5))
    w = DT(rnd(rng, (D,), dt))
    out = DT.empty(shape, NP[dt])
    eps = 1e-6
    lib.rms_norm(dt, out.arg, x.arg, w.buf, eps)
    assert_close(out.fetch(), _rms_ref(f64(x.host), f64(w.host), np.float32(eps)), dt, what="rms_norm")
    out2 = DT.empty(shape, NP[dt])
    lib.rms_norm(dt, out2.arg, x.arg, None, eps)
    assert_close(out2.fetch(), _rms_ref(f64(x.host), None, np.float32(eps)), dt, what="rms_norm no w")


@pytest.mark.parametrize("dt", DTYPES)
def test_rms_norm_strided(lib, rng, dt):
    # rows with a padded row stride, output written into a strided view
    x = DT(rnd(rng, (9, 200), dt), lambda h: h[:, 3:164])
    w = DT(rnd(rng, (161,), dt))
    out = DT.empty((9, 170), NP[dt], lambda h: h[:, :161])
    lib.rms_norm(dt, out.arg, x.arg, w.buf, 1e-5)
    assert_close(out.fetch(), _rms_ref(f64(x.view), f64(w.host), np.float32(1e-5)), dt, what="rms strided")
    assert_poison_kept(out, "rms strided")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 577), (5, 33), (2, 1025), (19, 96)])
def test_layer_norm(lib, rng, dt, shape):
    D = shape[-1]
    x = DT(rnd(rng, shape, dt, 2.0) + NP[dt](3.0))  # non-zero mean: tests the two-pass variance
    w = DT(rnd(rng, (D,), dt))
    b = DT(rnd(rng, (D,), dt))
    out = DT.empty(shape, NP[dt])
    lib.layer_norm(dt, out.arg, x.arg, w.buf, b.buf, 1e-5)
    assert_close(out.fetch(), _ln_ref(f64(x.host), f64(w.host), f64(b.host), np.float32(1e-5)), dt,
                 what="layer_norm")
    out2 = DT.empty(shape, NP[dt])
    lib.layer_norm(dt, out2.arg, x.arg, None, None, 1e-5)
    assert_close(out2.fetch(), _ln_ref(f64(x.host), None, None, np.float32(1e-5)), dt, what="ln plain")


# ----------------------------------------------------------------------------------------------
# softmax
# ----------------------------------------------------------------------------------------------
def _softmax_ref(x, scale, causal, past):
    z = x * np.float64(np.float32(scale))
    T, S = x.shape[-2], x.shape[-1]
    mask = np.zeros((T, S), bool)
    if causal:
        mask = np.arange(S)[None, :] > (np.arange(T)[:, None] + past)
    z = np.where(mask, -np.inf, z)
    m = z.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(mask, 0.0, np.exp(z - m))
    s = e.sum(-1, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1), 0.0)


@pytest.mark.parametrize("dt", DTYPES)
def test_softmax(lib, rng, dt):
    cases = [
        ("plain", (2, 3, 37, 53), 0.37, False, 0),
        ("causal_past", (2, 3, 37, 53), 0.125, True, 16),
        ("causal_square", (4, 67, 67), 1.0, True, 0),
        ("masked_rows", (3, 9, 40), 0.5, True, -4),  # first rows see nothing -> zeros
        ("long_row", (2, 5000), 1.0, False, 0),
        ("decode_row", (8, 1, 300), 0.1, True, 250),  # one query at position 250 of a 300 buffer
    ]
    for name, shape, scale, causal, past in cases:
        x = DT(rnd(rng, shape, dt, 3.0))
        out = DT.empty(shape, NP[dt])
        lib.softmax(dt, out.arg, x.arg, scale, causal, past)
        assert_close(out.fetch(), _softmax_ref(f64(x.host), scale, causal, past), dt, what=f"softmax {name}")


@pytest.mark.parametrize("dt", DTYPES)
def test_softmax_past_on_device_and_strided(lib, rng, dt):
    x = DT(rnd(rng, (2, 6, 128), dt, 2.0), lambda h: h[:, :, :90])
    past = DT(np.array([40], np.int32))
    out = DT.empty((2, 6, 90), NP[dt])
    lib.softmax(dt, out.arg, x.arg, 0.7, causal=True, past=-1000, past_dev=past.buf)
    assert_close(out.fetch(), _softmax_ref(f64(x.view), 0.7, True, 40), dt, what="softmax past_dev")
    # in place
    y = DT(rnd(rng, (5, 77), dt))
    ref = _softmax_ref(f64(y.host), 1.0, False, 0)
    lib.softmax(dt, y.arg, y.arg, 1.0)
    assert_close(y.fetch(), ref, dt, what="softmax in place")


# ----------------------------------------------------------------------------------------------
# rope
# ----------------------------------------------------------------------------------------------
def _rope_ref(x, pos, theta, mode, n_dims, ff=None):
    """HF-style: float32 inv_freq and float32 angles, then float64 math."""
    hd = x.shape[-1]
    half = n_dims // 2
    d = np.arange(half)
    inv = (1.0 / np.power(np.float64(np.float32(theta)), (2.0 * d) / n_dims)).astype(np.float32)
    if ff is not None:
        inv = (inv / ff.astype(np.float32)).astype(np.float32)
    ang = (pos.astype(np.float32)[:, None] * inv[None, :]).astype(np.float32).astype(np.float64)
    cos = np.cos(ang)[:, None, :]  # (T, 1, half) against x (..., T, H, hd)
    sin = np.sin(ang)[:, None, :]
    out = x.copy()
    if mode == "neox":
        a, b = x[..., :half], x[..., half:n_dims]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_dims] = b * cos + a * sin
    else:
        a, b = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
        out[..., 0:n_dims:2] = a * cos - b * sin
        out[..., 1:n_dims:2] = b * cos + a * sin
    return out


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("mode", ["neox", "normal"])
def test_rope(lib, rng, dt, mode):
    cases = [
        ("full", (7, 3, 64), 10000.0, None, False),
        ("batch", (2, 5, 4, 128), 1e6, None, False),
        ("partial", (9, 2, 80), 10000.0, 32, False),
        ("freq_factors", (6, 3, 64), 500000.0, None, True),
        ("past the inv_freq table", (3, 2, 576), 10000.0, None, True),  # 288 pairs > TG_ROPE_TABLE
    ]
    for name, shape, theta, n_dims, use_ff in cases:
        T, hd = shape[-3], shape[-1]
        nd = hd if n_dims is None else n_dims
        x = DT(rnd(rng, shape, dt))
        pos = DT(rng.integers(0, 3000, size=T).astype(np.int32))
        ff = DT((1.0 + rng.random(nd // 2) * 7).astype(np.float32)) if use_ff else None
        out = DT.empty(shape, NP[dt])
        lib.rope(dt, out.arg, x.arg, pos.buf, theta, mode, n_dims=nd, freq_factors=ff.buf if ff else None)
        ref = _rope_ref(f64(x.host), pos.host, theta, mode, nd, ff.host if ff else None)
        assert_close(out.fetch(), ref, dt, what=f"rope {mode} {name}")


@pytest.mark.parametrize("dt", DTYPES)
def test_rope_strided_inplace(lib, rng, dt):
    # q = view into a fused qkv buffer (T, 3*H*hd) -> (T, H, hd), rotated in place
    T, H, hd = 11, 4, 64
    qkv = DT(rnd(rng, (T, 3 * H * hd), dt), lambda h: h[:, H * hd:2 * H * hd].reshape(T, H, hd))
    pos = DT(np.arange(100, 100 + T, dtype=np.int32))
    ref = _rope_ref(f64(qkv.view), pos.host, 10000.0, "neox", hd)
    before = qkv.host.copy()
    lib.rope(dt, qkv.arg, qkv.arg, pos.buf, 10000.0, "neox")
    got = qkv.fetch()
    assert_close(got, ref, dt, what="rope in place strided")
    assert np.array_equal(qkv.host[:, :H * hd].view(np.uint8), before[:, :H * hd].view(np.uint8))
