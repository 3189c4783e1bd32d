// attention_store.cu -- attn_store_T_D (attention.cuh: a decode step's q/k norm, RoPE, KV-cache
// write and attention) for T = f32 | f16 | bf16 and head register sizes D = 64 | 128 | 256.
#include "attention.cuh"

TG_ATTN_EACH(TG_ATTN_STORE)
