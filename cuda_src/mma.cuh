// mma.cuh -- tensor-core building blocks shared by the f16/bf16 kernels (matmul.cu,
// attention_tc.cu): mma.sync m16n8k16 with float32 accumulators, ldmatrix fragment loads and
// cp.async copies into shared memory (sm_80+).
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, t = lane % 4), as the kernels rely on it:
//   A (16x16, row-major) regs a0..a3: (row g, cols 2t..2t+1), (row g+8, cols 2t..), (row g,
//     cols 2t+8..), (row g+8, cols 2t+8..);  B (16x8, "col": stored [n][k]) b0, b1: (k 2t..2t+1,
//     n g), (k 2t+8.., n g);  C/D (16x8) c0..c3: (row g, cols 2t, 2t+1), (row g+8, cols 2t, 2t+1).
#pragma once
#include "common.cuh"

// MmaOp<T>::run(d, a, b): d += a * b, one mma.m16n8k16 with float32 accumulators, T's inputs
template <typename T> struct MmaOp;
#define TG_MMA_OP(T, ty)                                                                              \
    template <> struct MmaOp<T> {                                                                     \
        static __device__ __forceinline__ void run(float* d, const unsigned* a, const unsigned* b) {  \
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." ty "." ty ".f32 {%0,%1,%2,%3}, "    \
                         "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                   \
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                              \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));          \
        }                                                                                             \
    };
TG_MMA_OP(__half, "f16")
TG_MMA_OP(__nv_bfloat16, "bf16")
#undef TG_MMA_OP

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
    const int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void ldsm_x4(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3,
                                        const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p))
                 : "memory");
}

// wait until at most N of this thread's newest cp.async groups are still in flight
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldsm_x4_trans(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3,
                                              const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p))
                 : "memory");
}

// Two floats as one register of packed T (the low half holds `lo`).
__device__ __forceinline__ unsigned pack2(float lo, float hi, __half) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, __nv_bfloat16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}
