// linear_q_k.cu -- the block-quantized linear kernels (linear_q.cuh) of the k-quants (256-weight
// super-blocks): linear_q_Q_T, linear_q8a_Q_T and dequant_Q_T for Q = q2_k | q3_k | q4_k | q5_k | q6_k.
#include "linear_q.cuh"

TG_QUANT_TYPES_256(TG_LINEAR_Q)
