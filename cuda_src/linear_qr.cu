// linear_qr.cu -- the decode GEMV with ggml q4_k / q8_0 weights, the activations held in registers.
//
// Semantics: those of linear_q (linear_q.cu): y = act(norm(x) @ dequant(w).T + bias) + res for a
// few rows of x, w the file's raw blocks (row n at byte n * ldw, ldw and w 16-byte aligned),
// float32 sums. What it rounds: the normalised row, per block of 32, to a 16-bit fixed-point
// value held as two int8 planes, x ~= s * (hi + lo / 254) with s = max|x| / 127 (so the error of
// an element is at most s / 508, about 2^-16 of the block's largest element: on random rows 2e-5
// relative error on a product, against 2e-4 for float16; tools/quant_act_error.py --products).
// Weight codes stay integers; code x plane products are 4-wide integer dot products (dp4a),
// exact; the per-run scales and offsets (d * sc, -dmin * m times the rounded row's run sums) in
// float32.
//
// Signature (Q = q4_k | q8_0; T = __half | __nv_bfloat16, suffix f16 | bf16):
//   linear_qr_Q_T(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K)
//     Design: a lane owns one "slice" of the row -- 128 weights: half a 256-weight super-block,
//       or 4 q8_0 blocks -- for the whole kernel: its slice of the normalised, rounded row sits
//       in 64 registers (both planes) with the slice's scales and sums, loaded once. A team of TS
//       lanes (the smallest of 8, 16, 32 or a multiple of 32 lanes with one lane per slice, K / 128
//       slices) computes whole weight rows, R at a time (q4_k 4, q8_0 2): each lane
//       decodes its slice of each row with a few logic ops per 4 weights and multiplies the codes
//       with both planes by dp4a; the team's lanes then meet by shuffles (and, when a team spans
//       warps, in shared memory). Weight rows: on sm_90 (TG_LQR_TMA) a team's lane 0 bulk-copies
//       each trip's rows (cp.async.bulk, a transaction barrier per stage) into a ring of
//       TG_LQR_STAGES shared-memory stages, the first trips once the block has read x
//       (TG_LQR_EARLY); otherwise (and with -DTG_LQR_TMA=0) each lane loads its slices into
//       registers, the next trip's after this one's products. q8_0's 34-byte blocks are read as
//       8-byte words and funnel shifts. (A q6_k slice read its 2-byte aligned blocks as aligned
//       32-bit words: on the H200 that ran up to 6 bytes past the ring's last stage and faulted;
//       it was taken out, commit 4c1e00a has it.)
//     Why: linear_q8a and linear_qmma re-read the activations from shared memory and re-derive
//       addresses and scales per 32-weight unit (ncu: issue-bound at 50-60% with DRAM at
//       25-40%). Measured (bench/README.md, H200, with programmatic launch, µs): Qwen3-8B q4_k
//       gate/up 35.1 -> 20.2, down 19.8 -> 15.4; TinyLlama's layers level or faster; smaller
//       layers untimed, hence select.QR_MIN_WEIGHTS / QR_MIN_K. Bulk copies against register
//       loads (-DTG_LQR_TMA=0): 321 against 297 tok/s on Qwen3-8B Q4_K_M.
//     Prologue: the block stages its row of x, normalised, as float32 (linear_common.cuh), rounds
//       it to the two planes per 32 (a thread per 8 values; stored transposed, lqr_at8, so that
//       the lanes' reads meet no bank conflicts), and each lane copies its slice into registers.
//     Launch: grid = rows * C blocks (any C is correct); block = select.qr_block(K) threads (256,
//       or the multiple of a multi-warp team's TS that is <= 256); dynamic shared memory
//       select.linear_q_shared_bytes(K, "linear_qr", Q): the staging (K*53/8 bytes, to 128) and
//       the ring (teams x stages x R x ldw); a build whose ring is larger traps.
#include "linear_common.cuh"
#include "quant_blocks.cuh"

extern __shared__ float lqr_smem[];

