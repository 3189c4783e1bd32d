// attention.cuh -- fused causal attention: out = softmax(scale * q @ kt, causal, past) @ v,
// without materialising the scores, reading only the keys the mask lets through. The kernel
// bodies and their entry macros; attention.cu instantiates attn_split and attn_pipe,
// attention_store.cu attn_store (two files, so that a cold kernel cache compiles them side by side).
//
// Signatures (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   attn_split_T(float* part, int* counters, T* out, TD od, const T* q, TD qd, const T* kt, TD ktd,
//                const T* v, TD vd, float scale, float cap, int causal, int past,
//                const int* past_dev, int window, int chunk)
//     q [B0, B1, Tq, D], kt [B0', B1', D, S] (keys, transposed: any strides), v [B0', B1', S, Dv],
//     out [B0, B1, Tq, Dv]; a size-1 batch dim of q/kt/v broadcasts (grouped-query attention).
//     Query row t sees keys j <= t + past (causal) and j < S; past is read from past_dev[0] when
//     past_dev is non-NULL, so a replayed CUDA graph can move it (from past_dev[i0], i0 the index
//     of axis 0, when past < 0: a decode step over many sequences, each at its own position). window > 0 (causal only; 0 or
//     negative: none): a sliding window, row t (position p = t + past) sees only keys
//     p - window < j <= p (HF's kv_idx > q_idx - sliding_window); a row that sees no key gets 0.
//     cap > 0 (Gemma 2; 0: none): each score s = scale * q . k becomes cap * tanh(s / cap).
//     Grid: (Tq, B0*B1, nsplit); block (128, 1, 1). Split z handles keys [f + z*chunk,
//     f + (z+1)*chunk), f = the row's first visible key (0, or p - window + 1), so a windowed
//     decode reads only its window; the backend sizes nsplit for min(S, window) keys.
//     nsplit == 1: the result goes straight to out (part unused, may be NULL).
//     nsplit > 1: each split with visible keys writes (max, sum, acc[Dv]) to
//     part[((b*Tq + t)*nsplit + z)*(Dv+2)]; the last of them to finish (counted in
//     counters[b*Tq + t], which must start at 0 and is left at 0) merges them into out
//     (flash-decoding: a long context fills the GPU, in one launch). Splits past the last visible
//     key exit at once, so a graph sized for the whole cache costs little at short context.
//     Within a block, each warp scores 32 keys at a time (one key per lane), then mixes their
//     values (lanes over Dv).
// D and Dv are at most 256; the kernel comes in three register sizes, attn_split_T_64 / _128 /
// _256, for heads of up to that many elements. Math in float32.
//   attn_pipe_T_<64|128|256>(same parameters): the same, pipelined for a few queries (decode):
//     key rows in flight while q is staged and while the previous tile's values are mixed,
//     value batches double-buffered. About twice the registers (f16, 128: 176 vs 88), so the
//     lean attn_split serves prefill, where occupancy matters more.
//   attn_store_T_<64|128|256>(float* part, int* counters, T* out, TD od, const T* q, TD qd,
//                  StoreArgs<T> sa, float scale, float cap, const int* pos, int window, int chunk)
//     the attention_store op (one decode token): q [1, H, hd] -> out [KV, G, 1, hd]; the
//     prologue RMS-normalises (optional) and rotates (optional) q and the new key, and writes
//     key and value into cache row pos; then attn_pipe over the cache with past = pos[0] (and
//     the sliding window, if window > 0: only rows pos - window < j <= pos are read).
//     With sa.early (programmatic dependent launch), pos is read, the RoPE angles computed and
//     the keys of the rows before pos loaded (registers, L2; values to L2) before tg_pdl_wait.
#pragma once
#include "attention_common.cuh"

#define ATT_WARPS 4

// A key row held in registers: the whole row as 16-byte vectors when it is contiguous, aligned
// and exactly MAXD long ("fast"); other rows are read element by element in key_dot.
template <typename T, int MAXD>
struct KeyRow {
    static constexpr int E = 16 / sizeof(T);
    uint4 u[MAXD / E];
};

// Issue the loads of key row kc (no-op unless fast): they fly while the caller does other work.
template <typename T, int MAXD>
__device__ __forceinline__ void key_load(KeyRow<T, MAXD>& r, const T* kc, bool fast) {
    if (!fast) return;
    const uint4* p = reinterpret_cast<const uint4*>(kc);
#pragma unroll
    for (int i = 0; i < MAXD / KeyRow<T, MAXD>::E; ++i) r.u[i] = __ldg(p + i);
}

