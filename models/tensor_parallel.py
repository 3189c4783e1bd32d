"""Megatron-style tensor parallelism with the ordinary transformer builder, simulated on CPU.

A model is split over ``R`` ranks. Each rank is an ordinary :class:`models.model.CausalLM`
(:class:`RankModel`) on its own NumPy :class:`tinygraph.Session`, built by the same builder from
a :class:`ShardedCheckpoint`: the rank's slices of the weights under their canonical names and a
config whose head counts (and MLP / expert widths) are the rank's. The few places where a rank's
graph differs from the unsharded one are the builder's hooks (``models/layers.py``), overridden
by :class:`TensorParallel`:

- attention: q/k/v **column-parallel**: rank ``r`` holds query heads ``r*nh/R .. (r+1)*nh/R - 1``
  and KV heads ``r*nkv/R ..`` (the same query groups: ``nh/R`` over ``nkv/R`` is ``nh/nkv``), so
  RoPE, q/k norms per head, sliding windows, partial rotary and soft-capped scores work as they
  are; its KV cache holds only its KV heads ``[nkv/R, max_context, head_dim]``. The output
  projection ``o`` is **row-parallel** (the matching input columns), then ``all_reduce``, then
  the bias (full, on every rank, added once after the sum).
- MLP: gate/up (and a plain MLP's up, with its bias) column-parallel, ``down`` row-parallel, then
  ``all_reduce``, then the bias. MoE: each expert's gate/up/down (and Qwen2-MoE's shared expert)
  sharded like a dense MLP; the router and the shared-expert gate are replicated, so every rank
  routes identically (its input is bit-identical on all ranks); one ``all_reduce`` per MoE block.
- embeddings **vocabulary-parallel**: rank ``r`` holds rows ``lo..hi`` of the table plus one zero
  row; an int32 map ``[vocab, 1]`` sends ids outside its slice to the zero row (``get_rows``), and
  ``all_reduce`` sums the ranks' rows (exactly one non-zero). The LM head likewise: each rank
  computes its slice of the logits (tied: the first ``hi - lo`` rows of its embedding shard),
  placed in a zero-padded ``[T, vocab]`` (``concat`` with a stride-0 view of a zero) and
  ``all_reduce``-d: the gather needs no second collective. The vocabulary need not divide.
- norms, learned positions, the router: replicated. OLMo 2's q/k norms over the whole projection
  gather the projection (zero-padded ``all_reduce``), norm it, and keep the rank's heads.

Head counts must divide by ``R`` (ValueError otherwise); MLP widths, expert widths and the
vocabulary are split as evenly as possible (:func:`tinygraph.parallel.split`).

:class:`ShardedModel` drives the ranks: each call runs every rank on its own thread
(:func:`tinygraph.parallel.run_ranks`) and returns rank 0's result. Block-quantized GGUF tensors
are loaded dequantized (slicing raw blocks along the input dimension is not done);
``quantize=`` quantizes the shards.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import tinygraph as tg
from tinygraph.io import Checkpoint, TransformerConfig
from tinygraph.io.rope_scaling import RopeScaling
from tinygraph.parallel import InProcessCommunicator, attach, run_ranks, split

from .model import CausalLM
from .transformer import HostArray, KVCache

#: canonical names -> how a rank slices them: (axis, what the slice follows)
_RULES: list[tuple[re.Pattern, int, str]] = [(re.compile(p), axis, kind) for p, axis, kind in (
    (r"layers\.\d+\.attn\.q\.(weight|bias)$", 0, "q_heads"),
    (r"layers\.\d+\.attn\.[kv]\.(weight|bias)$", 0, "kv_heads"),
    (r"layers\.\d+\.attn\.o\.weight$", 1, "q_heads"),
    (r"layers\.\d+\.(mlp|moe\.shared|moe\.experts\.\d+)\.(gate|up)\.(weight|bias)$", 0, "even"),
    (r"layers\.\d+\.(mlp|moe\.shared|moe\.experts\.\d+)\.down\.weight$", 1, "even"),
    (r"lm_head\.(weight|bias)$", 0, "vocab"),
)]


def check_shardable(cfg: TransformerConfig, ranks: int) -> None:
    """ValueError unless ``ranks`` (an int >= 1) divides the query and the KV head counts."""
    if isinstance(ranks, bool) or not isinstance(ranks, (int, np.integer)) or ranks < 1:
        raise ValueError(f"tensor_parallel must be an int >= 1, got {ranks!r}")
    bad = [f"{what}={n}" for what, n in (("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads))
           if n % ranks]
    if bad:
        raise ValueError(f"tensor_parallel={ranks}: {cfg.model_type} cannot be split over {ranks} ranks: "
                         f"{', '.join(bad)} not divisible by {ranks} (each rank holds whole query and KV heads)")


class ShardedCheckpoint:
    """Rank ``rank`` of ``ranks``'s view of ``ckpt``: the same canonical names, sharded tensors
    sliced (see the module docstring), ``config`` with the rank's head counts and widths.
    Tensors are read from ``ckpt`` when asked for (``ckpt`` must stay open while the model is
    built). Every tensor is float: ``quant_type`` is None."""

    def __init__(self, ckpt: Checkpoint, ranks: int, rank: int) -> None:
        check_shardable(ckpt.config, ranks)
        self.base, self.ranks, self.rank = ckpt, ranks, rank
        self.full_config = cfg = ckpt.config
        self.spec, self.format, self.path = ckpt.spec, ckpt.format, ckpt.path
        self.tokenizer, self.chat_template = ckpt.tokenizer, ckpt.chat_template
        self.names = list(ckpt.names)
        self.vocab = split(cfg.vocab_size, ranks, rank)
        moe = cfg.moe
        if moe is not None:
            moe = dataclasses.replace(moe, expert_size=self._width(moe.expert_size),
                                      shared_size=None if moe.shared_size is None else self._width(moe.shared_size))
        self.config = dataclasses.replace(cfg, num_heads=cfg.num_heads // ranks,
                                          num_kv_heads=cfg.num_kv_heads // ranks, head_dim=cfg.head_dim,
                                          intermediate_size=self._width(cfg.intermediate_size), moe=moe)

    def _width(self, n: int) -> int:
        lo, hi = split(n, self.ranks, self.rank)
        return hi - lo

    def _slice(self, name: str) -> tuple[int, int, int] | None:
        """(axis, lo, hi) of ``name``'s slice on this rank, None when it is replicated."""
        cfg, R, r = self.full_config, self.ranks, self.rank
        shape = self.base.shape(name)
        for pat, axis, kind in _RULES:
            if pat.match(name):
                if kind == "q_heads":
                    n = cfg.num_heads // R * cfg.head_dim
                    return axis, r * n, (r + 1) * n
                if kind == "kv_heads":
                    n = cfg.num_kv_heads // R * cfg.head_dim
                    return axis, r * n, (r + 1) * n
                if kind == "vocab":
                    return (axis,) + self.vocab
                return (axis,) + split(shape[axis], R, r)
        return None

    # -- the Checkpoint interface the builder uses ------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.base

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = list(self.base.shape(name))
        if name == "tok_emb.weight":  # the rank's vocabulary rows + a zero row
            return (self.vocab[1] - self.vocab[0] + 1, shape[1])
        s = self._slice(name)
        if s is not None:
            shape[s[0]] = s[2] - s[1]
        return tuple(shape)

    def tensor(self, name: str) -> np.ndarray:
        a = self.base.tensor(name)
        if name == "tok_emb.weight":
            lo, hi = self.vocab
            return np.concatenate([a[lo:hi], np.zeros((1, a.shape[1]), a.dtype)])
        s = self._slice(name)
        if s is None:
            return a
        axis, lo, hi = s
        return np.ascontiguousarray(a[lo:hi] if axis == 0 else a[:, lo:hi])

    def quant_type(self, name: str) -> Any:
        return None  # raw blocks are not sliced: GGUF tensors load dequantized (quantize= works)

    def tensor_raw(self, name: str) -> np.ndarray:
        raise NotImplementedError("a sharded checkpoint has no raw quantized blocks")

    @property
    def rope_scaling(self) -> RopeScaling:
        return self.base.rope_scaling  # of the full config: per head, the same on every rank