#ifndef TG_LQR_ROWS
#define TG_LQR_ROWS 4  // weight rows a team computes at once (their loads in flight together)
#endif
#ifndef TG_LQR_ROWS_Q8
#define TG_LQR_ROWS_Q8 2  // the same for q8_0 (rows 89% longer: the ring must fit)
#endif
#ifndef TG_LQR_ROWS_Q6
#define TG_LQR_ROWS_Q6 2  // the same for q6_k (rows 46% longer)
#endif
#ifndef TG_LQR_TMA
#define TG_LQR_TMA 1  // sm_90: weight rows by bulk copies into shared-memory stages (else loads to registers)
#endif
#ifndef TG_LQR_STAGES
#define TG_LQR_STAGES 2  // stages per team of the bulk-copy ring
#endif
#ifndef TG_LQR_MINB
#define TG_LQR_MINB 1  // resident blocks per SM the kernel is compiled for
#endif

#ifndef TG_LQR_EARLY
// trips per team whose rows are copied before the wait (the rest once x is read: under a flood of
// weight copies x's loads queue for µs). H200, Qwen3-8B q4_k with programmatic launch, µs, 2 -> 0:
// gate/up 21.8 -> 20.4, down 18.6 -> 17.2, o 9.1 -> 8.4, qkv 12.1 -> 11.5; Q4_K_M 315 -> 321 tok/s
// (three calls). Copying them only once the row is in registers measured slower (302 tok/s).
#define TG_LQR_EARLY 0
#endif
#ifndef TG_LQR_PROBE
#define TG_LQR_PROBE 0  // 1: thread 0 of each block stamps %globaltimer at 8 points (tools/bench_quant_kernels.py --probe)
#endif
#if TG_LQR_PROBE
#define LQR_PROBE_BLOCKS 4096
__device__ unsigned long long lqr_probe[LQR_PROBE_BLOCKS * 8];
#define LQR_MARK(k)                                                                      \
    do {                                                                                 \
        if (threadIdx.x == 0 && blockIdx.x < LQR_PROBE_BLOCKS) {                         \
            unsigned long long t_;                                                       \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                       \
            lqr_probe[blockIdx.x * 8 + (k)] = t_;                                        \
        }                                                                                \
    } while (0)
#else
#define LQR_MARK(k)
#endif

// lo plane: the remainder (x/s - hi) in [-0.5, 0.5] times LQR_LO, rounded
#define LQR_LO 254

