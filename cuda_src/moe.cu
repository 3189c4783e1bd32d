// moe.cu -- mixture-of-experts decode: the router (softmax + top-k) and the experts' GEMVs that
// read only the chosen experts' rows (the moe_route, moe_gate_up and moe_down ops).
//
// A token's experts are the non-zero entries of its row of routing weights `route` [rows, E]
// (what moe_route writes): slot j is the j-th non-zero expert in index order, at most k slots.
// Both expert kernels find them the same way, so moe_down reads the slot moe_gate_up wrote.
//
// Signatures (T in {f32, f16, bf16}; all matrices row-major, strides in elements):
//   moe_route_T(T* out, const T* logits, int rows, int E, int k, int norm, long long ldl,
//               long long ldo)
//     out[r, e] = p_e (or p_e / sum of the chosen p with norm) for the k largest p_e of
//     p = softmax(logits[r]) in float32 (ties: the lowest index), 0 elsewhere. E <= 32 * MOE_EPL.
//     Launch: one warp per row, 4 rows per 128-thread block.
//   moe_gate_up[_vec]_T(T* y, const T* x, const T* w, const T* route, int rows, int K, int I, int E,
//                       int k, int act, long long ldx, long long ldr)
//     y[r, j, c] = act(w[e I + c] . x[r]) * (w[E I + e I + c] . x[r]) for slot j's expert e of row
//     r (zeros for an empty slot); w [2 E I, K]: every expert's gate rows, then every up row.
//     act 1 gelu (tanh) | 2 silu. y is contiguous [rows, k, I].
//     Launch: grid (ceil(I / 8), k, rows), 256 threads: one warp per output column c.
//   moe_down[_vec]_T(T* y, const T* h, const T* w, const T* route, int rows, int H, int I, int E,
//                    int k, long long ldr, long long ldy)
//     y[r, n] = sum_j route[r, e_j] * (w[n, e_j I : e_j I + I] . h[r, j]) over the filled slots;
//     w [H, E I] (expert e's down matrix in columns e I .. e I + I), h contiguous [rows, k, I].
//     Launch: grid (ceil(H / 8), rows), 256 threads: one warp per output column n. k <= 32.
// The _vec forms read 16 bytes per lane per step: K (or I) a multiple of 16 / sizeof(T), the
// pointers and row strides 16-byte aligned (the lowering checks; else the scalar forms).
#include "linear_common.cuh"

#ifndef MOE_EPL
#define MOE_EPL 8  // router logits per lane: E <= 256
#endif
#ifndef MOE_DOWN_SLOTS
#define MOE_DOWN_SLOTS 4  // moe_down: experts whose rows a warp reads side by side
#endif

