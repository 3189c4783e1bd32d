"""The breadth families' tiny HF models and references (DEV-ONLY; used by tools/make_fixtures.py).

Each entry of :data:`BREADTH` is (config class, settings over the common tiny sizes). Their
references differ from the older families' in one way: ``greedy`` comes from a plain argmax loop
over HF's full forward (no KV cache, no ``generate``), and ``decode_logits`` (with
``greedy_cached``, its argmax tokens) from an argmax loop over HF's forward with its KV cache. The
two agree except where HF's own semantics differ between the two (longrope: a cached key keeps the
rotation of the call that stored it), and the margin rule holds for both.
"""
from __future__ import annotations

import numpy as np

SEEDS = {"qwen3_yarn": 1012, "llama_dynamic": 1013, "phi3": 1014, "phi3_partial": 1015,
         "phi": 1016, "gpt_neox": 1017, "gpt_neox_sequential": 1019, "gemma2": 1020, "gemma3_text": 1021,
         "gemma2_gguf": 8022, "gemma3_gguf": 1023}


def _factors(seed: int, n: int) -> list[float]:
    """LongRoPE divisors in [1, 6], rounded so the config JSON is short."""
    r = np.random.default_rng(seed)
    return [round(float(x), 3) for x in np.sort(r.uniform(1.0, 6.0, n))]


