// persist.cu -- a persistent kernel that runs a segment of a decode step's nodes as tasks
// (tinygraph/tasks.py plans them, tinygraph/backends/cuda/persistent.py launches this; opt-in,
// TINYGRAPH_PERSISTENT=1: on the H200 it measured 6-10% slower than the kernel-per-node step).
//
// persist_linear_T(const PLinear<T>* args, const int* tasks, const int* needs, const int* qstart,
//                  const int* qtasks, int* counters, int ncounters)
//   One block per queue, TG_PERSIST_MIN_BLOCKS (2) per SM; every block must be resident (the
//   launcher checks the occupancy): the tasks of a block wait only on tasks of nodes earlier in
//   the plan, which the other blocks reach first. The nodes' arguments are copied into shared
//   memory once (segments of at most PERSIST_SMEM_NODES nodes).
//   Block s runs tasks qtasks[qstart[s] .. qstart[s+1]) in order. Task t (tasks[5t ..]: node,
//   part, parts, first need, number of needs) is part `part` of `parts` of node `node`'s fused
//   linear (args[node]: linear_gemv1's arguments, one row): the columns that block `part` of a
//   `parts`-block linear_gemv1 launch would compute. A task
//     1. loads its first batch of weight rows (and, in a block's first task, only then waits for
//        the kernel before this one: programmatic dependent launch); at a block's last task it
//        lets the next kernel launch,
//     2. spins until counters[needs[2i]] >= needs[2i+1] for each of its needs (one thread each,
//        acquire loads), then __syncthreads,
//     3. runs the GEMV, reading x and res through L2 (written by other blocks of this kernel),
//     4. __syncthreads, then thread 0 releases: red.release.gpu counters[node] += 1.
//   The last block to finish resets counters[0 .. ncounters] to zero (counters[ncounters] counts
//   finished blocks), so every launch starts from zeros without a memset.
//   Dynamic shared memory: ceil(K/4)*4*4 bytes for the largest K among the nodes; 256 threads.
//
// persist_linear_stamps_T(..., int ncounters, unsigned long long* stamps)
//   The same, and thread 0 of the block running task t writes its timeline: stamps[4t ..] =
//   %globaltimer (ns) at the task's start, once its needs are met, once its outputs are written
//   (before the release), and (SM id << 32) | block. persistent.py launches it when a timeline is
//   asked for (persistent.record_timeline; tools/profile_step.py --timeline).
#include "linear_gemv.cuh"

// Tuning knobs (A/B through TINYGRAPH_CUDA_OPTIONS, e.g. -DTG_PERSIST_SLEEP=0):
#ifndef TG_PERSIST_SLEEP
#define TG_PERSIST_SLEEP 0  // ns of __nanosleep between polls of a counter (0: spin)
#endif
#ifndef TG_PERSIST_FENCE
#define TG_PERSIST_FENCE 0  // 1: __threadfence around the counters; 0: release add / acquire loads only
#endif
#ifndef TG_PERSIST_TRIGGER
#define TG_PERSIST_TRIGGER 1  // 1: let the next kernel launch (PDL) once every block starts its last task
#endif
#ifndef TG_PERSIST_MIN_BLOCKS
#define TG_PERSIST_MIN_BLOCKS 2  // resident blocks per SM the registers are budgeted for (persistent.BLOCKS_PER_SM)
#endif
#define PERSIST_SMEM_NODES 16  // segments of at most this many nodes keep their arguments in shared memory

template <typename T>
struct PLinear {  // mirrored by persistent.PLinear (ctypes)
    T* y;
    const T* x;
    const T* w;
    const T* bias;
    const T* res;
    const T* nw;
    const T* nb;
    long long ldw;
    TD yd, xd, rd;
    float eps;
    int norm, act, N, K;
};

__device__ __forceinline__ int tg_ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ unsigned long long tg_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

