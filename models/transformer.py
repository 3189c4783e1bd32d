"""One decoder-only transformer builder for every supported family, driven by a ModelSpec.

The spec says what differs between GPT-2, LLaMA/Mistral/SmolLM2, Qwen2, Qwen3, Gemma, Granite and
OLMo 2 (norm type, activation, gated MLP, learned positions vs RoPE, biases, QK-norm per head or
over the whole projection, pre- and/or post-norms, scaled embeddings, tied embeddings; Granite's
multipliers are config values); this module
turns spec + config + weights into graphs. Weights are persistent buffers uploaded once; each
layer's KV cache is a persistent buffer ``[kv_heads, max_context, head_dim]``.

A step graph takes the token ids and their positions as inputs; everything that depends on the
position reads it from the positions tensor at run time (RoPE, the KV-cache write ``set_rows``, the
causal mask's ``past``). So one decode graph serves every position: it is built, fused and planned
once, then re-run with new inputs (on CUDA, replayed as a captured CUDA graph). Attention is built
as matmul -> softmax -> matmul over the whole cache and fused by ``tinygraph.passes`` into one
``attention`` node that reads only the visible keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

import tinygraph as tg
from tinygraph.io import Checkpoint, ModelSpec, TransformerConfig
from tinygraph.passes import optimize
from tinygraph.session import SessionClosedError

if TYPE_CHECKING:
    from .paged import KVLayout

#: step graphs kept per model (decode + a few prompt lengths)
MAX_CACHED_GRAPHS = 6
#: what a step graph can produce (see Transformer.step_graph)
WANTS = ("logits", "argmax", "sample", "hidden", "all_logits")


@dataclass
class KVCache:
    """The model's KV cache state: ``length`` positions are filled. The buffers themselves are
    persistent tensors of the model's session (``k[i]``, ``v[i]``: [kv_heads, max_context, head_dim])."""

    k: list[tg.Tensor]
    v: list[tg.Tensor]
    max_context: int
    length: int = 0


def token_ids(x, what: str = "input_ids") -> np.ndarray:
    """Token ids of one sequence as int64 [T]: a 1-D sequence, or [1, T] (one batch row, as HF
    takes it). Anything else (a batch of several rows, deeper nesting, ragged lists, floats) is a
    ValueError naming ``what``: flattening it would silently run the rows as one sequence."""
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{what} must be token ids (ints), got text: encode it with model.tokenizer first")
    try:
        a = np.asarray(x)
    except ValueError:  # ragged nesting
        raise ValueError(f"{what} must be a 1-D sequence of token ids (or [1, T]), got ragged nested lists") from None
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of token ids (or [1, T]), got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer token ids, got an array of dtype {a.dtype}")
    return a.astype(np.int64)


