// attention_tc.cu -- attention for many queries (prefill) on tensor cores, flash-attention style:
// out = softmax(scale * q @ kt, causal, past) @ v, the scores never leave registers.
//
// Signature (T = __half | __nv_bfloat16, suffix f16 | bf16; D = 64 | 80 | 96 | 128 | 256, limits.FLASH_HEADS):
//   attn_fa_T_D(T* out, TD od, const T* q, TD qd, const T* kt, TD ktd, const T* v, TD vd,
//               float scale, float cap, int causal, int past, const int* past_dev, int window)
//     Shapes and semantics of attn_split (attention.cu): q [B0, B1, Tq, D], kt [B0', B1', D, S],
//     v [B0', B1', S, D], out [B0, B1, Tq, D]; size-1 batch dims of q/kt/v broadcast (grouped
//     queries); query row t sees keys j <= t + past (causal) and j < S; past_dev non-NULL: past
//     is past_dev[0] (past_dev[i0], i0 the index of axis 0, when past < 0). window > 0 (causal
//     only; 0 or negative: none): a sliding window, row t (position p = t + past) sees only keys p - window < j <= p (HF's convention). A row that
//     sees no key gets zeros. cap > 0 (Gemma 2; 0: none): scores soft-capped as in attn_split.
//     Layout requirements (the backend checks them, else it runs attn_split): head elements
//     contiguous (q st[3] == 1, kt st[2] == 1, v st[3] == 1: keys and values are rows of a
//     [S, D] cache), row and batch strides multiples of 8 elements, 16-byte aligned bases.
//     out: any strides.
//     Launch: grid (ceil(Tq / 64), B0 * B1), block (128, 1, 1), dynamic shared memory
//     5 * 64 * (D + 8) * 2 bytes (kernels.fa_shared_bytes; > 48 KB for D = 128).
//   Design: a block owns 64 query rows of one (b0, b1), 16 per warp; key/value tiles of 64 rows
//     go through two shared-memory stages (cp.async, the next tile in flight during this one's
//     math). Per tile a warp computes its 16 x 64 scores with mma.sync (q fragments stay in
//     registers for the whole loop), masks and rescales them with an online softmax in
//     registers (base-2 exponentials, scale * log2(e) folded in), and feeds the probabilities,
//     rounded to T, straight from the score accumulators into the P @ V mma as A fragments.
//     Tiles past the block's last visible key, or wholly before its first row's window, are
//     never loaded; the mask is applied only on tiles that cross the diagonal, the window's lower
//     edge or the end of the keys. Math in float32 (accumulators,
//     softmax statistics); P rounded to T as in flash-attention.
#include "mma.cuh"

#define FA_ROWS 64  // query rows per block, keys per tile

template <int D>
__device__ __forceinline__ void fa_load_tile(unsigned short* s, const void* base_, long long rs, long long r0,
                                             long long rend) {
    constexpr int LD = D + 8, CPR = D / 8;  // 16-byte chunks per row
    const unsigned short* base = reinterpret_cast<const unsigned short*>(base_);
#pragma unroll
    for (int i = 0; i < FA_ROWS * CPR / 128; ++i) {
        const int c = threadIdx.x + 128 * i;
        const int rr = c / CPR, kc = (c % CPR) * 8;
        const long long r = r0 + rr;
        const bool p = r < rend;  // rows past the end: zeros (finite values for masked keys)
        cp_async16(s + rr * LD + kc, p ? (const void*)(base + r * rs + kc) : base_, p);
    }
}

__device__ __forceinline__ long long fa_bcast(const TD& d, int k, long long c) {
    return d.ne[k] == 1 ? 0 : c * d.st[k];
}

extern __shared__ __align__(16) unsigned char fa_smem[];

