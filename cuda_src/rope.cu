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
//
//   rope_store_T(T* qo, TD qod, const T* q, TD qd, const T* k, TD kd, const T* v, TD vd,
//                const int* pos, T* kc, TD kcd, T* vc, TD vcd, const float* ff, float theta,
//                int mode)
//     RoPE + KV-cache write in one launch (full rotary): q [T, H, hd], k and v [T, KV, hd]
//     (padded to rank 4 with a leading 1), caches [KV, ctx, hd]:
//        qo = rope(q);  kc[h, pos[t], :] = rope(k)[t, h, :];  vc[h, pos[t], :] = v[t, h, :]
//     Launch: 1-D grid-stride loop over T*(H+KV)*hd/2 + T*KV*hd work items; any grid/block.
#include "common.cuh"

// Rotate pair p of one head row: x row (stride xs) -> out row (stride os).
template <typename T>
__device__ __forceinline__ void rope_pair(const T* xr, long long xs, T* orow, long long os,
                                          long long p, long long nrot, int position,
                                          const float* ff, float theta, int mode, int n_dims) {
    const float2 r = rope_cossin(p, n_dims, position, ff, theta);
    const float cs = r.x, sn = r.y;
    long long a, b;
    if (mode == 2) { a = p; b = p + nrot; }
    else { a = 2 * p; b = 2 * p + 1; }
    const float xa = to_f32(xr[a * xs]), xb = to_f32(xr[b * xs]);
    orow[a * os] = from_f32<T>(xa * cs - xb * sn);
    orow[b * os] = from_f32<T>(xb * cs + xa * sn);
}

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
        rope_pair<T>(xr, xs, orow, os, p, nrot, pos[t], ff, theta, mode, n_dims);
    }
}

template <typename T>
__device__ __forceinline__ void rope_store_kernel(T* qo, const TD& qod, const T* q, const TD& qd,
                                                  const T* k, const TD& kd, const T* v, const TD& vd,
                                                  const int* pos, T* kc, const TD& kcd, T* vc,
                                                  const TD& vcd, const float* ff, float theta, int mode) {
    const long long T_ = qd.ne[1], H = qd.ne[2], KV = kd.ne[2], hd = qd.ne[3], half = hd / 2;
    const long long nq = T_ * H * half, nk = T_ * KV * half, nv = T_ * KV * hd;
    TG_GRID_STRIDE_LOOP(i, nq + nk + nv) {
        if (i < nq + nk) {
            const bool is_q = i < nq;
            const long long j = is_q ? i : i - nq, heads = is_q ? H : KV;
            const long long p = j % half, h = (j / half) % heads, t = j / (half * heads);
            if (is_q) {
                rope_pair<T>(q + t * qd.st[1] + h * qd.st[2], qd.st[3], qo + t * qod.st[1] + h * qod.st[2],
                             qod.st[3], p, half, pos[t], ff, theta, mode, (int)hd);
            } else {
                rope_pair<T>(k + t * kd.st[1] + h * kd.st[2], kd.st[3],
                             kc + h * kcd.st[1] + (long long)pos[t] * kcd.st[2], kcd.st[3], p, half, pos[t],
                             ff, theta, mode, (int)hd);
            }
        } else {
            const long long j = i - nq - nk;
            const long long d = j % hd, h = (j / hd) % KV, t = j / (hd * KV);
            vc[h * vcd.st[1] + (long long)pos[t] * vcd.st[2] + d * vcd.st[3]] =
                v[t * vd.st[1] + h * vd.st[2] + d * vd.st[3]];
        }
    }
}

#define TG_ROPE(T, sfx)                                                                        \
    extern "C" __global__ void rope_##sfx(T* out, TD od, const T* x, TD xd, const int* pos,    \
                                          const float* ff, float theta, int mode, int n_dims) { tg_pdl_enter(); \
        rope_kernel<T>(out, od, x, xd, pos, ff, theta, mode, n_dims);                          \
    }
#define TG_ROPE_STORE(T, sfx)                                                                  \
    extern "C" __global__ void rope_store_##sfx(T* qo, TD qod, const T* q, TD qd, const T* k,   \
                                                TD kd, const T* v, TD vd, const int* pos, T* kc, \
                                                TD kcd, T* vc, TD vcd, const float* ff,          \
                                                float theta, int mode) { tg_pdl_enter();         \
        rope_store_kernel<T>(qo, qod, q, qd, k, kd, v, vd, pos, kc, kcd, vc, vcd, ff, theta, mode); \
    }
TG_ROPE_STORE(float, f32)
TG_ROPE_STORE(__half, f16)
TG_ROPE_STORE(__nv_bfloat16, bf16)
TG_ROPE(float, f32)
TG_ROPE(__half, f16)
TG_ROPE(__nv_bfloat16, bf16)
