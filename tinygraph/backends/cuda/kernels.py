"""Kernel registry, descriptor helpers and launch helpers for the sources in ``cuda_src/``.

Independent of the graph classes: everything here takes device pointers, shapes and strides.

ABI (see ``cuda_src/common.cuh``)
---------------------------------
* A tensor is a device pointer plus ``TD`` *by value*: ``struct TD { long long ne[4]; long long
  st[4]; }`` -- shape and strides in ELEMENTS, NumPy order, padded on the LEFT to rank 4
  (ne=1, st=0). Broadcasting: an input dim with ne == 1 (or stride 0) broadcasts.
* Scalars are float32 / int32 by value. Storage dtypes f32, f16, bf16 (math in float32); int32
  for ids / positions / argmax output.
* Names: ``<op>_<dtype>`` (``add_f16``), conversions ``<op>_<src>_<dst>`` (``cpy_f32_bf16``).

Kernel table (mirrors the comments at the top of each ``.cu``):

=========== ============== ======================================================================
base        file           parameters (T* = device pointer of the kernel's dtype)
=========== ============== ======================================================================
add/sub/    elementwise.cu (T* out, TD od, const T* a, TD ad, const T* b, TD bd)
mul/div
scale       elementwise.cu (T* out, TD od, const T* x, TD xd, float s)
softcap     elementwise.cu (T* out, TD od, const T* x, TD xd, float c)   c * tanh(x / c)
gelu,       elementwise.cu (T* out, TD od, const T* x, TD xd)
gelu_erf,
silu
cpy         elementwise.cu (D* dst, TD dd, const S* src, TD sd)  name cpy_<S>_<D>; cpy_i32_i32
advance     elementwise.cu (int* x, const int* inc, int n)  advance_i32: x[i] += inc[i]
rms_norm    norms.cu       (T* out, TD od, const T* x, TD xd, const T* w, float eps)
layer_norm  norms.cu       (T* out, TD od, const T* x, TD xd, const T* w, const T* b, float eps)
softmax     softmax.cu     (T* out, TD od, const T* x, TD xd, float scale, int causal, int past,
                            const int* past_dev, int window)   window > 0: sliding window
attn_split_ attention.cu   (float* part, int* counters, T* out, TD od, const T* q, TD qd,
<T>_<D>,                    const T* kt, TD ktd, const T* v, TD vd, float scale, int causal,
attn_pipe_                  int past, const int* past_dev, int window, int chunk)  fused attention
<T>_<D>                     (flash-decoding splits; D = 64 | 128 | 256 register sizes)
attn_store_ attention.cu   (float* part, int* counters, T* out, TD od, const T* q, TD qd,
<T>_<D>                     StoreArgs<T> sa, float scale, const int* pos, int window, int chunk)
attn_fa_    attention_tc.cu (T* out, TD od, const T* q, TD qd, const T* kt, TD ktd, const T* v,
<T>_<D>                     TD vd, float scale, int causal, int past, const int* past_dev,
                            int window)   tensor-core prefill, f16/bf16, D = 64 | 128
rope        rope.cu        (T* out, TD od, const T* x, TD xd, const int* pos, const float* ff,
                            float theta, int mode, int n_dims)    mode 0 normal, 2 neox
getrows     getrows.cu     (T* out, TD od, const T* table, TD tbl, const int* ids)
set_rows    getrows.cu     (D* dst, TD dd, const S* src, TD sd, const int* idx)  set_rows_<S>_<D>
argmax      reduce.cu      (int* out, TD od, const T* x, TD xd)
argmax_     reduce.cu      (int* out, TD od, const T* x, TD xd, u64* part, int* counters)
split                       several blocks per row, the last merges (long rows: vocabularies)
sample_keys sample.cu      (int* out, TD od, const T* x, TD xd, const float* fp, const int* ip,
                            uchar* ws)   the sample op is three launches (KernelLibrary.sample):
sample_hist sample.cu      (int* out, TD od, TD xd, const float* fp, const int* ip, uchar* ws)
sample_pick sample.cu      same; sample_hist / sample_pick only as _i32 (they read ws's keys)
matmul      matmul.cu      (T* C, TD cd, const T* A, TD ad, const T* B, TD bd)  CUDA cores
matmul_tc3_<BK>_<ST>  matmul.cu  same; f16/bf16 only, tensor cores (sm_80+), ST-stage cp.async pipeline
gemv        matmul.cu      same; M == 1, B K-contiguous (B.st[-2] == 1)
gemv_nc     matmul.cu      same; M == 1, any B strides
linear_gemv linear.cu      (T* y, TD yd, const T* x, TD xd, const T* w, long long ldw,
                            const T* bias, const T* res, TD rd, const T* norm_w,
                            const T* norm_b, float eps, int norm, int act, int N, int K)
                            fused act(norm(x) @ w.T + bias) + res for a few rows (decode)
linear_     linear.cu      same; one row per block (fewer registers: KernelLibrary.linear's
gemv1                       choice when linear_rows_per_block(rows, K) == 1, e.g. decode B=1)
linear_     linear.cu      (T* y, TD yd, const T* z, TD zd, const T* bias, const T* res, TD rd,
epilogue                    int act)   y = act(z + bias) + res (prefill tail after matmul)
=========== ============== ======================================================================

Concat has no kernel of its own: copy each input with ``cpy`` into a strided view of the output
(output pointer advanced by the input's offset along the concat axis).

Usage::

    from tinygraph.backends.cuda import driver, kernels
    dev = driver.get_device(0)
    lib = kernels.KernelLibrary(dev)
    a = driver.DeviceBuffer.from_array(np.ones((3, 5), np.float32))
    out = driver.DeviceBuffer(3 * 5 * 4)
    lib.binary("add", "f32", kernels.Arg(out, (3, 5)), kernels.Arg(a, (3, 5)),
               kernels.Arg(a, (1, 5)))          # broadcast of row 0
    # or by hand:
    f = lib.get("add", "f32")
    driver.launch(f, grid, 256, [kernels.ptr(out), kernels.td((3, 5)), ...])
    # record prepared launches (cheap replays, or capture them into a CUDA graph):
    with lib.record() as launches:
        lib.matmul("f16", c, a, b)
    for pl in launches:
        pl(stream)

matmul dispatch (``plan_matmul``): M == 1 -> gemv (B K-contiguous) or gemv_nc; f16/bf16 ->
matmul_tc3 (K tile and stage count by the number of output tiles, ``_tc3_variant``); f32 ->
matmul. Measured on an H100 (B = transposed [out, in] weight): gemv f16 ~2.5 TB/s at 4096x4096
and ~2.8 TB/s at 4096x14336 (device copy: 3.0 TB/s); M = 512, K = N = 4096: matmul_tc3 217
TFLOP/s (the 2-stage kernel before it: 128-167); f32 matmul ~14 TFLOP/s.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ...util import contiguous_strides
from . import compiler
from . import driver

__all__ = [
    "TD",
    "td",
    "contiguous_strides",
    "ptr",
    "f32",
    "i32",
    "Arg",
    "KernelSpec",
    "KERNELS",
    "ELEMENTWISE_DTYPES",
    "kernel_name",
    "all_kernel_names",
    "dtype_suffix",
    "itemsize",
    "KernelLibrary",
    "elementwise_config",
    "row_block_size",
    "SAMPLE_CHUNK",
    "sample_workspace_bytes",
    "gemv_block_size",
    "ROPE_NORMAL",
    "ROPE_NEOX",
    "linear_rows_per_block",
    "linear_block_size",
    "LINEAR_NORMS",
    "LINEAR_ACTS",
]

# Output columns per warp of gemv_<dtype> (TG_GEMV_R in matmul.cu; the kernel is correct for
# any grid, this only sizes the grid to one pass).
GEMV_ROWS_PER_WARP = 1

ROPE_NORMAL = 0
ROPE_NEOX = 2


# --------------------------------------------------------------------------------------------
# descriptor
# --------------------------------------------------------------------------------------------
class TD(ctypes.Structure):
    """``struct TD { long long ne[4]; long long st[4]; }`` (64 bytes, passed by value)."""

    _fields_ = [("ne", ctypes.c_longlong * 4), ("st", ctypes.c_longlong * 4)]

    def __repr__(self) -> str:
        return f"TD(ne={list(self.ne)}, st={list(self.st)})"


class StoreArgs(ctypes.Structure):
    """``struct StoreArgs<T>`` of cuda_src/attention.cu (attn_store's new keys/values, caches,
    RoPE and q/k-norm arguments), passed by value."""

    _fields_ = [("k", ctypes.c_uint64), ("kd", TD), ("v", ctypes.c_uint64), ("vd", TD),
                ("kc", ctypes.c_uint64), ("kcd", TD), ("vc", ctypes.c_uint64), ("vcd", TD),
                ("ff", ctypes.c_uint64), ("qn", ctypes.c_uint64), ("kn", ctypes.c_uint64),
                ("eps", ctypes.c_float), ("theta", ctypes.c_float), ("mode", ctypes.c_int32),
                ("q_norm", ctypes.c_int32), ("k_norm", ctypes.c_int32), ("early", ctypes.c_int32)]


def td(shape: Sequence[int], strides: Sequence[int] | None = None) -> TD:
    """Descriptor for a tensor of ``shape`` with element ``strides`` (None: C-contiguous),
    padded on the left to rank 4. Rank > 4 is folded when the leading dims allow it."""
    shape = tuple(shape)
    strides = contiguous_strides(shape) if strides is None else tuple(strides)
    n = len(shape)
    if n != len(strides):
        raise ValueError(f"shape {shape} and strides {strides} differ in rank")
    if n > 4:
        shape, strides = _fold_to_rank4(shape, strides)
        n = 4
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    pad = 4 - n
    return TD((1,) * pad + shape, (0,) * pad + strides)


def _fold_to_rank4(shape, strides):
    shape, strides = list(shape), list(strides)
    i = 0
    while len(shape) > 4 and i < len(shape) - 1:
        if shape[i] == 1 or strides[i] == strides[i + 1] * shape[i + 1]:
            shape[i:i + 2] = [shape[i] * shape[i + 1]]
            strides[i:i + 2] = [strides[i + 1]]
        else:
            i += 1
    if len(shape) > 4:
        raise ValueError(f"tensor of rank {len(shape)} with strides {tuple(strides)} cannot be "
                         "expressed in a rank-4 descriptor")
    return tuple(shape), tuple(strides)


def ptr(x) -> ctypes.c_uint64:
    """A device pointer argument (DeviceBuffer, int, or None for NULL)."""
    if x is None:
        return ctypes.c_uint64(0)
    if isinstance(x, driver.DeviceBuffer):
        return ctypes.c_uint64(x.ptr)
    return ctypes.c_uint64(int(x))


def f32(x) -> ctypes.c_float:
    return ctypes.c_float(float(x))


def i32(x) -> ctypes.c_int32:
    return ctypes.c_int32(int(x))


class Arg(NamedTuple):
    """A tensor argument: device pointer (DeviceBuffer or int address of the first element),
    shape and element strides (None: C-contiguous)."""

    ptr: Any
    shape: tuple
    strides: tuple | None = None

    @property
    def td(self) -> TD:
        return td(self.shape, self.strides)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def addr(self) -> ctypes.c_uint64:
        return ptr(self.ptr)

    def full_strides(self) -> tuple:
        return contiguous_strides(self.shape) if self.strides is None else tuple(self.strides)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
_DTYPE_ALIASES = {
    "f32": "f32", "float32": "f32", "fp32": "f32", "float": "f32",
    "f16": "f16", "float16": "f16", "fp16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16",
    "i32": "i32", "int32": "i32",
}
_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4}


def dtype_suffix(dt) -> str:
    """'f32' | 'f16' | 'bf16' | 'i32' for a NumPy dtype / ml_dtypes type / name."""
    if isinstance(dt, str):
        key = dt.lower()
    else:
        try:
            import numpy as np

            key = np.dtype(dt).name
        except Exception:
            key = str(dt).lower()
    if key not in _DTYPE_ALIASES:
        raise TypeError(f"unsupported dtype {dt!r} for the CUDA kernels (want float32, float16, "
                        "bfloat16 or int32)")
    return _DTYPE_ALIASES[key]


def itemsize(dt) -> int:
    return _ITEMSIZE[dtype_suffix(dt)]


@dataclass(frozen=True)
class KernelSpec:
    base: str
    file: str
    params: tuple          # (name, kind) with kind in {'ptr', 'td', 'f32', 'i32'}
    dtypes: tuple          # suffix tuples accepted, e.g. (('f32',), ('f16',)) or (('f32','f16'),...)
    launch: str            # 'elementwise' | 'rows' | 'rope' | 'matmul' | 'matmul_tc' | 'gemv' | 'gemv_nc'
    #                        | 'linear_gemv'   (params kinds also 'i64': long long by value)
    doc: str = ""


_F = ("f32", "f16", "bf16")
_ONE = tuple((d,) for d in _F)
_PAIRS = tuple((s, d) for s in _F for d in _F)
_BIN = (("out", "ptr"), ("od", "td"), ("a", "ptr"), ("ad", "td"), ("b", "ptr"), ("bd", "td"))
_UN = (("out", "ptr"), ("od", "td"), ("x", "ptr"), ("xd", "td"))
_MM = (("C", "ptr"), ("cd", "td"), ("A", "ptr"), ("ad", "td"), ("B", "ptr"), ("bd", "td"))

KERNELS: dict[str, KernelSpec] = {}


def _reg(*specs: KernelSpec) -> None:
    for s in specs:
        KERNELS[s.base] = s


_reg(
    KernelSpec("add", "elementwise.cu", _BIN, _ONE, "elementwise", "out = a + b (broadcasting)"),
    KernelSpec("sub", "elementwise.cu", _BIN, _ONE, "elementwise", "out = a - b (broadcasting)"),
    KernelSpec("mul", "elementwise.cu", _BIN, _ONE, "elementwise", "out = a * b (broadcasting)"),
    KernelSpec("div", "elementwise.cu", _BIN, _ONE, "elementwise", "out = a / b (broadcasting)"),
    KernelSpec("scale", "elementwise.cu", _UN + (("s", "f32"),), _ONE, "elementwise", "out = x * s"),
    KernelSpec("gelu", "elementwise.cu", _UN, _ONE, "elementwise", "GELU, tanh form"),
    KernelSpec("gelu_erf", "elementwise.cu", _UN, _ONE, "elementwise", "GELU, erf form"),
    KernelSpec("silu", "elementwise.cu", _UN, _ONE, "elementwise", "x * sigmoid(x)"),
    KernelSpec("softcap", "elementwise.cu", _UN + (("c", "f32"),), _ONE, "elementwise", "out = c * tanh(x / c)"),
    KernelSpec("cpy", "elementwise.cu", (("dst", "ptr"), ("dd", "td"), ("src", "ptr"), ("sd", "td")),
               _PAIRS + (("i32", "i32"),), "elementwise",
               "strided copy with dtype conversion; name cpy_<src>_<dst>"),
    KernelSpec("advance", "elementwise.cu", (("x", "ptr"), ("inc", "ptr"), ("n", "i32")), (("i32",),),
               "elementwise", "x[i] += inc[i] for i < n (Session.compute_loop's int inputs)"),
    KernelSpec("rms_norm", "norms.cu", _UN + (("w", "ptr"), ("eps", "f32")), _ONE, "rows"),
    KernelSpec("layer_norm", "norms.cu", _UN + (("w", "ptr"), ("b", "ptr"), ("eps", "f32")), _ONE, "rows"),
    KernelSpec("softmax", "softmax.cu",
               _UN + (("scale", "f32"), ("causal", "i32"), ("past", "i32"), ("past_dev", "ptr"),
                      ("window", "i32")),
               _ONE, "rows"),
    KernelSpec("rope", "rope.cu",
               _UN + (("pos", "ptr"), ("ff", "ptr"), ("theta", "f32"), ("mode", "i32"), ("n_dims", "i32")),
               _ONE, "rope"),
    KernelSpec("rope_store", "rope.cu",
               (("qo", "ptr"), ("qod", "td"), ("q", "ptr"), ("qd", "td"), ("k", "ptr"), ("kd", "td"),
                ("v", "ptr"), ("vd", "td"), ("pos", "ptr"), ("kc", "ptr"), ("kcd", "td"), ("vc", "ptr"),
                ("vcd", "td"), ("ff", "ptr"), ("theta", "f32"), ("mode", "i32")),
               _ONE, "elementwise", "RoPE of q and k + K/V cache write at pos (the rope_store op)"),
    KernelSpec("getrows", "getrows.cu",
               (("out", "ptr"), ("od", "td"), ("table", "ptr"), ("tbl", "td"), ("ids", "ptr")),
               _ONE, "elementwise"),
    KernelSpec("set_rows", "getrows.cu",
               (("dst", "ptr"), ("dd", "td"), ("src", "ptr"), ("sd", "td"), ("idx", "ptr")),
               _PAIRS, "elementwise", "name set_rows_<src>_<dst>"),
    KernelSpec("argmax", "reduce.cu", (("out", "ptr"), ("od", "td"), ("x", "ptr"), ("xd", "td")),
               _ONE, "rows"),
    KernelSpec("argmax_split", "reduce.cu", (("out", "ptr"), ("od", "td"), ("x", "ptr"), ("xd", "td"),
                                             ("part", "ptr"), ("counters", "ptr")),
               _ONE, "rows", "argmax with G blocks per row (grid (G, rows)); see KernelLibrary.argmax"),
    KernelSpec("matmul", "matmul.cu", _MM, _ONE, "matmul"),
    *(KernelSpec(f"matmul_tc3_{bk}_{st}", "matmul.cu", _MM, (("f16",), ("bf16",)), "matmul_tc",
                 f"tensor cores, {st}-stage cp.async pipeline of K={bk} tiles (dynamic shared memory)")
      for bk, st in ((32, 3), (32, 4), (64, 3), (64, 4))),
    KernelSpec("gemv", "matmul.cu", _MM, _ONE, "gemv"),
    KernelSpec("gemv_nc", "matmul.cu", _MM, _ONE, "gemv_nc"),
    KernelSpec("linear_gemv", "linear.cu",
               (("y", "ptr"), ("yd", "td"), ("x", "ptr"), ("xd", "td"), ("w", "ptr"), ("ldw", "i64"),
                ("bias", "ptr"), ("res", "ptr"), ("rd", "td"), ("norm_w", "ptr"), ("norm_b", "ptr"),
                ("eps", "f32"), ("norm", "i32"), ("act", "i32"), ("N", "i32"), ("K", "i32")),
               _ONE, "linear_gemv",
               "y [.., Nout] = act(norm(x [.., K]) @ w[N, K].T + bias[N]) + res [.., Nout]; "
               "norm 0 none | 1 rms | 2 layer (norm_w, norm_b [K] or NULL); act 0 none | 1 gelu_tanh | "
               "2 silu | 3 swiglu (Nout = N/2: silu(z[:N/2]) * z[N/2:]); w row n at w + n*ldw; "
               "y may equal res. Few rows (decode); see KernelLibrary.linear"),
    KernelSpec("linear_gemv1", "linear.cu",
               (("y", "ptr"), ("yd", "td"), ("x", "ptr"), ("xd", "td"), ("w", "ptr"), ("ldw", "i64"),
                ("bias", "ptr"), ("res", "ptr"), ("rd", "td"), ("norm_w", "ptr"), ("norm_b", "ptr"),
                ("eps", "f32"), ("norm", "i32"), ("act", "i32"), ("N", "i32"), ("K", "i32")),
               _ONE, "linear_gemv",
               "linear_gemv with one row per block (rows-per-block 1 whatever the row count; "
               "grid = rows * column blocks): fewer registers, the decode hot path"),
    KernelSpec("linear_epilogue", "linear.cu",
               (("y", "ptr"), ("yd", "td"), ("z", "ptr"), ("zd", "td"), ("bias", "ptr"), ("res", "ptr"),
                ("rd", "td"), ("act", "i32")),
               _ONE, "elementwise",
               "y [.., Nout] = act(z [.., N] + bias[N]) + res [.., Nout] element-wise (act as "
               "linear_gemv; swiglu reads z[.., j] and z[.., j + N/2]); y may alias res"),
)

# ggml block-quantized weights (linear_q.cu; launch helpers in quant_launch.py)
QUANT_KERNEL_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
_LINEAR_PARAMS = (("y", "ptr"), ("yd", "td"), ("x", "ptr"), ("xd", "td"), ("w", "ptr"), ("ldw", "i64"),
                  ("bias", "ptr"), ("res", "ptr"), ("rd", "td"), ("norm_w", "ptr"), ("norm_b", "ptr"),
                  ("eps", "f32"), ("norm", "i32"), ("act", "i32"), ("N", "i32"), ("K", "i32"))
for _q in QUANT_KERNEL_TYPES:
    _reg(KernelSpec(f"linear_q_{_q}", "linear_q.cu", _LINEAR_PARAMS, _ONE, "linear_gemv",
                    f"linear_gemv with a {_q} weight (w: raw blocks, row n at byte n*ldw)"),
         KernelSpec(f"dequant_{_q}", "linear_q.cu",
                    (("out", "ptr"), ("od", "td"), ("w", "ptr"), ("ldw", "i64"), ("ids", "ptr")), _ONE,
                    "elementwise", f"out[.., r, :] = dequant({_q} row ids[r] (or r when ids is NULL))"))

ELEMENTWISE_DTYPES = _F
#: elements per block of argmax_split (rows of >= 4 chunks are split)
ARGMAX_CHUNK = 4096

# the sample op (cuda_src/sample.cu): keys per logits dtype, then histogram/thresholds and pick
_SAMPLE_TAIL = (("fp", "ptr"), ("ip", "ptr"), ("ws", "ptr"))
_reg(
    KernelSpec("sample_keys", "sample.cu", (("out", "ptr"), ("od", "td"), ("x", "ptr"), ("xd", "td")) + _SAMPLE_TAIL,
               _ONE, "sample", "z = x / temperature as sortable keys, per-chunk maxima (sample op, 1 of 3)"),
    KernelSpec("sample_hist", "sample.cu", (("out", "ptr"), ("od", "td"), ("xd", "td")) + _SAMPLE_TAIL,
               (("i32",),), "sample", "histogram of the keys; the row's last block finds the thresholds (2 of 3)"),
    KernelSpec("sample_pick", "sample.cu", (("out", "ptr"), ("od", "td"), ("xd", "td")) + _SAMPLE_TAIL,
               (("i32",),), "sample", "kept weight per chunk; the row's last block picks the token (3 of 3)"),
)
SOURCE_FILES = tuple(sorted({s.file for s in KERNELS.values()}))


def kernel_name(base: str, *dtypes) -> str:
    """Full kernel name: kernel_name('add', 'float16') -> 'add_f16';
    kernel_name('cpy', 'f32', 'bf16') -> 'cpy_f32_bf16'."""
    spec = KERNELS.get(base)
    if spec is None:
        raise KeyError(f"unknown kernel {base!r}; known: {', '.join(sorted(KERNELS))}")
    sfx = tuple(dtype_suffix(d) for d in dtypes)
    if sfx not in spec.dtypes:
        raise TypeError(f"kernel {base!r} has no variant for dtypes {sfx}; available: "
                        f"{', '.join('_'.join(d) for d in spec.dtypes)}")
    return base + "_" + "_".join(sfx)


def all_kernel_names() -> list[tuple[str, str]]:
    """[(file, full_name)] for every instantiated kernel."""
    return [(s.file, s.base + "_" + "_".join(d)) for s in KERNELS.values() for d in s.dtypes]


# --------------------------------------------------------------------------------------------
# launch configuration
# --------------------------------------------------------------------------------------------
def elementwise_config(n: int, sm_count: int = 132, block: int = 256) -> tuple[int, int]:
    """(grid, block) for a 1-D grid-stride kernel over n items."""
    grid = max(1, min(-(-int(n) // block), sm_count * 16))
    return grid, block


def gemv_block_size(columns: int, sm_count: int = 132) -> int:
    """Threads per block for gemv: 256, unless that leaves fewer than two blocks per SM (small
    weights), then 128 or 64 so that the work spreads over all SMs."""
    for b in (256, 128):
        if -(-columns // (b // 32 * GEMV_ROWS_PER_WARP)) >= 2 * sm_count:
            return b
    return 64


# linear_gemv: the norm / act codes, and the launch rules mirrored from cuda_src/linear.cu.
LINEAR_NORMS = {None: 0, 0: 0, "none": 0, 1: 1, "rms": 1, "rms_norm": 1, 2: 2, "layer": 2, "layer_norm": 2}
LINEAR_ACTS = {None: 0, 0: 0, "none": 0, 1: 1, "gelu": 1, "gelu_tanh": 1, 2: 2, "silu": 2, 3: 3, "swiglu": 3}
_LINEAR_RB_SMEM_BYTES = 65536  # LIN_RB_SMEM_BYTES in linear.cu


def linear_rows_per_block(rows: int, K: int) -> int:
    """Rows that one linear_gemv block stages and computes together (sharing each weight load):
    1, 2 or 4 -- lin_rows_per_block in linear.cu, which the launch grid must agree with."""
    rb = 1 if rows <= 1 else (2 if rows == 2 else 4)
    rs = -(-int(K) // 4) * 4
    while rb > 1 and rb * rs * 4 > _LINEAR_RB_SMEM_BYTES:
        rb //= 2
    return rb


def linear_block_size(columns: int, groups: int = 1, sm_count: int = 132) -> int:
    """Threads per linear_gemv block (one output column per warp at a time): 256. Measured on
    an H100 (tools/bench_linear.py), 256 beat 128 and 64 at every decode shape, the small ones
    (N = 576, 72 blocks) included: a block stages the normalised row once for 8 warps."""
    return 256


SAMPLE_CHUNK = 4096  # logits per block of the sample kernels (SMP_CHUNK in sample.cu)


def sample_workspace_bytes(rows: int, V: int) -> int:
    """Scratch bytes that :meth:`KernelLibrary.sample` needs (layout: smp_ws in sample.cu)."""
    G = -(-int(V) // SAMPLE_CHUNK)
    return int(rows) * (64 + 40 * G + 12 * 2048 + 4 * int(V))


def row_block_size(n: int) -> int:
    """Threads per block for a row-wise kernel on rows of n elements (multiple of 32, <= 1024)."""
    want = -(-int(n) // 4)  # ~4 elements per thread
    b = 32
    while b < want and b < 1024:
        b *= 2
    return b


# --------------------------------------------------------------------------------------------
# library
# --------------------------------------------------------------------------------------------
class KernelLibrary:
    """Compiles (through the disk cache) and loads each kernel source once per device, and
    hands out functions by name; also offers one helper per op family that computes descriptors
    and launch configs from pointers/shapes/strides."""

    def __init__(self, device: driver.Device, arch: str | None = None, options: Sequence[str] = (),
                 src_dir: str | Path | None = None, cache: bool = True):
        self.device = device
        self.arch = compiler.normalize_arch(arch or device.arch)
        self.options = tuple(options)
        self.src_dir = Path(src_dir) if src_dir else compiler.cuda_src_dir()
        self.cache = cache
        self._modules: dict[str, driver.Module] = {}
        self._functions: dict[str, driver.Function] = {}
        self._lock = threading.Lock()
        self.sm_count = getattr(device, "sm_count", 132)
        self._recording: list | None = None
        # programmatic dependent launch: kernels built for sm_90+ wait in-kernel for the previous
        # one (cuda_src/common.cuh), so each may be scheduled while its predecessor finishes
        self.pdl = _arch_number(self.arch) >= 90 and os.environ.get("TINYGRAPH_PDL", "1") != "0"
        self.pdl_active = True  # callers (the backend) may turn it off for a run: see Backend

    # -- loading ---------------------------------------------------------------------------------
    def module(self, file: str) -> driver.Module:
        with self._lock:
            m = self._modules.get(file)
            if m is None:
                cubin = compiler.compile_source(self.src_dir / file, self.arch, self.options,
                                                cache=self.cache)
                self.device.make_current()
                m = self._modules[file] = driver.Module(cubin, name=file, pdl=self.pdl)
            return m

    def function(self, full_name: str) -> driver.Function:
        f = self._functions.get(full_name)
        if f is None:
            base = next((b for b in sorted(KERNELS, key=len, reverse=True)
                         if full_name.startswith(b + "_")), None)
            if base is None:
                raise KeyError(f"unknown kernel {full_name!r}")
            f = self._functions[full_name] = self.module(KERNELS[base].file).get_function(full_name)
        return f

    def get(self, base: str, *dtypes) -> driver.Function:
        """``lib.get('add', 'f16')``, ``lib.get('cpy', np.float32, 'bf16')``."""
        return self.function(kernel_name(base, *dtypes))

    def load_all(self) -> None:
        for f in SOURCE_FILES:
            self.module(f)

    # -- launching / recording -------------------------------------------------------------------
    def _launch(self, func, grid, block, args, stream=None, shared_mem: int = 0, pdl: bool | None = None) -> None:
        if not self.pdl_active:
            pdl = False
        if self._recording is not None:
            self._recording.append(driver.PreparedLaunch(func, grid, block, args, shared_mem, pdl))
        else:
            driver.launch(func, grid, block, args, shared_mem, stream, pdl)

    @contextlib.contextmanager
    def record(self):
        """Within ``with lib.record() as launches:``, the op helpers append a
        :class:`driver.PreparedLaunch` to ``launches`` instead of launching; replay them with
        ``for l in launches: l(stream)`` (cheaper per launch than the helpers) or inside a
        :func:`driver.capture` to build a CUDA graph."""
        prev, self._recording = self._recording, []
        try:
            yield self._recording
        finally:
            self._recording = prev

    # -- op helpers ------------------------------------------------------------------------------
    def _ew(self, n):
        return elementwise_config(n, self.sm_count)

    def binary(self, op: str, dtype, out: Arg, a: Arg, b: Arg, stream=None) -> None:
        """out = a (op) b with NumPy broadcasting (a, b right-aligned against out)."""
        n = out.numel
        if n == 0:
            return
        _check_broadcast(op, out.shape, a.shape, b.shape)
        g, bl = self._ew(n)
        self._launch(self.get(op, dtype), g, bl,
                      [out.addr, out.td, a.addr, a.td, b.addr, b.td], stream=stream)

    def unary(self, op: str, dtype, out: Arg, x: Arg, stream=None) -> None:
        """op in gelu, gelu_erf, silu."""
        if out.numel == 0:
            return
        _check_broadcast(op, out.shape, x.shape)
        g, bl = self._ew(out.numel)
        self._launch(self.get(op, dtype), g, bl, [out.addr, out.td, x.addr, x.td], stream=stream)

    def scale(self, dtype, out: Arg, x: Arg, s: float, stream=None) -> None:
        if out.numel == 0:
            return
        g, bl = self._ew(out.numel)
        self._launch(self.get("scale", dtype), g, bl,
                      [out.addr, out.td, x.addr, x.td, f32(s)], stream=stream)

    def softcap(self, dtype, out: Arg, x: Arg, c: float, stream=None) -> None:
        """out = c * tanh(x / c) (Gemma 2's soft-capping), c > 0."""
        if out.numel == 0:
            return
        g, bl = self._ew(out.numel)
        self._launch(self.get("softcap", dtype), g, bl,
                      [out.addr, out.td, x.addr, x.td, f32(c)], stream=stream)

    def copy(self, dst: Arg, src: Arg, src_dtype, dst_dtype=None, stream=None) -> None:
        """Strided copy / cast; element i of src (row-major over its shape) -> element i of dst."""
        dst_dtype = src_dtype if dst_dtype is None else dst_dtype
        if src.numel != dst.numel:
            raise ValueError(f"cpy: src has {src.numel} elements {src.shape}, dst {dst.numel} {dst.shape}")
        if dst.numel == 0:
            return
        g, bl = self._ew(dst.numel)
        self._launch(self.get("cpy", src_dtype, dst_dtype), g, bl,
                      [dst.addr, dst.td, src.addr, src.td], stream=stream)

    def rms_norm(self, dtype, out: Arg, x: Arg, w, eps: float, stream=None) -> None:
        rows = x.numel // max(1, x.shape[-1]) if x.shape else 1
        if x.numel == 0:
            return
        self._launch(self.get("rms_norm", dtype), rows, row_block_size(x.shape[-1]),
                      [out.addr, out.td, x.addr, x.td, ptr(w), f32(eps)], stream=stream)

    def layer_norm(self, dtype, out: Arg, x: Arg, w, b, eps: float, stream=None) -> None:
        if x.numel == 0:
            return
        rows = x.numel // x.shape[-1]
        self._launch(self.get("layer_norm", dtype), rows, row_block_size(x.shape[-1]),
                      [out.addr, out.td, x.addr, x.td, ptr(w), ptr(b), f32(eps)], stream=stream)

    def softmax(self, dtype, out: Arg, x: Arg, scale: float = 1.0, causal: bool = False,
                past: int = 0, past_dev=None, stream=None, window: int | None = None) -> None:
        """``window``: sliding window (causal only; None = none), see cuda_src/softmax.cu."""
        if x.numel == 0:
            return
        rows = x.numel // x.shape[-1]
        self._launch(self.get("softmax", dtype), rows, row_block_size(x.shape[-1]),
                      [out.addr, out.td, x.addr, x.td, f32(scale), i32(1 if causal else 0),
                       i32(past), ptr(past_dev), i32(window or 0)], stream=stream)

    def rope(self, dtype, out: Arg, x: Arg, pos, theta: float, mode: int | str = ROPE_NEOX,
             n_dims: int | None = None, freq_factors=None, stream=None) -> None:
        """x (..., T, heads, head_dim); pos: device int32[T]; freq_factors: device float32[n_dims/2]."""
        if isinstance(mode, str):
            mode = {"neox": ROPE_NEOX, "normal": ROPE_NORMAL}[mode]
        hd = x.shape[-1]
        n_dims = hd if n_dims is None else int(n_dims)
        if hd % 2 or n_dims % 2 or n_dims > hd:
            raise ValueError(f"rope: head_dim {hd} and n_dims {n_dims} must be even, n_dims <= head_dim")
        if x.numel == 0:
            return
        g, bl = self._ew(x.numel // 2)
        self._launch(self.get("rope", dtype), g, bl,
                      [out.addr, out.td, x.addr, x.td, ptr(pos), ptr(freq_factors), f32(theta),
                       i32(mode), i32(n_dims)], stream=stream)

    def getrows(self, dtype, out: Arg, table: Arg, ids, stream=None) -> None:
        """out[..., r, :] = table[ids[r], :]; ids device int32 with one entry per out row."""
        if out.numel == 0:
            return
        g, bl = self._ew(out.numel)
        self._launch(self.get("getrows", dtype), g, bl,
                      [out.addr, out.td, table.addr, table.td, ptr(ids)], stream=stream)

    def set_rows(self, dst: Arg, src: Arg, idx, src_dtype, dst_dtype=None, stream=None) -> None:
        """dst[c0, c1, idx[c2], c3] = src[c0, c1, c2, c3] (rank-4 padded coordinates)."""
        dst_dtype = src_dtype if dst_dtype is None else dst_dtype
        if src.numel == 0:
            return
        g, bl = self._ew(src.numel)
        self._launch(self.get("set_rows", src_dtype, dst_dtype), g, bl,
                      [dst.addr, dst.td, src.addr, src.td, ptr(idx)], stream=stream)

    @staticmethod
    def argmax_splits(n: int) -> int:
        """Blocks per row for argmax_split over rows of n elements (1: plain argmax)."""
        return max(1, min(128, -(-int(n) // ARGMAX_CHUNK))) if n >= 4 * ARGMAX_CHUNK else 1

    def argmax(self, dtype, out: Arg, x: Arg, stream=None, part=None, counters=None) -> None:
        """out: int32 with x's shape minus the last axis (or with a trailing 1). Long rows use
        argmax_split when ``part`` (rows * argmax_splits(n) uint64) and ``counters`` (rows int32,
        zero, left zero) device pointers are given."""
        if x.numel == 0:
            return
        n = x.shape[-1]
        rows = x.numel // n
        oshape = tuple(x.shape[:-1]) + (1,)
        ost = out.full_strides()
        if len(ost) == len(x.shape) - 1:
            ost = tuple(ost) + (1,)
        G = self.argmax_splits(n)
        if G > 1 and part is not None and counters is not None:
            self._launch(self.get("argmax_split", dtype), (G, rows), row_block_size(ARGMAX_CHUNK),
                         [out.addr, td(oshape, ost), x.addr, x.td, ptr(part), ptr(counters)], stream=stream)
            return
        self._launch(self.get("argmax", dtype), rows, row_block_size(n),
                     [out.addr, td(oshape, ost), x.addr, x.td], stream=stream)

    def sample(self, dtype, out: Arg, x: Arg, fparams, iparams, ws, stream=None) -> None:
        """The sample op (see ``tinygraph.ops.sample``): out int32 [rows] (x's shape without its last
        axis, any strides); x [..., V] logits of ``dtype`` (rank <= 4, any strides); fparams /
        iparams: device pointers of float32 [temperature, top_p] and int32 [top_k, seed_lo,
        seed_hi, counter]; ws: device scratch of :func:`sample_workspace_bytes` bytes (8-byte
        aligned; need not be zeroed). Three launches on grid (ceil(V / 4096), rows) x 1024."""
        if x.numel == 0:
            return
        V = x.shape[-1]
        rows = x.numel // V
        oshape = tuple(x.shape[:-1]) + (1,)
        ost = out.full_strides()
        if len(ost) == len(x.shape) - 1:
            ost = tuple(ost) + (1,)
        od = td(oshape, ost)
        grid = (-(-V // SAMPLE_CHUNK), rows)
        if rows > 65535:
            raise ValueError(f"sample: {rows} rows exceed the grid.y limit of 65535")
        tail = [ptr(fparams), ptr(iparams), ptr(ws)]
        self._launch(self.get("sample_keys", dtype), grid, 1024, [out.addr, od, x.addr, x.td] + tail, stream=stream)
        for stage in ("sample_hist", "sample_pick"):
            self._launch(self.get(stage, "i32"), grid, 1024, [out.addr, od, x.td] + tail, stream=stream)

    # -- matmul ----------------------------------------------------------------------------------
    def plan_matmul(self, dtype, c: Arg, a: Arg, b: Arg, algo: str | None = None) -> "MatmulPlan":
        """Pick a kernel and launch config: (function, grid, block, dynamic shared bytes)."""
        sfx = dtype_suffix(dtype)
        if len(a.shape) < 2 or len(b.shape) < 2 or len(c.shape) < 2:
            raise ValueError("matmul operands need rank >= 2")
        M, K = a.shape[-2], a.shape[-1]
        K2, N = b.shape[-2], b.shape[-1]
        if K != K2 or tuple(c.shape[-2:]) != (M, N):
            raise ValueError(f"matmul shapes: C{tuple(c.shape)} = A{tuple(a.shape)} @ B{tuple(b.shape)}")
        if len(c.shape) > 4 or len(a.shape) > 4 or len(b.shape) > 4:
            raise ValueError("matmul supports at most 2 batch dims")
        _check_broadcast("matmul", tuple(c.shape[:-2]), tuple(a.shape[:-2]), tuple(b.shape[:-2]))
        batch = math.prod(c.shape[:-2])
        b_st = b.full_strides()
        if algo is None:
            if M == 1:
                algo = "gemv" if b_st[-2] == 1 else "gemv_nc"
            elif sfx in ("f16", "bf16") and _arch_number(self.arch) >= 80:
                algo = "matmul_tc3"
            else:
                algo = "matmul"
        if algo in ("gemv", "gemv_nc") and M != 1:
            raise ValueError(f"{algo} needs M == 1, got M = {M}")
        if algo == "matmul_tc3":
            algo = self._tc3_variant(-(-N // 128) * -(-M // 128) * batch)
        smem = 0
        if algo == "gemv":
            bs = gemv_block_size(N * batch, self.sm_count)
            grid, block = (-(-N // (bs // 32 * GEMV_ROWS_PER_WARP)), batch, 1), (bs, 1, 1)
        elif algo == "gemv_nc":
            grid, block = (-(-N // 32), batch, 1), (32, 8, 1)
        elif algo.startswith("matmul_tc3_") and algo in KERNELS:
            grid, block = (-(-N // 128), -(-M // 128), batch), (256, 1, 1)
            bk, st = (int(v) for v in algo.split("_")[2:4])
            smem = tc3_shared_bytes(bk, st)
        elif algo == "matmul":
            grid, block = (-(-N // 64), -(-M // 64), batch), (256, 1, 1)
        else:
            raise ValueError(f"unknown matmul algo {algo!r}")
        if max(grid[1], grid[2]) > 65535:
            raise ValueError(f"matmul grid {grid} exceeds the 65535 limit of grid.y/z "
                             f"(batch {batch}, M {M}); split the call")
        f = self.get(algo, sfx)
        self._ensure_dynamic_smem(f, smem)
        return MatmulPlan(f, grid, block, smem)

    def _tc3_variant(self, tiles: int) -> str:
        """matmul_tc3's (K tile, stages) for a product of ``tiles`` 128x128 output tiles. Measured on
        an H100 (f16, M = 512 and 2048, prefill shapes of the bench models; .dev-style A/B in
        bench/README.md): at most one wave of tiles runs one block per SM anyway, and 4 stages of
        64 win (e.g. 4096x4096: 217 vs 167 TFLOP/s with 3); more tiles want two blocks per SM,
        which 3 stages of 64 allow (24576x4096: 277 vs 226). Smaller configs where the device's
        shared memory per block is smaller (sm_86/89: 99 KB)."""
        optin = int(getattr(self.device, "max_shared_per_block_optin", 227 * 1024))
        pick = (64, 4) if tiles <= self.sm_count else (64, 3)
        for bk, st in (pick, (64, 3), (32, 4)):
            if tc3_shared_bytes(bk, st) + 1024 <= optin:
                return f"matmul_tc3_{bk}_{st}"
        return "matmul_tc3_32_3"  # 61 KB

    # -- fused linear layers -----------------------------------------------------------------------
    def _ensure_dynamic_smem(self, f: driver.Function, nbytes: int) -> None:
        """Raise ``f``'s dynamic shared memory limit when a launch needs more than the 48 KB
        default (remembered on the function object)."""
        if nbytes <= 48 * 1024 - 1024 or getattr(f, "_tg_dyn_smem", 0) >= nbytes:
            return
        optin = int(getattr(self.device, "max_shared_per_block_optin", 227 * 1024))
        if nbytes + 1024 > optin:
            raise ValueError(f"{f.name}: needs {nbytes} bytes of shared memory, the device allows "
                             f"{optin} per block")
        f.set_max_dynamic_shared(nbytes)
        f._tg_dyn_smem = nbytes

    def _blocks_per_sm(self, f: driver.Function, block: int, smem: int) -> int:
        """Resident blocks per SM for ``f`` (cuOccupancyMaxActiveBlocksPerMultiprocessor),
        cached; 2 when the driver cannot say."""
        cache = getattr(f, "_tg_occupancy", None)
        if cache is None:
            cache = f._tg_occupancy = {}
        n = cache.get((block, smem))
        if n is None:
            try:
                from cuda.bindings import driver as cu

                err, n = cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f.handle, int(block), int(smem))
                n = int(n) if err == cu.CUresult.CUDA_SUCCESS and int(n) > 0 else 2
            except Exception:
                n = 2
            cache[(block, smem)] = n
        return n

    def linear(self, dtype, y: Arg, x: Arg, w_ptr, ldw: int, N: int, K: int, bias=None,
               res: Arg | None = None, norm=0, norm_w=None, norm_b=None, eps: float = 0.0, act=0,
               stream=None, *, block: int | None = None, max_blocks: int | None = None,
               func: driver.Function | None = None, weight_ready: bool = False) -> None:
        """One fused kernel (linear_gemv): ``y = act(norm(x) @ w.T + bias) + res``.

        x [..., K] (any strides, rank <= 4); w: device pointer of a row-contiguous [N, K] weight
        (HF [out, in]; row n at ``w_ptr + n*ldw`` elements); bias [N], norm_w / norm_b [K]:
        device pointers or None; y and res [..., Nout] (any strides; y may be res itself, and
        must not overlap x); Nout = N, or N/2 for act 3. norm: 0 / None / 'rms' (1) /
        'layer' (2); act: 0 / None / 'gelu' (1, tanh form) / 'silu' (2) / 'swiglu' (3).

        Meant for decode (one row per sequence, x [B, 1, K]); any number of rows
        (prod(x.shape[:-1])) is computed correctly and a few (<= 16) efficiently -- the rows
        share weight loads in groups of linear_rows_per_block(rows, K) -- while prefill should
        run norm -> matmul (tensor cores) -> :meth:`linear_epilogue`.
        Launch: linear_gemv1 (one row per block) when that group size is 1, else linear_gemv;
        256 threads; the grid is capped at one wave (resident blocks per SM x SMs): warps
        then loop over several columns, which amortises the per-block norm prologue (lm_head
        K=576 N=49152 f16 on an H100: 58 us uncapped, 25 us capped).
        Tuning knobs: ``block`` (threads, a multiple of 32 <= 256), ``max_blocks`` (grid cap;
        0 for none), ``func`` (a same-ABI kernel; it must use linear_rows_per_block's grouping
        unless it is a linear_gemv1). ``weight_ready``: no kernel queued since the stream last
        went idle writes w (a model weight), so the kernel may load it before it waits for the
        kernels before it (programmatic dependent launch); False (default) launches it in plain
        stream order.
        """
        sfx = dtype_suffix(dtype)
        norm_c, act_c = _linear_code("norm", norm, LINEAR_NORMS), _linear_code("act", act, LINEAR_ACTS)
        N, K, ldw = int(N), int(K), int(ldw)
        xs = tuple(x.shape)
        if N <= 0 or K <= 0 or ldw < K:
            raise ValueError(f"linear: need N > 0, K > 0 and ldw >= K, got N={N}, K={K}, ldw={ldw}")
        if not xs or xs[-1] != K or len(xs) > 4:
            raise ValueError(f"linear: x{xs} must be [..., K={K}] of rank <= 4")
        if act_c == 3 and N % 2:
            raise ValueError(f"linear(act=swiglu): N = {N} must be even")
        nout = N // 2 if act_c == 3 else N
        want = xs[:-1] + (nout,)
        if tuple(y.shape) != want:
            raise ValueError(f"linear: y{tuple(y.shape)} must have shape {want} (x{xs}, N={N}, act={act_c})")
        if res is not None:
            _check_broadcast("linear residual", want, res.shape)
        if N >= 2**31 or K >= 2**31:
            raise ValueError(f"linear: N={N}, K={K} exceed the kernel's int range")
        rows = math.prod(want[:-1])
        if rows == 0:
            return
        rb = linear_rows_per_block(rows, K)
        if func is not None and func.name.startswith("linear_gemv1_"):
            rb = 1
        smem = rb * (-(-K // 4) * 4) * 4
        f = func if func is not None else self.get("linear_gemv1" if rb == 1 else "linear_gemv", sfx)
        self._ensure_dynamic_smem(f, smem)
        groups = -(-rows // rb)
        bs = int(block) if block else linear_block_size(nout, groups, self.sm_count)
        if bs % 32 or not 32 <= bs <= 256:
            raise ValueError(f"linear: block {bs} must be a multiple of 32 in [32, 256]")
        cb = -(-nout // (bs // 32))
        if max_blocks is None:
            max_blocks = self.sm_count * self._blocks_per_sm(f, bs, smem)
        # one wave of resident blocks at most. Tried on the H100 (decode tok/s): fewer blocks
        # with the same number of columns for every warp (TinyLlama 932 vs 940), two blocks per
        # SM instead of three (SmolLM2 1613 vs 1616, TinyLlama 899 vs 935), one (-12..-21%),
        # two waves (TinyLlama 924 vs 939, Qwen3-0.6B 945 vs 1003), no cap (-2..-12%)
        if max_blocks:
            cb = min(cb, max(1, int(max_blocks) // groups))
        grid = groups * cb
        if grid >= 2**31:
            raise ValueError(f"linear: grid {grid} too large ({rows} rows)")
        rd = res.td if res is not None else y.td
        self._launch(f, grid, bs,
                     [y.addr, y.td, x.addr, x.td, ptr(w_ptr), ctypes.c_int64(ldw), ptr(bias),
                      res.addr if res is not None else ptr(None), rd, ptr(norm_w), ptr(norm_b),
                      f32(eps), i32(norm_c), i32(act_c), i32(N), i32(K)],
                     stream=stream, shared_mem=smem, pdl=None if weight_ready else False)

    def linear_epilogue(self, dtype, y: Arg, z: Arg, bias=None, res: Arg | None = None, act=0,
                        stream=None) -> None:
        """``y = act(z + bias) + res`` element-wise (the tail of a linear layer after a matmul):
        z [..., N], y [..., Nout] (Nout = N, or N/2 for act 3 = swiglu: silu(z[..., :N/2]) *
        z[..., N/2:]); bias [N] device pointer or None; res [..., Nout] or None (any strides;
        y may alias res)."""
        act_c = _linear_code("act", act, LINEAR_ACTS)
        ys, zs = tuple(y.shape), tuple(z.shape)
        if not ys or not zs or len(ys) > 4:
            raise ValueError(f"linear_epilogue: bad shapes y{ys}, z{zs}")
        N = zs[-1]
        if (2 * ys[-1] if act_c == 3 else ys[-1]) != N:
            raise ValueError(f"linear_epilogue: z{zs} has {N} columns, y{ys} wants "
                             f"{2 * ys[-1] if act_c == 3 else ys[-1]} (act={act_c})")
        _check_broadcast("linear_epilogue", ys[:-1], zs[:-1])
        if res is not None:
            _check_broadcast("linear_epilogue residual", ys, res.shape)
        if y.numel == 0:
            return
        g, bl = self._ew(y.numel)
        self._launch(self.get("linear_epilogue", dtype), g, bl,
                     [y.addr, y.td, z.addr, z.td, ptr(bias),
                      res.addr if res is not None else ptr(None), res.td if res is not None else y.td,
                      i32(act_c)], stream=stream)

    def matmul(self, dtype, c: Arg, a: Arg, b: Arg, stream=None, algo: str | None = None) -> None:
        """C = A @ B (batched, strided, broadcast batch dims)."""
        if c.numel == 0:
            return
        f, grid, block, smem = self.plan_matmul(dtype, c, a, b, algo)
        self._launch(f, grid, block, [c.addr, c.td, a.addr, a.td, b.addr, b.td], stream=stream,
                     shared_mem=smem)


class MatmulPlan(NamedTuple):
    func: driver.Function
    grid: tuple
    block: tuple
    shared_mem: int  # dynamic shared memory bytes


def tc3_shared_bytes(bk: int, stages: int) -> int:
    """Dynamic shared memory of matmul_tc3_<bk>_<stages>: per stage a 128 x (bk + 8) tile of A and
    one of B, 2-byte elements."""
    return stages * 2 * 128 * (bk + 8) * 2


def fa_shared_bytes(D: int) -> int:
    """Dynamic shared memory of attn_fa_<dtype>_<D> (cuda_src/attention_tc.cu): the query tile and
    two stages of key and value tiles, 64 rows of D + 8 two-byte elements each."""
    return 5 * 64 * (D + 8) * 2


def _arch_number(arch: str) -> int:
    """'sm_90' -> 90, 'sm_90a' -> 90, 'sm_100' -> 100."""
    digits = "".join(ch for ch in arch if ch.isdigit())
    return int(digits) if digits else 0


def _linear_code(what: str, v, table: dict) -> int:
    key = v.lower() if isinstance(v, str) else v
    if key not in table:
        raise ValueError(f"linear: unknown {what} {v!r}; one of {sorted(str(k) for k in table)}")
    return table[key]


def _check_broadcast(op: str, out_shape, *in_shapes) -> None:
    out_shape = tuple(out_shape)
    for s in in_shapes:
        s = tuple(s)
        if len(s) > len(out_shape):
            raise ValueError(f"{op}: input shape {s} has more dims than the output {out_shape}")
        for i in range(1, len(s) + 1):
            if s[-i] != 1 and s[-i] != out_shape[-i]:
                raise ValueError(f"{op}: input shape {s} does not broadcast to {out_shape}")
