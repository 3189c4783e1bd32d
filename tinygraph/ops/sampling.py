"""Picking token ids: ``argmax`` and ``sample`` (temperature, top-k, top-p and a counter-based
RNG, all read from tensors), with the host-side pieces of its reference (``sample_params``,
``sample_uniform``, ``sample_weights``, ``sample_draw``)."""
from __future__ import annotations

import numpy as np

from ..dtypes import float32, int32
from ..errors import ShapeError
from ..tensor import Tensor
from .registry import Array, _f32, _need_float, _node, _reference


def argmax(x: Tensor, name: str | None = None) -> Tensor:
    """Index of the largest element over the last axis (first one on ties), int32 ``x.shape[:-1]``."""
    _need_float("argmax", x)
    return _node("argmax", (x,), x.shape[:-1], int32, None, name)


@_reference("argmax", "reduce")
def _argmax_ref(p, x):
    return np.argmax(x, axis=-1).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def sample_uniform(seed: int, counter: int) -> float:
    """The ``sample`` op's random number: the ``counter``-th output (0-based) of splitmix64
    started from state ``seed``, i.e. ``mix(seed + (counter + 1) * 0x9E3779B97F4A7C15)``, with its
    top 24 bits as a float in [0, 1) (exact in float32). ``seed`` is 64-bit, ``counter`` any
    non-negative int (the op passes ``counter + row``)."""
    x = (int(seed) + (int(counter) + 1) * _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return (x >> 40) / float(1 << 24)


def sample_params(temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  counter: int = 0) -> tuple[Array, Array]:
    """The two parameter arrays of :func:`sample`: float32 ``[temperature, top_p]`` and int32
    ``[top_k, seed low 32 bits, seed high 32 bits, counter]`` (top_k clipped to [0, 2**31 - 1],
    seed taken mod 2**64, counter mod 2**32, both stored as the bits of int32)."""
    seed = int(seed) & _MASK64
    m32 = 0xFFFFFFFF
    ints = np.array([min(max(int(top_k), 0), 0x7FFFFFFF), seed & m32, seed >> 32, int(counter) & m32], np.uint32)
    return np.array([temperature, top_p], np.float32), ints.view(np.int32)


def sample(logits: Tensor, fparams: Tensor, iparams: Tensor, name: str | None = None) -> Tensor:
    """One token id per row of ``logits`` [..., V] (float) -> int32 ``logits.shape[:-1]``.

    The parameters are tensors (graph inputs on the decode path), so a captured graph serves
    every temperature, seed and step: ``fparams`` float32 ``[temperature, top_p]``, ``iparams``
    int32 ``[top_k, seed_lo, seed_hi, counter]`` (:func:`sample_params` makes both). Row ``r``
    draws with counter ``counter + r``.

    Semantics (float32 math; the same on every backend up to float rounding):

    * ``temperature <= 0`` (or NaN): ``argmax`` (first maximum on ties, NaN wins as in NumPy).
    * else ``z = logits / temperature``; NaN counts as ``-inf``. If some ``z`` is ``+inf`` the
      first such index is returned; if every ``z`` is ``-inf``, the argmax of the logits.
    * top-k: ``0 < top_k < V`` keeps the tokens with ``z >=`` the k-th largest ``z`` (ties at
      the threshold kept); otherwise all.
    * weights ``w = exp(z - max z)``; top-p (``top_p < 1``): with ``S`` the total weight of the
      top-k set, keeps the tokens of that set whose ``z >= t``, for the largest ``t`` such that the
      weight of {top-k set, ``z >= t``} is ``>= top_p * S`` (ties kept; ``top_p <= 0`` keeps the
      largest value only).
    * with ``u = sample_uniform(seed, counter + r)`` and ``S'`` the kept weight, the result is the
      first index (vocabulary order) whose running sum of kept weights exceeds ``u * S'``.

    The NumPy reference sums in float64; the CUDA kernels sum exactly in 64-bit fixed point
    (2**-40 of the largest weight, so tokens more than ~27.7 below the largest ``z`` weigh 0
    there). So the backends pick the same token except when ``u * S'`` or ``top_p * S`` falls
    within rounding of a boundary; each backend is deterministic."""
    _need_float("sample", logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ShapeError(f"sample: logits {logits.describe()} must be [..., V] with V >= 1")
    if fparams.dtype != float32 or fparams.shape != (2,):
        raise ShapeError(f"sample: fparams {fparams.describe()} must be float32 of shape (2,): "
                         "[temperature, top_p]")
    if iparams.dtype != int32 or iparams.shape != (4,):
        raise ShapeError(f"sample: iparams {iparams.describe()} must be int32 of shape (4,): "
                         "[top_k, seed_lo, seed_hi, counter]")
    return _node("sample", (logits, fparams, iparams), logits.shape[:-1], int32, None, name)


def sample_weights(logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Array:
    """The reference's weights for one row ``logits`` [V]: float64, ``exp(z - max z)`` on the
    kept tokens and 0 elsewhere, or one-hot where :func:`sample` returns a fixed index (greedy,
    a ``+inf`` z, every z ``-inf``). The op draws from ``weights / weights.sum()``."""
    x = np.asarray(logits, np.float32).reshape(-1)
    temperature, top_p = np.float32(temperature), np.float32(top_p)
    V = x.size
    one = np.zeros(V)
    if not temperature > 0:
        one[np.argmax(x)] = 1.0
        return one
    with np.errstate(over="ignore", invalid="ignore"):
        z = x / temperature
    z[np.isnan(z)] = -np.inf
    m = z.max()
    if m == -np.inf or m == np.inf:
        one[np.argmax(x) if m == -np.inf else np.argmax(z == np.inf)] = 1.0
        return one
    w = np.exp(z - m).astype(np.float64)
    keep = np.ones(V, bool)
    if 0 < top_k < V:
        keep = z >= np.partition(z, V - top_k)[V - top_k]
    if top_p < 1:
        zk, wk = z[keep], w[keep]
        order = np.argsort(-zk, kind="stable")
        cum = np.cumsum(wk[order])
        i = min(int(np.searchsorted(cum, float(top_p) * cum[-1], side="left")), cum.size - 1)
        keep &= z >= zk[order[i]]
    return np.where(keep, w, 0.0)


def sample_draw(weights: Array, u: float) -> int:
    """The draw of :func:`sample`: the first index whose running sum of ``weights`` exceeds
    ``u * weights.sum()`` (the last index of positive weight if rounding leaves none)."""
    cum = np.cumsum(weights)
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))
    return i if i < cum.size else int(np.flatnonzero(weights > 0)[-1])


@_reference("sample", "reduce")
def _sample_ref(p, logits, fparams, iparams):
    x = _f32(logits).reshape(-1, logits.shape[-1])
    temperature, top_p = np.asarray(fparams, np.float32)
    bits = [int(v) for v in np.asarray(iparams, np.int32).view(np.uint32)]
    top_k, seed, counter = int(iparams[0]), bits[1] | (bits[2] << 32), bits[3]
    out = [sample_draw(sample_weights(row, temperature, top_k, top_p), sample_uniform(seed, counter + r))
           for r, row in enumerate(x)]
    return np.array(out, np.int32).reshape(logits.shape[:-1])