template <typename T, bool STAMPS>
__device__ __forceinline__ void persist_linear(const PLinear<T>* __restrict__ args, const int* __restrict__ tasks,
                                               const int* __restrict__ needs, const int* __restrict__ qstart,
                                               const int* __restrict__ qtasks, int* counters, int ncounters,
                                               unsigned long long* stamps) {
    bool first = true;
    const int q0 = qstart[blockIdx.x], q1 = qstart[blockIdx.x + 1];
    // the nodes' arguments into shared memory once (they are written before the launch, so this
    // may run before the PDL wait): a task then finds its pointers without a round trip to L2
    static_assert(sizeof(PLinear<T>) % 8 == 0, "PLinear is copied 8 bytes at a time");
    __shared__ uint2 sraw[PERSIST_SMEM_NODES * sizeof(PLinear<T>) / 8];
    const bool in_smem = ncounters <= PERSIST_SMEM_NODES;
    if (in_smem) {
        const uint2* g = reinterpret_cast<const uint2*>(args);
        for (int k = threadIdx.x; k < ncounters * (int)(sizeof(PLinear<T>) / 8); k += blockDim.x) sraw[k] = __ldg(g + k);
        __syncthreads();
    }
    const PLinear<T>* sargs = in_smem ? reinterpret_cast<const PLinear<T>*>(sraw) : args;
    for (int i = q0; i < q1; ++i) {
        const int task = __ldg(qtasks + i);
        const int* tk = tasks + 5 * task;
        unsigned long long t_begin = 0, t_ready = 0;
        if (STAMPS && threadIdx.x == 0) t_begin = tg_globaltimer();
        const int node = __ldg(tk), part = __ldg(tk + 1), parts = __ldg(tk + 2), n0 = __ldg(tk + 3), nn = __ldg(tk + 4);
        const PLinear<T>& a = sargs[node];
        if (TG_PERSIST_TRIGGER && i == q1 - 1) tg_pdl_trigger();
        auto wait = [&] {
            if (first) tg_pdl_wait();  // the first task's weights were loaded before this
            first = false;
            for (int j = threadIdx.x; j < nn; j += blockDim.x) {
                const int* c = counters + needs[2 * (n0 + j)];
                const int want = needs[2 * (n0 + j) + 1];
                while (tg_ld_acquire(c) < want) {
                    if (TG_PERSIST_SLEEP) __nanosleep(TG_PERSIST_SLEEP);
                }
            }
            if (TG_PERSIST_FENCE) __threadfence();
            __syncthreads();
            if (STAMPS && threadIdx.x == 0) t_ready = tg_globaltimer();
        };
        linear_gemv_body<T, 1, true>(a.y, a.yd, a.x, a.xd, a.w, a.ldw, a.bias, a.res, a.rd, a.nw, a.nb,
                                     a.eps, a.norm, a.act, a.N, a.K, 1, part, parts, wait);
        __syncthreads();  // every warp's outputs are written (and the staged row is free again)
        if (threadIdx.x == 0) {
            if (STAMPS) {
                unsigned smid;
                asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
                stamps[4 * task] = t_begin;
                stamps[4 * task + 1] = t_ready;
                stamps[4 * task + 2] = tg_globaltimer();
                stamps[4 * task + 3] = ((unsigned long long)smid << 32) | blockIdx.x;
            }
            if (TG_PERSIST_FENCE) {
                __threadfence();
                atomicAdd(counters + node, 1);
            } else {
                asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(counters + node) : "memory");
            }
        }
    }
    if (first) tg_pdl_wait();  // a block without tasks still must not touch the counters early
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(counters + ncounters, 1) == (int)gridDim.x - 1) {
            for (int c = 0; c <= ncounters; ++c) counters[c] = 0;
            __threadfence();
        }
    }
}

#define TG_PERSIST(T, sfx)                                                                        \
    extern "C" __global__ void __launch_bounds__(256, TG_PERSIST_MIN_BLOCKS) persist_linear_##sfx(                     \
        const PLinear<T>* args, const int* tasks, const int* needs, const int* qstart,             \
        const int* qtasks, int* counters, int ncounters) {                                        \
        persist_linear<T, false>(args, tasks, needs, qstart, qtasks, counters, ncounters, nullptr); \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, TG_PERSIST_MIN_BLOCKS) persist_linear_stamps_##sfx(              \
        const PLinear<T>* args, const int* tasks, const int* needs, const int* qstart,             \
        const int* qtasks, int* counters, int ncounters, unsigned long long* stamps) {            \
        persist_linear<T, true>(args, tasks, needs, qstart, qtasks, counters, ncounters, stamps); \
    }
TG_PERSIST(float, f32)
TG_PERSIST(__half, f16)
TG_PERSIST(__nv_bfloat16, bf16)