class TensorParallel:
    """The rank's overrides of the builder's hooks (a mixin before :class:`CausalLM`; see the
    module docstring). Set ``tp_rank``, ``tp_size`` and ``vocab_slice`` before building."""

    tp_rank: int
    tp_size: int
    vocab_slice: tuple[int, int]
    # what the mixin reads of the Transformer it is mixed into (annotations only, no values)
    W: dict[str, tg.Tensor]
    WT: dict[str, tg.Tensor]
    config: TransformerConfig
    session: tg.Session
    dtype: tg.DType

    # -- weights -----------------------------------------------------------------------------
    def _declare_weights(self, ckpt) -> None:
        super()._declare_weights(ckpt)  # type: ignore[misc]
        s = self.session
        # kept out of W: not weights (not quantized, not counted, no transposed view)
        self._tp_vocab_map = s.persistent((self.config.vocab_size, 1), tg.int32, name="tp.vocab_map")
        self._tp_zero = s.persistent((1,), self.dtype, name="tp.zero")

    def _upload_weights(self, ckpt) -> None:
        super()._upload_weights(ckpt)  # type: ignore[misc]
        V = self.config.vocab_size
        lo, hi = self.vocab_slice
        m = np.full((V, 1), hi - lo, np.int32)  # outside the slice: the zero row after it
        m[lo:hi, 0] = np.arange(hi - lo, dtype=np.int32)
        self.session.upload(self._tp_vocab_map, m)
        self.session.upload(self._tp_zero, np.zeros(1))
        emb = self.W["tok_emb.weight"]
        # tied LM head: the slice's rows of the embedding shard, without its zero row
        self._tied_head = tg.view(emb, (emb.shape[1], hi - lo), (1, emb.shape[1]), 0, name="lm_head.tied")

    # -- graph hooks -------------------------------------------------------------------------
    def _zeros(self, shape: tuple[int, ...]) -> tg.Tensor:
        """A zero tensor of ``shape`` (a stride-0 view of one zero element: no memory, no node to run)."""
        return tg.view(self._tp_zero, shape, (0,) * len(shape), 0, name="tp.zeros")

    def _gather_cols(self, y: tg.Tensor, lo: int, full: int, name: str) -> tg.Tensor:
        """Every rank's ``y`` [T, w] (this rank's columns ``lo .. lo + w``) gathered into
        [T, full]: zero-padded to ``full`` columns, then ``all_reduce``."""
        T, w = y.shape
        if lo:
            y = tg.concat(self._zeros((T, lo)), y, axis=1, name=f"{name}.pad_left")
        if full - lo - w:
            y = tg.concat(y, self._zeros((T, full - lo - w)), axis=1, name=f"{name}.pad_right")
        return tg.all_reduce(y, name=name)

    def _embed(self, ids: tg.Tensor) -> tg.Tensor:
        """Vocabulary-parallel lookup: ``ids`` [T] -> [T, hidden], the same on every rank."""
        T = ids.shape[0]
        local = tg.reshape(tg.get_rows(self._tp_vocab_map, ids, name="tok_emb.local_ids"), (T,),
                           name="tok_emb.local")
        rows = tg.get_rows(self.W["tok_emb.weight"], local, name="tok_emb.shard", dtype=self.dtype)
        return tg.all_reduce(rows, name="tok_emb")

    def _row_linear(self, x: tg.Tensor, prefix: str) -> tg.Tensor:
        """Row-parallel ``o`` / ``down``: the partial product over this rank's input columns,
        summed over ranks, then the bias (once)."""
        y = tg.all_reduce(tg.matmul(x, self.WT[f"{prefix}.weight"], name=prefix), name=f"{prefix}.reduce")
        b = self.W.get(f"{prefix}.bias")
        return tg.add(y, b, name=f"{prefix}.bias") if b is not None else y

    def _moe(self, x: tg.Tensor, i: int) -> tg.Tensor:
        """The MoE block over this rank's slice of every expert (and shared expert), summed."""
        return tg.all_reduce(super()._moe(x, i), name=f"layers.{i}.moe.reduce")  # type: ignore[misc]

    def _whole_norm(self, y: tg.Tensor, P: str, p: str, heads: int) -> tg.Tensor:
        """OLMo 2's norm over the whole q or k projection: gather it ([T, all heads * hd]), norm
        with the full weight, keep this rank's ``heads`` -> [T, heads, hd]."""
        hd = self.config.head_dim
        T, w = y.shape
        full = w * self.tp_size
        g = self._gather_cols(y, self.tp_rank * w, full, name=f"{P}.{p}_gather")
        n = tg.rms_norm(g, self.W[f"{P}.{p}_norm.weight"], self.config.norm_eps, name=f"{P}.{p}_norm")
        return tg.view(n, (T, heads, hd), (full, hd, 1), self.tp_rank * w, name=f"{P}.{p}")

    def _lm_head(self, h: tg.Tensor) -> tg.Tensor:
        """This rank's slice of the logits, gathered: [T, hidden] -> [T, vocab] on every rank."""
        lo, hi = self.vocab_slice
        w = self.WT["lm_head.weight"] if "lm_head.weight" in self.WT else self._tied_head
        y = tg.matmul(h, w, name="lm_head")
        if "lm_head.bias" in self.W:  # Phi-2: the slice's bias
            y = tg.add(y, self.W["lm_head.bias"], name="lm_head.bias")
        return self._gather_cols(y, lo, self.config.vocab_size, name="lm_head.gather")


