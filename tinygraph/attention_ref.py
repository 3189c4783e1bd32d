"""The NumPy reference of the fused ``attention`` op, computed in blocks (flash-attention style).

``softmax(q @ kt * scale, causal, past, window) @ v`` (scores optionally soft-capped, Gemma 2:
``cap * tanh(s / cap)`` before the mask) without the [..., T, S] scores: queries go
in blocks of ``block`` rows, and each block walks the keys it can see in blocks, keeping a
running maximum, sum and weighted value sum per row (online softmax). Memory grows with T (the
output and one block of scores), not T^2: an 8k-token prompt of 32 heads needs a few tens of MiB
instead of 8 GiB. Keys outside a block's causal range or sliding window are never read.

Math in float32, as every NumPy reference; the result equals the plain formula up to float32
rounding (tests/test_sliding_window.py checks it).
"""
from __future__ import annotations

import numpy as np

Array = np.ndarray

#: query rows per block; a block's keys come in chunks of BLOCK * BLOCK // rows, so a decode step
#: (one query) reads its whole cache in one chunk and a prefill holds ~BLOCK^2 scores per head
BLOCK = 256


def _f32(x: Array) -> Array:
    return x if x.dtype == np.float32 else x.astype(np.float32)


def visible_keys(t0: int, t1: int, S: int, causal: bool, past: int, window: int | None) -> tuple[int, int]:
    """Keys ``[lo, hi)`` that some query row ``t0..t1-1`` (positions ``t + past``) sees."""
    hi = min(S, t1 + past) if causal else S
    lo = max(0, t0 + past - window + 1) if (causal and window) else 0
    return lo, hi


def _mask(rows: int, t0: int, j0: int, j1: int, past: int, window: int | None) -> Array:
    """[rows, j1 - j0] visibility of keys j0..j1-1 to the rows at positions t0 + past + i."""
    j = np.arange(j0, j1)[None, :]
    p = np.arange(t0, t0 + rows)[:, None] + past
    return (j <= p) & (j > p - window) if window else j <= p


def _cap(s: Array, softcap: float | None) -> Array:
    """Gemma 2's attention-logit soft-capping (None or 0: off): the ``softcap`` op's formula."""
    from .ops.arith import _softcap_ref
    return _softcap_ref({"cap": softcap}, s) if softcap else s