// q . k for the key row (loaded by key_load when fast). s_q holds q * scale in float.
template <typename T, int MAXD>
__device__ __forceinline__ float key_dot(const KeyRow<T, MAXD>& r, const float* s_q, const T* kc,
                                         long long st, int D, bool fast) {
    float dot = 0.0f;
    constexpr int E = KeyRow<T, MAXD>::E;
    if (fast) {
#pragma unroll
        for (int i = 0; i < MAXD / E; ++i) {
            const T* e = reinterpret_cast<const T*>(&r.u[i]);
#pragma unroll
            for (int k = 0; k < E; ++k) dot += s_q[i * E + k] * to_f32(e[k]);
        }
    } else {
#pragma unroll 8
        for (int d = 0; d < D; ++d) dot += s_q[d] * to_f32(kc[d * st]);
    }
    return dot;
}

// Value rows tile+k0 .. tile+k0+7 (clamped to the last key jl: finite data, weight 0), PER
// columns per lane.
template <typename T, int PER>
__device__ __forceinline__ void value_batch(float (&vv)[8][PER], const T* vb, const TD& vd, long long tile,
                                            int k0, long long jl, int lane, int Dv) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const T* vr = vb + min(tile + k0 + k, jl) * vd.st[2];
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            vv[k][i] = d < Dv ? to_f32(vr[d * vd.st[3]]) : 0.0f;
        }
    }
}

// The merge of flash-decoding splits: partials pr[z * (Dv + 2)] = (max, sum, acc[Dv]) of splits
// z < nsplit (natural-log domain; max -inf: the split saw no key of this row) -> the row of out
// (b0, b1, t).
template <typename T>
__device__ __forceinline__ void attn_merge(const float* pr, T* out, const TD& od, int nsplit,
                                          long long b0, long long b1, long long t) {
    const int Dv = (int)od.ne[3];
    float M = -INFINITY;
    for (int z = 0; z < nsplit; ++z) M = fmaxf(M, pr[z * (Dv + 2)]);
    float L = 0.0f;
    for (int z = 0; z < nsplit; ++z) {
        const float mz = pr[z * (Dv + 2)];
        if (mz != -INFINITY) L += pr[z * (Dv + 2) + 1] * expf(mz - M);
    }
    T* orow = out + b0 * od.st[0] + b1 * od.st[1] + t * od.st[2];
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
        float a = 0.0f;
        for (int z = 0; z < nsplit; ++z) {
            const float mz = pr[z * (Dv + 2)];
            if (mz != -INFINITY) a += __ldcg(&pr[z * (Dv + 2) + 2 + d]) * expf(mz - M);
        }
        orow[d * od.st[3]] = from_f32<T>(L > 0.0f ? a / L : 0.0f);
    }
}

// attn_store's prologue: s_q = scale * rope(norm(q row)), and the block(s) whose split holds
// key `pos` write rope(norm(k)) / v of KV head b0 into cache row pos (every q head of the group
// with that split writes the same values), visible to the block's own reads after the barrier.
template <typename T>
__device__ __forceinline__ void store_prologue(float* s_q, float* s_k, const T* qr, long long qs, int D,
                                               const StoreArgs<T>& sa, long long b0, int pos,
                                               bool writer, float scale, float2 cs0) {
    __shared__ float red[32];
    const int tid = threadIdx.x;
    const T* kr = sa.k + b0 * sa.kd.st[2];
    float sq = 0.0f, sk = 0.0f;
    for (int d = tid; d < D; d += blockDim.x) {
        const float a = to_f32(qr[d * qs]), c = to_f32(kr[d * sa.kd.st[3]]);
        s_q[d] = a;
        s_k[d] = c;
        sq += a * a;
        sk += c * c;
        if (writer) sa.vc[b0 * sa.vcd.st[1] + (long long)pos * sa.vcd.st[2] + d * sa.vcd.st[3]] =
            sa.v[b0 * sa.vd.st[2] + d * sa.vd.st[3]];
    }
    // block_sum's barriers also publish s_q / s_k
    const float iq = sa.q_norm ? rsqrtf(block_sum(sq, red) / (float)D + sa.eps) : 1.0f;
    const float ik = sa.k_norm ? rsqrtf(block_sum(sk, red) / (float)D + sa.eps) : 1.0f;
    if (!sa.q_norm && !sa.k_norm) __syncthreads();
    const int half = D / 2;
    for (int p = tid; p < half; p += blockDim.x) {
        const int a = sa.mode == 2 ? p : 2 * p, b = sa.mode == 2 ? p + half : 2 * p + 1;
        float qa = s_q[a] * iq, qb = s_q[b] * iq, ka = s_k[a] * ik, kb2 = s_k[b] * ik;
        if (sa.q_norm && sa.qn) { qa *= to_f32(sa.qn[a]); qb *= to_f32(sa.qn[b]); }
        if (sa.k_norm && sa.kn) { ka *= to_f32(sa.kn[a]); kb2 *= to_f32(sa.kn[b]); }
        if (sa.mode >= 0) {
            const float2 cs = p == tid ? cs0 : rope_cossin(p, D, pos, sa.ff, sa.theta);
            const float qa2 = qa * cs.x - qb * cs.y, qb2 = qb * cs.x + qa * cs.y;
            const float ka2 = ka * cs.x - kb2 * cs.y, kb3 = kb2 * cs.x + ka * cs.y;
            qa = qa2; qb = qb2; ka = ka2; kb2 = kb3;
        }
        s_q[a] = qa * scale;
        s_q[b] = qb * scale;
        if (writer) {
            T* kw = sa.kc + b0 * sa.kcd.st[1] + (long long)pos * sa.kcd.st[2];
            kw[a * sa.kcd.st[3]] = from_f32<T>(ka);
            kw[b * sa.kcd.st[3]] = from_f32<T>(kb2);
        }
    }
    __syncthreads();
}