class RankModel(TensorParallel, CausalLM):
    """Rank ``rank`` of a tensor-parallel model: a CausalLM whose graphs all-reduce over ``comm``.
    With the in-process communicator it runs on its own NumPy session, only together with the
    other ranks (:class:`ShardedModel`: its first ``all_reduce`` waits for them). With an NCCL
    communicator (:func:`load_rank`) it is this process's model on its GPU; every process makes the
    same calls, and a ``seed`` of None is drawn from the communicator's shared seed, so all ranks
    sample the same tokens."""

    def __init__(self, ckpt: ShardedCheckpoint, comm: Any, backend: str = "numpy", **kw: Any) -> None:
        self.tp_rank, self.tp_size, self.vocab_slice = ckpt.rank, ckpt.ranks, ckpt.vocab
        self._comm, self._seed_calls = comm, 0
        super().__init__(ckpt, backend=backend, **kw)  # type: ignore[arg-type]
        attach(self.session, comm, ckpt.rank)

    def _shared_seed(self, seed: Any) -> Any:
        base = getattr(self._comm, "seed_base", None)
        if seed is not None or base is None:
            return seed
        self._seed_calls += 1  # the same count on every rank: they make the same calls
        return int(np.random.default_rng([base, self._seed_calls]).integers(0, 2**63))

    def generate(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, eos_token_id: Any = None, use_cache: bool = True,
                 seed: int | None = None, *, ignore_eos: bool = False) -> list[int]:
        return super().generate(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, use_cache,
                                self._shared_seed(seed), ignore_eos=ignore_eos)

    def generate_stream(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                        top_k: int = 50, top_p: float = 1.0, eos_token_id: Any = None, use_cache: bool = True,
                        seed: int | None = None, *, ignore_eos: bool = False) -> Iterator[int]:
        return super().generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                                       use_cache, self._shared_seed(seed), ignore_eos=ignore_eos)

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 100, temperature: float = 1.0,
                       top_k: int = 50, top_p: float = 1.0, eos_token_id: Any = None, seed: Any = None,
                       **kw: Any) -> list[list[int]]:
        if seed is None and isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)):
            seed = [self._shared_seed(None) for _ in prompts]  # one per prompt, as drawn on every rank
        elif isinstance(seed, Sequence):
            seed = [self._shared_seed(s) for s in seed]
        return super().generate_batch(prompts, max_new_tokens, temperature, top_k, top_p, eos_token_id, seed, **kw)

    def close(self) -> None:
        super().close()
        if hasattr(self._comm, "close"):  # an NCCL communicator is this model's own
            self._comm.close()


