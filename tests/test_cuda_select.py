"""Kernel choice (``tinygraph.backends.cuda.select``) on the CPU: each threshold at its boundary."""
from __future__ import annotations

import pytest

import tinygraph as tg
from tinygraph.backends.cuda import select
from tinygraph.backends.cuda.limits import ATTN_CHUNK, DECODE_ROWS, FLASH_MIN_QUERIES, GEMV_MAX_ROWS, GQA_BLOCKS_PER_SM, GQA_MIN_CHUNK

H200 = select.DeviceCaps(90, 132, 227 * 1024)
ADA = select.DeviceCaps(89, 128, 99 * 1024)
TURING = select.DeviceCaps(75, 40, 64 * 1024)


def test_device_caps_of_a_library():
    class Dev:
        sm_count, max_shared_per_block_optin = 78, 100_000
    assert select.DeviceCaps.of("sm_86", Dev()) == select.DeviceCaps(86, 78, 100_000)


def test_matmul_algo():
    assert select.matmul_algo(1, 4096, 1, True, "f16", H200) == "gemv"
    assert select.matmul_algo(1, 4096, 1, False, "f16", H200) == "gemv_nc"
    # 2..64 rows (batch 1): tiles of the fewest rows in 16 / 32 / 64 that hold them
    assert select.matmul_algo(2, 4096, 1, True, "f16", H200) == "matmul_tc3s_m16"
    assert select.matmul_algo(17, 4096, 1, True, "bf16", H200) == "matmul_tc3s_m32"
    assert select.matmul_algo(64, 4096, 1, True, "f16", H200) == "matmul_tc3s_m64"
    # more rows of one matrix times a transposed weight on sm_90: Hopper's gemm_tma
    assert select.matmul_algo(65, 4096, 1, True, "f16", H200) == "gemm_tma128"
    assert select.matmul_algo(65, 4096, 1, True, "f16", H200, wgmma=False) == "matmul_tc3_64_4"
    assert select.matmul_algo(512, 4096, 1, False, "f16", H200) == "matmul_tc3_64_4"    # B not a weight
    assert select.matmul_algo(512, 4096, 2, True, "bf16", H200) == "matmul_tc3_64_3"    # batched
    assert select.matmul_algo(512, 4096, 1, True, "f16", select.DeviceCaps(100, 148)) == "matmul_tc3_64_4"
    assert select.matmul_algo(16, 4096, 2, True, "f16", H200) == "matmul_tc3_64_4"      # batched: never
    assert select.matmul_algo(2, 4096, 1, True, "f16", H200, small_m=False) == "matmul_tc3_64_4"
    assert select.matmul_algo(2, 4096, 1, True, "bf16", H200, small_m=False) == "matmul_tc3_64_4"
    assert select.matmul_algo(2, 4096, 1, True, "f32", H200) == "matmul"
    assert select.matmul_algo(2, 4096, 1, True, "f16", TURING) == "matmul"
    # one wave of 128x128 tiles: 4 stages; more: 3 (two blocks per SM); small shared memory: 32-wide K
    assert select.matmul_algo(128 * 132, 128, 1, True, "f16", H200, wgmma=False) == "matmul_tc3_64_4"
    assert select.matmul_algo(128 * 133, 128, 1, True, "f16", H200, wgmma=False) == "matmul_tc3_64_3"
    assert select.matmul_algo(512, 4096, 1, True, "f16", ADA) == "matmul_tc3_32_4"
    assert select.tc3_shared_bytes(64, 4) + 1024 <= H200.smem_optin


def test_gemm_tile_counts_waves():
    # the width of the fewest whole waves, weighed by TMA_TILE_SPEED
    assert select.gemm_tile(512, 4096, H200) == 128     # 128 tiles: 1 wave; 64: 1 wave of slower tiles
    assert select.gemm_tile(512, 6144, H200) == 192     # 192 tiles: 2 waves; 128 of 192: 1
    assert select.gemm_tile(512, 24576, H200) == 256    # 6 vs 3
    assert select.gemm_tile(2048, 4096, H200) == 256    # 4 vs 2
    assert select.gemm_tile(100, 1024, H200) == 128     # 8 tiles vs 4: one wave either way
    assert select.matmul_algo(2048, 4096, 1, True, "f16", H200) == "gemm_tma256"


