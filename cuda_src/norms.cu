// norms.cu -- normalisation over the last axis, one block per row, float32 accumulation.
//
// Signatures (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   rms_norm_T  (T* out, TD od, const T* x, TD xd, const T* w, float eps)
//       out = x / sqrt(mean(x^2) + eps) * w
//   layer_norm_T(T* out, TD od, const T* x, TD xd, const T* w, const T* b, float eps)
//       out = (x - mean(x)) / sqrt(var(x) + eps) * w + b        (biased variance, two-pass)
//   w and b are contiguous vectors of length ne[3] (the row length) or NULL (0) for none.
//   od and xd have the same shape; strides are free (in-place out == x is allowed).
// Launch: grid = (rows, 1, 1) with rows = ne[0]*ne[1]*ne[2]; block = (B, 1, 1), B a multiple of
//   32 in [32, 1024] (kernels.py picks 32..1024 from the row length); or, for rows of a warp
//   (B = 32), block = (32, R) and grid = ceil(rows / R): R rows per block, one warp each.
#include "common.cuh"

// Row blockIdx.x of x normalised over its last axis into out: RMSNorm x / rms(x) (LAYER false) or
// LayerNorm (x - mean) / std (LAYER true), each times w and (LayerNorm) plus b where given.
template <typename T, bool LAYER>
__device__ __forceinline__ void norm_kernel(T* out, const TD& od, const T* x, const TD& xd, const T* w,
                                            const T* b, float eps) {
    __shared__ float scratch[32];
    // blockDim.y rows per block, a warp each when blockDim.y > 1 (short rows: q/k norms of
    // many heads); one row per block otherwise
    const long long r = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool warp_rows = blockDim.y > 1;
    if (warp_rows && r >= td_rows(xd)) return;  // (no block-wide sync on this path)
    auto sum = [&](float v) { return warp_rows ? warp_sum(v) : block_sum(v, scratch); };
    const int n = (int)xd.ne[3];
    const T* xr = x + td_row_offset(xd, r);
    T* orow = out + td_row_offset(od, r);
    const long long xs = xd.st[3], os = od.st[3];
    float mean = 0.0f;  // (RMSNorm: x - 0.0f is x, folded away)
    if (LAYER) {
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += to_f32(xr[j * xs]);
        mean = sum(s) / (float)n;
    }
    float q = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = to_f32(xr[j * xs]) - mean;
        q += d * d;
    }
    const float inv = 1.0f / sqrtf(sum(q) / (float)n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float v = (to_f32(xr[j * xs]) - mean) * inv;
        if (w) v *= to_f32(w[j]);
        if (LAYER && b) v += to_f32(b[j]);
        orow[j * os] = from_f32<T>(v);
    }
}

#define TG_NORMS(T, sfx)                                                                       \
    extern "C" __global__ void rms_norm_##sfx(T* out, TD od, const T* x, TD xd, const T* w,    \
                                              float eps) { tg_pdl_enter();                     \
        norm_kernel<T, false>(out, od, x, xd, w, nullptr, eps);                                            \
    }                                                                                          \
    extern "C" __global__ void layer_norm_##sfx(T* out, TD od, const T* x, TD xd, const T* w,  \
                                                const T* b, float eps) { tg_pdl_enter();       \
        norm_kernel<T, true>(out, od, x, xd, w, b, eps);                                       \
    }
TG_NORMS(float, f32)
TG_NORMS(__half, f16)
TG_NORMS(__nv_bfloat16, bf16)
