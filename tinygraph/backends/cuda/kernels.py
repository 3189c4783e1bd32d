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
<T>_<D>,                    const T* kt, TD ktd, const T* v, TD vd, float scale, float cap,
attn_pipe_                  int causal, int past, const int* past_dev, int window, int chunk)
<T>_<D>                     fused attention (flash-decoding splits; D = 64 | 128 | 256 register
                            sizes); cap > 0: scores cap * tanh(s / cap) (Gemma 2), 0: none
attn_store_ attention_store.cu (float* part, int* counters, T* out, TD od, const T* q, TD qd,
<T>_<D>                     StoreArgs<T> sa, float scale, float cap, const int* pos, int window,
                            int chunk)
attn_gqa_   attention_gqa.cu (the arguments of attn_split)   decode on tensor cores: one block
<T>_<D>                     per KV head and split serves its whole query group; f16/bf16, D = 64 | 128
attn_gqa_   attention_gqa.cu (the arguments of attn_store)   attn_store as attn_gqa
store_<T>_<D>
attn_gqa_   attention_gqa.cu (the arguments of attn_store, const int* rows, int rs)   attn_gqa_store
paged_<T>_<D>               for N sequences over a paged cache: position j of sequence n is row rows[n * rs + j]
attn_fa_    attention_tc.cu (T* out, TD od, const T* q, TD qd, const T* kt, TD ktd, const T* v,
<T>_<D>                     TD vd, float scale, float cap, int causal, int past,
                            const int* past_dev, int window)   tensor-core prefill, f16/bf16,
                            D = 64 | 80 | 96 | 128 | 256
rope        rope.cu        (T* out, TD od, const T* x, TD xd, const int* pos, const float* ff,
                            float theta, int mode, int n_dims)    mode 0 normal, 2 neox
getrows     getrows.cu     (T* out, TD od, const T* table, TD tbl, const int* ids)  also getrows_i32 (id maps)
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
matmul_tc3s matmul.cu      (float* P, const T* A, TD ad, const T* B, TD bd, TD cd, int tps)  split-K:
                            matmul_tc3_64_4 over K tiles [z tps, (z+1) tps), float32 partials
matmul_     matmul.cu      (T* C, TD cd, const float* P, int splits)  C = the partials' sum
splitk_reduce               (select.split_k: 9..64 rows, few output tiles: batched decode)
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
linear_spl  linear.cu      (T* y, TD yd, const float* P, int splits, int N, const T* bias, ...)
itk_epil.                   the same with z = the sum of matmul_tc3s's partials (no reduce kernel)
moe_route,  moe.cu         mixture-of-experts decode: the router, and the chosen experts' GEMVs
moe_gate_up,                (lowered in lower_moe.py; signatures at the top of moe.cu)
moe_down
=========== ============== ======================================================================

Concat has no kernel of its own: each input is ``cpy``-ed into a strided view of the output.

Usage: ``lib = kernels.KernelLibrary(driver.get_device(0))``, then its launch helpers
(``lib.binary("add", "f32", Arg(out, (3, 5)), Arg(a, (3, 5)), Arg(a, (1, 5)))``) or
``driver.launch(lib.get("add", "f32"), grid, 256, [ptr(out), td((3, 5)), ...])``;
``with lib.record() as launches:`` keeps prepared launches to replay or capture.

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
from pathlib import Path
from typing import Sequence

from ...util import contiguous_strides
from . import compiler
from . import driver, select
from .kernel_specs import (  # noqa: F401 (re-exported: the library's names live on here)
    ARGMAX_CHUNK, Arg, ELEMENTWISE_DTYPES, GEMV_ROWS_PER_WARP, KERNELS, KernelSpec, LINEAR_ACTS,
    LINEAR_NORMS, MatmulPlan, QUANT_KERNEL_TYPES, ROPE_NEOX, ROPE_NORMAL, SAMPLE_CHUNK, SOURCE_FILES,
    StoreArgs, TD, _BIN, _DTYPE_ALIASES, _F, _ITEMSIZE, _LINEAR_PARAMS, _LINEAR_RB_SMEM_BYTES, _MM, _ONE,
    _PAIRS, _SAMPLE_TAIL, _UN, _arch_number, _check_broadcast, _fold_to_rank4, _linear_code, _reg,
    all_kernel_names, dtype_suffix, elementwise_config, f32, fa_shared_bytes, gemv_block_size, i32, itemsize,
    LINEAR_BLOCK, kernel_name, linear_rows_per_block, norm_config, ptr, row_block_size, sample_workspace_bytes,
    tc3_shared_bytes, td)

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
    "LINEAR_BLOCK",
    "LINEAR_NORMS",
    "LINEAR_ACTS",
]