def test_plan_choices_put_prefill_on_gemm_tma_unless_told_not_to() -> None:
    from tinygraph.models import load_model
    gemv = frozenset({"f32", "f16", "bf16"})
    with load_model("tests/fixtures/llama", backend="numpy", dtype="float16") as m:
        g, _, _ = m.step_graph(100, "logits")
        order = m.session._plan_for(g).order
        for caps, env, want in ((H200, {}, {"gemm_tma128"}), (H200, {"TINYGRAPH_WGMMA": "0"}, {"matmul_tc3_64_4"}),
                                (select.DeviceCaps(100, 148), {}, {"matmul_tc3_64_4"})):
            ch = [c for c in select.plan_choices(order, caps, gemv, env).values()
                  if isinstance(c, select.LinearChoice) and c.path == "matmul"]
            assert ch and {c.matmul for c in ch} == want, (caps, env)


def test_small_m_splits():
    # about two blocks per SM (64-row tiles: 4 x 192 x 72 x 2 = 110.6 KB each), >= 4 K tiles per split
    assert select.small_m_splits(64, 4096, 4096, 64, H200) == 8       # 32 tiles: 264 // 32 = 8, 64 // 4 = 16
    assert select.small_m_splits(8, 24576, 4096, 16, H200) == 1       # 192 tiles already
    assert select.small_m_splits(40, 2048, 12288, 64, H200) == 16     # 16 tiles: 264 // 16 = 16
    assert select.small_m_splits(64, 2048, 192, 64, H200) == 1        # 3 K tiles
    assert select.small_m_splits(64, 4096, 4096, 64, ADA) == 4        # one block per SM: 128 // 32


def test_gemv_rows_moves_the_crossover():
    # TINYGRAPH_GEMV_ROWS (A/B timing): the fused GEMVs take at most that many rows, the rest the
    # tensor cores; quantized weights' GEMVs never more than DECODE_ROWS
    assert select.linear_path(2, False, 0, True, H200, gemv_rows=1) == "matmul"
    assert select.linear_path(1, False, 0, True, H200, gemv_rows=1) == "gemv"
    assert select.linear_path(16, False, 0, True, H200, gemv_rows=16) == "gemv"
    q = dict(dtype="f16", wtype="q8_0", fused_gemv=True, caps=H200)
    assert select.linear_choice((16, 4096), 4096, 4096, gemv_rows=16, **q).path == "dequant_matmul"
    assert select.linear_choice((4, 4096), 4096, 4096, gemv_rows=2, **q).path == "dequant_matmul"
    assert select.linear_choice((4, 4096), 4096, 4096, gemv_rows=4, **q).path == "gemv_q"
    ch = select.linear_choice((4, 4096), 4096, 4096, "f16", None, True, H200, gemv_rows=1)
    assert ch == select.LinearChoice("matmul", None, "matmul_tc3s_m16")


