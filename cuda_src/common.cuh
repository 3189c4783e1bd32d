// common.cuh -- shared definitions for every tinygraph kernel source.
//
// Kernel ABI (mirrored in tinygraph/backends/cuda/kernels.py):
//   * A tensor is passed as a raw device pointer plus a descriptor struct TD BY VALUE.
//   * TD holds shape (ne) and strides (st) in ELEMENTS of the tensor's dtype, NumPy order
//     (outermost first), padded on the LEFT to rank 4 with ne=1, st=0.
//   * Broadcasting: an input dimension broadcasts against the output when its ne is 1 or its
//     stride is 0 (the kernels ignore the coordinate of a size-1 input dimension, so either
//     spelling works).
//   * Row-wise kernels (norms, softmax, argmax, rope) treat the last axis (index 3) as the row.
//   * Scalars are float32 / int32 by value. Math is float32 for every storage dtype.
//   * Kernel names: <op>_<dtype> with dtype in {f32, f16, bf16}; conversions <op>_<src>_<dst>.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

struct TD {
    long long ne[4];
    long long st[4];
};

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef __half f16;
typedef __nv_bfloat16 bf16;

// ---- dtype helpers --------------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(int x) { return (float)x; }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ int from_f32<int>(float x) { return (int)x; }

// Conversion between storage types (identity for equal types, exact for int->int).
template <typename D, typename S> struct Convert {
    static constexpr bool identity = false;
    static __device__ __forceinline__ D f(S x) { return from_f32<D>(to_f32(x)); }
};
template <typename T> struct Convert<T, T> {
    static constexpr bool identity = true;
    static __device__ __forceinline__ T f(T x) { return x; }
};

// ---- attention scores ---------------------------------------------------------------------------
// Scale factors of an attention score s (a raw q . k): `mul` and, with Gemma 2's soft-capping
// (cap > 0), `cap` such that attn_score(s) = cap * tanh(s * mul), else s * mul. `base` is 1
// for natural exponentials, log2(e) for base 2: mul = scale * base and cap = 0 without a cap,
// mul = scale / cap and cap = cap * base with one (cap * tanh(s * scale / cap), in that base).
struct ScoreScale {
    float mul, cap;
};
__device__ __forceinline__ ScoreScale score_scale(float scale, float cap, float base) {
    return cap > 0.0f ? ScoreScale{scale / cap, cap * base} : ScoreScale{scale * base, 0.0f};
}
__device__ __forceinline__ float attn_score(float s, const ScoreScale& k) {
    return k.cap > 0.0f ? k.cap * tanhf(s * k.mul) : s * k.mul;
}

// ---- descriptor helpers -----------------------------------------------------------------------
__device__ __forceinline__ long long td_numel(const TD& d) {
    return d.ne[0] * d.ne[1] * d.ne[2] * d.ne[3];
}
__device__ __forceinline__ long long td_rows(const TD& d) { return d.ne[0] * d.ne[1] * d.ne[2]; }

// Split a linear (row-major) index over shape `ne` into 4 coordinates. I is the index type:
// 32-bit unsigned when the element count fits (cheaper division), else 64-bit.
template <typename I>
__device__ __forceinline__ void td_unravel(I i, const TD& d, I c[4]) {
    const I n3 = (I)d.ne[3], n2 = (I)d.ne[2], n1 = (I)d.ne[1];
    c[3] = i % n3; i /= n3;
    c[2] = i % n2; i /= n2;
    c[1] = i % n1; i /= n1;
    c[0] = i;
}

// Element offset of coordinates c in descriptor d; a size-1 dimension of d broadcasts.
template <typename I>
__device__ __forceinline__ long long td_offset(const TD& d, const I c[4]) {
    long long o = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) o += (d.ne[k] == 1 ? 0LL : (long long)c[k]) * d.st[k];
    return o;
}

// Offset of the first element of row r (rows = all but the last axis) of d.
__device__ __forceinline__ long long td_row_offset(const TD& d, long long r) {
    const long long c2 = r % d.ne[2];
    r /= d.ne[2];
    const long long c1 = r % d.ne[1];
    const long long c0 = r / d.ne[1];
    return c0 * d.st[0] + c1 * d.st[1] + c2 * d.st[2];
}

// Same, but with broadcasting of size-1 dims against the row coordinates of shape `shape`.
__device__ __forceinline__ long long td_row_offset_bcast(const TD& d, const TD& shape, long long r) {
    const long long c2 = r % shape.ne[2];
    r /= shape.ne[2];
    const long long c1 = r % shape.ne[1];
    const long long c0 = r / shape.ne[1];
    return (d.ne[0] == 1 ? 0 : c0 * d.st[0]) + (d.ne[1] == 1 ? 0 : c1 * d.st[1]) +
           (d.ne[2] == 1 ? 0 : c2 * d.st[2]);
}

