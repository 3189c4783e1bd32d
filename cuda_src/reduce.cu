// reduce.cu -- reductions over the last axis.
//
// Signature (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   argmax_T(int* out, TD od, const T* x, TD xd)
//     out[r] = index of the largest x in row r (rows = all but the last axis). Ties go to the
//     smallest index; NaN counts as larger than any number (the first NaN wins), as NumPy does.
//     od describes the int32 output with xd's shape but ne[3] = 1 (its st[3] is unused).
// Launch: grid = (rows, 1, 1); block = (B, 1, 1), B a multiple of 32 <= 1024.
#include "common.cuh"

// true if (v, i) should win over (bv, bi)
__device__ __forceinline__ bool am_better(float v, int i, float bv, int bi) {
    const bool vn = v != v, bn = bv != bv;
    if (vn != bn) return vn;                // NaN beats numbers
    if (!vn && v != bv) return v > bv;      // larger wins
    return i < bi;                          // tie (or both NaN): smaller index
}

template <typename T>
__device__ __forceinline__ void argmax_kernel(int* out, const TD& od, const T* x, const TD& xd) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const long long r = blockIdx.x;
    const int n = (int)xd.ne[3];
    const T* xr = x + td_row_offset(xd, r);
    const long long xs = xd.st[3];
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    // 8 loads per thread in flight, then the comparisons (any order: ties go by index)
    constexpr int B = 8;
    for (int j0 = threadIdx.x; j0 < n; j0 += B * blockDim.x) {
        float v[B];
#pragma unroll
        for (int u = 0; u < B; ++u) {
            const int j = j0 + u * blockDim.x;
            v[u] = j < n ? to_f32(xr[(long long)j * xs]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < B; ++u) {
            const int j = j0 + u * blockDim.x;
            if (j < n && am_better(v[u], j, bv, bi)) { bv = v[u]; bi = j; }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(v2, i2, bv, bi)) { bv = v2; bi = i2; }
    }
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sv[wid] = bv; si[wid] = bi; }
    __syncthreads();
    if (wid == 0) {
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            if (am_better(v2, i2, bv, bi)) { bv = v2; bi = i2; }
        }
        if (lane == 0) out[td_row_offset(od, r)] = bi == 0x7fffffff ? 0 : bi;
    }
}

#define TG_ARGMAX(T, sfx)                                                                      \
    extern "C" __global__ void argmax_##sfx(int* out, TD od, const T* x, TD xd) { tg_pdl_enter(); \
        argmax_kernel<T>(out, od, x, xd);                                                      \
    }
TG_ARGMAX(float, f32)
TG_ARGMAX(__half, f16)
TG_ARGMAX(__nv_bfloat16, bf16)