def test_gemv_limit():
    # f16/bf16 weights with tensor cores: the GEMV while it reads each weight once; quantized
    # weights (dequantizing the whole weight for a few rows costs more) and f32: up to DECODE_ROWS
    assert select.gemv_limit("f16", False, H200) == select.gemv_limit("bf16", False, H200) == GEMV_MAX_ROWS
    assert select.gemv_limit("f16", True, H200) == select.gemv_limit("f32", False, H200) == DECODE_ROWS
    assert select.gemv_limit("f16", False, select.DeviceCaps(arch=75)) == DECODE_ROWS
    assert select.gemv_limit("f16", False, H200, 16) == 16 and select.gemv_limit("f16", True, H200, 16) == DECODE_ROWS
    assert select.gemv_limit("f16", False, H200, small_tiles=False) == DECODE_ROWS   # no small-row tiles
    # rows spread over batch dimensions ([8, 1, K]) or TINYGRAPH_SMALL_M=0: no small-row tiles there
    assert select.linear_choice((8, 1, 4096), 4096, 4096, "f16", None, True, H200).path == "gemv"
    assert select.linear_choice((8, 4096), 4096, 4096, "f16", None, True, H200, small_m=False).path == "gemv"
    for rows, path in ((GEMV_MAX_ROWS, "gemv"), (GEMV_MAX_ROWS + 1, "matmul")):
        assert select.linear_choice((rows, 4096), 4096, 4096, "f16", None, True, H200).path == path
        assert select.linear_choice((rows, 4096), 4096, 4096, "f32", None, True, H200).path == "gemv"
        assert select.linear_choice((rows, 4096), 4096, 4096, "f16", "q8_0", True, H200).path == "gemv_q"


@pytest.mark.parametrize("rows", [1, DECODE_ROWS, DECODE_ROWS + 1])
def test_linear_path(rows):
    decode = rows <= DECODE_ROWS
    assert select.linear_path(rows, False, 0, True, H200) == ("gemv" if decode else "matmul")
    assert select.linear_path(rows, False, 0, False, H200) == "matmul"  # no fused kernel for the dtype
    assert select.linear_path(rows, True, 40_000, True, H200) == ("gemv_q" if decode else "dequant_matmul")
    # a row too long for the GEMV's shared memory: dequantize + matmul even for decode
    assert select.linear_path(rows, True, H200.smem_optin, True, H200) == "dequant_matmul"


def test_decode_like():
    assert select.decode_like([1, 1, DECODE_ROWS]) and select.decode_like([])
    assert not select.decode_like([1, DECODE_ROWS + 1])


def _ops(D, aligned=True, row_stride=None):
    st = (4 * D * 64, row_stride or D, 1)
    addr = 0 if aligned else 8
    return [((4, 64, D), st, addr, -1), ((4, D, 64), (4 * D * 64, 1, row_stride or D), 0, -2),
            ((4, 64, D), st, 0, -1)]


def test_flash_ok():
    T = FLASH_MIN_QUERIES
    assert select.flash_ok("f16", 128, 128, T, _ops(128), H200)
    assert select.flash_ok("bf16", 64, 64, T, _ops(64), H200)
    assert not select.flash_ok("f16", 128, 128, T - 1, _ops(128), H200)       # too few queries
    assert not select.flash_ok("f32", 128, 128, T, _ops(128), H200)           # no f32 variant
    assert select.flash_ok("f16", 96, 96, T, _ops(96), H200)                  # Phi-3
    assert select.flash_ok("bf16", 80, 80, T, _ops(80), H200)                 # Phi-2
    assert select.flash_ok("f16", 256, 256, T, _ops(256), H200)               # Gemma
    assert not select.flash_ok("f16", 256, 256, T, _ops(256), ADA)            # 166 KB of shared memory
    assert select.flash_ok("f16", 128, 128, T, _ops(128), ADA)
    assert not select.flash_ok("f16", 72, 72, T, _ops(72), H200)
    assert not select.flash_ok("f16", 128, 64, T, _ops(128), H200)            # Dv != D
    assert not select.flash_ok("f16", 128, 128, T, _ops(128), TURING)         # sm_75
    assert not select.flash_ok("f16", 128, 128, T, _ops(128, aligned=False), H200)
    assert not select.flash_ok("f16", 128, 128, T, _ops(128, row_stride=132), H200)  # stride not 16-byte


