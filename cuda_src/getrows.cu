// getrows.cu -- embedding lookup (rows of a table by int32 ids) and its inverse scatter.
//
// Signatures:
//   getrows_T(T* out, TD od, const T* table, TD tbl, const int* ids)
//     T in {f32, f16, bf16, i32}. table is a [V, D] matrix (padded: ne[2] = V, ne[3] = D, any strides).
//     out has D = od.ne[3] columns and R = od.ne[0]*od.ne[1]*od.ne[2] rows; ids is a contiguous
//     int32 array of R entries (row r of out, in row-major order, takes table row ids[r]).
//     An id outside [0, V) writes NaN (i32: -1) into that output row (never reads out of bounds).
//     i32 tables are id maps: a tensor-parallel rank's vocabulary map (models/tensor_parallel.py).
//   set_rows_S_D(D* dst, TD dd, const S* src, TD sd, const int* idx)
//     S, D in {f32, f16, bf16}. dst[c0, c1, idx[c2], c3] = src[c0, c1, c2, c3] for every element
//     of src (sd's shape); idx is a contiguous int32 array of sd.ne[2] entries. Entries outside
//     [0, dd.ne[2]) are skipped. Meant for KV-cache writes at positions kept on the device
//     (idx = positions), so that a replayed CUDA graph writes the right slots.
// Launch: 1-D grid-stride loops; any grid/block.
#include "common.cuh"

// what an out-of-range id's row holds: NaN, or -1 in an id map (an id no table has)
template <typename T>
__device__ __forceinline__ T getrows_invalid() { return from_f32<T>(__int_as_float(0x7fc00000)); }
template <>
__device__ __forceinline__ int getrows_invalid<int>() { return -1; }

template <typename T>
__device__ __forceinline__ void getrows_kernel(T* out, const TD& od, const T* table, const TD& tbl,
                                               const int* ids) {
    const long long D = od.ne[3];
    const long long total = td_rows(od) * D;
    const long long V = tbl.ne[2];
    TG_GRID_STRIDE_LOOP(i, total) {
        const long long r = i / D, j = i % D;
        const long long id = ids[r];
        T v;
        if (id >= 0 && id < V) v = table[id * tbl.st[2] + j * tbl.st[3]];
        else v = getrows_invalid<T>();
        out[td_row_offset(od, r) + j * od.st[3]] = v;
    }
}

template <typename S, typename D>
__device__ __forceinline__ void set_rows_kernel(D* dst, const TD& dd, const S* src, const TD& sd,
                                                const int* idx) {
    const long long n = td_numel(sd);
    TG_GRID_STRIDE_LOOP(i, n) {
        long long c[4];
        td_unravel<long long>(i, sd, c);
        const long long row = idx[c[2]];
        if (row < 0 || row >= dd.ne[2]) continue;
        const long long so = td_offset(sd, c);
        c[2] = row;
        dst[td_offset(dd, c)] = Convert<D, S>::f(src[so]);
    }
}

#define TG_GETROWS(T, sfx)                                                                     \
    extern "C" __global__ void getrows_##sfx(T* out, TD od, const T* table, TD tbl,            \
                                             const int* ids) { tg_pdl_enter();                 \
        getrows_kernel<T>(out, od, table, tbl, ids);                                           \
    }
TG_GETROWS(float, f32)
TG_GETROWS(__half, f16)
TG_GETROWS(__nv_bfloat16, bf16)
TG_GETROWS(int, i32)

#define TG_SETROWS(S, ss, D, ds)                                                               \
    extern "C" __global__ void set_rows_##ss##_##ds(D* dst, TD dd, const S* src, TD sd,        \
                                                    const int* idx) { tg_pdl_enter();          \
        set_rows_kernel<S, D>(dst, dd, src, sd, idx);                                          \
    }
#define TG_SETROWS_FROM(S, ss)                                                                 \
    TG_SETROWS(S, ss, float, f32) TG_SETROWS(S, ss, __half, f16) TG_SETROWS(S, ss, __nv_bfloat16, bf16)
TG_SETROWS_FROM(float, f32)
TG_SETROWS_FROM(__half, f16)
TG_SETROWS_FROM(__nv_bfloat16, bf16)
