"""ggml block quantization in NumPy: the meaning of tinygraph's quantized weight types.

A quantized row of ``k`` values is ``k / block`` blocks of ``block_bytes`` bytes each, laid out
exactly as ggml (llama.cpp) stores them in GGUF files:

* ``q8_0`` ``{f16 d; i8 q[32]}``: ``q*d``.
* ``q4_0`` ``{f16 d; u8 qs[16]}``: ``(q-8)*d``; ``q4_1`` ``{f16 d, m; u8 qs[16]}``: ``q*d + m``.
  Element ``j`` is the low nibble of ``qs[j]``, element ``j+16`` its high nibble.
* ``q5_0``/``q5_1``: as q4_0/q4_1 plus ``u32 qh`` (after the f16s) holding bit 4 of element ``j``
  in bit ``j``; ``q5_0`` subtracts 16.
* K types, 256-value super-blocks of 16 sub-blocks of 16 (``q2_k``, ``q3_k``, ``q6_k``) or 8 of 32
  (``q4_k``, ``q5_k``), each sub-block with its own integer scale (and min) times the block's f16
  ``d`` (and ``dmin``): see the ``_dec_*`` functions for each bit layout.

:func:`dequantize` computes in float32 in the order ggml's reference decoder does (``d*sc`` first,
then ``*q``, then ``- dmin*m``), so it equals ``gguf.quants.dequantize`` bit for bit.
:func:`quantize` reproduces ggml's reference quantizers (``quantize_row_*_ref``, same bytes as
``gguf.quants.quantize``) for the 32-value types; for the K types it is tinygraph's own quantizer
(a least-squares scale search per sub-block, then the sub-block scales quantized against the
block's f16 scale, then every value re-quantized against the scales as they will be decoded).
Everything is vectorised over blocks and processed in chunks of blocks that fit in cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import dtypes as _dtypes

from .errors import DTypeError, TinygraphError


class QuantError(TinygraphError, ValueError):
    """Bad arguments to a quantization codec: unknown type, row length, raw size, non-finite data."""


@dataclass(frozen=True)
class QuantType:
    """A ggml block type: ``block`` values of a row stored in ``block_bytes`` bytes; ``ggml_id`` is
    its GGUF tensor type id (``gguf.GGMLQuantizationType``)."""

    name: str
    block: int
    block_bytes: int
    ggml_id: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block


# one table of the block types: tinygraph.dtypes (the tensor dtypes) defines them
QUANT_TYPES: dict[str, QuantType] = {
    d.name: QuantType(d.name, d.block, d.block_bytes, d.ggml_id) for d in _dtypes.QUANT_DTYPES
}
_BY_ID = {t.ggml_id: t for t in QUANT_TYPES.values()}

# Values per chunk of blocks: 64K floats keep a chunk's temporaries in L2; 4096x4096 q4_k decodes
# ~2x faster than in one piece.
_CHUNK_VALUES = 1 << 16


def quant_type(qtype: Any) -> QuantType:
    """Resolve ``qtype``: a :class:`QuantType`, a name (``"q4_k"``, any case), a ggml type id
    (int or ``gguf.GGMLQuantizationType``) or anything with such a ``name`` (a tinygraph dtype)."""
    if isinstance(qtype, QuantType):
        return qtype
    if isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        if int(qtype) in _BY_ID:
            return _BY_ID[int(qtype)]
        raise QuantError(f"ggml type id {int(qtype)} is not a supported block type "
                         f"(supported ids: {sorted(_BY_ID)})")
    name = qtype if isinstance(qtype, str) else getattr(qtype, "name", None)
    if isinstance(name, str) and name.lower() in QUANT_TYPES:
        return QUANT_TYPES[name.lower()]
    raise QuantError(f"unknown quantization type {qtype!r} (supported: {', '.join(QUANT_TYPES)})")


def row_bytes(qtype: Any, k: int) -> int:
    """Bytes of one quantized row of ``k`` values (``k`` a positive multiple of the block size)."""
    qt = quant_type(qtype)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0 or k % qt.block:
        raise QuantError(f"{qt.name}: row length k={k!r} is not a positive multiple of its block size {qt.block}")
    return int(k) // qt.block * qt.block_bytes


# --------------------------------------------------------------------------- shared helpers
_SHIFT2 = np.array([0, 2, 4, 6], np.uint8)
_SHIFT4 = np.array([0, 4], np.uint8)
_SHIFT1 = np.arange(8, dtype=np.uint8)


def _f16(b: np.ndarray) -> np.ndarray:
    """[n, 2] uint8 (little-endian f16) -> [n, 1] float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """[n, 1] float32 -> [n, 2] uint8 (round to nearest even, as ggml's fp32->fp16)."""
    return np.ascontiguousarray(v.astype("<f2")).view(np.uint8)