def test_attn_splits():
    # decode over a long cache: splits of ATTN_CHUNK keys, the pipelined kernel
    sp = select.attn_splits(1, 32, 8192, 128, 128)
    assert sp.grid == (1, 32, 8192 // ATTN_CHUNK) and sp.chunk == ATTN_CHUNK and sp.kind == "pipe" and sp.maxd == 128
    # many rows: at most 4096 split rows in all
    sp = select.attn_splits(512, 512 * 32, 8192, 64, 64)
    assert sp.grid[2] == 1 and sp.chunk == 8192 and sp.kind == "split" and sp.maxd == 64
    # a sliding window bounds the keys each row reads
    sp = select.attn_splits(1, 8, 32768, 128, 128, window=4096)
    assert sp.grid[2] * sp.chunk >= 4096 and sp.grid[2] == 4096 // ATTN_CHUNK
    assert select.attn_splits(1, 0, 100, 64, 64) is None
    assert select.attn_splits(5, 5, 100, 256, 256).maxd == 256 and select.attn_splits(5, 5, 100, 8, 8).kind == "split"


def test_attn_splits_gqa():
    # a key head's query group per block (attn_gqa): f16 / bf16, heads of 64 or 128, <= 16 rows
    sp = select.attn_splits(1, 32, 40960, 128, 128, group=4, dtype="f16", caps=H200)
    assert sp.kind == "gqa" and sp.chunk == GQA_MIN_CHUNK and sp.maxd == 128
    assert sp.grid == (1, 8, -(-GQA_BLOCKS_PER_SM * H200.sm_count // 8))  # ~2 blocks per SM in all
    assert select.attn_splits(1, 9, 100, 64, 64, group=3, dtype="bf16", caps=H200).grid == (1, 3, 2)  # <= S / 64
    assert select.attn_splits(1, 32, 8192, 128, 128, window=64, group=4, dtype="f16", caps=H200).grid[2] == 1
    for dt, d, group, caps in (("f32", 128, 4, H200), ("f16", 256, 4, H200), ("f16", 80, 4, H200),
                               ("f16", 128, 17, H200), ("f16", 128, 4, TURING), ("f16", 128, 4, None)):
        assert select.attn_splits(1, 4 * group, 8192, d, d, group=group, dtype=dt, caps=caps).kind == "pipe"


def test_gqa_group_reads_the_layout():
    """gqa_group: the query rows per key head of attention / attention_store nodes that attn_gqa
    can read (broadcast key head, contiguous head elements, 8-element strides), else 0."""
    from conftest import attention_views
    sess = tg.Session(backend="numpy")
    K = sess.persistent((2, 64, 128), tg.float16, name="K")
    V = sess.persistent((2, 64, 128), tg.float16, name="V")
    sess.finalize()
    kt, vv = attention_views(K, V)
    g = sess.graph()
    q = g.input((2, 4, 1, 128), tg.float16)
    assert select.gqa_group(tg.attention(q, kt, vv, 0.1, True, 3)) == 4
    q3 = g.input((2, 4, 3, 128), tg.float16)
    assert select.gqa_group(tg.attention(q3, kt, vv, 0.1, True, 3)) == 12
    # keys not broadcast over the group's heads; keys of another dtype; a head stride not of 8
    kt4 = g.input((2, 4, 128, 64), tg.float16)
    v4 = g.input((2, 4, 64, 128), tg.float16)
    assert select.gqa_group(tg.attention(q, tg.permute(tg.permute(kt4, (0, 1, 3, 2)), (0, 1, 3, 2)), v4, 0.1)) == 0
    assert select.gqa_group(tg.attention(q, g.input((2, 1, 128, 64), tg.float32), vv, 0.1)) == 0
    kt3 = tg.view(K, (2, 1, 128, 60), (64 * 128, 0, 1, 128), 3)  # element offset 3: not 16-byte aligned
    v3 = tg.view(V, (2, 1, 60, 128), (64 * 128, 0, 128, 1), 3)
    assert select.gqa_group(tg.attention(q, kt3, v3, 0.1)) == 0


def test_quant_gemv_rounds_16_bit_activations_only_when_asked() -> None:
    assert select.quant_gemv("f16") == select.quant_gemv("bf16") == select.quant_gemv("f32") == "linear_q"
    # the default per weight type: tensor cores for the k-quants with 4-byte aligned blocks, f16 only
    assert select.quant_gemv("f16", qtype="q4_k") == select.quant_gemv("f16", qtype="q6_k") == "linear_qmma"
    assert select.quant_gemv("f16", qtype="q4_1", K=8192) == "linear_qmma"
    assert select.quant_gemv("bf16", qtype="q4_k") == select.quant_gemv("f32", qtype="q4_k") == "linear_q"
    # 2-byte aligned blocks: tensor cores only for short rows
    assert select.quant_gemv("f16", qtype="q8_0", K=1536) == select.quant_gemv("f16", qtype="q5_0", K=576) == "linear_qmma"
    assert select.quant_gemv("f16", qtype="q8_0", K=2048) == select.quant_gemv("f16", qtype="q3_k", K=4096) == "linear_q"
    assert select.quant_gemv("f16", True, qtype="q4_k") == "linear_q8a"
    assert select.quant_gemv("f16", True) == select.quant_gemv("bf16", True) == "linear_q8a"
    assert select.quant_gemv("f32", True) == "linear_q"


def test_quant_gemv_named_family_and_its_fallbacks() -> None:
    assert select.quant_gemv("f16", choice="linear_qmma") == "linear_qmma"
    assert select.quant_gemv("bf16", choice="linear_qmma") == "linear_q"      # f16 tensor-core path only
    assert select.quant_gemv("f16", choice="linear_qmma", caps=select.DeviceCaps(arch=75)) == "linear_q"
    assert select.quant_gemv("f32", choice="linear_q8a") == "linear_q"
    assert select.quant_gemv("f16", True, choice="linear_q") == "linear_q"    # the named family wins
    with pytest.raises(ValueError, match="TINYGRAPH_QUANT_GEMV"):
        select.quant_gemv("f16", choice="mma")
    # linear_qr: q4_k rows of 256n weights up to QR_MAX_K, f16 / bf16; otherwise the default family
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q4_k", K=4096) == "linear_qr"
    assert select.quant_gemv("bf16", choice="linear_qr", qtype="q4_k", K=12288) == "linear_qr"
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q4_0", K=4096) == "linear_q"
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q8_0", K=4096) == "linear_qr"
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q6_k", K=4096) == "linear_qr"
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q6_k", K=1536) == "linear_qmma"  # rows of 1,260 bytes
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q8_0", K=4160) == "linear_q"  # not 256n
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q4_k", K=2 * select.QR_MAX_K) == "linear_qmma"
    assert select.quant_gemv("f16", choice="linear_qr", qtype="q4_k", K=32768) == "linear_qmma"  # smem
    assert select.quant_gemv("f32", choice="linear_qr", qtype="q4_k", K=4096) == "linear_q"


def test_linear_qr_is_the_default_for_large_layers_on_sm90() -> None:
    big, small = dict(K=4096, N=24576), dict(K=1024, N=2048)  # Qwen3-8B gate/up, Qwen3-0.6B q
    assert select.quant_gemv("f16", qtype="q4_k", **big) == select.quant_gemv("bf16", qtype="q4_k", **big) == "linear_qr"
    assert select.quant_gemv("f16", qtype="q6_k", **big) == "linear_qr"
    assert select.quant_gemv("f16", qtype="q4_k", **small) == "linear_qmma"   # rows shorter than QR_MIN_K
    assert select.quant_gemv("bf16", qtype="q4_k", **small) == "linear_q"
    assert select.quant_gemv("f16", qtype="q8_0", **big) == "linear_qr"
    assert select.quant_gemv("f16", qtype="q4_k", K=4096, N=4096) == "linear_qr"  # Qwen3-8B o
    for K, N in ((2048, 2560), (2048, 2048), (2048, 11264), (5632, 2048)):  # every TinyLlama GEMV
        assert select.quant_gemv("f16", qtype="q4_k", K=K, N=N) == "linear_qr"
        assert select.quant_gemv("f16", qtype="q8_0", K=K, N=N) == "linear_qr"
    assert select.quant_gemv("f16", qtype="q4_k", K=2048, N=1024) == "linear_qmma"  # Qwen3-0.6B o: fewer weights than QR_MIN_WEIGHTS
    assert select.quant_gemv("f16", qtype="q4_0", **big) == "linear_q"        # no q4_0 slices
    assert select.quant_gemv("f16", qtype="q4_k", qr=False, **big) == "linear_qmma"   # TINYGRAPH_QUANT_QR=0
    assert select.quant_gemv("f16", True, qtype="q4_k", **big) == "linear_q8a"         # int8 asked for
    assert select.quant_gemv("f16", qtype="q4_k", caps=select.DeviceCaps(arch=80), **big) == "linear_qmma"
    assert select.quant_gemv("f32", qtype="q4_k", **big) == "linear_q"
    assert select.quant_gemv("f16", qtype="q4_k", K=32768, N=4096) == "linear_qmma"  # its shared memory would not fit
    x = (1, 1, 4096)
    assert select.linear_choice(x, 24576, 4096, "f16", "q4_k", True, select.DeviceCaps()).gemv == "linear_qr"
    assert select.linear_choice(x, 24576, 4096, "f16", "q4_k", True, select.DeviceCaps(), qr=False).gemv == "linear_qmma"


def test_linear_qr_teams_and_blocks() -> None:
    # one lane per 128-weight slice, teams of 8 / 16 / 32 lanes or whole warps; blocks of <= 256
    assert [select.qr_team(K) for K in (256, 1024, 2048, 4096, 5632, 12288)] == [8, 8, 16, 32, 64, 96]
    assert [select.qr_block(K) for K in (1024, 4096, 5632, 12288, 20480, 32768)] == [256, 256, 256, 192, 160, 256]
    for K in range(256, select.QR_MAX_K + 1, 256):
        ts, bs = select.qr_team(K), select.qr_block(K)
        assert ts >= K // 128 and bs % ts == 0 and bs <= 256 and bs % 32 == 0
    # staging (row, planes, scales, sums) then the ring: 8 teams x 2 stages x 4 rows of 2,304 bytes
    assert select.linear_q_shared_bytes(4096, "linear_qr", "q4_k") == 27136 + 8 * 2 * 4 * 2304
    assert select.qr_ok("q4_k", 12288) and not select.qr_ok("q4_k", 32768)  # 191 KB fits, 434 KB does not
    assert not select.qr_ok("q4_k", 4096, select.DeviceCaps(smem_optin=163 * 1024))  # an A100's 163 KB


def test_plan_choices_cover_every_weight_product_once() -> None:
    # select.plan_choices: a pure function of the planned nodes, the device caps and the
    # environment; the CUDA backend runs it once per plan and keeps the result in ExecPlan.choices
    from tinygraph.models import load_model
    gemv = frozenset({"f32", "f16", "bf16"})
    caps = select.DeviceCaps()
    with load_model("tests/fixtures/llama", backend="numpy", dtype="float16", quantize="q8_0") as m:
        for T in (1, 40):
            g, _, _ = m.step_graph(T, "logits")
            plan = m.session._plan_for(g)
            prods = [n for n in plan.order if n.op == "linear" or (n.op == "matmul" and n.srcs[1].dtype.is_quant)]
            every = select.plan_choices(plan.order, caps, gemv, {})
            ch = {k: c for k, c in every.items() if isinstance(c, select.LinearChoice)}
            assert prods and set(ch) == {n.id for n in prods}
            # and the attention nodes' split-key launch shapes
            att = [n for n in plan.order if n.op in ("attention", "attention_store")]
            assert att and all(isinstance(every[n.id], select.AttnSplits) for n in att)
            assert set(every) == set(ch) | {n.id for n in att}
            for n in prods:  # decode rows (a prefill's last-row LM head too): the GEMV
                w = n.srcs[1] if n.op == "linear" else n.srcs[1].storage
                rows = n.srcs[0].size // w.shape[1]
                assert ch[n.id].path == ("gemv_q" if rows <= DECODE_ROWS else "dequant_matmul"), (n.name, rows)
                assert (ch[n.id].gemv is None) == (ch[n.id].path != "gemv_q")
            if T == 1:  # short q8_0 rows: tensor cores; the environment names another family
                assert {c.gemv for c in ch.values()} == {"linear_qmma"}
                for env, fam in (({"TINYGRAPH_QUANT_ACT": "int8"}, "linear_q8a"), ({"TINYGRAPH_QUANT_GEMV": "linear_q"}, "linear_q")):
                    got = select.plan_choices(plan.order, caps, gemv, env)
                    assert {got[k].gemv for k in ch} == {fam}
            else:  # the prefill rows' GEMM (40 rows: 64-row tiles), named in the plan too
                assert {c.path for c in ch.values()} == {"gemv_q", "dequant_matmul"}
                assert {c.matmul for c in ch.values() if c.path == "dequant_matmul"} == {"matmul_tc3s_m64"}
                got = select.plan_choices(plan.order, caps, gemv, {"TINYGRAPH_SMALL_M": "0"})
                assert {got[k].matmul for k in ch if got[k].path == "dequant_matmul"} <= {
                    select.tc3_variant(t, caps) for t in (1, 10 ** 6)}
                assert all(c.matmul is None for c in ch.values() if c.path == "gemv_q")
    with load_model("tests/fixtures/llama", backend="numpy", dtype="float32") as m:
        g, _, _ = m.step_graph(1, "logits")
        ch = select.plan_choices(m.session._plan_for(g).order, caps, gemv, {})
        lin = [c for c in ch.values() if isinstance(c, select.LinearChoice)]
        assert lin and {(c.path, c.gemv) for c in lin} == {("gemv", None)}


def test_the_lowering_launches_gemm_tma_with_maps_of_its_operands(monkeypatch) -> None:
    # recorded without a GPU (tests/cuda_record.py, an sm_90 device faked): a 100-token prefill
    # step's projections launch gemm_tma128 over (row tiles, column tiles), with tensor maps of
    # A [100, K] (128-row boxes) and the weight [N, K] (128-row boxes); TINYGRAPH_WGMMA=0: none
    import ctypes
    from cuda_record import record_launches
    from tinygraph.backends.cuda import gemm_launch
    from tinygraph.models import load_model
    maps: list[tuple] = []
    monkeypatch.setattr(gemm_launch, "_TMAPS", {})  # no fake map may outlive the test
    monkeypatch.setattr(gemm_launch, "_encode", lambda *key: maps.append(key) or (ctypes.c_uint64 * 16)())
    with load_model("tests/fixtures/llama", backend="numpy", dtype="float16") as m:
        g, _, _ = m.step_graph(100, "logits")
        rec = record_launches(g, m.session._plan_for(g))
        tma = [r for r in rec if r[0].startswith("gemm_tma")]
        assert tma and all(r[0] == "gemm_tma128_f16" and r[2] == [384, 1, 1] for r in tma)
        for r in tma:
            M, N, K = r[5][4:7]  # after C, ldc and the two maps
            cols = 64 if r[5][-1] == 3 else 128  # swiglu: half a tile of outputs
            assert M == 100 and r[1] == [1, -(-N // cols), 1]
        a_maps = [k for k in maps if k[4] == 128 and k[1] == 100]
        w_maps = [k for k in maps if k[1] != 100]
        assert a_maps and w_maps and all(k[3] % 8 == 0 and k[5] == "f16" for k in maps)
        monkeypatch.setenv("TINYGRAPH_WGMMA", "0")
        g, _, _ = m.step_graph(100, "hidden")  # a new plan: the choices are made again
        assert not any(r[0].startswith("gemm_tma") for r in record_launches(g, m.session._plan_for(g)))
