// linear_gemv.cuh -- the body of the fused decode GEMV (linear.cu's linear_gemv / linear_gemv1,
// and persist.cu's linear tasks): semantics, design and measurements are in linear.cu's header.
//
// linear_gemv_body<T, RB, PERSIST>(..., rows, vb, vg, wait): block vb of a launch of vg blocks
// (PERSIST: the task's part / parts; a kernel's own blockIdx.x / gridDim.x otherwise). wait()
// runs after the first weight batch is loaded and before x or res is read (a kernel: the PDL
// wait; a persistent kernel: the spin on the task's needs, ending in __syncthreads). PERSIST:
// x and res are read through L2 (ld.global.cg), since another block of the same kernel wrote
// them, and no griddepcontrol is issued.
#pragma once
#include "linear_common.cuh"

#ifndef TG_LINEAR_U
#define TG_LINEAR_U 4  // 16-byte weight loads per lane in one pipeline batch
#endif
#define LIN_RB_SMEM_BYTES 65536  // staged rows: at most this many bytes for RB > 1

// Rows per block: 1, 2 or 4, fewer when the staged rows would exceed LIN_RB_SMEM_BYTES.
__device__ __forceinline__ int lin_rows_per_block(long long rows, long long K) {
    int rb = rows <= 1 ? 1 : (rows == 2 ? 2 : 4);
    const long long rs = (K + 3) / 4 * 4;
    while (rb > 1 && (long long)rb * rs * 4 > LIN_RB_SMEM_BYTES) rb >>= 1;
    return rb;
}

template <typename T, int U>
__device__ __forceinline__ void lin_load_batch(uint4 (&v)[U], const T* wr, int b, int lane, int nv) {
    const int c0 = b * 32 * U + lane;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int c = c0 + 32 * u;
        v[u] = c < nv ? __ldg(reinterpret_cast<const uint4*>(wr) + c) : make_uint4(0u, 0u, 0u, 0u);
    }
}

extern __shared__ float4 lin_smem[];

// RB rows per block; one output column per warp at a time, swiglu as two passes over the
// column (gate row, then up row) so that every path keeps the register budget of one.
template <typename T, int RB, bool PERSIST, typename Wait>
__device__ __forceinline__ void linear_gemv_body(T* y, const TD& yd, const T* x, const TD& xd,
                                                 const T* w, long long ldw, const T* bias,
                                                 const T* res, const TD& rd, const T* nw,
                                                 const T* nbias, float eps, int norm, int act,
                                                 int N, int K, long long rows,
                                                 long long vb, long long vg, Wait wait) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int U = TG_LINEAR_U;
    __shared__ float scratch[32];
    float* hs = reinterpret_cast<float*>(lin_smem);
    const float4* hs4 = lin_smem;

    const int tid = threadIdx.x, lane = tid & 31, nwarps = blockDim.x >> 5;
    const long long ngroups = (rows + RB - 1) / RB;
    // a kernel reads its block index itself (through an argument, ptxas held more in registers:
    // linear_gemv spilled 12 bytes); a persistent task is given its part as vb of vg
    const long long bi = PERSIST ? vb : (long long)blockIdx.x, gd = PERSIST ? vg : (long long)gridDim.x;
    const long long ncb = gd / ngroups;
    const long long grp = bi % ngroups, cb = bi / ngroups;
    if (cb >= ncb) return;  // whole block: grid not a multiple of the row groups

    const bool vec = (ldw % VEC) == 0 && lin_al16(w);
    const int nv = vec ? K / VEC : 0;
    const int rs = (K + 3) & ~3;
    const int P = act == 3 ? 2 : 1;  // passes per output column
    const int ncols = act == 3 ? N / 2 : N;
    const int half = act == 3 ? N / 2 : 0;
    const int nb = nv > 0 ? (nv + 32 * U - 1) / (32 * U) : 1;
    const int wstride = (int)ncb * nwarps;

    // this lane's row for the epilogue (lane < RB)
    const long long myrow = grp * RB + lane;
    const bool rowok = lane < RB && myrow < rows;
    const long long yoff = rowok ? td_row_offset(yd, myrow) : 0;
    const long long roff = (rowok && res) ? td_row_offset_bcast(rd, yd, myrow) : 0;

    // pipeline state: column, pass (0 gate / 1 up), batch of 32*U chunks
    int col = (int)cb * nwarps + (tid >> 5), p = 0, b = 0;
    uint4 cur[U];
    float ecur[3];  // bias of the gate / only row, bias of the up row, residual
    const T* wr = w + (long long)(col < ncols ? col : 0) * ldw;

    auto load_bias = [&](float (&e)[3], int c) {
        e[0] = (bias && rowok) ? to_f32(bias[c]) : 0.0f;
        e[1] = (bias && rowok && P == 2) ? to_f32(bias[c + half]) : 0.0f;
    };
    auto load_res = [&](float (&e)[3], int c) {
        e[2] = (res && rowok) ? to_f32(PERSIST ? __ldcg(res + roff + (long long)c * rd.st[3]) : res[roff + (long long)c * rd.st[3]]) : 0.0f;
    };
    // the first batch of weights and the first bias are loaded, the norm weights prefetched
    // into L2, while the previous kernel may still run (see tg_pdl_enter in common.cuh: the
    // backend launches this kernel so only when w, bias, norm_w and norm_b are weights that no
    // earlier kernel of the graph writes); everything else after tg_pdl_wait
    if constexpr (!PERSIST) tg_pdl_trigger();
    lin_norm_prefetch<T>(K, norm, nw, nbias);
    if (col < ncols) {
        lin_load_batch<T, U>(cur, wr, 0, lane, nv);
        load_bias(ecur, col);
    }
    wait();
    if (col < ncols) load_res(ecur, col);

    // ---- prologue: stage RB normalised rows -------------------------------------------------
