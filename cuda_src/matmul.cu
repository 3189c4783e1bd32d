// matmul.cu -- batched matrix products C = A @ B with arbitrary element strides, float32 accumulation.
//
// Shapes (padded to rank 4): C (b0, b1, M, N), A (a0, a1, M, K), B (c0, c1, K, N). A batch dim of
// A or B broadcasts when its ne is 1 or its stride is 0. Any strides on A and B (e.g. B =
// transpose(W) of an HF [out, in] weight has strides (1, K)); C may be strided too.
//
// Signatures (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   matmul_T    (T* C, TD cd, const T* A, TD ad, const T* B, TD bd)
//       CUDA-core tiled kernel, 64x64 output tile per block, K step 16, 4x4 outputs per thread.
//       Launch: grid = (ceil(N/64), ceil(M/64), b0*b1), block = (256, 1, 1).
//   matmul_tc3_<BK>_<ST>_T (T* C, TD cd, const T* A, TD ad, const T* B, TD bd)   T = f16 | bf16
//       tensor-core kernel (mma.sync m16n8k16, float32 accumulators, ldmatrix fragment loads),
//       128x128 output tile, 8 warps of 64x32; K tiles of BK (32 | 64) through ST (3 | 4)
//       shared-memory stages filled by 16-byte cp.async when an operand is K-contiguous and
//       aligned, scalar strided loads else. sm_80+.
//       Launch: grid = (ceil(N/128), ceil(M/128), b0*b1), block = (256, 1, 1), dynamic shared
//       memory ST * 2 * 128 * (BK + 8) * 2 bytes (kernels.tc3_shared_bytes).
//       Measured (H100, f16, B = transposed weight, TFLOP/s; BK_ST): M=512 N=K=4096: 32_3 142,
//       32_4 144, 64_3 167, 64_4 217; N=24576 K=4096: 224 / 219 / 277 / 226; M=2048 N=K=4096:
//       252 / 255 / 294 / 227. The kernel this replaced (2 stages of 32, static shared memory)
//       reached 128 / 210 / 220; kernels._tc3_variant picks the variant.
//   gemv_T      (T* C, TD cd, const T* A, TD ad, const T* B, TD bd)
//       M == 1 and B K-contiguous (bd.st[2] == 1: the transposed HF weight). Each warp computes
//       TG_GEMV_R output columns (warp-stride loop, so any grid.x is correct), 16-byte loads along
//       K when K, the row stride and the pointers allow it (else scalar loads). Decode hot path.
//       Launch: grid = (ceil(N/(R*B/32)), b0*b1, 1), block = (B, 1, 1), B a multiple of 32
//       (kernels.gemv_block_size: 256, or 128/64 for small N);
//       kernels.GEMV_ROWS_PER_WARP mirrors R.
//   gemv_nc_T   (T* C, TD cd, const T* A, TD ad, const T* B, TD bd)
//       M == 1, any B strides; coalesced when B is N-contiguous (e.g. attention probs @ V).
//       Launch: grid = (ceil(N/32), b0*b1, 1), block = (32, 8, 1).
#include "common.cuh"
#include "mma.cuh"

// Element offset of batch z (over C's batch dims) in descriptor d, with broadcasting.
__device__ __forceinline__ long long batch_offset(const TD& d, const TD& cd, long long z) {
    const long long c1 = z % cd.ne[1], c0 = z / cd.ne[1];
    return (d.ne[0] == 1 ? 0 : c0 * d.st[0]) + (d.ne[1] == 1 ? 0 : c1 * d.st[1]);
}

// ------------------------------------------------------------------------------------------------
// CUDA-core tiled kernel
// ------------------------------------------------------------------------------------------------
#define MM_BM 64
#define MM_BN 64
#define MM_BK 16