// dp4a of 4 unsigned bytes (a) with 4 signed ones (b): a nibble kept in the high half of its
// byte (code * 16, 0..240) needs no shift.
__device__ __forceinline__ int lqr_dp4a_us(unsigned a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The team size for K: one lane per 128-weight slice, rounded up to 8, 16, 32 or a multiple of 32.
__device__ __forceinline__ int lqr_team(int K) {
    const int ns = K / 128;
    return ns <= 8 ? 8 : ns <= 16 ? 16 : ns <= 32 ? 32 : 32 * ((ns + 31) / 32);
}

// Where the rounded row sits in shared memory: transposed so that the lanes of a team, lane sl
// reading slice sl (values 128 sl ..), read consecutive words. In a plane, 16-byte chunk c (values
// 16c .. 16c+15) of slice sl is at byte (c * nsl + sl) * 16; the sum of group g (values 8g ..) at
// (g % 16) * nsl + g / 16; the scale of 32-block s at (s % 4) * nsl + s / 4. (In row order a lane's
// chunks were 128 bytes from its neighbour's: 8-way bank conflicts, 16-way on the sums; the probe
// put the 8 warps' reads at ~3 µs a block on the H200.)
__device__ __forceinline__ int lqr_at8(int g, int nsl) {  // byte of values 8g .. 8g+7 in a plane
    return (((g & 15) >> 1) * nsl + (g >> 4)) * 16 + (g & 1) * 8;
}
__device__ __forceinline__ int lqr_at_sum8(int g, int nsl) { return (g & 15) * nsl + (g >> 4); }
__device__ __forceinline__ int lqr_at_scale(int s, int nsl) { return (s & 3) * nsl + (s >> 2); }

// Round the staged, normalised row hrow [K] (float32) to the two planes (hi, lo: int8 [K]), their
// scale per 32 divided by LQR_LO (sa32) and, per 8 values, LQR_LO * sum(hi) + sum(lo) (isum8), at
// the places lqr_at8 / lqr_at_sum8 / lqr_at_scale name. A thread takes 8 values, so the 4 threads
// of a 32-block are lanes 4c..4c+3 of one warp. A non-finite value makes its block's scale NaN
// (every output that reads it is then NaN, as with float math).
__device__ __forceinline__ void lqr_quantize_row(const float* hrow, int K, signed char* hi, signed char* lo,
                                                 float* sa32, int* isum8) {
    const int ng = K / 8, nsl = ng >> 4;
    for (int g0 = 0; g0 < ng; g0 += blockDim.x) {  // uniform trip count: every lane reaches the shuffles
        const int g = g0 + threadIdx.x;
        float v[8], sum;
        const float amax = lin_load8_amax32(hrow, g, ng, v, sum);
        int bad = isfinite(sum) ? 0 : 1;
        bad |= __shfl_xor_sync(0xffffffffu, bad, 1);
        bad |= __shfl_xor_sync(0xffffffffu, bad, 2);
        if (g < ng) {
            const float inv = (amax > 0.0f && !bad) ? 127.0f / amax : 0.0f;
            unsigned ph[2] = {0u, 0u}, pl[2] = {0u, 0u};
            int sh = 0, sl = 0;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float xs = v[e] * inv;
                const int qh = __float2int_rn(xs);
                const int ql = __float2int_rn((xs - (float)qh) * (float)LQR_LO);
                sh += qh;
                sl += ql;
                ph[e >> 2] |= ((unsigned)qh & 0xFFu) << (8 * (e & 3));
                pl[e >> 2] |= ((unsigned)ql & 0xFFu) << (8 * (e & 3));
            }
            *reinterpret_cast<uint2*>(hi + lqr_at8(g, nsl)) = make_uint2(ph[0], ph[1]);
            *reinterpret_cast<uint2*>(lo + lqr_at8(g, nsl)) = make_uint2(pl[0], pl[1]);
            isum8[lqr_at_sum8(g, nsl)] = LQR_LO * sh + sl;
            if ((g & 3) == 0)
                sa32[lqr_at_scale(g >> 2, nsl)] = bad ? __int_as_float(0x7fc00000) : amax / (127.0f * (float)LQR_LO);
        }
    }
}

// A lane's slice of the rounded row: planes (word i of sub-block b: elements 32b + 4i .. +3),
// scale / LQR_LO and the offset-term sum (scale * (LQR_LO * sum hi + sum lo), i.e. the sum of the
// rounded values) per 32-weight sub-block.
struct LqrAct {
    int h[4][8], l[4][8];
    float sa[4], sx[4];
    int s16[4][2];  // LQR_LO * sum(hi) + sum(lo) per 16 (q6_k's code offset -32, kept in integers)
};

