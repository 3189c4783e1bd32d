"""The CUDA lowering table: every op maps to the one function that launches its kernels.

A lowering is ``fn(be, n, out, base)``: backend ``be`` (its kernel library ``be.lib``, stream,
scratch space and operand helpers ``be._arg`` / ``be._as`` / ``be._tmp`` / ``be._contiguous_ids``),
node ``n``, its output ``out`` (an ``Arg``: address, shape, strides) and ``base`` (storage id ->
device address). Simple ops are lowered here; the matrix products live in ``lower_linear.py``,
attention in ``lower_attention.py``, the mixture-of-experts ops in ``lower_moe.py``, beside the kernels they choose between. A new op adds one
entry to :data:`LOWERINGS` (``tests/test_cuda_lowering.py`` fails for an op of ``OPS`` without
one), and every launch goes through ``KernelLibrary`` helpers or ``driver.launch`` with the
backend's PDL choice (``be._pdl()``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ...ops.registry import optional_srcs
from ...tensor import Tensor
from . import driver, quant_launch
from .kernels import Arg
from .limits import COUNTER_BYTES, NeedScratch
from .lower_attention import attention, attention_store
from .lower_linear import linear, matmul, quant_rows
from .lower_moe import moe_down, moe_gate_up, moe_route

if TYPE_CHECKING:
    from .backend import CudaBackend

Lowering = Callable[["CudaBackend", Tensor, Arg, "dict[int, int]"], None]


def _copy(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    src = n.srcs[0]
    be.lib.copy(out, be._arg(src, base), src.dtype.short, n.dtype.short, stream=be.stream)


def _set_rows(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    rows = be._contiguous_ids(n.srcs[1], base)
    be.lib.set_rows(out, be._arg(n.srcs[0], base), rows, n.srcs[0].dtype.short, n.dtype.short, stream=be.stream)


def _concat(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    ax, off, dt = n.params["axis"], 0, n.dtype
    for part in n.srcs:
        it = dt.itemsize
        dst = Arg(out.ptr + off * n.strides[ax] * it, part.shape, n.strides)
        be.lib.copy(dst, be._arg(part, base), part.dtype.short, dt.short, stream=be.stream)
        off += part.shape[ax]


def _get_rows(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    table, dt = n.srcs[0], n.dtype
    ids = be._contiguous_ids(n.srcs[1], base)
    if table.dtype.is_quant:
        w_ptr, ldw = quant_rows(be, table, base, n)
        quant_launch.dequant(be.lib, table.dtype.name, dt.short, out, w_ptr, ldw, ids, stream=be.stream)
    else:
        be.lib.getrows(dt.short, out, be._as(table, base, dt), ids, stream=be.stream)


def _binary(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    dt = n.dtype
    be.lib.binary(n.op, dt.short, out, be._as(n.srcs[0], base, dt), be._as(n.srcs[1], base, dt), stream=be.stream)


def _scale(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    be.lib.scale(n.dtype.short, out, be._as(n.srcs[0], base, n.dtype), n.params["scale"], stream=be.stream)


def _softcap(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    be.lib.softcap(n.dtype.short, out, be._as(n.srcs[0], base, n.dtype), n.params["cap"], stream=be.stream)


def _unary(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    # the exact GELU is elementwise.cu's gelu_erf
    kernel = "gelu_erf" if n.params.get("approximate") == "none" else n.op
    be.lib.unary(kernel, n.dtype.short, out, be._as(n.srcs[0], base, n.dtype), stream=be.stream)


def _softmax(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p, dt = n.params, n.dtype
    past_dev = be._contiguous_ids(n.srcs[1], base) if p["past_src"] else None
    be.lib.softmax(dt.short, out, be._as(n.srcs[0], base, dt), p["scale"], p["causal"], p["past"],
                   past_dev=past_dev, stream=be.stream, window=p.get("window"))


def _rope_store(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    from ...errors import BackendError
    from .kernels import ROPE_NEOX, ROPE_NORMAL, elementwise_config, f32, i32, ptr
    p, dt, src, lib = n.params, n.dtype, n.srcs, be.lib
    q, k, v, pos_t, kc, vc = src[:6]
    fft = optional_srcs(n)["freq_factors"]
    ff = be._arg(fft, base).ptr if fft is not None else None
    qa, ka, va = (be._as(t, base, dt) for t in (q, k, v))
    kca, vca = be._arg(kc, base), be._arg(vc, base)
    if kc.dtype != dt or vc.dtype != dt:
        raise BackendError(f"rope_store on CUDA needs caches of dtype {dt.name}: {n.describe()}")
    T_, H, hd = q.shape
    grid, block = elementwise_config(T_ * (H + k.shape[1]) * hd // 2 + T_ * k.shape[1] * hd, lib.sm_count)
    driver.launch(lib.module("rope.cu").get_function(f"rope_store_{dt.short}"), grid, block,
                  [out.addr, out.td, qa.addr, qa.td, ka.addr, ka.td, va.addr, va.td,
                   ptr(be._contiguous_ids(pos_t, base)), kca.addr, kca.td, vca.addr, vca.td, ptr(ff),
                   f32(p["theta"]), i32(ROPE_NEOX if p["mode"] == "neox" else ROPE_NORMAL)], stream=be.stream,
                  pdl=be._pdl())


def _rms_norm(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p, dt, o = n.params, n.dtype, optional_srcs(n)
    w = be._as(o["w"], base, dt).ptr if o["w"] is not None else None
    be.lib.rms_norm(dt.short, out, be._as(n.srcs[0], base, dt), w, p["eps"], stream=be.stream)


def _layer_norm(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p, dt, o = n.params, n.dtype, optional_srcs(n)
    w, b = (be._as(o[k], base, dt).ptr if o[k] is not None else None for k in ("w", "b"))
    be.lib.layer_norm(dt.short, out, be._as(n.srcs[0], base, dt), w, b, p["eps"], stream=be.stream)


def _rope(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    p, dt = n.params, n.dtype
    pos = be._contiguous_ids(n.srcs[1], base)
    fft = optional_srcs(n)["freq_factors"]
    ff = be._arg(fft, base).ptr if fft is not None else None
    be.lib.rope(dt.short, out, be._as(n.srcs[0], base, dt), pos, p["theta"], p["mode"], freq_factors=ff,
                stream=be.stream)


def _argmax(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    x, lib = n.srcs[0], be.lib
    n_, rows = x.shape[-1], max(1, x.size // max(1, x.shape[-1]))
    G = lib.argmax_splits(n_)
    part = counters = None
    if G > 1 and rows <= COUNTER_BYTES // 4:  # long rows: G blocks each, partials in _work
        need = COUNTER_BYTES + rows * G * 8
        if be._work is None or be._work.nbytes < need:
            raise NeedScratch(need, "_work")
        counters, part = be._work.ptr, be._work.ptr + COUNTER_BYTES
    lib.argmax(x.dtype.short, out, be._arg(x, base), stream=be.stream, part=part, counters=counters)


def _sample(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    from .kernels import sample_workspace_bytes
    src, dt = n.srcs, n.dtype
    rows, V = n.size, src[0].shape[-1]
    ws = be._tmp((-(-sample_workspace_bytes(rows, V) // dt.itemsize),), dt)
    be.lib.sample(src[0].dtype.short, out, be._arg(src[0], base), be._contiguous_ids(src[1], base),
                  be._contiguous_ids(src[2], base), ws.ptr, stream=be.stream)


def _all_reduce(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    # the sum over the GPUs of an NCCL communicator (one process per GPU), enqueued on the stream
    # like a kernel (so it is captured in the decode graph); the in-process communicator of the
    # NumPy backend's simulated ranks has no GPU form
    from ...errors import BackendError
    from ...parallel import communicator
    comm = communicator(n.params["comm"])
    if getattr(comm, "kind", None) != "nccl":
        raise BackendError(f"all_reduce on CUDA needs an NCCL communicator (one process per GPU: python -m "
                           f"tinygraph.launch); the in-process one runs on the NumPy backend ({n.describe()})")
    x = n.srcs[0]
    src = be._arg(x, base)
    if not x.is_contiguous:  # NCCL reads a flat run: gather it into the output first, then sum in place
        be.lib.copy(out, src, x.dtype.short, n.dtype.short, stream=be.stream)
        src = out
    comm.all_reduce_device(src.ptr, out.ptr, n.size, n.dtype.short, be.stream)


#: op -> its CUDA lowering (every op of ``tinygraph.ops.OPS``)
LOWERINGS: dict[str, Lowering] = {
    "cont": _copy, "cast": _copy, "cpy": _copy,
    "set_rows": _set_rows, "concat": _concat, "get_rows": _get_rows,
    "matmul": matmul, "linear": linear,
    "add": _binary, "mul": _binary, "scale": _scale, "softcap": _softcap, "gelu": _unary, "silu": _unary,
    "softmax": _softmax, "attention": attention, "attention_store": attention_store, "rope_store": _rope_store,
    "rms_norm": _rms_norm, "layer_norm": _layer_norm, "rope": _rope,
    "argmax": _argmax, "sample": _sample,
    "all_reduce": _all_reduce,
    "moe_route": moe_route, "moe_gate_up": moe_gate_up, "moe_down": moe_down,
}
