"""tinygraph's element types: four plain ones with their NumPy equivalents (bfloat16 via
ml_dtypes), and ggml's block-quantized weight types (``q8_0``, ``q4_k``, ...), whose tensors hold
the raw blocks of a GGUF file: ``block`` elements of a row in ``block_bytes`` bytes."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import DTypeError


@dataclass(frozen=True)
class DType:
    """An element type: ``name`` ("float32"), ``short`` ("f32"), ``np`` (NumPy dtype), ``itemsize``
    (bytes). Block-quantized types (``block > 1``) store ``block`` consecutive elements of a row
    in ``block_bytes`` bytes (``np`` is uint8, the raw blocks; ``itemsize`` 1); their values
    are defined by ``tinygraph.quant.dequantize``. ``ggml_id`` is the GGUF tensor type id."""

    name: str
    short: str
    np: np.dtype
    itemsize: int
    is_float: bool
    block: int = 1
    block_bytes: int = 0
    ggml_id: int = -1

    @property
    def is_quant(self) -> bool:
        """True for ggml block-quantized types (weights only: matmul/linear operands, get_rows tables)."""
        return self.block > 1

    def nbytes(self, n: int) -> int:
        """Bytes of ``n`` elements (for block types a whole number of blocks: ``n`` a multiple of ``block``)."""
        return n // self.block * self.block_bytes if self.block > 1 else n * self.itemsize

    def __repr__(self) -> str:
        return f"tg.{self.name}"


float32 = DType("float32", "f32", np.dtype(np.float32), 4, True)
float16 = DType("float16", "f16", np.dtype(np.float16), 2, True)
bfloat16 = DType("bfloat16", "bf16", np.dtype(ml_dtypes.bfloat16), 2, True)
int32 = DType("int32", "i32", np.dtype(np.int32), 4, False)

_U8 = np.dtype(np.uint8)


def _q(name: str, block: int, block_bytes: int, ggml_id: int) -> DType:
    return DType(name, name, _U8, 1, False, block, block_bytes, ggml_id)


# ggml block types (gguf.constants.GGML_QUANT_SIZES: elements per block, bytes per block)
q4_0 = _q("q4_0", 32, 18, 2)
q4_1 = _q("q4_1", 32, 20, 3)
q5_0 = _q("q5_0", 32, 22, 6)
q5_1 = _q("q5_1", 32, 24, 7)
q8_0 = _q("q8_0", 32, 34, 8)
q2_k = _q("q2_k", 256, 84, 10)
q3_k = _q("q3_k", 256, 110, 11)
q4_k = _q("q4_k", 256, 144, 12)
q5_k = _q("q5_k", 256, 176, 13)
q6_k = _q("q6_k", 256, 210, 14)

QUANT_DTYPES = (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k)
ALL_DTYPES = (float32, float16, bfloat16, int32)
FLOAT_DTYPES = (float32, float16, bfloat16)
_BY_NAME = {d.name: d for d in ALL_DTYPES + QUANT_DTYPES} | {d.short: d for d in ALL_DTYPES}
#: ggml tensor type id -> quantized dtype
QUANT_BY_GGML_ID = {d.ggml_id: d for d in QUANT_DTYPES}


def as_dtype(x: "DType | str | np.dtype | type") -> DType:
    """Accept a DType, its name ("float16"/"f16"), or a NumPy dtype."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x.lower() in _BY_NAME:
        return _BY_NAME[x.lower()]
    try:
        npd = np.dtype(x)
    except TypeError:
        npd = None
    for d in ALL_DTYPES:
        if npd is not None and npd == d.np:
            return d
    raise DTypeError(f"unsupported dtype {x!r}; tinygraph supports float32, float16, bfloat16, int32 and the "
                     f"ggml block types {', '.join(d.name for d in QUANT_DTYPES)}")
