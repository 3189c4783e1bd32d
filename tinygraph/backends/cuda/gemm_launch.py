"""Launch helper of the Hopper wgmma GEMM (cuda_src/gemm_wgmma.cu, sm_90a; work in progress on
branch wgmma-prefill: not chosen by ``select`` yet)."""
from __future__ import annotations

import ctypes

from .kernel_specs import Arg, dtype_suffix, i32, ptr

#: compile-time shape of gemm_wgmma (cuda_src/gemm_wgmma.cu's defaults; a library built with
#: ``options=["-DGW_BN=256", ...]`` overrides them)
WGMMA_DEFAULTS = {"GW_BN": 128, "GW_STAGES": 4, "GW_INFLIGHT": 0}


def wgmma_config(options) -> dict[str, int]:
    """gemm_wgmma's GW_BN / GW_STAGES / GW_INFLIGHT under the compiler ``options``."""
    cfg = dict(WGMMA_DEFAULTS)
    for o in options:
        if o.startswith("-D") and "=" in o and o[2:].split("=")[0] in cfg:
            k, v = o[2:].split("=", 1)
            cfg[k] = int(v)
    return cfg


def wgmma_smem(cfg: dict[str, int]) -> int:
    """Dynamic shared memory (bytes) of gemm_wgmma: GW_STAGES stages of a 128 x 64 A tile and a
    GW_BN x 64 W tile (2 bytes an element), + 1 KB to align the ring to 1024 bytes (GW_SMEM)."""
    return cfg["GW_STAGES"] * (128 + cfg["GW_BN"]) * 64 * 2 + 1024


def gemm_wgmma(lib, dtype, C: Arg, A: Arg, w_ptr, ldw: int, N: int, stream=None) -> None:
    """``C[M, N] = A[M, K] @ W[N, K]^T`` on Hopper's wgmma. A and C: row-major 2-D Args (row
    strides from their strides); W: device pointer of a row-major [N, K] weight with row stride
    ``ldw`` elements. K and the row strides: multiples of 8; A and W 16-byte aligned."""
    sfx = dtype_suffix(dtype)
    (M, K), (Mc, Nc) = A.shape, C.shape
    lda, ldc = A.full_strides()[0], C.full_strides()[0]
    if (Mc, Nc) != (M, N) or A.full_strides()[1] != 1 or C.full_strides()[1] != 1:
        raise ValueError(f"gemm_wgmma: C{C.shape} must be [{M}, {N}] with rows contiguous, as A's")
    if K % 8 or lda % 8 or ldw % 8:
        raise ValueError(f"gemm_wgmma: K={K}, lda={lda}, ldw={ldw} must be multiples of 8")
    if lib.file_arch("gemm_wgmma.cu") != "sm_90a":
        raise ValueError(f"gemm_wgmma needs an sm_90 device (this library targets {lib.arch})")
    f = lib.get("gemm_wgmma", sfx)
    cfg = wgmma_config(lib.options)
    smem = wgmma_smem(cfg)
    lib._ensure_dynamic_smem(f, smem)
    lib._launch(f, (-(-N // cfg["GW_BN"]), -(-M // 128)), 256,
                [C.addr, ctypes.c_int64(ldc), A.addr, ctypes.c_int64(lda), ptr(w_ptr), ctypes.c_int64(ldw),
                 i32(M), i32(N), i32(K)], stream=stream, shared_mem=smem)