// ---- router ----------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void moe_route_kernel(T* out, const T* logits, int rows, int E, int k, int norm,
                                                 long long ldl, long long ldo) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    float p[MOE_EPL];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < MOE_EPL; i++) {
        const int e = i * 32 + lane;
        p[i] = e < E ? to_f32(logits[r * ldl + e]) : -INFINITY;
        m = fmaxf(m, p[i]);
    }
    m = warp_max(m);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < MOE_EPL; i++) {
        p[i] = i * 32 + lane < E ? expf(p[i] - m) : 0.0f;
        s += p[i];
    }
    s = warp_sum(s);
    unsigned chosen = 0;  // bit i: expert i * 32 + lane picked
    float sum_k = 0.0f;
    for (int j = 0; j < k; j++) {
        float best = -1.0f;  // p >= 0, so any expert still free beats it
        int bi = E;
#pragma unroll
        for (int i = 0; i < MOE_EPL; i++) {
            const int e = i * 32 + lane;
            if (e < E && !(chosen >> i & 1u) && p[i] > best) { best = p[i]; bi = e; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {  // the largest p, the lowest index on ties
            const float b2 = __shfl_xor_sync(0xffffffffu, best, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            if (b2 > best || (b2 == best && i2 < bi)) { best = b2; bi = i2; }
        }
        if (bi >= E) break;
        if ((bi & 31) == lane) chosen |= 1u << (bi >> 5);
        sum_k += best;
    }
    const float inv = 1.0f / (norm ? sum_k : s);  // p holds exp(logit - max): HF's softmax, then / sum
#pragma unroll
    for (int i = 0; i < MOE_EPL; i++) {
        const int e = i * 32 + lane;
        if (e < E) out[r * ldo + e] = from_f32<T>((chosen >> i & 1u) ? p[i] * inv : 0.0f);
    }
}

// ---- the chosen experts ----------------------------------------------------------------------
// The expert of slot j of row r: the j-th non-zero of route[r, :E] (-1 when there are fewer).
// Every lane gets it (one ballot per 32 experts).
template <typename T>
__device__ __forceinline__ int moe_slot_expert(const T* route_row, int E, int j) {
    const int lane = threadIdx.x & 31;
    int seen = 0;
    for (int base = 0; base < E; base += 32) {
        const int e = base + lane;
        const unsigned b = __ballot_sync(0xffffffffu, e < E && to_f32(route_row[e]) != 0.0f);
        const int n = __popc(b);
        if (seen + n > j) {
            unsigned bb = b;
            for (int q = j - seen; q > 0; q--) bb &= bb - 1;  // drop the lowest set bits before ours
            return base + __ffs(bb) - 1;
        }
        seen += n;
    }
    return -1;
}

// Every slot of row r at once, by warp 0 of the block: e[j] = moe_slot_expert(route_row, E, j)
// and w[j] its routing weight for j < k (-1 / unset past the last non-zero). All loads are issued
// before the first ballot (E <= 32 * MOE_EPL), where k calls of moe_slot_expert would scan k times.
template <typename T>
__device__ __forceinline__ void moe_row_slots(const T* route_row, int E, int k, int* e, float* w) {
    const int lane = threadIdx.x;  // warp 0: threadIdx.x < 32
    float v[MOE_EPL];
#pragma unroll
    for (int i = 0; i < MOE_EPL; i++) {
        const int ex = i * 32 + lane;
        v[i] = ex < E ? to_f32(route_row[ex]) : 0.0f;
    }
    for (int j = lane; j < k; j += 32) e[j] = -1;
    __syncwarp();
    int seen = 0;
#pragma unroll
    for (int i = 0; i < MOE_EPL; i++) {  // the j-th non-zero in index order is slot j
        const unsigned b = __ballot_sync(0xffffffffu, v[i] != 0.0f);
        const int j = seen + __popc(b & ((1u << lane) - 1u));
        if (v[i] != 0.0f && j < k) { e[j] = i * 32 + lane; w[j] = v[i]; }
        seen += __popc(b);
    }
}

// VEC elements of a row from p into f (float32): 16-byte loads when VEC * sizeof(T) == 16.
template <typename T, int VEC>
__device__ __forceinline__ void moe_load(const T* p, float* f) {
    if constexpr (VEC == 1) {
        f[0] = to_f32(*p);
    } else if constexpr (sizeof(T) == 4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p));
        f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w;
    } else {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 t = h2f(u[i], T());
            f[2 * i] = t.x; f[2 * i + 1] = t.y;
        }
    }
}

// a . b over n elements (n a multiple of VEC), lane-strided in steps of 32 * VEC; the warp's sum
// to every lane. Two rows of a share b (the gate and up rows): d0 += a0 . b, d1 += a1 . b.
template <typename T, int VEC, bool TWO>
__device__ __forceinline__ void moe_dot(const T* a0, const T* a1, const T* b, int n, float& d0, float& d1) {
    const int lane = threadIdx.x & 31;
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll 4
    for (int c = lane * VEC; c < n; c += 32 * VEC) {
        float fb[VEC], f0[VEC], f1[VEC];
        moe_load<T, VEC>(b + c, fb);
        moe_load<T, VEC>(a0 + c, f0);
        if (TWO) moe_load<T, VEC>(a1 + c, f1);
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            s0 = fmaf(f0[i], fb[i], s0);
            if (TWO) s1 = fmaf(f1[i], fb[i], s1);
        }
    }
    d0 += warp_sum(s0);
    if (TWO) d1 += warp_sum(s1);
}

template <typename T, int VEC>
__device__ __forceinline__ void moe_gate_up_kernel(T* y, const T* x, const T* w, const T* route, int rows, int K,
                                                   int I, int E, int k, int act, long long ldx, long long ldr) {
    const int r = blockIdx.z, j = blockIdx.y;
    const int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows || c >= I) return;
    const int e = moe_slot_expert(route + r * ldr, E, j);
    float g = 0.0f, u = 0.0f;
    if (e >= 0) {
        const T* wg = w + ((long long)e * I + c) * K;
        const T* wu = wg + (long long)E * I * K;
        moe_dot<T, VEC, true>(wg, wu, x + r * ldx, K, g, u);
    }
    if ((threadIdx.x & 31) == 0)
        y[((long long)r * k + j) * I + c] = from_f32<T>(e >= 0 ? lin_act(g, act) * u : 0.0f);
}

