// linear_qmma.cu -- the decode GEMV with ggml block-quantized weights on tensor cores (f16).
//
// Semantics: those of linear_q (linear_q.cu): y = act(norm(x) @ dequant(w).T + bias) + res for a
// few rows of x, w the file's raw blocks (row n at byte n * ldw), float32 accumulation. What it
// rounds: the normalised row to float16 (as the unfused path stores it) and each weight, as
// scale * code, to float16 (as the prefill path's dequantization does); the products are exact
// and summed in float32 by the tensor cores, the per-run offsets (m * sum h, types with mins) in
// float32 by the CUDA cores.
//
// Signature (Q = q8_0 | ... | q6_k, as linear_q; f16 activations only):
//   linear_qmma_Q_f16(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K)
//     Design: a block computes tiles of 16 weight rows (16 output columns, or for swiglu 8 gate
//       rows and their 8 up rows), one tile at a time. Its 8 warps split K: a warp takes steps of
//       4 consecutive 32-weight units (decode_i8 of quant_blocks.cuh), lane (g, t) = (lane / 4,
//       lane % 4) decoding unit t of rows g and g + 8 -- exactly the rows of mma.m16n8k16's A
//       fragment that the lane holds -- so each step is 8 mma with k-slots (2t, 2t+1, 2t+8,
//       2t+9) = 4 consecutive weights of the lane's own unit, and B = the staged row at those
//       weights (every column of B alike). Codes become float16 without I2F: a byte b under
//       0x64 is the half 1024 + b (one PRMT for two), minus the type's offset (exact), times the
//       run's scale (one HMUL2). Why: the float path spends ~3 instructions per weight and the
//       int8 one rounds the activations; here it is ~1.5 and one tensor-core op per 256.
//       The warps' partial sums meet in shared memory; the first 16 threads finish the tile.
//     Launch: grid = rows * C blocks (C tile blocks, any C is correct); block = 256 threads;
//       dynamic shared memory ceil(K/4)*4*4 + K*2 + K/8*4 bytes (quant_launch.linear_q_shared_bytes).
#include "linear_common.cuh"
#include "mma.cuh"
#include "quant_blocks.cuh"

extern __shared__ float lqm_smem[];

#ifndef TG_LQM_MINB
#define TG_LQM_MINB 2  // resident blocks per SM the kernel is compiled for
#endif
#ifndef TG_LQM_UNROLL
#define TG_LQM_UNROLL 2  // steps per warp unrolled (their weight loads issued together)
#endif

// Per type: the code offset folded into the float16 conversion (so that scale * (code - off) is
// the weight, the type's constant offset included) and whether the type has per-run mins left
// for the float32 offset term. decode_i8 gives q8_0's codes as signed bytes: flipped to unsigned.
template <class Q> struct LqmCodes { static constexpr int OFF = 0; static constexpr bool MIN = true; static constexpr unsigned FLIP = 0; };
template <> struct LqmCodes<QQ8_0> { static constexpr int OFF = 128; static constexpr bool MIN = false; static constexpr unsigned FLIP = 0x80808080u; };
template <> struct LqmCodes<QQ4_0> { static constexpr int OFF = 8; static constexpr bool MIN = false; static constexpr unsigned FLIP = 0; };
template <> struct LqmCodes<QQ5_0> { static constexpr int OFF = 16; static constexpr bool MIN = false; static constexpr unsigned FLIP = 0; };
template <> struct LqmCodes<QQ3_K> { static constexpr int OFF = 4; static constexpr bool MIN = false; static constexpr unsigned FLIP = 0; };
template <> struct LqmCodes<QQ6_K> { static constexpr int OFF = 32; static constexpr bool MIN = false; static constexpr unsigned FLIP = 0; };

// Bytes (sel 0x4140: 0 and 1; 0x4342: 2 and 3) of 4 unsigned codes as a half2 of
// scale * (code - off): 0x64XX is the half 1024 + XX, exact for XX < 1024.
__device__ __forceinline__ unsigned lqm_half2(unsigned codes, unsigned sel, __half2 off, __half2 scale) {
    const unsigned u = __byte_perm(codes, 0x64646464u, sel);
    const __half2 v = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&u), off), scale);
    return *reinterpret_cast<const unsigned*>(&v);
}

// One step of a lane: unit u (< nunits, else a zero contribution) of rows wa, wb, split in its
// loads and decoding (lqm_load: the codes and run scales in registers) and its products
// (lqm_mma), so that a step's loads can be issued before the kernel waits for its predecessor.
template <class Q>
struct LqmUnit {
    int qa[8], qb[8];
    float da[Q::RUNS], ma[Q::RUNS], db[Q::RUNS], mb[Q::RUNS];
    int blk, s;
};