template <typename T>
__device__ __forceinline__ void matmul_tiled(T* C, const TD& cd, const T* A, const TD& ad,
                                             const T* B, const TD& bd) {
    __shared__ float As[MM_BK][MM_BM + 4];
    __shared__ float Bs[MM_BK][MM_BN + 4];
    const long long M = cd.ne[2], N = cd.ne[3], K = ad.ne[3];
    const long long z = blockIdx.z;
    const T* Ab = A + batch_offset(ad, cd, z);
    const T* Bb = B + batch_offset(bd, cd, z);
    T* Cb = C + batch_offset(cd, cd, z);
    const long long m0 = (long long)blockIdx.y * MM_BM, n0 = (long long)blockIdx.x * MM_BN;
    const long long as_m = ad.st[2], as_k = ad.st[3], bs_k = bd.st[2], bs_n = bd.st[3];
    // Choose the load mapping so that neighbouring threads read neighbouring addresses.
    const bool a_kfast = (as_k == 1) && (as_m != 1);
    const bool b_kfast = (bs_k == 1) && (bs_n != 1);
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (long long k0 = 0; k0 < K; k0 += MM_BK) {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int idx = tid + 256 * l;
            int kk, mm;
            if (a_kfast) { kk = idx % MM_BK; mm = idx / MM_BK; }
            else { mm = idx % MM_BM; kk = idx / MM_BM; }
            const long long m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? to_f32(Ab[m * as_m + k * as_k]) : 0.0f;
            int nn;
            if (b_kfast) { kk = idx % MM_BK; nn = idx / MM_BK; }
            else { nn = idx % MM_BN; kk = idx / MM_BN; }
            const long long n = n0 + nn, k2 = k0 + kk;
            Bs[kk][nn] = (n < N && k2 < K) ? to_f32(Bb[k2 * bs_k + n * bs_n]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MM_BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    const long long cs_m = cd.st[2], cs_n = cd.st[3];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long n = n0 + tx + 16 * j;
            if (n < N) Cb[m * cs_m + n * cs_n] = from_f32<T>(acc[i][j]);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Tensor-core kernel (f16 / bf16): mma.sync.m16n8k16, 8 warps as 2 (M) x 4 (N), warp tile 64x32.
// ST shared-memory stages of BK columns in dynamic shared memory (cp.async keeps ST-1 tiles in
// flight; one barrier per tile). Operands that are not K-contiguous/aligned take synchronous
// scalar loads into their stage.
// Stage layout: A [128][BK+8], then B [128][BK+8] (rows padded by 16 bytes: the 8 rows an
// ldmatrix reads start in different bank groups).
// ------------------------------------------------------------------------------------------------
template <int BK, int ROWS = 128>
__device__ __forceinline__ void tc3_load_tile(__half* S, const void* base_, long long rows, long long K,
                                              long long r0, long long k0, long long s_r, long long s_k,
                                              bool vec, bool kfast) {
    constexpr int LD = BK + 8, CPR = BK / 8;  // chunks of 8 elements per row
    constexpr int LOG2_ROWS = ROWS == 128 ? 7 : ROWS == 64 ? 6 : ROWS == 32 ? 5 : 4;
    static_assert(1 << LOG2_ROWS == ROWS, "ROWS: 16, 32, 64 or 128");
    const int tid = threadIdx.x;
    const unsigned short* base = reinterpret_cast<const unsigned short*>(base_);
    unsigned short* Su = reinterpret_cast<unsigned short*>(S);
    if (vec) {
#pragma unroll
        for (int l = 0; l < (ROWS * CPR + 255) / 256; ++l) {
            const int c = tid + 256 * l;
            if (ROWS * CPR % 256 && c >= ROWS * CPR) break;  // a tile of fewer chunks than threads
            const int rr = c / CPR, kc = (c % CPR) * 8;
            const long long r = r0 + rr, k = k0 + kc;
            const bool p = r < rows && k < K;
            cp_async16(Su + rr * LD + kc, p ? (const void*)(base + r * s_r + k) : base_, p);
        }
    } else {
#pragma unroll 4
        for (int l = 0; l < ROWS * BK / 256; ++l) {
            const int idx = tid + 256 * l;
            int rr, kk;
            if (kfast) { kk = idx % BK; rr = idx / BK; }
            else { rr = idx & (ROWS - 1); kk = idx >> LOG2_ROWS; }
            const long long r = r0 + rr, k = k0 + kk;
            Su[rr * LD + kk] = (r < rows && k < K) ? base[r * s_r + k * s_k] : (unsigned short)0;
        }
    }
}

extern __shared__ __align__(16) unsigned char tc3_smem[];

// SPLIT: blockIdx.z is a split of K (batch 1): K tiles [z * tps, (z + 1) * tps), float32 partial
// sums to P + z * M * N (row-major M x N) instead of C; matmul_splitk_reduce adds them up.
// BM: rows of the block's output tile. 128: warps 2 (M) x 4 (N), warp tile 64 x 32. 16 / 32 / 64
// (a batched decode's few rows): warps 1 x 8, warp tile BM x 16 -- the mma work per weight tile
// shrinks with the rows instead of computing 128 rows of padding; A's tile holds BM rows.
template <typename T, int BK, int ST, bool SPLIT = false, int BM = 128>
__device__ __forceinline__ void matmul_tc3(T* C, const TD& cd, const T* A, const TD& ad, const T* B,
                                           const TD& bd, float* P = nullptr, int tps = 0) {
    static_assert(BM == 128 || BM == 64 || BM == 32 || BM == 16, "BM");
    constexpr int LD = BK + 8, TILE_A = BM * LD, TILE = 128 * LD;  // elements of A's and B's tiles
    constexpr int WMR = BM == 128 ? 64 : BM, WN = BM == 128 ? 32 : 16;  // warp tile rows, columns
    constexpr int MI = WMR / 16, NJ = WN / 8;                          // its m16 and n8 tiles
    __half* sm = reinterpret_cast<__half*>(tc3_smem);
    const long long M = cd.ne[2], N = cd.ne[3], K = ad.ne[3];
    const long long z = SPLIT ? 0 : blockIdx.z;
    const T* Ab = A + batch_offset(ad, cd, z);
    const T* Bb = B + batch_offset(bd, cd, z);
    T* Cb = C + batch_offset(cd, cd, z);
    const long long m0 = (long long)blockIdx.y * BM, n0 = (long long)blockIdx.x * 128;
    const long long as_m = ad.st[2], as_k = ad.st[3], bs_k = bd.st[2], bs_n = bd.st[3];
    const bool a_vec = as_k == 1 && (K & 7) == 0 && (as_m & 7) == 0 &&
                       ((reinterpret_cast<unsigned long long>(Ab) & 15) == 0);
    const bool b_vec = bs_k == 1 && (K & 7) == 0 && (bs_n & 7) == 0 &&
                       ((reinterpret_cast<unsigned long long>(Bb) & 15) == 0);
    const bool a_kfast = as_k == 1 && as_m != 1;
    const bool b_kfast = bs_k == 1 && bs_n != 1;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = BM == 128 ? warp >> 2 : 0, wn = BM == 128 ? warp & 3 : warp;
    const int g = lane >> 2, t4 = lane & 3;
    float acc[MI][NJ][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    long long t0 = 0, ntiles = (K + BK - 1) / BK;  // this block's K tiles: t0 .. t0 + ntiles - 1
    if constexpr (SPLIT) {
        t0 = (long long)blockIdx.z * tps;
        ntiles = ntiles - t0 < tps ? ntiles - t0 : tps;
    }
    auto load = [&](long long t) {
        __half* s = sm + (int)(t % ST) * (TILE_A + TILE);
        tc3_load_tile<BK, BM>(s, Ab, M, K, m0, (t0 + t) * BK, as_m, as_k, a_vec, a_kfast);
        tc3_load_tile<BK>(s + TILE_A, Bb, N, K, n0, (t0 + t) * BK, bs_n, bs_k, b_vec, b_kfast);
    };
#pragma unroll
    for (int t = 0; t < ST - 1; ++t) {
        if (t < ntiles) load(t);
        cp_async_commit();  // possibly empty groups keep the wait count uniform
    }
    for (long long t = 0; t < ntiles; ++t) {
        cp_async_wait<ST - 2>();  // this thread's copies of tile t have landed
        __syncthreads();          // everyone's have; and everyone is done with tile t-1's stage
        if (t + ST - 1 < ntiles) load(t + ST - 1);  // into tile t-1's stage
        cp_async_commit();
        const __half* As = sm + (int)(t % ST) * (TILE_A + TILE);
        const __half* Bs = As + TILE_A;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            unsigned af[MI][4], bfr[NJ][2];
#pragma unroll
            for (int i = 0; i < MI; ++i)
                ldsm_x4(af[i][0], af[i][1], af[i][2], af[i][3],
                        As + (wm * WMR + i * 16 + (lane & 15)) * LD + ks + (lane >> 4) * 8);
#pragma unroll
            for (int jj = 0; jj < NJ / 2; ++jj)
                ldsm_x4(bfr[2 * jj][0], bfr[2 * jj][1], bfr[2 * jj + 1][0], bfr[2 * jj + 1][1],
                        Bs + (wn * WN + jj * 16 + (lane & 7) + (lane >> 4) * 8) * LD + ks + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) MmaOp<T>::run(acc[i][j], af[i], bfr[j]);
        }
    }
    cp_async_wait<0>();
    float* Pz = SPLIT ? P + (long long)blockIdx.z * M * N : nullptr;  // split-K: this split's partials
    const long long cs_m = cd.st[2], cs_n = cd.st[3];
    const bool pair = cs_n == 1 && (N & 1) == 0 && (cs_m & 1) == 0 &&
                      ((reinterpret_cast<unsigned long long>(Cb) & 3) == 0);
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long m = m0 + wm * WMR + i * 16 + g + 8 * h;
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const long long n = n0 + wn * WN + j * 8 + 2 * t4;
                const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if constexpr (SPLIT) {  // float32, row-major M x N
                    if (n < N) Pz[m * N + n] = v0;
                    if (n + 1 < N) Pz[m * N + n + 1] = v1;
                } else if (pair && n + 1 < N) {  // two neighbouring outputs as one 4-byte store
                    const T v2[2] = {from_f32<T>(v0), from_f32<T>(v1)};
                    *reinterpret_cast<unsigned*>(Cb + m * cs_m + n) = *reinterpret_cast<const unsigned*>(v2);
                } else {
                    if (n < N) Cb[m * cs_m + n * cs_n] = from_f32<T>(v0);
                    if (n + 1 < N) Cb[m * cs_m + (n + 1) * cs_n] = from_f32<T>(v1);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// GEMV, B K-contiguous (transposed [out, in] weight): one warp per output column.
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x, float) {
    return __uint_as_float(w.x) * __uint_as_float(x.x) + __uint_as_float(w.y) * __uint_as_float(x.y) +
           __uint_as_float(w.z) * __uint_as_float(x.z) + __uint_as_float(w.w) * __uint_as_float(x.w);
}
template <typename T>
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x, T tag) {
    float s = 0.0f;
    const unsigned wa[4] = {w.x, w.y, w.z, w.w};
    const unsigned xa[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const float2 wf = h2f(wa[q], tag), xf = h2f(xa[q], tag);
        s = fmaf(wf.x, xf.x, s);
        s = fmaf(wf.y, xf.y, s);
    }
    return s;
}

template <int S> struct Ld16;
template <> struct Ld16<0> {  // read-only path (L1-cached)
    static __device__ __forceinline__ uint4 f(const uint4* p) { return __ldg(p); }
};
template <> struct Ld16<1> {  // streaming (evict-first): weights are read once per step
    static __device__ __forceinline__ uint4 f(const uint4* p) { return __ldcs(p); }
};

template <typename T, int R, int U, int S>
__device__ __forceinline__ void gemv_columns(T* C, const TD& cd, const T* A, const TD& ad, const T* B,
                                             const TD& bd, long long n0, long long z, int lane);

// R output columns per warp (sharing the loads of x), U independent 16-byte loads per row and
// lane in flight, weight loads through Ld16<S>.
template <typename T, int R, int U, int S>
__device__ __forceinline__ void gemv_kernel(T* C, const TD& cd, const T* A, const TD& ad, const T* B,
                                            const TD& bd) {
    const long long N = cd.ne[3];
    const int lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const long long z = blockIdx.y;
    const long long wstride = (long long)gridDim.x * nwarps * R;
    // Warp-stride loop over groups of R columns: correct for any grid (one pass when the grid
    // has ceil(N / R) warps). Whole warps take the same path; no block-level barrier.
    for (long long n0 = ((long long)blockIdx.x * nwarps + (threadIdx.x >> 5)) * R; n0 < N; n0 += wstride)
        gemv_columns<T, R, U, S>(C, cd, A, ad, B, bd, n0, z, lane);
}

template <typename T, int R, int U, int S>
__device__ __forceinline__ void gemv_columns(T* C, const TD& cd, const T* A, const TD& ad, const T* B,
                                             const TD& bd, long long n0, long long z, int lane) {
    constexpr int VEC = 16 / sizeof(T);
    const long long N = cd.ne[3], K = ad.ne[3];
    const T* a = A + batch_offset(ad, cd, z);
    const T* Bz = B + batch_offset(bd, cd, z);
    const long long as_k = ad.st[3], bs_k = bd.st[2], bs_n = bd.st[3];
    const T* w[R];
    bool vec = bs_k == 1 && as_k == 1 && (K % VEC) == 0 &&
               ((reinterpret_cast<unsigned long long>(a) & 15) == 0);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const long long n = n0 + r < N ? n0 + r : n0;  // rows past N re-read row n0 (not stored)
        w[r] = Bz + n * bs_n;
        vec = vec && ((reinterpret_cast<unsigned long long>(w[r]) & 15) == 0);
    }
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    if (vec) {
        const uint4* a4 = reinterpret_cast<const uint4*>(a);
        const int nv = (int)(K / VEC);
        int i = lane;
        for (; i + 32 * (U - 1) < nv; i += 32 * U) {
            uint4 xv[U], wv[R][U];
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < U; ++u)
                    wv[r][u] = Ld16<S>::f(reinterpret_cast<const uint4*>(w[r]) + i + 32 * u);
#pragma unroll
            for (int u = 0; u < U; ++u) xv[u] = __ldg(a4 + i + 32 * u);
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < U; ++u) acc[r] += dot16(wv[r][u], xv[u], T());
        }
        for (; i < nv; i += 32) {
            const uint4 xv = __ldg(a4 + i);
#pragma unroll
            for (int r = 0; r < R; ++r)
                acc[r] += dot16(Ld16<S>::f(reinterpret_cast<const uint4*>(w[r]) + i), xv, T());
        }
    } else {
        for (long long k = lane; k < K; k += 32) {
            const float xk = to_f32(a[k * as_k]);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] = fmaf(xk, to_f32(w[r][k * bs_k]), acc[r]);
        }
    }
    T* c = C + batch_offset(cd, cd, z);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && n0 + r < N) c[(n0 + r) * cd.st[3]] = from_f32<T>(v);
    }
}

