"""Every op of tinygraph, each defined once: argument checks, shape/dtype rule, reference semantics.

The public functions (``matmul``, ``softmax``, ...) check their arguments and add a node to the graph;
nothing runs until ``Session.compute``. The reference functions registered in :data:`OPS` give each
op's exact meaning on NumPy arrays (float32 math, results cast to the node's dtype by the backend);
the NumPy backend runs them and every other backend is tested against them.

Conventions: shapes are NumPy order; strides and offsets are in elements of the tensor's dtype;
``matmul(a, b)`` is ``a @ b`` over the last two axes with NumPy broadcasting of the leading axes.

Modules: ``registry`` (:class:`OpDef`, :data:`OPS`, node helpers), ``layout`` (views and copies),
``arith`` (matmul, element-wise), ``rows`` (softmax, attention, norms, rope), ``fused`` (linear,
rope_store, attention_store), ``sampling`` (argmax, sample), ``collective`` (all_reduce, for
tensor parallelism: ``tinygraph.parallel``), ``moe`` (mixture-of-experts routing and the chosen
experts' products). Importing this package registers every
op; ``tinygraph.ops.X`` is the public name of each.
"""
from __future__ import annotations

from ..dtypes import FLOAT_DTYPES
# import order = registration order in OPS (as in the single-file ops.py)
from .registry import OPS, Array, OpDef  # noqa: F401  (Array: the NumPy array type in signatures)
from .layout import cast, concat, cont, cpy, get_rows, permute, reshape, set_rows, transpose, view
from .arith import add, gelu, matmul, mul, scale, silu, softcap
from .rows import attention, layer_norm, rms_norm, rope, rope_angles, softmax
from .fused import attention_store, linear, rope_store
from .sampling import argmax, sample, sample_draw, sample_params, sample_uniform, sample_weights
from .collective import all_reduce
from .moe import moe_down, moe_gate_up, moe_route

# the private names of the single-file ops.py, so code written against it keeps working
from .registry import (_broadcast_shape, _f32, _graph_for, _need_float, _need_weight,  # noqa: F401
                       _node, _norm_axis, _reference, _row_param)
from .layout import _cast_ref, _concat_ref, _cont_ref, _cpy_ref, _get_rows_ref, _set_rows_ref  # noqa: F401
from .arith import _add_ref, _gelu_ref, _matmul_ref, _mul_ref, _scale_ref, _silu_ref, _softcap_ref  # noqa: F401
from .rows import (_attention_ref, _causal_mask, _layer_norm_ref, _past_arg, _past_value,  # noqa: F401
                   _rms_norm_ref, _rope_args, _rope_ref, _softmax_ref, _window_arg)
from .fused import _ACTS, _NORMS, _attention_store_ref, _linear_ref, _rope_store_ref  # noqa: F401
from .sampling import _GOLDEN, _MASK64, _argmax_ref, _sample_ref  # noqa: F401

__all__ = ["OPS", "OpDef", "view", "reshape", "permute", "transpose", "cont", "cast", "cpy", "set_rows", "get_rows",
           "attention", "attention_store", "linear", "rope_store",
           "concat", "matmul", "add", "mul", "scale", "gelu", "silu", "softcap", "softmax", "layer_norm", "rms_norm",
           "rope", "rope_angles", "argmax", "sample", "sample_params", "sample_uniform", "sample_weights", "sample_draw",
           "all_reduce", "moe_route", "moe_gate_up", "moe_down", "FLOAT_DTYPES"]
