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

// Rotate pair p of one head row by (cos, sin) = cs: x row (stride xs) -> out row (stride os).
template <typename T>
__device__ __forceinline__ void rope_rotate(const T* xr, long long xs, T* orow, long long os, long long p,
                                            long long nrot, float2 cs, int mode) {
    long long a, b;
    if (mode == 2) { a = p; b = p + nrot; }
    else { a = 2 * p; b = 2 * p + 1; }
    const float xa = to_f32(xr[a * xs]), xb = to_f32(xr[b * xs]);
    orow[a * os] = from_f32<T>(xa * cs.x - xb * cs.y);
    orow[b * os] = from_f32<T>(xb * cs.x + xa * cs.y);
}

// Pairs whose inv_freq a block keeps in shared memory (head dims up to 512): a double-precision
// pow per pair and block instead of one per (token, head, pair) work item, which made a
// 512-token prefill's rope_store compute-bound.
#define TG_ROPE_TABLE 256

// Fill ``tab`` with the inv_freq of pairs [0, nrot) when they fit (returns whether they did);
// every thread of the block calls it.
__device__ __forceinline__ bool rope_table(float* tab, long long nrot, int n_dims, const float* ff, float theta) {
    if (nrot > TG_ROPE_TABLE) return false;
    for (int p = threadIdx.x; p < nrot; p += blockDim.x) tab[p] = rope_inv_freq(p, n_dims, ff, theta);
    __syncthreads();
    return true;
}

template <typename T, typename I>
__device__ __forceinline__ void rope_body(T* out, const TD& od, const T* x, const TD& xd, const int* pos,
                                          const float* tab, const float* ff, float theta, int mode, int n_dims) {
    const I half = (I)(xd.ne[3] / 2), nrot = (I)(n_dims / 2), heads = (I)xd.ne[2], toks = (I)xd.ne[1];
    const I total = (I)(td_rows(xd) * half);
    const long long xs = xd.st[3], os = od.st[3];
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I p = i % half, r = i / half;
        const T* xr = x + td_row_offset(xd, r);
        T* orow = out + td_row_offset(od, r);
        if (p >= nrot) {  // pass-through tail (partial rotary)
            const long long a = 2 * (long long)p, b = a + 1;
            const T va = xr[a * xs], vb = xr[b * xs];
            orow[a * os] = va;
            orow[b * os] = vb;
            continue;
        }
        const I t = (r / heads) % toks;
        const float f = tab ? tab[p] : rope_inv_freq(p, n_dims, ff, theta);
        rope_rotate<T>(xr, xs, orow, os, p, nrot, rope_cossin_at(f, pos[t]), mode);
    }
}

template <typename T>
__device__ __forceinline__ void rope_kernel(T* out, const TD& od, const T* x, const TD& xd,
                                            const int* pos, const float* ff, float theta, int mode,
                                            int n_dims) {
    __shared__ float tab[TG_ROPE_TABLE];
    const float* t = rope_table(tab, n_dims / 2, n_dims, ff, theta) ? tab : nullptr;
    if (td_rows(xd) * (xd.ne[3] / 2) < (1LL << 31)) rope_body<T, unsigned>(out, od, x, xd, pos, t, ff, theta, mode, n_dims);
    else rope_body<T, unsigned long long>(out, od, x, xd, pos, t, ff, theta, mode, n_dims);
}

template <typename T, typename I>
__device__ __forceinline__ void rope_store_body(T* qo, const TD& qod, const T* q, const TD& qd, const T* k,
                                                const TD& kd, const T* v, const TD& vd, const int* pos, T* kc,
                                                const TD& kcd, T* vc, const TD& vcd, const float* tab,
                                                const float* ff, float theta, int mode) {
    const I T_ = (I)qd.ne[1], H = (I)qd.ne[2], KV = (I)kd.ne[2], hd = (I)qd.ne[3], half = hd / 2;
    const I nq = T_ * H * half, nk = T_ * KV * half, nv = T_ * KV * hd;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < nq + nk + nv; i += (I)gridDim.x * blockDim.x) {
        if (i < nq + nk) {
            const bool is_q = i < nq;
            const I j = is_q ? i : i - nq, heads = is_q ? H : KV;
            const I p = j % half, h = (j / half) % heads, t = j / (half * heads);
            const float2 cs = rope_cossin_at(tab ? tab[p] : rope_inv_freq(p, (int)hd, ff, theta), pos[t]);
            if (is_q) {
                rope_rotate<T>(q + t * qd.st[1] + h * qd.st[2], qd.st[3], qo + t * qod.st[1] + h * qod.st[2],
                               qod.st[3], p, half, cs, mode);
            } else {
                rope_rotate<T>(k + t * kd.st[1] + h * kd.st[2], kd.st[3],
                               kc + h * kcd.st[1] + (long long)pos[t] * kcd.st[2], kcd.st[3], p, half, cs, mode);
            }
        } else {
            const I j = i - nq - nk;
            const I d = j % hd, h = (j / hd) % KV, t = j / (hd * KV);
            vc[h * vcd.st[1] + (long long)pos[t] * vcd.st[2] + d * vcd.st[3]] =
                v[t * vd.st[1] + h * vd.st[2] + d * vd.st[3]];
        }
    }
}

template <typename T>
__device__ __forceinline__ void rope_store_kernel(T* qo, const TD& qod, const T* q, const TD& qd,
                                                  const T* k, const TD& kd, const T* v, const TD& vd,
                                                  const int* pos, T* kc, const TD& kcd, T* vc,
                                                  const TD& vcd, const float* ff, float theta, int mode) {
    __shared__ float tab[TG_ROPE_TABLE];
    const int hd = (int)qd.ne[3];
    const float* t = rope_table(tab, hd / 2, hd, ff, theta) ? tab : nullptr;
    const long long n = qd.ne[1] * (qd.ne[2] * (hd / 2) + kd.ne[2] * (hd / 2) + kd.ne[2] * hd);
    if (n < (1LL << 31)) rope_store_body<T, unsigned>(qo, qod, q, qd, k, kd, v, vd, pos, kc, kcd, vc, vcd, t, ff, theta, mode);
    else rope_store_body<T, unsigned long long>(qo, qod, q, qd, k, kd, v, vd, pos, kc, kcd, vc, vcd, t, ff, theta, mode);
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
