// linear_q.cuh -- linear layers and embedding rows with ggml block-quantized weights: the kernel
// bodies and TG_LINEAR_Q(Q, qn), which instantiates one weight type's kernels. Two translation
// units instantiate them (so that a cold kernel cache compiles them side by side, each in about half
// the time of one file): linear_q.cu the 32-weight block types, linear_q_k.cu the k-quants.
//
// Semantics: the graph ops `linear` and `get_rows` (tinygraph/ops.py) with a weight of a ggml
// block type, i.e. the same math on the weight's dequantized values (tinygraph/quant.py), float32
// accumulation. Weights are the file's raw blocks: row n of an [N, K] weight starts at byte
// n * ldw (ldw = K / QK * BB for a whole matrix). Types and their decoding: quant_blocks.cuh.
//
// Signatures (Q = q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | q2_k | q3_k | q4_k | q5_k | q6_k;
//             T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   linear_q_Q_T(T* y, TD yd, const T* x, TD xd, const uchar* w, long long ldw, const T* bias,
//                const T* res, TD rd, const T* norm_w, const T* norm_b, float eps, int norm,
//                int act, int N, int K)
//       y = act(norm(x) @ dequant(w).T + bias) + res, parameters as linear_gemv (linear.cu),
//       except w (bytes, row stride ldw bytes). K a multiple of the type's block (32 or 256).
//     Design: one block per (row of x, range of columns). The block stages its row of x,
//       normalised, as float32 in dynamic shared memory (linear_common.cuh) plus the sums of
//       each group of 8 staged values; each warp then computes whole output columns: its lanes
//       take the 32-weight units of the row in turn (unit u: block u / NSUB, unit u % NSUB),
//       decode them in registers and accumulate d * sum(q * h) + m * sum(h) per run (one FMA per
//       weight). A warp works on two weight rows at once -- the gate and up rows of a swiglu
//       output, else two output columns -- so each activation read from shared memory serves
//       two rows (shared-memory bandwidth, not DRAM, bounded the one-row loop).
//     Launch: grid = rows * C blocks (C column blocks; any C is correct); block = 256 threads;
//       dynamic shared memory (ceil(K/4)*4 + K + K/8 + K/8) * 4 bytes (linear_q_shared_bytes).
//   linear_q8a_Q_T(...)  the same parameters and launch; the normalised row is rounded to int8
//       per block of 32 (scale max|h| / 127, ggml's q8_1 scheme) and the products of weight codes
//       and activations are 4-wide integer dot products (dp4a), float32 per run after that; the
//       offset terms (m * sum h) use the rounded row's sums. What it adds to the error: the rounding
//       of the activations, ~0.3-0.5% of a product's size on normal data (llama.cpp's CUDA backend
//       does the same). Why: the float path spends ~3 instructions per weight on decoding and
//       FMAs, which bounded it below memory speed (0.9-1.2 TB/s of q4_k on the H200).
//       Dynamic shared memory (ceil(K/4)*4 + K/8 + K/32) * 4 + K bytes (linear_q_shared_bytes).
//   dequant_Q_T(T* out, TD od, const uchar* w, long long ldw, const int* ids)
//       out [.., K] row r = dequant(weight row ids ? ids[r] : r), rows = od.ne[0..2] (out any
//       strides; the last axis contiguous). The embedding lookup of a quantized table (get_rows)
//       and the prefill path of linear_q: a layer's weight dequantized into scratch, then the
//       tensor-core GEMM.
//     Launch: 1-D grid-stride loop over (row, unit) pairs, 256 threads.
#pragma once
#include "linear_common.cuh"
#include "quant_blocks.cuh"

extern __shared__ float lq_smem[];

