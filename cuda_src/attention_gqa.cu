// attention_gqa.cu -- decode attention on tensor cores that serves a whole grouped-query group per
// block: each key and value row is read once for all the query heads that share it.
//
// Signatures (T = __half | __nv_bfloat16, suffix f16 | bf16; D = 64 | 128, the head size of
// keys and values alike):
//   attn_gqa_T_D(float* part, int* counters, T* out, TD od, const T* q, TD qd, const T* kt,
//                TD ktd, const T* v, TD vd, float scale, float cap, int causal, int past,
//                const int* past_dev, int window, int chunk)
//     The operands and semantics of attn_split (attention.cu): q [B0, B1, Tq, D], kt [B0, 1, D, S]
//     (keys transposed), v [B0, 1, S, D], out [B0, B1, Tq, D]: the B1 * Tq <= 16 query rows of
//     one b0 (a KV head: B1 its query heads) share its keys. Causal masks, past / past_dev
//     (past < 0: past_dev[b0]), the sliding window and the soft cap as attn_split.
//     Layout (the backend checks it, else attn_pipe runs): key and value elements contiguous
//     (ktd.st[2] == 1, vd.st[3] == 1), row and batch strides multiples of 8 elements, the bases
//     16-byte aligned. q and out: any strides.
//     Grid (1, B0, nsplit), block (128, 1, 1). The visible key range [lo, hi) (the union of the
//     rows') is cut into splits of max(chunk, ceil((hi - lo) / nsplit) rounded up to 64) keys, so
//     the split size follows the position a replayed graph reads from past_dev: every position
//     fills the GPU, and a graph sized for the whole cache costs nothing extra early on. nsplit
//     (<= GQA_MAX_SPLITS) > 1: split z of key head b0 writes its partials at part + (b0 * nsplit
//     + z) * (R * D + 2 * GQA_ROWS): acc [R, D], then (max, sum) per row, base 2; the last live
//     block of the head (counted in counters[b0], left at 0) merges them, all rows at once.
//   attn_gqa_store_T_D(float* part, int* counters, T* out, TD od, const T* q, TD qd,
//                      StoreArgs<T> sa, float scale, float cap, const int* pos, int window, int chunk)
//     attn_store (attention.cu) for a group per block: q [1, H, D] -> out [KV, G, 1, D], G <= 16;
//     the prologue normalises / rotates the group's G query rows and the new key (cos / sin
//     computed once) and the block whose split holds pos writes the key and value rows.
//     With sa.early: pos and the angles are read and the split's older cache rows prefetched
//     to L2 before tg_pdl_wait.
//   attn_gqa_paged_T_D(<attn_gqa_store's arguments>, const int* rows, int rs)
//     attn_gqa_store for N sequences of one token over a paged cache: q [N, H, D], sa's new
//     keys / values [N, KV, D], pos [N], out [N * KV, G, 1, D]; sequence n's position j lives in
//     cache row rows[n * rs + j] (j < rs), and its new key / value go to row rows[n * rs + pos[n]].
//     Grid (1, N * KV, nsplit): block y serves sequence y / KV's key head y % KV.
// Design: 4 warps; a warp takes 16 keys at a time. Scores S [16 rows, 16 keys] = Q K^T with
// mma.m16n8k16: A = the query rows (rounded to T; rows past B1 * Tq zero), B = key rows straight
// from global memory -- the head dimension is permuted (lane quarter tq holds elements
// [tq * D/4, (tq + 1) * D/4) of a key row, 16-byte loads) and the query fragments follow the same
// permutation, which a dot product does not see. Online softmax in registers (base 2, scale *
// log2(e) applied to the float32 scores), P rounded to T goes from the score accumulators
// straight into the A fragments of O += P V; the value B fragments are built from 16-byte loads
// of rows 2tq, 2tq + 1, 2tq + 8, 2tq + 9 (lane group g holds columns [g * D/8, (g + 1) * D/8),
// so output column n * D/8 + j is n-tile j's column n) with byte permutes. The 4 warps' (max,
// sum, O) are combined through shared memory.
#include "attention_common.cuh"
#include "mma.cuh"

#define GQA_WARPS 4
#define GQA_ROWS 16  // query rows per block: the mma's M
#define GQA_MIN_CHUNK 64
#ifndef TG_GQA_PREFETCH
#define TG_GQA_PREFETCH 1  // steps ahead whose key / value rows a warp asks L2 for (0: none)
#endif
#ifndef TG_GQA_MERGE_UNROLL
#define TG_GQA_MERGE_UNROLL 16  // splits whose partials a merging thread loads together
#endif
#define GQA_MAX_SPLITS 128  // gridDim.z at most (the merge's weights live in shared memory)

