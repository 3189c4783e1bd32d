// linear_q.cu -- the block-quantized linear kernels (linear_q.cuh) of the 32-weight block types:
// linear_q_Q_T, linear_q8a_Q_T and dequant_Q_T for Q = q8_0 | q4_0 | q4_1 | q5_0 | q5_1.
#include "linear_q.cuh"

TG_QUANT_TYPES_32(TG_LINEAR_Q)
