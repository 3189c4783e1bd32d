// attention_common.cuh -- what the decode attention kernels share (attention.cu,
// attention_gqa.cu): broadcast offsets and attn_store's arguments.
#pragma once
#include "common.cuh"

__device__ __forceinline__ long long bcast(const TD& d, int k, long long c) {
    return d.ne[k] == 1 ? 0 : c * d.st[k];
}

// The step's own keys and values for attn_store (nullptr for attn_split): per-head RMS norm
// (weights optional), RoPE (mode < 0: none), then the write into the cache row pos.
template <typename T>
struct StoreArgs {
    const T* k;            // new keys [1, KV, hd] (rank 4: ne[2] = KV heads)
    TD kd;
    const T* v;            // new values, same shape
    TD vd;
    T* kc;                 // caches [KV, ctx, hd] (rank 4, leading 1)
    TD kcd;
    T* vc;
    TD vcd;
    const float* ff;       // RoPE frequency factors [hd/2] or NULL
    const T* qn;           // q / k RMS-norm weights [hd] or NULL; norms only when has_norm
    const T* kn;
    float eps;
    float theta;
    int mode;              // 2 neox, 0 normal, -1 no RoPE
    int q_norm, k_norm;    // 1: RMS-normalise q / k before RoPE
    int early;             // 1: pos, ff and the caches are written by no earlier kernel of the
                           // graph (the backend checks): read pos, ff and the old cache rows
                           // before tg_pdl_wait
};
