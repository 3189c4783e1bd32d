"""Sizes and thresholds the CUDA backend and its lowerings share (each written once here)."""
from __future__ import annotations

#: device allocations and staged inputs are aligned to this many bytes
ALIGN = 256
#: keys per attention split block (4 warps x 32 keys: one tile per warp)
ATTN_CHUNK = 128
#: attn_gqa (decode attention, a KV head's query group per block): splits of at least this many
#: keys, at most this many query rows per block, about this many blocks per multiprocessor, at
#: most this many splits (cuda_src/attention_gqa.cu's GQA_* macros say the same)
GQA_MIN_CHUNK = 64
GQA_ROWS = 16
GQA_BLOCKS_PER_SM = 2
GQA_MAX_SPLITS = 128
#: prefill attention on tensor cores (attn_fa) from this many queries on; fewer: attn_split/pipe,
#: which also split long key ranges across blocks
FLASH_MIN_QUERIES = 16
#: head sizes attn_fa is built for (cuda_src/attention_tc.cu's TG_ATTN_FA lines): 80 Phi-2, 96 Phi-3,
#: 256 Gemma (its query fragments from shared memory, 160 bytes of register spills on sm_90)
FLASH_HEADS = (64, 80, 96, 128, 256)
#: bytes of split counters at the start of the work buffer (one int per row, left at zero by the
#: kernels that use them: attention splits, argmax partials)
COUNTER_BYTES = 2048 * 4
#: matrix products of at most this many rows run as GEMVs (decode), and graphs made only of
#: such products launch their kernels with programmatic dependent launch
DECODE_ROWS = 8
#: 16/32-bit products of at most this many rows take the fused GEMV (linear.cu reads each weight
#: once for up to 4 rows: lin_rows_per_block), more take the tensor cores. H200, batched decode at
#: 8 sequences, 8 -> 4 (bench/README.md, twelfth session): Qwen3-8B 620 -> 1,266 tok/s, TinyLlama
#: 3,171 -> 4,411, SmolLM2 5,599 -> 5,335 (2 and 4 sequences, the same kernels: +-15% run to run)
GEMV_MAX_ROWS = 4


class NeedScratch(Exception):
    """A lowering needs ``nbytes`` of the backend's buffer ``attr`` ("_scratch" or "_work"): the
    backend grows it and runs the node again."""

    def __init__(self, nbytes: int, attr: str) -> None:
        super().__init__(nbytes, attr)
        self.nbytes, self.attr = nbytes, attr
