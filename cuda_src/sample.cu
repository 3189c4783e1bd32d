// sample.cu -- the sample op: one token id per row of logits (greedy, temperature, top-k, top-p,
// counter-based RNG). Semantics: tinygraph/ops.py, sample(); this file computes exactly that, with
// the weights w = exp(z - max z) summed exactly in 64-bit fixed point (w * 2^40, truncated), so
// every sum, threshold and pick is deterministic whatever the order of the atomics.
//
// Three kernels per call, each on a grid (G, rows), G = ceil(V / SMP_CHUNK), 1024 threads:
//   sample_keys_T(int* out, TD od, const T* x, TD xd, const float* fp, const int* ip, uchar* ws)
//     per chunk of 4096 logits: the greedy argmax (NaN wins, first index on ties), z = x / temperature
//     as an order-preserving uint32 key (written to ws), max / first argmax / min finite of z.
//     Also zeroes the row's histogram and state (the workspace need not start zeroed).
//   sample_hist_i32(int* out, TD od, TD xd, const float* fp, const int* ip, uchar* ws)
//     greedy / +inf / all -inf rows: block 0 writes the answer. Otherwise a histogram of the row
//     over 2048 bins of d = max z - z (bin width min(z range, 28) / 2047; the last bin holds the
//     rest) with counts and fixed-point weights. The last block of the row (atomic ticket) finds the
//     bins of the top-k and top-p thresholds from the histogram, collects the keys of those bins
//     (<= 4096 keys, in shared memory) and bisects on the key for the exact thresholds; it stores
//     the threshold tau and target = floor(u * kept weight).
//   sample_pick_i32(same as sample_hist)
//     each block sums its chunk's kept weights; the last block finds the chunk where the running
//     sum passes target and scans it in vocabulary order: out[row] = that index.
// Launch: grid (G, rows), block 1024, no dynamic shared memory; ws: sample_workspace_bytes() in
// kernels.py (rows * (64 + 40 G + 12 * 2048 + 4 V) bytes, 8-byte aligned).
// od: the int32 output with xd's shape but ne[3] = 1 (as argmax).
//
// Expected cost on an H100 (V = 151936, one row): ~2 us per chunk kernel plus the last block of
// sample_hist: one pass over the row's keys per collected bin (1-2 passes, ~4 us each) and up to
// two bisections in shared memory (~2 us each): ~15-25 us in all, replayed in a CUDA graph.
// A bin of more than 4096 keys (massive ties, e.g. thousands of equal logits at the threshold)
// is bisected over the row's keys in global memory instead: correct, but up to ~30 passes.
#include "common.cuh"

#define SMP_THREADS 1024
#define SMP_PER_THREAD 4
#define SMP_CHUNK (SMP_THREADS * SMP_PER_THREAD)
#define SMP_NB 2048  // histogram bins: 2 per thread
#define SMP_CAP 4096 // keys collected in shared memory
#define SMP_DMAX 28.0f  // exp(-28) * 2^40 < 1: bins beyond weigh 0
#define SMP_KEY_NEGINF 0x007FFFFFu
#define SMP_KEY_POSINF 0xFF800000u
#define SMP_FULL 0xffffffffu

typedef unsigned long long u64;
typedef unsigned int u32;

// state words of a row
#define ST_TICKET2 0
#define ST_TICKET3 1
#define ST_DONE 2
#define ST_MKEY 3
#define ST_TAU 4
#define ST_TARGET 6  // u64 at words 6..7
#define ST_WORDS 16
#define CHUNK_WORDS 8  // gkey, gidx, zkey, zidx, zmin

struct SmpWs {
    u32* state;  // [ST_WORDS]
    u32* chunk;  // [G][CHUNK_WORDS]
    u64* cmass;  // [G]
    u64* hw;     // [SMP_NB]
    u32* hcnt;   // [SMP_NB]
    u32* keys;   // [V]
};

