"""The data half of the kernel library (``kernels.py`` re-exports every name): the tensor
descriptor ``TD`` and launch-argument helpers, the registry of kernels (``KERNELS``: file,
parameters, dtypes, launch shape), and the pure functions that pick block and grid sizes."""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from ...ops.fused import _ACTS, _NORMS
from ...util import contiguous_strides
from . import driver
from .select import QR_TYPES, arch_number as _arch_number, fa_shared_bytes, tc3_shared_bytes  # noqa: F401 (re-exported)
from .limits import FLASH_HEADS

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
    """``struct StoreArgs<T>`` of cuda_src/attention_common.cuh (attn_store's new keys/values, caches,
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
    params: tuple          # (name, kind) with kind in {'ptr', 'td', 'f32', 'i32', 'i64', 'tmap'}
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
               _ONE + (("i32",),), "elementwise", "i32: a tensor-parallel rank's vocabulary map"),
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
    KernelSpec("matmul_tc3s", "matmul.cu",
               (("P", "ptr"), ("A", "ptr"), ("ad", "td"), ("B", "ptr"), ("bd", "td"), ("cd", "td"), ("tps", "i32")),
               (("f16",), ("bf16",)), "matmul_tc",
               "matmul_tc3_64_4 over K tiles [z * tps, (z + 1) * tps) of block z: float32 partials P [splits, M, N]"),
    *(KernelSpec(f"matmul_tc3s_m{bm}", "matmul.cu",
                 (("P", "ptr"), ("A", "ptr"), ("ad", "td"), ("B", "ptr"), ("bd", "td"), ("cd", "td"), ("tps", "i32")),
                 (("f16",), ("bf16",)), "matmul_tc", f"matmul_tc3s with {bm} x 128 output tiles (M <= {bm})")
      for bm in (16, 32, 64)),
    KernelSpec("matmul_splitk_reduce", "matmul.cu", (("C", "ptr"), ("cd", "td"), ("P", "ptr"), ("splits", "i32")),
               (("f16",), ("bf16",)), "elementwise", "C = sum over splits of P (in split order)"),
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
    KernelSpec("linear_splitk_epilogue", "linear.cu",
               (("y", "ptr"), ("yd", "td"), ("P", "ptr"), ("splits", "i32"), ("N", "i32"), ("bias", "ptr"),
                ("res", "ptr"), ("rd", "td"), ("act", "i32")),
               _ONE, "elementwise",
               "linear_epilogue of z = the sum over splits of matmul_tc3s's partials P [splits, M, N] "
               "(in split order): split-K's reduce and the epilogue in one kernel"),
)

# Hopper's wgmma GEMM for prefill (cuda_src/gemm_wgmma.cu, sm_90a; launched by gemm_launch.py)
for _bn in (128, 192, 256):
    _reg(KernelSpec(f"gemm_tma{_bn}", "gemm_wgmma.cu",
                    (("C", "ptr"), ("ldc", "i64"), ("tmA", "tmap"), ("tmW", "tmap"),
                     ("M", "i32"), ("N", "i32"), ("K", "i32"), ("bias", "ptr"), ("res", "ptr"), ("ldr", "i64"),
                     ("act", "i32")),
                    (("f16",), ("bf16",)), "matmul_tc",
                    f"C[M, N] = act(A[M, K] @ W[N, K]^T + bias) + res on wgmma (sm_90a), 128 x {_bn} tiles fed "
                    "by TMA (tensor maps of A and W), one producer and two consumer warpgroups; the linear "
                    "epilogue fused (swiglu: W [2N, K])"))

# the persistent kernel of a decode segment (cuda_src/persist.cu; planned and launched by persistent.py)
_reg(KernelSpec("persist_linear", "persist.cu",
                (("args", "ptr"), ("tasks", "ptr"), ("needs", "ptr"), ("qstart", "ptr"), ("qtasks", "ptr"),
                 ("counters", "ptr"), ("ncounters", "i32")),
                _ONE, "persistent",
                "a run of decode linears as tasks on one block per SM, ordered by counters (PLinear args)"))
_reg(KernelSpec("persist_linear_stamps", "persist.cu",
                (("args", "ptr"), ("tasks", "ptr"), ("needs", "ptr"), ("qstart", "ptr"), ("qtasks", "ptr"),
                 ("counters", "ptr"), ("ncounters", "i32"), ("stamps", "ptr")),
                _ONE, "persistent",
                "persist_linear writing each task's %globaltimer stamps (start, needs met, done) and SM"))

# ggml block-quantized weights (linear_q.cu and linear_q_k.cu, linear_qmma.cu, linear_qr.cu; launch helpers in
# quant_launch.py). linear_q.cuh's kernels are instantiated in two files, the k-quants apart, so that a cold
# kernel cache compiles them side by side (one file took ~35 s of NVRTC, the longest by far)
QUANT_KERNEL_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
_LINEAR_PARAMS = (("y", "ptr"), ("yd", "td"), ("x", "ptr"), ("xd", "td"), ("w", "ptr"), ("ldw", "i64"),
                  ("bias", "ptr"), ("res", "ptr"), ("rd", "td"), ("norm_w", "ptr"), ("norm_b", "ptr"),
                  ("eps", "f32"), ("norm", "i32"), ("act", "i32"), ("N", "i32"), ("K", "i32"))
for _q in QUANT_KERNEL_TYPES:
    _lq = "linear_q_k.cu" if _q.endswith("_k") else "linear_q.cu"
    _reg(KernelSpec(f"linear_q_{_q}", _lq, _LINEAR_PARAMS, _ONE, "linear_gemv",
                    f"linear_gemv with a {_q} weight (w: raw blocks, row n at byte n*ldw)"),
         KernelSpec(f"linear_q8a_{_q}", _lq, _LINEAR_PARAMS, _ONE, "linear_gemv",
                    f"linear_q_{_q} with the normalised row rounded to int8 per 32 (integer dot products)"),
         KernelSpec(f"linear_qmma_{_q}", "linear_qmma.cu", _LINEAR_PARAMS, (("f16",),), "linear_gemv",
                    f"linear_q_{_q} on tensor cores: weights and the normalised row as float16, float32 sums"),
         KernelSpec(f"dequant_{_q}", _lq,
                    (("out", "ptr"), ("od", "td"), ("w", "ptr"), ("ldw", "i64"), ("ids", "ptr")), _ONE,
                    "elementwise", f"out[.., r, :] = dequant({_q} row ids[r] (or r when ids is NULL))"))

for _q in sorted(QR_TYPES):
    _reg(KernelSpec(f"linear_qr_{_q}", "linear_qr.cu", _LINEAR_PARAMS, (("f16",), ("bf16",)), "linear_gemv",
                    f"linear_q_{_q} with each lane's 128-weight slice of the row in registers as two int8 "
                    "planes (16-bit fixed point per 32), dp4a"))

# attention (attention.cu, attention_gqa.cu, attention_tc.cu; launched by lower_attention.py, which picks the
# variant: select.attn_splits / select.flash_ok / select.gqa_group). Suffixes: dtype, then the head's register size D.
_ATTN_IO = (("out", "ptr"), ("od", "td"), ("q", "ptr"), ("qd", "td"))
_ATTN_KV = (("kt", "ptr"), ("ktd", "td"), ("v", "ptr"), ("vd", "td"), ("scale", "f32"), ("cap", "f32"),
            ("causal", "i32"), ("past", "i32"), ("past_dev", "ptr"), ("window", "i32"))
_PARTS = (("part", "ptr"), ("counters", "ptr"))
_SPLIT = _PARTS + _ATTN_IO + _ATTN_KV + (("chunk", "i32"),)
_STORE = _PARTS + _ATTN_IO + (("sa", "store"), ("scale", "f32"), ("cap", "f32"), ("pos", "ptr"), ("window", "i32"),
                               ("chunk", "i32"))
_BY_D = tuple((d, str(m)) for d in _F for m in (64, 128, 256))
_TC_D = tuple((d, str(m)) for d in ("f16", "bf16") for m in (64, 128))  # the tensor-core kernels
_FA_D = tuple((d, str(m)) for d in ("f16", "bf16") for m in FLASH_HEADS)
_reg(KernelSpec("attn_split", "attention.cu", _SPLIT, _BY_D,
                "attention", "flash-decoding attention: key splits of `chunk`, partials merged by the last"),
     KernelSpec("attn_pipe", "attention.cu", _SPLIT, _BY_D,
                "attention", "attn_split for at most 4 query rows, keys streamed through a cp.async pipeline"),
     KernelSpec("attn_store", "attention_store.cu", _STORE, _BY_D,
                "attention", "a decode step's q/k norm + RoPE + KV-cache write + attention (StoreArgs sa)"),
     KernelSpec("attn_gqa", "attention_gqa.cu", _SPLIT, _TC_D,
                "attention", "decode attention on tensor cores, a KV head's whole query group per block"),
     KernelSpec("attn_gqa_store", "attention_gqa.cu", _STORE, _TC_D,
                "attention", "attn_store with attn_gqa's group per block (StoreArgs sa)"),
     KernelSpec("attn_gqa_paged", "attention_gqa.cu", _STORE + (("rows", "ptr"), ("rs", "i32")), _TC_D,
                "attention", "attn_gqa_store for many sequences over a paged cache (rows table [N, rs])"),
     KernelSpec("attn_fa", "attention_tc.cu", _ATTN_IO + _ATTN_KV, _FA_D,
                "attention", "tensor-core flash attention for 16+ queries (prefill)"))

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

# mixture-of-experts decode (cuda_src/moe.cu; lowered in lower_moe.py): the router and the chosen experts' GEMVs
_MOE_GU = (("y", "ptr"), ("x", "ptr"), ("w", "ptr"), ("route", "ptr"), ("rows", "i32"), ("K", "i32"), ("I", "i32"),
           ("E", "i32"), ("k", "i32"), ("act", "i32"), ("ldx", "i64"), ("ldr", "i64"))
_MOE_DOWN = (("y", "ptr"), ("h", "ptr"), ("w", "ptr"), ("route", "ptr"), ("rows", "i32"), ("H", "i32"), ("I", "i32"),
             ("E", "i32"), ("k", "i32"), ("ldr", "i64"), ("ldy", "i64"))
_reg(
    KernelSpec("moe_route", "moe.cu", (("out", "ptr"), ("logits", "ptr"), ("rows", "i32"), ("E", "i32"), ("k", "i32"),
                                       ("norm", "i32"), ("ldl", "i64"), ("ldo", "i64")),
               _ONE, "moe", "routing weights [rows, E]: softmax, top-k kept (optionally renormalised), 0 elsewhere"),
    KernelSpec("moe_gate_up", "moe.cu", _MOE_GU, _ONE, "moe",
               "act(gate_e . x) * (up_e . x) for each row's chosen experts -> [rows, k, I]"),
    KernelSpec("moe_gate_up_vec", "moe.cu", _MOE_GU, _ONE, "moe", "moe_gate_up with 16-byte loads"),
    KernelSpec("moe_down", "moe.cu", _MOE_DOWN, _ONE, "moe",
               "sum_j route[e_j] * (down_e_j . h[j]) -> [rows, H]"),
    KernelSpec("moe_down_vec", "moe.cu", _MOE_DOWN, _ONE, "moe", "moe_down with 16-byte loads"),
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
# the linear kernels' norm / activation codes are the positions in the ``linear`` op's own tuples
# (one definition: tinygraph/ops/fused.py); their ints and a few long names are accepted too
LINEAR_NORMS = {**{k: i for i, k in enumerate(_NORMS)}, **{i: i for i in range(len(_NORMS))},
                "none": 0, "rms_norm": 1, "layer_norm": 2}
LINEAR_ACTS = {**{k: i for i, k in enumerate(_ACTS)}, **{i: i for i in range(len(_ACTS))},
               "none": 0, "gelu_tanh": 1}
_LINEAR_RB_SMEM_BYTES = 65536  # LIN_RB_SMEM_BYTES in linear.cu


def linear_rows_per_block(rows: int, K: int) -> int:
    """Rows that one linear_gemv block stages and computes together (sharing each weight load):
    1, 2 or 4 -- lin_rows_per_block in linear.cu, which the launch grid must agree with."""
    rb = 1 if rows <= 1 else (2 if rows == 2 else 4)
    rs = -(-int(K) // 4) * 4
    while rb > 1 and rb * rs * 4 > _LINEAR_RB_SMEM_BYTES:
        rb //= 2
    return rb


#: threads per linear_gemv block (one output column per warp at a time). Measured on an H100
#: (tools/bench_linear.py), 256 beat 128 and 64 at every decode shape, the small ones (N = 576,
#: 72 blocks) included: a block stages the normalised row once for 8 warps.
LINEAR_BLOCK = 256


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


#: rows per block of a norm over rows of at most 128 elements (a warp each)
NORM_WARP_ROWS = 8


def norm_config(rows: int, n: int) -> tuple:
    """(grid, block) of ``rms_norm`` / ``layer_norm`` over ``rows`` rows of ``n`` elements: a
    block per row, or for rows a warp covers (n <= 128) a warp per row and NORM_WARP_ROWS rows a
    block, so that the q / k norms of a long prompt (16k rows of 128) are not 16k 1-warp blocks."""
    block = row_block_size(n)
    if block > 32 or rows < 2:
        return rows, block
    return -(-rows // NORM_WARP_ROWS), (32, NORM_WARP_ROWS)


class MatmulPlan(NamedTuple):
    func: driver.Function
    grid: tuple
    block: tuple
    shared_mem: int  # dynamic shared memory bytes


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