template <typename T, int MAXD, bool STORE, bool PIPE>
__device__ __forceinline__ void attn_split(float* part, int* counters, T* out, const TD& od, const T* q,
                                           const TD& qd, const T* kt, const TD& ktd, const T* v,
                                           const TD& vd, float scale, float cap, int causal, int past,
                                           const int* past_dev, int window, int chunk,
                                           const StoreArgs<T>* sa) {
    constexpr int PER = MAXD / 32;  // value columns per lane: registers sized for the head
    __shared__ float s_q[MAXD];
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][MAXD];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long long t = blockIdx.x, b = blockIdx.y;
    const int z = blockIdx.z;
    const long long b0 = b / od.ne[1], b1 = b % od.ne[1];
    const int D = (int)qd.ne[3], Dv = (int)vd.ne[3];
    const long long S = ktd.ne[3];
    if (past_dev) past = past_dev[past < 0 ? b0 : 0];  // past < 0: one position per index of axis 0
    long long visible = causal ? t + (long long)past + 1 : S;
    if (visible > S) visible = S;
    // sliding window: the splits start at the row's first visible key; those before it are never read
    long long first = (causal && window > 0) ? t + (long long)past + 1 - window : 0;
    if (first < 0) first = 0;
    // splits past the last visible key have nothing to do: they neither write nor count (a row
    // that sees no key at all: split 0 writes its zeros)
    const int live = visible > first ? (int)((visible - first + chunk - 1) / chunk) : 0;
    const int nsplit = gridDim.z;
    if (nsplit > 1 && z >= max(live, 1)) return;
    const long long j0 = first + (long long)z * chunk;
    long long j1 = j0 + chunk;
    if (j1 > visible) j1 = visible;

    const T* qr = q + bcast(qd, 0, b0) + bcast(qd, 1, b1) + t * qd.st[2];
    const T* kb = kt + bcast(ktd, 0, b0) + bcast(ktd, 1, b1);
    const T* vb = v + bcast(vd, 0, b0) + bcast(vd, 1, b1);
    // key rows as 16-byte vectors when every row is contiguous, aligned and MAXD long
    const bool fast = ktd.st[2] == 1 && D == MAXD && (reinterpret_cast<unsigned long long>(kb) & 15) == 0 &&
                      (ktd.st[3] * (long long)sizeof(T)) % 16 == 0;
    // each warp takes tiles of 32 keys: lane i scores key tile+i, then the warp mixes the values.
    // Key rows of <= 256 bytes (registers): the first tile's load while q is staged, later
    // tiles' while the values of the tile before are mixed; value rows come in batches
    // of 8, the next batch in flight while the current one is used (heads <= 128 wide).
    constexpr bool KP = PIPE && MAXD * sizeof(T) <= 256;  // a key row of <= 256 bytes stays in registers
    long long tile = j0 + 32LL * w;
    KeyRow<T, MAXD> kr;
    long long jk = j0;  // keys from jk on are loaded after the prologue
    if constexpr (STORE) {  // T == 1: key `past` is this step's, written here first
        // this thread's rotation pair (p = threadIdx.x) depends on pos alone
        const float2 cs0 = (sa->mode >= 0 && (int)threadIdx.x < D / 2)
                               ? rope_cossin(threadIdx.x, D, past, sa->ff, sa->theta)
                               : make_float2(1.0f, 0.0f);
        if (sa->early) {
            // launched before the previous kernel finished (see attn_store): the cache rows
            // before `past` are earlier steps' and stay as they are, so their keys go to
            // registers and their keys and values to L2 while the producer of q/k/v finishes
            jk = min(j1, (long long)past);
            const int lines = (int)((D * (long long)sizeof(T) + 127) / 128);
            for (long long r = j0 + threadIdx.x / lines; r < jk; r += blockDim.x / lines) {
                const int c = (threadIdx.x % lines) * (128 / (int)sizeof(T));
                if (ktd.st[2] == 1) tg_prefetch_l2(kb + r * ktd.st[3] + c);
                if (vd.st[3] == 1) tg_prefetch_l2(vb + r * vd.st[2] + c);
            }
            if (KP && tile + lane < jk) key_load<T, MAXD>(kr, kb + (tile + lane) * ktd.st[3], fast);
            tg_pdl_wait();
        }
        __shared__ float s_k[MAXD];
        const bool writer = j0 <= (long long)past && (long long)past < j1;
        store_prologue<T>(s_q, s_k, qr, qd.st[3], D, *sa, b0, past, writer, scale, cs0);
    }
    if (KP && tile + lane >= jk && tile + lane < j1) key_load<T, MAXD>(kr, kb + (tile + lane) * ktd.st[3], fast);
    if constexpr (!STORE) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) s_q[d] = to_f32(qr[d * qd.st[3]]) * scale;
        __syncthreads();
    }

    float acc[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    constexpr bool DB = PIPE && MAXD <= 128;
    for (; tile < j1; tile += 32LL * ATT_WARPS) {
        const long long j = tile + lane;
        float s = -INFINITY;
        if (KP && j < j1) {
            s = key_dot<T, MAXD>(kr, s_q, kb + j * ktd.st[3], ktd.st[2], D, fast);
        } else if (j < j1) {  // a wide row: loaded here, not kept across the tile
            KeyRow<T, MAXD> k1;
            key_load<T, MAXD>(k1, kb + j * ktd.st[3], fast);
            s = key_dot<T, MAXD>(k1, s_q, kb + j * ktd.st[3], ktd.st[2], D, fast);
        }
        if (cap > 0.0f && j < j1) s = cap * tanhf(s / cap);  // s_q holds q * scale
        const long long nt = tile + 32LL * ATT_WARPS;
        if (KP && nt + lane < j1) key_load<T, MAXD>(kr, kb + (nt + lane) * ktd.st[3], fast);
        float vv[DB ? 2 : 1][8][PER];
        if (DB) value_batch<T, PER>(vv[0], vb, vd, tile, 0, j1 - 1, lane, Dv);
        const float mt = warp_max(s);
        const float mn = fmaxf(m, mt);
        const float p = j < j1 ? expf(s - mn) : 0.0f;
        const float corr = expf(m - mn);  // 0 on the first tile (m = -inf)
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < PER; ++i) acc[i] *= corr;
#pragma unroll
        for (int k0 = 0; k0 < 32; k0 += 8) {
            const int cb = DB ? (k0 / 8) & 1 : 0;
            if (DB && k0 + 8 < 32) value_batch<T, PER>(vv[cb ^ 1], vb, vd, tile, k0 + 8, j1 - 1, lane, Dv);
            if (!DB) value_batch<T, PER>(vv[0], vb, vd, tile, k0, j1 - 1, lane, Dv);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float pk = __shfl_sync(0xffffffffu, p, k0 + k);
#pragma unroll
                for (int i = 0; i < PER; ++i) acc[i] += pk * vv[cb][k][i];
            }
        }
        m = mn;
    }
    if (lane == 0) { s_m[w] = m; s_l[w] = l; }
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        if (d < Dv) s_acc[w][d] = acc[i];
    }
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int k = 0; k < ATT_WARPS; ++k) M = fmaxf(M, s_m[k]);
    float L = 0.0f;