__device__ __forceinline__ SmpWs smp_ws(unsigned char* ws, long long rows, long long G, long long V,
                                        long long r) {
    SmpWs w;
    unsigned char* p = ws;
    w.state = (u32*)p + r * ST_WORDS;
    p += rows * ST_WORDS * 4;
    w.chunk = (u32*)p + r * G * CHUNK_WORDS;
    p += rows * G * CHUNK_WORDS * 4;
    w.cmass = (u64*)p + r * G;
    p += rows * G * 8;
    w.hw = (u64*)p + r * SMP_NB;
    p += rows * SMP_NB * 8;
    w.hcnt = (u32*)p + r * SMP_NB;
    p += rows * SMP_NB * 4;
    w.keys = (u32*)p + r * V;
    return w;
}

// order-preserving uint32 key of a float, and back
__device__ __forceinline__ u32 smp_key(float f) {
    const u32 b = __float_as_uint(f);
    return b ^ ((b >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}
__device__ __forceinline__ float smp_val(u32 k) {
    return __uint_as_float((k >> 31) ? (k ^ 0x80000000u) : ~k);
}

// fixed-point weight of key k (z <= m): floor(exp(z - m) * 2^40); 0 for -inf
__device__ __forceinline__ u64 smp_w(u32 k, float m) {
    if (k <= SMP_KEY_NEGINF) return 0;
    return (u64)(expf(smp_val(k) - m) * 1099511627776.0f);
}

// histogram bin of key k: floor((m - z) * R), capped at SMP_NB - 1 (monotone in k)
__device__ __forceinline__ int smp_bin(u32 k, float m, float R) {
    const float q = (m - smp_val(k)) * R;
    return q < (float)(SMP_NB - 1) ? (int)q : SMP_NB - 1;
}

// splitmix64: the (ctr + 1)-th output from state seed (ops.sample_uniform)
__device__ __forceinline__ u64 smp_splitmix(u64 seed, u64 ctr) {
    u64 x = seed + (ctr + 1ull) * 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// ---- block-wide reductions (every thread gets the result; sc: 32 entries, reusable) -----------
// (k, i) beats (bk, bi): larger key, then smaller index
__device__ __forceinline__ void smp_better(u32& bk, int& bi, u32 k, int i) {
    if (k > bk || (k == bk && i < bi)) { bk = k; bi = i; }
}

__device__ void smp_block_best(u32& k, int& i, u64* sc) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        smp_better(k, i, __shfl_xor_sync(SMP_FULL, k, o), __shfl_xor_sync(SMP_FULL, i, o));
    __syncthreads();
    if (lane == 0) sc[wid] = ((u64)k << 32) | (u32)i;
    __syncthreads();
    const u64 v = lane < nw ? sc[lane] : 0x7fffffffull;
    k = (u32)(v >> 32);
    i = (int)(u32)v;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        smp_better(k, i, __shfl_xor_sync(SMP_FULL, k, o), __shfl_xor_sync(SMP_FULL, i, o));
}

__device__ u32 smp_block_min(u32 v, u64* sc) {
    int dummy = 0;
    u32 k = ~v;  // the minimum is the best of the complements
    smp_block_best(k, dummy, sc);
    return ~k;
}

__device__ u64 smp_block_sum(u64 v, u64* sc) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SMP_FULL, v, o);
    __syncthreads();
    if (lane == 0) sc[wid] = v;
    __syncthreads();
    v = lane < nw ? sc[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SMP_FULL, v, o);
    return v;
}

// exclusive prefix sum over the block in thread order; *total gets the block's sum
__device__ u64 smp_block_exscan(u64 v, u64* sc, u64* total) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    u64 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(SMP_FULL, inc, o);
        if (lane >= o) inc += y;
    }
    __syncthreads();
    if (lane == 31) sc[wid] = inc;
    __syncthreads();
    if (wid == 0) {
        u64 s = lane < nw ? sc[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 y = __shfl_up_sync(SMP_FULL, s, o);
            if (lane >= o) s += y;
        }
        sc[lane] = s;
    }
    __syncthreads();
    *total = sc[nw - 1];
    return (wid > 0 ? sc[wid - 1] : 0) + inc - v;
}