template <int D>
struct GqaSmem {
    float q[GQA_ROWS][D];                    // the query rows in float32
    float k[D];                              // store: the new key
    float2 cs[D / 2];                        // store: RoPE (cos, sin) per rotation pair
    float o[GQA_WARPS][GQA_ROWS][D + 8];     // per-warp O, fragment order (conflict-free stores)
    float m[GQA_WARPS][GQA_ROWS], l[GQA_WARPS][GQA_ROWS];
    int last;
};

// attn_gqa_store's prologue: the group's R query rows and the new key of key head b0 into sm.q /
// sm.k (all loads in one round), then one warp per row RMS-normalises and rotates it there; the
// writer block stores the key (rounded to T) and the value into cache row wrow.
template <typename T, int D>
__device__ __forceinline__ void gqa_store_prologue(GqaSmem<D>& sm, const T* q, const TD& qd, const StoreArgs<T>& sa,
                                                   long long b0, int R, long long wrow, bool writer) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < (R + 1) * D; i += blockDim.x) {
        const int r = i / D, d = i % D;
        if (r < R) sm.q[r][d] = to_f32(q[bcast(qd, 0, b0) + bcast(qd, 1, r) + d * qd.st[3]]);
        else sm.k[d] = to_f32(sa.k[b0 * sa.kd.st[2] + d * sa.kd.st[3]]);
    }
    if (writer)
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            sa.vc[b0 * sa.vcd.st[1] + wrow * sa.vcd.st[2] + d * sa.vcd.st[3]] =
                sa.v[b0 * sa.vd.st[2] + d * sa.vd.st[3]];
    __syncthreads();
    for (int r = w; r <= R; r += GQA_WARPS) {  // rows 0..R-1: queries; row R: the new key
        const bool isk = r == R;
        float* x = isk ? sm.k : sm.q[r];
        const bool nrm = isk ? sa.k_norm : sa.q_norm;
        const T* nw = isk ? sa.kn : sa.qn;
        float inv = 1.0f;
        if (nrm) {
            float ss = 0.0f;
            for (int d = lane; d < D; d += 32) ss += x[d] * x[d];
            inv = rsqrtf(warp_sum(ss) / (float)D + sa.eps);
        }
        __syncwarp();
        for (int p = lane; p < D / 2; p += 32) {
            const int a = sa.mode == 2 ? p : 2 * p, b = sa.mode == 2 ? p + D / 2 : 2 * p + 1;
            float xa = x[a] * inv, xb = x[b] * inv;
            if (nrm && nw) { xa *= to_f32(nw[a]); xb *= to_f32(nw[b]); }
            if (sa.mode >= 0) {
                const float2 c = sm.cs[p];
                const float ra = xa * c.x - xb * c.y, rb = xb * c.x + xa * c.y;
                xa = ra;
                xb = rb;
            }
            x[a] = xa;
            x[b] = xb;
            if (isk && writer) {
                T* kw = sa.kc + b0 * sa.kcd.st[1] + wrow * sa.kcd.st[2];
                kw[a * sa.kcd.st[3]] = from_f32<T>(xa);
                kw[b * sa.kcd.st[3]] = from_f32<T>(xb);
            }
        }
    }
}