#ifndef TG_LQ_ROWS
#define TG_LQ_ROWS 2  // weight rows per warp at once in linear_q8a (2 or 4)
#endif
#ifndef TG_LQ_UNROLL
#define TG_LQ_UNROLL 4  // units per lane in flight in linear_q8a (H200, Qwen3-8B shapes: 4 beat 2 by 0-10%)
#endif
#ifndef TG_LQ_PREFETCH
#define TG_LQ_PREFETCH 0  // >0: linear_q8a prefetches into L1 the unit this many trips ahead (untimed)
#endif
#ifndef TG_LQ_MINB
#define TG_LQ_MINB 3  // resident blocks per SM linear_q8a is compiled for
#endif

// Shared-memory index of staged element k: 4 floats of padding after every 32, so that the
// lanes of a warp, reading the runs of consecutive 32-weight units (starts 32 floats apart for
// the 32-element types), hit different banks with their 16-byte loads instead of one
// (H200: q8_0 / q4_0 GEMVs ran at 450-800 GB/s with the unpadded row). Runs never cross a
// multiple of 32, so a run stays contiguous.
__device__ __forceinline__ int lq_pad(int k) { return k + ((k >> 5) << 2); }

// The float path's dot products of unit s of block blk of weight rows wr[0 .. nr-1] (R at most)
// with the staged row: h padded (lq_pad), hsum its sums of 8; added to acc[0 .. nr-1].
template <class Q, int R>
__device__ __forceinline__ void lq_unit_f32(const unsigned char* const* wr, int nr, int blk, int s, const float* h,
                                            const float* hsum, float* acc) {
    float hr[32], hs[Q::RUNS];  // this unit's activations and their run sums
    const float* hb = h + lq_pad(blk * Q::QK);
    const float* sb = hsum + blk * (Q::QK / 8);
#pragma unroll
    for (int r = 0; r < Q::RUNS; ++r) {
        const int st = Q::start(s, r);
#pragma unroll
        for (int i = 0; i < Q::RL; i += 4)
            *reinterpret_cast<float4*>(hr + r * Q::RL + i) = *reinterpret_cast<const float4*>(hb + lq_pad(st) + i);
        hs[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < Q::RL / 8; ++i) hs[r] += sb[st / 8 + i];
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (k >= nr) break;
        float q[32], d[Q::RUNS], m[Q::RUNS];
        Q::decode(wr[k] + (long long)blk * Q::BB, s, q, d, m);
#pragma unroll
        for (int r = 0; r < Q::RUNS; ++r) {
            float dot0 = 0.0f, dot1 = 0.0f;  // two chains of dependent FMAs
#pragma unroll
            for (int i = 0; i < Q::RL; i += 2) {
                dot0 = fmaf(q[r * Q::RL + i], hr[r * Q::RL + i], dot0);
                dot1 = fmaf(q[r * Q::RL + i + 1], hr[r * Q::RL + i + 1], dot1);
            }
            // q holds 1 + code / 2^E (quant_blocks.cuh: qv)
            acc[k] = fmaf(d[r] * (float)(1 << Q::E), (dot0 + dot1) - hs[r], fmaf(m[r], hs[r], acc[k]));
        }
    }
}

