// softmax.cu -- softmax over the last axis with a scale and an optional causal mask.
//
// Signature (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   softmax_T(T* out, TD od, const T* x, TD xd, float scale, int causal, int past,
//             const int* past_dev, int window)
//     y[..., i, j] = exp(scale*x[..., i, j] - m) / sum_j' exp(scale*x[..., i, j'] - m)
//     over unmasked j. With causal != 0, query row i (index along axis 2, the second-to-last)
//     sees keys j <= i + past; masked entries come out as 0. If past_dev is non-NULL, past is read
//     from past_dev[0] on the device instead (so a replayed CUDA graph can vary it); from
//     past_dev[i0], i0 the index of axis 0, when past < 0 (each sequence of a batch at its own position).
//     window > 0 (with causal; 0 or negative: none): a sliding window, row i (position
//     p = i + past) sees only keys p - window < j <= p (HF's kv_idx > q_idx - sliding_window);
//     keys before it are not read.
//     -inf inputs behave like masked entries; a row with nothing unmasked comes out all 0.
//     od and xd have the same shape; in-place (out == x) is allowed.
// Launch: grid = (rows, 1, 1), rows = ne[0]*ne[1]*ne[2]; block = (B,1,1), B a multiple of 32 <= 1024.
#include "common.cuh"

// Merge two (max, sum-of-exp relative to max) pairs.
__device__ __forceinline__ void ms_merge(float& m, float& s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * expf(m - m2) + s2; m = m2; }
    else { s += s2 * expf(m2 - m); }
}

template <typename T>
__device__ __forceinline__ void softmax_kernel(T* out, const TD& od, const T* x, const TD& xd,
                                               float scale, int causal, int past,
                                               const int* past_dev, int window) {
    __shared__ float sm[32], ss[32];
    const long long r = blockIdx.x;
    const int n = (int)xd.ne[3];
    const long long qi = r % xd.ne[2];
    // past < 0: one position per index of axis 0 (rows are [ne0, ne1, ne2] flattened)
    if (past_dev) past = past_dev[past < 0 ? r / (xd.ne[1] * xd.ne[2]) : 0];
    const long long limit = causal ? qi + (long long)past : (long long)n - 1;  // last visible key
    const long long first = (causal && window > 0) ? qi + (long long)past - window + 1 : 0;  // first
    const T* xr = x + td_row_offset(xd, r);
    T* orow = out + td_row_offset(od, r);
    const long long xs = xd.st[3], os = od.st[3];

    float m = -INFINITY, s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (j > limit || j < first) continue;
        const float v = to_f32(xr[j * xs]) * scale;
        if (v == -INFINITY) continue;
        if (v > m) { s = (m == -INFINITY ? 0.0f : s * expf(m - v)) + 1.0f; m = v; }
        else s += expf(v - m);
    }
    block_merge2<true>(m, s, sm, ss, -INFINITY, 0.0f, ms_merge);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float y = 0.0f;
        if (j <= limit && j >= first && s > 0.0f) {
            const float v = to_f32(xr[j * xs]) * scale;
            y = v == -INFINITY ? 0.0f : expf(v - m) * inv;
        }
        orow[j * os] = from_f32<T>(y);
    }
}

#define TG_SOFTMAX(T, sfx)                                                                     \
    extern "C" __global__ void softmax_##sfx(T* out, TD od, const T* x, TD xd, float scale,    \
                                             int causal, int past, const int* past_dev,        \
                                             int window) { tg_pdl_enter();                     \
        softmax_kernel<T>(out, od, x, xd, scale, causal, past, past_dev, window);              \
    }
TG_SOFTMAX(float, f32)
TG_SOFTMAX(__half, f16)
TG_SOFTMAX(__nv_bfloat16, bf16)
