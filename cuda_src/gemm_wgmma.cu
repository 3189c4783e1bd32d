// gemm_wgmma.cu -- Hopper (sm_90a) tensor-core GEMM for prefill: C[M, N] = A[M, K] @ W[N, K]^T
// with float32 accumulators (WORK IN PROGRESS on branch wgmma-prefill: compiled and its SASS read
// on a machine without a GPU; not yet run).
//
// gemm_wgmma_T(T* C, long long ldc, const T* A, long long lda, const T* W, long long ldw,
//              int M, int N, int K)          T = __half (f16) | __nv_bfloat16 (bf16)
//   A row-major [M, K] (row stride lda elements), W row-major [N, K] (a linear's HF weight, row
//   stride ldw), C row-major [M, N] (ldc). K, lda, ldw: multiples of 8; A and W 16-byte aligned.
//   Ragged M, N, K: the tiles are zero-filled past the edges, C written only inside.
//   Launch: grid (ceil(N / 128), ceil(M / 128)), block 256 (two warpgroups), dynamic shared memory
//   GW_SMEM bytes (needs the opt-in attribute: > 48 KB).
// Design: a block computes a 128 x 128 tile of C; warpgroup g the rows [64 g, 64 g + 64) with
//   wgmma.m64n128k16 (both operands K-major from shared memory, so neither is transposed).
//   K goes in tiles of 64 (128 bytes of a row: one 128-byte swizzle atom) through a GW_STAGES-deep
//   cp.async ring; every thread loads, then waits, fences the async proxy and syncs before the
//   warpgroups issue 4 wgmma (k16 each) per tile. Shared-memory layout of a stage: A's 128 rows of
//   128 bytes, then W's 128 rows; 16-byte chunk c of row r at r * 128 + ((c ^ (r % 8)) * 16)
//   (the 128-byte swizzle), every tile 1024-byte aligned. Descriptor: start >> 4, leading byte
//   offset 1 (unused for swizzled K-major), stride byte offset 1024 >> 4 (8 rows of 128 bytes),
//   swizzle mode 1 (128 B) in bits 62-63; the k-th k16 step starts 32 * k bytes further.
//   Accumulator fragment (warp w of the warpgroup, lane l): for each n8 block j, d[4j..4j+3] are
//   (row 16 w + l / 4, cols 8 j + 2 (l % 4) + {0, 1}) and the same 8 rows further.
#include "mma.cuh"

#define GW_BM 128
#define GW_BN 128
#define GW_BK 64
#ifndef GW_STAGES
#define GW_STAGES 4
#endif
#define GW_TILE_BYTES (GW_BM * GW_BK * 2)                   // one operand's tile: 16 KB
#define GW_STAGE_BYTES (2 * GW_TILE_BYTES)
#define GW_SMEM (GW_STAGES * GW_STAGE_BYTES + 1024)         // + alignment slack

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ unsigned long long gw_desc(unsigned saddr) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

template <typename T> struct GwMma;
#define GW_MMA(T, ty)                                                                              \
    template <> struct GwMma<T> {                                                                  \
        static __device__ __forceinline__ void run(float* d, unsigned long long da,                \
                                                   unsigned long long db, int accumulate) {       \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                              \
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32." ty "." ty " "              \
                         "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                \
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                                 \
                         : "l"(da), "l"(db), "r"(accumulate));                                     \
        }                                                                                          \
    };
GW_MMA(__half, "f16")
GW_MMA(__nv_bfloat16, "bf16")
#undef GW_MMA

// this thread's share of one stage: A rows [m0, m0 + 128) and W rows [n0, n0 + 128) of k-tile kt
template <typename T>
__device__ __forceinline__ void gw_load(unsigned char* st, const T* A, long long lda, const T* W, long long ldw,
                                        int M, int N, int K, int m0, int n0, int kt) {
    const int k0 = kt * GW_BK;
#pragma unroll
    for (int i = 0; i < (2 * GW_BM * 8) / 256; ++i) {  // 2048 chunks of 16 bytes, 8 per thread
        const int idx = threadIdx.x + 256 * i;
        const int op = idx / (GW_BM * 8);                 // 0: A, 1: W
        const int r = (idx / 8) % GW_BM, c = idx % 8;
        const int k = k0 + 8 * c;
        const int row = (op ? n0 : m0) + r;
        const bool ok = row < (op ? N : M) && k < K;
        const T* src = op ? W + (long long)(ok ? row : 0) * ldw + (ok ? k : 0)
                          : A + (long long)(ok ? row : 0) * lda + (ok ? k : 0);
        cp_async16(st + op * GW_TILE_BYTES + r * 128 + ((c ^ (r & 7)) << 4), src, ok);
    }
}

template <typename T>
__device__ __forceinline__ void gemm_wgmma(T* C, long long ldc, const T* A, long long lda, const T* W,
                                           long long ldw, int M, int N, int K) {
    extern __shared__ unsigned char gw_raw[];
    unsigned char* sm = gw_raw + ((1024 - (smem_u32(gw_raw) & 1023)) & 1023);
    const int m0 = blockIdx.y * GW_BM, n0 = blockIdx.x * GW_BN;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int kt_n = (K + GW_BK - 1) / GW_BK;
    float d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.0f;

    tg_pdl_trigger();
    tg_pdl_wait();
#pragma unroll
    for (int s = 0; s < GW_STAGES - 1; ++s) {
        if (s < kt_n) gw_load<T>(sm + s * GW_STAGE_BYTES, A, lda, W, ldw, M, N, K, m0, n0, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < kt_n; ++kt) {
        cp_async_wait<GW_STAGES - 2>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async's writes, seen by wgmma
        __syncthreads();
        unsigned char* st = sm + (kt % GW_STAGES) * GW_STAGE_BYTES;
        const unsigned a0 = smem_u32(st) + wg * 64 * 128, b0 = smem_u32(st + GW_TILE_BYTES);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < GW_BK / 16; ++kk)
            GwMma<T>::run(d, gw_desc(a0 + 32 * kk), gw_desc(b0 + 32 * kk), kt > 0 || kk > 0);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        // the stage read one iteration ago is free (every warpgroup passed this iteration's barrier
        // after its wgmma of then completed): refill it with k-tile kt + STAGES - 1
        const int nk = kt + GW_STAGES - 1;
        if (nk < kt_n) gw_load<T>(sm + (nk % GW_STAGES) * GW_STAGE_BYTES, A, lda, W, ldw, M, N, K, m0, n0, nk);
        cp_async_commit();
    }
    const int r0 = m0 + wg * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < GW_BN / 8; ++j) {
        const int c = n0 + 8 * j + 2 * (lane % 4);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
            if (r >= M) continue;
            if (c < N) C[(long long)r * ldc + c] = from_f32<T>(d[4 * j + 2 * h]);
            if (c + 1 < N) C[(long long)r * ldc + c + 1] = from_f32<T>(d[4 * j + 2 * h + 1]);
        }
    }
}
#else
template <typename T>  // wgmma needs sm_90a: anywhere else the kernel traps (the library never launches it)
__device__ __forceinline__ void gemm_wgmma(T*, long long, const T*, long long, const T*, long long, int, int, int) {
    tg_pdl_enter();
    __trap();
}
#endif

#define TG_GW(T, sfx)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) gemm_wgmma_##sfx(                            \
        T* C, long long ldc, const T* A, long long lda, const T* W, long long ldw, int M, int N,   \
        int K) { gemm_wgmma<T>(C, ldc, A, lda, W, ldw, M, N, K); }
TG_GW(__half, f16)
TG_GW(__nv_bfloat16, bf16)