// ------------------------------------------------------------------------------------------------
// GEMV, generic B strides (coalesced when B is N-contiguous): block (32, 8), K split over y.
// ------------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void gemv_nc_kernel(T* C, const TD& cd, const T* A, const TD& ad,
                                               const T* B, const TD& bd) {
    __shared__ float red[8][33];
    const long long N = cd.ne[3], K = ad.ne[3];
    const long long n = (long long)blockIdx.x * 32 + threadIdx.x;
    const long long z = blockIdx.y;
    const T* a = A + batch_offset(ad, cd, z);
    const T* b = B + batch_offset(bd, cd, z);
    const long long as_k = ad.st[3], bs_k = bd.st[2], bs_n = bd.st[3];
    float acc = 0.0f;
    if (n < N)
        for (long long k = threadIdx.y; k < K; k += blockDim.y)
            acc = fmaf(to_f32(a[k * as_k]), to_f32(b[k * bs_k + n * bs_n]), acc);
    red[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && n < N) {
        float s = 0.0f;
        for (int y = 0; y < (int)blockDim.y; ++y) s += red[y][threadIdx.x];
        C[batch_offset(cd, cd, z) + n * cd.st[3]] = from_f32<T>(s);
    }
}

// The configuration behind gemv_<dtype>: rows per warp, loads in flight, load flavour.
#ifndef TG_GEMV_R
#define TG_GEMV_R 1
#endif
#ifndef TG_GEMV_U
#define TG_GEMV_U 4
#endif
#ifndef TG_GEMV_S
#define TG_GEMV_S 0
#endif