// Two packed 16-bit values (a __half2 / __nv_bfloat162 in a 32-bit word) as float2 (the tag picks the type).
__device__ __forceinline__ float2 h2f(unsigned u, __half) {
    __half2 h = *reinterpret_cast<__half2*>(&u);
    return __half22float2(h);
}
__device__ __forceinline__ float2 h2f(unsigned u, __nv_bfloat16) {
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&u);
    return __bfloat1622float2(h);
}

// ---- reductions -----------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024). Every thread gets the result.
// `scratch` must hold 32 floats; the function may be called repeatedly with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// A pair (a, b) merged over the warp by merge(a, b, a2, b2) (in place), as a butterfly: every lane
// ends with the merge of all 32 lanes' pairs.
template <typename A, typename B, class M>
__device__ __forceinline__ void warp_merge2(A& a, B& b, M merge) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const A a2 = __shfl_xor_sync(0xffffffffu, a, o);
        const B b2 = __shfl_xor_sync(0xffffffffu, b, o);
        merge(a, b, a2, b2);
    }
}
// ... over the block (blockDim.x a multiple of 32): the warps' pairs meet through shared memory
// (sa, sb: 32 each) and are merged again, by every warp (ALL) or by warp 0 only, whose threads
// then hold the result; lanes past the last warp start from (a0, b0), the merge's identity.
template <bool ALL, typename A, typename B, class M>
__device__ __forceinline__ void block_merge2(A& a, B& b, A* sa, B* sb, A a0, B b0, M merge) {
    warp_merge2(a, b, merge);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sa[wid] = a; sb[wid] = b; }
    __syncthreads();
    if (ALL || wid == 0) {
        a = lane < nw ? sa[lane] : a0;
        b = lane < nw ? sb[lane] : b0;
        warp_merge2(a, b, merge);
    }
}

// RoPE: (cos, sin) of the angle of rotation pair p for a head of n_dims rotated elements:
// inv_freq = 1 / theta^(2p / n_dims) rounded once to float32 as HF computes it (/ ff[p] when
// ff is non-NULL), angle = float(position) * inv_freq in float32. rope.cu, attention.cu.
// inv_freq of rotary pair p: theta^(-2p/n_dims) rounded to float32 (like HF's float32 inv_freq),
// divided by ff[p] (float32 frequency factors) where given.
__device__ __forceinline__ float rope_inv_freq(long long p, int n_dims, const float* ff, float theta) {
    float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * p) / (double)n_dims));
    if (ff) inv_freq = inv_freq / ff[p];
    return inv_freq;
}

// (cos, sin) of the angle float(position) * inv_freq, in float32 like HF.
__device__ __forceinline__ float2 rope_cossin_at(float inv_freq, int position) {
    float sn, cs;
    sincosf((float)position * inv_freq, &sn, &cs);
    return make_float2(cs, sn);
}

__device__ __forceinline__ float2 rope_cossin(long long p, int n_dims, int position, const float* ff,
                                              float theta) {
    return rope_cossin_at(rope_inv_freq(p, n_dims, ff, theta), position);
}

#define TG_GRID_STRIDE_LOOP(i, n)                                                            \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);             \
         i += (long long)gridDim.x * blockDim.x)

// ---- programmatic dependent launch (sm_90+) ----------------------------------------------------
// The CUDA backend launches kernels with the programmatic-stream-serialization attribute on
// sm_90+, so a kernel may start while the one before it in the stream is still running (a CUDA
// graph keeps these programmatic edges). Every kernel therefore begins with tg_pdl_enter(), or
// splits it: tg_pdl_trigger() (let the next kernel's blocks be scheduled: it waits for our
// completion itself), work that touches only memory no earlier kernel of the stream writes
// (model weights), then tg_pdl_wait() (returns once the previous kernel has finished and its
// writes are visible; so, transitively, every earlier one) before reading or writing anything
// else. Both are no-ops for a kernel launched without the attribute and below sm_90.
// tools/check_kernels.py checks that every kernel calls one of them.
__device__ __forceinline__ void tg_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void tg_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// A read-only load: __ldg, or with CG ld.global.cg (through L2, past the SM's non-coherent L1 and
// read-only caches) for memory that another block of the same persistent kernel wrote.
template <bool CG, typename P>
__device__ __forceinline__ P tg_ld(const P* p) {
    if constexpr (CG) return __ldcg(p);
    else return __ldg(p);
}
// Ask for the 128-byte line holding p to be brought into L2 (no register, no wait).
__device__ __forceinline__ void tg_prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ void tg_prefetch_l1(const void* p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}
__device__ __forceinline__ void tg_pdl_enter() {
    tg_pdl_trigger();
    tg_pdl_wait();
}