// The int8 path's dot products of unit s of block blk of rows wr[0 .. R-1] with the quantized
// row: aq int8 codes, ascale their scale per 32, hsum the sums of 8 of the rounded values (for
// the offset terms m * sum h: the same rounded row on both sides keeps the error that of w * h).
// Codes times activations are 4-wide integer dot products (dp4a): about 1/4 of the float path's
// instructions per weight, which is what kept that one from reading memory at full speed.
template <class Q, int R>
__device__ __forceinline__ void lq_unit_i8(const unsigned char* const* wr, int blk, int s,
                                           const signed char* aq, const float* ascale, const float* hsum,
                                           float* acc) {
    int av[8];
    float da[Q::RUNS], hs[Q::RUNS];
#pragma unroll
    for (int r = 0; r < Q::RUNS; ++r) {
        const int st = blk * Q::QK + Q::start(s, r);
        if constexpr (Q::RL == 8) {
            const uint2 v = *reinterpret_cast<const uint2*>(aq + st);
            av[2 * r] = (int)v.x;
            av[2 * r + 1] = (int)v.y;
        } else {
#pragma unroll
            for (int c = 0; c < Q::RL / 16; ++c) {
                const uint4 v = *reinterpret_cast<const uint4*>(aq + st + 16 * c);
                int* o = av + r * (Q::RL / 4) + 4 * c;
                o[0] = (int)v.x; o[1] = (int)v.y; o[2] = (int)v.z; o[3] = (int)v.w;
            }
        }
        da[r] = ascale[st >> 5];
        hs[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < Q::RL / 8; ++i) hs[r] += hsum[st / 8 + i];
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {  // rows past nr repeat a valid row: computed, not used (no branch)
        int qw[8];
        float d[Q::RUNS], m[Q::RUNS];
        Q::decode_i8(wr[k] + (long long)blk * Q::BB, s, qw, d, m);
#pragma unroll
        for (int r = 0; r < Q::RUNS; ++r) {
            int isum = 0;
#pragma unroll
            for (int i = 0; i < Q::RL / 4; ++i) isum = __dp4a(qw[r * (Q::RL / 4) + i], av[r * (Q::RL / 4) + i], isum);
            acc[k] = fmaf(d[r] * da[r], (float)isum, fmaf(m[r], hs[r], acc[k]));
        }
    }
}

// Round the staged row hrow [K] to int8 per block of 32 (scale max|h| / 127, to nearest) into aq,
// its scales into ascale, and the sums of each 8 rounded values into hsum. Thread t of a pass takes
// 8 values, so the 4 threads of a 32-block are lanes 4c..4c+3 of one warp.
__device__ __forceinline__ void lq_quantize_row(const float* hrow, int K, signed char* aq, float* ascale,
                                                float* hsum) {
    const int ng = K / 8;
    for (int g0 = 0; g0 < ng; g0 += blockDim.x) {  // uniform trip count: every lane reaches the shuffles
        const int g = g0 + threadIdx.x;
        float v[8], sum;  // sum: kept only where not finite
        const float amax = lin_load8_amax32(hrow, g, ng, v, sum);
        if (g < ng) {
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            unsigned p[2] = {0u, 0u};
            int isum = 0;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int q = __float2int_rn(v[e] * inv);
                isum += q;
                p[e >> 2] |= ((unsigned)q & 0xFFu) << (8 * (e & 3));
            }
            *reinterpret_cast<uint2*>(aq + 8 * g) = make_uint2(p[0], p[1]);
            // the sum of the rounded values; a NaN / Inf in the row reaches the output through it
            hsum[g] = isfinite(sum) ? (amax / 127.0f) * (float)isum : sum;
            if ((g & 3) == 0) ascale[g >> 2] = amax / 127.0f;
        }
    }
}