template <typename T, int VEC>
__device__ __forceinline__ void moe_down_kernel(T* y, const T* h, const T* w, const T* route, int rows, int H, int I,
                                                int E, int k, long long ldr, long long ldy) {
    __shared__ int s_e[32];
    __shared__ float s_w[32];
    const int r = blockIdx.y;
    if (r >= rows) return;
    const T* rr = route + r * ldr;
    if (threadIdx.x < 32) moe_row_slots(rr, E, k, s_e, s_w);  // warp 0
    __syncthreads();
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= H) return;
    const long long ldw = (long long)E * I;
    const T* wn = w + n * ldw;
    const T* hr = h + (long long)r * k * I;
    // slots in groups of MOE_DOWN_SLOTS, their loads interleaved (a warp keeps that many experts'
    // rows in flight, not one); each lane sums route weight x its part of every dot, and the warp
    // reduces once at the end (the sum is linear in the parts)
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int j0 = 0; j0 < k && s_e[j0] >= 0; j0 += MOE_DOWN_SLOTS) {  // slots fill in order
        const T* wj[MOE_DOWN_SLOTS];
        float part[MOE_DOWN_SLOTS];
#pragma unroll
        for (int jj = 0; jj < MOE_DOWN_SLOTS; ++jj) {
            const int j = j0 + jj, e = j < k ? s_e[j] : -1;
            wj[jj] = e >= 0 ? wn + (long long)e * I : nullptr;
            part[jj] = 0.0f;
        }
#pragma unroll 2
        for (int c = lane * VEC; c < I; c += 32 * VEC) {
#pragma unroll
            for (int jj = 0; jj < MOE_DOWN_SLOTS; ++jj) {
                if (wj[jj] == nullptr) continue;
                float fw[VEC], fh[VEC];
                moe_load<T, VEC>(wj[jj] + c, fw);
                moe_load<T, VEC>(hr + (long long)(j0 + jj) * I + c, fh);
#pragma unroll
                for (int i = 0; i < VEC; i++) part[jj] = fmaf(fw[i], fh[i], part[jj]);
            }
        }
#pragma unroll
        for (int jj = 0; jj < MOE_DOWN_SLOTS; ++jj)
            if (wj[jj] != nullptr) acc = fmaf(s_w[j0 + jj], part[jj], acc);
    }
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) y[r * ldy + n] = from_f32<T>(acc);
}

#define TG_MOE(T, sfx)                                                                                     \
    extern "C" __global__ void moe_route_##sfx(T* out, const T* logits, int rows, int E, int k, int norm,   \
                                               long long ldl, long long ldo) {                               \
        tg_pdl_enter();                                                                                      \
        moe_route_kernel<T>(out, logits, rows, E, k, norm, ldl, ldo);                                        \
    }                                                                                                        \
    extern "C" __global__ void moe_gate_up_##sfx(T* y, const T* x, const T* w, const T* route, int rows,    \
                                                 int K, int I, int E, int k, int act, long long ldx,         \
                                                 long long ldr) {                                            \
        tg_pdl_enter();                                                                                      \
        moe_gate_up_kernel<T, 1>(y, x, w, route, rows, K, I, E, k, act, ldx, ldr);                           \
    }                                                                                                        \
    extern "C" __global__ void moe_gate_up_vec_##sfx(T* y, const T* x, const T* w, const T* route, int rows,\
                                                     int K, int I, int E, int k, int act, long long ldx,     \
                                                     long long ldr) {                                        \
        tg_pdl_enter();                                                                                      \
        moe_gate_up_kernel<T, 16 / sizeof(T)>(y, x, w, route, rows, K, I, E, k, act, ldx, ldr);              \
    }                                                                                                        \
    extern "C" __global__ void moe_down_##sfx(T* y, const T* h, const T* w, const T* route, int rows, int H,\
                                              int I, int E, int k, long long ldr, long long ldy) {           \
        tg_pdl_enter();                                                                                      \
        moe_down_kernel<T, 1>(y, h, w, route, rows, H, I, E, k, ldr, ldy);                                   \
    }                                                                                                        \
    extern "C" __global__ void moe_down_vec_##sfx(T* y, const T* h, const T* w, const T* route, int rows,   \
                                                  int H, int I, int E, int k, long long ldr, long long ldy) {\
        tg_pdl_enter();                                                                                      \
        moe_down_kernel<T, 16 / sizeof(T)>(y, h, w, route, rows, H, I, E, k, ldr, ldy);                      \
    }
TG_MOE(float, f32)
TG_MOE(__half, f16)
TG_MOE(__nv_bfloat16, bf16)
