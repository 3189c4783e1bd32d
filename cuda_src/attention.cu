// attention.cu -- attn_split_T_D and attn_pipe_T_D (attention.cuh) for T = f32 | f16 | bf16 and
// head register sizes D = 64 | 128 | 256.
#include "attention.cuh"

TG_ATTN_EACH(TG_ATTN_SPLIT_PIPE)
