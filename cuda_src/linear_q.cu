// linear_q.cu -- linear layers and embedding rows with ggml block-quantized weights.
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
//   dequant_Q_T(T* out, TD od, const uchar* w, long long ldw, const int* ids)
//       out [.., K] row r = dequant(weight row ids ? ids[r] : r), rows = od.ne[0..2] (out any
//       strides; the last axis contiguous). The embedding lookup of a quantized table (get_rows)
//       and the prefill path of linear_q: a layer's weight dequantized into scratch, then the
//       tensor-core GEMM.
//     Launch: 1-D grid-stride loop over (row, unit) pairs, 256 threads.
#include "linear_common.cuh"
#include "quant_blocks.cuh"

extern __shared__ float lq_smem[];

// Shared-memory index of staged element k: 4 floats of padding after every 32, so that the
// lanes of a warp, reading the runs of consecutive 32-weight units (starts 32 floats apart for
// the 32-element types), hit different banks with their 16-byte loads instead of one
// (H200: q8_0 / q4_0 GEMVs ran at 450-800 GB/s with the unpadded row). Runs never cross a
// multiple of 32, so a run stays contiguous.
__device__ __forceinline__ int lq_pad(int k) { return k + ((k >> 5) << 2); }

template <typename T, class Q>
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
    float* hrow = lq_smem;                 // the staged row, element k at k
    float* h = lq_smem + rs;               // the same, element k at lq_pad(k)
    float* hsum = h + lq_pad(K);           // sums of 8 consecutive staged values
    const int ncols = act == 3 ? N / 2 : N, half = act == 3 ? N / 2 : 0, P = act == 3 ? 2 : 1;
    const int nunits = K / Q::QK * Q::NSUB;

    tg_pdl_trigger();
    lin_norm_prefetch<T>(K, norm, nw, nbias);
    tg_pdl_wait();
    lin_stage_row<T, 16 / sizeof(T)>(hrow, x + td_row_offset_bcast(xd, yd, grp), xd.st[3], K, 0, norm, nw,
                                     nbias, eps, scratch);
    __syncthreads();
    for (int g = tid; g < K / 8; g += blockDim.x) {
        const float4 a = *reinterpret_cast<const float4*>(hrow + 8 * g);
        const float4 b = *reinterpret_cast<const float4*>(hrow + 8 * g + 4);
        *reinterpret_cast<float4*>(h + lq_pad(8 * g)) = a;
        *reinterpret_cast<float4*>(h + lq_pad(8 * g + 4)) = b;
        hsum[g] = ((a.x + a.y) + (a.z + a.w)) + ((b.x + b.y) + (b.z + b.w));
    }
    __syncthreads();

    const long long yoff = td_row_offset(yd, grp);
    const long long roff = res ? td_row_offset_bcast(rd, yd, grp) : 0;
    // Each warp computes two weight rows at once, sharing the staged activations it reads from
    // shared memory: the gate and up rows of one swiglu output, or two output columns.
    const int wstride = (int)ncb * nwarps;
    const int step = P == 2 ? wstride : 2 * wstride;
    for (int col = (int)cb * nwarps + (tid >> 5); col < ncols; col += step) {
        const int col2 = P == 2 ? col + half : col + wstride;  // the second row
        const bool two = P == 2 || col2 < ncols;
        const unsigned char* wa = w + (long long)col * ldw;
        const unsigned char* wb = w + (long long)(two ? col2 : col) * ldw;
        float acc[2] = {0.0f, 0.0f};
#pragma unroll 1
        for (int u = lane; u < nunits; u += 32) {
            const int blk = u / Q::NSUB, s = u - blk * Q::NSUB;
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
            for (int k = 0; k < 2; ++k) {
                if (k == 1 && !two) break;
                float q[32], d[Q::RUNS], m[Q::RUNS];
                Q::decode((k ? wb : wa) + (long long)blk * Q::BB, s, q, d, m);
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
        const float z0 = warp_sum(acc[0]), z1 = two ? warp_sum(acc[1]) : 0.0f;
        if (lane == 0) {
            const float b0 = bias ? to_f32(bias[col]) : 0.0f;
            const float b1 = (bias && two) ? to_f32(bias[col2]) : 0.0f;
            if (P == 2) {
                float a = lin_silu(z0 + b0) * (z1 + b1);
                if (res) a += to_f32(res[roff + (long long)col * rd.st[3]]);
                y[yoff + (long long)col * yd.st[3]] = from_f32<T>(a);
            } else {
                float a = lin_act(z0 + b0, act);
                if (res) a += to_f32(res[roff + (long long)col * rd.st[3]]);
                y[yoff + (long long)col * yd.st[3]] = from_f32<T>(a);
                if (two) {
                    a = lin_act(z1 + b1, act);
                    if (res) a += to_f32(res[roff + (long long)col2 * rd.st[3]]);
                    y[yoff + (long long)col2 * yd.st[3]] = from_f32<T>(a);
                }
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

template <typename T, class Q>
__device__ __forceinline__ void dequant_body(T* out, const TD& od, const unsigned char* w, long long ldw,
                                             const int* ids) {
    tg_pdl_enter();
    const long long rows = td_rows(od);
    const int K = (int)od.ne[3];
    const int nunits = K / Q::QK * Q::NSUB;
    const long long total = rows * nunits;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / nunits;
        const int u = (int)(i - row * nunits), blk = u / Q::NSUB, s = u - blk * Q::NSUB;
        const long long src = ids ? (long long)ids[row] : row;
        float q[32], d[Q::RUNS], m[Q::RUNS];
        Q::decode(w + src * ldw + (long long)blk * Q::BB, s, q, d, m);
        T* o = out + td_row_offset(od, row) + (long long)blk * Q::QK;
#pragma unroll
        for (int r = 0; r < Q::RUNS; ++r) {
            float v[Q::RL];
            const float dr = d[r] * (float)(1 << Q::E);
#pragma unroll
            for (int e = 0; e < Q::RL; ++e) v[e] = fmaf(dr, q[r * Q::RL + e] - 1.0f, m[r]);
            lq_store_run<T, Q::RL>(o + Q::start(s, r), v);
        }
    }
}

#define TG_LINEAR_Q_T(Q, qn, T, sfx)                                                               \
    extern "C" __global__ void __launch_bounds__(256, 3) linear_q_##qn##_##sfx(                          \
        T* y, TD yd, const T* x, TD xd, const unsigned char* w, long long ldw, const T* bias,         \
        const T* res, TD rd, const T* norm_w, const T* norm_b, float eps, int norm, int act, int N,   \
        int K) {                                                                                      \
        linear_q_body<T, Q>(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K); \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) dequant_##qn##_##sfx(                           \
        T* out, TD od, const unsigned char* w, long long ldw, const int* ids) {                       \
        dequant_body<T, Q>(out, od, w, ldw, ids);                                                     \
    }
#define TG_LINEAR_Q(Q, qn) \
    TG_LINEAR_Q_T(Q, qn, float, f32) TG_LINEAR_Q_T(Q, qn, __half, f16) TG_LINEAR_Q_T(Q, qn, __nv_bfloat16, bf16)
TG_QUANT_TYPES(TG_LINEAR_Q)
