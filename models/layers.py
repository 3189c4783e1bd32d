"""The graph-building half of :class:`models.transformer.Transformer`: one layer's norms,
linear layers, attention (q/k/v, q/k norms, RoPE, the KV-cache write, the masked softmax) and MLP,
and a whole step, all chosen by the model's spec and config. Split from transformer.py only to
keep each module short; ``Layers`` is a mixin that reads the model's ``W``, ``WT``, ``spec``,
``config``, ``windows`` and KV-cache buffers."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

import tinygraph as tg

if TYPE_CHECKING:
    from .paged import KVLayout


class Layers:
    """Graph-building methods of a Transformer (a mixin; see the module docstring)."""

    # -- graph building ------------------------------------------------------------------------
    def _norm(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        w, b = self.W.get(f"{prefix}.weight"), self.W.get(f"{prefix}.bias")
        if self.spec.norm == "layernorm":
            return tg.layer_norm(x, w, b, self.config.norm_eps, name=prefix)
        return tg.rms_norm(x, w, self.config.norm_eps, name=prefix)

    def _linear(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        """``x @ W.T (+ b)`` for an HF ``[out, in]`` weight."""
        y = tg.matmul(x, self.WT[f"{prefix}.weight"], name=prefix)
        b = self.W.get(f"{prefix}.bias")
        return tg.add(y, b, name=f"{prefix}.bias") if b is not None else y

    def _attention(self, x: tg.Tensor, i: int, positions: tg.Tensor, kv: "KVLayout | None" = None) -> tg.Tensor:
        """Layer ``i``'s attention block on ``x`` [T, hidden]: q/k/v, their norms and RoPE, the
        KV-cache write and attention (the model's own cache, or ``kv``'s), the output projection."""
        cfg, spec = self.config, self.spec
        T = x.shape[0]
        hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        P = f"layers.{i}.attn"
        # OLMo 2: q/k RMSNorm over the whole projection [T, n * hd], before splitting into heads
        whole = spec.qk_norm and spec.qk_norm_over == "all"
        packed = next((n for n in ("qkv", "qk") if f"{P}.{n}.weight" in self.W), None)
        if packed:  # q | k (| v) in one matmul; with "qk" (v of another type) v has its own
            proj = self._linear(x, f"{P}.{packed}")                         # [T, (nh + nkv (+ nkv)) hd]
            row = proj.shape[1]
            if whole:
                q, k = (self._whole_norm(tg.view(proj, (T, n * hd), (row, 1), off, name=f"{P}.{p}_all"), P, p, n)
                        for p, n, off in (("q", nh, 0), ("k", nkv, nh * hd)))
            else:
                q = tg.view(proj, (T, nh, hd), (row, hd, 1), 0, name=f"{P}.q")
                k = tg.view(proj, (T, nkv, hd), (row, hd, 1), nh * hd, name=f"{P}.k")
            v = (tg.view(proj, (T, nkv, hd), (row, hd, 1), (nh + nkv) * hd, name=f"{P}.v") if packed == "qkv"
                 else tg.reshape(self._linear(x, f"{P}.v"), (T, nkv, hd), name=f"{P}.v"))
        elif whole:  # separate q, k, v matmuls (quantized files), norms over the whole projections
            q, k = (self._whole_norm(self._linear(x, f"{P}.{p}"), P, p, n) for p, n in (("q", nh), ("k", nkv)))
            v = tg.reshape(self._linear(x, f"{P}.v"), (T, nkv, hd), name=f"{P}.v")
        else:  # q, k, v weights of three types (quantized files)
            q, k, v = (tg.reshape(self._linear(x, f"{P}.{p}"), (T, n, hd), name=f"{P}.{p}")
                       for p, n in (("q", nh), ("k", nkv), ("v", nkv)))
        if spec.qk_norm and not whole:
            q = tg.rms_norm(q, self.W[f"{P}.q_norm.weight"], cfg.norm_eps, name=f"{P}.q_norm")
            k = tg.rms_norm(k, self.W[f"{P}.k_norm.weight"], cfg.norm_eps, name=f"{P}.k_norm")
        if spec.position == "rope" and cfg.rotary_dim is not None:  # partial rotary (StableLM, Phi)
            q, k = self._partial_rope(q, positions, f"{P}.q"), self._partial_rope(k, positions, f"{P}.k")
        elif spec.position == "rope":
            # Gemma 3's sliding layers: their own base, no scaling
            ff, theta = (None, cfg.rope_theta_local) if self._local_rope(i) else (self._rope_factors(), cfg.rope_theta)
            q = tg.rope(q, positions, theta, spec.rope_mode, ff, name=f"{P}.q_rope")
            k = tg.rope(k, positions, theta, spec.rope_mode, ff, name=f"{P}.k_rope")
        out = kv.attend(q, k, v, i, positions) if kv is not None else self._attend_cache(q, k, v, i, positions)
        return self._row_linear(out, f"{P}.o")

    def _row_linear(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        """An output projection (attention ``o``, MLP ``down``): ``x`` [T, in] -> [T, hidden].
        Plain ``_linear`` here; a hook for ``models.tensor_parallel``, whose ranks each hold a
        slice of the input features and all-reduce the partial products before the bias."""
        return self._linear(x, prefix)

    def _attend_cache(self, q: tg.Tensor, k: tg.Tensor, v: tg.Tensor, i: int, positions: tg.Tensor) -> tg.Tensor:
        """Write ``k``/``v`` [T, nkv, hd] into the model's cache rows of ``positions`` and attend
        with ``q`` [T, nh, hd] over the whole cache -> [T, nh * hd]."""
        P = f"layers.{i}.attn"
        # write the new keys/values into the cache rows of their positions
        tg.set_rows(self.kv_k[i], tg.permute(k, (1, 0, 2)), positions, name=f"{P}.k_store")
        tg.set_rows(self.kv_v[i], tg.permute(v, (1, 0, 2)), positions, name=f"{P}.v_store")
        # attend over the whole cache; the causal mask (past = first position) and the layer's
        # sliding window, if any, hide the rest (the fused attention never reads those keys)
        keys_t, vals = self._history(i)
        return self.attend(q, keys_t, vals, i, positions)

    def attend(self, q: tg.Tensor, keys_t: tg.Tensor, vals: tg.Tensor, i: int, past: tg.Tensor,
               per_row: bool = False) -> tg.Tensor:
        """Causal attention of layer ``i`` for queries ``q`` [T, nh, hd] at positions ``past..``
        (``past``: int32 tensor, first element used) over keys ``keys_t`` [nkv, 1, hd, S] and
        values ``vals`` [nkv, 1, S, hd] (S: positions 0..S-1) -> [T, nh * hd]. ``per_row``: the
        rows of ``q`` are one token each of N sequences, ``keys_t`` [N * nkv, 1, hd, S] and
        ``vals`` [N * nkv, 1, S, hd] theirs, ``past`` [N * nkv] the position of each."""
        cfg, P = self.config, f"layers.{i}.attn"
        T, nh, hd = q.shape
        nkv = cfg.num_kv_heads
        if per_row:  # [N * nkv, groups, 1, hd]: one query per (sequence, KV head)
            qg = tg.reshape(q, (T * nkv, nh // nkv, 1, hd))
        else:
            qg = tg.permute(tg.reshape(q, (T, nkv, nh // nkv, hd)), (1, 2, 0, 3))   # [nkv, groups, T, hd]
        scores = tg.matmul(qg, keys_t, name=f"{P}.scores")                   # [nkv, groups, T, S]
        scale = self.attn_scale(i)
        if cfg.attn_softcap is not None:
            # Gemma 2: cap * tanh(scores * scale / cap) before the mask (passes.fuse_attention folds
            # the scale and the cap into the attention op's softcap)
            scores = tg.softcap(tg.scale(scores, scale, name=f"{P}.scores_scaled"), cfg.attn_softcap,
                                name=f"{P}.scores_capped")
            scale = 1.0
        probs = tg.softmax(scores, scale, causal=True, past=past, window=self.windows[i],
                           name=f"{P}.probs", past_rows=per_row)
        out = tg.matmul(probs, vals, name=f"{P}.mix")                          # [nkv, groups, T, hd]
        if per_row:
            return tg.reshape(out, (T, nh * hd))
        return tg.reshape(tg.permute(out, (2, 0, 1, 3)), (T, nh * hd))

    def attn_scale(self, i: int) -> float:
        """The factor layer ``i``'s attention scores are multiplied by before the softmax (and
        before Gemma 2's soft-capping)."""
        cfg = self.config
        scale = cfg.attention_multiplier if cfg.attention_multiplier is not None else 1.0 / math.sqrt(cfg.head_dim)
        af = 1.0 if self._local_rope(i) else self.rope.attention_factor
        if af != 1.0 and cfg.rotary_dim is None:
            # YaRN / LongRoPE: HF multiplies cos and sin by af, so every element of q and k: the
            # scores grow by af^2 (partial rotary scales only the rotated part, in _partial_rope)
            scale *= af * af
        return scale

    def _partial_rope(self, x: tg.Tensor, positions: tg.Tensor, prefix: str) -> tg.Tensor:
        """RoPE on the first ``rotary_dim`` elements of each head of ``x`` [T, heads, hd] (their
        frequencies over rotary_dim, as HF's partial rotary), the rest passed through."""
        T, n, hd = x.shape
        rd = self.config.rotary_dim
        rot = tg.view(x, (T, n, rd), x.strides, 0, name=f"{prefix}_rot")
        rest = tg.view(x, (T, n, hd - rd), x.strides, rd, name=f"{prefix}_pass")
        rot = tg.rope(rot, positions, self.config.rope_theta, self.spec.rope_mode, self._rope_factors(),
                      name=f"{prefix}_rope")
        if self.rope.attention_factor != 1.0:  # HF's cos/sin factor reaches only the rotated elements
            rot = tg.scale(rot, self.rope.attention_factor, name=f"{prefix}_rope_scaled")
        return tg.concat(rot, rest, axis=-1, name=f"{prefix}_rotated")

    def _local_rope(self, i: int) -> bool:
        """Layer ``i`` uses the local RoPE (Gemma 3's sliding-window layers)."""
        cfg = self.config
        return cfg.rope_theta_local is not None and cfg.layer_types is not None and \
            cfg.layer_types[i] == "sliding_attention"

    def _rope_factors(self) -> tg.Tensor | None:
        """The frequency divisors of this graph's RoPE: longrope's long set while a long-regime graph
        is built (``_long_rope``), else the scaling's factors, or None for plain RoPE."""
        return self.W.get("rope.freq_factors_long" if self._long_rope else "rope.freq_factors")

    def _whole_norm(self, y: tg.Tensor, P: str, p: str, heads: int) -> tg.Tensor:
        """RMSNorm of a [T, heads * hd] projection over all of it, then split into heads."""
        y = tg.rms_norm(y, self.W[f"{P}.{p}_norm.weight"], self.config.norm_eps, name=f"{P}.{p}_norm")
        return tg.reshape(y, (y.shape[0], heads, self.config.head_dim), name=f"{P}.{p}")

    def _history(self, i: int) -> tuple[tg.Tensor, tg.Tensor]:
        """Layer ``i``'s cached keys (transposed, [nkv, 1, hd, ctx]) and values ([nkv, 1, ctx, hd]);
        the size-1 axis broadcasts over the query heads of each KV head."""
        if i not in self._history_views:
            nkv, hd, ctx = self.config.num_kv_heads, self.config.head_dim, self.max_context
            self._history_views[i] = (
                tg.view(self.kv_k[i], (nkv, 1, hd, ctx), (ctx * hd, 0, 1, hd), 0, name=f"layers.{i}.attn.keys"),
                tg.view(self.kv_v[i], (nkv, 1, ctx, hd), (ctx * hd, 0, hd, 1), 0, name=f"layers.{i}.attn.values"))
        return self._history_views[i]

    def _mlp(self, x: tg.Tensor, i: int) -> tg.Tensor:
        if self.config.moe is not None and self.config.moe.sparse[i]:  # Mixtral, Qwen MoE: models/moe.py
            return self._moe(x, i)
        P = f"layers.{i}.mlp"
        if self.spec.gated_mlp and f"{P}.gate_up.weight" not in self.W:
            h = tg.mul(self._act(self._linear(x, f"{P}.gate"), P), self._linear(x, f"{P}.up"), name=f"{P}.gated")
        elif self.spec.gated_mlp:
            gu = self._linear(x, f"{P}.gate_up")                              # [T, 2 I]
            T, I2 = gu.shape
            I = I2 // 2
            gate = tg.view(gu, (T, I), (I2, 1), 0, name=f"{P}.gate")
            up = tg.view(gu, (T, I), (I2, 1), I, name=f"{P}.up")
            h = tg.mul(self._act(gate, P), up, name=f"{P}.gated")
        else:
            h = self._act(self._linear(x, f"{P}.up"), P)
        return self._row_linear(h, f"{P}.down")

    def _act(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        act = self.spec.activation
        if act.startswith("gelu") and self.config.activation.startswith("gelu"):
            act = self.config.activation  # the GELU specs follow the config's form (exact or tanh)
        if act == "gelu":  # exact (erf) GELU: GPT-NeoX's "gelu"
            return tg.gelu(x, name=f"{prefix}.act", approximate="none")
        if act == "gelu_tanh":
            return tg.gelu(x, name=f"{prefix}.act")
        return tg.silu(x, name=f"{prefix}.act")

    def build_step(self, g: tg.Graph, T: int, last_only: bool = True,
                   kv: "KVLayout | None" = None) -> tuple[tg.Tensor, tg.Tensor, tg.Tensor]:
        """Add one forward step over ``T`` new tokens to ``g`` (unfused; see ``step_graph``).
        Returns (ids input [T] int32, positions input [T] int32 — consecutive positions, fed at run
        time — and the final-normed hidden states [T, hidden], or [1, hidden] with ``last_only``).
        ``kv``: where keys/values are written and read (default: the model's one-sequence cache;
        ``models.paged.PagedStep`` for several sequences in one step, whose positions need not
        be consecutive)."""
        ids = g.input((T,), tg.int32, name="token_ids")
        positions = g.input((T,), tg.int32, name="positions")
        spec, cfg = self.spec, self.config
        x = self._embed(ids)
        if spec.scale_embeddings:  # Gemma: sqrt(hidden), rounded to the model dtype as HF does
            s = np.float32(math.sqrt(cfg.hidden_size)).astype(self.dtype.np)
            x = tg.scale(x, float(s), name="embed_scale")
        if cfg.embedding_multiplier != 1.0:  # Granite
            x = tg.scale(x, cfg.embedding_multiplier, name="embed_multiplier")
        if spec.position == "learned":
            x = tg.add(x, tg.get_rows(self.W["pos_emb.weight"], positions, name="pos_emb"), name="embed")
        for i in range(cfg.num_layers):
            P = f"layers.{i}"
            if cfg.parallel_residual:  # StableLM, Phi-2: x + attn(norm(x)) + mlp(norm(x)), one norm
                h = self._pre_norm(x, f"{P}.attn_norm")
                # GPT-NeoX: the MLP has a norm of its own, of the same input
                h2 = self._pre_norm(x, f"{P}.mlp_norm") if spec.parallel_mlp_norm else h
                x = self._residual(self._residual(x, self._attention(h, i, positions, kv), P, "attn"),
                                   self._mlp(h2, i), P, "mlp")
                continue
            x = self._residual(x, self._attention(self._pre_norm(x, f"{P}.attn_norm"), i, positions, kv), P, "attn")
            x = self._residual(x, self._mlp(self._pre_norm(x, f"{P}.mlp_norm"), i), P, "mlp")
        if last_only and T > 1:
            x = tg.view(x, (1, x.shape[1]), (x.shape[1], 1), (T - 1) * x.shape[1], name="last_token")
        return ids, positions, self._norm(x, "final_norm")

    def _embed(self, ids: tg.Tensor) -> tg.Tensor:
        """Token embeddings [T, hidden] of ``ids`` [T] int32 (a hook for ``models.tensor_parallel``:
        vocabulary-parallel ranks look up their slice and all-reduce)."""
        return tg.get_rows(self.W["tok_emb.weight"], ids, name="tok_emb", dtype=self.dtype)

    def _pre_norm(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        """The norm before a block (none for OLMo 2, which normalises block outputs instead)."""
        return self._norm(x, prefix) if self.spec.pre_norms else x

    def _residual(self, x: tg.Tensor, y: tg.Tensor, P: str, block: str) -> tg.Tensor:
        """``x + y``, ``y`` a block's output: post-normed (OLMo 2), scaled by Granite's
        ``residual_multiplier``."""
        if self.spec.post_norms:
            y = self._norm(y, f"{P}.{block}_post_norm")
        if self.config.residual_multiplier != 1.0:
            y = tg.scale(y, self.config.residual_multiplier, name=f"{P}.{block}_scaled")
        return tg.add(x, y, name=f"{P}.{block}_residual")

    def _lm_head(self, h: tg.Tensor) -> tg.Tensor:
        """``h`` [T, hidden] times the LM head (tied: the embeddings), plus its bias -> [T, vocab]
        (a hook for ``models.tensor_parallel``: each rank its vocabulary slice, then gathered)."""
        y = tg.matmul(h, self.WT["lm_head.weight" if "lm_head.weight" in self.WT else "tok_emb.weight"],
                      name="lm_head")
        if "lm_head.bias" in self.W:  # Phi-2
            y = tg.add(y, self.W["lm_head.bias"], name="lm_head.bias")
        return y

    def logits_node(self, h: tg.Tensor) -> tg.Tensor:
        """Logits [T, vocab] of final-normed ``h`` [T, hidden]: the LM head, Gemma 2's soft-cap,
        Granite's scaling."""
        y = self._lm_head(h)
        if self.config.final_softcap is not None:  # Gemma 2: cap * tanh(logits / cap)
            y = tg.softcap(y, self.config.final_softcap, name="logits_capped")
        if self.config.logits_scaling != 1.0:  # Granite divides the logits
            y = tg.scale(y, 1.0 / self.config.logits_scaling, name="logits_scaled")
        return y
