// quant_blocks.cuh -- decoding ggml's block-quantized weight types on the GPU.
//
// A row of K weights is K/QK blocks of BB bytes, stored exactly as in a GGUF file (the NumPy
// reference decoder is tinygraph/quant.py). Every type is read in UNITS of 32 weights: a block
// has NSUB units; unit s holds RUNS runs of RL consecutive weights (RUNS * RL = 32), run r
// starting at block element start(s, r), and every weight of run r is d[r] * q + m[r] for a
// small non-negative integer q < 2^E. decode(b, s, q, d, m) fills q[32] (run-major) with
// v = 1 + q / 2^E (exact floats, see qv) and the per-run scale d and offset m. So
//     dot(unit, h) = sum_r d[r] * sum_i q[r*RL + i] * h[start + i] + m[r] * sum_i h[start + i]
// and the fused GEMV needs one multiply-add per weight (the sums of h come from a table of
// sums over groups of 8 elements that the block stages once per row).
//
// Loads: blocks are only as aligned as their size allows (Q8_0: 34 bytes, so 2-byte aligned;
// Q4_1 / Q5_1 / Q2_K: 4; Q4_K / Q5_K: 16); each type reads its bytes with the widest loads its
// alignment permits.
#pragma once
#include "common.cuh"

// A code x < 2^E as the float 1 + x / 2^E: its bits are 1.0f's with x in the top mantissa bits,
// so one OR makes it (no I2F, no subtraction). With v = 1 + q / 2^E,
//     sum q*h = 2^E * (sum v*h - sum h)   and   q = 2^E * (v - 1),
// which the kernels use with sum h from their table (both sums are of like size: the difference
// loses only a few float32 ulps).
template <int E>
__device__ __forceinline__ float qv(unsigned x) { return __int_as_float(0x3F800000u | (x << (23 - E))); }
__device__ __forceinline__ float qh16(const unsigned char* p) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
// 4 bytes at a 2-byte aligned address
__device__ __forceinline__ unsigned ld4a2(const unsigned char* p) {
    const unsigned short* s = reinterpret_cast<const unsigned short*>(p);
    return (unsigned)__ldg(s) | ((unsigned)__ldg(s + 1) << 16);
}
__device__ __forceinline__ unsigned ld4(const unsigned char* p) {
    return __ldg(reinterpret_cast<const unsigned*>(p));
}
__device__ __forceinline__ unsigned byte_of(unsigned w, int i) { return (w >> (8 * i)) & 0xFFu; }
// bits 0..3 of x to bit 0 of bytes 0..3 (the x << 7k terms of the product never overlap)
__device__ __forceinline__ unsigned spread4(unsigned x) { return ((x & 0xFu) * 0x00204081u) & 0x01010101u; }

// Q8_0: {f16 d; int8 q[32]}: w = d * q. One unit, one run.
struct QQ8_0 {
    static constexpr int QK = 32, BB = 34, NSUB = 1, RUNS = 1, RL = 32, E = 8;
    static __device__ __forceinline__ int start(int, int) { return 0; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int, float* q, float* d, float* m) {
        const float dd = qh16(b);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned w = ld4a2(b + 2 + 4 * i) ^ 0x80808080u;  // int8 + 128
#pragma unroll
            for (int j = 0; j < 4; ++j) q[4 * i + j] = qv<E>(byte_of(w, j));
        }
        d[0] = dd;
        m[0] = -128.0f * dd;
    }
    // codes as signed bytes (the block's int8s), d = scale, m = 0
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int, int* qw, float* d, float* m) {
#pragma unroll
        for (int i = 0; i < 8; ++i) qw[i] = (int)ld4a2(b + 2 + 4 * i);
        d[0] = qh16(b);
        m[0] = 0.0f;
    }
};

