// elementwise.cu -- binary ops with NumPy broadcasting, unary activations, strided copy/cast.
//
// Signatures (T = float | __half | __nv_bfloat16, suffix f32 | f16 | bf16):
//   add_T (T* out, TD od, const T* a, TD ad, const T* b, TD bd)   out = a + b
//   sub_T (T* out, TD od, const T* a, TD ad, const T* b, TD bd)   out = a - b
//   mul_T (T* out, TD od, const T* a, TD ad, const T* b, TD bd)   out = a * b
//   div_T (T* out, TD od, const T* a, TD ad, const T* b, TD bd)   out = a / b
//       Iterates over od's shape; an input dim broadcasts when its ne is 1 or its stride is 0.
//   scale_T    (T* out, TD od, const T* x, TD xd, float s)        out = x * s
//   gelu_T     (T* out, TD od, const T* x, TD xd)   tanh form 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
//   gelu_erf_T (T* out, TD od, const T* x, TD xd)   exact form 0.5x(1+erf(x/sqrt(2)))
//   silu_T     (T* out, TD od, const T* x, TD xd)   x / (1 + exp(-x))
//   softcap_T  (T* out, TD od, const T* x, TD xd, float c)   c * tanh(x / c)  (c > 0; Gemma 2)
//   cpy_S_D    (D* dst, TD dd, const S* src, TD sd)  S, D in {f32, f16, bf16}; also cpy_i32_i32.
//       Copies numel elements: the i-th element of src in row-major order over sd's shape goes to
//       the i-th element of dst in row-major order over dd's shape (shapes may differ, as in a
//       reshape; numel must match). Converts dtype (round to nearest even). Implements `cont`
//       and `cpy`; concat is done as one cpy per input into a strided view of the output.
// Launch: 1-D grid-stride loop, any grid/block (kernels.py uses 256 threads, a few blocks per SM).
#include "common.cuh"

struct OpAdd { static __device__ __forceinline__ float f(float a, float b) { return a + b; } };
struct OpSub { static __device__ __forceinline__ float f(float a, float b) { return a - b; } };
struct OpMul { static __device__ __forceinline__ float f(float a, float b) { return a * b; } };
struct OpDiv { static __device__ __forceinline__ float f(float a, float b) { return a / b; } };

struct OpGelu {
    static __device__ __forceinline__ float f(float x) {
        const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
        const float k1 = 0.044715f;
        return 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x)));
    }
};
struct OpGeluErf {
    static __device__ __forceinline__ float f(float x) {
        return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    }
};
struct OpSilu {
    static __device__ __forceinline__ float f(float x) { return x / (1.0f + expf(-x)); }
};

template <typename T, typename Op, typename I>
__device__ __forceinline__ void binary_body(T* __restrict__ out, const TD& od, const T* __restrict__ a,
                                            const TD& ad, const T* __restrict__ b, const TD& bd,
                                            long long n) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)n; i += (I)gridDim.x * blockDim.x) {
        I c[4];
        td_unravel<I>(i, od, c);
        const float va = to_f32(a[td_offset(ad, c)]);
        const float vb = to_f32(b[td_offset(bd, c)]);
        out[td_offset(od, c)] = from_f32<T>(Op::f(va, vb));
    }
}

template <typename T, typename Op>
__device__ __forceinline__ void binary_kernel(T* out, const TD& od, const T* a, const TD& ad,
                                              const T* b, const TD& bd) {
    const long long n = td_numel(od);
    if (n < (1LL << 31)) binary_body<T, Op, unsigned>(out, od, a, ad, b, bd, n);
    else binary_body<T, Op, unsigned long long>(out, od, a, ad, b, bd, n);
}

// Unary op with an optional multiplier: out = Op(x) (Op = OpScale uses s).
struct OpScale {};

template <typename T, typename Op> struct UnaryApply {
    static __device__ __forceinline__ float f(float x, float) { return Op::f(x); }
};
template <typename T> struct UnaryApply<T, OpScale> {
    static __device__ __forceinline__ float f(float x, float s) { return x * s; }
};
// Tanh soft-capping: the multiplier is the cap.
struct OpSoftcap {};
template <typename T> struct UnaryApply<T, OpSoftcap> {
    static __device__ __forceinline__ float f(float x, float c) { return c * tanhf(x / c); }
};

template <typename T, typename Op, typename I>
__device__ __forceinline__ void unary_body(T* __restrict__ out, const TD& od, const T* __restrict__ x,
                                           const TD& xd, float s, long long n) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)n; i += (I)gridDim.x * blockDim.x) {
        I c[4];
        td_unravel<I>(i, od, c);
        out[td_offset(od, c)] = from_f32<T>(UnaryApply<T, Op>::f(to_f32(x[td_offset(xd, c)]), s));
    }
}

template <typename T, typename Op>
__device__ __forceinline__ void unary_kernel(T* out, const TD& od, const T* x, const TD& xd, float s) {
    const long long n = td_numel(od);
    if (n < (1LL << 31)) unary_body<T, Op, unsigned>(out, od, x, xd, s, n);
    else unary_body<T, Op, unsigned long long>(out, od, x, xd, s, n);
}

