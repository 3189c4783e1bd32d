"""CUDA lowerings of the attention ops (kernels: cuda_src/attention.cu, attention_tc.cu, rope.cu):
``attention`` (flash-decoding splits, or tensor-core flash attention for many queries),
``attention_store`` (a decode step's norm + RoPE + KV write + attention in one kernel) and
``rope_store`` (RoPE of q/k and the KV-cache write)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import BackendError
from ...tensor import Tensor
from . import driver
from .kernels import Arg, _arch_number, fa_shared_bytes
from .limits import ATTN_CHUNK, COUNTER_BYTES, FLASH_MIN_QUERIES, NeedScratch

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
            i32(1 if p["causal"] else 0), i32(p["past"]), ptr(past_dev), i32(window)]
    if flash_ok(be, out, q, kt, v, dt):
        D = q.shape[-1]
        f = be.lib.module("attention_tc.cu").get_function(f"attn_fa_{dt.short}_{D}")
        smem = fa_shared_bytes(D)
        be.lib._ensure_dynamic_smem(f, smem)
        T = out.shape[-2]
        driver.launch(f, (-(-T // 64), out.numel // (T * D), 1), 128, args, smem, stream=be.stream,
                      pdl=be._pdl())
        return
    cfg = attn_splits(be, out, kt.shape[-1], q.shape[-1], window)
    if cfg is None:
        return
    grid, chunk, part, counters, maxd = cfg
    # a few queries (decode): the pipelined kernel; many (prefill): the register-lean one,
    # whose occupancy matters more (f16 128-wide heads: 88 vs 176 registers)
    kind = "pipe" if grid[0] <= 4 else "split"
    driver.launch(be.lib.module("attention.cu").get_function(f"attn_{kind}_{dt.short}_{maxd}"), grid, 128,
                  [ptr(part), ptr(counters)] + args + [i32(chunk)], stream=be.stream, pdl=be._pdl())


def flash_ok(be: "CudaBackend", out: Arg, q: Arg, kt: Arg, v: Arg, dt) -> bool:
    """Whether attn_fa (tensor cores, cuda_src/attention_tc.cu) can run this attention: f16 /
    bf16 on sm_80+, heads of 64 or 128, at least FLASH_MIN_QUERIES queries, head elements
    contiguous and every row / batch stride and base 16-byte aligned."""
    D, T = q.shape[-1], out.shape[-2]
    if (dt.short not in ("f16", "bf16") or _arch_number(be.lib.arch) < 80 or D not in (64, 128)
            or v.shape[-1] != D or T < FLASH_MIN_QUERIES):
        return False
    for a, contiguous_axis in ((q, -1), (kt, -2), (v, -1)):
        st = a.full_strides()
        if st[contiguous_axis] != 1 or int(a.addr.value) % 16:
            return False
        if any(s % 8 for i, s in enumerate(st) if a.shape[i] != 1 and i != len(st) + contiguous_axis):
            return False
    return True


def attention_store(be: "CudaBackend", n: Tensor, out: Arg, base: dict[int, int]) -> None:
    """One decode step's q/k norm + RoPE + KV-cache write + attention: one kernel."""
    p, dt = n.params, n.dtype
    q, k, v, pos, kc, vc, *rest = n.srcs
    if kc.dtype != dt or vc.dtype != dt or q.shape[-1] > 256:
        raise BackendError(f"attention_store on CUDA needs caches of dtype {dt.name} and heads <= 256: "
                           f"{n.describe()}")
    qa, ka, va = (be._as(t, base, dt) for t in (q, k, v))
    kca, vca = be._arg(kc, base), be._arg(vc, base)
    fft = rest.pop(0) if p["has_ff"] else None
    ff = be._arg(fft, base).ptr if fft is not None else 0
    qn = be._as(rest.pop(0), base, dt).ptr if p["has_qn"] else 0
    kn = be._as(rest.pop(0), base, dt).ptr if p["has_kn"] else 0
    window = p.get("window") or 0
    cfg = attn_splits(be, out, kc.shape[1], q.shape[-1], window)
    if cfg is None:
        return
    grid, chunk, part, counters, maxd = cfg
    from .kernels import ROPE_NEOX, ROPE_NORMAL, StoreArgs, f32, i32, ptr
    mode = -1 if not p["rope"] else (ROPE_NEOX if p["mode"] == "neox" else ROPE_NORMAL)
    # pos and the caches' old rows may be read before the kernel waits for its predecessor
    # when nothing else in the graph writes them
    early = all(t.storage.id not in be._written for t in (pos, kc, vc, fft) if t is not None)
    sa = StoreArgs(ka.ptr, ka.td, va.ptr, va.td, kca.ptr, kca.td, vca.ptr, vca.td, ff, qn, kn,
                   p["eps"], p["theta"], mode, int(p["q_norm"]), int(p["k_norm"]), int(early))
    driver.launch(be.lib.module("attention.cu").get_function(f"attn_store_{dt.short}_{maxd}"), grid, 128,
                  [ptr(part), ptr(counters), out.addr, out.td, qa.addr, qa.td, sa, f32(p["scale"]),
                   ptr(be._contiguous_ids(pos, base)), i32(window), i32(chunk)], stream=be.stream,
                  pdl=be._pdl())


def attn_splits(be: "CudaBackend", out: Arg, S: int, D: int, window: int = 0):
    """Launch shape of the attention kernels for output ``out`` [.., T, Dv] over S keys of D:
    (grid, chunk, partials, counters, register size), or None for an empty output. With a
    sliding window a row reads at most ``window`` keys: the splits cover that many (the
    kernel starts them at each row's first visible key)."""
    T, Dv = out.shape[-2], out.shape[-1]
    rows = out.numel // max(Dv, 1) if Dv else 0
    if rows == 0:
        return None
    batch = rows // T
    if window > 0:
        S = max(1, min(S, window))
    nsplit = max(1, min(-(-S // ATTN_CHUNK), 4096 // rows))
    chunk = -(-S // nsplit)
    nsplit = -(-S // chunk)
    part = counters = 0
    if nsplit > 1:
        # [counters: one int per row, shared by every graph and left at zero by the kernel]
        # [partials]; rows <= 4096 / nsplit <= 2048 here
        need = COUNTER_BYTES + rows * nsplit * (Dv + 2) * 4
        if be._work is None or be._work.nbytes < need:
            raise NeedScratch(need, "_work")
        counters, part = be._work.ptr, be._work.ptr + COUNTER_BYTES
    maxd = next(m for m in (64, 128, 256) if max(D, Dv) <= m)
    return (T, batch, nsplit), chunk, part, counters, maxd