// Q4_0: {f16 d; u8 qs[16]}: element j < 16 is the low nibble of qs[j], j + 16 the high one; w = d * (q - 8)
struct QQ4_0 {
    static constexpr int QK = 32, BB = 18, NSUB = 1, RUNS = 2, RL = 16, E = 4;
    static __device__ __forceinline__ int start(int, int r) { return 16 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int, float* q, float* d, float* m) {
        const float dd = qh16(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned w = ld4a2(b + 2 + 4 * i);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                q[4 * i + j] = qv<E>(byte_of(w, j) & 0xF);
                q[16 + 4 * i + j] = qv<E>(byte_of(w, j) >> 4);
            }
        }
        d[0] = d[1] = dd;
        m[0] = m[1] = -8.0f * dd;
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int, int* qw, float* d, float* m) {
        const float dd = qh16(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned w = ld4a2(b + 2 + 4 * i);
            qw[i] = (int)(w & 0x0F0F0F0Fu);
            qw[4 + i] = (int)((w >> 4) & 0x0F0F0F0Fu);
        }
        d[0] = d[1] = dd;
        m[0] = m[1] = -8.0f * dd;
    }
};

// Q4_1: {f16 d, m; u8 qs[16]}: w = d * q + m
struct QQ4_1 {
    static constexpr int QK = 32, BB = 20, NSUB = 1, RUNS = 2, RL = 16, E = 4;
    static __device__ __forceinline__ int start(int, int r) { return 16 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int, float* q, float* d, float* m) {
        const float dd = qh16(b), mm = qh16(b + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned w = ld4(b + 4 + 4 * i);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                q[4 * i + j] = qv<E>(byte_of(w, j) & 0xF);
                q[16 + 4 * i + j] = qv<E>(byte_of(w, j) >> 4);
            }
        }
        d[0] = d[1] = dd;
        m[0] = m[1] = mm;
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int, int* qw, float* d, float* m) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned w = ld4(b + 4 + 4 * i);
            qw[i] = (int)(w & 0x0F0F0F0Fu);
            qw[4 + i] = (int)((w >> 4) & 0x0F0F0F0Fu);
        }
        d[0] = d[1] = qh16(b);
        m[0] = m[1] = qh16(b + 2);
    }
};

// The 32 codes of a Q5_0 / Q5_1 block: element e < 16 is the low nibble of qs[e], e >= 16 the high
// nibble of qs[e - 16], bit 4 bit e of qh; qs read as 4 words by ld (the blocks' alignments differ).
template <int E, class LD>
__device__ __forceinline__ void q5_decode(const unsigned char* qs, unsigned qh, float* q, LD ld) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned w = ld(qs + 4 * i);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int e = 4 * i + j;
            q[e] = qv<E>((byte_of(w, j) & 0xF) | (((qh >> e) & 1u) << 4));
            q[16 + e] = qv<E>((byte_of(w, j) >> 4) | (((qh >> (e + 16)) & 1u) << 4));
        }
    }
}
// ... as int8 codes, 4 to a word (decode_i8's layout)
template <class LD>
__device__ __forceinline__ void q5_decode_i8(const unsigned char* qs, unsigned qh, int* qw, LD ld) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned w = ld(qs + 4 * i);
        qw[i] = (int)((w & 0x0F0F0F0Fu) | (spread4(qh >> (4 * i)) << 4));
        qw[4 + i] = (int)(((w >> 4) & 0x0F0F0F0Fu) | (spread4(qh >> (16 + 4 * i)) << 4));
    }
}

