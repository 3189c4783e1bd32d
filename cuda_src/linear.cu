// linear.cu -- fused linear layers: y = act(norm(x) @ w.T + bias) + residual.
//
// Semantics (graph op `linear`, tinygraph/ops.py), float32 math, storage T for every tensor:
//   h = x                                         norm 0
//   h = x / sqrt(mean(x^2) + eps) * norm_w        norm 1 (rms; norm_w NULL -> no scale)
//   h = (x - mean) / sqrt(var + eps) * norm_w + norm_b   norm 2 (layer; biased var, two-pass)
//   z = h @ w.T + bias                            w [N, K] row-contiguous (w[n, k] at n*ldw + k)
//   a = z | gelu_tanh(z) | silu(z)                act 0 | 1 | 2
//   a = silu(z[..., :N/2]) * z[..., N/2:]         act 3 (swiglu): Nout = N/2
//   y = a + residual                              residual NULL -> none
//
// Signatures (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   linear_gemv_T(T* y, TD yd, const T* x, TD xd, const T* w, long long ldw, const T* bias,
//                 const T* res, TD rd, const T* norm_w, const T* norm_b, float eps, int norm,
//                 int act, int N, int K)
//       y [.., Nout], x [.., K], res [.., Nout] (any strides; the leading dims of x / res
//       broadcast against y's like the other row kernels); bias [N], norm_w / norm_b [K]
//       contiguous or NULL. rows = y.ne[0]*ne[1]*ne[2] (decode: one row per sequence); any
//       number of rows is correct, it is fast for a few (<= 16).
//       y may be the residual's memory exactly (y == res, same strides); y must not overlap
//       x, w, bias or the norm weights (every block reads the whole row of x).
//     Design: a block stages the normalised rows h of RB rows (float32, in dynamic shared
//       memory; 16-byte loads of x and the norm weights, TG_LINEAR_PB per thread in flight)
//       and each warp then computes whole output columns for those rows: 16-byte loads of w
//       along K, TG_LINEAR_U per lane in flight, software-pipelined one batch ahead (also
//       across the columns of a warp), the first batch and the epilogue operands (bias,
//       residual) issued before the norm prologue so that its latency hides theirs. With
//       programmatic dependent launch the first weight batch and the first bias are loaded, and
//       the norm weights prefetched into L2, before tg_pdl_wait (the backend's weight_ready).
//       Swiglu: a warp runs over the gate row n, then the up row n + N/2 (keeping the gate's
//       sum) and writes one output -- the register budget of a plain column.
//       RB rows share each weight load: RB = lin_rows_per_block(rows, K) (1, 2 or 4; mirrored
//       in kernels.linear_rows_per_block). Blocks are numbered row-group fastest, so the
//       row groups of one column range run together and re-read w from L2, not DRAM.
//     Launch: grid = (G * C, 1, 1) with G = ceil(rows / RB) row groups and C >= 1 column
//       blocks (each warp loops over columns with stride C * warps, so any C is correct;
//       kernels.py caps C at one wave of resident blocks); block = (B, 1, 1), B a multiple
//       of 32, <= 256 (kernels.py: 256); dynamic shared memory RB * ceil(K/4)*4 * 4 bytes
//       (> 48 KB needs the function's opt-in attribute).
//   linear_gemv1_T(same parameters)
//       linear_gemv with RB = 1 whatever the row count (G = rows): only that path is compiled
//       in, so it needs fewer registers (f16, nvrtc 13.0, sm_90: 80 against 128; three
//       resident 256-thread blocks per SM instead of two). kernels.py launches it whenever RB
//       would be 1.
//     Measured (H100, f16, one row, CUDA-graph replays, weights from DRAM; tools/bench_linear.py):
//       fused vs the unfused rms_norm + gemv [+ silu + mul] [+ add] sequence, e.g. SmolLM2
//       gate_up K=576 N=3072 swiglu 5.6 us vs 9.9 us; lm_head K=576 N=49152 24.7 vs 30.3 us
//       (2.3 TB/s); Qwen3-8B gate_up K=4096 N=24576 70.7 vs 78.2 us (2.85 TB/s). Layers with
//       only a residual add cost about what gemv + add cost (Qwen3-8B down: 41.9 vs 39.6 us).
//       Tried and dropped: two columns per warp for swiglu (R=2: more registers, slower than
//       the two passes), 2 or 8 loads in flight instead of 4, 64/128-thread blocks, no grid
//       cap (a block per 8 columns: lm_head 58-71 us, the norm prologue repeated 6144 times);
//       weight batches through a per-warp cp.async ring of 3 shared-memory stages instead of
//       registers (2 batches in flight, 2 issued before tg_pdl_wait; decode tok/s on the H100:
//       TinyLlama 937 -> 973, but Qwen3-0.6B 1004 -> 971 and SmolLM2 1612 -> 1574).
//   linear_epilogue_T(T* y, TD yd, const T* z, TD zd, const T* bias, const T* res, TD rd,
//                     int act)
//       y = act(z + bias) + res element-wise over y [.., Nout]; z [.., N] (N = Nout, or 2*Nout
//       for act 3: gate = z[..., j], up = z[..., j + N/2]); bias [N] contiguous or NULL; res
//       NULL or any strides (y may alias res). The tail of the prefill path
//       (norm -> matmul_tc3 -> epilogue).
//       Launch: 1-D grid-stride loop over y's elements (kernels.py: 256 threads).
//   linear_splitk_epilogue_T(T* y, TD yd, const float* P, int splits, int N, const T* bias,
//                            const T* res, TD rd, int act)
//       linear_epilogue with z = the sum, in split order, of matmul_tc3s's float32 partials P
//       [splits, M, N] (row-major; y [1, 1, M, Nout], fewer than 2^31 elements): the split-K
//       reduce and the epilogue in one kernel (a batched decode step's projections).
#include "linear_gemv.cuh"

