// linear_common.cuh -- what the fused linear kernels share (linear.cu: 16-bit/f32 weights,
// linear_q.cu / linear_qmma.cu: ggml block-quantized weights): activations, 16-byte unpacking, and the prologue
// that stages one normalised row of x in shared memory as float32.
#pragma once
#include "common.cuh"

#ifndef TG_LINEAR_PB
#define TG_LINEAR_PB 2  // 16-byte loads of x (and of norm_w, norm_b) per thread in flight while staging
#endif

__device__ __forceinline__ float lin_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float lin_gelu(float x) {
    const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
    const float k1 = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x)));
}
__device__ __forceinline__ float lin_act(float x, int act) {
    return act == 1 ? lin_gelu(x) : (act == 2 ? lin_silu(x) : x);
}
// One output column c of the quantized GEMVs from its float32 sums: a0 (for swiglu, P = 2, the
// gate row's; a1 the up row's, c + half): act(a + bias) + res (res at roff + c * rd.st[3]).
template <typename T>
__device__ __forceinline__ float lin_epilogue(float a0, float a1, int c, int half, int P, int act,
                                              const T* bias, const T* res, long long roff, const TD& rd) {
    float a;
    if (P == 2) a = lin_silu(a0 + (bias ? to_f32(bias[c]) : 0.0f)) * (a1 + (bias ? to_f32(bias[c + half]) : 0.0f));
    else a = lin_act(a0 + (bias ? to_f32(bias[c]) : 0.0f), act);
    if (res) a += to_f32(res[roff + (long long)c * rd.st[3]]);
    return a;
}

// Values 8g .. 8g+7 of the staged row hrow into v (zeros when g >= ng) and their sum; returns the
// largest |value| of their 32-block. The 4 threads of a block are lanes 4c..4c+3 of one warp and
// every lane must call it (shuffles): the row quantizers of linear_q8a and linear_qr.
__device__ __forceinline__ float lin_load8_amax32(const float* hrow, int g, int ng, float* v, float& sum) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.0f;
    if (g < ng) {
        *reinterpret_cast<float4*>(v) = *reinterpret_cast<const float4*>(hrow + 8 * g);
        *reinterpret_cast<float4*>(v + 4) = *reinterpret_cast<const float4*>(hrow + 8 * g + 4);
    }
    float amax = 0.0f;
    sum = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        amax = fmaxf(amax, fabsf(v[e]));
        sum += v[e];
    }
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    return fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
}


// 16 bytes of w -> VEC floats.
template <typename T>
__device__ __forceinline__ void lin_unpack(const uint4& v, float* f) {
    if constexpr (sizeof(T) == 4) {
        f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y);
        f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
    } else {
        const unsigned a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float2 p = h2f(a[q], T());
            f[2 * q] = p.x;
            f[2 * q + 1] = p.y;
        }
    }
}

// Staged row layout (floats, row stride rs = ceil(K/4)*4): the first nv*VEC elements (nv
// 16-byte chunks of w) are stored in VEC/4 planes of nv float4s -- element k of chunk c = k/VEC
// goes to plane (k%VEC)/4, slot c -- so that the lanes of a warp, reading chunks c, c+1, ...,
// read consecutive float4s of each plane (no bank conflicts). Elements past nv*VEC (and every
// element when the weight rows cannot be read 16 bytes at a time, nv = 0) stay at index k.
template <int VEC>
__device__ __forceinline__ int lin_idx(int k, int nv) {
    if (k >= nv * VEC) return k;
    return ((k % VEC) >> 2) * (nv * 4) + (k / VEC) * 4 + (k & 3);
}

__device__ __forceinline__ bool lin_al16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15) == 0;
}

// The float4s of staged row h holding chunk c (elements c*VEC .. c*VEC+VEC-1): plane slots when
// the weight is read in chunks (nv > 0), consecutive floats otherwise.
template <int VEC>
__device__ __forceinline__ float4* lin_chunk(float* h, int c, int nv, int p) {
    return reinterpret_cast<float4*>(nv > 0 ? h + p * nv * 4 + c * 4 : h + c * VEC + 4 * p);
}


// Bring the norm weight and bias into L2 (one 128-byte line per thread): called before
// tg_pdl_wait, so that the normalisation after it finds them there. No registers held.
template <typename T>
__device__ __forceinline__ void lin_norm_prefetch(int K, int norm, const T* nw, const T* nbias) {
    if (norm == 0) return;
    constexpr int PER_LINE = 128 / sizeof(T);
    for (int k = threadIdx.x * PER_LINE; k < K; k += blockDim.x * PER_LINE) {
        if (nw) tg_prefetch_l2(nw + k);
        if (norm == 2 && nbias) tg_prefetch_l2(nbias + k);
    }
}