// true in every thread of the block that is the last of its row to finish (after its writes)
__device__ bool smp_last_block(u32* ticket, int G, int* flag) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *flag = atomicAdd(ticket, 1u) == (u32)(G - 1);
    __syncthreads();
    const bool last = *flag;
    if (last) __threadfence();
    return last;
}

// f(j, key) for every j in [0, V) of a row's keys, and for j >= V (key 0) up to a multiple of
// blockDim * SMP_UNROLL, so every lane of a warp calls f equally often (f may use warp votes).
// The loads of a batch are issued together: the pass is bound by bandwidth, not latency.
#define SMP_UNROLL 8
template <typename F>
__device__ __forceinline__ void smp_for_keys(const u32* keys, long long V, F f) {
    for (long long base = 0; base < V; base += (long long)blockDim.x * SMP_UNROLL) {
        u32 k[SMP_UNROLL];
#pragma unroll
        for (int u = 0; u < SMP_UNROLL; ++u) {
            const long long j = base + (long long)u * blockDim.x + threadIdx.x;
            k[u] = j < V ? keys[j] : 0u;
        }
#pragma unroll
        for (int u = 0; u < SMP_UNROLL; ++u) f(base + (long long)u * blockDim.x + threadIdx.x, k[u]);
    }
}

// the keys of this block's chunk: k[e] is element chunk_start + e * blockDim + tid (0 past V)
__device__ __forceinline__ void smp_chunk_keys(const u32* keys, long long V, u32 k[SMP_PER_THREAD]) {
#pragma unroll
    for (int e = 0; e < SMP_PER_THREAD; ++e) {
        const long long j = (long long)blockIdx.x * SMP_CHUNK + e * blockDim.x + threadIdx.x;
        k[e] = j < V ? keys[j] : 0u;
    }
}

// ---- kernel 1: keys and per-chunk maxima ------------------------------------------------------
template <typename T>
__device__ __forceinline__ void sample_keys_kernel(const T* x, const TD& xd, const float* fp,
                                                   unsigned char* ws) {
    __shared__ u64 sc[32];
    const long long V = xd.ne[3], rows = td_rows(xd), r = blockIdx.y;
    const int G = gridDim.x, b = blockIdx.x, tid = threadIdx.x;
    const SmpWs w = smp_ws(ws, rows, G, V, r);
    for (int i = (int)((long long)b * SMP_NB / G) + tid; i < (int)((long long)(b + 1) * SMP_NB / G);
         i += blockDim.x) {
        w.hw[i] = 0;
        w.hcnt[i] = 0;
    }
    if (b == 0 && tid < ST_WORDS) w.state[tid] = 0;
    const float t = fp[0];
    const bool greedy = !(t > 0.0f);
    const T* xr = x + td_row_offset(xd, r);
    const long long xs = xd.st[3];
    u32 gk = 0, zk = 0, zmin = 0xFFFFFFFFu;
    int gi = 0x7fffffff, zi = 0x7fffffff;
    float xv[SMP_PER_THREAD];
#pragma unroll
    for (int e = 0; e < SMP_PER_THREAD; ++e) {
        const long long j = (long long)b * SMP_CHUNK + e * blockDim.x + tid;
        xv[e] = j < V ? to_f32(xr[j * xs]) : 0.0f;
    }
#pragma unroll
    for (int e = 0; e < SMP_PER_THREAD; ++e) {
        const long long j = (long long)b * SMP_CHUNK + e * blockDim.x + tid;
        if (j >= V) break;
        const float v = xv[e];
        smp_better(gk, gi, v != v ? 0xFFFFFFFFu : smp_key(v), (int)j);
        if (!greedy) {
            float z = v / t;
            if (z == 0.0f) z = 0.0f;  // -0 -> +0: equal values, equal keys
            const u32 k = z != z ? SMP_KEY_NEGINF : smp_key(z);
            w.keys[j] = k;
            smp_better(zk, zi, k, (int)j);
            if (k > SMP_KEY_NEGINF && k < SMP_KEY_POSINF) zmin = min(zmin, k);
        }
    }
    smp_block_best(gk, gi, sc);
    smp_block_best(zk, zi, sc);
    zmin = smp_block_min(zmin, sc);
    if (tid == 0) {
        u32* c = w.chunk + (long long)b * CHUNK_WORDS;
        c[0] = gk;
        c[1] = (u32)gi;
        c[2] = zk;
        c[3] = (u32)zi;
        c[4] = zmin;
    }
}