template <typename T, bool ONE>
__device__ __forceinline__ void linear_gemv_kernel(T* y, const TD& yd, const T* x, const TD& xd,
                                                   const T* w, long long ldw, const T* bias,
                                                   const T* res, const TD& rd, const T* nw,
                                                   const T* nbias, float eps, int norm, int act,
                                                   int N, int K) {
    const long long rows = td_rows(yd);
    const int rb = ONE ? 1 : lin_rows_per_block(rows, K);
#define LIN_CALL(RB) \
    linear_gemv_body<T, RB, false>(y, yd, x, xd, w, ldw, bias, res, rd, nw, nbias, eps, norm, act, N, K, rows, \
                                   0, 0, [] { tg_pdl_wait(); })
    if (rb == 4) LIN_CALL(4);
    else if (rb == 2) LIN_CALL(2);
    else LIN_CALL(1);
#undef LIN_CALL
}

// zat(c, up): the product at y's index c (up: the up half's column, act 3) as float32
template <typename T, typename I, typename Z>
__device__ __forceinline__ void linear_epilogue_body(T* y, const TD& yd, Z zat, long long half,
                                                     const T* bias, const T* res, const TD& rd,
                                                     int act, long long n) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)n; i += (I)gridDim.x * blockDim.x) {
        I c[4];
        td_unravel<I>(i, yd, c);
        const long long j = (long long)c[3];
        float v = zat(c, false);
        if (bias) v += to_f32(bias[j]);
        float a;
        if (act == 3) {
            float u = zat(c, true);
            if (bias) u += to_f32(bias[j + half]);
            a = lin_silu(v) * u;
        } else {
            a = lin_act(v, act);
        }
        if (res) a += to_f32(res[td_offset(rd, c)]);
        y[td_offset(yd, c)] = from_f32<T>(a);
    }
}

// linear_gemv_* and linear_gemv1_* (ONE: one row per block): the same entry, the flag apart
// (BOUNDS: __launch_bounds__; linear_gemv1 asks for 3 resident blocks per SM, <= 85 registers)
#define TG_LINEAR_GEMV_ENTRY(NAME, T, ONE, BOUNDS)                                             \
    extern "C" __global__ void BOUNDS NAME(                                                    \
        T* y, TD yd, const T* x, TD xd, const T* w, long long ldw, const T* bias, const T* res, \
        TD rd, const T* norm_w, const T* norm_b, float eps, int norm, int act, int N, int K) {   \
        linear_gemv_kernel<T, ONE>(y, yd, x, xd, w, ldw, bias, res, rd, norm_w, norm_b, eps,    \
                                   norm, act, N, K);                                            \
    }
#define TG_LINEAR(T, sfx)                                                                      \
    TG_LINEAR_GEMV_ENTRY(linear_gemv_##sfx, T, false, __launch_bounds__(256))                  \
    TG_LINEAR_GEMV_ENTRY(linear_gemv1_##sfx, T, true, __launch_bounds__(256, 3))               \
    extern "C" __global__ void linear_epilogue_##sfx(T* y, TD yd, const T* z, TD zd,           \
                                                     const T* bias, const T* res, TD rd,       \
                                                     int act) { tg_pdl_enter();                \
        const long long n = td_numel(yd), half = zd.ne[3] / 2, upoff = half * zd.st[3];         \
        auto zat = [&](const auto* c, bool up) { return to_f32(z[td_offset(zd, c) + (up ? upoff : 0)]); }; \
        if (n < (1LL << 31)) linear_epilogue_body<T, unsigned>(y, yd, zat, half, bias, res, rd, act, n); \
        else linear_epilogue_body<T, unsigned long long>(y, yd, zat, half, bias, res, rd, act, n); \
    }                                                                                          \
    extern "C" __global__ void linear_splitk_epilogue_##sfx(T* y, TD yd, const float* P, int splits, \
                                                            int N, const T* bias, const T* res, \
                                                            TD rd, int act) { tg_pdl_enter();  \
        const long long n = td_numel(yd), MN = (long long)yd.ne[2] * N;                         \
        auto zat = [&](const unsigned* c, bool up) {                                            \
            const long long o = (long long)c[2] * N + c[3] + (up ? N / 2 : 0);                  \
            float s = 0.0f;                                                                     \
            for (int k = 0; k < splits; ++k) s += P[k * MN + o];                                \
            return s;                                                                           \
        };                                                                                      \
        linear_epilogue_body<T, unsigned>(y, yd, zat, N / 2, bias, res, rd, act, n);            \
    }
TG_LINEAR(float, f32)
TG_LINEAR(__half, f16)
TG_LINEAR(__nv_bfloat16, bf16)