def launched_env(ranks: int, backend: str = "cuda") -> Any:
    """This process's ``tinygraph.distributed.DistEnv``, checked to be one of ``ranks`` processes;
    BackendError (how to start them) otherwise."""
    from tinygraph.distributed import DistEnv
    from tinygraph.errors import BackendError

    env = DistEnv.from_env()
    if env is None or env.world_size != ranks:
        have = "no WORLD_SIZE" if env is None else f"WORLD_SIZE={env.world_size}"
        raise BackendError(f"tensor_parallel={ranks} on the {backend} backend runs one process per rank ({have}): "
                           f"start it with python -m tinygraph.launch --gpus {ranks} ...")
    return env


def load_rank(ckpt: Checkpoint, ranks: int, dtype: str = "float16", max_context: int | None = None,
              quantize: str | None = None, env: Any = None, timeout: float = 120.0,
              backend: str = "cuda") -> RankModel:
    """This process's rank of a model split over ``ranks`` processes (started by ``python -m
    tinygraph.launch --gpus R``; ``env``: its ``tinygraph.distributed.DistEnv``, default from the
    environment). ``backend`` "cuda": a session on GPU ``LOCAL_RANK`` and an NCCL communicator;
    "numpy": a NumPy session and a ``SocketCommunicator`` (TCP through rank 0; the same sums as
    the in-process simulation). Then the rank's shard is loaded."""
    env = launched_env(ranks, backend) if env is None else env
    check_shardable(ckpt.config, ranks)
    comm = None
    if backend == "cuda":
        from tinygraph.backends.cuda.backend import CudaBackend
        from tinygraph.backends.cuda.nccl import NcclCommunicator

        session = tg.Session(backend=CudaBackend(env.local_rank))
    elif backend in ("numpy", "auto"):
        session = tg.Session(backend="numpy")
    else:
        raise ValueError(f"load_rank: backend {backend!r} is not 'cuda' or 'numpy'")
    try:
        if backend == "cuda":
            comm = NcclCommunicator(env, session.backend.device, timeout)
        else:
            from tinygraph.distributed import SocketCommunicator

            comm = SocketCommunicator(env, timeout)
        m = RankModel(ShardedCheckpoint(ckpt, ranks, env.rank), comm, session=session, dtype=dtype,
                      max_context=max_context, quantize=quantize)
        m._owns_session = True  # made here for this model alone: closing the model frees its memory
        return m
    except BaseException:
        if comm is not None:
            comm.close()
        session.close()
        raise