// Q5_0: {f16 d; u32 qh; u8 qs[16]}: bit j of qh is bit 4 of element j; w = d * (q - 16)
struct QQ5_0 {
    static constexpr int QK = 32, BB = 22, NSUB = 1, RUNS = 2, RL = 16, E = 5;
    static __device__ __forceinline__ int start(int, int r) { return 16 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int, float* q, float* d, float* m) {
        const float dd = qh16(b);
        q5_decode<E>(b + 6, ld4a2(b + 2), q, [](const unsigned char* p) { return ld4a2(p); });
        d[0] = d[1] = dd;
        m[0] = m[1] = -16.0f * dd;
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int, int* qw, float* d, float* m) {
        const float dd = qh16(b);
        q5_decode_i8(b + 6, ld4a2(b + 2), qw, [](const unsigned char* p) { return ld4a2(p); });
        d[0] = d[1] = dd;
        m[0] = m[1] = -16.0f * dd;
    }
};

// Q5_1: {f16 d, m; u32 qh; u8 qs[16]}: w = d * q + m
struct QQ5_1 {
    static constexpr int QK = 32, BB = 24, NSUB = 1, RUNS = 2, RL = 16, E = 5;
    static __device__ __forceinline__ int start(int, int r) { return 16 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int, float* q, float* d, float* m) {
        const float dd = qh16(b), mm = qh16(b + 2);
        q5_decode<E>(b + 8, ld4(b + 4), q, [](const unsigned char* p) { return ld4(p); });
        d[0] = d[1] = dd;
        m[0] = m[1] = mm;
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int, int* qw, float* d, float* m) {
        q5_decode_i8(b + 8, ld4(b + 4), qw, [](const unsigned char* p) { return ld4(p); });
        d[0] = d[1] = qh16(b);
        m[0] = m[1] = qh16(b + 2);
    }
};

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d, dmin}. Unit s = (n = s/4, j = s%4): elements
// 128n + 32j + l, l < 32, q = (qs[32n + l] >> 2j) & 3; run r = l/16 has scale byte
// sc = scales[8n + 2j + r]: w = d * (sc & 15) * q - dmin * (sc >> 4)
struct QQ2_K {
    static constexpr int QK = 256, BB = 84, NSUB = 8, RUNS = 2, RL = 16, E = 2;
    static __device__ __forceinline__ int start(int s, int r) { return 32 * s + 16 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int s, float* q, float* d, float* m) {
        const int n = s >> 2, j = s & 3;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned w = ld4(b + 16 + 32 * n + 4 * i);
#pragma unroll
            for (int k = 0; k < 4; ++k) q[4 * i + k] = qv<E>((byte_of(w, k) >> (2 * j)) & 3u);
        }
        k2_scales(b, n, j, d, m);
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int s, int* qw, float* d, float* m) {
        const int n = s >> 2, j = s & 3;
#pragma unroll
        for (int i = 0; i < 8; ++i) qw[i] = (int)((ld4(b + 16 + 32 * n + 4 * i) >> (2 * j)) & 0x03030303u);
        k2_scales(b, n, j, d, m);
    }
    static __device__ __forceinline__ void k2_scales(const unsigned char* b, int n, int j, float* d, float* m) {
        const float dd = qh16(b + 80), dmin = qh16(b + 82);
        const unsigned sc2 = __ldg(reinterpret_cast<const unsigned short*>(b + 8 * n + 2 * j));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const unsigned sc = (sc2 >> (8 * r)) & 0xFFu;
            d[r] = dd * (float)(sc & 0xF);
            m[r] = -dmin * (float)(sc >> 4);
        }
    }
};

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12] (16 packed 6-bit); f16 d}. Unit s = (n, j):
// element 128n + 32j + l: q = ((qs[32n + l] >> 2j) & 3) - (hmask[l] bit (4n + j) ? 0 : 4),
// run r = l/16, scale index is = 8n + 2j + r: w = d * (sc[is] - 32) * q
struct QQ3_K {
    static constexpr int QK = 256, BB = 110, NSUB = 8, RUNS = 2, RL = 16, E = 3;
    static __device__ __forceinline__ int start(int s, int r) { return 32 * s + 16 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int s, float* q, float* d, float* m) {
        const int n = s >> 2, j = s & 3, hb = 4 * n + j;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned w = ld4a2(b + 32 + 32 * n + 4 * i);
            const unsigned h = ld4a2(b + 4 * i);
#pragma unroll
            for (int k = 0; k < 4; ++k)  // q + 4 in [0, 7]
                q[4 * i + k] = qv<E>(((byte_of(w, k) >> (2 * j)) & 3u) | (((byte_of(h, k) >> hb) & 1u) << 2));
        }
        k3_scales(b, n, j, d, m);
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int s, int* qw, float* d, float* m) {
        const int n = s >> 2, j = s & 3, hb = 4 * n + j;
#pragma unroll
        for (int i = 0; i < 8; ++i) {  // q + 4 in [0, 7]
            const unsigned w = ld4a2(b + 32 + 32 * n + 4 * i), h = ld4a2(b + 4 * i);
            qw[i] = (int)(((w >> (2 * j)) & 0x03030303u) | (((h >> hb) & 0x01010101u) << 2));
        }
        k3_scales(b, n, j, d, m);
    }
    static __device__ __forceinline__ void k3_scales(const unsigned char* b, int n, int j, float* d, float* m) {
        const float dd = qh16(b + 108);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int is = 8 * n + 2 * j + r;
            const unsigned lo = is < 8 ? (b[96 + is] & 0xF) : (b[96 + is - 8] >> 4);
            const unsigned hi = (b[96 + 8 + (is & 3)] >> (2 * (is >> 2))) & 3u;
            d[r] = dd * (float)((int)(lo | (hi << 4)) - 32);
            m[r] = -4.0f * d[r];
        }
    }
};

