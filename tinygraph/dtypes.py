"""The four element types tinygraph knows, with their NumPy equivalents (bfloat16 via ml_dtypes)."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import DTypeError


@dataclass(frozen=True)
class DType:
    """An element type: ``name`` ("float32"), ``short`` ("f32"), ``np`` (NumPy dtype), ``itemsize`` (bytes)."""

    name: str
    short: str
    np: np.dtype
    itemsize: int
    is_float: bool

    def __repr__(self) -> str:
        return f"tg.{self.name}"


float32 = DType("float32", "f32", np.dtype(np.float32), 4, True)
float16 = DType("float16", "f16", np.dtype(np.float16), 2, True)
bfloat16 = DType("bfloat16", "bf16", np.dtype(ml_dtypes.bfloat16), 2, True)
int32 = DType("int32", "i32", np.dtype(np.int32), 4, False)

ALL_DTYPES = (float32, float16, bfloat16, int32)
FLOAT_DTYPES = (float32, float16, bfloat16)
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {d.short: d for d in ALL_DTYPES}


def as_dtype(x: "DType | str | np.dtype | type") -> DType:
    """Accept a DType, its name ("float16"/"f16"), or a NumPy dtype."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in _BY_NAME:
        return _BY_NAME[x]
    try:
        npd = np.dtype(x)
    except TypeError:
        npd = None
    for d in ALL_DTYPES:
        if npd is not None and npd == d.np:
            return d
    raise DTypeError(f"unsupported dtype {x!r}; tinygraph supports float32, float16, bfloat16, int32")