template <typename T, class Q, bool I8>
__device__ __forceinline__ void linear_q_body(T* y, const TD& yd, const T* x, const TD& xd,
                                              const unsigned char* w, long long ldw, const T* bias,
                                              const T* res, const TD& rd, const T* nw, const T* nbias,
                                              float eps, int norm, int act, int N, int K) {
    __shared__ float scratch[32];
    const long long rows = td_rows(yd);
    const int tid = threadIdx.x, lane = tid & 31, nwarps = blockDim.x >> 5;
    const long long grp = (long long)blockIdx.x % rows, cb = (long long)blockIdx.x / rows;
    const long long ncb = (long long)gridDim.x / rows;
    if (cb >= ncb) return;
    const int rs = (K + 3) & ~3;
    float* hrow = lq_smem;  // the staged row, element k at k
    // float path: the row again with lq_pad's padding, then sums of 8 consecutive values;
    // int8 path: int8 codes [K] (16-byte aligned: rs is a multiple of 4), sums of 8, scales per 32
    float* h = lq_smem + rs;
    float* hsum = I8 ? reinterpret_cast<float*>(reinterpret_cast<signed char*>(h) + K) : h + lq_pad(K);
    float* ascale = hsum + K / 8;
    const int ncols = act == 3 ? N / 2 : N, half = act == 3 ? N / 2 : 0, P = act == 3 ? 2 : 1;
    const int nunits = K / Q::QK * Q::NSUB;

    constexpr int R = I8 ? TG_LQ_ROWS : 2;
    const int wstride = (int)ncb * nwarps;
    tg_pdl_trigger();
    lin_norm_prefetch<T>(K, norm, nw, nbias);
    // Before waiting for the previous kernel: bring the weight rows of this warp's first columns
    // into L2 (the launch lets the kernel start early only when nothing in the graph writes w),
    // so that their fetch overlaps that kernel's tail and the staging below, as linear.cu does.
    if (ldw <= 64 * 128) {
        const int c0 = (int)cb * nwarps + (tid >> 5);
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int c = c0 + (P == 2 ? k / 2 : k) * wstride;
            if (c >= ncols) break;
            const unsigned char* wrow = w + (long long)((P == 2 && (k & 1)) ? c + half : c) * ldw;
            for (long long off = 128 * lane; off < ldw; off += 32 * 128) tg_prefetch_l2(wrow + off);
        }
    }
    tg_pdl_wait();
    lin_stage_row<T, 16 / sizeof(T)>(hrow, x + td_row_offset_bcast(xd, yd, grp), xd.st[3], K, 0, norm, nw,
                                     nbias, eps, scratch);
    __syncthreads();
    if constexpr (I8) {
        lq_quantize_row(hrow, K, reinterpret_cast<signed char*>(h), ascale, hsum);
    } else {
        for (int g = tid; g < K / 8; g += blockDim.x) {
            const float4 a = *reinterpret_cast<const float4*>(hrow + 8 * g);
            const float4 b = *reinterpret_cast<const float4*>(hrow + 8 * g + 4);
            *reinterpret_cast<float4*>(h + lq_pad(8 * g)) = a;
            *reinterpret_cast<float4*>(h + lq_pad(8 * g + 4)) = b;
            hsum[g] = ((a.x + a.y) + (a.z + a.w)) + ((b.x + b.y) + (b.z + b.w));
        }
    }
    __syncthreads();

    const long long yoff = td_row_offset(yd, grp);
    const long long roff = res ? td_row_offset_bcast(rd, yd, grp) : 0;
    // Each warp computes R weight rows at once, sharing the staged activations it reads from
    // shared memory and keeping R rows' loads in flight: R / P output columns (wstride apart),
    // each one row, or for swiglu (P = 2) its gate and up rows.
    const int step = R / P * wstride;
    for (int col = (int)cb * nwarps + (tid >> 5); col < ncols; col += step) {
        const unsigned char* wr[R];
        int nr = 0;  // rows in use: those of the columns below ncols (a prefix)
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int c = col + (P == 2 ? k / 2 : k) * wstride;
            const int row = (P == 2 && (k & 1)) ? c + half : c;
            const bool ok = c < ncols;
            wr[k] = w + (long long)(ok ? row : col) * ldw;
            nr += ok ? 1 : 0;
        }
        if (P == 2 && (R & 1)) nr &= ~1;
        float acc[R];
#pragma unroll
        for (int k = 0; k < R; ++k) acc[k] = 0.0f;
        if constexpr (I8) {
            constexpr int UNROLL = TG_LQ_UNROLL;
#pragma unroll UNROLL
            for (int u = lane; u < nunits; u += 32) {
                const int blk = u / Q::NSUB;
                if (TG_LQ_PREFETCH > 0 && u + 32 * TG_LQ_PREFETCH < nunits) {
                    // the unit TG_LQ_PREFETCH trips ahead into L1: its loads then wait on L1,
                    // not DRAM (the loop issues each unit's loads just before their use)
                    const int pb = (u + 32 * TG_LQ_PREFETCH) / Q::NSUB;
#pragma unroll
                    for (int k = 0; k < R; ++k) tg_prefetch_l1(wr[k] + (long long)pb * Q::BB);
                }
                lq_unit_i8<Q, R>(wr, blk, u - blk * Q::NSUB, reinterpret_cast<const signed char*>(h), ascale,
                                 hsum, acc);
            }
        } else {
#pragma unroll 1
            for (int u = lane; u < nunits; u += 32) {
                const int blk = u / Q::NSUB;
                lq_unit_f32<Q, R>(wr, nr, blk, u - blk * Q::NSUB, h, hsum, acc);
            }
        }