// The 16-byte header of a Q4_K / Q5_K block {f16 d, dmin; u8 scales[12]} (16-byte aligned: the
// blocks are 144 / 176 bytes) in one load, and the 6-bit scales and mins of sub-blocks 2j and
// 2j + 1 from it (ggml's get_scale_min_k4), both at once from 16-bit pairs of scale bytes:
//   j < 2:  sc = scales[2j + r] & 63,  mn = scales[2j + 4 + r] & 63
//   j >= 2: sc = (scales[2j + 4 + r] & 15) | (scales[2j - 4 + r] >> 6) << 4,
//           mn = (scales[2j + 4 + r] >> 4) | (scales[2j + r] >> 6) << 4
// (the byte-by-byte form with a run-time index cost ~40 integer instructions per unit and row,
// more than the dot products themselves)
struct QHeaderK4 {
    float d, dmin;
    unsigned s0, s1, s2;  // scales[0..3], [4..7], [8..11]
    __device__ __forceinline__ explicit QHeaderK4(const unsigned char* b) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(b));
        d = __half2float(__ushort_as_half((unsigned short)(v.x & 0xFFFFu)));
        dmin = __half2float(__ushort_as_half((unsigned short)(v.x >> 16)));
        s0 = v.y;
        s1 = v.z;
        s2 = v.w;
    }
    // d and m of the two runs of a Q4_K / Q5_K unit in sub-block pair j (sub-blocks 2j, 2j + 1)
    __device__ __forceinline__ void scales2(int j, float* dr, float* mr) const {
        const int sh = 16 * (j & 1);  // which 16-bit half of a word holds the pair
        const unsigned p0 = (s0 >> sh) & 0xFFFFu, p1 = (s1 >> sh) & 0xFFFFu, p2 = (s2 >> sh) & 0xFFFFu;
        unsigned sc, mn;
        if (j < 2) {
            sc = p0 & 0x3F3Fu;
            mn = p1 & 0x3F3Fu;
        } else {
            sc = (p2 & 0x0F0Fu) | ((p0 & 0xC0C0u) >> 2);
            mn = ((p2 >> 4) & 0x0F0Fu) | ((p1 & 0xC0C0u) >> 2);
        }
        dr[0] = d * (float)(sc & 0xFFu);
        dr[1] = d * (float)(sc >> 8);
        mr[0] = -dmin * (float)(mn & 0xFFu);
        mr[1] = -dmin * (float)(mn >> 8);
    }
};

