// rope.cu -- rotary position embedding.
//
// Signature (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   rope_T(T* out, TD od, const T* x, TD xd, const int* pos, const float* ff, float theta,
//          int mode, int n_dims)
//     x padded to rank 4 as (B, T, heads, head_dim): axis 1 is the token axis, pos[t] (int32,
//     contiguous, length T) its position. head_dim = ne[3] must be even; the first n_dims
//     (even, <= head_dim; n_dims = head_dim for full rotary) are rotated, the rest copied.
//     For pair index d < n_dims/2:
//        inv_freq_d = theta^(-2d/n_dims) (rounded to float32, like HF's float32 inv_freq)
//                     / ff[d] when ff (float32 [n_dims/2]) is non-NULL
//        angle      = float(pos[t]) * inv_freq_d             (float32, like HF)
//     mode 0 "normal": pairs (2d, 2d+1)          (GPT-J / ggml default, interleaved)
//     mode 2 "neox"  : pairs (d, d + n_dims/2)   (HF rotate_half)
//        out_a = x_a*cos - x_b*sin,  out_b = x_b*cos + x_a*sin
//     od and xd have the same shape; in-place (out == x) is allowed.
// Launch: 1-D grid-stride loop over rows * head_dim/2 work items; any grid/block.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void rope_kernel(T* out, const TD& od, const T* x, const TD& xd,
                                            const int* pos, const float* ff, float theta, int mode,
                                            int n_dims) {
    const long long hd = xd.ne[3];
    const long long half = hd / 2;
    const long long nrot = n_dims / 2;
    const long long total = td_rows(xd) * half;
    TG_GRID_STRIDE_LOOP(i, total) {
        const long long p = i % half;
        const long long r = i / half;
        const T* xr = x + td_row_offset(xd, r);
        T* orow = out + td_row_offset(od, r);
        const long long xs = xd.st[3], os = od.st[3];
        if (p >= nrot) {  // pass-through tail (partial rotary)
            const long long a = 2 * p, b = 2 * p + 1;
            const T va = xr[a * xs], vb = xr[b * xs];
            orow[a * os] = va;
            orow[b * os] = vb;
            continue;
        }
        const long long t = (r / xd.ne[2]) % xd.ne[1];
        // float32 inv_freq as HF computes it: 1 / theta ** (float(2d) / dim), rounded once.
        float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * p) / (double)n_dims));
        if (ff) inv_freq = inv_freq / ff[p];
        const float angle = (float)pos[t] * inv_freq;
        float sn, cs;
        sincosf(angle, &sn, &cs);
        long long a, b;
        if (mode == 2) { a = p; b = p + nrot; }
        else { a = 2 * p; b = 2 * p + 1; }
        const float xa = to_f32(xr[a * xs]), xb = to_f32(xr[b * xs]);
        orow[a * os] = from_f32<T>(xa * cs - xb * sn);
        orow[b * os] = from_f32<T>(xb * cs + xa * sn);
    }
}

#define TG_ROPE(T, sfx)                                                                        \
    extern "C" __global__ void rope_##sfx(T* out, TD od, const T* x, TD xd, const int* pos,    \
                                          const float* ff, float theta, int mode, int n_dims) { \
        rope_kernel<T>(out, od, x, xd, pos, ff, theta, mode, n_dims);                          \
    }
TG_ROPE(float, f32)
TG_ROPE(__half, f16)
TG_ROPE(__nv_bfloat16, bf16)