// Q4_K slice: half hh of super-block blk (sub-blocks 4hh .. 4hh+3): header (d, dmin, 12 bytes of
// 6-bit scales and mins) and qs[64hh .. 64hh+63] (pair j = 2hh + p: 32 bytes, low nibbles =
// sub-block 2j, high = 2j + 1).
struct LqrQ4K {
    uint4 hd, q[4];
    __device__ __forceinline__ void load(const unsigned char* row, int sl) {
        const unsigned char* b = row + (long long)(sl >> 1) * 144;
        hd = __ldg(reinterpret_cast<const uint4*>(b));
        const uint4* qs = reinterpret_cast<const uint4*>(b + 16 + 64 * (sl & 1));
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = __ldg(qs + i);
    }
    // the same bytes from a copy of the row in shared memory
    __device__ __forceinline__ void load_shared(const unsigned char* row, int sl) {
        const unsigned char* b = row + (sl >> 1) * 144;
        hd = *reinterpret_cast<const uint4*>(b);
        const uint4* qs = reinterpret_cast<const uint4*>(b + 16 + 64 * (sl & 1));
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = qs[i];
    }
    // sum over the slice of w * x (x the rounded row)
    __device__ __forceinline__ float dot(const LqrAct& a, int hh) const {
        const float d = __half2float(__ushort_as_half((unsigned short)(hd.x & 0xFFFFu)));
        const float dmin = __half2float(__ushort_as_half((unsigned short)(hd.x >> 16)));
        // 6-bit scales / mins of sub-blocks 4hh .. 4hh+3 as 4 bytes each (ggml get_scale_min_k4)
        const unsigned sc = hh ? ((hd.w & 0x0F0F0F0Fu) | ((hd.y & 0xC0C0C0C0u) >> 2)) : (hd.y & 0x3F3F3F3Fu);
        const unsigned mn = hh ? (((hd.w >> 4) & 0x0F0F0F0Fu) | ((hd.z & 0xC0C0C0C0u) >> 2)) : (hd.z & 0x3F3F3F3Fu);
        const unsigned qw[16] = {q[0].x, q[0].y, q[0].z, q[0].w, q[1].x, q[1].y, q[1].z, q[1].w,
                                 q[2].x, q[2].y, q[2].z, q[2].w, q[3].x, q[3].y, q[3].z, q[3].w};
        float acc = 0.0f;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            int ah = 0, al = 0, bh = 0, bl = 0;  // sub-block 2p (low nibbles), 2p + 1 (high, x16)
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const unsigned wv = qw[8 * p + i];
                const unsigned lw = wv & 0x0F0F0F0Fu, hw = wv & 0xF0F0F0F0u;
                ah = lqr_dp4a_us(lw, a.h[2 * p][i], ah);
                al = lqr_dp4a_us(lw, a.l[2 * p][i], al);
                bh = lqr_dp4a_us(hw, a.h[2 * p + 1][i], bh);
                bl = lqr_dp4a_us(hw, a.l[2 * p + 1][i], bl);
            }
            const int s0 = 2 * p, s1 = 2 * p + 1;
            acc = fmaf(d * (float)((sc >> (8 * s0)) & 0xFFu) * a.sa[s0], (float)(LQR_LO * ah + al), acc);
            acc = fmaf(d * (float)((sc >> (8 * s1)) & 0xFFu) * (a.sa[s1] * 0.0625f), (float)(LQR_LO * bh + bl), acc);
            acc = fmaf(-dmin * (float)((mn >> (8 * s0)) & 0xFFu), a.sx[s0], acc);
            acc = fmaf(-dmin * (float)((mn >> (8 * s1)) & 0xFFu), a.sx[s1], acc);
        }
        return acc;
    }
};

// Q8_0 slice: blocks 4sl .. 4sl+3 (136 bytes at 136 * sl: 8-byte aligned), block j = sub-block j:
// f16 d at byte 34j, int8 codes at 34j + 2 (blocks 0 and 2 start 4-byte aligned, 1 and 3 do not).
struct LqrQ8 {
    unsigned wd[34];
    __device__ __forceinline__ void load_any(const unsigned char* row, int sl) {
        const uint2* p = reinterpret_cast<const uint2*>(row + sl * 136);
#pragma unroll
        for (int i = 0; i < 17; ++i) {
            const uint2 v = p[i];
            wd[2 * i] = v.x;
            wd[2 * i + 1] = v.y;
        }
    }
    __device__ __forceinline__ void load(const unsigned char* row, int sl) { load_any(row, sl); }
    __device__ __forceinline__ void load_shared(const unsigned char* row, int sl) { load_any(row, sl); }
    __device__ __forceinline__ float dot(const LqrAct& a, int) const {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int w0 = (34 * j) / 4;  // the word holding d: its low half (j even) or high half
            const unsigned short dbits = (unsigned short)((j & 1) ? (wd[w0] >> 16) : (wd[w0] & 0xFFFFu));
            int ih = 0, il = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) {  // codes of j even: bytes 2.. of word w0 on; j odd: word w0 + 1 on
                const unsigned c = (j & 1) ? wd[w0 + 1 + i] : __funnelshift_r(wd[w0 + i], wd[w0 + i + 1], 16);
                ih = __dp4a((int)c, a.h[j][i], ih);
                il = __dp4a((int)c, a.l[j][i], il);
            }
            acc = fmaf(__half2float(__ushort_as_half(dbits)) * a.sa[j], (float)(LQR_LO * ih + il), acc);
        }
        return acc;
    }
};