// Q4_K: {f16 d, dmin; u8 scales[12]; u8 qs[128]}. Unit s = (j = s/2, half hh = s%2): 16 bytes
// qs[32j + 16hh + i]; run 0 = their low nibbles, elements 64j + 16hh + i, sub-block 2j; run 1
// = high nibbles, elements 64j + 32 + 16hh + i, sub-block 2j + 1: w = d * sc * q - dmin * mn
struct QQ4_K {
    static constexpr int QK = 256, BB = 144, NSUB = 8, RUNS = 2, RL = 16, E = 4;
    static __device__ __forceinline__ int start(int s, int r) { return 64 * (s >> 1) + 16 * (s & 1) + 32 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int s, float* q, float* d, float* m) {
        const int j = s >> 1, hh = s & 1;
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(b + 16 + 32 * j + 16 * hh));
        const unsigned a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                q[4 * i + k] = qv<E>(byte_of(a[i], k) & 0xF);
                q[16 + 4 * i + k] = qv<E>(byte_of(a[i], k) >> 4);
            }
        QHeaderK4(b).scales2(j, d, m);
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int s, int* qw, float* d, float* m) {
        const int j = s >> 1, hh = s & 1;
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(b + 16 + 32 * j + 16 * hh));
        const unsigned a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            qw[i] = (int)(a[i] & 0x0F0F0F0Fu);
            qw[4 + i] = (int)((a[i] >> 4) & 0x0F0F0F0Fu);
        }
        QHeaderK4(b).scales2(j, d, m);
    }
};

// Q5_K: {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K, plus bit 4 of element
// 64j + l (l < 32) from bit 2j of qh[l] and of 64j + 32 + l from bit 2j + 1
struct QQ5_K {
    static constexpr int QK = 256, BB = 176, NSUB = 8, RUNS = 2, RL = 16, E = 5;
    static __device__ __forceinline__ int start(int s, int r) { return 64 * (s >> 1) + 16 * (s & 1) + 32 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int s, float* q, float* d, float* m) {
        const int j = s >> 1, hh = s & 1;
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(b + 48 + 32 * j + 16 * hh));
        const uint4 hv = __ldg(reinterpret_cast<const uint4*>(b + 16 + 16 * hh));
        const unsigned a[4] = {v.x, v.y, v.z, v.w}, h[4] = {hv.x, hv.y, hv.z, hv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const unsigned hb = byte_of(h[i], k) >> (2 * j);
                q[4 * i + k] = qv<E>((byte_of(a[i], k) & 0xF) | ((hb & 1u) << 4));
                q[16 + 4 * i + k] = qv<E>((byte_of(a[i], k) >> 4) | ((hb & 2u) << 3));
            }
        QHeaderK4(b).scales2(j, d, m);
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int s, int* qw, float* d, float* m) {
        const int j = s >> 1, hh = s & 1;
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(b + 48 + 32 * j + 16 * hh));
        const uint4 hv = __ldg(reinterpret_cast<const uint4*>(b + 16 + 16 * hh));
        const unsigned a[4] = {v.x, v.y, v.z, v.w}, h[4] = {hv.x, hv.y, hv.z, hv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned hb = h[i] >> (2 * j);
            qw[i] = (int)((a[i] & 0x0F0F0F0Fu) | ((hb & 0x01010101u) << 4));
            qw[4 + i] = (int)(((a[i] >> 4) & 0x0F0F0F0Fu) | ((hb & 0x02020202u) << 3));
        }
        QHeaderK4(b).scales2(j, d, m);
    }
};