#pragma unroll 1
    for (int q = 0; q < RB; ++q) {
        const long long row = grp * RB + q;
        float* h = hs + q * rs;
        if (row >= rows) {
            for (int k = tid; k < rs; k += blockDim.x) h[k] = 0.0f;
            continue;
        }
        lin_stage_row<T, VEC, PERSIST>(h, x + td_row_offset_bcast(xd, yd, row), xd.st[3], K, nv, norm, nw,
                                       nbias, eps, scratch);
    }
    __syncthreads();

    // ---- main loop over this warp's (column, pass, batch), one batch of loads ahead ---------
    float acc[RB], gsum[RB];
#pragma unroll
    for (int q = 0; q < RB; ++q) acc[q] = gsum[q] = 0.0f;

    while (col < ncols) {
        int col2 = col, p2 = p, b2 = b + 1;
        if (b2 == nb) {
            b2 = 0;
            if (++p2 == P) { p2 = 0; col2 += wstride; }
        }
        uint4 nxt[U];
        float enxt[3] = {0.0f, 0.0f, 0.0f};
        const T* wr2 = w + (long long)(col2 < ncols ? col2 + p2 * half : 0) * ldw;
        if (col2 < ncols) {
            lin_load_batch<T, U>(nxt, wr2, b2, lane, nv);
            if (b2 == 0 && p2 == 0) {
                load_bias(enxt, col2);
                load_res(enxt, col2);
            }
        }
        // batch b of row (col, p)
        const int c0 = b * 32 * U + lane;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < nv) {
                float wf[VEC];
                lin_unpack<T>(cur[u], wf);
#pragma unroll
                for (int q = 0; q < RB; ++q) {
                    const float4* hq = hs4 + q * (rs >> 2);
                    float s = acc[q];
#pragma unroll
                    for (int pp = 0; pp < VEC / 4; ++pp) {
                        const float4 t = hq[pp * nv + c];
                        s = fmaf(wf[4 * pp], t.x, s);
                        s = fmaf(wf[4 * pp + 1], t.y, s);
                        s = fmaf(wf[4 * pp + 2], t.z, s);
                        s = fmaf(wf[4 * pp + 3], t.w, s);
                    }
                    acc[q] = s;
                }
            }
        }
        if (b == nb - 1) {
            // scalar tail (elements past the 16-byte chunks; all of K when nv == 0)
            for (int k = nv * VEC + lane; k < K; k += 32) {
                const float wk = to_f32(wr[k]);
#pragma unroll
                for (int q = 0; q < RB; ++q) acc[q] = fmaf(hs[q * rs + k], wk, acc[q]);
            }
#pragma unroll
            for (int q = 0; q < RB; ++q) acc[q] = warp_sum(acc[q]);
            if (p == P - 1) {
#pragma unroll
                for (int q = 0; q < RB; ++q) {
                    if (lane == q && rowok) {
                        float a;
                        if (P == 2) a = lin_silu(gsum[q] + ecur[0]) * (acc[q] + ecur[1]);
                        else a = lin_act(acc[q] + ecur[0], act);
                        a += ecur[2];
                        y[yoff + (long long)col * yd.st[3]] = from_f32<T>(a);
                    }
                }
#pragma unroll
                for (int e = 0; e < 3; ++e) ecur[e] = enxt[e];
            } else {
#pragma unroll
                for (int q = 0; q < RB; ++q) gsum[q] = acc[q];
            }
#pragma unroll
            for (int q = 0; q < RB; ++q) acc[q] = 0.0f;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) cur[u] = nxt[u];
        wr = wr2;
        col = col2;
        p = p2;
        b = b2;
    }
}