// n consecutive 32-bit words from p, only 2-byte aligned (q6_k's 210-byte blocks): aligned words and
// a funnel shift each. The word past the run is read only when p is misaligned (then it holds the
// run's last 2 bytes), so no read leaves the run's 4-byte span: the last block of a shared-memory
// stage ends the ring. Plain loads: the row is in shared memory (the ring) or in global memory.
template <int n>
__device__ __forceinline__ void lqr_words(const unsigned char* p, unsigned* o) {
    const unsigned* a = reinterpret_cast<const unsigned*>(reinterpret_cast<unsigned long long>(p) & ~3ULL);
    const unsigned sh = 8u * (unsigned)(reinterpret_cast<unsigned long long>(p) & 3ULL);
    unsigned v[n + 1];
#pragma unroll
    for (int i = 0; i < n; ++i) v[i] = a[i];
    v[n] = sh ? a[n] : 0u;
#pragma unroll
    for (int i = 0; i < n; ++i) o[i] = __funnelshift_r(v[i], v[i + 1], sh);
}

// Q6_K slice: half hh of block blk, elements 128hh + 32r + l (r < 4, l < 32): code (0..63) from
// ql[64hh + l] (r 0, 2: low, high nibble) or ql[64hh + 32 + l] (r 1, 3) and bits 2r, 2r+1 of
// qh[32hh + l]; w = d * scales[8hh + l/16 + 2r] * (code - 32). The block's f16 d (its last 2
// bytes) is read as 16 bits.
struct LqrQ6K {
    unsigned ql[16], qh[8], sc[2];
    unsigned short db;
    __device__ __forceinline__ void load_any(const unsigned char* row, int sl) {
        const unsigned char* b = row + (sl >> 1) * 210;
        const int hh = sl & 1;
        lqr_words<16>(b + 64 * hh, ql);
        lqr_words<8>(b + 128 + 32 * hh, qh);
        lqr_words<2>(b + 192 + 8 * hh, sc);
        db = *reinterpret_cast<const unsigned short*>(b + 208);
    }
    __device__ __forceinline__ void load(const unsigned char* row, int sl) { load_any(row, sl); }
    __device__ __forceinline__ void load_shared(const unsigned char* row, int sl) { load_any(row, sl); }
    __device__ __forceinline__ float dot(const LqrAct& a, int) const {
        const float d = __half2float(__ushort_as_half(db));
        int ih[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}}, il[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned L0 = ql[i], L1 = ql[8 + i], H = qh[i];
            const unsigned c[4] = {(L0 & 0x0F0F0F0Fu) | ((H << 4) & 0x30303030u),
                                   (L1 & 0x0F0F0F0Fu) | ((H << 2) & 0x30303030u),
                                   ((L0 >> 4) & 0x0F0F0F0Fu) | (H & 0x30303030u),
                                   ((L1 >> 4) & 0x0F0F0F0Fu) | ((H >> 2) & 0x30303030u)};
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                ih[r][i >> 2] = lqr_dp4a_us(c[r], a.h[r][i], ih[r][i >> 2]);
                il[r][i >> 2] = lqr_dp4a_us(c[r], a.l[r][i], il[r][i >> 2]);
            }
        }
        float acc = 0.0f;
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                const int k = g + 2 * r;  // the run's scale: byte k of the lane's 8
                const float scv = (float)(signed char)((sc[k >> 2] >> (8 * (k & 3))) & 0xFFu);
                acc = fmaf(d * scv * a.sa[r], (float)(LQR_LO * ih[r][g] + il[r][g] - 32 * a.s16[r][g]), acc);
            }
        return acc;
    }
};

template <class Q> struct LqrSlice;
template <> struct LqrSlice<QQ4_K> { using S = LqrQ4K; static constexpr int R = TG_LQR_ROWS; };
template <> struct LqrSlice<QQ8_0> { using S = LqrQ8; static constexpr int R = TG_LQR_ROWS_Q8; };
template <> struct LqrSlice<QQ6_K> { using S = LqrQ6K; static constexpr int R = TG_LQR_ROWS_Q6; };