template <typename S, typename D, typename I>
__device__ __forceinline__ void cpy_body(D* __restrict__ dst, const TD& dd, const S* __restrict__ src,
                                         const TD& sd, long long n) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)n; i += (I)gridDim.x * blockDim.x) {
        I cs[4], cd[4];
        td_unravel<I>(i, sd, cs);
        td_unravel<I>(i, dd, cd);
        dst[td_offset(dd, cd)] = Convert<D, S>::f(src[td_offset(sd, cs)]);
    }
}

// Whether a same-dtype copy can move 16-byte vectors of E elements: both last axes contiguous
// and multiples of E, every other stride (of an axis longer than 1) a multiple of E, both
// pointers 16-byte aligned. Then E elements in a row of one are E in a row of the other.
__device__ __forceinline__ bool cpy_vectorizable(const void* dst, const TD& dd, const void* src, const TD& sd,
                                                 int E) {
    if ((reinterpret_cast<unsigned long long>(dst) | reinterpret_cast<unsigned long long>(src)) & 15) return false;
    if (dd.st[3] != 1 || sd.st[3] != 1 || dd.ne[3] % E || sd.ne[3] % E) return false;
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if ((dd.ne[k] > 1 && dd.st[k] % E) || (sd.ne[k] > 1 && sd.st[k] % E)) return false;
    return true;
}

// The descriptor of the same tensor in units of E elements (last axis contiguous, see above).
__device__ __forceinline__ TD td_in_vectors(TD d, int E) {
    d.ne[3] /= E;
#pragma unroll
    for (int k = 0; k < 3; ++k) d.st[k] /= E;
    return d;
}

template <typename S, typename D>
__device__ __forceinline__ void cpy_kernel(D* dst, const TD& dd, const S* src, const TD& sd) {
    const long long n = td_numel(dd);
    constexpr int E = 16 / sizeof(S);
    // a layout copy (cont of a permuted view, e.g. the attention's heads back to rows): 16-byte
    // vectors, one index decomposition per E elements instead of per element
    if (sizeof(S) == sizeof(D) && Convert<D, S>::identity && n < (1LL << 31) && cpy_vectorizable(dst, dd, src, sd, E)) {
        cpy_body<uint4, uint4, unsigned>(reinterpret_cast<uint4*>(dst), td_in_vectors(dd, E),
                                         reinterpret_cast<const uint4*>(src), td_in_vectors(sd, E), n / E);
    } else if (n < (1LL << 31)) {
        cpy_body<S, D, unsigned>(dst, dd, src, sd, n);
    } else {
        cpy_body<S, D, unsigned long long>(dst, dd, src, sd, n);
    }
}

#define TG_BINARY(name, Op, T, sfx)                                                            \
    extern "C" __global__ void name##_##sfx(T* out, TD od, const T* a, TD ad, const T* b,     \
                                            TD bd) { tg_pdl_enter();                           \
        binary_kernel<T, Op>(out, od, a, ad, b, bd);                                           \
    }
#define TG_UNARY(name, Op, T, sfx)                                                             \
    extern "C" __global__ void name##_##sfx(T* out, TD od, const T* x, TD xd) { tg_pdl_enter(); \
        unary_kernel<T, Op>(out, od, x, xd, 0.0f);                                             \
    }
#define TG_ALL_TYPES(M, name, Op) M(name, Op, float, f32) M(name, Op, __half, f16) M(name, Op, __nv_bfloat16, bf16)

TG_ALL_TYPES(TG_BINARY, add, OpAdd)
TG_ALL_TYPES(TG_BINARY, sub, OpSub)
TG_ALL_TYPES(TG_BINARY, mul, OpMul)
TG_ALL_TYPES(TG_BINARY, div, OpDiv)
TG_ALL_TYPES(TG_UNARY, gelu, OpGelu)
TG_ALL_TYPES(TG_UNARY, gelu_erf, OpGeluErf)
TG_ALL_TYPES(TG_UNARY, silu, OpSilu)

// unary ops with one float parameter (the scale; the soft-cap)
#define TG_UNARY_P(name, Op, T, sfx)                                                           \
    extern "C" __global__ void name##_##sfx(T* out, TD od, const T* x, TD xd, float p) { tg_pdl_enter(); \
        unary_kernel<T, Op>(out, od, x, xd, p);                                                \
    }
TG_ALL_TYPES(TG_UNARY_P, scale, OpScale)
TG_ALL_TYPES(TG_UNARY_P, softcap, OpSoftcap)

#define TG_CPY(S, ss, D, ds)                                                                   \
    extern "C" __global__ void cpy_##ss##_##ds(D* dst, TD dd, const S* src, TD sd) { tg_pdl_enter(); \
        cpy_kernel<S, D>(dst, dd, src, sd);                                                    \
    }
#define TG_CPY_FROM(S, ss) TG_CPY(S, ss, float, f32) TG_CPY(S, ss, __half, f16) TG_CPY(S, ss, __nv_bfloat16, bf16)
TG_CPY_FROM(float, f32)
TG_CPY_FROM(__half, f16)
TG_CPY_FROM(__nv_bfloat16, bf16)
TG_CPY(int, i32, int, i32)

// advance_i32(int* x, const int* inc, int n): x[i] += inc[i] for i < n -- the step of the int
// inputs of Session.compute_loop (e.g. the position) between two replays of a decode graph.
// Launch: any 1-D grid (the backend: 1 block of 32..1024 threads).
extern "C" __global__ void advance_i32(int* x, const int* inc, int n) {
    tg_pdl_enter();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += inc[i];
}