// PAGED (attn_gqa_paged): block y serves sequence y / kvh's key head y % kvh; that sequence's
// position j lives in cache row rows[(y / kvh) * rs + j] (rs: positions per sequence), its
// position is past_dev[y / kvh], and q / sa's new rows are already offset to the sequence.
template <typename T, int D, bool STORE, bool PAGED = false>
__device__ __forceinline__ void attn_gqa(float* part, int* counters, T* out, const TD& od, const T* q,
                                         const TD& qd, const T* kt, const TD& ktd, const T* v, const TD& vd,
                                         float scale, float cap, int causal, int past, const int* past_dev, int window,
                                         int chunk, const StoreArgs<T>* sa, const int* rows = nullptr,
                                         int rs = 0, int kvh = 1) {
    constexpr int KS = D / 16;  // k-steps of the score mma
    constexpr int KU = D / 32;  // 16-byte loads of a lane's quarter of a key row
    constexpr int VU = D / 64;  // 16-byte loads of a lane's eighth of a value row
    constexpr int NT = D / 8;   // n-tiles of O (8 columns each)
    __shared__ __align__(16) GqaSmem<D> sm;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const long long b0 = blockIdx.y;  // output rows, partials and counters
    const long long hb = PAGED ? b0 % kvh : b0;  // the key head: q, keys, values, cache rows
    const int* krow = PAGED ? rows + (b0 / kvh) * rs : nullptr;
    // cache row of position j (PAGED: the sequence's table; else j itself)
    auto row = [krow](long long j) -> long long { return PAGED ? (long long)__ldg(krow + j) : j; };
    const int z = blockIdx.z, nsplit = gridDim.z;
    const int Tq = (int)od.ne[2], R = (int)od.ne[1] * Tq;
    const long long S = PAGED ? (long long)rs : ktd.ne[3];
    if (past_dev) past = past_dev[PAGED ? b0 / kvh : (past < 0 ? b0 : 0)];
    // the block's keys: [lo, hi), the union of its rows' visible ranges (row t: position t + past)
    long long hi = causal ? (long long)past + Tq : S;
    if (hi > S) hi = S;
    long long lo = (causal && window > 0) ? (long long)past + 1 - window : 0;
    if (lo < 0) lo = 0;
    const long long span = hi > lo ? hi - lo : 0;
    long long ch = (span + nsplit - 1) / nsplit;
    ch = (ch + GQA_MIN_CHUNK - 1) / GQA_MIN_CHUNK * GQA_MIN_CHUNK;
    if (ch < chunk) ch = chunk;
    const int live = span > 0 ? (int)((span + ch - 1) / ch) : 0;
    if (nsplit > 1 && z >= max(live, 1)) return;
    const long long j0 = lo + (long long)z * ch;
    const long long j1 = min(j0 + ch, hi);
    const T* kb = kt + bcast(ktd, 0, hb);
    const T* vb = v + bcast(vd, 0, hb);
    const long long kst = ktd.st[3], vst = vd.st[2];

    if constexpr (STORE) {
        if (sa->mode >= 0)
            for (int p = threadIdx.x; p < D / 2; p += blockDim.x) sm.cs[p] = rope_cossin(p, D, past, sa->ff, sa->theta);
        if (sa->early) {
            // launched before the previous kernel finished: the cache rows before pos are earlier
            // steps' and stay as they are, so they go to L2 while q / k / v are being made
            const long long pe = min(j1, (long long)past);
            constexpr int LINES = (int)(D * sizeof(T) / 128);
            for (long long r = j0 + threadIdx.x / LINES; r < pe; r += blockDim.x / LINES) {
                const int c = (threadIdx.x % LINES) * (int)(128 / sizeof(T));
                const long long cr = row(r);
                tg_prefetch_l2(kb + cr * kst + c);
                tg_prefetch_l2(vb + cr * vst + c);
            }
            tg_pdl_wait();
        }
        __syncthreads();  // sm.cs
        const bool writer = j0 <= past && past < j1;
        gqa_store_prologue<T, D>(sm, q, qd, *sa, hb, R, PAGED ? (writer ? row(past) : 0) : past, writer);
    } else {
        for (int i = threadIdx.x; i < R * D; i += blockDim.x) {
            const int r = i / D, d = i % D;
            const T* qr = q + bcast(qd, 0, hb) + bcast(qd, 1, r / Tq) + (long long)(r % Tq) * qd.st[2];
            sm.q[r][d] = to_f32(qr[d * qd.st[3]]);
        }
    }
    for (int i = R * D + threadIdx.x; i < GQA_ROWS * D; i += blockDim.x) sm.q[i / D][i % D] = 0.0f;
    __syncthreads();  // the query rows; the writer's cache row (global) for the block's reads

    // query fragments, head dimension permuted as the key loads: k-step s, lane quarter tq uses
    // elements tq * D/4 + 4s + {0, 1} (b0 / a0, a1) and + {2, 3} (b1 / a2, a3)
    unsigned qa[KS][4];
#pragma unroll
    for (int s = 0; s < KS; ++s) {
        const int d = tq * (D / 4) + 4 * s;
        qa[s][0] = pack2(sm.q[g][d], sm.q[g][d + 1], T());
        qa[s][1] = pack2(sm.q[g + 8][d], sm.q[g + 8][d + 1], T());
        qa[s][2] = pack2(sm.q[g][d + 2], sm.q[g][d + 3], T());
        qa[s][3] = pack2(sm.q[g + 8][d + 2], sm.q[g + 8][d + 3], T());
    }
    // visible keys of this lane's rows g and g + 8: [fst, lim) (padding rows: the block's range)
    long long lim[2], fst[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = g + 8 * i;
        const long long p = (long long)past + (r < R ? r % Tq : Tq - 1);
        lim[i] = causal ? min(p + 1, S) : S;
        fst[i] = (causal && window > 0) ? max(p + 1 - window, 0LL) : 0;
        if (r >= R) { lim[i] = hi; fst[i] = lo; }
        lim[i] = min(lim[i], j1);
    }
    const ScoreScale sl2 = score_scale(scale, cap, 1.4426950408889634f);  // base 2
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};

    for (long long base = j0 + 16LL * w; base < j1; base += 16LL * GQA_WARPS) {
#if TG_GQA_PREFETCH > 0
        {   // the rows TG_GQA_PREFETCH steps on, to L2 (lane: row lane % 16, its 128-byte line lane / 16)
            const long long nb = base + 16LL * GQA_WARPS * TG_GQA_PREFETCH;
            const int col = (lane >> 4) * (int)(128 / sizeof(T));
            if (nb < j1 && col < D) {
                const long long jr = row(min(nb + (lane & 15), j1 - 1));
                tg_prefetch_l2(kb + jr * kst + col);
                tg_prefetch_l2(vb + jr * vst + col);
            }
        }
#endif
        // key rows base + 8 nt + g (quarter tq), value rows base + 2tq + {0, 1, 8, 9} (eighth g);
        // rows past the split's end read its last row (finite; masked)
        uint4 kr[2][KU], vr[4][VU];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const long long j = row(min(base + 8 * nt + g, j1 - 1));
            const uint4* p = reinterpret_cast<const uint4*>(kb + j * kst + tq * (D / 4));
#pragma unroll
            for (int i = 0; i < KU; ++i) kr[nt][i] = p[i];
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const long long j = row(min(base + 2 * tq + (e & 1) + 8 * (e >> 1), j1 - 1));
            const uint4* p = reinterpret_cast<const uint4*>(vb + j * vst + g * (D / 8));
#pragma unroll
            for (int i = 0; i < VU; ++i) vr[e][i] = p[i];
        }
        float sc[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const unsigned* kw = reinterpret_cast<const unsigned*>(kr[nt]);
#pragma unroll
            for (int s = 0; s < KS; ++s) {
                const unsigned bb[2] = {kw[2 * s], kw[2 * s + 1]};
                MmaOp<T>::run(sc[nt], qa[s], bb);
            }
        }
        // scale to base 2, mask, running max per row (the quad of lanes sharing g holds a row)
        float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = c >> 1;
                const long long j = base + 8 * nt + 2 * tq + (c & 1);
                const float x = (j < lim[i] && j >= fst[i]) ? attn_score(sc[nt][c], sl2) : -INFINITY;
                sc[nt][c] = x;
                mx[i] = fmaxf(mx[i], x);
            }
        float corr[2], mb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            mb[i] = mx[i] == -INFINITY ? 0.0f : mx[i];  // a row with no key yet: p = 0, not NaN
            corr[i] = exp2f(mrow[i] - mb[i]);
            mrow[i] = mx[i];
        }
        // P as the A fragments of O += P V: (row g, keys 2tq..) = n-tile 0's c0 c1, (row g + 8) its
        // c2 c3, keys 2tq + 8.. n-tile 1's
        unsigned pa[4];
        float ps[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const float p0 = exp2f(sc[nt][0] - mb[0]), p1 = exp2f(sc[nt][1] - mb[0]);
            const float p2 = exp2f(sc[nt][2] - mb[1]), p3 = exp2f(sc[nt][3] - mb[1]);
            ps[0] += p0 + p1;
            ps[1] += p2 + p3;
            pa[2 * nt] = pack2(p0, p1, T());
            pa[2 * nt + 1] = pack2(p2, p3, T());
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) lrow[i] = lrow[i] * corr[i] + ps[i];
        const unsigned* v0 = reinterpret_cast<const unsigned*>(vr[0]);
        const unsigned* v1 = reinterpret_cast<const unsigned*>(vr[1]);
        const unsigned* v2 = reinterpret_cast<const unsigned*>(vr[2]);
        const unsigned* v3 = reinterpret_cast<const unsigned*>(vr[3]);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            o[j][0] *= corr[0];
            o[j][1] *= corr[0];
            o[j][2] *= corr[1];
            o[j][3] *= corr[1];
            // B fragment: (keys 2tq, 2tq + 1 | 2tq + 8, 2tq + 9) at column g * D/8 + j
            const unsigned sel = (j & 1) ? 0x7632u : 0x5410u;
            const unsigned bb[2] = {__byte_perm(v0[j >> 1], v1[j >> 1], sel), __byte_perm(v2[j >> 1], v3[j >> 1], sel)};
            MmaOp<T>::run(o[j], pa, bb);
        }
    }

    // combine the warps: O in fragment order (column n * D/8 + j at j * 8 + n), row max and sum
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        *reinterpret_cast<float2*>(&sm.o[w][g][j * 8 + 2 * tq]) = make_float2(o[j][0], o[j][1]);
        *reinterpret_cast<float2*>(&sm.o[w][g + 8][j * 8 + 2 * tq]) = make_float2(o[j][2], o[j][3]);
    }
    if (tq == 0) {
        sm.m[w][g] = mrow[0];
        sm.m[w][g + 8] = mrow[1];
        sm.l[w][g] = lrow[0];
        sm.l[w][g + 8] = lrow[1];
    }
    __syncthreads();
    const bool direct = nsplit == 1 || live <= 1;
    // partials of split z of key head b0: acc [R][D], then (max, sum) per row (base 2)
    const long long PB = (long long)R * D + 2 * GQA_ROWS;
    float* P = part + (b0 * nsplit) * PB;
    for (int i = threadIdx.x; i < R * D; i += blockDim.x) {
        const int r = i / D, d = i % D, fi = (d % (D / 8)) * 8 + d / (D / 8);
        float M = -INFINITY;
#pragma unroll
        for (int k = 0; k < GQA_WARPS; ++k) M = fmaxf(M, sm.m[k][r]);
        float L = 0.0f, a = 0.0f;
#pragma unroll
        for (int k = 0; k < GQA_WARPS; ++k)
            if (sm.m[k][r] != -INFINITY) {
                const float f = exp2f(sm.m[k][r] - M);
                L += sm.l[k][r] * f;
                a += sm.o[k][r][fi] * f;
            }
        if (direct) {
            out[b0 * od.st[0] + (r / Tq) * od.st[1] + (r % Tq) * od.st[2] + d * od.st[3]] =
                from_f32<T>(L > 0.0f ? a / L : 0.0f);
        } else {
            float* pz = P + z * PB;
            pz[i] = a;
            if (d == 0) {
                pz[R * D + 2 * r] = M;
                pz[R * D + 2 * r + 1] = L;
            }
        }
    }
    if (direct) return;
    // the last live block of this key head to arrive merges the live splits of all its rows
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const int done = atomicAdd(&counters[b0], 1);
        sm.last = done == live - 1;
        if (sm.last) counters[b0] = 0;  // ready for the next launch (graph replay)
    }
    __syncthreads();
    if (!sm.last) return;
    __threadfence();
    // (max, sum) of every (split, row) in one round of loads; then per row (a warp) the weight of
    // each split, 2^(max_z - max) / sum, replaces its max; then the outputs, 4 columns a thread
    float* sf = &sm.o[0][0][0];  // live * R <= GQA_MAX_SPLITS * GQA_ROWS floats each
    float* sl = sf + GQA_MAX_SPLITS * GQA_ROWS;
    for (int i = threadIdx.x; i < live * R; i += blockDim.x) {
        const float2 ml = __ldcg(reinterpret_cast<const float2*>(P + (i / R) * PB + R * D + 2 * (i % R)));
        sf[i] = ml.x;
        sl[i] = ml.y;
    }
    __syncthreads();
    for (int r = w; r < R; r += GQA_WARPS) {
        float M = -INFINITY;
        for (int zz = lane; zz < live; zz += 32) M = fmaxf(M, sf[zz * R + r]);
        M = warp_max(M);
        float L = 0.0f;
        for (int zz = lane; zz < live; zz += 32) {
            const float mz = sf[zz * R + r];
            if (mz != -INFINITY) L += sl[zz * R + r] * exp2f(mz - M);
        }
        L = warp_sum(L);
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        for (int zz = lane; zz < live; zz += 32) {
            const float mz = sf[zz * R + r];
            sf[zz * R + r] = mz == -INFINITY ? 0.0f : exp2f(mz - M) * inv;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R * D / 4; i += blockDim.x) {
        const int r = 4 * i / D, d = 4 * i % D;
        float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll TG_GQA_MERGE_UNROLL
        for (int zz = 0; zz < live; ++zz) {
            const float f = sf[zz * R + r];
            const float4 x = __ldcg(reinterpret_cast<const float4*>(P + zz * PB + 4 * i));
            a.x += f * x.x;
            a.y += f * x.y;
            a.z += f * x.z;
            a.w += f * x.w;
        }
        T* o4 = out + b0 * od.st[0] + (r / Tq) * od.st[1] + (r % Tq) * od.st[2];
        o4[d * od.st[3]] = from_f32<T>(a.x);
        o4[(d + 1) * od.st[3]] = from_f32<T>(a.y);
        o4[(d + 2) * od.st[3]] = from_f32<T>(a.z);
        o4[(d + 3) * od.st[3]] = from_f32<T>(a.w);
    }
}

