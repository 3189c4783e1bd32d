"""Kernel choice as pure functions of shapes, dtypes and the device's capabilities.

Every threshold that picks between kernels is applied here, once: GEMV vs tensor-core matmul and
its tile/stage variant, the decode GEMV of a linear layer (plain or reading quantized blocks) vs
dequantize + matmul, tensor-core flash attention vs the split/pipelined kernels and how many key
splits they use. The lowerings (``lower*.py``) and ``KernelLibrary.plan_matmul`` call these;
``tests/test_cuda_select.py`` checks them on the CPU, and ``tests/test_cuda_launches.py`` that
the launches they lead to are unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

from ...dtypes import as_dtype
from ...util import contiguous_strides
from .limits import ATTN_CHUNK, DECODE_ROWS, FLASH_HEADS, FLASH_MIN_QUERIES, GEMV_MAX_ROWS, GQA_BLOCKS_PER_SM, GQA_MAX_SPLITS, GQA_MIN_CHUNK, GQA_ROWS


@dataclass(frozen=True)
class DeviceCaps:
    """What kernel choice needs to know of a device: compute capability (``arch``: 90 for
    sm_90), multiprocessors, and the shared memory one block may opt in to (bytes)."""

    arch: int = 90
    sm_count: int = 132
    smem_optin: int = 227 * 1024

    @classmethod
    def of(cls, arch: str, device) -> "DeviceCaps":
        """The caps of a kernel library's ``arch`` ("sm_90") and ``device``."""
        return cls(arch_number(arch), int(getattr(device, "sm_count", 132)),
                   int(getattr(device, "max_shared_per_block_optin", 227 * 1024)))


def arch_number(arch: str) -> int:
    """'sm_90' -> 90, 'sm_90a' -> 90, 'sm_100' -> 100."""
    digits = "".join(ch for ch in arch if ch.isdigit())
    return int(digits) if digits else 0


def tc3_shared_bytes(bk: int, stages: int, bm: int = 128) -> int:
    """Dynamic shared memory of matmul_tc3_<bk>_<stages> (and of matmul_tc3s_m<bm>: 64, 4, bm):
    per stage a bm x (bk + 8) tile of A and a 128 x (bk + 8) one of B, 2-byte elements."""
    return stages * (bm + 128) * (bk + 8) * 2


def tc3_variant(tiles: int, caps: DeviceCaps) -> str:
    """matmul_tc3's (K tile, stages) for a product of ``tiles`` 128x128 output tiles. Measured on
    an H100 (f16, M = 512 and 2048, prefill shapes of the bench models; .dev-style A/B in
    bench/README.md): at most one wave of tiles runs one block per SM anyway, and 4 stages of
    64 win (e.g. 4096x4096: 217 vs 167 TFLOP/s with 3); more tiles want two blocks per SM,
    which 3 stages of 64 allow (24576x4096: 277 vs 226). Smaller configs where the device's
    shared memory per block is smaller (sm_86/89: 99 KB)."""
    pick = (64, 4) if tiles <= caps.sm_count else (64, 3)
    for bk, st in (pick, (64, 3), (32, 4)):
        if tc3_shared_bytes(bk, st) + 1024 <= caps.smem_optin:
            return f"matmul_tc3_{bk}_{st}"
    return "matmul_tc3_32_3"  # 61 KB