def blocked_attention(q: Array, kt: Array, v: Array, scale: float, causal: bool = False, past: int = 0,
                      window: int | None = None, block: int = BLOCK, softcap: float | None = None) -> Array:
    """``softmax(cap(q @ kt * scale) [masked]) @ v`` in float32, in blocks of ``block`` queries
    (``cap``: ``softcap * tanh(s / softcap)``, or nothing when ``softcap`` is None).

    ``q`` [..., T, D], ``kt`` [..., D, S], ``v`` [..., S, Dv]; leading axes broadcast (GQA:
    ``q`` [KV, G, T, D] with ``kt`` [KV, 1, D, S]). ``causal``: query row ``t`` (position
    ``p = t + past``) sees keys ``j <= p``; ``window`` (causal only) also requires
    ``j > p - window``. A row that sees no key gives zeros. Returns [..., T, Dv] float32."""
    if block < 1:
        raise ValueError(f"blocked_attention: block must be >= 1, got {block}")
    T, D, S, Dv = q.shape[-2], q.shape[-1], kt.shape[-1], v.shape[-1]
    lead = tuple(np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2]))
    nd = len(lead)
    q, kt, v = (x.reshape((1,) * (nd + 2 - x.ndim) + x.shape) for x in (q, kt, v))
    # axes where only q is wider (the query heads of a KV head) fold into the rows of one
    # matmul: NumPy's matmul is several times slower when it broadcasts a stride-0 operand
    fold = [a for a in range(nd) if kt.shape[a] == 1 and v.shape[a] == 1 and q.shape[a] > 1]
    keep = [a for a in range(nd) if a not in fold]
    order = keep + fold + [nd, nd + 1]
    qf = q.transpose(order)                                  # [keep..., fold..., T, D]
    kt, v = np.squeeze(kt, tuple(fold)), np.squeeze(v, tuple(fold))
    kshape, fshape = tuple(qf.shape[:len(keep)]), tuple(qf.shape[len(keep):nd])
    G = int(np.prod(fshape, dtype=np.int64))
    out = np.zeros(lead + (T, Dv), np.float32)
    outf = out.transpose(order)                              # a view in q's folded order
    sc = np.float32(scale)
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        rows = t1 - t0
        lo, hi = visible_keys(t0, t1, S, causal, past, window)
        if hi <= lo:
            continue  # nothing visible: zeros
        qb = _f32(qf[..., t0:t1, :]).reshape(kshape + (G * rows, D))
        kb = max(block, block * block // rows)
        m = np.full(kshape + (G * rows, 1), -np.inf, np.float32)
        l = np.zeros(kshape + (G * rows, 1), np.float32)
        acc = np.zeros(np.broadcast_shapes(kshape, v.shape[:-2]) + (G * rows, Dv), np.float32)
        for j0 in range(lo, hi, kb):
            j1 = min(hi, j0 + kb)
            s = _cap(np.matmul(qb, _f32(kt[..., j0:j1])) * sc, softcap)
            # only chunks that cross the diagonal or the window's lower edge need the mask
            if causal and (j1 - 1 > t0 + past or (window and j0 <= t1 - 1 + past - window)):
                sm = s.reshape(s.shape[:-2] + (G, rows, j1 - j0))
                s = np.where(_mask(rows, t0, j0, j1, past, window), sm, np.float32(-np.inf)).reshape(s.shape)
            mn = np.maximum(m, s.max(axis=-1, keepdims=True))
            base = np.where(np.isneginf(mn), np.float32(0), mn)  # no key seen yet: exp(-inf) = 0, no NaN
            corr = np.exp(m - base)
            p = np.exp(s - base)
            l = l * corr + p.sum(axis=-1, keepdims=True)
            acc = acc * corr + np.matmul(p, _f32(v[..., j0:j1, :]))
            m = mn
        res = acc / np.where(l > 0, l, np.float32(1))
        outf[..., t0:t1, :] = res.reshape(res.shape[:-2] + fshape + (rows, Dv))
    return out


def rowwise_attention(q: Array, kt: Array, v: Array, scale: float, pasts: Array, window: int | None = None,
                      softcap: float | None = None) -> Array:
    """Causal attention where index ``n`` of the first axis is at its own position ``pasts[n]``:
    ``q`` [N, G, T, D], ``kt`` [N or 1, 1 or G, D, S], ``v`` [N or 1, 1 or G, S, Dv] -> [N, G, T, Dv]
    float32 (a decode step over N sequences: T is small, so all scores at once). Keys no row of
    ``n`` sees are never used (their values are zeroed before the mix, so garbage there cannot
    leak in as 0 * NaN); a row that sees no key gives zeros."""
    q, kt, v = _f32(q), _f32(kt), _f32(v)
    T, S = q.shape[-2], kt.shape[-1]
    pasts = np.asarray(pasts, np.int64).reshape(-1, 1, 1, 1)
    j = np.arange(S).reshape(1, 1, 1, S)
    p = np.arange(T).reshape(1, 1, T, 1) + pasts                      # [N, 1, T, 1] positions
    seen = (j <= p) & (j > p - window) if window else j <= p           # [N, 1, T, S]
    s = np.where(seen, _cap(np.matmul(q, kt) * np.float32(scale), softcap), -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isneginf(m), np.float32(0), m))
    d = e.sum(-1, keepdims=True)
    used = seen.any(axis=2)[..., None]                                 # [N, 1, S, 1]: keys some row sees
    return np.matmul(e / np.where(d > 0, d, np.float32(1)), np.where(used, v, np.float32(0)))
