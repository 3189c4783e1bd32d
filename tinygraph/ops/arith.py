"""Arithmetic: ``matmul`` and the element-wise ops ``add``, ``mul``, ``scale``, ``gelu``, ``softcap``, ``silu``."""
from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError, ShapeError
from ..tensor import Tensor
from .registry import Array, _broadcast_shape, _f32, _need_float, _need_weight, _node, _reference


def matmul(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    """``a @ b``: ``a`` [..., M, K], ``b`` [..., K, N] -> [..., M, N]; leading axes broadcast; either
    operand may be a strided view such as ``transpose(W)``; ``b`` may be block-quantized (a view
    of a persistent [N, K] weight: its dequantized values). Result dtype: ``a``'s."""
    _need_float("matmul", a)
    _need_weight("matmul", b)
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul needs operands with >= 2 axes: {a.describe()} @ {b.describe()}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: inner sizes differ: {a.describe()} @ {b.describe()}")
    try:
        lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ShapeError(f"matmul: leading axes do not broadcast: {a.describe()} @ {b.describe()}") from None
    return _node("matmul", (a, b), tuple(lead) + (a.shape[-2], b.shape[-1]), a.dtype, None, name)


@_reference("matmul", "matmul")
def _matmul_ref(p, a, b):
    return np.matmul(_f32(a), _f32(b))


def add(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    """``a + b`` with NumPy broadcasting; result dtype ``a``'s."""
    _need_float("add", a, b)
    return _node("add", (a, b), _broadcast_shape("add", a, b), a.dtype, None, name)


@_reference("add", "elementwise", elementwise=True)
def _add_ref(p, a, b):
    return _f32(a) + _f32(b)


def mul(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    """``a * b`` with NumPy broadcasting; result dtype ``a``'s."""
    _need_float("mul", a, b)
    return _node("mul", (a, b), _broadcast_shape("mul", a, b), a.dtype, None, name)


@_reference("mul", "elementwise", elementwise=True)
def _mul_ref(p, a, b):
    return _f32(a) * _f32(b)


def scale(x: Tensor, s: float, name: str | None = None) -> Tensor:
    """``x * s`` for a Python scalar ``s``."""
    _need_float("scale", x)
    return _node("scale", (x,), x.shape, x.dtype, {"scale": float(s)}, name)


@_reference("scale", "elementwise", elementwise=True)
def _scale_ref(p, x):
    return _f32(x) * np.float32(p["scale"])


#: ``gelu``'s forms: "tanh" (``0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))``, GPT-2's ``gelu_new``,
#: HF's ``gelu_pytorch_tanh``) and "none" (exact, ``0.5x(1 + erf(x / sqrt(2)))``, HF's ``gelu``),
#: named as torch's ``approximate`` argument
GELU_FORMS = ("tanh", "none")


def gelu(x: Tensor, name: str | None = None, approximate: str = "tanh") -> Tensor:
    """GELU: ``approximate="tanh"`` (the default) or ``"none"`` (exact, erf; see GELU_FORMS).
    A tanh node has no params, as before the exact form existed; an exact one has
    ``{"approximate": "none"}``."""
    _need_float("gelu", x)
    if approximate not in GELU_FORMS:
        raise GraphError(f"gelu: approximate must be one of {GELU_FORMS}, got {approximate!r}")
    return _node("gelu", (x,), x.shape, x.dtype, None if approximate == "tanh" else {"approximate": "none"}, name)


def _erf(x: Array) -> Array:
    """erf in float64 (NumPy has none): Abramowitz & Stegun 7.1.26, |error| < 1.5e-7, below
    float32's resolution of the GELU it feeds."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-z * z))


@_reference("gelu", "elementwise", elementwise=True)
def _gelu_ref(p, x):
    x = _f32(x)
    if p and p.get("approximate") == "none":
        return (0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


def cap_value(op: str, cap: float) -> float:
    """A soft cap as a float: a finite number > 0 (``softcap``, and the fused attentions' ``softcap``)."""
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(cap) and cap > 0):
        raise GraphError(f"{op}: cap must be a finite number > 0, got {cap!r}")
    return float(cap)


def softcap(x: Tensor, cap: float, name: str | None = None) -> Tensor:
    """Tanh soft-capping, ``cap * tanh(x / cap)``: values squashed into (-cap, cap) (Gemma 2's
    attention-logit and final-logit capping). ``cap`` a finite number > 0."""
    _need_float("softcap", x)
    return _node("softcap", (x,), x.shape, x.dtype, {"cap": cap_value("softcap", cap)}, name)


@_reference("softcap", "elementwise", elementwise=True)
def _softcap_ref(p, x):
    c = np.float32(p["cap"])
    return c * np.tanh(_f32(x) / c)


def silu(x: Tensor, name: str | None = None) -> Tensor:
    """SiLU: ``x * sigmoid(x)``."""
    _need_float("silu", x)
    return _node("silu", (x,), x.shape, x.dtype, None, name)


@_reference("silu", "elementwise", elementwise=True)
def _silu_ref(p, x):
    x = _f32(x)
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))