template <class Q>
__device__ __forceinline__ void lqm_load(LqmUnit<Q>& v, const unsigned char* wa, const unsigned char* wb, int u,
                                         int nunits) {
    const bool ok = u < nunits;
    const int uc = ok ? u : nunits - 1;  // a valid unit, loaded and weighted by zero
    v.blk = uc / Q::NSUB;
    v.s = uc - v.blk * Q::NSUB;
    Q::decode_i8(wa + (long long)v.blk * Q::BB, v.s, v.qa, v.da, v.ma);
    Q::decode_i8(wb + (long long)v.blk * Q::BB, v.s, v.qb, v.db, v.mb);
#pragma unroll
    for (int r = 0; r < Q::RUNS; ++r) {
        v.da[r] = ok ? v.da[r] : 0.0f;
        v.db[r] = ok ? v.db[r] : 0.0f;
        v.ma[r] = ok ? v.ma[r] : 0.0f;
        v.mb[r] = ok ? v.mb[r] : 0.0f;
    }
}

// The step's products with the staged row (h16, its sums of 8 hsum): c the mma accumulators,
// mpa / mpb the float32 offset terms of the two rows.
template <class Q>
__device__ __forceinline__ void lqm_mma(const LqmUnit<Q>& v, const __half* h16, const float* hsum, float* c,
                                        float& mpa, float& mpb) {
    using C = LqmCodes<Q>;
    const __half2 off = __float2half2_rn(1024.0f + (float)C::OFF);
    constexpr int PR = Q::RL / 4;  // code words per run
#pragma unroll
    for (int r = 0; r < Q::RUNS; ++r) {
        const __half2 sa = __float2half2_rn(v.da[r]), sb = __float2half2_rn(v.db[r]);
        const int e0 = v.blk * Q::QK + Q::start(v.s, r);
#pragma unroll
        for (int i = 0; i < PR; ++i) {
            const unsigned ca = (unsigned)v.qa[r * PR + i] ^ C::FLIP, cb = (unsigned)v.qb[r * PR + i] ^ C::FLIP;
            const unsigned a[4] = {lqm_half2(ca, 0x4140u, off, sa), lqm_half2(cb, 0x4140u, off, sb),
                                   lqm_half2(ca, 0x4342u, off, sa), lqm_half2(cb, 0x4342u, off, sb)};
            const uint2 bv = *reinterpret_cast<const uint2*>(h16 + e0 + 4 * i);
            const unsigned b[2] = {bv.x, bv.y};
            MmaOp<__half>::run(c, a, b);
        }
        if constexpr (C::MIN) {
            float hs = 0.0f;
#pragma unroll
            for (int i = 0; i < Q::RL / 8; ++i) hs += hsum[e0 / 8 + i];
            mpa = fmaf(v.ma[r], hs, mpa);
            mpb = fmaf(v.mb[r], hs, mpb);
        }
    }
}

