"""CUDA lowerings of the attention ops (kernels: cuda_src/attention.cu, attention_gqa.cu,
attention_tc.cu, rope.cu): ``attention`` (flash-decoding splits: a key head's query group per
block on tensor cores when the layout allows, else one query row per block; tensor-core flash
attention for many queries),
``attention_store`` (a decode step's norm + RoPE + KV write + attention in one kernel; with a
rows table, many sequences' steps over a paged cache) and
``rope_store`` (RoPE of q/k and the KV-cache write)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import BackendError
from ...ops.registry import optional_srcs
from ...tensor import Tensor
from . import driver
from . import select
from .kernels import Arg, fa_shared_bytes
from .limits import COUNTER_BYTES, NeedScratch

if TYPE_CHECKING:
    from .backend import CudaBackend


def attention(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    """Fused attention: split the keys across blocks when few (batch, query) rows would
    otherwise leave the GPU idle (flash-decoding), then merge the partial softmaxes."""
    p, dt = n.params, n.dtype
    q, kt, v = (be._as(t, base, dt) for t in n.srcs[:3])
    past_dev = be._contiguous_ids(n.srcs[3], base) if p["past_src"] else None
    if len(out.shape) > 4 or max(q.shape[-1], v.shape[-1]) > 256:
        raise BackendError(f"attention kernel supports rank <= 4 and head sizes <= 256: {n.describe()}")
    from .kernels import f32, i32, ptr
    window = p.get("window") or 0  # 0: none (the kernels' convention)
    args = [out.addr, out.td, q.addr, q.td, kt.addr, kt.td, v.addr, v.td, f32(p["scale"]),
            f32(p.get("softcap") or 0.0), i32(1 if p["causal"] else 0), i32(p["past"]), ptr(past_dev), i32(window)]
    if flash_ok(be, out, q, kt, v, dt):
        D = q.shape[-1]
        f = be.lib.module("attention_tc.cu").get_function(f"attn_fa_{dt.short}_{D}")
        smem = fa_shared_bytes(D)
        be.lib._ensure_dynamic_smem(f, smem)
        T = out.shape[-2]
        driver.launch(f, (-(-T // 64), out.numel // (T * D), 1), 128, args, smem, stream=be.stream,
                      pdl=be._pdl())
        return
    cfg = attn_splits(be, n, out, (kt, v))
    if cfg is None:
        return
    grid, chunk, part, counters, maxd, kind = cfg
    driver.launch(be.lib.function(f"attn_{kind}_{dt.short}_{maxd}"), grid, 128,
                  [ptr(part), ptr(counters)] + args + [i32(chunk)], stream=be.stream, pdl=be._pdl())


def flash_ok(be: "CudaBackend", out: Arg, q: Arg, kt: Arg, v: Arg, dt) -> bool:
    """Whether attn_fa can run this attention (``select.flash_ok`` on the operands' layouts)."""
    ops = [(a.shape, a.full_strides(), int(a.addr.value), axis) for a, axis in ((q, -1), (kt, -2), (v, -1))]
    return select.flash_ok(dt.short, q.shape[-1], v.shape[-1], out.shape[-2], ops, be.lib.caps)


def attention_store(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    """One decode step's q/k norm + RoPE + KV-cache write + attention: one kernel."""
    p, dt = n.params, n.dtype
    q, k, v, pos, kc, vc = n.srcs[:6]
    o = optional_srcs(n)
    if kc.dtype != dt or vc.dtype != dt or q.shape[-1] > 256:
        raise BackendError(f"attention_store on CUDA needs caches of dtype {dt.name} and heads <= 256: "
                           f"{n.describe()}")
    qa, ka, va = (be._as(t, base, dt) for t in (q, k, v))
    kca, vca = be._arg(kc, base), be._arg(vc, base)
    fft = o["freq_factors"]
    ff = be._arg(fft, base).ptr if fft is not None else 0
    qn, kn = (be._as(o[k_], base, dt).ptr if o[k_] is not None else 0 for k_ in ("q_norm_w", "k_norm_w"))
    window = p.get("window") or 0
    cfg = attn_splits(be, n, out, (kca, vca))
    if cfg is None:
        return
    grid, chunk, part, counters, maxd, kind = cfg
    from .kernels import ROPE_NEOX, ROPE_NORMAL, StoreArgs, f32, i32, ptr
    mode = -1 if not p["rope"] else (ROPE_NEOX if p["mode"] == "neox" else ROPE_NORMAL)
    rows = o["rows"]
    # pos, the rows table and the caches' old rows may be read before the kernel waits for its
    # predecessor when nothing else in the graph writes them
    early = all(t.storage.id not in be._written for t in (pos, kc, vc, fft, rows) if t is not None)
    sa = StoreArgs(ka.ptr, ka.td, va.ptr, va.td, kca.ptr, kca.td, vca.ptr, vca.td, ff, qn, kn,
                   p["eps"], p["theta"], mode, int(p["q_norm"]), int(p["k_norm"]), int(early))
    args = [ptr(part), ptr(counters), out.addr, out.td, qa.addr, qa.td, sa, f32(p["scale"]),
            f32(p.get("softcap") or 0.0), ptr(be._contiguous_ids(pos, base)), i32(window), i32(chunk)]
    if rows is not None:  # a paged cache: attn_gqa only (select.plan_choices picks it)
        if kind != "gqa":
            raise BackendError(f"attention_store with a rows table needs attn_gqa (f16/bf16, heads of 64 or "
                               f"128, groups <= 16, 16-byte aligned caches): {n.describe()}")
        store = "attn_gqa_paged"
        args += [ptr(be._contiguous_ids(rows, base)), i32(rows.shape[1])]
    else:
        store = "attn_gqa_store" if kind == "gqa" else "attn_store"
    driver.launch(be.lib.function(f"{store}_{dt.short}_{maxd}"), grid, 128, args, stream=be.stream,
                  pdl=be._pdl())


def attn_splits(be: "CudaBackend", n: Tensor, out: Arg, keys_values: tuple[Arg, Arg]):
    """Launch shape of the attention kernels of node ``n`` (output ``out`` [.., T, Dv]): the
    plan's ``select.attn_splits`` choice, with the split partials' room in the work buffer:
    (grid, chunk, partials, counters, register size, kernel kind), or None for an empty output.
    attn_gqa needs 16-byte aligned keys and values (``keys_values``; their addresses are known
    only here): when they are not, the choice without it."""
    sp = be.choice(n)
    if sp is None:
        return None
    rows = out.numel // max(out.shape[-1], 1) if out.shape[-1] else 0
    Dv = out.shape[-1]
    if sp.kind == "gqa" and any(int(a.addr.value) % 16 for a in keys_values):
        sp = select.attn_splits(out.shape[-2], rows, select.attn_keys(n), n.srcs[0].shape[-1], Dv,
                                n.params.get("window") or 0)
    part = counters = 0
    if sp.grid[2] > 1:
        # [counters: one int per row, shared by every graph and left at zero by the kernel]
        # [partials]; rows <= 4096 / nsplit <= 2048 here
        need = COUNTER_BYTES + sp.partial_bytes(rows, Dv)
        if be._work is None or be._work.nbytes < need:
            raise NeedScratch(need, "_work")
        counters, part = be._work.ptr, be._work.ptr + COUNTER_BYTES
    return sp.grid, sp.chunk, part, counters, sp.maxd, sp.kind