#pragma unroll
        for (int k = 0; k < R; ++k) acc[k] = k < nr ? warp_sum(acc[k]) : 0.0f;
        if (lane == 0) {
#pragma unroll
            for (int j = 0; j < R / P; ++j) {
                if (P * j >= nr) break;
                const int c = col + j * wstride;
                const float a = lin_epilogue(acc[P * j], P == 2 ? acc[2 * j + 1] : 0.0f, c, half, P, act, bias, res,
                                             roff, rd);
                y[yoff + (long long)c * yd.st[3]] = from_f32<T>(a);
            }
        }
    }
}

// Store RL consecutive values at o: 16-byte stores where o is 16-byte aligned (a contiguous
// scratch or embedding row), else one element at a time.
template <typename T>
__device__ __forceinline__ unsigned lq_pack2(float a, float b);
template <>
__device__ __forceinline__ unsigned lq_pack2<__half>(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const unsigned*>(&h);
}
template <>
__device__ __forceinline__ unsigned lq_pack2<__nv_bfloat16>(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const unsigned*>(&h);
}
template <>
__device__ __forceinline__ unsigned lq_pack2<float>(float a, float) { return __float_as_uint(a); }

template <typename T, int RL>
__device__ __forceinline__ void lq_store_run(T* o, const float* v) {
    constexpr int PER = 16 / sizeof(T);  // elements per 16-byte store
    if (RL % PER == 0 && (reinterpret_cast<unsigned long long>(o) & 15) == 0) {
#pragma unroll
        for (int c = 0; c < RL / PER; ++c) {
            uint4 u;
            if constexpr (sizeof(T) == 4) {
                u = make_uint4(__float_as_uint(v[4 * c]), __float_as_uint(v[4 * c + 1]),
                               __float_as_uint(v[4 * c + 2]), __float_as_uint(v[4 * c + 3]));
            } else {
                const float* w = v + PER * c;
                u = make_uint4(lq_pack2<T>(w[0], w[1]), lq_pack2<T>(w[2], w[3]), lq_pack2<T>(w[4], w[5]),
                               lq_pack2<T>(w[6], w[7]));
            }
            reinterpret_cast<uint4*>(o)[c] = u;
        }
    } else {
#pragma unroll
        for (int e = 0; e < RL; ++e) o[e] = from_f32<T>(v[e]);
    }
}