def matmul_algo(M: int, N: int, batch: int, b_rows_contiguous: bool, dtype: str, caps: DeviceCaps,
                small_m: bool = True, wgmma: bool = True) -> str:
    """The matmul kernel for C [batch, M, N] = A @ B: one row -> ``gemv`` (B's K axis contiguous,
    i.e. a transposed [N, K] weight) or ``gemv_nc``; f16/bf16 on sm_80+ -> for 2..64 rows
    (``small_m``; batch 1) ``matmul_tc3s_m<BM>``, output tiles of the fewest rows BM in 16 / 32 /
    64 that hold M (:func:`small_m_splits`); more rows of one matrix times a transposed weight on
    an sm_90 device (``wgmma``) -> Hopper's ``gemm_tma<BN>`` (BN: :func:`gemm_tile`), else a
    ``matmul_tc3`` variant; other dtypes -> the f32 ``matmul``. (``gemm_tma`` also needs 16-byte
    aligned operands with row strides of multiples of 8: the lowering checks those when it runs
    and takes :func:`tc3_variant` where they fail.)"""
    if M == 1:
        return "gemv" if b_rows_contiguous else "gemv_nc"
    if dtype in ("f16", "bf16") and caps.arch >= 80:
        bm = next(b for b in (16, 32, 64) if M <= b) if M <= SPLIT_MAX_ROWS else 0
        if small_m and bm and batch == 1 and tc3_shared_bytes(64, 4, bm) + 1024 <= caps.smem_optin:
            return f"matmul_tc3s_m{bm}"
        if wgmma and caps.arch == 90 and batch == 1 and b_rows_contiguous and M > SPLIT_MAX_ROWS:
            return f"gemm_tma{gemm_tile(M, N, caps)}"
        return tc3_variant(-(-N // 128) * -(-M // 128) * batch, caps)
    return "matmul"


#: gemm_tma's output columns per unit of time by tile width, relative to 128-wide tiles when
#: every width fills whole waves (H200, f16, M = 2048, `tools/bench_gemm.py`: 128 ~600, 192
#: ~590-650, 256 ~680-750 TFLOP/s)
TMA_TILE_SPEED = {128: 1.0, 192: 1.03, 256: 1.13}


def gemm_tile(M: int, N: int, caps: DeviceCaps) -> int:
    """gemm_tma's tile width (128, 192 or 256 columns) for an [M, N] product: the one with the
    fewest estimated 128-wide-tile times, counting whole waves (one 128 x BN tile per SM) and
    :data:`TMA_TILE_SPEED`. E.g. (132 SMs) M = 512: N = 4096 -> 128 (128 tiles: one wave),
    N = 6144 -> 192 (128 tiles of 192: one wave, where 128-wide tiles need two)."""
    def cost(bn: int) -> float:
        waves = -(-(-(-M // 128) * -(-N // bn)) // caps.sm_count)
        return waves * bn / 128 / TMA_TILE_SPEED[bn]
    return min(TMA_TILE_SPEED, key=lambda bn: (cost(bn), bn))


def small_m_splits(M: int, N: int, K: int, bm: int, caps: DeviceCaps) -> int:
    """K splits of a ``matmul_tc3s_m<bm>`` product (bm = 128: ``matmul_tc3s``): about as many
    blocks as fit the GPU at once (two per SM when their shared memory allows), at least 4 K tiles
    of 64 each."""
    per_sm = 2 if 2 * (tc3_shared_bytes(64, 4, bm) + 1024) <= caps.smem_optin else 1
    tiles = -(-N // 128) * -(-M // bm)
    return max(1, min(-(-K // 64) // 4, per_sm * caps.sm_count // tiles))


#: most rows of a split-K product (batched decode steps; prefill's larger products are unchanged)
SPLIT_MAX_ROWS = 64


def split_k(M: int, N: int, K: int, batch: int, dtype: str, caps: DeviceCaps) -> int:
    """Blocks along K for a tensor-core product with few 128x128 output tiles (1: no split):
    a batched decode's 5..64 rows give as few tiles as the weight has 128-column strips (e.g.
    16 for a 2048-wide projection), which leaves most SMs idle; splitting K fills about one
    block per SM, at least 4 K tiles of 64 each (``matmul_tc3s`` + ``matmul_splitk_reduce``)."""
    if (batch != 1 or dtype not in ("f16", "bf16") or caps.arch < 80 or not 2 <= M <= SPLIT_MAX_ROWS
            or tc3_shared_bytes(64, 4) + 1024 > caps.smem_optin):
        return 1
    return small_m_splits(M, N, K, 128, caps)  # one block per SM: over sm_count / 2 tiles, no split


def gemv_limit(dtype: str, quantized: bool, caps: DeviceCaps, override: int | None = None,
               small_tiles: bool = True) -> int:
    """Most rows a product with a weight runs on the decode GEMV: with 16-bit weights where the
    small-row tensor-core tiles take over (f16 / bf16, sm_80+, ``small_tiles``: the rows are one
    matrix, and ``TINYGRAPH_SMALL_M`` is not 0), ``GEMV_MAX_ROWS`` (it reads each weight once
    for that many rows); else ``DECODE_ROWS`` (quantized: the alternative dequantizes the whole
    weight). ``override`` (``TINYGRAPH_GEMV_ROWS``, A/B timing) replaces it, at most
    ``DECODE_ROWS`` for quantized weights."""
    if override is not None:
        return min(override, DECODE_ROWS) if quantized else override
    tiles = small_tiles and dtype in ("f16", "bf16") and caps.arch >= 80
    return GEMV_MAX_ROWS if tiles and not quantized else DECODE_ROWS


def linear_path(rows: int, quantized: bool, q_shared_bytes: int, fused_gemv: bool, caps: DeviceCaps,
                gemv_rows: int = DECODE_ROWS) -> str:
    """How a linear layer over ``rows`` input rows runs: "gemv_q" (the decode GEMV reading a
    block-quantized weight; it stages a row in shared memory, ``q_shared_bytes``),
    "dequant_matmul" (the weight dequantized into scratch, then the matmul path), "gemv" (one fused
    GEMV: norm, product, bias, activation, residual) or "matmul" (norm -> matmul -> epilogue).
    The GEMVs take up to ``gemv_rows`` rows (:func:`gemv_limit`)."""
    if quantized:
        return "gemv_q" if rows <= gemv_rows and q_shared_bytes + 1024 <= caps.smem_optin else "dequant_matmul"
    return "gemv" if fused_gemv and rows <= gemv_rows else "matmul"


#: the decode GEMV families of a block-quantized weight (cuda_src/linear_q.cu, linear_qmma.cu, linear_qr.cu)
QUANT_GEMVS = ("linear_q", "linear_q8a", "linear_qmma", "linear_qr")
#: weight types linear_qr has (a lane's 128-weight slice in registers; rows up to QR_MAX_K weights)
#: and its TG_LQR_ROWS / TG_LQR_ROWS_Q8 / TG_LQR_ROWS_Q6 / TG_LQR_STAGES (rows per team trip,
#: stages of the shared-memory ring the rows are bulk-copied into)
QR_TYPES, QR_MAX_K = frozenset({"q4_k", "q8_0", "q6_k"}), 32768
QR_ROWS, QR_STAGES = {"q4_k": 4, "q8_0": 2, "q6_k": 2}, 2


def qr_ok(qtype: str | None, K: int, caps: "DeviceCaps | None" = None) -> bool:
    """Whether linear_qr can compute a ``qtype`` weight with rows of ``K`` weights (and its shared
    memory fits the device's)."""
    if qtype not in QR_TYPES or K % 256 or not 0 < K <= QR_MAX_K or as_dtype(qtype).nbytes(K) % 16:
        return False  # (rows are bulk-copied: 16-byte aligned)
    return linear_q_shared_bytes(K, "linear_qr", qtype) + 1024 <= (caps or DeviceCaps()).smem_optin


def qr_team(K: int) -> int:
    """Lanes of a linear_qr team (one per 128-weight slice: 8, 16, 32 or a multiple of 32); as
    lqr_team in cuda_src/linear_qr.cu."""
    ns = K // 128
    return 8 if ns <= 8 else 16 if ns <= 16 else 32 if ns <= 32 else 32 * -(-ns // 32)


def qr_block(K: int) -> int:
    """Threads of a linear_qr block: 256, or the largest multiple of a multi-warp team <= 256."""
    ts = qr_team(K)
    return 256 if ts <= 32 else ts * max(1, 256 // ts)
#: weight types whose f16 decode GEMV is linear_qmma by default (H200, same device call, decode
#: tok/s of whole models, linear_q -> linear_qmma: SmolLM2 Q4_1 1,325 -> 1,539, TinyLlama Q4_K_M
#: 865 -> 952; per layer q4_k / q6_k 1.1-1.4x on Qwen3-8B shapes; bench/README.md)
QMMA_TYPES = frozenset({"q4_1", "q5_1", "q2_k", "q4_k", "q5_k", "q6_k"})
#: types whose blocks are only 2-byte aligned (read 2 bytes at a time): linear_qmma only for rows
#: shorter than this (SmolLM2 Q8_0, K 576 / 1536: 1,353 -> 1,454 tok/s; TinyLlama Q8_0, K 2048 /
#: 5632: 912 -> 718)
QMMA_ALIGN2_TYPES, QMMA_ALIGN2_MAX_K = frozenset({"q8_0", "q4_0", "q5_0", "q3_k"}), 2048


#: linear_qr is the default for all its types, f16 / bf16 on sm_90, for weights of at least this
#: many elements with rows of at least QR_MIN_K (H200, eighth session, the row transposed in shared
#: memory; one GEMV with programmatic launch, µs, linear_qmma -> linear_qr: Qwen3-8B q4_k qkv 13.0
#: -> 10.0, o 7.8 -> 6.0, gate/up 35.1 -> 20.2, down 19.8 -> 15.4; q6_k qkv 18.7 -> 11.6, o 10.8 ->
#: 9.5, gate/up 53.8 -> 27.4, down 27.0 -> 22.9; TinyLlama (K = 2048) q4_k qkv 5.3 -> 5.7, o 4.4 ->
#: 4.4, gate/up 11.6 -> 9.4, down 8.8 -> 6.5; whole model, tok/s: TinyLlama Q4_K_M 948 -> 1,034 and
#: Q8_0 885 -> 1,182 with linear_qr on every layer). The smallest layer measured was TinyLlama's o
#: (2048 x 2048): smaller ones (Qwen3-0.6B, rows of 1024) keep the older families, untimed
QR_MIN_WEIGHTS = 4_000_000
QR_MIN_K = 2048


def quant_gemv(dtype: str, int8_activations: bool = False, choice: str | None = None,
               caps: DeviceCaps | None = None, qtype: str | None = None, K: int = 0, N: int = 0,
               qr: bool = True) -> str:
    """The decode GEMV kernel family of a block-quantized weight for activations of ``dtype``:
    "linear_q" (float32 products of the decoded weights and the staged row), "linear_q8a" (the
    normalised row rounded to int8 per block of 32, integer dot products; f16 / bf16, when
    ``int8_activations`` (``TINYGRAPH_QUANT_ACT=int8``) asks for it), or "linear_qmma" (f16 on
    sm_80+: weights and row as float16 into tensor cores, float32 sums). ``choice``
    (``TINYGRAPH_QUANT_GEMV``) names a family outright; one the dtype or device cannot run
    falls back to "linear_q". By default f16 uses linear_qmma for the weight types
    (``qtype``) of ``QMMA_TYPES``, and of ``QMMA_ALIGN2_TYPES`` for rows of ``K`` below
    ``QMMA_ALIGN2_MAX_K``; linear_q otherwise -- except that weights of at least
    ``QR_MIN_WEIGHTS`` elements (``N`` x ``K``, rows of ``QR_MIN_K`` or more) of the ``QR_TYPES`` take "linear_qr"
    (where ``qr_ok``), f16 and bf16 on sm_90 (``qr``: False, ``TINYGRAPH_QUANT_QR=0``, turns
    that off). linear_q8a is not the default: the rounding moves a decode step's logits of the default model by 0.1-0.6 rms
    (tools/quant_act_error.py); linear_qr's two planes keep about 16 bits of each activation."""
    if choice:
        if choice not in QUANT_GEMVS:
            raise ValueError(f"TINYGRAPH_QUANT_GEMV={choice!r}: expected one of {', '.join(QUANT_GEMVS)}")
        fam = choice
    elif int8_activations:
        fam = "linear_q8a"
    elif (qr and qtype in QR_TYPES and (caps or DeviceCaps()).arch >= 90 and N * K >= QR_MIN_WEIGHTS
          and K >= QR_MIN_K):
        fam = "linear_qr"  # (dtype and qr_ok: checked below, as for a named family)
    else:
        mma = qtype in QMMA_TYPES or (qtype in QMMA_ALIGN2_TYPES and K < QMMA_ALIGN2_MAX_K)
        fam = "linear_qmma" if mma else "linear_q"
    if fam == "linear_q8a" and dtype not in ("f16", "bf16"):
        return "linear_q"
    if fam == "linear_qmma" and (dtype != "f16" or (caps is not None and caps.arch < 80)):
        return "linear_q"
    if fam == "linear_qr" and (dtype not in ("f16", "bf16") or not qr_ok(qtype, K, caps)):
        return quant_gemv(dtype, int8_activations, None, caps, qtype, K, N, False)
    return fam


def linear_q_shared_bytes(K: int, kernel: str = "linear_q", qtype: str | None = None) -> int:
    """Dynamic shared memory of ``kernel``: the staged row (float32, padded to 4), then for
    linear_q its copy with 4 floats of padding per 32 (lq_pad) and its sums of 8; for linear_q8a
    its int8 codes, its sums of 8 and its scales per 32; for linear_qmma the row as float16
    (16-byte aligned) and the sums of 8 of that."""
    if kernel == "linear_qr":  # the row as float32, two int8 planes, scales per 32, sums per 8; the ring
        qt = qtype if qtype in QR_TYPES else "q4_k"
        ldw = as_dtype(qt).nbytes(K)
        return (K * 53 // 8 + 127) // 128 * 128 + qr_block(K) // qr_team(K) * QR_STAGES * QR_ROWS[qt] * ldw
    if kernel == "linear_qmma":
        return -(-K // 4) * 4 * 4 + (K * 2 + 15) // 16 * 16 + K // 8 * 4
    if kernel == "linear_q8a":
        return -(-K // 4) * 4 * 4 + K + (K // 8 + K // 32) * 4
    return (-(-K // 4) * 4 + K + K // 8 + K // 8) * 4


@dataclass(frozen=True)
class LinearChoice:
    """How one matrix product with a weight runs: ``path`` as :func:`linear_path`, and for
    "gemv_q" the quantized GEMV family (:func:`quant_gemv`)."""

    path: str
    gemv: str | None = None
    matmul: str | None = None  # the matmul kernel (matmul_algo) of paths "matmul" / "dequant_matmul"


def linear_choice(x_shape: Sequence[int], N: int, K: int, dtype: str, wtype: str | None, fused_gemv: bool,
                  caps: DeviceCaps, int8_activations: bool = False, gemv_choice: str | None = None,
                  qr: bool = True, small_m: bool = True, gemv_rows: int | None = None,
                  wgmma: bool = True) -> LinearChoice:
    """The kernels of the product of activations ``x_shape`` [.., M, K] of ``dtype`` with a
    [N, K] weight of block type ``wtype`` (None: a 16/32-bit weight); ``fused_gemv``: the library
    has the fused 16/32-bit GEMV for ``dtype``; ``gemv_rows``: :func:`gemv_limit`'s override;
    ``wgmma``: :func:`matmul_algo` may pick Hopper's gemm_tma."""
    rows = math.prod(x_shape) // K
    M = x_shape[-2] if len(x_shape) >= 2 else 1
    batch = math.prod(x_shape[:-2])
    limit = gemv_limit(dtype, wtype is not None, caps, gemv_rows, small_m and batch == 1)
    if wtype is None:
        path, fam = linear_path(rows, False, 0, fused_gemv, caps, limit), None
    else:
        fam = quant_gemv(dtype, int8_activations, gemv_choice, caps, wtype, K, N, qr)
        path = linear_path(rows, True, linear_q_shared_bytes(K, fam, wtype), fused_gemv, caps, limit)
    mm = matmul_algo(M, N, batch, True, dtype, caps, small_m, wgmma) if path in ("matmul", "dequant_matmul") else None
    return LinearChoice(path, fam if path == "gemv_q" else None, mm)


def plan_choices(order: Iterable, caps: DeviceCaps, gemv_dtypes: frozenset,
                 env: Mapping[str, str]) -> dict[int, "LinearChoice | AttnSplits | None"]:
    """The kernel choices of a planned graph (``order``: its nodes), made once when the CUDA
    backend first runs the plan and kept in it (``ExecPlan.choices``): node id -> a
    :class:`LinearChoice` for ``linear`` nodes and ``matmul`` nodes with a block-quantized
    operand, the :func:`matmul_algo` kernel name for other ``matmul`` nodes, the
    :func:`attn_splits` launch shape (None: empty output) for ``attention`` and
    ``attention_store``. Not here: whether ``attention`` may take the tensor-core flash kernel
    (:func:`flash_ok` looks at the operands' addresses, known only when it runs). ``gemv_dtypes``:
    the dtypes with a fused GEMV kernel; ``env``: the environment (``TINYGRAPH_QUANT_ACT``,
    ``TINYGRAPH_QUANT_GEMV``, ``TINYGRAPH_QUANT_QR``; ``TINYGRAPH_SMALL_M=0``: 2..64-row products
    on the 128-row tiles; ``TINYGRAPH_GEMV_ROWS=n``: the fused GEMVs take at most n rows (default
    ``GEMV_MAX_ROWS``, quantized ``DECODE_ROWS``; more rows take the tensor cores), for A/B timing; ``TINYGRAPH_ATTN_GQA=0``:
    decode attention one query head per block, not attn_gqa; ``TINYGRAPH_WGMMA=0``: prefill products on
    matmul_tc3, not Hopper's gemm_tma), read here and nowhere else."""
    int8 = env.get("TINYGRAPH_QUANT_ACT", "") == "int8"
    fam = env.get("TINYGRAPH_QUANT_GEMV") or None
    qr = env.get("TINYGRAPH_QUANT_QR", "1") != "0"
    small_m = env.get("TINYGRAPH_SMALL_M", "1") != "0"
    gemv_rows = max(1, int(env["TINYGRAPH_GEMV_ROWS"])) if env.get("TINYGRAPH_GEMV_ROWS") else None
    wgmma = env.get("TINYGRAPH_WGMMA", "1") != "0"
    out: dict = {}
    for n in order:
        if n.op in ("attention", "attention_store"):  # the split-key kernels' launch shape
            T, Dv = n.shape[-2], n.shape[-1]
            # a paged attention_store (rows table) has only attn_gqa's kernel
            paged = n.op == "attention_store" and n.params.get("has_rows")
            group = gqa_group(n) if env.get("TINYGRAPH_ATTN_GQA", "1") != "0" or paged else 0
            out[n.id] = attn_splits(T, n.size // Dv if Dv else 0, attn_keys(n), n.srcs[0].shape[-1], Dv,
                                    n.params.get("window") or 0, group, n.dtype.short, caps)
            continue
        dt = n.dtype.short
        if n.op == "linear":
            x, w = n.srcs[:2]
        elif n.op == "matmul" and n.srcs[1].dtype.is_quant:
            x, w = n.srcs[0], n.srcs[1].storage
        elif n.op == "matmul":  # a plain matmul; an operand of another dtype is copied contiguous
            a, b = n.srcs
            bst = b.strides if b.dtype == n.dtype else contiguous_strides(b.shape)
            out[n.id] = matmul_algo(a.shape[-2], b.shape[-1], math.prod(n.shape[:-2]), bst[-2] == 1, dt, caps,
                                    small_m, wgmma)
            continue
        else:
            continue
        N, K = w.shape
        out[n.id] = linear_choice(x.shape, N, K, dt, w.dtype.name if w.dtype.is_quant else None,
                                  dt in gemv_dtypes, caps, int8, fam, qr, small_m, gemv_rows, wgmma)
    return out


def decode_like(rows_of_products: Sequence[int]) -> bool:
    """Whether a graph is decode-like (every matrix product has at most ``DECODE_ROWS`` rows):
    its kernels then launch with programmatic dependent launch."""
    return all(r <= DECODE_ROWS for r in rows_of_products)


def fa_shared_bytes(D: int) -> int:
    """Dynamic shared memory of attn_fa_<dtype>_<D> (cuda_src/attention_tc.cu): the query tile and
    two stages of key and value tiles, 64 rows of D + 8 two-byte elements each."""
    return 5 * 64 * (D + 8) * 2


def flash_ok(dtype: str, D: int, Dv: int, T: int, operands: Sequence[tuple[Sequence[int], Sequence[int], int, int]],
             caps: DeviceCaps) -> bool:
    """Whether attn_fa (tensor cores, cuda_src/attention_tc.cu) can run an attention: f16 / bf16
    on sm_80+, heads of ``FLASH_HEADS`` elements whose tiles fit the shared memory, at least ``FLASH_MIN_QUERIES`` queries, and for each operand
    (shape, strides in elements, byte address, its contiguous axis) head elements contiguous and
    every row / batch stride and the base 16-byte aligned."""
    if dtype not in ("f16", "bf16") or caps.arch < 80 or D not in FLASH_HEADS or Dv != D or T < FLASH_MIN_QUERIES:
        return False
    if fa_shared_bytes(D) + 1024 > caps.smem_optin:  # heads of 256 need 166 KB: not on an A100 or Ada
        return False
    for shape, st, addr, contiguous_axis in operands:
        if st[contiguous_axis] != 1 or addr % 16:
            return False
        if any(s % 8 for i, s in enumerate(st) if shape[i] != 1 and i != len(st) + contiguous_axis):
            return False
    return True


def attn_keys(n) -> int:
    """Keys an ``attention`` (kt [.., D, S]) or ``attention_store`` (caches [KV, S, hd]; with a
    rows table [N, S], its S) node attends over at most: S."""
    if n.op == "attention":
        return n.srcs[1].shape[-1]
    return n.srcs[-1].shape[1] if n.params.get("has_rows") else n.srcs[4].shape[1]


def gqa_fits(dtype: str, D: int, Dv: int, group: int, caps: DeviceCaps) -> bool:
    """Whether attn_gqa has a kernel for the dtype, head sizes and group: f16 / bf16 on sm_80+,
    keys and values of 64 or 128 elements, at most ``GQA_ROWS`` query rows per key head."""
    return dtype in ("f16", "bf16") and caps.arch >= 80 and D == Dv and D in (64, 128) and 1 <= group <= GQA_ROWS


def gqa_group(n) -> int:
    """Query rows per key head of an ``attention`` / ``attention_store`` node when attn_gqa can
    read its operands (keys and values of the node's dtype with head elements contiguous, other
    strides multiples of 8 elements, the key head broadcast over the group's query heads), else 0.
    ``attention_store``: the group G of out [KV, G, 1, hd]. ``attention``: out [B0, B1, T, Dv],
    rank <= 4: B1 * T, the keys [B0 | 1, 1, D, S] (or B1 == 1)."""
    if n.op == "attention_store":
        kc, vc = n.srcs[4], n.srcs[5]
        ok = all(c.strides[-1] == 1 and c.offset % 8 == 0 and all(s % 8 == 0 for s in c.strides[:-1])
                 for c in (kc, vc))
        return n.shape[1] if ok else 0
    q, kt, v = n.srcs[:3]
    if len(n.shape) > 4 or kt.dtype != n.dtype or v.dtype != n.dtype or min(len(kt.shape), len(v.shape)) < 2:
        return 0
    B1 = n.shape[-3] if len(n.shape) >= 3 else 1
    if B1 > 1 and (len(kt.shape) < 3 or kt.shape[-3] != 1 or len(v.shape) < 3 or v.shape[-3] != 1):
        return 0
    if kt.strides[-2] != 1 or v.strides[-1] != 1 or kt.offset % 8 or v.offset % 8:
        return 0
    rest = [st for t, ax in ((kt, -2), (v, -1)) for i, st in enumerate(t.strides)
            if i != len(t.strides) + ax and t.shape[i] != 1]
    return B1 * n.shape[-2] if all(st % 8 == 0 for st in rest) else 0


class AttnSplits(NamedTuple):
    """Launch shape of attn_split / attn_pipe / attn_gqa: ``grid`` (queries, batch rows, key
    splits; attn_gqa: 1, key heads, splits), ``chunk`` keys per split (attn_gqa: at least),
    ``maxd`` the register size of the head, ``kind`` "gqa" (decode, a key head's query group per
    block on tensor cores), "pipe" (a few queries: decode) or "split" (many: prefill, where the
    register-lean kernel's occupancy matters more: f16 128-wide heads, 88 vs 176 registers)."""

    grid: tuple[int, int, int]
    chunk: int
    maxd: int
    kind: str

    def partial_bytes(self, rows: int, Dv: int) -> int:
        """Bytes of the split partials for ``rows`` output rows of ``Dv``: per (row, split)
        (max, sum, acc[Dv]) floats; attn_gqa per (key head, split) acc [rows per head, Dv] and
        ``GQA_ROWS`` (max, sum) pairs (cuda_src/attention_gqa.cu)."""
        if self.kind == "gqa":
            heads, nsplit = self.grid[1], self.grid[2]
            return 4 * heads * nsplit * (rows // heads * Dv + 2 * GQA_ROWS)
        return 4 * rows * self.grid[2] * (Dv + 2)


def attn_splits(T: int, rows: int, S: int, D: int, Dv: int, window: int = 0, group: int = 0, dtype: str = "",
                caps: DeviceCaps | None = None) -> AttnSplits | None:
    """Key splits for an attention of ``rows`` (batch x query) rows, ``T`` queries each, over
    ``S`` keys of ``D`` (values ``Dv``): enough splits of ``ATTN_CHUNK`` keys to fill the GPU
    (flash-decoding), at most 4096 split rows in all; None for an empty output. With a sliding
    window a row reads at most ``window`` keys: the splits cover that many.

    ``group`` > 0: every ``group`` consecutive rows share their keys and values, laid out as
    attn_gqa reads them (:func:`gqa_group`); when ``dtype`` / ``caps`` / the head sizes allow
    it too (:func:`gqa_fits`), attn_gqa: one block per key head and split, about
    ``GQA_BLOCKS_PER_SM`` blocks per multiprocessor, at most ``GQA_MAX_SPLITS`` splits (the
    kernel sizes the splits from the position it reads, at least ``GQA_MIN_CHUNK`` keys)."""
    if rows == 0:
        return None
    if window > 0:
        S = max(1, min(S, window))
    if group and caps is not None and gqa_fits(dtype, D, Dv, group, caps):
        heads = rows // group
        fill = -(-GQA_BLOCKS_PER_SM * caps.sm_count // heads)
        nsplit = max(1, min(fill, -(-S // GQA_MIN_CHUNK), GQA_MAX_SPLITS))
        return AttnSplits((1, heads, nsplit), GQA_MIN_CHUNK, D, "gqa")
    nsplit = max(1, min(-(-S // ATTN_CHUNK), 4096 // rows))
    chunk = -(-S // nsplit)
    nsplit = -(-S // chunk)
    maxd = next(m for m in (64, 128, 256) if max(D, Dv) <= m)
    return AttnSplits((T, rows // T, nsplit), chunk, maxd, "pipe" if T <= 4 else "split")