template <typename T, int D>
__device__ __forceinline__ void attn_fa(T* out, const TD& od, const T* q, const TD& qd, const T* kt,
                                        const TD& ktd, const T* v, const TD& vd, float scale, float cap, int causal,
                                        int past, const int* past_dev, int window) {
    constexpr int LD = D + 8, TILE = FA_ROWS * LD;
    unsigned short* sQ = reinterpret_cast<unsigned short*>(fa_smem);
    unsigned short* sK = sQ + TILE;      // two stages
    unsigned short* sV = sK + 2 * TILE;  // two stages
    const long long Tq = od.ne[2], S = ktd.ne[3];
    const long long b = blockIdx.y, b1 = b % od.ne[1], b0 = b / od.ne[1];
    if (past_dev) past = past_dev[past < 0 ? b0 : 0];  // past < 0: one position per index of axis 0
    const T* qb = q + fa_bcast(qd, 0, b0) + fa_bcast(qd, 1, b1);
    const T* kb = kt + fa_bcast(ktd, 0, b0) + fa_bcast(ktd, 1, b1);
    const T* vb = v + fa_bcast(vd, 0, b0) + fa_bcast(vd, 1, b1);
    T* ob = out + b0 * od.st[0] + b1 * od.st[1];
    const long long q0 = (long long)blockIdx.x * FA_ROWS;
    const long long qhi = min(q0 + FA_ROWS - 1, Tq - 1);
    const long long kend = causal ? min(S, qhi + past + 1) : S;  // keys this block can see
    const int ntiles = kend > 0 ? (int)((kend + FA_ROWS - 1) / FA_ROWS) : 0;
    // sliding window: tiles wholly before the block's first row's window are skipped
    const bool win = causal && window > 0;
    const int it0 = win ? (int)(max(0LL, q0 + past + 1 - window) / FA_ROWS) : 0;

    fa_load_tile<D>(sQ, qb, qd.st[2], q0, Tq);
    if (ntiles > it0) {
        fa_load_tile<D>(sK, kb, ktd.st[3], (long long)it0 * FA_ROWS, kend);
        fa_load_tile<D>(sV, vb, vd.st[2], (long long)it0 * FA_ROWS, kend);
    }
    cp_async_commit();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const long long rlo = q0 + warp * 16 + g;  // this thread's query rows: rlo and rlo + 8
    const ScoreScale sl2 = score_scale(scale, cap, 1.4426950408889634f);  // base 2
    // the query fragments stay in registers for the whole key loop up to D = 128; wider heads
    // (Gemma, 256) read them from the shared query tile per key tile (registers would spill)
    constexpr bool QREG = D <= 128;
    unsigned qf[QREG ? D / 16 : 1][4];
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int it = it0; it < ntiles; ++it) {
        const int st = (it - it0) & 1;
        if (it + 1 < ntiles) {
            const long long j1 = (long long)(it + 1) * FA_ROWS;
            fa_load_tile<D>(sK + (st ^ 1) * TILE, kb, ktd.st[3], j1, kend);
            fa_load_tile<D>(sV + (st ^ 1) * TILE, vb, vd.st[2], j1, kend);
        }
        cp_async_commit();
        cp_async_wait<1>();  // tile it (and q) landed for this thread
        __syncthreads();     // ... and for every thread
        if (QREG && it == it0) {
#pragma unroll
            for (int kq = 0; kq < D / 16; ++kq)
                ldsm_x4(qf[kq][0], qf[kq][1], qf[kq][2], qf[kq][3],
                        sQ + (warp * 16 + (lane & 15)) * LD + kq * 16 + (lane >> 4) * 8);
        }
        const unsigned short* Ks = sK + st * TILE;
        const unsigned short* Vs = sV + st * TILE;

        // scores s = q . k for 16 rows x 64 keys (8 key groups of 8)
        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int kq = 0; kq < D / 16; ++kq) {
            unsigned qt[4];
            if (!QREG)
                ldsm_x4(qt[0], qt[1], qt[2], qt[3], sQ + (warp * 16 + (lane & 15)) * LD + kq * 16 + (lane >> 4) * 8);
            const unsigned* qk = QREG ? qf[kq] : qt;
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
                unsigned kf[4];
                ldsm_x4(kf[0], kf[1], kf[2], kf[3],
                        Ks + (jj * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kq * 16 + ((lane >> 3) & 1) * 8);
                MmaOp<T>::run(s[2 * jj], qk, kf);
                MmaOp<T>::run(s[2 * jj + 1], qk, kf + 2);
            }
        }

        // scale (base 2), mask where the tile crosses the diagonal, the window's lower edge (some
        // row of the block sees key j0 no more) or the end of the keys
        const long long j0 = (long long)it * FA_ROWS;
        const bool masked = j0 + FA_ROWS > S || (causal && j0 + FA_ROWS - 1 > q0 + past) ||
                            (win && j0 <= q0 + FA_ROWS - 1 + past - window);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = attn_score(s[nt][e], sl2);
                if (masked) {
                    const long long j = j0 + nt * 8 + 2 * t4 + (e & 1);
                    const long long r = rlo + (e >> 1) * 8;
                    if (j >= S || (causal && j > r + past) || (win && j <= r + past - window)) x = -INFINITY;
                }
                s[nt][e] = x;
            }
        }

        // online softmax: new running max, rescale of the old sums and outputs
        float mu[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = m[h];
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mu[h] = mx == -INFINITY ? 0.0f : mx;  // a row with nothing visible yet: p = 0, no NaN
            const float corr = exp2f(m[h] - mu[h]);
            m[h] = mx;
            l[h] *= corr;
#pragma unroll
            for (int dn = 0; dn < D / 8; ++dn) {
                o[dn][2 * h] *= corr;
                o[dn][2 * h + 1] *= corr;
            }
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f(s[nt][e] - mu[e >> 1]);
                l[e >> 1] += s[nt][e];  // this thread's part of the row sum (quad-summed at the end)
            }
        }

        // o += p @ v: the score accumulators of key groups 2kk, 2kk+1 are the A fragment of keys
        // 16kk..16kk+15; v fragments by transposing ldmatrix from the [key][d] tile
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const unsigned pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1], T()), pack2(s[2 * kk][2], s[2 * kk][3], T()),
                                    pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T()),
                                    pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T())};
