"""The mixture-of-experts families' tiny HF models (DEV-ONLY; used by tools/make_fixtures.py).

Each entry of :data:`MOE` is (config class, settings over the common tiny sizes: hidden 64, vocab
256, 4 heads, 2 KV heads, max positions 128, untied, theta 1e4, RMSNorm eps 1e-5). Their
references are made like the breadth families' (``fixture_families.argmax_references``: argmax
loops over HF's forward without and with its KV cache). A seed is kept only when, over the
15-token greedy sequence, every expert of every MoE layer is chosen by some token
(:func:`expert_hits`, stored as ``expert_hits`` in ``reference.npz``), so a wrong expert's
weights cannot hide.
"""
from __future__ import annotations

import numpy as np

SEEDS = {"mixtral": 1020, "qwen3_moe": 1021, "qwen3_moe_step": 1022, "qwen2_moe": 1023, "qwen3_moe_gguf": 1024}

MOE = {
    # top-2 of 8, softmax over the two chosen logits (Mixtral's renormalised top-k), every layer MoE
    "mixtral": ("MixtralConfig", dict(
        num_hidden_layers=2, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
        sliding_window=None)),
    # top-3 of 8 renormalised (norm_topk_prob), 3 layers: layer 1 dense by mlp_only_layers (intermediate 32)
    "qwen3_moe": ("Qwen3MoeConfig", dict(
        num_hidden_layers=3, intermediate_size=32, moe_intermediate_size=16, num_experts=8,
        num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
        use_sliding_window=False, attention_bias=False)),
    # top-2 of 4 not renormalised, 3 layers: decoder_sparse_step 2 makes only layer 1 MoE
    "qwen3_moe_step": ("Qwen3MoeConfig", dict(
        num_hidden_layers=3, intermediate_size=32, moe_intermediate_size=16, num_experts=4,
        num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[],
        use_sliding_window=False, attention_bias=False)),
    # the GGUF one (tests/fixtures/gguf/qwen3_moe_gguf.gguf): llama.cpp's qwen3moe has an MoE block
    # in every layer (its converter cannot map a dense layer's MLP) and always renormalises the top-k
    "qwen3_moe_gguf": ("Qwen3MoeConfig", dict(
        num_hidden_layers=2, intermediate_size=32, moe_intermediate_size=16, num_experts=8,
        num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        use_sliding_window=False, attention_bias=False)),
    # top-2 of 8 not renormalised, q/k/v biases, shared expert (intermediate 32) with its sigmoid gate
    "qwen2_moe": ("Qwen2MoeConfig", dict(
        num_hidden_layers=2, intermediate_size=32, moe_intermediate_size=16, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=False, shared_expert_intermediate_size=32,
        decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False, qkv_bias=True)),
}


def make_moe_config(name: str, hidden: int, vocab: int, max_pos: int):
    import transformers as tf

    cls, kw = MOE[name]
    common = dict(hidden_size=hidden, vocab_size=vocab, max_position_embeddings=max_pos, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return getattr(tf, cls)(**{**common, **kw})


def expert_hits(model, ids: np.ndarray) -> np.ndarray:
    """int64 [layers, experts]: how many tokens of ``ids`` (1-D or [1, T]) HF's routers send to each
    expert in a full forward (rows of dense layers are all 0)."""
    import torch

    cfg = model.config
    E = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    hits = np.zeros((cfg.num_hidden_layers, E), np.int64)
    hooks = []
    for i, layer in enumerate(model.model.layers):
        block = getattr(layer, "block_sparse_moe", None) or layer.mlp
        router = getattr(block, "gate", None)
        if router is None or not type(router).__name__.endswith("TopKRouter"):
            continue

        def hook(mod, inp, out, i=i):  # out: (router_logits, routing weights, chosen experts)
            np.add.at(hits[i], out[2].reshape(-1).numpy(), 1)
        hooks.append(router.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor(np.asarray(ids).reshape(1, -1)), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return hits


def all_experts_hit(model, hits: np.ndarray) -> bool:
    """Every expert of every MoE layer chosen at least once."""
    rows = [r for r in hits if r.any()]
    return len(rows) > 0 and all(r.min() > 0 for r in rows)