#define TG_MATMUL(T, sfx)                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        matmul_##sfx(T* C, TD cd, const T* A, TD ad, const T* B, TD bd) { tg_pdl_enter();      \
        matmul_tiled<T>(C, cd, A, ad, B, bd);                                                  \
    }                                                                                          \
    extern "C" __global__ void gemv_##sfx(T* C, TD cd, const T* A, TD ad, const T* B, TD bd) { tg_pdl_enter(); \
        gemv_kernel<T, TG_GEMV_R, TG_GEMV_U, TG_GEMV_S>(C, cd, A, ad, B, bd);                  \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        gemv_nc_##sfx(T* C, TD cd, const T* A, TD ad, const T* B, TD bd) { tg_pdl_enter();     \
        gemv_nc_kernel<T>(C, cd, A, ad, B, bd);                                                \
    }
TG_MATMUL(float, f32)
TG_MATMUL(__half, f16)
TG_MATMUL(__nv_bfloat16, bf16)

// Tuning variants of the GEMV, compiled only with -DTG_GEMV_TUNING (not part of the registry;
// tests/test_cuda_lowlevel.py checks and times them): gemv_tune_<R>_<U>_<S>_<dtype>.
// Measured on an H100 (4096x4096 weight): R=1 is best (R=2: -12%, R=4: -20%); U in 2..8, the
// block size (128..512) and streaming loads change < 3% (noise level).
#ifdef TG_GEMV_TUNING
#define TG_GEMV_TUNE(R, U, S, T, sfx)                                                          \
    extern "C" __global__ void gemv_tune_##R##_##U##_##S##_##sfx(T* C, TD cd, const T* A, TD ad, \
                                                               const T* B, TD bd) { tg_pdl_enter(); \
        gemv_kernel<T, R, U, S>(C, cd, A, ad, B, bd);                                          \
    }