template <class Q>
__device__ __forceinline__ void linear_qmma_body(__half* y, const TD& yd, const __half* x, const TD& xd,
                                                 const unsigned char* w, long long ldw, const __half* bias,
                                                 const __half* res, const TD& rd, const __half* nw,
                                                 const __half* nbias, float eps, int norm, int act, int N, int K) {
    __shared__ float scratch[32];
    __shared__ float red[8][16];
    const long long rows = td_rows(yd);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const long long grp = (long long)blockIdx.x % rows, cb = (long long)blockIdx.x / rows;
    const long long ncb = (long long)gridDim.x / rows;
    if (cb >= ncb) return;
    const int rs = (K + 3) & ~3;
    float* hrow = lqm_smem;                                            // the staged row, float32
    __half* h16 = reinterpret_cast<__half*>(lqm_smem + rs);            // rounded to float16
    float* hsum = lqm_smem + rs + ((K * 2 + 15) & ~15) / 4;            // sums of 8 of h16
    const int P = act == 3 ? 2 : 1, ncols = act == 3 ? N / 2 : N, half = act == 3 ? N / 2 : 0;
    const int per = 16 / P;                         // output columns per tile
    const int ntiles = (ncols + per - 1) / per;
    const int nunits = K / Q::QK * Q::NSUB, nsteps = (nunits + 3) / 4;
    const int spw = (nsteps + nwarps - 1) / nwarps;  // steps per warp (a uniform count)

    // weight row of tile row i (0..15): a valid row for columns past the end (computed, unused)
    auto wrow = [&](int tile, int i) -> const unsigned char* {
        int c = tile * per + (P == 2 ? (i & 7) : i);
        c = c < ncols ? c : ncols - 1;
        return w + (long long)((P == 2 && i >= 8) ? c + half : c) * ldw;
    };

    tg_pdl_trigger();
    lin_norm_prefetch<__half>(K, norm, nw, nbias);
    // While the previous kernel may still run (the launch allows it only when nothing in the
    // graph writes w; see tg_pdl_enter): this warp's first step of its first tile loaded into
    // registers, the rest of that tile's rows brought into L2 -- for small layers that is most
    // of the kernel's memory traffic, off the critical path (as linear.cu loads its first weights)
    LqmUnit<Q> first;
    lqm_load<Q>(first, wrow((int)cb, g), wrow((int)cb, g + 8), 4 * warp + t, nunits);
    if ((int)cb < ntiles && ldw <= 64 * 128)
        for (long long off = 128LL * tid; off < 16 * ldw; off += 128LL * blockDim.x)
            tg_prefetch_l2(wrow((int)cb, (int)(off / ldw)) + off % ldw);
    tg_pdl_wait();
    lin_stage_row<__half, 8>(hrow, x + td_row_offset_bcast(xd, yd, grp), xd.st[3], K, 0, norm, nw, nbias, eps,
                             scratch);
    __syncthreads();
    for (int gi = tid; gi < K / 8; gi += blockDim.x) {
        const float4 a = *reinterpret_cast<const float4*>(hrow + 8 * gi);
        const float4 b = *reinterpret_cast<const float4*>(hrow + 8 * gi + 4);
        const __half2 p[4] = {__floats2half2_rn(a.x, a.y), __floats2half2_rn(a.z, a.w),
                              __floats2half2_rn(b.x, b.y), __floats2half2_rn(b.z, b.w)};
        *reinterpret_cast<uint4*>(h16 + 8 * gi) = *reinterpret_cast<const uint4*>(p);
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) s += __low2float(p[j]) + __high2float(p[j]);
        hsum[gi] = s;
    }
    __syncthreads();

    const long long yoff = td_row_offset(yd, grp);
    const long long roff = res ? td_row_offset_bcast(rd, yd, grp) : 0;
    for (int tile = (int)cb; tile < ntiles; tile += (int)ncb) {
        const unsigned char* wa = wrow(tile, g);
        const unsigned char* wb = wrow(tile, g + 8);
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        float mpa = 0.0f, mpb = 0.0f;
        int j0 = 0;
        if (tile == (int)cb) {  // the step loaded before the wait
            lqm_mma<Q>(first, h16, hsum, c, mpa, mpb);
            j0 = 1;
        }
        constexpr int UNR = TG_LQM_UNROLL;
#pragma unroll UNR
        for (int j = j0; j < spw; ++j) {
            LqmUnit<Q> v;
            lqm_load<Q>(v, wa, wb, 4 * (warp + j * nwarps) + t, nunits);
            lqm_mma<Q>(v, h16, hsum, c, mpa, mpb);
        }
        // c[0] (= c[1]): row g's sum over this warp's steps, c[2]: row g + 8's; the offset terms
        // are per lane (its own units): summed over the 4 lanes of the row
        mpa += __shfl_xor_sync(0xffffffffu, mpa, 1);
        mpa += __shfl_xor_sync(0xffffffffu, mpa, 2);
        mpb += __shfl_xor_sync(0xffffffffu, mpb, 1);
        mpb += __shfl_xor_sync(0xffffffffu, mpb, 2);
        if (t == 0) {
            red[warp][g] = c[0] + mpa;
            red[warp][g + 8] = c[2] + mpb;
        }
        __syncthreads();
        if (tid < per) {
            float a0 = 0.0f, a1 = 0.0f;
            for (int k = 0; k < nwarps; ++k) {
                a0 += red[k][tid];
                if (P == 2) a1 += red[k][tid + 8];
            }
            const int col = tile * per + tid;
            if (col < ncols) y[yoff + (long long)col * yd.st[3]] = __float2half_rn(
                lin_epilogue(a0, a1, col, half, P, act, bias, res, roff, rd));
        }
        __syncthreads();
    }
}

#define TG_LINEAR_QMMA(Q, qn)                                                                       \
    extern "C" __global__ void __launch_bounds__(256, TG_LQM_MINB) linear_qmma_##qn##_f16(                \
        __half* y, TD yd, const __half* x, TD xd, const unsigned char* w, long long ldw, const __half* bias, \
        const __half* res, TD rd, const __half* norm_w, const __half* norm_b, float eps, int norm, int act,   \
        int N, int K) {                                                                              \
        linear_qmma_body<Q>(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K);    \
    }
TG_QUANT_TYPES(TG_LINEAR_QMMA)