// dequant: tiles of 256 32-weight units (whole blocks: NSUB divides 256). A thread decodes one
// unit into the tile in shared memory, then the block writes the tile's 8192 values out as 16-byte
// chunks, consecutive threads consecutive chunks (a unit's runs are not contiguous, e.g. q4_k's two
// runs of 16 are 32 apart: stored directly, a warp's stores were half-sector pieces). Indices are
// 32-bit while the unit count allows (64-bit divisions cost ~100 instructions each).
#define DQ_TILE 256
template <typename T, class Q, typename I>
__device__ __forceinline__ void dequant_tiles(T* out, const TD& od, const unsigned char* w, long long ldw,
                                              const int* ids, T* tile) {
    constexpr int PER = 16 / sizeof(T);  // values per 16-byte chunk
    const I K = (I)od.ne[3], nunits = K / 32, rows = (I)td_rows(od), total = rows * nunits;
    // a contiguous output: value f of the flattened [rows, K] is at out + f
    const bool flat = od.st[3] == 1 && od.st[2] == (long long)K && od.st[1] == od.ne[2] * od.st[2] &&
                      od.st[0] == od.ne[1] * od.st[1];
    for (I u0 = (I)blockIdx.x * DQ_TILE; u0 < total; u0 += (I)gridDim.x * DQ_TILE) {
        const I u = u0 + (I)threadIdx.x;
        if (u < total) {
            const I row = u / nunits, ur = u - row * nunits, blk = ur / Q::NSUB;
            const int s = (int)(ur - blk * Q::NSUB);
            const long long src = ids ? (long long)ids[row] : (long long)row;
            float q[32], d[Q::RUNS], m[Q::RUNS];
            Q::decode(w + src * ldw + (long long)blk * Q::BB, s, q, d, m);
            T* o = tile + (threadIdx.x / Q::NSUB) * Q::QK;
#pragma unroll
            for (int r = 0; r < Q::RUNS; ++r) {
                float v[Q::RL];
                const float dr = d[r] * (float)(1 << Q::E);
#pragma unroll
                for (int e = 0; e < Q::RL; ++e) v[e] = fmaf(dr, q[r * Q::RL + e] - 1.0f, m[r]);
                lq_store_run<T, Q::RL>(o + Q::start(s, r), v);
            }
        }
        __syncthreads();
        const I nval = (total - u0 < (I)DQ_TILE ? total - u0 : (I)DQ_TILE) * 32;
        for (I c = (I)threadIdx.x * PER; c < nval; c += DQ_TILE * PER) {
            const I f = u0 * 32 + c;  // flat index of the chunk's first value (chunks never cross rows)
            long long off = (long long)f;
            if (!flat) {
                const I row = f / K;
                off = td_row_offset(od, (long long)row) + (long long)(f - row * K);
            }
            T* dst = out + off;
            if ((reinterpret_cast<unsigned long long>(dst) & 15) == 0) {
                *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(tile + c);
            } else {  // a view whose rows are not 16-byte aligned
#pragma unroll
                for (int e = 0; e < PER; ++e) dst[e] = tile[c + e];
            }
        }
        __syncthreads();
    }
}

template <typename T, class Q>
__device__ __forceinline__ void dequant_body(T* out, const TD& od, const unsigned char* w, long long ldw,
                                             const int* ids) {
    __shared__ __align__(16) T tile[DQ_TILE * 32];
    tg_pdl_enter();
    if (td_numel(od) < (1LL << 31))
        dequant_tiles<T, Q, unsigned>(out, od, w, ldw, ids, tile);
    else
        dequant_tiles<T, Q, long long>(out, od, w, ldw, ids, tile);
}

#define TG_LINEAR_Q_T(Q, qn, T, sfx)                                                               \
    extern "C" __global__ void __launch_bounds__(256, 3) linear_q_##qn##_##sfx(                          \
        T* y, TD yd, const T* x, TD xd, const unsigned char* w, long long ldw, const T* bias,         \
        const T* res, TD rd, const T* norm_w, const T* norm_b, float eps, int norm, int act, int N,   \
        int K) {                                                                                      \
        linear_q_body<T, Q, false>(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K); \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256, TG_LQ_MINB) linear_q8a_##qn##_##sfx(                        \
        T* y, TD yd, const T* x, TD xd, const unsigned char* w, long long ldw, const T* bias,         \
        const T* res, TD rd, const T* norm_w, const T* norm_b, float eps, int norm, int act, int N,   \
        int K) {                                                                                      \
        linear_q_body<T, Q, true>(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K); \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) dequant_##qn##_##sfx(                           \
        T* out, TD od, const unsigned char* w, long long ldw, const int* ids) {                       \
        dequant_body<T, Q>(out, od, w, ldw, ids);                                                     \
    }
#define TG_LINEAR_Q(Q, qn) \
    TG_LINEAR_Q_T(Q, qn, float, f32) TG_LINEAR_Q_T(Q, qn, __half, f16) TG_LINEAR_Q_T(Q, qn, __nv_bfloat16, bf16)