#pragma unroll
    for (int k = 0; k < ATT_WARPS; ++k) L += s_m[k] == -INFINITY ? 0.0f : s_l[k] * expf(s_m[k] - M);
    if (nsplit == 1 || live <= 1) {  // the only split with keys (live == 1: short context)
        T* orow = out + b0 * od.st[0] + b1 * od.st[1] + t * od.st[2];
        for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
            float a = 0.0f;
#pragma unroll
            for (int k = 0; k < ATT_WARPS; ++k)
                if (s_m[k] != -INFINITY) a += s_acc[k][d] * expf(s_m[k] - M);
            orow[d * od.st[3]] = from_f32<T>(L > 0.0f ? a / L : 0.0f);
        }
        return;
    }
    const long long row = b * od.ne[2] + t;
    float* pr = part + (row * nsplit + z) * (long long)(Dv + 2);
    if (threadIdx.x == 0) { pr[0] = M; pr[1] = L; }
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_WARPS; ++k)
            if (s_m[k] != -INFINITY) a += s_acc[k][d] * expf(s_m[k] - M);
        pr[2 + d] = a;
    }
    // the last live block of this row to arrive merges the live splits' partial results
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const int done = atomicAdd(&counters[row], 1);
        s_last = done == live - 1;
        if (s_last) counters[row] = 0;  // ready for the next launch (graph replay)
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    attn_merge<T>(part + row * nsplit * (long long)(Dv + 2), out, od, live, b0, b1, t);
}