def per_process(backend: str, env: Any) -> bool:
    """Whether a split model runs one rank per process: always on CUDA (NCCL), on NumPy when
    started as several processes (``env``: this process's ``DistEnv`` or None)."""
    return backend == "cuda" or (env is not None and env.world_size > 1)


def load_sharded(ckpt: Checkpoint, ranks: int, backend: str = "numpy", env: Any = None,
                 **kw: Any) -> "RankModel | ShardedModel":
    """A model split over ``ranks``: this process's :class:`RankModel` where :func:`per_process`
    (``env``: default from the environment), else every rank simulated in this process
    (:class:`ShardedModel`). ``kw``: dtype, max_context, quantize."""
    if per_process(backend, env):
        return load_rank(ckpt, ranks, env=env, backend="cuda" if backend == "cuda" else "numpy", **kw)
    return ShardedModel(ckpt, ranks, **kw)


def _same(results: Sequence[Any], what: str) -> Any:
    """Rank 0's result, after checking that every rank got the same (they compute the same
    numbers: a difference is a bug, not noise)."""
    first = results[0]
    for r, x in enumerate(results[1:], 1):
        same = np.array_equal(np.asarray(x), np.asarray(first)) if isinstance(x, np.ndarray) else x == first
        if not same:
            raise RuntimeError(f"tensor parallel: rank {r}'s {what} differs from rank 0's")
    return first


def _seed(seed: int | None) -> int | None:
    """``seed``, or one drawn now when None: each rank drawing its own would sample different
    tokens on different ranks."""
    return int(np.random.default_rng().integers(0, 2**63)) if seed is None else seed