#define TG_GEMV_TUNE_ALL(T, sfx)                                                               \
    TG_GEMV_TUNE(1, 2, 0, T, sfx) TG_GEMV_TUNE(1, 4, 0, T, sfx) TG_GEMV_TUNE(1, 8, 0, T, sfx)  \
    TG_GEMV_TUNE(1, 4, 1, T, sfx) TG_GEMV_TUNE(2, 2, 0, T, sfx) TG_GEMV_TUNE(2, 4, 0, T, sfx)  \
    TG_GEMV_TUNE(4, 1, 0, T, sfx) TG_GEMV_TUNE(4, 2, 0, T, sfx) TG_GEMV_TUNE(2, 2, 1, T, sfx)
TG_GEMV_TUNE_ALL(__half, f16)
TG_GEMV_TUNE_ALL(float, f32)
#endif  // TG_GEMV_TUNING

// matmul_tc3_<BK>_<ST>_<dtype>: dynamic shared memory ST * 2 * 128 * (BK + 8) * 2 bytes.
#define TG_MATMUL_TC3(BK, ST, T, sfx)                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        matmul_tc3_##BK##_##ST##_##sfx(T* C, TD cd, const T* A, TD ad, const T* B, TD bd) {    \
        tg_pdl_enter();                                                                        \
        matmul_tc3<T, BK, ST>(C, cd, A, ad, B, bd);                                            \
    }
