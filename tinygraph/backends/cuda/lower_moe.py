"""CUDA lowerings of the mixture-of-experts ops (kernels: cuda_src/moe.cu): ``moe_route`` (one
warp per token), ``moe_gate_up`` and ``moe_down`` (one warp per output column of each token's
chosen experts, which the kernels find from the routing weights in device memory, so a captured
decode graph reads only the chosen experts' rows on every replay)."""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from ...errors import BackendError
from ...ops.fused import _ACTS
from ...tensor import Tensor
from . import driver
from .kernels import Arg, i32

if TYPE_CHECKING:
    from .backend import CudaBackend

#: output columns per 256-thread block of moe_gate_up / moe_down (one warp each)
_COLS_PER_BLOCK = 8


def _i64(v: int) -> ctypes.c_int64:
    return ctypes.c_int64(int(v))


def _rows(be: "CudaBackend", t: Tensor, base: dict[int, int], n: Tensor) -> tuple[Arg, int]:
    """``t`` (2-D, unit last stride) and its row stride in elements."""
    a = be._as(t, base, n.dtype)
    st = a.full_strides()
    if t.ndim != 2 or st[-1] != 1:
        raise BackendError(f"{n.op} on CUDA needs row-contiguous 2-D operands: {t.describe()} in {n.describe()}")
    return a, st[0] if t.shape[0] > 1 else t.shape[1]


def _vec(dt, *, counts: tuple[int, ...], addrs: tuple[int, ...]) -> str:
    """'_vec' (16-byte loads) when every count and address allows it, else ''."""
    per = 16 // dt.itemsize
    ok = all(c % per == 0 for c in counts) and all(int(a) % 16 == 0 for a in addrs)
    return "_vec" if ok else ""


def moe_route(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p, dt = n.params, n.dtype
    x, ldl = _rows(be, n.srcs[0], base, n)
    T, E = n.shape
    driver.launch(be.lib.get("moe_route", dt.short), (-(-T // 4), 1, 1), 128,
                  [out.addr, x.addr, i32(T), i32(E), i32(p["top_k"]), i32(1 if p["norm_topk"] else 0),
                   _i64(ldl), _i64(E)], stream=be.stream, pdl=be._pdl())


def moe_gate_up(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p, dt = n.params, n.dtype
    x, ldx = _rows(be, n.srcs[0], base, n)
    w, _ = _rows(be, n.srcs[1], base, n)
    route, ldr = _rows(be, n.srcs[2], base, n)
    T, k, I = n.shape
    K, E = x.shape[1], route.shape[1]
    v = _vec(dt, counts=(K, ldx), addrs=(x.addr.value, w.addr.value))
    driver.launch(be.lib.get(f"moe_gate_up{v}", dt.short), (-(-I // _COLS_PER_BLOCK), k, T), 32 * _COLS_PER_BLOCK,
                  [out.addr, x.addr, w.addr, route.addr, i32(T), i32(K), i32(I), i32(E), i32(k),
                   i32(_ACTS.index(p["act"])), _i64(ldx), _i64(ldr)], stream=be.stream, pdl=be._pdl())


def moe_down(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    dt = n.dtype
    h = be._as(n.srcs[0], base, dt)
    if not n.srcs[0].is_contiguous:
        raise BackendError(f"moe_down on CUDA needs a contiguous [T, top_k, I] input: {n.describe()}")
    w, ldw = _rows(be, n.srcs[1], base, n)
    route, ldr = _rows(be, n.srcs[2], base, n)
    T, k, I = h.shape
    H, E = n.shape[1], route.shape[1]
    if ldw != E * I or out.full_strides()[-1] != 1:
        raise BackendError(f"moe_down on CUDA needs a whole [H, E I] weight and a row-contiguous output: "
                           f"{n.describe()}")
    v = _vec(dt, counts=(I,), addrs=(h.addr.value, w.addr.value))
    driver.launch(be.lib.get(f"moe_down{v}", dt.short), (-(-H // _COLS_PER_BLOCK), T, 1), 32 * _COLS_PER_BLOCK,
                  [out.addr, h.addr, w.addr, route.addr, i32(T), i32(H), i32(I), i32(E), i32(k), _i64(ldr),
                   _i64(out.full_strides()[0] if T > 1 else H)], stream=be.stream, pdl=be._pdl())

