"""One decoder-only transformer builder for every supported family, driven by a ModelSpec.

The spec says what differs between GPT-2, LLaMA/Mistral/SmolLM2, Qwen2, Qwen3, Gemma 1/2/3, Granite,
OLMo 2, StableLM, Phi-3, Phi-2 and GPT-NeoX (norm type, activation, gated MLP, learned positions vs
RoPE, biases, QK-norm per head or over the whole projection, pre- and/or post-norms, scaled
embeddings, tied embeddings, fused q/k/v layouts; Granite's multipliers, partial rotary, the
parallel residual, soft-caps, RoPE scalings and the MoE block of Mixtral / Qwen2-MoE / Qwen3-MoE
(``models/moe.py``) are config values); this module and
``models/layers.py`` (the graph-building half) turn spec + config + weights into graphs. Weights are persistent buffers uploaded once; each
layer's KV cache is a persistent buffer ``[kv_heads, max_context, head_dim]``.

A step graph takes the token ids and their positions as inputs; everything that depends on the
position reads it from the positions tensor at run time (RoPE, the KV-cache write ``set_rows``, the
causal mask's ``past``). So one decode graph serves every position: it is built, fused and planned
once, then re-run with new inputs (on CUDA, replayed as a captured CUDA graph). Attention is built
as matmul -> softmax -> matmul over the whole cache and fused by ``tinygraph.passes`` into one
``attention`` node that reads only the visible keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

import tinygraph as tg
from tinygraph.io import Checkpoint, ModelSpec, TransformerConfig
from tinygraph.io.rope_scaling import RopeScaling, dynamic_factors
from tinygraph.passes import optimize
from tinygraph.session import SessionClosedError

from .layers import Layers
from .moe import MoE

#: step graphs kept per model (decode + a few prompt lengths)
MAX_CACHED_GRAPHS = 6
#: what a step graph can produce (see Transformer.step_graph)
WANTS = ("logits", "argmax", "sample", "hidden", "all_logits")
#: a step over more tokens runs in chunks of this many (the last one shorter): one graph serves
#: every full chunk of a long prompt, and no step holds a prompt-long activation or score matrix
PREFILL_CHUNK = 512


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


class Transformer(Layers, MoE):
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
        self.session.backend.prepare_kernels()  # CUDA: a cold kernel cache compiles side by side now
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
        # frequency divisors (short and long sets for longrope) and attention factor of the RoPE scaling
        self.rope: RopeScaling = ckpt.rope_scaling if self.spec.position == "rope" else RopeScaling()
        self._long_rope = False  # while a graph is built: use longrope's long factors
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
        # and one for gate and up (q and k alone when only v has another type)
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
                tl = [self._weight_dtype(ckpt, w, tuple(ckpt.shape(w))) for w in ws]
                if len(set(tl)) != 1:
                    # a Q4_K_M file's Q4_K q / k with a Q6_K v on some layers: q and k packed, v alone
                    if pack != "attn.qkv" or tl[0] != tl[1]:
                        continue
                    pack, parts, ws = "attn.qk", parts[:2], ws[:2]
                types = {tl[0]}
                for kind in ("weight", "bias"):
                    pn = [f"{p}.{kind}" for p in parts]
                    if all(x in names for x in pn):
                        shapes = [tuple(ckpt.shape(x)) for x in pn]
                        name = f"layers.{i}.{pack}.{kind}"
                        self._packs[name] = pn
                        packed.update(pn)
                        decl(name, (sum(sh[0] for sh in shapes),) + shapes[0][1:],
                             types.pop() if kind == "weight" else dt)
        packed |= self._declare_moe(ckpt, decl)  # experts packed per layer, router, one-hot tables
        for n in sorted(names - packed):
            decl(n, tuple(ckpt.shape(n)), self._weight_dtype(ckpt, n, tuple(ckpt.shape(n))))
        hd, nkv = cfg.head_dim, cfg.num_kv_heads
        self._rope_consts = {n: a for n, a in (("rope.freq_factors", self.rope.factors),
                                               ("rope.freq_factors_long", self.rope.long_factors)) if a is not None}
        for n, a in self._rope_consts.items():
            decl(n, a.shape, tg.float32)
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
            elif name in self._moe_arrays:  # made once (packed experts): drop the maker, it holds ckpt
                s.upload(t, self._moe_arrays.pop(name)())
            elif name in self._rope_consts:
                s.upload(t, self._rope_consts[name])
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

    def step_graph(self, T: int, want: str = "logits", fuse: bool = True,
                   long_rope: bool = False) -> tuple[tg.Graph, tg.Tensor, tg.Tensor]:
        """The graph of one step over ``T`` tokens producing ``want`` ("logits": last position's
        logits [1, vocab]; "argmax": its greedy token [1]; "sample": a token sampled from them on
        the backend [1], with two more inputs, ``sample_fparams`` and ``sample_iparams`` (see
        ``tg.ops.sample``); "hidden": [T, hidden]; "all_logits": [T, vocab]), fused unless
        ``fuse=False``; ``long_rope``: with longrope's long factors (see :meth:`_uses_long_rope`).
        Returns (graph, ids input, positions input)."""
        if want not in WANTS:
            raise ValueError(f"want must be one of {', '.join(WANTS)}, got {want!r}")
        g = self.session.graph()
        self._long_rope = bool(long_rope) and self.rope.long_factors is not None
        try:
            tid, pid, h = self.build_step(g, T, last_only=want in ("logits", "argmax", "sample"))
        finally:
            self._long_rope = False
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
        # the RoPE regime (longrope's factors, dynamic NTK) is the whole call's, as in one forward
        long_rope = self._uses_long_rope(start + T)
        self._dynamic_rope(start + T)
        rows = want in ("hidden", "all_logits")  # outputs per token: the chunks' are concatenated
        parts = []
        for lo in range(0, T, PREFILL_CHUNK):
            hi = min(T, lo + PREFILL_CHUNK)
            last = hi == T
            w = want if (last or rows) else "hidden"  # earlier chunks only fill the cache
            g, tid, pid = self._graph(hi - lo, w, long_rope)
            feeds = {tid: ids[lo:hi].astype(np.int32), pid: np.arange(start + lo, start + hi, dtype=np.int32)}
            if sampling is not None and last:
                feeds["sample_fparams"], feeds["sample_iparams"] = sampling
            (out,) = self.session.compute(g, feeds, times if last else None)
            self.kv.length = start + hi
            self.last_graph = g
            if rows:
                parts.append(out)
        if want in ("argmax", "sample"):
            return int(out[0])
        if want == "logits":
            return out[0]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _uses_long_rope(self, end: int) -> bool:
        """Whether a step ending before position ``end`` uses longrope's long factors: HF picks them
        for a forward call whose largest position + 1 exceeds ``original_max_position_embeddings``
        (keys cached by earlier calls keep the rotation they were stored with)."""
        return self.rope.long_factors is not None and end > self.rope.switch_at  # type: ignore[operator]

    def _dynamic_rope(self, end: int) -> None:
        """Dynamic NTK: upload the divisors of a step over positions ``< end`` (when they change)."""
        if self.rope.dynamic is None:
            return
        ff = dynamic_factors(self.config, self.rope.dynamic, end)
        if not np.array_equal(ff, self._rope_consts["rope.freq_factors"]):
            self.session.upload(self.W["rope.freq_factors"], ff)
            self._rope_consts["rope.freq_factors"] = ff

    def _graph(self, T: int, want: str, long_rope: bool = False) -> tuple[tg.Graph, tg.Tensor, tg.Tensor]:
        """The cached step graph for (T, want, long_rope), built on first use (least recently used
        dropped)."""
        key = (T, want, True) if long_rope else (T, want)  # (T, want): plain RoPE and short factors
        entry = self._graphs.pop(key, None)
        if entry is None:
            entry = self.step_graph(T, want, long_rope=True) if long_rope else self.step_graph(T, want)
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
        # the RoPE's frequencies change at switch_at: longrope's steps there and later run the
        # long-factor graph (a second device loop, fed the first's last token); dynamic NTK's run
        # as host steps, each uploading its own divisors
        edge = self.rope.switch_at
        first = steps if edge is None else min(max(edge - start, 0), steps)
        if first < steps:
            return self._two_loops(token, start, first, steps, want, sampling, lookahead)
        return self._loop(token, start, steps, want, sampling, lookahead)

    def _two_loops(self, token: int, start: int, first: int, steps: int, want: str,
                   sampling: tuple[np.ndarray, np.ndarray] | None, lookahead: int) -> Iterator[int]:
        """``first`` decode steps in one device loop, then the rest in the other RoPE regime."""
        if first:
            for token in self._loop(token, start, first, want, sampling, lookahead):
                yield token

        def at(k: int) -> tuple[np.ndarray, np.ndarray] | None:  # the sampling counter goes on
            if sampling is None:
                return None
            ip = np.array(sampling[1], np.int32, copy=True)
            ip[3] += k
            return sampling[0], ip
        if self.rope.dynamic is None:
            yield from self._loop(token, start + first, steps - first, want, at(first), lookahead)
            return
        for k in range(first, steps):
            token = Transformer.step(self, [token], start + k, want, sampling=at(k))  # no new cache owner
            yield token

    def _loop(self, token: int, start: int, steps: int, want: str,
              sampling: tuple[np.ndarray, np.ndarray] | None, lookahead: int) -> Iterator[int]:
        """One device-side decode loop (see :meth:`decode_loop`), all its steps in one RoPE regime."""
        g, tid, pid = self._graph(1, want, self._uses_long_rope(start + 1))
        self._dynamic_rope(start + 1)
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
        key = (1, "argmax", True) if self._uses_long_rope(position + 1) else (1, "argmax")
        return self._graphs[key][0], times

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