#define TG_SAMPLE_KEYS(T, sfx)                                                                 \
    extern "C" __global__ void __launch_bounds__(SMP_THREADS)                                  \
        sample_keys_##sfx(int* out, TD od, const T* x, TD xd, const float* fp, const int* ip,  \
                          unsigned char* ws) {                                                 \
        tg_pdl_enter();                                                                        \
        sample_keys_kernel<T>(x, xd, fp, ws);                                                  \
    }
TG_SAMPLE_KEYS(float, f32)
TG_SAMPLE_KEYS(__half, f16)
TG_SAMPLE_KEYS(__nv_bfloat16, bf16)

// ---- kernel 2: histogram and thresholds -------------------------------------------------------
struct SmpShared {
    u64 cw[SMP_NB + 1];    // histogram weights, then their exclusive prefix sums
    u32 ccnt[SMP_NB + 1];  // histogram counts, then their exclusive prefix sums
    u32 list[SMP_CAP];     // collected keys
    u64 sc[32];
    u32 nlist;
    int found;
    int flag;
};

// the keys of bins [lo, hi]: in shared memory (n <= SMP_CAP), else read from the row's keys
struct SmpList {
    int lo, hi;
    u32 n;
    bool smem;
};

// row-wide results of kernel 1 (every thread): greedy winner, max z key + first index, min finite
struct SmpRow {
    u32 gk, zk, zmin;
    int gi, zi;
};

__device__ SmpRow smp_row(const SmpWs& w, int G, u64* sc) {
    SmpRow s = {0u, 0u, 0xFFFFFFFFu, 0x7fffffff, 0x7fffffff};
    for (int c = threadIdx.x; c < G; c += blockDim.x) {
        const u32* p = w.chunk + (long long)c * CHUNK_WORDS;
        smp_better(s.gk, s.gi, p[0], (int)p[1]);
        smp_better(s.zk, s.zi, p[2], (int)p[3]);
        s.zmin = min(s.zmin, p[4]);
    }
    smp_block_best(s.gk, s.gi, sc);
    smp_block_best(s.zk, s.zi, sc);
    s.zmin = smp_block_min(s.zmin, sc);
    return s;
}

// first bin b with pre[b + 1] >= v, given pre[0] < v <= pre[SMP_NB]
template <typename A>
__device__ int smp_find_bin(const A* pre, A v, int* found) {
    for (int b = threadIdx.x; b < SMP_NB; b += blockDim.x)
        if (pre[b] < v && pre[b + 1] >= v) *found = b;
    __syncthreads();
    const int b = *found;
    __syncthreads();
    return b;
}

