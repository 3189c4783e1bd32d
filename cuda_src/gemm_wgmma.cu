// gemm_wgmma.cu -- Hopper (sm_90a) tensor-core GEMM for prefill: C[M, N] = A[M, K] @ W[N, K]^T
// with float32 accumulators, fed by TMA.
//
// gemm_tma<BN>_T(T* C, long long ldc, TgTmap tmA, TgTmap tmW, int M, int N, int K,
//                 const T* bias, const T* res, long long ldr, int act)
//   T = __half (f16) | __nv_bfloat16 (bf16); BN = 128 | 192 | 256 tile columns.
//   With the linear epilogue fused (as linear_epilogue in linear.cu, on the float32 sums):
//   C = act(A @ W^T + bias) + res; bias [N] or NULL, res row-major [M, N] (row stride ldr) or NULL
//   (it may be C itself); act 0 none, 1 gelu (tanh), 2 silu, 3 swiglu: then W has 2N rows (gate
//   rows [0, N), up rows [N, 2N)), bias 2N, and C = silu(gate + bias[j]) * (up + bias[N + j]) + res:
//   a block's W tile is BN / 2 gate rows and the same BN / 2 up rows (two TMA boxes of BN / 2 rows;
//   tmW's box is BN / 2 rows then), so the tile holds both factors of its outputs (columns q and
//   q + BN / 2) and the block writes BN / 2 columns. The epilogue reads the tile staged in shared
//   memory (gt_epilogue).
//   A row-major [M, K], W row-major [N, K] (a linear's HF weight), C row-major [M, N] (row stride
//   ldc elements). tmA / tmW: TMA tensor maps (cuTensorMapEncodeTiled; gemm_launch.tensor_map) of
//   A (box 64 x 128) and W (box 64 x BN), 128-byte swizzle, zeros past the edges, so ragged M, N,
//   K need nothing more; C is written only inside. Launch: grid (ceil(M / 128), ceil(N / BN))
//   (swiglu: ceil(N / (BN / 2))) --
//   the row tiles that share a W tile run side by side, so W streams from memory about once --
//   block 384, GT_SMEM(BN) bytes of dynamic shared memory (opt-in: > 48 KB).
// Design: a block computes a 128 x BN tile of C. Warpgroup 0 is the producer: one thread waits
//   for a free stage of the ring (mbarrier `empty`), arms the stage's `full` barrier with its byte
//   count and issues the two TMA copies (A's 128 x 64 tile, W's BN x 64 tile). Warpgroups 1 and 2
//   consume rows [0, 64) and [64, 128): wait for `full`, issue 4 wgmma.m64nBNk16 (k16 each; both
//   operands K-major from shared memory, so neither is transposed), keep one wgmma group running
//   and release the stage the previous group read (all 256 consumer threads arrive on `empty`).
//   Phases: stage s = kt % ST is filled for the (kt / ST)-th time; waits test parity (kt / ST) & 1
//   (`empty`'s first wait per stage tests the parity before the first phase: it passes at once).
// Shared memory of a stage: A's 128 rows of 128 bytes, then W's BN rows, as TMA's 128-byte swizzle
//   writes them (16-byte chunk c of row r at r * 128 + ((c ^ (r % 8)) * 16), every tile
//   1024-byte aligned). wgmma descriptor: start >> 4, leading byte offset 1 (unused for swizzled
//   K-major), stride byte offset 1024 >> 4 (8 rows of 128 bytes), swizzle mode 1 (128 B) in bits
//   62-63; the k-th k16 step starts 32 * k bytes further.
// Accumulator fragment (warp w of the warpgroup, lane l): for each n8 block j, d[4j..4j+3] are
//   (row 16 w + l / 4, cols 8 j + 2 (l % 4) + {0, 1}) and the same 8 rows further.
#include "linear_common.cuh"
#include "mma.cuh"

#define GW_BM 128
#define GW_BK 64
#define GW_A_BYTES (GW_BM * GW_BK * 2)                     // A's tile: 16 KB

// TMA tensor map: 128 opaque bytes, passed by value as a __grid_constant__ parameter
struct alignas(64) TgTmap { unsigned long long v[16]; };

#define GT_STAGES(BN) ((BN) == 256 ? 4 : (BN) == 192 ? 5 : 6)  // ~200 KB of ring
#define GT_STAGE_BYTES(BN) ((GW_BM + (BN)) * GW_BK * 2)
#define GT_SMEM(BN) (GT_STAGES(BN) * GT_STAGE_BYTES(BN) + 1024 + 256)  // + alignment, + barriers

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ unsigned long long gw_desc(unsigned saddr) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

template <typename T, int BN> struct GwMma;
#define GW_MMA128(T, ty)                                                                            \
    template <> struct GwMma<T, 128> {                                                                \
        static __device__ __forceinline__ void run(float* d, unsigned long long da,                \
                                                   unsigned long long db, int accumulate) {       \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                              \
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32." ty "." ty " "              \
                         "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                \
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                                 \
                         : "l"(da), "l"(db), "r"(accumulate));                                     \
        }                                                                                          \
    };