#define TG_GQA1(SFX, T, D)                                                                         \
    extern "C" __global__ void __launch_bounds__(GQA_WARPS * 32)                                   \
    attn_gqa_##SFX##_##D(float* part, int* counters, T* out, TD od, const T* q, TD qd, const T* kt, \
                         TD ktd, const T* v, TD vd, float scale, float cap, int causal, int past,  \
                         const int* past_dev, int window, int chunk) {                             \
        tg_pdl_enter();                                                                            \
        attn_gqa<T, D, false>(part, counters, out, od, q, qd, kt, ktd, v, vd, scale, cap, causal,  \
                              past, past_dev, window, chunk, nullptr);                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(GQA_WARPS * 32)                                   \
    attn_gqa_store_##SFX##_##D(float* part, int* counters, T* out, TD od, const T* q, TD qd,       \
                               StoreArgs<T> sa, float scale, float cap, const int* pos, int window, \
                               int chunk) {                                                        \
        tg_pdl_trigger();                                                                          \
        if (!sa.early) tg_pdl_wait();                                                              \
        const long long KV = sa.kcd.ne[1], G = od.ne[1];                                           \
        const TD q4 = {{KV, G, 1, qd.ne[3]}, {G * qd.st[2], qd.st[2], 0, qd.st[3]}};               \
        const TD kt4 = {{KV, 1, sa.kcd.ne[3], sa.kcd.ne[2]}, {sa.kcd.st[1], 0, sa.kcd.st[3], sa.kcd.st[2]}}; \
        const TD v4 = {{KV, 1, sa.vcd.ne[2], sa.vcd.ne[3]}, {sa.vcd.st[1], 0, sa.vcd.st[2], sa.vcd.st[3]}};  \
        attn_gqa<T, D, true>(part, counters, out, od, q, q4, sa.kc, kt4, sa.vc, v4, scale, cap, 1, 0,  \
                             pos, window, chunk, &sa);                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(GQA_WARPS * 32)                                   \
    attn_gqa_paged_##SFX##_##D(float* part, int* counters, T* out, TD od, const T* q, TD qd,       \
                               StoreArgs<T> sa, float scale, float cap, const int* pos, int window, \
                               int chunk, const int* rows, int rs) {                               \
        tg_pdl_trigger();                                                                          \
        if (!sa.early) tg_pdl_wait();                                                              \
        const long long KV = sa.kcd.ne[1], G = od.ne[1], n = blockIdx.y / KV;                      \
        StoreArgs<T> sn = sa; /* the sequence's new key and value rows */                          \
        sn.k += n * sa.kd.st[1];                                                                   \
        sn.v += n * sa.vd.st[1];                                                                   \
        const TD q4 = {{KV, G, 1, qd.ne[3]}, {G * qd.st[2], qd.st[2], 0, qd.st[3]}};               \
        const TD kt4 = {{KV, 1, sa.kcd.ne[3], sa.kcd.ne[2]}, {sa.kcd.st[1], 0, sa.kcd.st[3], sa.kcd.st[2]}}; \
        const TD v4 = {{KV, 1, sa.vcd.ne[2], sa.vcd.ne[3]}, {sa.vcd.st[1], 0, sa.vcd.st[2], sa.vcd.st[3]}};  \
        attn_gqa<T, D, true, true>(part, counters, out, od, q + n * qd.st[1], q4, sa.kc, kt4, sa.vc, v4, \
                                   scale, cap, 1, 0, pos, window, chunk, &sn, rows, rs, (int)KV);  \
    }
#define TG_GQA(SFX, T) TG_GQA1(SFX, T, 64) TG_GQA1(SFX, T, 128)

TG_GQA(f16, __half)
TG_GQA(bf16, __nv_bfloat16)