// collect the keys of bins [lo, hi] (lo = 0 when they fit, else lo = hi = b) into sh.list
__device__ SmpList smp_collect(SmpShared& sh, int b, const u32* keys, long long V, float m, float R) {
    SmpList L;
    L.hi = b;
    L.lo = sh.ccnt[b + 1] <= SMP_CAP ? 0 : b;
    L.n = sh.ccnt[b + 1] - sh.ccnt[L.lo];
    L.smem = L.n <= SMP_CAP;
    if (!L.smem) return L;
    const int lane = threadIdx.x & 31;
    __syncthreads();  // an earlier list may still be read
    if (threadIdx.x == 0) sh.nlist = 0;
    __syncthreads();
    smp_for_keys(keys, V, [&](long long j, u32 k) {
        const int bb = smp_bin(k, m, R);
        const bool hit = j < V && bb >= L.lo && bb <= L.hi;
        const u32 mask = __ballot_sync(SMP_FULL, hit);
        if (mask) {
            const int leader = __ffs(mask) - 1;
            u32 pos = 0;
            if (lane == leader) pos = atomicAdd(&sh.nlist, (u32)__popc(mask));
            pos = __shfl_sync(SMP_FULL, pos, leader) + __popc(mask & ((1u << lane) - 1u));
            if (hit && pos < SMP_CAP) sh.list[pos] = k;
        }
    });
    __syncthreads();
    return L;
}

// over the list's keys >= T: count, and (want_mass) fixed-point weight; also min / max key
struct SmpStats {
    u64 cnt, mass;
    u32 kmin, kmax;
};

__device__ SmpStats smp_stats(SmpShared& sh, const SmpList& L, const u32* keys, long long V, float m,
                              float R, u32 T, bool want_mass, bool want_range) {
    u64 c = 0, s = 0;
    u32 lo = 0xFFFFFFFFu, hi = 0;
    auto add = [&](u32 k) {
        lo = min(lo, k);
        hi = max(hi, k);
        if (k >= T) {
            ++c;
            if (want_mass) s += smp_w(k, m);
        }
    };
    if (L.smem) {
        for (int i = threadIdx.x; i < (int)L.n; i += blockDim.x) add(sh.list[i]);
    } else {  // a bin too large for shared memory: filter the row's keys by bin
        smp_for_keys(keys, V, [&](long long j, u32 k) {
            const int bb = smp_bin(k, m, R);
            if (j < V && bb >= L.lo && bb <= L.hi) add(k);
        });
    }
    SmpStats st;
    st.cnt = smp_block_sum(c, sh.sc);
    st.mass = want_mass ? smp_block_sum(s, sh.sc) : 0;
    st.kmin = want_range ? smp_block_min(lo, sh.sc) : 0;
    st.kmax = want_range ? ~smp_block_min(~hi, sh.sc) : 0;
    return st;
}

// the largest key T with base + f(max(T, floor)) >= need, f = count (by_mass false) or weight of
// the list's keys >= T; the answer is a key of the list
__device__ u32 smp_bisect(SmpShared& sh, const SmpList& L, const u32* keys, long long V, float m,
                          float R, u32 floor_key, u64 base, u64 need, bool by_mass) {
    const SmpStats r = smp_stats(sh, L, keys, V, m, R, 0, false, true);
    u64 lo = max(r.kmin, floor_key), hi = (u64)r.kmax + 1;  // f(lo) >= need > f(hi)
    while (hi - lo > 1) {
        const u64 mid = (lo + hi) >> 1;
        const SmpStats s = smp_stats(sh, L, keys, V, m, R, (u32)mid, by_mass, false);
        if (base + (by_mass ? s.mass : s.cnt) >= need) lo = mid;
        else hi = mid;
    }
    return (u32)lo;
}