def _split_bits(b: np.ndarray, shifts: np.ndarray, mask: int) -> np.ndarray:
    """[..., m] uint8 -> [..., len(shifts), m]: the bit fields at ``shifts`` of every byte."""
    return (b[..., None, :] >> shifts[:, None]) & np.uint8(mask)


def _join_bits(f: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_split_bits`: [..., len(shifts), m] small ints -> [..., m] uint8."""
    out = np.zeros(f.shape[:-2] + f.shape[-1:], np.uint8)
    for i, s in enumerate(shifts):
        out |= f[..., i, :].astype(np.uint8) << s
    return out


def _scales_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q4_k/q5_k's 12 bytes -> (scales, mins) [n, 8] uint8, 6 bits each: sub-blocks 0-3 in the low
    6 bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 in the nibbles of bytes 8-11 plus the top
    2 bits of bytes 0-3 (scales) and 4-7 (mins)."""
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([s0 & 63, (s2 & 15) | ((s0 >> 6) << 4)], axis=1)
    mn = np.concatenate([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], axis=1)
    return sc, mn


def _pack_scales_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_scales_k4`."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    return np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)], axis=1)


def _scales_q3k(s: np.ndarray) -> np.ndarray:
    """q3_k's 12 bytes -> [n, 16] int scales in -32..31: low 4 bits of sub-block i are nibble
    i // 8 of byte i % 8, high 2 bits are bits 2*(i // 4) of byte 8 + i % 4; stored biased by 32."""
    lo = np.concatenate([s[:, :8] & 15, s[:, :8] >> 4], axis=1)
    hi = _split_bits(s[:, 8:12], _SHIFT2, 3).reshape(-1, 16)
    return (lo | (hi << 4)).astype(np.int16) - 32


# --------------------------------------------------------------------------- decoders
# Each maps [n, block_bytes] uint8 blocks to [n, block] float32.
def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """[n, 16] -> [n, 32]: low nibbles are values 0-15, high nibbles 16-31."""
    return np.concatenate([qs & 15, qs >> 4], axis=1)


def _dec_q8_0(b: np.ndarray) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(np.float32) * _f16(b[:, :2])


def _dec_q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * (_nibbles32(b[:, 2:]).astype(np.int8) - 8).astype(np.float32)


def _dec_q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * _nibbles32(b[:, 4:]).astype(np.float32) + _f16(b[:, 2:4])


def _q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """5-bit values: nibbles of ``qs`` plus bit j of little-endian u32 ``qh`` as bit 4 of value j."""
    return _nibbles32(qs) | (np.unpackbits(qh, axis=1, bitorder="little") << 4)


def _dec_q5_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * (_q5(b[:, 2:6], b[:, 6:]).astype(np.int8) - 16).astype(np.float32)


def _dec_q5_1(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * _q5(b[:, 4:8], b[:, 8:]).astype(np.float32) + _f16(b[:, 2:4])


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """q2_k/q3_k's 64 bytes of 2-bit values -> [n, 256]: value 128*h + 32*j + l is bits 2j of
    byte 32*h + l."""
    return _split_bits(qs.reshape(-1, 2, 32), _SHIFT2, 3).reshape(-1, 256)


def _dec_q2_k(b: np.ndarray) -> np.ndarray:
    # {u8 scales[16] (scale | min << 4); u8 qs[64]; f16 d, dmin}
    n, sc = len(b), b[:, :16]
    dl = _f16(b[:, 80:82]) * (sc & 15).astype(np.float32)
    ml = _f16(b[:, 82:84]) * (sc >> 4).astype(np.float32)
    q = _crumbs(b[:, 16:80]).reshape(n, 16, 16).astype(np.float32)
    return (dl[..., None] * q - ml[..., None]).reshape(n, 256)


def _dec_q3_k(b: np.ndarray) -> np.ndarray:
    # {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}; value = low 2 bits - (hmask bit ? 0 : 4),
    # the hmask bit of value 32*i + l being bit i of hmask[l].
    n = len(b)
    dl = _f16(b[:, 108:110]) * _scales_q3k(b[:, 96:108]).astype(np.float32)
    hbit = _split_bits(b[:, :32], _SHIFT1, 1).reshape(n, 256)
    q = (_crumbs(b[:, 32:96]).astype(np.int8) + (hbit.astype(np.int8) << 2) - 4).reshape(n, 16, 16)
    return (dl[..., None] * q.astype(np.float32)).reshape(n, 256)


def _nibbles256(qs: np.ndarray) -> np.ndarray:
    """q4_k/q5_k's 128 bytes of 4-bit values -> [n, 8, 32]: sub-block 2c is the low nibbles of
    bytes 32c..32c+31, sub-block 2c+1 their high nibbles."""
    return _split_bits(qs.reshape(-1, 4, 32), _SHIFT4, 15).reshape(-1, 8, 32)


def _affine_k(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """q4_k/q5_k: ``d*sc*q - dmin*m`` with the header {f16 d, dmin; u8 scales[12]} of ``b``."""
    sc, mn = _scales_k4(b[:, 4:16])
    dl = _f16(b[:, 0:2]) * sc.astype(np.float32)
    ml = _f16(b[:, 2:4]) * mn.astype(np.float32)
    return (dl[..., None] * q.astype(np.float32) - ml[..., None]).reshape(len(b), 256)


def _dec_q4_k(b: np.ndarray) -> np.ndarray:
    # {f16 d, dmin; u8 scales[12]; u8 qs[128]}
    return _affine_k(b, _nibbles256(b[:, 16:144]))


def _dec_q5_k(b: np.ndarray) -> np.ndarray:
    # {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}; bit 4 of sub-block i's value l is bit i of qh[l]
    return _affine_k(b, _nibbles256(b[:, 48:176]) | (_split_bits(b[:, 16:48], _SHIFT1, 1) << 4))


def _dec_q6_k(b: np.ndarray) -> np.ndarray:
    # {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}. In half h (128 values), value 32*g + l has
    # its low 4 bits in nibble g // 2 of ql[64h + 32*(g % 2) + l], its high 2 bits at bit 2g of
    # qh[32h + l]; it is stored biased by 32.
    n = len(b)
    lo = _split_bits(b[:, :128].reshape(n, 2, 2, 32), _SHIFT4, 15)  # [n, h, a, nibble, l]
    lo = lo.transpose(0, 1, 3, 2, 4).reshape(n, 2, 4, 32)          # g = 2*nibble + a
    hi = _split_bits(b[:, 128:192].reshape(n, 2, 32), _SHIFT2, 3)
    q = ((lo | (hi << 4)).astype(np.int8) - 32).reshape(n, 16, 16)
    dl = _f16(b[:, 208:210]) * b[:, 192:208].view(np.int8).astype(np.float32)
    return (dl[..., None] * q.astype(np.float32)).reshape(n, 256)


_DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q8_0": _dec_q8_0, "q4_0": _dec_q4_0, "q4_1": _dec_q4_1, "q5_0": _dec_q5_0, "q5_1": _dec_q5_1,
    "q2_k": _dec_q2_k, "q3_k": _dec_q3_k, "q4_k": _dec_q4_k, "q5_k": _dec_q5_k, "q6_k": _dec_q6_k,
}


# byte offsets of each block's f16 scales (d, and dmin / m where the type has one)
_SCALES = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q2_k": (80, 82),
           "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def nonfinite_scales(raw: Any, qtype: Any) -> int:
    """How many blocks of ``raw`` (uint8, whole blocks of ``qtype``) have a NaN or infinite f16
    scale: their weights decode to NaN/Inf (a weight value, not a format error)."""
    t = quant_type(qtype)
    b = np.asarray(raw).view(np.uint8).reshape(-1, t.block_bytes)
    bad = np.zeros(b.shape[0], bool)
    for off in _SCALES[t.name]:
        bad |= (np.ascontiguousarray(b[:, off: off + 2]).view("<u2")[:, 0] & 0x7C00) == 0x7C00
    return int(bad.sum())


def dequantize(raw: Any, qtype: Any, k: int) -> np.ndarray:
    """Decode quantized rows of ``k`` values: ``raw`` uint8 ``[..., row_bytes(qtype, k)]`` ->
    float32 ``[..., k]``; a flat uint8 array of several whole rows gives ``[rows, k]``.

    Non-finite scales decode as they are (a NaN scale gives NaN values); nothing is checked but sizes.
    """
    qt = quant_type(qtype)
    rb = row_bytes(qt, k)
    a = np.frombuffer(raw, np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else np.asarray(raw)
    if a.dtype == np.int8:
        a = a.view(np.uint8)
    if a.dtype != np.uint8:
        raise DTypeError(f"dequantize({qt.name}): raw blocks must be uint8, got {a.dtype}")
    if a.ndim >= 1 and a.shape[-1] == rb:
        lead = a.shape[:-1]
    elif a.ndim == 1 and a.size % rb == 0:
        lead = (a.size // rb,)
    else:
        raise QuantError(f"dequantize({qt.name}, k={k}): raw shape {a.shape} is not [..., {rb}] "
                         f"(a row of {k} values is {rb} bytes) nor a flat array of whole rows")
    blocks = np.ascontiguousarray(a).reshape(-1, qt.block_bytes)
    out = np.empty((len(blocks), qt.block), np.float32)
    step = max(1, _CHUNK_VALUES // qt.block)
    dec = _DECODERS[qt.name]
    with np.errstate(all="ignore"):  # inf/NaN scales decode to inf/NaN, as in ggml
        for i in range(0, len(blocks), step):
            out[i:i + step] = dec(blocks[i:i + step])
    return out.reshape(*lead, k)


# --------------------------------------------------------------------------- encoders
# Each maps [n, block] float32 values (finite) to [n, block_bytes] uint8 blocks.
def _inv(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d == 0 (ggml: ``id = d ? 1.0f/d : 0.0f``)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude along the last axis (the first one on ties), sign kept."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), exact in float32: no ``floor(v + 0.5)`` double rounding.
    NaN (``0 * inf`` where 1/d overflowed: undefined in ggml's C) gives 0, +-inf the extreme code."""
    v = np.clip(np.nan_to_num(v, nan=0.0), -127, 127)
    t = np.trunc(v)
    return t + np.sign(v) * (np.abs(v - t) >= np.float32(0.5))


def _trunc_u8(v: np.ndarray, top: int) -> np.ndarray:
    """ggml's ``MIN(top, (int8_t)v)`` for v >= 0; NaN (undefined in ggml's C, see
    :func:`_round_half_away`) gives 0."""
    return np.clip(np.nan_to_num(np.trunc(v), nan=0.0), 0, top).astype(np.uint8)


def _enc_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    q = _round_half_away(x * _inv(d)).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _pack_nibbles32(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)


def _enc_sym32(x: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """q4_0/q5_0: d = (signed max) / -half, so the largest magnitude maps to q = 0."""
    d = _signed_absmax(x) / np.float32(-half)
    return d, _trunc_u8(x * _inv(d) + np.float32(half + 0.5), 2 * half - 1)


def _enc_affine32(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q4_1/q5_1: d = (max - min) / top, m = min."""
    mn = x.min(axis=1, keepdims=True)
    d = (x.max(axis=1, keepdims=True) - mn) / np.float32(top)
    return d, mn, _trunc_u8((x - mn) * _inv(d) + np.float32(0.5), top)


def _qh32(q: np.ndarray) -> np.ndarray:
    """Bit 4 of value j -> bit j of a little-endian u32, as 4 bytes."""
    return np.packbits(q >> 4, axis=1, bitorder="little")


def _enc_q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _enc_sym32(x, 8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles32(q)], axis=1)


def _enc_q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _enc_sym32(x, 16)
    return np.concatenate([_f16_bytes(d), _qh32(q), _pack_nibbles32(q)], axis=1)


def _enc_q4_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _enc_affine32(x, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_nibbles32(q)], axis=1)


def _enc_q5_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _enc_affine32(x, 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _qh32(q), _pack_nibbles32(q)], axis=1)


# ---- K types: float scales per sub-block, then their integer codes against the f16 block scale
def _fit_sym(xs: np.ndarray, nneg: int) -> np.ndarray:
    """Per sub-block scale s (signed) for values q*s, q in [-nneg, nneg-1], from xs [n, S, L].

    Tries mapping the largest magnitude to -(nneg + t) for t in [-1, 1] (smaller steps clip it,
    larger ones waste a level), refits s by least squares for each choice of q and keeps the one
    with the smallest squared error. Works on values divided by the sub-block's largest magnitude,
    so no step overflows for tiny (float32-subnormal) inputs."""
    r = np.abs(xs).max(-1)
    xn = xs / np.where(r > 0, r, 1)[..., None]  # in [-1, 1] (1/r may overflow: divide)
    m = _signed_absmax(xn)[..., 0]  # +-1 or 0
    best_s, best = m / np.float32(-nneg), np.full(m.shape, -1.0, np.float32)
    for t in np.linspace(-1.0, 1.0, 17, dtype=np.float32):
        q = np.clip(np.rint(xn * (np.float32(-nneg - t) * m)[..., None]), -nneg, nneg - 1)
        qx, qq = (q * xn).sum(-1), np.maximum((q * q).sum(-1), 1)
        score = qx * qx / qq  # squared error = |x|^2 - score
        better = score > best
        best, best_s = np.where(better, score, best), np.where(better, qx / qq, best_s)
    return (best_s * r).astype(np.float32)


def _fit_affine(xs: np.ndarray, top: int, iters: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block (a >= 0, b <= 0) for values a*q + b, q in [0, top], from xs [n, S, L].

    Starts from min/max (b = min(x, 0), as ggml stores -b as an unsigned min), then alternates
    q = round((x - b) / a) and the least-squares (a, b) for that q (b clamped to <= 0), keeping
    the best pair seen. Works on values divided by the sub-block's largest magnitude, so no step
    overflows for tiny (float32-subnormal) inputs."""
    r = np.abs(xs).max(-1)
    xs = xs / np.where(r > 0, r, 1)[..., None]  # in [-1, 1] (1/r may overflow: divide)
    L = xs.shape[-1]
    b = np.minimum(xs.min(-1), 0)
    a = (xs.max(-1) - b) / np.float32(top)
    sx = xs.sum(-1)

    def err(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(np.nan_to_num((xs - b[..., None]) * _inv(a)[..., None])), 0, top)
        return q, ((a[..., None] * q + b[..., None] - xs) ** 2).sum(-1)

    q, best = err(a, b)
    best_a, best_b = a, b
    for _ in range(iters):
        sq, sqq, sqx = q.sum(-1), (q * q).sum(-1), (q * xs).sum(-1)
        det = L * sqq - sq * sq
        ok = det > 0
        det = np.where(ok, det, 1)
        a = np.where(ok, (L * sqx - sq * sx) / det, best_a)
        b = np.where(ok, (sqq * sx - sq * sqx) / det, best_b)
        pos = b > 0  # ggml's mins are subtracted: refit with b = 0
        a = np.where(pos, sqx / np.maximum(sqq, 1), a)
        a, b = np.maximum(a, 0).astype(np.float32), np.where(pos, 0, b).astype(np.float32)
        q, e = err(a, b)
        better = e < best
        best = np.where(better, e, best)
        best_a, best_b = np.where(better, a, best_a), np.where(better, b, best_b)
    return (best_a * r).astype(np.float32), (best_b * r).astype(np.float32)


def _codes(v: np.ndarray, d: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integer codes round(v / d) in [lo, hi] against the block scale d (as decoded), 0 where d == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, 0, np.clip(np.rint(v / d), lo, hi)).astype(np.int16)


def _block_scale(v: np.ndarray, div: float) -> tuple[np.ndarray, np.ndarray]:
    """f16 block scale of sub-block values ``v`` [n, S]: (bytes [n, 2], value as decoded [n, 1])."""
    raw = _f16_bytes((v / np.float32(div)).astype(np.float32))
    return raw, _f16(raw)


def _requant(xs: np.ndarray, dl: np.ndarray, ml: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """Values re-quantized against the scales exactly as the decoder will form them: q in [lo, hi]
    nearest to (x + ml) / dl, 0 where dl == 0."""
    v = xs if ml is None else xs + ml[..., None]
    return _codes(v, dl[..., None], lo, hi)


def _affine_codes(xs: np.ndarray, top: int, stop: int) -> tuple[np.ndarray, ...]:
    """Shared by q2_k/q4_k/q5_k: (d bytes, dmin bytes, scale codes, min codes, value codes)."""
    a, b = _fit_affine(xs, top)
    d_raw, d = _block_scale(a.max(-1, keepdims=True), stop)
    m_raw, dmin = _block_scale((-b).max(-1, keepdims=True), stop)
    sc, mn = _codes(a, d, 0, stop), _codes(-b, dmin, 0, stop)
    dl, ml = d * sc.astype(np.float32), dmin * mn.astype(np.float32)
    return d_raw, m_raw, sc, mn, _requant(xs, dl, ml, 0, top)


def _pack_crumbs(q: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_crumbs`: [n, 256] values 0-3 -> [n, 64] bytes."""
    return _join_bits(q.reshape(-1, 2, 4, 32), _SHIFT2).reshape(-1, 64)


def _enc_q2_k(x: np.ndarray) -> np.ndarray:
    d_raw, m_raw, sc, mn, q = _affine_codes(x.reshape(-1, 16, 16), 3, 15)
    scales = (sc | (mn << 4)).astype(np.uint8)
    return np.concatenate([scales, _pack_crumbs(q), d_raw, m_raw], axis=1)


def _pack_nibbles256(q: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_nibbles256`: [n, 8, 32] values 0-15 -> [n, 128] bytes."""
    return _join_bits(q.reshape(-1, 4, 2, 32), _SHIFT4).reshape(-1, 128)


def _enc_q4_k(x: np.ndarray) -> np.ndarray:
    d_raw, m_raw, sc, mn, q = _affine_codes(x.reshape(-1, 8, 32), 15, 63)
    return np.concatenate([d_raw, m_raw, _pack_scales_k4(sc, mn), _pack_nibbles256(q)], axis=1)


def _enc_q5_k(x: np.ndarray) -> np.ndarray:
    d_raw, m_raw, sc, mn, q = _affine_codes(x.reshape(-1, 8, 32), 31, 63)
    qh = _join_bits(q >> 4, _SHIFT1)
    return np.concatenate([d_raw, m_raw, _pack_scales_k4(sc, mn), qh, _pack_nibbles256(q & 15)], axis=1)


def _sym_codes(xs: np.ndarray, nneg: int, sneg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared by q3_k/q6_k: (d bytes, scale codes in [-sneg, sneg-1], value codes in [-nneg, nneg-1]).
    The sub-block scale of largest magnitude maps to -sneg, the most negative code."""
    s = _fit_sym(xs, nneg)
    d_raw, d = _block_scale(_signed_absmax(s), -sneg)
    sc = _codes(s, d, -sneg, sneg - 1)
    return d_raw, sc, _requant(xs, d * sc.astype(np.float32), None, -nneg, nneg - 1)


def _enc_q3_k(x: np.ndarray) -> np.ndarray:
    d_raw, sc, q = _sym_codes(x.reshape(-1, 16, 16), 4, 32)
    u = (q + 4).reshape(-1, 256)
    v = (sc + 32).astype(np.uint8)  # 6 bits: low 4 in nibbles of bytes 0-7, high 2 in bytes 8-11
    scales = np.concatenate([(v[:, :8] & 15) | ((v[:, 8:] & 15) << 4),
                             _join_bits((v >> 4).reshape(-1, 4, 4), _SHIFT2)], axis=1)
    hmask = _join_bits((u >> 2).reshape(-1, 8, 32), _SHIFT1)
    return np.concatenate([hmask, _pack_crumbs(u & 3), scales, d_raw], axis=1)


def _enc_q6_k(x: np.ndarray) -> np.ndarray:
    d_raw, sc, q = _sym_codes(x.reshape(-1, 16, 16), 32, 128)
    u = (q + 32).reshape(-1, 2, 2, 2, 32).astype(np.uint8)  # [n, h, nibble, a, l], g = 2*nibble + a
    ql = _join_bits((u & 15).transpose(0, 1, 3, 2, 4), _SHIFT4).reshape(-1, 128)
    qh = _join_bits((u >> 4).reshape(-1, 2, 4, 32), _SHIFT2).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d_raw], axis=1)


_ENCODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q8_0": _enc_q8_0, "q4_0": _enc_q4_0, "q4_1": _enc_q4_1, "q5_0": _enc_q5_0, "q5_1": _enc_q5_1,
    "q2_k": _enc_q2_k, "q3_k": _enc_q3_k, "q4_k": _enc_q4_k, "q5_k": _enc_q5_k, "q6_k": _enc_q6_k,
}


def quantize(x: Any, qtype: Any) -> np.ndarray:
    """Quantize the rows (last axis) of ``x``: float ``[..., k]`` -> uint8 ``[..., row_bytes(qtype, k)]``.

    Input is rounded to float32 first (as ggml quantizes float32). q8_0, q4_0, q4_1, q5_0 and q5_1
    give ggml's reference bytes; the K types tinygraph's own search (module docstring). Raises
    :class:`QuantError` on NaN/Inf input, on a row length that is not a whole number of blocks,
    and when values are too large for the float16 block scale.
    """
    qt = quant_type(qtype)
    a = np.asarray(x)
    if a.ndim == 0:
        raise QuantError(f"quantize({qt.name}): needs rows of values, got a scalar")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DTypeError(f"quantize({qt.name}): values must be real numbers, got dtype {a.dtype}")
    k = a.shape[-1]
    rb = row_bytes(qt, k)
    a = np.ascontiguousarray(a, dtype=np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise QuantError(f"quantize({qt.name}): input has {int(bad.sum())} non-finite values "
                         f"(NaN/Inf), the first {a[first]} at index {first}")
    blocks = a.reshape(-1, qt.block)
    out = np.empty((len(blocks), qt.block_bytes), np.uint8)
    step = max(1, _CHUNK_VALUES // qt.block)
    enc = _ENCODERS[qt.name]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, once
        for i in range(0, len(blocks), step):
            out[i:i + step] = enc(blocks[i:i + step])
        ok = np.isfinite(dequantize(out, qt, qt.block)).all() if len(out) else True
    if not ok:
        raise QuantError(f"quantize({qt.name}): values up to {float(np.abs(a).max()):.6g} overflow "
                         "the float16 block scale (|scale| <= 65504)")
    return out.reshape(*a.shape[:-1], rb)