#define TG_MATMUL_TC3_ALL(T, sfx) \
    TG_MATMUL_TC3(32, 3, T, sfx) TG_MATMUL_TC3(32, 4, T, sfx) TG_MATMUL_TC3(64, 3, T, sfx) TG_MATMUL_TC3(64, 4, T, sfx)
TG_MATMUL_TC3_ALL(__half, f16)
TG_MATMUL_TC3_ALL(__nv_bfloat16, bf16)

// Split-K for products with few output tiles (a batched decode's M <= 64 rows): K tiles split over
// grid.z blocks of matmul_tc3s (4 stages of 64), partial sums added in split order by the reduce.
// matmul_tc3s_m<BM>: the same with output tiles of BM x 128 (grid (N/128, M/BM, splits); dynamic
// shared memory 4 * (BM + 128) * 72 * 2 bytes), for M <= BM <= 64.
#define TG_MATMUL_TC3S_M(BM, T, sfx)                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        matmul_tc3s_m##BM##_##sfx(float* P, const T* A, TD ad, const T* B, TD bd, TD cd, int tps) { \
        tg_pdl_enter();                                                                        \
        matmul_tc3<T, 64, 4, true, BM>(nullptr, cd, A, ad, B, bd, P, tps);                     \
    }
#define TG_MATMUL_SPLITK(T, sfx)                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        matmul_tc3s_##sfx(float* P, const T* A, TD ad, const T* B, TD bd, TD cd, int tps) {    \
        tg_pdl_enter();                                                                        \
        matmul_tc3<T, 64, 4, true>(nullptr, cd, A, ad, B, bd, P, tps);                         \
    }                                                                                          \
    TG_MATMUL_TC3S_M(16, T, sfx) TG_MATMUL_TC3S_M(32, T, sfx) TG_MATMUL_TC3S_M(64, T, sfx)     \
    extern "C" __global__ void matmul_splitk_reduce_##sfx(T* C, TD cd, const float* P, int splits) { \
        tg_pdl_enter();                                                                        \
        const long long M = cd.ne[2], N = cd.ne[3];                                            \
        TG_GRID_STRIDE_LOOP(i, M * N) {                                                        \
            float s = 0.0f;                                                                    \
            for (int z = 0; z < splits; ++z) s += P[z * M * N + i];                            \
            C[(i / N) * cd.st[2] + (i % N) * cd.st[3]] = from_f32<T>(s);                       \
        }                                                                                      \
    }
TG_MATMUL_SPLITK(__half, f16)
TG_MATMUL_SPLITK(__nv_bfloat16, bf16)