extern "C" __global__ void __launch_bounds__(SMP_THREADS)
    sample_hist_i32(int* out, TD od, TD xd, const float* fp, const int* ip, unsigned char* ws) {
    tg_pdl_enter();
    __shared__ SmpShared sh;
    const long long V = xd.ne[3], rows = td_rows(xd), r = blockIdx.y;
    const int G = gridDim.x, b = blockIdx.x, tid = threadIdx.x;
    const SmpWs w = smp_ws(ws, rows, G, V, r);
    int* orow = out + td_row_offset(od, r);
    const SmpRow row = smp_row(w, G, sh.sc);
    const float t = fp[0];
    if (!(t > 0.0f) || row.zk == SMP_KEY_POSINF || row.zk <= SMP_KEY_NEGINF) {
        // greedy; a +inf z (its first index); or every z -inf (the argmax of the logits)
        if (b == 0 && tid == 0) {
            *orow = row.zk == SMP_KEY_POSINF && t > 0.0f ? row.zi : row.gi;
            w.state[ST_DONE] = 1;
        }
        return;
    }
    const float m = smp_val(row.zk);
    const float dspan = fminf(m - smp_val(row.zmin), SMP_DMAX);
    const float R = dspan > 0.0f ? (float)(SMP_NB - 1) / dspan : 0.0f;

    // this chunk's histogram, added into the row's
    for (int i = tid; i < SMP_NB; i += blockDim.x) {
        sh.cw[i] = 0;
        sh.ccnt[i] = 0;
    }
    u32 ck[SMP_PER_THREAD];
    smp_chunk_keys(w.keys, V, ck);
    __syncthreads();
    for (int e = 0; e < SMP_PER_THREAD; ++e) {
        if ((long long)b * SMP_CHUNK + e * blockDim.x + tid >= V) break;
        const u32 k = ck[e];
        const int bin = smp_bin(k, m, R);
        atomicAdd(&sh.ccnt[bin], 1u);
        const u64 wt = smp_w(k, m);
        if (wt) atomicAdd(&sh.cw[bin], wt);
    }
    __syncthreads();
    for (int i = tid; i < SMP_NB; i += blockDim.x) {
        if (sh.ccnt[i]) atomicAdd(&w.hcnt[i], sh.ccnt[i]);
        if (sh.cw[i]) atomicAdd(&w.hw[i], sh.cw[i]);
    }
    if (!smp_last_block(&w.state[ST_TICKET2], G, &sh.flag)) return;

    // ---- the last block of the row: exclusive prefix sums of the histogram (2 bins a thread)
    {
        const int b0 = 2 * tid;
        const u32 c0 = __ldcg(&w.hcnt[b0]), c1 = __ldcg(&w.hcnt[b0 + 1]);
        const u64 w0 = __ldcg(&w.hw[b0]), w1 = __ldcg(&w.hw[b0 + 1]);
        u64 tc, tw;
        const u64 ec = smp_block_exscan(c0 + c1, sh.sc, &tc);
        const u64 ew = smp_block_exscan(w0 + w1, sh.sc, &tw);
        sh.ccnt[b0] = (u32)ec;
        sh.ccnt[b0 + 1] = (u32)(ec + c0);
        sh.cw[b0] = ew;
        sh.cw[b0 + 1] = ew + w0;
        if (tid == 0) {
            sh.ccnt[SMP_NB] = (u32)tc;
            sh.cw[SMP_NB] = tw;
        }
        __syncthreads();
    }
    const u64 s_all = sh.cw[SMP_NB];
    const int top_k = ip[0];
    const float top_p = fp[1];
    SmpList L;
    bool have_list = false;
    int bk = SMP_NB;
    u32 tk = 0, tau = 0;
    u64 sk = s_all, s_kept = s_all;
    if (top_k > 0 && (long long)top_k < V) {
        bk = smp_find_bin(sh.ccnt, (u32)top_k, &sh.found);
        if (s_all - sh.cw[bk] == 0) {
            bk = SMP_NB;  // only weightless tokens lie below the k-th: keeping them changes nothing
        } else {
            L = smp_collect(sh, bk, w.keys, V, m, R);
            have_list = true;
            tk = smp_bisect(sh, L, w.keys, V, m, R, 0, sh.ccnt[L.lo], (u64)top_k, false);
            sk = sh.cw[L.lo] + smp_stats(sh, L, w.keys, V, m, R, tk, true, false).mass;
            tau = tk;
            s_kept = sk;
        }
    }
    if (top_p < 1.0f) {
        const double q = ceil((double)top_p * (double)sk);
        const u64 P = q < 1.0 ? 1ull : (q >= (double)sk ? sk : (u64)q);
        const int bp = (bk < SMP_NB && sh.cw[bk] < P) ? bk : smp_find_bin(sh.cw, P, &sh.found);
        if (!have_list || bp < L.lo || bp > L.hi) L = smp_collect(sh, bp, w.keys, V, m, R);
        const u32 tp = smp_bisect(sh, L, w.keys, V, m, R, tk, sh.cw[L.lo], P, true);
        tau = max(tk, tp);
        s_kept = sh.cw[L.lo] + smp_stats(sh, L, w.keys, V, m, R, tau, true, false).mass;
    }
    if (tid == 0) {
        const u64 seed = (u64)(u32)ip[1] | ((u64)(u32)ip[2] << 32);
        const u64 u24 = smp_splitmix(seed, (u64)(u32)ip[3] + (u64)r) >> 40;
        w.state[ST_MKEY] = row.zk;
        w.state[ST_TAU] = tau;
        *(u64*)(w.state + ST_TARGET) = __umul64hi(s_kept, u24 << 40);  // floor(s_kept * u)
        *orow = row.zi;  // provisional (sample_pick overwrites it)
    }
}