class ShardedModel:
    """A model split over ``ranks`` simulated ranks (threads in this process; see the module
    docstring). ``generate``, ``generate_stream``, ``step``, ``model(ids)`` and ``get_logits``
    run every rank and return rank 0's result (every rank computes the same tokens and logits;
    ``generate``/``step`` check it); ``generate_batch`` runs every rank's engine. ``step_graph``/``last_graph`` are
    rank 0's graphs (for dumps: they show the ``all_reduce`` nodes). Calls are serialised by a
    lock. ``timeout``: seconds a rank waits in one ``all_reduce`` for the others (a failing rank
    stops the others at once; the error raised is the failing rank's). Not available on the
    whole model: ``decode_loop``, ``profile_decode``, the serving ``Engine``; any backend but
    NumPy."""

    def __init__(self, ckpt: Checkpoint, ranks: int, dtype: str = "float32", max_context: int | None = None,
                 quantize: str | None = None, timeout: float = 120.0) -> None:
        check_shardable(ckpt.config, ranks)
        self.comm = InProcessCommunicator(int(ranks), timeout)
        self.ranks: list[RankModel] = []
        self._lock = threading.RLock()
        try:
            for r in range(ranks):
                self.ranks.append(RankModel(ShardedCheckpoint(ckpt, ranks, r), self.comm, dtype=dtype,
                                            max_context=max_context, quantize=quantize))
        except BaseException:
            self.close()
            raise
        self.config: TransformerConfig = ckpt.config  # the whole model's (ranks hold their part)
        m = self.ranks[0]
        self.spec, self.tokenizer, self.chat_template = m.spec, m.tokenizer, m.chat_template
        self.dtype, self.max_context, self.windows = m.dtype, m.max_context, m.windows

    @property
    def tensor_parallel(self) -> int:
        return len(self.ranks)

    def _all(self, fn: Callable[[RankModel], Any]) -> list[Any]:
        """``fn(rank model)`` for every rank, each on its own thread; results in rank order."""
        with self._lock:
            return run_ranks(self.comm, [lambda m=m: fn(m) for m in self.ranks])

    # -- running -------------------------------------------------------------------------------
    def step(self, ids, start: int, want: str = "logits", sampling: tuple[np.ndarray, np.ndarray] | None = None
             ) -> Any:
        """As :meth:`models.transformer.Transformer.step`, on every rank."""
        return _same(self._all(lambda m: m.step(ids, start, want, sampling=sampling)), f"step ({want})")

    def __call__(self, input_ids, position_ids=None, past_key_values: KVCache | None = None,
                 use_cache: bool = True) -> tuple[HostArray, KVCache | None]:
        """As :meth:`Transformer.__call__`: (final-normed hidden [T, hidden], rank 0's cache). The
        cache given back continues every rank's own cache (only its ``length`` is read)."""
        n = None if past_key_values is None else past_key_values.length

        def call(m: RankModel):
            past = None if n is None else KVCache(m.kv_k, m.kv_v, m.max_context, n)
            return m(input_ids, position_ids, past, use_cache)
        outs = self._all(call)
        _same([h.to_numpy() for h, _ in outs], "hidden states")
        return outs[0]

    def get_logits(self, hidden: "HostArray | np.ndarray") -> HostArray:
        """Logits [T, vocab] of final-normed hidden states [T, hidden] (gathered from every rank)."""
        return self._all(lambda m: m.get_logits(hidden))[0]

    def generate(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 use_cache: bool = True, seed: int | None = None, *, ignore_eos: bool = False) -> list[int]:
        """As :meth:`models.model.CausalLM.generate`, on every rank (a ``seed`` of None is drawn
        once here, so every rank samples the same stream)."""
        seed = _seed(seed)
        return _same(self._all(lambda m: m.generate(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                                                    use_cache, seed, ignore_eos=ignore_eos)), "generated ids")

    def generate_stream(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                        top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                        use_cache: bool = True, seed: int | None = None, *, ignore_eos: bool = False
                        ) -> Iterator[int]:
        """As :meth:`CausalLM.generate_stream`: every rank's stream advanced one token at a time,
        all ranks together. Bad arguments raise here, before the first token."""
        seed = _seed(seed)
        streams = [m.generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, use_cache,
                                     seed, ignore_eos=ignore_eos) for m in self.ranks]
        return self._lockstep(streams)

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 100, **kw: Any
                       ) -> list[list[int]]:
        """As :meth:`CausalLM.generate_batch` (same keywords): every rank runs its own engine over
        its paged KV cache (its KV heads); the schedulers make the same decisions from the same
        tokens, so their steps (and all-reduces) line up. Seeds of None are drawn here."""
        seed = kw.pop("seed", None)
        if seed is None or isinstance(seed, (int, np.integer)):
            seed = [_seed(seed) for _ in prompts] if isinstance(prompts, Sequence) else seed
        return _same(self._all(lambda m: m.generate_batch(prompts, max_new_tokens, seed=seed, **kw)), "batch ids")

    def _lockstep(self, streams: list[Iterator[int]]) -> Iterator[int]:
        done = object()
        try:
            while True:
                toks = self._all(lambda m: next(streams[m.tp_rank], done))
                tok = _same(toks, "next token")
                if tok is done:
                    return
                yield tok
        finally:
            for s in streams:
                s.close()

    # -- inspection ------------------------------------------------------------------------------
    def step_graph(self, T: int, want: str = "logits", fuse: bool = True,
                   long_rope: bool = False) -> tuple[tg.Graph, tg.Tensor, tg.Tensor]:
        """Rank 0's step graph (see :meth:`Transformer.step_graph`), with its ``all_reduce``
        nodes; building it runs nothing."""
        return self.ranks[0].step_graph(T, want, fuse, long_rope)

    @property
    def last_graph(self) -> tg.Graph | None:
        return getattr(self.ranks[0], "last_graph", None)

    @property
    def session(self) -> tg.Session:
        """Rank 0's session."""
        return self.ranks[0].session

    def memory_usage(self) -> dict:
        """Rank 0's ``memory_usage()`` plus ``"per_rank"``: every rank's."""
        per = [m.memory_usage() for m in self.ranks]
        return dict(per[0], per_rank=per)

    # -- lifetime --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self.ranks or any(m.closed for m in self.ranks)

    def close(self) -> None:
        """Close every rank (idempotent)."""
        with self._lock:
            for m in self.ranks:
                m.close()

    def __enter__(self) -> "ShardedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
