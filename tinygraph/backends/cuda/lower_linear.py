"""CUDA lowerings of the matrix products (kernels: cuda_src/linear.cu, linear_q.cu, matmul.cu,
gemm_wgmma.cu):
``linear`` (norm -> x @ w.T + bias -> activation -> + residual, fused for decode rows) and
``matmul`` (plain, or with a block-quantized weight read as its raw blocks)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...dtypes import float32
from ...errors import BackendError
from ...ops.registry import optional_srcs
from ...tensor import Tensor
from . import gemm_launch, quant_launch, select
from .kernels import LINEAR_ACTS, Arg

if TYPE_CHECKING:
    from .backend import CudaBackend


def matmul(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    """``a @ b``: the tensor-core / GEMV matmul kernels; a block-quantized ``b`` (the transpose
    of a whole [N, K] weight) goes through the linear path."""
    a, b = n.srcs
    if b.dtype.is_quant:
        if b.shape != b.storage.shape[::-1] or b.strides != (1, b.shape[0]) or b.offset:
            raise BackendError(f"CUDA matmul with a {b.dtype.name} operand needs the transpose of the whole "
                               f"[N, K] weight: {n.describe()}")
        linear_parts(be, n, out, base, a, b.storage, None, None, None, None, None, None, 0.0)
        return
    dt = n.dtype
    gemm(be, dt, out, be._as(a, base, dt), be._as(b, base, dt), be.choice(n))


def gemm(be: "CudaBackend", dt, c: Arg, a: Arg, b: Arg, algo: str | None, epilogue=None) -> bool:
    """``lib.matmul`` with the planned ``algo``; a tensor-core product with few output tiles (a
    batched decode's rows) split along K instead (``select.split_k``), its partials in scratch.
    ``epilogue`` ((y, bias, res, act) of ``lib.linear_epilogue``): applied by the kernel that adds
    up split-K's partials, if the product splits, or by gemm_tma's stores (y and res plain rows).
    Returns whether it was applied."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    splits, bm = 1, 128
    if algo is not None and algo.startswith("gemm_tma"):
        if tma_ok(a, b, c):
            bn, ldw = int(algo[len("gemm_tma"):]), b.full_strides()[-1]
            if epilogue is not None and _plain_rows(epilogue[0]) and (
                    epilogue[2] is None or (_plain_rows(epilogue[2]) and epilogue[2].shape[-2:] == epilogue[0].shape[-2:])):
                y, bias, res, act = epilogue  # the epilogue in the GEMM's own stores
                gemm_launch.gemm_tma(be.lib, dt.short, _rows(y), _rows(a), b.ptr, ldw, y.shape[-1], bn=bn,
                                     stream=be.stream, bias=bias, res=_rows(res) if res is not None else None,
                                     act=LINEAR_ACTS[act])
                return True
            gemm_launch.gemm_tma(be.lib, dt.short, _rows(c), _rows(a), b.ptr, ldw, N, bn=bn, stream=be.stream)
            return False
        algo = select.tc3_variant(-(-N // 128) * -(-M // 128), be.lib.caps)  # TMA's alignment rules fail
    if algo is not None and algo.startswith("matmul_tc3s_m"):  # few rows: BM-row tiles, K split
        bm = int(algo[len("matmul_tc3s_m"):])
        splits = select.small_m_splits(M, N, K, bm, be.lib.caps)
    elif algo is None or algo.startswith("matmul_tc3"):
        splits = select.split_k(M, N, K, math.prod(c.shape[:-2]), dt.short, be.lib.caps)
        if splits <= 1:
            be.lib.matmul(dt.short, c, a, b, stream=be.stream, algo=algo)
            return False
    else:
        be.lib.matmul(dt.short, c, a, b, stream=be.stream, algo=algo)
        return False
    ws = be._tmp((splits, M, N), float32)
    be.lib.matmul_splitk(dt.short, c, a, b, ws.ptr, splits, stream=be.stream, epilogue=epilogue, bm=bm)
    return epilogue is not None


def _rows(x: Arg) -> Arg:
    """A [1.., M, n] Arg as the 2-D [M, n] it is."""
    return Arg(x.ptr, x.shape[-2:], x.full_strides()[-2:])


def _plain_rows(x: Arg) -> bool:
    """Whether ``x`` is one row-major matrix: leading axes of 1, its last axis contiguous."""
    return all(d == 1 for d in x.shape[:-2]) and len(x.shape) >= 2 and x.full_strides()[-1] == 1


def tma_ok(a: Arg, b: Arg, c: Arg) -> bool:
    """Whether gemm_tma can run C = A @ B as planned: one matrix each (leading axes of 1), B the
    transpose of a row-major weight (strides (1, ldw)), and TMA's rules
    (:func:`gemm_launch.tma_problem`)."""
    if any(d != 1 for x in (a, b, c) for d in x.shape[:-2]) or b.full_strides()[-2] != 1:
        return False
    return gemm_launch.tma_problem(_rows(c), _rows(a), b.ptr, b.full_strides()[-1], b.shape[-1]) is None


def quant_rows(be: "CudaBackend", t: Tensor, base: dict[int, int], n: Tensor) -> tuple[int, int]:
    """(device address of the first row, bytes per row) of a view of whole rows of a
    block-quantized [R, K] weight."""
    st = t.storage
    K = st.shape[1]
    if t.offset % K or t.shape[-1] != K or t.strides[-1] != 1 or (t.ndim == 2 and t.shape[0] > 1
                                                                 and t.strides[0] != K):
        raise BackendError(f"CUDA backend reads {st.dtype.name} weights by whole rows: {n.describe()}")
    ldw = st.dtype.nbytes(K)
    return base[st.id] + t.offset // K * ldw, ldw


def linear(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p = n.params
    x, w = n.srcs[:2]
    o = optional_srcs(n)
    bias, res, nw, nb = o["bias"], o["residual"], o["norm_w"], o["norm_b"]
    linear_parts(be, n, out, base, x, w, bias, res, nw, nb, p["norm"], p["act"], p["eps"])


def linear_parts(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int], x: Tensor, w: Tensor, bias, res,
                 nw, nb, norm, act, eps: float) -> None:
    """``act(norm(x) @ w.T + bias) + residual``: one fused GEMV kernel for a few rows (decode),
    else norm -> tensor-core matmul -> epilogue. A block-quantized ``w`` is read as its raw
    blocks by the GEMV (linear_q.cu), or dequantized into scratch before the matmul."""
    p = {"norm": norm, "act": act, "eps": eps}
    dt, lib, s = n.dtype, be.lib, be.stream
    xa = be._as(x, base, dt)
    N, K = w.shape
    # planned once per graph (select.plan_choices): the path, and the quantized GEMV family
    ch = be.choice(n)
    path, qk = ch.path, ch.gemv
    if w.dtype.is_quant:
        wq, ldw = quant_rows(be, w, base, n)
        if path == "gemv_q":
            ready = weights_ready((w, bias, nw, nb), be._written)
            quant_launch.linear_q(
                lib, w.dtype.name, dt.short, out, xa, wq, ldw, N, K,
                bias=be._as(bias, base, dt).ptr if bias is not None else None,
                res=be._as(res, base, dt) if res is not None else None, norm=norm,
                norm_w=be._as(nw, base, dt).ptr if nw is not None else None,
                norm_b=be._as(nb, base, dt).ptr if nb is not None else None, eps=eps, act=act,
                stream=s, weight_ready=ready, kernel=qk)
            return
        wd = be._tmp((N, K), dt)  # prefill: the whole weight dequantized, then the GEMM
        quant_launch.dequant(lib, w.dtype.name, dt.short, wd, wq, ldw, None, stream=s)
        wp = wd.ptr
    else:
        wp = be._as(w, base, dt).ptr

    def ptr_of(t: Tensor | None) -> int | None:
        return be._as(t, base, dt).ptr if t is not None else None
    ra = be._as(res, base, dt) if res is not None else None
    fused = dt.short in GEMV_DTYPES
    if path == "gemv":  # few rows (decode): one fused GEMV
        # the weights (matrix, bias, norm) may be read before the kernel waits for its
        # predecessor when they are model weights nothing in the graph writes
        ready = w.dtype == dt and weights_ready((w, bias, nw, nb), be._written)
        lib.linear(dt.short, out, xa, wp, K, N, K, bias=ptr_of(bias), res=ra, norm=p["norm"],
                   norm_w=ptr_of(nw), norm_b=ptr_of(nb), eps=p["eps"], act=p["act"], stream=s,
                   weight_ready=ready)
        return
    h = xa
    if p["norm"] is not None:
        h = be._tmp(x.shape, dt)
        if p["norm"] == "rms":
            lib.rms_norm(dt.short, h, xa, ptr_of(nw), p["eps"], stream=s)
        else:
            lib.layer_norm(dt.short, h, xa, ptr_of(nw), ptr_of(nb), p["eps"], stream=s)
    plain = bias is None and res is None and p["act"] is None
    z = out if plain else be._tmp(x.shape[:-1] + (N,), dt)
    epi = (out, ptr_of(bias), ra, p["act"]) if fused and not plain else None
    if gemm(be, dt, z, h, Arg(wp, (K, N), (1, K)), ch.matmul, epi) or plain:
        return
    if fused:
        lib.linear_epilogue(dt.short, out, z, bias=ptr_of(bias), res=ra, act=p["act"], stream=s)
        return
    if bias is not None:
        lib.binary("add", dt.short, z, z, Arg(ptr_of(bias), (N,)), stream=s)
    a = z
    if p["act"] in ("gelu", "silu"):
        lib.unary(p["act"], dt.short, z, z, stream=s)
    elif p["act"] == "swiglu":
        half, it = N // 2, dt.itemsize
        gate = Arg(z.ptr, x.shape[:-1] + (half,), z.full_strides())
        up = Arg(z.ptr + half * it, gate.shape, gate.strides)
        lib.unary("silu", dt.short, gate, gate, stream=s)
        a = be._tmp(gate.shape, dt) if res is not None else out
        lib.binary("mul", dt.short, a, gate, up, stream=s)
    if res is not None:
        lib.binary("add", dt.short, out, a, ra, stream=s)
    elif a is not out:
        lib.copy(out, a, dt.short, dt.short, stream=s)


def weights_ready(tensors, written: set[int]) -> bool:
    """Whether every given tensor (None skipped) is a model weight that no node of the graph
    writes (``written``: storage ids), so a kernel may read it before it waits for the ones
    before it."""
    return all(t.is_persistent and t.storage.id not in written for t in tensors if t is not None)


def has_kernel(base_name: str, sfx: str) -> bool:
    """Whether the kernel library offers ``base_name`` for dtype ``sfx``."""
    from .kernels import KERNELS
    return base_name in KERNELS and (sfx,) in KERNELS[base_name].dtypes


#: activation dtypes with the fused 16/32-bit GEMV kernel (``linear_gemv``)
GEMV_DTYPES = frozenset(d for d in ("f32", "f16", "bf16") if has_kernel("linear_gemv", d))