// attn_store: q [1, H, hd] (rank 4: ne[2] = H) -> out [KV, G, 1, hd]: the cache seen as the
// transposed keys / values attn_split reads, past = pos[0], causal.
template <typename T, int MAXD>
__device__ __forceinline__ void attn_store(float* part, int* counters, T* out, const TD& od, const T* q,
                                           const TD& qd, const StoreArgs<T>& sa, float scale,
                                           float cap, const int* pos, int window, int chunk) {
    const long long KV = sa.kcd.ne[1], G = od.ne[1];
    TD q4 = {{KV, G, 1, qd.ne[3]}, {G * qd.st[2], qd.st[2], 0, qd.st[3]}};
    TD kt4 = {{KV, 1, sa.kcd.ne[3], sa.kcd.ne[2]}, {sa.kcd.st[1], 0, sa.kcd.st[3], sa.kcd.st[2]}};
    TD v4 = {{KV, 1, sa.vcd.ne[2], sa.vcd.ne[3]}, {sa.vcd.st[1], 0, sa.vcd.st[2], sa.vcd.st[3]}};
    attn_split<T, MAXD, true, true>(part, counters, out, od, q, q4, sa.kc, kt4, sa.vc, v4, scale, cap, 1, 0,
                                    pos, window, chunk, &sa);
}

// attn_split_* (PIPE false) and attn_pipe_* (true): the same entry over attn_split<.., PIPE>
#define TG_ATTN_SPLIT_ENTRY(NAME, SFX, T, MAXD, PIPE)                                               \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)                                    \
    NAME##_##SFX##_##MAXD(float* part, int* counters, T* out, TD od, const T* q, TD qd,             \
                          const T* kt, TD ktd, const T* v, TD vd, float scale, float cap,          \
                          int causal, int past, const int* past_dev, int window, int chunk) {       \
        tg_pdl_enter();                                                                             \
        attn_split<T, MAXD, false, PIPE>(part, counters, out, od, q, qd, kt, ktd, v, vd, scale, cap, \
                                         causal, past, past_dev, window, chunk, nullptr);           \
    }
// the entries of one head register size: attn_split + attn_pipe (attention.cu), attn_store
// (attention_store.cu)
#define TG_ATTN_SPLIT_PIPE(SFX, T, MAXD)                                                            \
    TG_ATTN_SPLIT_ENTRY(attn_split, SFX, T, MAXD, false)                                            \
    TG_ATTN_SPLIT_ENTRY(attn_pipe, SFX, T, MAXD, true)
#define TG_ATTN_STORE(SFX, T, MAXD)                                                                 \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)                                    \
    attn_store_##SFX##_##MAXD(float* part, int* counters, T* out, TD od, const T* q, TD qd,        \
                              StoreArgs<T> sa, float scale, float cap, const int* pos, int window,  \
                              int chunk) {                                                          \
        tg_pdl_trigger();                                                                           \
        if (!sa.early) tg_pdl_wait();                                                               \
        attn_store<T, MAXD>(part, counters, out, od, q, qd, sa, scale, cap, pos, window, chunk);    \
    }
// X(SFX, T, MAXD) for every dtype and head register size
#define TG_ATTN_EACH(X)                                                                             \
    X(f32, float, 64) X(f32, float, 128) X(f32, float, 256)                                         \
    X(f16, __half, 64) X(f16, __half, 128) X(f16, __half, 256)                                      \
    X(bf16, __nv_bfloat16, 64) X(bf16, __nv_bfloat16, 128) X(bf16, __nv_bfloat16, 256)