// Q6_K: {u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d}. Unit s = (n = s/4, g = s%4), l = 8g + i
// (i < 8), ql/qh/scales advanced by 64/32/8 per n; run r = 0..3 is element 128n + 32r + l:
//   r0 = (ql[l] & 15) | ((qh[l] >> 0) & 3) << 4,  r1 = (ql[l+32] & 15) | ((qh[l] >> 2) & 3) << 4,
//   r2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,  r3 = (ql[l+32] >> 4) | ((qh[l] >> 6) & 3) << 4,
// w = d * scales[l/16 + 2r] * (q - 32)
struct QQ6_K {
    static constexpr int QK = 256, BB = 210, NSUB = 8, RUNS = 4, RL = 8, E = 6;
    static __device__ __forceinline__ int start(int s, int r) { return 128 * (s >> 2) + 8 * (s & 3) + 32 * r; }
    static __device__ __forceinline__ void decode(const unsigned char* b, int s, float* q, float* d, float* m) {
        const int n = s >> 2, l0 = 8 * (s & 3);
        const unsigned char* ql = b + 64 * n + l0;
        const unsigned char* qh = b + 128 + 32 * n + l0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const unsigned lo = ld4a2(ql + 4 * i), hi = ld4a2(ql + 32 + 4 * i), h = ld4a2(qh + 4 * i);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int e = 4 * i + k;
                const unsigned hb = byte_of(h, k);
                q[e] = qv<E>((byte_of(lo, k) & 0xF) | ((hb & 3u) << 4));
                q[8 + e] = qv<E>((byte_of(hi, k) & 0xF) | (((hb >> 2) & 3u) << 4));
                q[16 + e] = qv<E>((byte_of(lo, k) >> 4) | (((hb >> 4) & 3u) << 4));
                q[24 + e] = qv<E>((byte_of(hi, k) >> 4) | (((hb >> 6) & 3u) << 4));
            }
        }
        const float dd = qh16(b + 208);
        const signed char* sc = reinterpret_cast<const signed char*>(b + 192 + 8 * n + (l0 >> 4));
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            d[r] = dd * (float)sc[2 * r];
            m[r] = -32.0f * d[r];
        }
    }
    static __device__ __forceinline__ void decode_i8(const unsigned char* b, int s, int* qw, float* d, float* m) {
        const int n = s >> 2, l0 = 8 * (s & 3);
        const unsigned char* ql = b + 64 * n + l0;
        const unsigned char* qh = b + 128 + 32 * n + l0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const unsigned lo = ld4a2(ql + 4 * i), hi = ld4a2(ql + 32 + 4 * i), h = ld4a2(qh + 4 * i);
            qw[i] = (int)((lo & 0x0F0F0F0Fu) | ((h & 0x03030303u) << 4));
            qw[2 + i] = (int)((hi & 0x0F0F0F0Fu) | (((h >> 2) & 0x03030303u) << 4));
            qw[4 + i] = (int)(((lo >> 4) & 0x0F0F0F0Fu) | (((h >> 4) & 0x03030303u) << 4));
            qw[6 + i] = (int)(((hi >> 4) & 0x0F0F0F0Fu) | (((h >> 6) & 0x03030303u) << 4));
        }
        const float dd = qh16(b + 208);
        const signed char* sc = reinterpret_cast<const signed char*>(b + 192 + 8 * n + (l0 >> 4));
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            d[r] = dd * (float)sc[2 * r];
            m[r] = -32.0f * d[r];
        }
    }
};

// X(type struct, kernel suffix) for every supported type
#define TG_QUANT_TYPES_32(X) X(QQ8_0, q8_0) X(QQ4_0, q4_0) X(QQ4_1, q4_1) X(QQ5_0, q5_0) X(QQ5_1, q5_1)
#define TG_QUANT_TYPES_256(X) X(QQ2_K, q2_k) X(QQ3_K, q3_k) X(QQ4_K, q4_k) X(QQ5_K, q5_k) X(QQ6_K, q6_k)
#define TG_QUANT_TYPES(X) TG_QUANT_TYPES_32(X) TG_QUANT_TYPES_256(X)