#define GW_MMA256(T, ty)                                                                            \
    template <> struct GwMma<T, 256> {                                                                \
        static __device__ __forceinline__ void run(float* d, unsigned long long da,                \
                                                   unsigned long long db, int accumulate) {       \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                              \
                         "wgmma.mma_async.sync.aligned.m64n256k16.f32." ty "." ty " "              \
                         "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                \
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])                                                                 \
                         : "l"(da), "l"(db), "r"(accumulate));                                     \
        }                                                                                          \
    };
#define GW_MMA192(T, ty)                                                                            \
    template <> struct GwMma<T, 192> {                                                                \
        static __device__ __forceinline__ void run(float* d, unsigned long long da,                \
                                                   unsigned long long db, int accumulate) {       \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"                              \
                         "wgmma.mma_async.sync.aligned.m64n192k16.f32." ty "." ty " "              \
                         "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95}, %96, %97, p, 1, 1, 0, 0;\n}\n"                                \
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])                                                                 \
                         : "l"(da), "l"(db), "r"(accumulate));                                     \
        }                                                                                          \
    };
GW_MMA128(__half, "f16")
GW_MMA128(__nv_bfloat16, "bf16")
GW_MMA192(__half, "f16")
GW_MMA192(__nv_bfloat16, "bf16")
GW_MMA256(__half, "f16")
GW_MMA256(__nv_bfloat16, "bf16")
#undef GW_MMA128
#undef GW_MMA192
#undef GW_MMA256


__device__ __forceinline__ void gt_bar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void gt_bar_wait(unsigned bar, unsigned parity) {
    asm volatile("{\n.reg .pred p;\nGT_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra GT_WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void gt_bar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void gt_bar_expect(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// a box of a 2-D tensor map at (inner coordinate c0, outer c1) into shared memory, completing on bar
__device__ __forceinline__ void gt_tma(unsigned dst, const TgTmap* tm, int c0, int c1, unsigned bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"(dst), "l"(reinterpret_cast<unsigned long long>(tm)), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}

// floats per staged tile row (+8: the fragments' float2 stores meet at most 2-way bank conflicts)
#define GT_LD(BN) ((BN) + 8)

// The fused linear epilogue over a staged 128 x BN float32 tile ``st`` (row stride GT_LD(BN)),
// by the 256 consumer threads (``tid``): output (m0 + r, n0 + q) = act(st[r][q] + bias) + res, or
// for swiglu (act 3) silu(st[r][q] + bias[n0 + q]) * (st[r][q + BN / 2] + bias[N + n0 + q]) + res;
// each thread takes runs of 8 columns of one row (16-byte loads of res and stores of C where the
// run is whole and aligned; element by element at the right edge).
template <typename T, int BN>
__device__ __forceinline__ void gt_epilogue(T* C, long long ldc, const float* st, int m0, int n0, int M, int N,
                                            const T* bias, const T* res, long long ldr, int act, int tid) {
    const bool glu = act == 3;
    const int cols = glu ? BN / 2 : BN, runs = cols / 8;
    const bool vec = (ldc & 7) == 0 && (reinterpret_cast<unsigned long long>(C) & 15) == 0 &&
                     (!res || ((ldr & 7) == 0 && (reinterpret_cast<unsigned long long>(res) & 15) == 0));
    for (int e = tid; e < GW_BM * runs; e += 256) {
        const int r = e / runs, q = (e % runs) * 8, gr = m0 + r, gc = n0 + q;
        if (gr >= M || gc >= N) continue;
        const float* srow = st + r * GT_LD(BN) + q;
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const bool in = gc + k < N;
            float x = srow[k];
            if (glu) {
                const float u = srow[k + BN / 2] + (bias && in ? to_f32(bias[N + gc + k]) : 0.0f);
                x = lin_silu(x + (bias && in ? to_f32(bias[gc + k]) : 0.0f)) * u;
            } else {
                x = lin_act(x + (bias && in ? to_f32(bias[gc + k]) : 0.0f), act);
            }
            v[k] = x;
        }
        T* out = C + (long long)gr * ldc + gc;
        if (vec && gc + 8 <= N) {
            if (res) {
                const uint4 rv = *reinterpret_cast<const uint4*>(res + (long long)gr * ldr + gc);
                const T* rp = reinterpret_cast<const T*>(&rv);
#pragma unroll
                for (int k = 0; k < 8; ++k) v[k] += to_f32(rp[k]);
            }
            uint4 o;
            o.x = pack2(v[0], v[1], T());
            o.y = pack2(v[2], v[3], T());
            o.z = pack2(v[4], v[5], T());
            o.w = pack2(v[6], v[7], T());
            *reinterpret_cast<uint4*>(out) = o;
        } else {
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                if (gc + k >= N) break;
                float x = v[k];
                if (res) x += to_f32(res[(long long)gr * ldr + gc + k]);
                out[k] = from_f32<T>(x);
            }
        }
    }
}

template <typename T, int BN>
__device__ __forceinline__ void gemm_tma(T* C, long long ldc, const TgTmap* tmA, const TgTmap* tmW, int M, int N,
                                         int K, const T* bias, const T* res, long long ldr, int act) {
    constexpr int ST = GT_STAGES(BN), SB = GT_STAGE_BYTES(BN);
    extern __shared__ unsigned char gw_raw[];
    unsigned char* sm = gw_raw + ((1024 - (smem_u32(gw_raw) & 1023)) & 1023);
    const unsigned ring = smem_u32(sm), full = smem_u32(sm + ST * SB), empty = full + 8 * ST;
    const bool glu = act == 3;
    const int m0 = blockIdx.x * GW_BM, n0 = blockIdx.y * (glu ? BN / 2 : BN);  // row tiles vary fastest
    const int wg = threadIdx.x / 128;
    const int kt_n = (K + GW_BK - 1) / GW_BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; ++s) {
            gt_bar_init(full + 8 * s, 1);
            gt_bar_init(empty + 8 * s, 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    tg_pdl_trigger();
    tg_pdl_wait();
    if (wg == 0) {  // producer
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < kt_n; ++kt) {
                const int s = kt % ST;
                gt_bar_wait(empty + 8 * s, ((kt / ST) & 1) ^ 1);
                gt_bar_expect(full + 8 * s, SB);
                gt_tma(ring + s * SB, tmA, kt * GW_BK, m0, full + 8 * s);
                if (glu) {  // gate rows n0.., then up rows N + n0..
                    gt_tma(ring + s * SB + GW_A_BYTES, tmW, kt * GW_BK, n0, full + 8 * s);
                    gt_tma(ring + s * SB + GW_A_BYTES + (BN / 2) * 128, tmW, kt * GW_BK, N + n0, full + 8 * s);
                } else {
                    gt_tma(ring + s * SB + GW_A_BYTES, tmW, kt * GW_BK, n0, full + 8 * s);
                }
            }
        }
        return;
    }
    const int c = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0.0f;
    for (int kt = 0; kt < kt_n; ++kt) {
        const int s = kt % ST;
        gt_bar_wait(full + 8 * s, (kt / ST) & 1);
        const unsigned a0 = ring + s * SB + c * 64 * 128, b0 = ring + s * SB + GW_A_BYTES;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < GW_BK / 16; ++kk)
            GwMma<T, BN>::run(d, gw_desc(a0 + 32 * kk), gw_desc(b0 + 32 * kk), kt > 0 || kk > 0);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        if (kt > 0) gt_bar_arrive(empty + 8 * ((kt - 1) % ST));  // the previous group is done with it
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    // The epilogue runs on the tile staged in shared memory (the ring: every load has landed and
    // been read once both consumer warpgroups pass the first barrier), as a plain loop -- one copy
    // of the activation code (unrolled over the fragments it made the kernel 10x larger and up to
    // 2x slower, H200) -- whose 8-column runs become 16-byte coalesced stores.
    float* st = reinterpret_cast<float*>(sm);
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    {
        const int rr = c * 64 + warp * 16 + lane / 4;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            const int cc = 8 * j + 2 * (lane % 4);
            *reinterpret_cast<float2*>(st + rr * GT_LD(BN) + cc) = make_float2(d[4 * j], d[4 * j + 1]);
            *reinterpret_cast<float2*>(st + (rr + 8) * GT_LD(BN) + cc) = make_float2(d[4 * j + 2], d[4 * j + 3]);
        }
    }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    gt_epilogue<T, BN>(C, ldc, st, m0, n0, M, N, bias, res, ldr, act, threadIdx.x - 128);
}
#else
template <typename T, int BN>
__device__ __forceinline__ void gemm_tma(T*, long long, const TgTmap*, const TgTmap*, int, int, int, const T*,
                                         const T*, long long, int) {
    tg_pdl_enter();
    __trap();
}
#endif

#define TG_GT(T, BN, sfx)                                                                          \
    extern "C" __global__ void __launch_bounds__(384, 1) gemm_tma##BN##_##sfx(                     \
        T* C, long long ldc, const __grid_constant__ TgTmap tmA, const __grid_constant__ TgTmap tmW, \
        int M, int N, int K, const T* bias, const T* res, long long ldr, int act) {               \
        gemm_tma<T, BN>(C, ldc, &tmA, &tmW, M, N, K, bias, res, ldr, act);                      \
    }
TG_GT(__half, 128, f16)
TG_GT(__nv_bfloat16, 128, bf16)
TG_GT(__half, 192, f16)
TG_GT(__nv_bfloat16, 192, bf16)
TG_GT(__half, 256, f16)
TG_GT(__nv_bfloat16, 256, bf16)