#pragma unroll
            for (int dn2 = 0; dn2 < D / 16; ++dn2) {
                unsigned vf[4];
                ldsm_x4_trans(vf[0], vf[1], vf[2], vf[3],
                              Vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dn2 * 16 + (lane >> 4) * 8);
                MmaOp<T>::run(o[2 * dn2], pa, vf);
                MmaOp<T>::run(o[2 * dn2 + 1], pa, vf + 2);
            }
        }
        __syncthreads();  // stage st is refilled by the next iteration
    }
    cp_async_wait<0>();

    const bool pair = od.st[3] == 1 && (od.st[2] & 1) == 0 &&
                      ((reinterpret_cast<unsigned long long>(ob) & 3) == 0);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float lh = l[h];
        lh += __shfl_xor_sync(0xffffffffu, lh, 1);
        lh += __shfl_xor_sync(0xffffffffu, lh, 2);
        const float inv = lh > 0.0f ? 1.0f / lh : 0.0f;
        const long long r = rlo + 8 * h;
        if (r >= Tq) continue;
        T* orow = ob + r * od.st[2];
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
            const int c = dn * 8 + 2 * t4;
            const float v0 = o[dn][2 * h] * inv, v1 = o[dn][2 * h + 1] * inv;
            if (pair) {
                *reinterpret_cast<unsigned*>(orow + c) = pack2(v0, v1, T());
            } else {
                orow[c * od.st[3]] = from_f32<T>(v0);
                orow[(c + 1) * od.st[3]] = from_f32<T>(v1);
            }
        }
    }
}

#define TG_ATTN_FA(T, sfx, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) attn_fa_##sfx##_##D(                          \
        T* out, TD od, const T* q, TD qd, const T* kt, TD ktd, const T* v, TD vd, float scale,      \
        float cap, int causal, int past, const int* past_dev, int window) {                         \
        tg_pdl_enter();                                                                             \
        attn_fa<T, D>(out, od, q, qd, kt, ktd, v, vd, scale, cap, causal, past, past_dev, window);  \
    }
TG_ATTN_FA(__half, f16, 64)
TG_ATTN_FA(__half, f16, 80)
TG_ATTN_FA(__half, f16, 96)
TG_ATTN_FA(__half, f16, 128)
TG_ATTN_FA(__half, f16, 256)
TG_ATTN_FA(__nv_bfloat16, bf16, 64)
TG_ATTN_FA(__nv_bfloat16, bf16, 80)
TG_ATTN_FA(__nv_bfloat16, bf16, 96)
TG_ATTN_FA(__nv_bfloat16, bf16, 128)
TG_ATTN_FA(__nv_bfloat16, bf16, 256)