// --- the weight rows' path on sm_90 (TG_LQR_TMA): bulk copies into a ring of shared-memory stages ---
// A team's lane 0 copies the rows of trip it + STAGES (R rows, contiguous runs of ldw bytes)
// into stage it % STAGES with one or two cp.async.bulk, completing a transaction barrier; the
// lanes wait on it and read their slices from shared memory. Bytes in flight no longer take
// registers: (STAGES - 1) * R rows per team at any time, issued before the kernel even waits for
// its predecessor. The wait gives up (trap: a launch error, not a hang) after ~2^26 polls.
__device__ __forceinline__ void lqr_bar_init(unsigned long long* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
#endif
}
__device__ __forceinline__ void lqr_bar_fence() {  // the barriers' initialisation before the copies use them
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void lqr_bar_wait(unsigned long long* bar, unsigned phase) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned a = (unsigned)__cvta_generic_to_shared(bar);
    for (long long spin = 0;; ++spin) {
        unsigned ok;
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(ok) : "r"(a), "r"(phase) : "memory");
        if (ok) return;
        if (spin > (1LL << 26)) __trap();
    }
#endif
}
// expect `bytes` on bar, then copy [src, src + n0) to dst and [src1, src1 + n1) to dst1 (n1 may be 0)
__device__ __forceinline__ void lqr_copy(unsigned long long* bar, unsigned char* dst, const unsigned char* src,
                                         unsigned n0, unsigned char* dst1, const unsigned char* src1, unsigned n1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned b = (unsigned)__cvta_generic_to_shared(bar);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // our earlier reads of the stage first
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(n0 + n1) : "memory");
    if (n0)
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(n0), "r"(b) : "memory");
    if (n1)
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     ::"r"((unsigned)__cvta_generic_to_shared(dst1)), "l"(src1), "r"(n1), "r"(b) : "memory");
#endif
}

