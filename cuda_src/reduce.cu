// reduce.cu -- reductions over the last axis.
//
// Signature (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   argmax_T(int* out, TD od, const T* x, TD xd)
//     out[r] = index of the largest x in row r (rows = all but the last axis). Ties go to the
//     smallest index; NaN counts as larger than any number (the first NaN wins), as NumPy does.
//     od describes the int32 output with xd's shape but ne[3] = 1 (its st[3] is unused).
//     Launch: grid = (rows, 1, 1); block = (B, 1, 1), B a multiple of 32 <= 1024.
//   argmax_split_T(int* out, TD od, const T* x, TD xd, unsigned long long* part, int* counters)
//     The same result from G blocks per row (long rows, e.g. a 152k vocabulary: one block
//     reads 300 KB at ~11 GB/s/SM-latency, G blocks in parallel): block b of row r takes the
//     elements [b*c, (b+1)*c), c = ceil(n / G), and writes its best as one ordered 64-bit key
//     to part[r*G + b]; the last block of the row to finish (counted in counters[r], which must
//     start at 0 and is left at 0) writes out[r] from the G keys.
//     Launch: grid = (G, rows, 1); block = (B, 1, 1) as argmax_T.
#include "common.cuh"

// true if (v, i) should win over (bv, bi)
__device__ __forceinline__ bool am_better(float v, int i, float bv, int bi) {
    const bool vn = v != v, bn = bv != bv;
    if (vn != bn) return vn;                // NaN beats numbers
    if (!vn && v != bv) return v > bv;      // larger wins
    return i < bi;                          // tie (or both NaN): smaller index
}

// (v, i) as a key whose unsigned order is am_better's: order-preserving float bits (every NaN
// above +inf), then the complemented index (smaller index, larger key). 0: nothing.
__device__ __forceinline__ unsigned long long am_key(float v, int i) {
    unsigned u = __float_as_uint(v);
    u = v != v ? 0xffffffffu : ((u & 0x80000000u) ? ~u : (u | 0x80000000u));
    return ((unsigned long long)u << 32) | (unsigned)(0x7fffffff - i);
}

// The best (value, index) of xr[j0, j1) over the block; valid in thread 0.
template <typename T>
__device__ __forceinline__ void argmax_block(const T* xr, long long xs, int j0, int j1, float& bv, int& bi) {
    __shared__ float sv[32];
    __shared__ int si[32];
    bv = -INFINITY;
    bi = 0x7fffffff;
    // 8 loads per thread in flight, then the comparisons (any order: ties go by index)
    constexpr int B = 8;
    for (int k0 = j0 + threadIdx.x; k0 < j1; k0 += B * blockDim.x) {
        float v[B];
#pragma unroll
        for (int u = 0; u < B; ++u) {
            const int j = k0 + u * blockDim.x;
            v[u] = j < j1 ? to_f32(xr[(long long)j * xs]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < B; ++u) {
            const int j = k0 + u * blockDim.x;
            if (j < j1 && am_better(v[u], j, bv, bi)) { bv = v[u]; bi = j; }
        }
    }
    block_merge2<false>(bv, bi, sv, si, -INFINITY, 0x7fffffff, [](float& v, int& i, float v2, int i2) {
        if (am_better(v2, i2, v, i)) { v = v2; i = i2; }
    });
}

template <typename T>
__device__ __forceinline__ void argmax_kernel(int* out, const TD& od, const T* x, const TD& xd) {
    const long long r = blockIdx.x;
    float bv;
    int bi;
    argmax_block<T>(x + td_row_offset(xd, r), xd.st[3], 0, (int)xd.ne[3], bv, bi);
    if (threadIdx.x == 0) out[td_row_offset(od, r)] = bi == 0x7fffffff ? 0 : bi;
}

template <typename T>
__device__ __forceinline__ void argmax_split_kernel(int* out, const TD& od, const T* x, const TD& xd,
                                                    unsigned long long* part, int* counters) {
    const long long r = blockIdx.y;
    const int G = gridDim.x, b = blockIdx.x, n = (int)xd.ne[3];
    const int c = (n + G - 1) / G;
    const int j0 = min(n, b * c), j1 = min(n, j0 + c);
    float bv;
    int bi;
    argmax_block<T>(x + td_row_offset(xd, r), xd.st[3], j0, j1, bv, bi);
    __shared__ int s_last;
    if (threadIdx.x == 0) {
        part[r * G + b] = bi == 0x7fffffff ? 0ull : am_key(bv, bi);
        __threadfence();
        const int done = atomicAdd(&counters[r], 1);
        s_last = done == G - 1;
        if (s_last) counters[r] = 0;  // ready for the next launch (graph replay)
    }
    __syncthreads();
    if (!s_last || threadIdx.x >= 32) return;
    __threadfence();
    unsigned long long best = 0;
    for (int k = threadIdx.x; k < G; k += 32) {
        const unsigned long long v = __ldcg(&part[r * G + k]);
        best = v > best ? v : best;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long v = __shfl_xor_sync(0xffffffffu, best, o);
        best = v > best ? v : best;
    }
    if (threadIdx.x == 0) out[td_row_offset(od, r)] = best ? 0x7fffffff - (int)(unsigned)(best & 0xffffffffu) : 0;
}

#define TG_ARGMAX(T, sfx)                                                                      \
    extern "C" __global__ void argmax_##sfx(int* out, TD od, const T* x, TD xd) {              \
        tg_pdl_enter();                                                                        \
        argmax_kernel<T>(out, od, x, xd);                                                      \
    }                                                                                          \
    extern "C" __global__ void argmax_split_##sfx(int* out, TD od, const T* x, TD xd,          \
                                                  unsigned long long* part, int* counters) {   \
        tg_pdl_enter();                                                                        \
        argmax_split_kernel<T>(out, od, x, xd, part, counters);                                \
    }
TG_ARGMAX(float, f32)
TG_ARGMAX(__half, f16)
TG_ARGMAX(__nv_bfloat16, bf16)
