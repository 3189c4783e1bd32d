"""tinygraph: build language models as lazy graphs of tensor nodes; run them on NumPy or CUDA.

>>> import tinygraph as tg
>>> sess = tg.Session(backend="numpy")
"""
from .dtypes import (QUANT_DTYPES, DType, bfloat16, float16, float32, int32, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1,
                     q5_k, q6_k, q8_0)
from .errors import BackendError, BoundsError, DTypeError, GraphError, ShapeError, TinygraphError
from .graph import ExecPlan, Graph
from .ops import (add, all_reduce, argmax, attention, attention_store, cast, concat, cont, cpy, gelu, get_rows, layer_norm, linear, matmul, moe_down,
                  moe_gate_up, moe_route, mul, permute,
                  reshape, rms_norm, rope, rope_store, sample, sample_params, scale, set_rows, silu, softcap, softmax, transpose,
                  view)
from .session import Session
from .tensor import Tensor

__version__ = "0.1.0"

__all__ = [
    "Session", "Graph", "ExecPlan", "Tensor", "DType", "float32", "float16", "bfloat16", "int32",
    "QUANT_DTYPES", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "view", "reshape", "transpose", "permute", "cont", "cast", "cpy", "set_rows", "attention", "attention_store", "linear", "rope_store", "get_rows", "concat", "matmul", "add",
    "mul", "scale", "softmax", "layer_norm", "rms_norm", "gelu", "silu", "softcap", "rope", "argmax", "sample",
    "sample_params", "all_reduce", "moe_route", "moe_gate_up", "moe_down",
    "TinygraphError", "GraphError", "ShapeError", "DTypeError", "BoundsError", "BackendError",
]