template <typename T, class Q>
__device__ __forceinline__ void linear_qr_body(T* y, const TD& yd, const T* x, const TD& xd,
                                               const unsigned char* w, long long ldw, const T* bias,
                                               const T* res, const TD& rd, const T* nw, const T* nbias,
                                               float eps, int norm, int act, int N, int K) {
    using S = typename LqrSlice<Q>::S;
    constexpr int R = LqrSlice<Q>::R;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool TMA = TG_LQR_TMA != 0;
#else
    constexpr bool TMA = false;
#endif
    constexpr int STG = TG_LQR_STAGES;
    __shared__ float scratch[32];
    __shared__ float red[2][32][R];
    __shared__ unsigned long long bars[TMA ? 32 * STG : 1];
    const long long rows = td_rows(yd);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long grp = (long long)blockIdx.x % rows, cb = (long long)blockIdx.x / rows;
    const long long ncb = (long long)gridDim.x / rows;
    if (cb >= ncb) return;
    const int TS = lqr_team(K), nsl = K / 128;
    const int team = tid / TS, tl = tid - team * TS;  // team in the block, lane in the team
    const int tpb = (int)blockDim.x / TS;
    const int P = act == 3 ? 2 : 1, ncols = act == 3 ? N / 2 : N, half = act == 3 ? N / 2 : 0;
    const int cpi = R / P;                                  // output columns per team iteration
    const long long nteams = ncb * tpb;
    const long long tg = cb * tpb + team;
    const int iters = (int)((ncols + nteams * cpi - 1) / (nteams * cpi));  // uniform over the block
    const int sl = tl < nsl ? tl : 0;  // lanes past the last slice compute slice 0 with zero activations

    // first column of iteration it; weight row k (0 .. R-1) of it: for swiglu gate, up, gate, up
    auto col0 = [&](int it) -> int { return (int)((tg + (long long)it * nteams) * cpi); };
    auto wrow = [&](int it, int k) -> const unsigned char* {
        int c = col0(it) + (P == 2 ? k / 2 : k);
        c = c < ncols ? c : ncols - 1;
        return w + (long long)((P == 2 && (k & 1)) ? c + half : c) * ldw;
    };
    float* hrow = lqr_smem;
    signed char* phi = reinterpret_cast<signed char*>(lqr_smem + K);
    signed char* plo = phi + K;
    float* sa32 = reinterpret_cast<float*>(plo + K);
    int* isum8 = reinterpret_cast<int*>(sa32 + K / 32);
    // the ring (TMA): team t, stage s at ring + (t * STG + s) * R * ldw; a stage holds the trip's
    // rows in slots 0 .. R-1 (swiglu: gate rows in the first half, up rows in the second)
    unsigned char* ring = reinterpret_cast<unsigned char*>(lqr_smem) + ((K * 53 / 8 + 127) & ~127);
    auto stage = [&](int s) -> unsigned char* { return ring + (long long)(team * STG + s) * R * ldw; };
    auto slot = [&](int k) -> int { return P == 2 ? (k & 1) * (R / 2) + k / 2 : k; };
    auto issue = [&](int it) {  // lane 0 of the team: trip it's rows into its stage
        const int c0 = col0(it), nv = max(0, min(cpi, ncols - c0));
        const unsigned n = (unsigned)(nv * ldw);
        unsigned char* st = stage(it % STG);
        lqr_copy(&bars[team * STG + it % STG], st, w + (long long)c0 * ldw, n, st + (long long)(R / 2) * ldw,
                 w + (long long)(c0 + half) * ldw, P == 2 ? n : 0u);
    };

    // the first trips not copied before the wait, once x has been read (under a flood of weight
    // copies x's loads queue for µs)
    auto issue_late = [&] {
        if (TMA && tl == 0)
            for (int it = min(TG_LQR_EARLY, STG); it < min(STG, iters); ++it) issue(it);
    };

    LQR_MARK(0);  // (probe points: 0 start, 1 after the wait, 5 row staged, 6 rounded, 7 block met,
                  //  2 row in registers, 3 first rows here, 4 end)
    tg_pdl_trigger();
    lin_norm_prefetch<T>(K, norm, nw, nbias);
    S cur[R];
    if constexpr (TMA) {
        // the launch sized shared memory for select.QR_ROWS / QR_STAGES: a build with more is refused
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if ((long long)(stage(STG) - reinterpret_cast<unsigned char*>(lqr_smem)) + (long long)(tpb - 1 - team) * STG * R * ldw > dyn)
            __trap();  // weights: not written by any kernel, so copied before the wait
        if (tid < tpb * STG) lqr_bar_init(&bars[tid]);
        lqr_bar_fence();
        __syncthreads();
        if (tl == 0)
            for (int it = 0; it < min(min(TG_LQR_EARLY, STG), iters); ++it) issue(it);
    } else {
#pragma unroll
        for (int k = 0; k < R; ++k) cur[k].load(wrow(0, k), sl);
    }
    tg_pdl_wait();
    LQR_MARK(1);

    lin_stage_row<T, 16 / sizeof(T)>(hrow, x + td_row_offset_bcast(xd, yd, grp), xd.st[3], K, 0, norm, nw,
                                     nbias, eps, scratch);
    LQR_MARK(5);
    issue_late();
    __syncthreads();
    lqr_quantize_row(hrow, K, phi, plo, sa32, isum8);
    LQR_MARK(6);
    __syncthreads();
    LQR_MARK(7);
    LqrAct a;
    {
        const bool on = tl < nsl;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {  // chunk 2b + i of the slice (lqr_at8)
                const int at = ((2 * b + i) * nsl + sl) * 16;
                const uint4 vh = *reinterpret_cast<const uint4*>(phi + at);
                const uint4 vl = *reinterpret_cast<const uint4*>(plo + at);
                a.h[b][4 * i] = on ? (int)vh.x : 0; a.h[b][4 * i + 1] = on ? (int)vh.y : 0;
                a.h[b][4 * i + 2] = on ? (int)vh.z : 0; a.h[b][4 * i + 3] = on ? (int)vh.w : 0;
                a.l[b][4 * i] = on ? (int)vl.x : 0; a.l[b][4 * i + 1] = on ? (int)vl.y : 0;
                a.l[b][4 * i + 2] = on ? (int)vl.z : 0; a.l[b][4 * i + 3] = on ? (int)vl.w : 0;
            }
            const float sa = on ? sa32[lqr_at_scale(4 * sl + b, nsl)] : 0.0f;
            const int g0 = 16 * sl + 4 * b;  // the 32-block's groups of 8: g0 .. g0 + 3
            const int s01 = isum8[lqr_at_sum8(g0, nsl)] + isum8[lqr_at_sum8(g0 + 1, nsl)];
            const int s23 = isum8[lqr_at_sum8(g0 + 2, nsl)] + isum8[lqr_at_sum8(g0 + 3, nsl)];
            a.sa[b] = sa;
            a.sx[b] = sa * (float)(s01 + s23);
            a.s16[b][0] = on ? s01 : 0;
            a.s16[b][1] = on ? s23 : 0;
        }
    }

    LQR_MARK(2);
    const long long yoff = td_row_offset(yd, grp);
    const long long roff = res ? td_row_offset_bcast(rd, yd, grp) : 0;
    const int hh = sl & 1;
    const int red_w = TS < 32 ? TS : 32;
    for (int it = 0; it < iters; ++it) {
        float tot[R];
        if constexpr (TMA) {
            lqr_bar_wait(&bars[team * STG + it % STG], (unsigned)(it / STG) & 1u);
            if (it == 0) LQR_MARK(3);
            const unsigned char* st = stage(it % STG);
#pragma unroll
            for (int k = 0; k < R; ++k) {
                cur[0].load_shared(st + (long long)slot(k) * ldw, sl);
                tot[k] = cur[0].dot(a, hh);
            }
        } else {
#pragma unroll
            for (int k = 0; k < R; ++k) tot[k] = cur[k].dot(a, hh);
            if (it + 1 < iters) {
#pragma unroll
                for (int k = 0; k < R; ++k) cur[k].load(wrow(it + 1, k), sl);
            }
        }
#pragma unroll
        for (int off = red_w / 2; off >= 1; off >>= 1)
#pragma unroll
            for (int k = 0; k < R; ++k) tot[k] += __shfl_xor_sync(0xffffffffu, tot[k], off);
        bool writer = tl < cpi;
        int wc = tl;
        if (TS > 32) {  // a team of several warps: their sums meet in shared memory
            const int par = it & 1;
            if (lane == 0) {
#pragma unroll
                for (int k = 0; k < R; ++k) red[par][warp][k] = tot[k];
            }
            __syncthreads();  // (also: every lane of the team is done with this trip's stage)
            const int w0 = team * (TS / 32);
#pragma unroll
            for (int k = 0; k < R; ++k) {
                float s = 0.0f;
                for (int i = 0; i < TS / 32; ++i) s += red[par][w0 + i][k];
                tot[k] = s;
            }
            writer = warp == w0 && lane < cpi;
            wc = lane;
        } else if (TMA) {
            __syncwarp();  // every lane of the warp's teams is done with this trip's stage
        }
        if (TMA && tl == 0 && it + STG < iters) issue(it + STG);
        if (writer) {
            const int c = col0(it) + wc;
            float a0 = 0.0f, a1 = 0.0f;
#pragma unroll
            for (int j = 0; j < R / P; ++j)
                if (j == wc) {
                    a0 = tot[P * j];
                    a1 = P == 2 ? tot[P * j + 1] : 0.0f;
                }
            if (c < ncols)
                y[yoff + (long long)c * yd.st[3]] = from_f32<T>(lin_epilogue(a0, a1, c, half, P, act, bias, res, roff, rd));
        }
    }
    LQR_MARK(4);
}

#define TG_LINEAR_QR_T(Q, qn, T, sfx)                                                               \
    extern "C" __global__ void __launch_bounds__(256, TG_LQR_MINB) linear_qr_##qn##_##sfx(              \
        T* y, TD yd, const T* x, TD xd, const unsigned char* w, long long ldw, const T* bias,         \
        const T* res, TD rd, const T* norm_w, const T* norm_b, float eps, int norm, int act, int N,   \
        int K) {                                                                                      \
        linear_qr_body<T, Q>(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps, norm, act, N, K); \
    }
#define TG_LINEAR_QR(Q, qn) TG_LINEAR_QR_T(Q, qn, __half, f16) TG_LINEAR_QR_T(Q, qn, __nv_bfloat16, bf16)
TG_LINEAR_QR(QQ4_K, q4_k)
TG_LINEAR_QR(QQ8_0, q8_0)
TG_LINEAR_QR(QQ6_K, q6_k)
