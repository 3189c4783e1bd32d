"""Launches of the block-quantized weight kernels (``cuda_src/linear_q.cu``).

``linear_q``: the decode GEMV, ``act(norm(x) @ dequant(w).T + bias) + res`` for a few rows;
``dequant``: rows of a quantized matrix as 16/32-bit values (an embedding lookup, or a whole
weight dequantized into scratch before a prefill GEMM on tensor cores).
"""
from __future__ import annotations

import ctypes
import math

from .select import QR_ROWS, linear_q_shared_bytes, qr_block, qr_team
from .kernels import (LINEAR_ACTS, LINEAR_NORMS, Arg, KernelLibrary, _linear_code, dtype_suffix, f32, i32,
                      ptr)

#: threads per linear_q block: 8 warps, each computing whole output columns
LINEAR_Q_BLOCK = 256


def linear_q(lib: KernelLibrary, qtype: str, dtype, y: Arg, x: Arg, w_ptr: int, ldw: int, N: int, K: int,
             bias=None, res: Arg | None = None, norm=0, norm_w=None, norm_b=None, eps: float = 0.0, act=0,
             stream=None, weight_ready: bool = False, kernel: str = "linear_q") -> None:
    """One fused kernel: ``y = act(norm(x) @ dequant(w).T + bias) + res`` with ``w`` a row-major
    [N, K] matrix of ggml ``qtype`` blocks (row n at byte ``w_ptr + n * ldw``). Arguments as
    :meth:`KernelLibrary.linear`; K must be a multiple of the type's block size; ``kernel``:
    "linear_q", "linear_q8a", "linear_qmma" (f16 only) or "linear_qr" (``select.quant_gemv``). The grid is
    (rows of x) x (column blocks), the column blocks capped at one wave of resident blocks;
    a linear_qmma block computes tiles of 16 weight rows (8 output columns for swiglu)."""
    sfx = dtype_suffix(dtype)
    norm_c, act_c = _linear_code("norm", norm, LINEAR_NORMS), _linear_code("act", act, LINEAR_ACTS)
    nout = N // 2 if act_c == 3 else N
    rows = math.prod(tuple(y.shape)[:-1])
    if rows == 0:
        return
    f = lib.get(f"{kernel}_{qtype}", sfx)
    smem = linear_q_shared_bytes(K, kernel, qtype)
    lib._ensure_dynamic_smem(f, smem)
    bs = LINEAR_Q_BLOCK
    if kernel == "linear_qr":  # teams of qr_team(K) lanes, QR_ROWS weight rows per team and trip
        bs = qr_block(K)
        cb = -(-nout // (QR_ROWS[qtype] // (2 if act_c == 3 else 1) * (bs // qr_team(K))))
    elif kernel == "linear_qmma":
        cb = -(-nout // (8 if act_c == 3 else 16))
    else:
        cb = -(-nout // (bs // 32))
    cb = min(cb, max(1, lib.sm_count * lib._blocks_per_sm(f, bs, smem) // rows))
    rd = res.td if res is not None else y.td
    lib._launch(f, rows * cb, bs,
                [y.addr, y.td, x.addr, x.td, ptr(w_ptr), ctypes.c_int64(int(ldw)), ptr(bias),
                 res.addr if res is not None else ptr(None), rd, ptr(norm_w), ptr(norm_b),
                 f32(eps), i32(norm_c), i32(act_c), i32(int(N)), i32(int(K))],
                stream=stream, shared_mem=smem, pdl=None if weight_ready else False)


def dequant(lib: KernelLibrary, qtype: str, dtype, out: Arg, w_ptr: int, ldw: int, ids=None, stream=None) -> None:
    """``out[.., r, :] = dequant(row ids[r])`` (``ids``: device int32, one per out row; None:
    row r) of a ``qtype`` matrix at ``w_ptr`` with rows ``ldw`` bytes apart."""
    if out.numel == 0:
        return
    g, bl = lib._ew(out.numel // 32)
    lib._launch(lib.get(f"dequant_{qtype}", dtype_suffix(dtype)), g, bl,
                [out.addr, out.td, ptr(w_ptr), ctypes.c_int64(int(ldw)), ptr(ids)], stream=stream)