class HostArray:
    """A result on the host; ``to_numpy()`` for PyGPUkit compatibility."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def to_numpy(self) -> np.ndarray:
        return self.array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


class Transformer:
    """A decoder-only language model as tinygraph graphs.

    ``dtype``: storage and compute dtype of weights, activations and KV cache ("float32",
    "float16", "bfloat16"); ``max_context``: KV-cache length in tokens (default: the config's
    ``max_position_embeddings``, capped at 4096).

    Lifetime: ``close()`` (or leaving a ``with`` block) releases the model's buffers: the whole
    session when the model created it, only the model's own weights and KV cache when the session
    was passed in, so other models in that session keep working. A closed model raises
    :class:`tinygraph.session.SessionClosedError`. If construction fails (e.g. the GPU runs out of
    memory while the weights are uploaded), whatever it allocated is released before the error
    propagates."""

    def __init__(self, ckpt: Checkpoint, dtype: str = "float32", backend: str = "auto",
                 max_context: int | None = None, session: tg.Session | None = None,
                 dequantize: bool = False, quantize: str | None = None) -> None:
        self._closed = False
        self._owns_session = session is None
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, (int, np.integer))
                                        or max_context < 1):
            raise ValueError(f"max_context must be an integer >= 1, got {max_context!r}")
        self.session = session if session is not None else tg.Session(backend=backend)
        first = len(self.session.persistents)
        try:
            self._quant_rule(dequantize, quantize)
            self._build(ckpt, dtype, max_context)
        except BaseException:
            self._buffers = list(self.session.persistents[first:])
            self.close()
            raise
        # the persistent buffers this model declared (weights, packed weights, KV cache)
        self._buffers = list(self.session.persistents[first:])

    def _build(self, ckpt: Checkpoint, dtype: str, max_context: int | None) -> None:
        self.spec: ModelSpec = ckpt.spec
        self.config: TransformerConfig = ckpt.config
        self.tokenizer = ckpt.tokenizer
        self.chat_template = ckpt.chat_template
        self.dtype = tg.dtypes.as_dtype(dtype)
        if not self.dtype.is_float:
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        cfg = self.config
        limit = cfg.max_position_embeddings or 4096
        self.max_context = int(max_context) if max_context is not None else min(limit, 4096)
        if self.spec.position == "learned" and self.max_context > limit:
            raise ValueError(f"max_context {self.max_context} outside 1..{limit} (learned positions)")
        # each layer's sliding window (None: full attention); a window as wide as the cache
        # changes nothing, so it is dropped
        self.windows: list[int | None] = [
            w if w is not None and w < self.max_context else None
            for w in (cfg.layer_window(i) for i in range(cfg.num_layers))]
        self._declare_weights(ckpt)
        self.session.finalize()
        self._upload_weights(ckpt)
        self.kv = KVCache(self.kv_k, self.kv_v, self.max_context)

    # -- weights -----------------------------------------------------------------------------
    def _quant_rule(self, dequantize: bool, quantize: str | None) -> None:
        """Checks ``dequantize`` / ``quantize`` (see ``load_model``)."""
        self._dequantize = bool(dequantize)
        self._quantize = None
        if quantize is not None:
            try:
                q = tg.dtypes.as_dtype(quantize) if isinstance(quantize, str) else None
            except tg.DTypeError:
                q = None
            if q is None or not q.is_quant:
                raise ValueError(f"quantize must be one of {', '.join(d.name for d in tg.QUANT_DTYPES)}, "
                                 f"got {quantize!r}")
            self._quantize = q

    def _weight_dtype(self, ckpt: Checkpoint, name: str, shape: tuple[int, ...]) -> tg.DType:
        """The dtype weight ``name`` is kept in: a GGUF tensor's block type (unless
        ``dequantize``), the ``quantize`` type for matrices (q8_0 where rows are not whole blocks
        of a K type; the model dtype where they are not whole blocks of 32 either), else the
        model dtype. Norms, biases and learned positions stay in the model dtype."""
        if len(shape) != 2 or name == "pos_emb.weight":
            return self.dtype
        if self._quantize is not None:
            for q in (self._quantize, tg.q8_0):
                if shape[1] % q.block == 0:
                    return q
            return self.dtype
        q = None if self._dequantize else ckpt.quant_type(name)
        return q if q is not None else self.dtype

    def _declare_weights(self, ckpt: Checkpoint) -> None:
        cfg, spec, s, dt = self.config, self.spec, self.session, self.dtype
        names = set(ckpt.names)
        self.W: dict[str, tg.Tensor] = {}

        def decl(name: str, shape: tuple[int, ...], dtype: tg.DType = dt) -> None:
            self.W[name] = s.persistent(shape, dtype, name=name)

        # plain weights keep their canonical names; q/k/v and gate/up are packed into one matrix
        # each (when their parts are kept in one dtype) so a layer does one matmul for q, k and v
        # and one for gate and up
        self._packs: dict[str, list[str]] = {}
        packed: set[str] = set()
        for i in range(cfg.num_layers):
            groups = [("attn.qkv", [f"layers.{i}.attn.{p}" for p in "qkv"])]
            if spec.gated_mlp:
                groups.append(("mlp.gate_up", [f"layers.{i}.mlp.{p}" for p in ("gate", "up")]))
            for pack, parts in groups:
                ws = [f"{p}.weight" for p in parts]
                if not all(w in names for w in ws):
                    continue
                types = {self._weight_dtype(ckpt, w, tuple(ckpt.shape(w))) for w in ws}
                if len(types) != 1:  # e.g. a Q4_K_M file's Q4_K q/k with a Q6_K v: separate matmuls
                    continue
                for kind in ("weight", "bias"):
                    pn = [f"{p}.{kind}" for p in parts]
                    if all(x in names for x in pn):
                        shapes = [tuple(ckpt.shape(x)) for x in pn]
                        name = f"layers.{i}.{pack}.{kind}"
                        self._packs[name] = pn
                        packed.update(pn)
                        decl(name, (sum(sh[0] for sh in shapes),) + shapes[0][1:],
                             types.pop() if kind == "weight" else dt)
        for n in sorted(names - packed):
            decl(n, tuple(ckpt.shape(n)), self._weight_dtype(ckpt, n, tuple(ckpt.shape(n))))
        hd, nkv = cfg.head_dim, cfg.num_kv_heads
        ff = ckpt.rope_freq_factors if spec.position == "rope" else None
        self._freq_factors = ff
        if ff is not None:
            decl("rope.freq_factors", ff.shape, tg.float32)
        self.kv_k = [s.persistent((nkv, self.max_context, hd), dt, name=f"cache.k.{i}") for i in range(cfg.num_layers)]
        self.kv_v = [s.persistent((nkv, self.max_context, hd), dt, name=f"cache.v.{i}") for i in range(cfg.num_layers)]

    def _upload_weights(self, ckpt: Checkpoint) -> None:
        s = self.session

        def raw(names: list[str], t: tg.Tensor) -> bool:
            # block-quantized file tensors kept in their own type are uploaded as their raw blocks
            return t.dtype.is_quant and all(ckpt.quant_type(n) == t.dtype for n in names)

        def read(name: str, t: tg.Tensor) -> np.ndarray:
            return ckpt.tensor_raw(name) if raw([name], t) else ckpt.tensor(name)

        for name, t in self.W.items():
            if name in self._packs:  # raw blocks only when every part has them (else floats, quantized)
                parts = self._packs[name]
                get = ckpt.tensor_raw if raw(parts, t) else ckpt.tensor
                s.upload(t, np.concatenate([get(p) for p in parts], axis=0))
            elif name == "rope.freq_factors":
                s.upload(t, self._freq_factors)
            else:
                s.upload(t, read(name, t))
        self.weight_bytes = sum(t.nbytes for t in self.W.values())
        # views of persistent buffers belong to no graph: make the transposed weights once
        self.WT = {n: tg.transpose(t, name=f"{n}.T") for n, t in self.W.items() if t.ndim == 2}
        self._history_views: dict[int, tuple[tg.Tensor, tg.Tensor]] = {}
        self._graphs: dict[tuple[int, str], tuple[tg.Graph, tg.Tensor, tg.Tensor]] = {}

    def memory_usage(self) -> dict:
        """Bytes the model holds on its backend: ``{"weights": bytes, "kv_cache": bytes,
        "workspace": bytes (the backend's arena, input and scratch areas, as grown so far),
        "weight_types": {dtype name: tensor count}}``; dtype names as they print ("q4_k",
        "q6_k", "f16", "f32", ...). Quantized weights count their raw blocks: a GGUF's tensor
        bytes."""
        self._check_open()
        types: dict[str, int] = {}
        for t in self.W.values():
            key = t.dtype.name if t.dtype.is_quant else t.dtype.short
            types[key] = types.get(key, 0) + 1
        kv = sum(t.nbytes for t in self.kv_k + self.kv_v)
        return {"weights": sum(t.nbytes for t in self.W.values()), "kv_cache": kv,
                "workspace": self.session.backend.workspace_bytes(), "weight_types": types}

    @property
    def lm_head(self) -> tg.Tensor:
        return self.W.get("lm_head.weight", self.W["tok_emb.weight"])

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
        if f"{P}.qkv.weight" in self.W:
            qkv = self._linear(x, f"{P}.qkv")                               # [T, (nh + 2 nkv) hd]
            row = qkv.shape[1]
            if whole:
                q, k = (self._whole_norm(tg.view(qkv, (T, n * hd), (row, 1), off, name=f"{P}.{p}_all"), P, p, n)
                        for p, n, off in (("q", nh, 0), ("k", nkv, nh * hd)))
            else:
                q = tg.view(qkv, (T, nh, hd), (row, hd, 1), 0, name=f"{P}.q")
                k = tg.view(qkv, (T, nkv, hd), (row, hd, 1), nh * hd, name=f"{P}.k")
            v = tg.view(qkv, (T, nkv, hd), (row, hd, 1), (nh + nkv) * hd, name=f"{P}.v")
        elif whole:  # separate q, k, v matmuls (quantized files), norms over the whole projections
            q, k = (self._whole_norm(self._linear(x, f"{P}.{p}"), P, p, n) for p, n in (("q", nh), ("k", nkv)))
            v = tg.reshape(self._linear(x, f"{P}.v"), (T, nkv, hd), name=f"{P}.v")
        else:  # q, k, v weights of different types (quantized files)
            q, k, v = (tg.reshape(self._linear(x, f"{P}.{p}"), (T, n, hd), name=f"{P}.{p}")
                       for p, n in (("q", nh), ("k", nkv), ("v", nkv)))
        if spec.qk_norm and not whole:
            q = tg.rms_norm(q, self.W[f"{P}.q_norm.weight"], cfg.norm_eps, name=f"{P}.q_norm")
            k = tg.rms_norm(k, self.W[f"{P}.k_norm.weight"], cfg.norm_eps, name=f"{P}.k_norm")
        if spec.position == "rope" and cfg.rotary_dim is not None:  # partial rotary (StableLM)
            q, k = self._partial_rope(q, positions, f"{P}.q"), self._partial_rope(k, positions, f"{P}.k")
        elif spec.position == "rope":
            ff = self.W.get("rope.freq_factors")
            q = tg.rope(q, positions, cfg.rope_theta, spec.rope_mode, ff, name=f"{P}.q_rope")
            k = tg.rope(k, positions, cfg.rope_theta, spec.rope_mode, ff, name=f"{P}.k_rope")
        out = kv.attend(q, k, v, i) if kv is not None else self._attend_cache(q, k, v, i, positions)
        return self._linear(out, f"{P}.o")

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
        scale = cfg.attention_multiplier if cfg.attention_multiplier is not None else 1.0 / math.sqrt(hd)
        probs = tg.softmax(scores, scale, causal=True, past=past, window=self.windows[i],
                           name=f"{P}.probs", past_rows=per_row)
        out = tg.matmul(probs, vals, name=f"{P}.mix")                          # [nkv, groups, T, hd]
        if per_row:
            return tg.reshape(out, (T, nh * hd))
        return tg.reshape(tg.permute(out, (2, 0, 1, 3)), (T, nh * hd))

    def _partial_rope(self, x: tg.Tensor, positions: tg.Tensor, prefix: str) -> tg.Tensor:
        """RoPE on the first ``rotary_dim`` elements of each head of ``x`` [T, heads, hd] (their
        frequencies over rotary_dim, as HF's partial rotary), the rest passed through."""
        T, n, hd = x.shape
        rd = self.config.rotary_dim
        rot = tg.view(x, (T, n, rd), x.strides, 0, name=f"{prefix}_rot")
        rest = tg.view(x, (T, n, hd - rd), x.strides, rd, name=f"{prefix}_pass")
        rot = tg.rope(rot, positions, self.config.rope_theta, self.spec.rope_mode, name=f"{prefix}_rope")
        return tg.concat(rot, rest, axis=-1, name=f"{prefix}_rotated")

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
        return self._linear(h, f"{P}.down")

    def _act(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        if self.spec.activation == "gelu_tanh":
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
        x = tg.get_rows(self.W["tok_emb.weight"], ids, name="tok_emb", dtype=self.dtype)
        if spec.scale_embeddings:  # Gemma: sqrt(hidden), rounded to the model dtype as HF does
            s = np.float32(math.sqrt(cfg.hidden_size)).astype(self.dtype.np)
            x = tg.scale(x, float(s), name="embed_scale")
        if cfg.embedding_multiplier != 1.0:  # Granite
            x = tg.scale(x, cfg.embedding_multiplier, name="embed_multiplier")
        if spec.position == "learned":
            x = tg.add(x, tg.get_rows(self.W["pos_emb.weight"], positions, name="pos_emb"), name="embed")
        for i in range(cfg.num_layers):
            P = f"layers.{i}"
            if cfg.parallel_residual:  # StableLM: x + attn(norm(x)) + mlp(norm(x)), one norm
                h = self._pre_norm(x, f"{P}.attn_norm")
                x = self._residual(self._residual(x, self._attention(h, i, positions, kv), P, "attn"),
                                   self._mlp(h, i), P, "mlp")
                continue
            x = self._residual(x, self._attention(self._pre_norm(x, f"{P}.attn_norm"), i, positions, kv), P, "attn")
            x = self._residual(x, self._mlp(self._pre_norm(x, f"{P}.mlp_norm"), i), P, "mlp")
        if last_only and T > 1:
            x = tg.view(x, (1, x.shape[1]), (x.shape[1], 1), (T - 1) * x.shape[1], name="last_token")
        return ids, positions, self._norm(x, "final_norm")

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

    def logits_node(self, h: tg.Tensor) -> tg.Tensor:
        y = tg.matmul(h, self.WT["lm_head.weight" if "lm_head.weight" in self.WT else "tok_emb.weight"],
                      name="lm_head")
        if self.config.logits_scaling != 1.0:  # Granite divides the logits
            y = tg.scale(y, 1.0 / self.config.logits_scaling, name="logits_scaled")
        return y

    # -- running ---------------------------------------------------------------------------------
    def _check_ids(self, ids: np.ndarray, start: int) -> None:
        # a negative start would wrap around to the cache's last rows (NumPy) or write outside it (CUDA)
        if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)) or start < 0:
            raise tg.BoundsError(f"start position must be an int >= 0, got {start!r}")
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty 1-D sequence of token ids, got shape {ids.shape}")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} outside the vocabulary [0, {self.config.vocab_size})")
        if start + ids.size > self.max_context:
            raise ValueError(f"{start} cached + {ids.size} new tokens exceed the context of {self.max_context} "
                             f"(load with a larger max_context)")

    def step_graph(self, T: int, want: str = "logits", fuse: bool = True) -> tuple[tg.Graph, tg.Tensor, tg.Tensor]:
        """The graph of one step over ``T`` tokens producing ``want`` ("logits": last position's
        logits [1, vocab]; "argmax": its greedy token [1]; "sample": a token sampled from them on
        the backend [1], with two more inputs, ``sample_fparams`` and ``sample_iparams`` (see
        ``tg.ops.sample``); "hidden": [T, hidden]; "all_logits": [T, vocab]), fused unless
        ``fuse=False``. Returns (graph, ids input, positions input)."""
        if want not in WANTS:
            raise ValueError(f"want must be one of {', '.join(WANTS)}, got {want!r}")
        g = self.session.graph()
        tid, pid, h = self.build_step(g, T, last_only=want in ("logits", "argmax", "sample"))
        if want == "hidden":
            g.output(h)
        else:
            logits = self.logits_node(h)
            if want == "argmax":
                logits = tg.argmax(logits, name="next_token")
            elif want == "sample":
                fp = g.input((2,), tg.float32, name="sample_fparams")
                ip = g.input((4,), tg.int32, name="sample_iparams")
                logits = tg.sample(logits, fp, ip, name="next_token")
            g.output(logits)
        if fuse:
            optimize(g)
        return g, tid, pid

    def step(self, ids, start: int, want: str = "logits", times: dict[int, float] | None = None,
             sampling: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Run ``ids`` (1-D) at positions ``start..``; write their keys/values into the cache.
        ``want``: see :meth:`step_graph`; "logits" returns [vocab], "argmax" and "sample" an int.
        ``sampling`` (for "sample"): the op's parameter arrays, ``tg.sample_params(temperature,
        top_k, top_p, seed, counter)``; they are graph inputs, so new values reuse the graph.
        ``times``: profile the run (see ``Session.compute``)."""
        self._check_open()
        if (want == "sample") != (sampling is not None):
            raise ValueError('step: sampling parameters go with want="sample", and only with it')
        ids = token_ids(ids, "ids")
        self._check_ids(ids, start)
        T = int(ids.size)
        g, tid, pid = self._graph(T, want)
        feeds = {tid: ids.astype(np.int32), pid: np.arange(start, start + T, dtype=np.int32)}
        if sampling is not None:
            feeds["sample_fparams"], feeds["sample_iparams"] = sampling
        (out,) = self.session.compute(g, feeds, times)
        self.kv.length = start + T
        self.last_graph = g
        if want in ("argmax", "sample"):
            return int(out[0])
        return out[0] if want == "logits" else out

    def _graph(self, T: int, want: str) -> tuple[tg.Graph, tg.Tensor, tg.Tensor]:
        """The cached step graph for (T, want), built on first use (least recently used dropped)."""
        key = (T, want)
        entry = self._graphs.pop(key, None)
        if entry is None:
            entry = self.step_graph(T, want)
            while len(self._graphs) >= MAX_CACHED_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = entry  # most recently used last
        return entry

    def decode_loop(self, token: int, start: int, steps: int, want: str = "argmax",
                    sampling: tuple[np.ndarray, np.ndarray] | None = None, lookahead: int = 4) -> Iterator[int]:
        """Decode ``steps`` tokens after ``token`` (at position ``start``): yields each next token
        id. Every step feeds its token to the next on the device (``Session.compute_loop``): on
        CUDA the steps are queued ahead, with no host round trip between them. ``want``:
        "argmax" or "sample" (``sampling``: the op's parameter arrays for the first step; the
        counter advances by one per step). ``lookahead``: steps queued ahead of the one yielded.
        Stopping early is fine: the cache then also holds the rows of the few steps that were
        already queued (``kv.length`` counts what was yielded)."""
        self._check_open()
        if want not in ("argmax", "sample") or (want == "sample") != (sampling is not None):
            raise ValueError('decode_loop: want is "argmax", or "sample" with its sampling parameters')
        self._check_ids(np.array([token]), start)
        if start + steps > self.max_context:
            raise ValueError(f"decode_loop: {start} + {steps} steps exceed the context of {self.max_context}")
        g, tid, pid = self._graph(1, want)
        feeds = {tid: np.array([token], np.int32), pid: np.array([start], np.int32)}
        advance = {pid: 1}
        if sampling is not None:
            feeds["sample_fparams"], feeds["sample_iparams"] = sampling
            advance["sample_iparams"] = [0, 0, 0, 1]
        self.last_graph = g
        loop = self.session.compute_loop(g, feeds, steps, feedback={tid: g.outputs[0]}, advance=advance,
                                         lookahead=lookahead)
        return self._decode_tokens(loop, start)

    def _decode_tokens(self, loop, start: int) -> Iterator[int]:
        try:
            for i, (out,) in enumerate(loop):
                self.kv.length = start + i + 1
                yield int(out[0])
        finally:
            loop.close()

    def profile_decode(self, token: int, position: int) -> tuple[tg.Graph, dict[int, float]]:
        """Run the decode step for ``token`` at ``position`` once, profiled: returns the decode
        graph and each compute node's time in microseconds (CUDA: GPU time per kernel)."""
        times: dict[int, float] = {}
        self.step([token], position, "argmax", times=times)
        return self._graphs[(1, "argmax")][0], times

    def __call__(self, input_ids, position_ids=None, past_key_values: KVCache | None = None,
                 use_cache: bool = True) -> tuple[HostArray, KVCache | None]:
        """Forward ``input_ids`` (1-D, or [1, T]) after the cached positions of ``past_key_values``
        (None: start a new sequence). Returns (final-normed hidden states [T, hidden], cache)."""
        self._check_open()
        ids = token_ids(input_ids)
        start = past_key_values.length if past_key_values is not None else 0
        if position_ids is not None:
            pos = np.asarray(position_ids).reshape(-1)
            if pos.size != ids.size or not np.array_equal(pos, np.arange(start, start + ids.size)):
                raise ValueError("position_ids must continue the cache: "
                                 f"expected {start}..{start + ids.size - 1}")
        hidden = self.step(ids, start, want="hidden")
        return HostArray(hidden), (self.kv if use_cache else None)

    def get_logits(self, hidden: "HostArray | np.ndarray") -> HostArray:
        """Logits [T, vocab] for final-normed hidden states [T, hidden]."""
        self._check_open()
        h = hidden.to_numpy() if isinstance(hidden, HostArray) else np.asarray(hidden)
        g = self.session.graph()
        x = g.input(h.shape, self.dtype, name="hidden")
        g.output(self.logits_node(x))
        (out,) = self.session.compute(g, {x: h})
        return HostArray(out)

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed or self.session.closed

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("model is closed: close() released its weights and KV cache; load it again")
        if self.session.closed:
            raise SessionClosedError("the model's session is closed")

    def close(self) -> None:
        """Release the model's buffers (see the class docstring). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_session:
            self.session.close()
        elif not self.session.closed:
            self.session.free(self._buffers)
        self._buffers = []
        for attr in ("_graphs", "_history_views"):  # cached graphs hold views of the released buffers
            if isinstance(getattr(self, attr, None), dict):
                getattr(self, attr).clear()
        self.last_graph = None

    def __enter__(self) -> "Transformer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