# common: hidden 64, 2 layers, vocab 256, 4 heads, 2 KV heads, max positions 128, untied, theta 1e4
BREADTH = {
    # YaRN over 32 original positions, factor 4 (attention factor 0.1 ln 4 + 1), head_dim 16
    "qwen3_yarn": ("Qwen3Config", dict(
        head_dim=16, intermediate_size=32, use_sliding_window=False, attention_bias=False,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                         "rope_theta": 10000.0})),
    # dynamic NTK over max_position_embeddings 10: the 15-token runs go past it (a runtime loads it
    # with a longer context)
    "llama_dynamic": ("LlamaConfig", dict(
        intermediate_size=32, max_position_embeddings=10,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})),
    # Phi-3: fused qkv_proj / gate_up_proj, LongRoPE switching at 12 positions (the 15-token greedy
    # run crosses it), sliding window 6 (every layer)
    "phi3": ("Phi3Config", dict(
        intermediate_size=32, original_max_position_embeddings=12, sliding_window=6, pad_token_id=0,
        rope_parameters={"rope_type": "longrope", "short_factor": _factors(1, 8), "long_factor": _factors(2, 8),
                         "rope_theta": 10000.0})),
    # Phi-4-mini's shape: partial rotary 0.75 (12 of 16) with LongRoPE over the 12, tied embeddings
    "phi3_partial": ("Phi3Config", dict(
        intermediate_size=32, original_max_position_embeddings=12, pad_token_id=0, tie_word_embeddings=True,
        partial_rotary_factor=0.75,
        rope_parameters={"rope_type": "longrope", "short_factor": _factors(3, 6), "long_factor": _factors(4, 6),
                         "rope_theta": 10000.0, "partial_rotary_factor": 0.75})),
    # Phi-2: parallel attention + MLP from one LayerNorm, partial rotary 0.5, biases, gelu_new
    "phi": ("PhiConfig", dict(
        intermediate_size=32, partial_rotary_factor=0.5, hidden_act="gelu_new", qk_layernorm=False,
        pad_token_id=0)),
    # Pythia: parallel residual (two LayerNorms), rotary_pct 0.25, fused per-head q/k/v, exact GELU
    "gpt_neox": ("GPTNeoXConfig", dict(
        intermediate_size=32, rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
        attention_bias=True)),
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(
        intermediate_size=32, rotary_pct=0.5, use_parallel_residual=False, hidden_act="gelu",
        attention_bias=True)),
    # Gemma 2: pre+post (1 + w) norms, attention scale 24 ** -0.5 (not head_dim's), attention and
    # final soft-caps small enough to bite, layer 0 sliding (window 4) and layer 1 global; untied (tied, the
    # sqrt(hidden)-scaled embedding of the last token dominates the logits: greedy repeats it)
    "gemma2": ("Gemma2Config", dict(
        head_dim=16, intermediate_size=32, sliding_window=4, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0, hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=False, pad_token_id=0)),
    # Gemma 3 (text): Gemma 2's layout plus (1 + w) q/k norms, no soft-caps; sliding layers RoPE
    # base 1e4, the global layer 1e6 with linear scaling x4
    "gemma3_text": ("Gemma3TextConfig", dict(
        head_dim=16, intermediate_size=32, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"], hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=False, pad_token_id=0,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    # The Gemma 2 / 3 models a GGUF can describe, for tests/fixtures/gguf (tools/make_gguf_fixtures.py):
    # llama.cpp derives the attention scale from head_dim (query_pre_attn_scalar is not written), Gemma 2's
    # converter drops lm_head (tied), and Gemma 3's layer pattern is llama.cpp's default (5 sliding, 1 global)
    "gemma2_gguf": ("Gemma2Config", dict(
        head_dim=16, intermediate_size=32, sliding_window=4, query_pre_attn_scalar=16,
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0, hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, pad_token_id=0)),
    "gemma3_gguf": ("Gemma3TextConfig", dict(
        num_hidden_layers=6, head_dim=16, intermediate_size=32, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention"] * 5 + ["full_attention"], hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=False, pad_token_id=0,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}


def adjust_(model, name: str) -> None:
    """Gemma 2 / 3 store RMSNorm weights as ``w`` of ``1 + w``: re-centre reinit_'s ``1 + N(0, 0.1)``
    to ``N(0, 0.1)`` so the norms scale by about 1, not 2 (greedy tokens then vary); the tied
    ``gemma2_gguf`` also gets smaller embeddings."""
    import torch

    if not name.startswith("gemma"):
        return
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.sub_(1.0)
            elif name == "gemma2_gguf" and "embed_tokens" in pname:
                # tied (a GGUF Gemma 2 has no lm_head): at N(0, 0.2) the sqrt(hidden)-scaled embedding of
                # the last token dominates and greedy repeats it; x0.35 (with seed 8022) lets it vary
                p.mul_(0.35)


def make_breadth_config(name: str, hidden: int, layers: int, vocab: int, max_pos: int):
    import transformers as tf

    cls, kw = BREADTH[name]
    common = dict(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=max_pos,
                  num_attention_heads=4, tie_word_embeddings=False)
    if cls in ("PhiConfig", "GPTNeoXConfig"):
        common["layer_norm_eps"] = 1e-5
        if cls == "GPTNeoXConfig":  # no GQA, no num_key_value_heads
            common["rope_theta"] = 10000.0
    else:
        common.update(rms_norm_eps=1e-5, num_key_value_heads=2)
    if cls == "PhiConfig":
        common.update(num_key_value_heads=2, rope_theta=10000.0)
    return getattr(tf, cls)(**{**common, **kw})


def argmax_references(model, input_ids: np.ndarray, n_new: int):
    """(greedy [1, T + n_new] from argmax over full forwards without a cache, decode_logits
    [n_new, V] and greedy_cached [1, T + n_new] from an argmax loop with HF's KV cache, smallest
    top-1/top-2 gap over both loops)."""
    import torch

    ids = input_ids[0].tolist()
    gaps = []
    with torch.no_grad():
        seq = list(ids)
        for _ in range(n_new):
            lg = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float().numpy()
            s = np.sort(lg)
            gaps.append(float(s[-1] - s[-2]))
            seq.append(int(np.argmax(lg)))
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        past, cached, rows = out.past_key_values, list(ids), []
        for k in range(n_new):
            lg = out.logits[0, -1].float().numpy().astype(np.float32)
            rows.append(lg)
            s = np.sort(lg)
            gaps.append(float(s[-1] - s[-2]))
            cached.append(int(np.argmax(lg)))
            if k < n_new - 1:
                out = model(input_ids=torch.tensor([[cached[-1]]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
    return (np.array([seq], np.int64), np.stack(rows).astype(np.float32), np.array([cached], np.int64),
            min(gaps))