# --------------------------------------------------------------------------------------------
# library
# --------------------------------------------------------------------------------------------
#: sources of sm_90a-only instructions (wgmma): compiled for sm_90a on an sm_90 device; on any
#: other target their kernels are stubs that trap
ARCH_A_FILES = frozenset({"gemm_wgmma.cu"})


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
    def file_arch(self, file: str) -> str:
        """The target ``file`` compiles for: sm_90a for the files of Hopper-only instructions
        (``ARCH_A_FILES``: wgmma) on an sm_90 device, else the library's."""
        return self.arch + "a" if file in ARCH_A_FILES and self.arch == "sm_90" else self.arch

    def module(self, file: str) -> driver.Module:
        with self._lock:
            m = self._modules.get(file)
            if m is None:
                cubin = compiler.compile_source(self.src_dir / file, self.file_arch(file), self.options,
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

    def precompile(self) -> None:
        """Fill the kernel cache for every source file, the missing ones compiled side by side
        (``compiler.compile_many``); modules still load on first use. A no-op when the library
        does not use the cache."""
        if self.cache:  # each file for its own target (file_arch: Hopper's wgmma files for sm_90a)
            by_arch: dict[str, list] = {}
            for f in SOURCE_FILES:
                by_arch.setdefault(self.file_arch(f), []).append(self.src_dir / f)
            for arch, paths in by_arch.items():
                compiler.compile_many(paths, arch, self.options)

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
        self._launch(self.get("rms_norm", dtype), *norm_config(rows, x.shape[-1]),
                      [out.addr, out.td, x.addr, x.td, ptr(w), f32(eps)], stream=stream)

    def layer_norm(self, dtype, out: Arg, x: Arg, w, b, eps: float, stream=None) -> None:
        if x.numel == 0:
            return
        rows = x.numel // x.shape[-1]
        self._launch(self.get("layer_norm", dtype), *norm_config(rows, x.shape[-1]),
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
        """Pick a kernel and launch config: (function, grid, block, dynamic shared bytes), among
        the matmul.cu kernels (Hopper's gemm_tma is launched by ``gemm_launch``)."""
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
            algo = select.matmul_algo(M, N, batch, b_st[-2] == 1, sfx, self.caps, wgmma=False)
        if algo in ("gemv", "gemv_nc") and M != 1:
            raise ValueError(f"{algo} needs M == 1, got M = {M}")
        if algo == "matmul_tc3":
            algo = select.tc3_variant(-(-N // 128) * -(-M // 128) * batch, self.caps)
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

    def matmul_splitk(self, dtype, c: Arg, a: Arg, b: Arg, ws, splits: int, stream=None,
                      epilogue: "tuple[Arg, int | None, Arg | None, object] | None" = None, bm: int = 128) -> None:
        """C [M, N] = A @ B with K split over ``splits`` blocks per output tile (``select.split_k``):
        float32 partials in ``ws`` (device, >= splits * M * N floats), then added up in order.
        ``epilogue`` (y, bias pointer, res, act): y = act(C + bias) + res (:meth:`linear_epilogue`)
        by the kernel that adds the partials up, C not written. ``bm`` < 128: ``matmul_tc3s_m<bm>``."""
        sfx = dtype_suffix(dtype)
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        kt = -(-K // 64)
        tps = -(-kt // splits)
        splits = -(-kt // tps)  # no empty split
        f = self.get("matmul_tc3s" if bm == 128 else f"matmul_tc3s_m{bm}", sfx)
        smem = tc3_shared_bytes(64, 4, bm)
        self._ensure_dynamic_smem(f, smem)
        self._launch(f, (-(-N // 128), -(-M // bm), splits), (256, 1, 1),
                     [ptr(ws), a.addr, a.td, b.addr, b.td, c.td, i32(tps)], stream=stream, shared_mem=smem)
        if epilogue is not None:
            y, bias, res, act = epilogue
            self._epilogue("linear_splitk_epilogue", sfx, y, Arg(0, (M, N)), [ptr(ws), i32(splits), i32(N)],
                           bias, res, act, stream)
            return
        g, bl = self._ew(M * N)
        self._launch(self.get("matmul_splitk_reduce", sfx), g, bl, [c.addr, c.td, ptr(ws), i32(splits)],
                     stream=stream)

    def _tc3_variant(self, tiles: int) -> str:
        """matmul_tc3's variant for ``tiles`` output tiles on this device (``select.tc3_variant``)."""
        return select.tc3_variant(tiles, self.caps)

    @property
    def caps(self) -> "select.DeviceCaps":
        """The device capabilities kernel choice reads (``select.DeviceCaps``)."""
        return select.DeviceCaps.of(getattr(self, "arch", "sm_90"), self.device)

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
        bs = int(block) if block else LINEAR_BLOCK
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
        self._epilogue("linear_epilogue", dtype, y, z, [z.addr, z.td], bias, res, act, stream)

    def _epilogue(self, name: str, dtype, y: Arg, z: Arg, zargs: list, bias, res: Arg | None, act,
                  stream) -> None:
        """Launch epilogue kernel ``name`` (linear_epilogue or linear_splitk_epilogue; ``zargs``:
        where its z comes from) after checking y, z [.., N] and res against each other."""
        act_c = _linear_code("act", act, LINEAR_ACTS)
        ys, zs = tuple(y.shape), tuple(z.shape)
        if not ys or not zs or len(ys) > 4:
            raise ValueError(f"{name}: bad shapes y{ys}, z{zs}")
        N = zs[-1]
        if (2 * ys[-1] if act_c == 3 else ys[-1]) != N:
            raise ValueError(f"{name}: z{zs} has {N} columns, y{ys} wants "
                             f"{2 * ys[-1] if act_c == 3 else ys[-1]} (act={act_c})")
        _check_broadcast(name, ys[:-1], zs[:-1])
        if res is not None:
            _check_broadcast(f"{name} residual", ys, res.shape)
        if y.numel == 0:
            return
        g, bl = self._ew(y.numel)
        self._launch(self.get(name, dtype), g, bl,
                     [y.addr, y.td] + zargs + [ptr(bias), res.addr if res is not None else ptr(None),
                                               res.td if res is not None else y.td, i32(act_c)], stream=stream)

    def matmul(self, dtype, c: Arg, a: Arg, b: Arg, stream=None, algo: str | None = None) -> None:
        """C = A @ B (batched, strided, broadcast batch dims)."""
        if c.numel == 0:
            return
        f, grid, block, smem = self.plan_matmul(dtype, c, a, b, algo)
        self._launch(f, grid, block, [c.addr, c.td, a.addr, a.td, b.addr, b.td], stream=stream,
                     shared_mem=smem)