// Stage row `xr` (K elements, stride xs) into h as float32, normalised (norm 1 / 2). Loads are
// 16 bytes wide and four per thread in flight where x (and norm_w / norm_b) allow it. CG: x is
// read through L2 (tg_ld: another block of the same persistent kernel wrote it).
template <typename T, int VEC, bool CG = false>
__device__ __forceinline__ void lin_stage_row(float* h, const T* xr, long long xs, int K, int nv,
                                              int norm, const T* nw, const T* nbias, float eps,
                                              float* scratch) {
    const int tid = threadIdx.x, nthr = blockDim.x;
    float s = 0.0f;
    // pass 1: x -> h (and sum or sum of squares)
    const int nxc = (xs == 1 && lin_al16(xr)) ? K / VEC : 0;
    constexpr int PB = TG_LINEAR_PB;
    for (int c0 = tid; c0 < nxc; c0 += PB * nthr) {
        uint4 v[PB];
#pragma unroll
        for (int j = 0; j < PB; ++j) {
            const int c = c0 + j * nthr;
            if (c < nxc) v[j] = tg_ld<CG>(reinterpret_cast<const uint4*>(xr) + c);
        }
#pragma unroll
        for (int j = 0; j < PB; ++j) {
            const int c = c0 + j * nthr;
            if (c < nxc) {
                float f[VEC];
                lin_unpack<T>(v[j], f);
#pragma unroll
                for (int e = 0; e < VEC; ++e) s += norm == 1 ? f[e] * f[e] : f[e];
#pragma unroll
                for (int p = 0; p < VEC / 4; ++p)
                    *lin_chunk<VEC>(h, c, nv, p) = make_float4(f[4 * p], f[4 * p + 1], f[4 * p + 2], f[4 * p + 3]);
            }
        }
    }
#pragma unroll 2
    for (int k = nxc * VEC + tid; k < K; k += nthr) {
        const float v = to_f32(tg_ld<CG>(xr + k * xs));
        h[lin_idx<VEC>(k, nv)] = v;
        s += norm == 1 ? v * v : v;
    }
    if (norm == 0) return;
    float mean = 0.0f, inv;
    if (norm == 1) {
        inv = 1.0f / sqrtf(block_sum(s, scratch) / (float)K + eps);
    } else {
        mean = block_sum(s, scratch) / (float)K;
        float qq = 0.0f;
        for (int g = tid; g < K / 4; g += nthr) {  // aligned groups of 4 are 4 consecutive floats
            const float4 t = *reinterpret_cast<const float4*>(h + lin_idx<VEC>(4 * g, nv));
            const float a = t.x - mean, b = t.y - mean, c = t.z - mean, d = t.w - mean;
            qq += a * a + b * b + c * c + d * d;
        }
        for (int k = (K & ~3) + tid; k < K; k += nthr) {
            const float d = h[lin_idx<VEC>(k, nv)] - mean;
            qq += d * d;
        }
        inv = 1.0f / sqrtf(block_sum(qq, scratch) / (float)K + eps);
        // block_sum's barriers also order pass 1's writes before the reads below
    }
    // pass 2: h = (h - mean) * inv * norm_w + norm_b
    const T* nb = norm == 2 ? nbias : nullptr;
    const int nwc = ((!nw || lin_al16(nw)) && (!nb || lin_al16(nb))) ? K / VEC : 0;
    for (int c0 = tid; c0 < nwc; c0 += PB * nthr) {
        uint4 gv[PB], bv[PB];
#pragma unroll
        for (int j = 0; j < PB; ++j) {
            const int c = c0 + j * nthr;
            if (c < nwc) {
                if (nw) gv[j] = __ldg(reinterpret_cast<const uint4*>(nw) + c);
                if (nb) bv[j] = __ldg(reinterpret_cast<const uint4*>(nb) + c);
            }
        }
#pragma unroll
        for (int j = 0; j < PB; ++j) {
            const int c = c0 + j * nthr;
            if (c < nwc) {
                float g[VEC], bb[VEC];
                if (nw) lin_unpack<T>(gv[j], g);
                if (nb) lin_unpack<T>(bv[j], bb);
#pragma unroll
                for (int p = 0; p < VEC / 4; ++p) {
                    float4* ptr = lin_chunk<VEC>(h, c, nv, p);
                    float4 t = *ptr;
                    float* tf = reinterpret_cast<float*>(&t);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float v = (tf[e] - mean) * inv;
                        if (nw) v *= g[4 * p + e];
                        if (nb) v += bb[4 * p + e];
                        tf[e] = v;
                    }
                    *ptr = t;
                }
            }
        }
    }
    for (int k = nwc * VEC + tid; k < K; k += nthr) {
        const int i = lin_idx<VEC>(k, nv);
        float v = (h[i] - mean) * inv;
        if (nw) v *= to_f32(__ldg(nw + k));
        if (nb) v += to_f32(__ldg(nb + k));
        h[i] = v;
    }
}