// ---- kernel 3: the pick -----------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(SMP_THREADS)
    sample_pick_i32(int* out, TD od, TD xd, const float* fp, const int* ip, unsigned char* ws) {
    tg_pdl_enter();
    __shared__ u64 sc[32];
    __shared__ int flag, found;
    __shared__ u64 before;
    const long long V = xd.ne[3], rows = td_rows(xd), r = blockIdx.y;
    const int G = gridDim.x, b = blockIdx.x, tid = threadIdx.x;
    const SmpWs w = smp_ws(ws, rows, G, V, r);
    if (w.state[ST_DONE]) return;
    const float m = smp_val(w.state[ST_MKEY]);
    const u32 tau = w.state[ST_TAU];
    const u64 target = *(const u64*)(w.state + ST_TARGET);
    u32 ck[SMP_PER_THREAD];
    smp_chunk_keys(w.keys, V, ck);
    u64 s = 0;
    for (int e = 0; e < SMP_PER_THREAD; ++e)  // keys past V are 0: weight 0
        if (ck[e] >= tau) s += smp_w(ck[e], m);
    s = smp_block_sum(s, sc);
    if (tid == 0) w.cmass[b] = s;
    if (!smp_last_block(&w.state[ST_TICKET3], G, &flag)) return;

    // the chunk whose kept weight holds target (running sums in chunk order)
    if (tid == 0) found = -1;
    u64 carry = 0;
    for (int base = 0; base < G; base += blockDim.x) {
        const int c = base + tid;
        const u64 v = c < G ? __ldcg(&w.cmass[c]) : 0;
        u64 tot;
        const u64 ex = carry + smp_block_exscan(v, sc, &tot);
        if (c < G && ex <= target && target < ex + v) {
            found = c;
            before = ex;
        }
        carry += tot;
    }
    __syncthreads();
    const int c = found;
    if (c < 0) return;  // cannot happen (exact sums); the provisional answer stays
    // scan chunk c in vocabulary order: thread t holds elements 4t .. 4t+3
    u64 wv[SMP_PER_THREAD], loc = 0;
    const long long j0 = (long long)c * SMP_CHUNK + (long long)tid * SMP_PER_THREAD;
    for (int e = 0; e < SMP_PER_THREAD; ++e) {
        const long long j = j0 + e;
        const u32 k = j < V ? w.keys[j] : 0u;
        wv[e] = (j < V && k >= tau) ? smp_w(k, m) : 0ull;
        loc += wv[e];
    }
    u64 tot;
    u64 run = before + smp_block_exscan(loc, sc, &tot);
    for (int e = 0; e < SMP_PER_THREAD; ++e) {
        if (run <= target && target < run + wv[e]) out[td_row_offset(od, r)] = (int)(j0 + e);
        run += wv[e];
    }
}
