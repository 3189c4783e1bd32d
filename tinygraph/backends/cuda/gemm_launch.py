"""Launch helper of the Hopper GEMM (cuda_src/gemm_wgmma.cu, sm_90a: wgmma fed by TMA): its TMA
tensor maps, shared memory and grid. ``select.matmul_algo`` picks it (``gemm_tma128`` /
``gemm_tma256``) for prefill-sized products on sm_90; ``lower_linear.gemm`` launches it."""
from __future__ import annotations

import ctypes

from .kernel_specs import LINEAR_ACTS, Arg, dtype_suffix, i32, ptr

# -- the TMA-fed form ----------------------------------------------------------------------------
#: gemm_tma<BN>'s ring depth (GT_STAGES in cuda_src/gemm_wgmma.cu)
TMA_STAGES = {128: 6, 192: 5, 256: 4}


def tma_smem(bn: int) -> int:
    """Dynamic shared memory (bytes) of gemm_tma<bn>: its stages of a 128 x 64 A tile and a
    bn x 64 W tile, + 1 KB alignment, + 256 bytes of mbarriers (GT_SMEM)."""
    return TMA_STAGES[bn] * (128 + bn) * 64 * 2 + 1024 + 256


#: tensor maps by (address, rows, columns, row stride, box rows, dtype): a plan's activations and
#: the weights keep their addresses from one run to the next, so each map is encoded once
_TMAPS: dict[tuple, ctypes.Array] = {}
_TMAPS_MAX = 4096


def tensor_map(ptr: int, rows: int, cols: int, ld: int, box_rows: int, dtype: str) -> ctypes.Array:
    """A TMA tensor map (128 bytes, passed to the kernel by value) of a row-major 2-D [rows, cols]
    tensor of 2-byte ``dtype`` with row stride ``ld`` elements at device address ``ptr``: boxes of
    box_rows x 64 elements, 128-byte swizzle, zeros past the edges. Needs ptr 16-byte aligned and
    ld a multiple of 8. Cached (``_TMAPS``): the map is a function of these arguments alone."""
    key = (ptr, rows, cols, ld, box_rows, dtype)
    tm = _TMAPS.get(key)
    if tm is None:
        tm = _encode(*key)
        if len(_TMAPS) >= _TMAPS_MAX:
            _TMAPS.clear()
        _TMAPS[key] = tm
    return tm


def _encode(ptr: int, rows: int, cols: int, ld: int, box_rows: int, dtype: str) -> ctypes.Array:
    from cuda.bindings import driver as drv
    u64, u32 = drv.cuuint64_t, drv.cuuint32_t
    dt = (drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16 if dtype == "f16"
          else drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16)
    err, tm = drv.cuTensorMapEncodeTiled(
        dt, 2, ptr, [u64(cols), u64(rows)], [u64(ld * 2)], [u32(64), u32(box_rows)], [u32(1), u32(1)],
        drv.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        drv.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        drv.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        drv.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != drv.CUresult.CUDA_SUCCESS:
        raise ValueError(f"cuTensorMapEncodeTiled({rows}x{cols}, ld={ld}, box {box_rows}x64): {err}")
    return (ctypes.c_uint64 * 16).from_buffer_copy(ctypes.string_at(tm.getPtr(), 128))


def tma_problem(C: Arg, A: Arg, w_ptr, ldw: int, N: int) -> str | None:
    """Why gemm_tma cannot run ``C[M, N] = A[M, K] @ W[N, K]^T`` with these operands (None: it
    can): C [M, N] and A 2-D with rows contiguous; K and the row strides of A and W multiples of 8
    elements, A and W 16-byte aligned (TMA's rules)."""
    (M, K), (Mc, Nc) = A.shape, C.shape
    lda = A.full_strides()[0]
    if (Mc, Nc) != (M, N) or A.full_strides()[1] != 1 or C.full_strides()[1] != 1:
        return f"C{C.shape} must be [{M}, {N}] with rows contiguous, as A's"
    if K % 8 or lda % 8 or ldw % 8 or A.addr.value % 16 or ptr(w_ptr).value % 16:
        return f"K={K}, lda={lda}, ldw={ldw} must be multiples of 8, A and W 16-byte aligned"
    return None


#: the fused epilogue's activation code whose W holds gate and up rows
ACT_SWIGLU = LINEAR_ACTS["swiglu"]


def gemm_tma(lib, dtype, C: Arg, A: Arg, w_ptr, ldw: int, N: int, bn: int = 128, stream=None, bias=None,
             res: Arg | None = None, act: int = 0) -> None:
    """``C[M, N] = act(A[M, K] @ W^T + bias) + res`` on Hopper's wgmma, fed by TMA (gemm_tma<bn>,
    bn 128, 192 or 256 tile columns). A, C and res: row-major 2-D Args (res may be C); W: device
    pointer of a row-major weight with row stride ``ldw`` elements, [N, K] or for ``act`` 3
    (swiglu) [2N, K] (gate rows, then up rows; bias then has 2N entries); bias: a device pointer
    or None; :func:`tma_problem`'s rules, else ValueError."""
    sfx = dtype_suffix(dtype)
    why = tma_problem(C, A, w_ptr, ldw, N)
    if why:
        raise ValueError(f"gemm_tma: {why}")
    (M, K), lda, ldc = A.shape, A.full_strides()[0], C.full_strides()[0]
    if res is not None and (tuple(res.shape) != (M, N) or res.full_strides()[1] != 1):
        raise ValueError(f"gemm_tma: res{res.shape} must be [{M}, {N}] with rows contiguous")
    if lib.file_arch("gemm_wgmma.cu") != "sm_90a":
        raise ValueError(f"gemm_tma needs an sm_90 device (this library targets {lib.arch})")
    if M == 0 or N == 0:
        return
    f = lib.get(f"gemm_tma{bn}", sfx)
    smem = tma_smem(bn)
    lib._ensure_dynamic_smem(f, smem)
    glu = act == ACT_SWIGLU
    cols = bn // 2 if glu else bn  # output columns a block writes (swiglu: half its W tile)
    tma = tensor_map(A.addr.value, M, K, lda, 128, sfx)
    tmw = tensor_map(ptr(w_ptr).value, 2 * N if glu else N, K, ldw, cols, sfx)
    lib._launch(f, (-(-M // 128), -(-N // cols)), 384,
                [C.addr, ctypes.c_int64(ldc), tma, tmw, i32(M), i32(N), i32(K), ptr(bias),
                 res.addr if res is not None else ptr(None),
                 ctypes.c_int64(res.full_strides()[0] if res is not None else 0), i32(act)],
                stream=stream, shared_mem=smem)
