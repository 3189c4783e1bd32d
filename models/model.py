"""CausalLM: a Transformer plus generation (PyGPUkit-compatible surface)."""
from __future__ import annotations

import math
import sys
import threading
from typing import Iterator, Sequence

import numpy as np

import tinygraph as tg
from tinygraph.errors import TinygraphError

from .sampling import check_sampling_args, effective_temperature
from .transformer import Transformer, token_ids


class GenerationTakenOverError(TinygraphError, RuntimeError):
    """A ``generate_stream`` (or ``decode_loop``) was resumed after another generation, a forward
    call or a ``step`` on the same model overwrote the KV cache it was decoding from."""


def _prompt_ids(input_ids: Sequence[int]) -> list[int]:
    """``input_ids`` as a list of Python ints; ValueError naming the problem otherwise."""
    a = token_ids(input_ids)
    if a.size == 0:
        raise ValueError("input_ids is empty: give at least one prompt token")
    return [int(i) for i in a]


def _eos_ids(eos_token_id) -> list[int]:
    """``eos_token_id`` (an int or a sequence of ints) as a list; ValueError naming the value otherwise."""
    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if is_int(eos_token_id):
        eos = [eos_token_id]
    elif isinstance(eos_token_id, (str, bytes)) or not isinstance(eos_token_id, (Sequence, np.ndarray, set, frozenset)):
        eos = None
    else:
        eos = list(eos_token_id)
    if eos is None or not all(is_int(e) for e in eos):
        raise ValueError(f"eos_token_id must be an int or a sequence of ints (None: the model's EOS ids), "
                         f"got {eos_token_id!r}")
    if any(e < 0 for e in eos):
        raise ValueError(f"eos_token_id must be token ids >= 0, got {eos_token_id!r}")
    return [int(e) for e in eos]


def _check_generate_args(temperature, top_k, top_p, max_new_tokens, eos_token_id, seed=None) -> None:
    """Type and range checks (ValueError naming the bad value) before sampling.check_sampling_args."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    for name, v in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    for name, v in (("top_k", top_k), ("max_new_tokens", max_new_tokens)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    if eos_token_id is not None:
        _eos_ids(eos_token_id)


class CausalLM(Transformer):
    """A loaded model: ``model(input_ids)``, ``get_logits``, ``generate``, ``generate_stream``
    (lifetime as :class:`Transformer`).

    Threads: one model may be used from several threads. The KV cache is the model's single
    sequence state, so each use of it holds the model's lock: ``generate()`` for the whole call
    (a second thread's call waits and then gets exactly the tokens of a single-threaded run),
    ``step``/``model(...)`` per call, a ``generate_stream`` per token. A stream owns the cache
    from its first token to its end: if another generation, forward call or step runs on the
    model in between, resuming the older stream raises :class:`GenerationTakenOverError`.
    ``close()`` from another thread waits for the running step; the using thread then gets
    :class:`tinygraph.session.SessionClosedError`."""

    def __init__(self, *args, **kwargs) -> None:
        self._lock = threading.RLock()
        self._kv_owner: object | None = None  # the generation whose sequence the KV cache holds
        super().__init__(*args, **kwargs)

    # -- the KV cache's owner ----------------------------------------------------------------------
    def _claim(self) -> object:
        """Make a new owner of the KV cache (call with the lock held); earlier streams are taken over."""
        self._kv_owner = token = object()
        return token

    def _check_owner(self, token: object) -> None:
        self._check_open()
        if self._kv_owner is not token:
            raise GenerationTakenOverError(
                "this generation's state was taken over: another generation, forward call or step ran on "
                "the model since it started and overwrote its KV cache; start it again, or use one model "
                "per concurrent stream")

    def step(self, ids, start: int, want: str = "logits", times: dict[int, float] | None = None,
             sampling: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """As :meth:`Transformer.step`, holding the model's lock; it takes over the KV cache from
        any running stream."""
        with self._lock:
            self._claim()
            return super().step(ids, start, want, times, sampling)

    def decode_loop(self, token: int, start: int, steps: int, want: str = "argmax",
                    sampling: tuple[np.ndarray, np.ndarray] | None = None, lookahead: int = 4) -> Iterator[int]:
        """As :meth:`Transformer.decode_loop`; each step holds the model's lock, and a loop whose KV
        cache was taken over meanwhile raises :class:`GenerationTakenOverError`."""
        with self._lock:
            owner = self._claim()
            loop = super().decode_loop(token, start, steps, want, sampling, lookahead)
        return self._owned(loop, owner)

    def _owned(self, loop: Iterator[int], owner: object) -> Iterator[int]:
        """``loop``'s items, each made under the lock while ``owner`` still owns the cache."""
        try:
            while True:
                with self._lock:
                    self._check_owner(owner)
                    try:
                        tok = next(loop)
                    except StopIteration:
                        return
                yield tok
        finally:
            with self._lock:
                loop.close()

    # -- generation ------------------------------------------------------------------------------
    def generate_stream(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                        top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                        use_cache: bool = True, seed: int | None = None, *, ignore_eos: bool = False) -> Iterator[int]:
        """Yield new token ids one at a time as they are produced (prompt not included).

        Stops after ``max_new_tokens``, at an end-of-sequence id (yielded), or when the context is
        full (with a notice on stderr). The end-of-sequence ids are ``eos_token_id`` (an int or a
        sequence of ints), or with None (the default) the model's own: ``config.eos_token_ids``,
        from generation_config.json, config.json or the GGUF metadata. ``ignore_eos=True``
        generates on past them.

        ``temperature=0`` is greedy (argmax), and so is every temperature below
        ``models.sampling.MIN_TEMPERATURE`` (1e-6: at smaller ones the float32 division of the
        logits by the temperature overflows). Otherwise each token is drawn by the ``sample`` op
        inside the step graph, on the model's backend (temperature, then top-k, then top-p;
        exact semantics in ``tinygraph.ops.sample``): only the token id comes back to the host.
        Token ``n`` of the call uses the op's random stream ``(seed, n)``; ``seed`` (an int,
        taken mod 2**64) makes sampling reproducible on a given backend, None draws one from
        ``np.random.default_rng()``. Bad arguments raise ValueError here, before the first token
        is asked for.

        The stream owns the model's KV cache from its first token on (see the class docstring):
        resumed after another generation used the model, it raises
        :class:`GenerationTakenOverError`."""
        self._check_open()
        _check_generate_args(temperature, top_k, top_p, max_new_tokens, eos_token_id, seed)
        ids = _prompt_ids(input_ids)
        if len(ids) > self.max_context:
            raise ValueError(f"prompt of {len(ids)} tokens is longer than the context of {self.max_context} "
                             "(load with a larger max_context)")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary [0, {self.config.vocab_size})")
        eos = set() if ignore_eos else set(self.config.eos_token_ids if eos_token_id is None else _eos_ids(eos_token_id))
        return self._generate(ids, max_new_tokens, effective_temperature(temperature), top_k, top_p, eos, use_cache,
                              seed)

    def _generate(self, ids: list[int], max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  eos: set[int], use_cache: bool, seed: int | None) -> Iterator[int]:
        if max_new_tokens == 0:
            return
        greedy = temperature == 0
        want = "argmax" if greedy else "sample"
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**63))

        def params(n: int) -> tuple[np.ndarray, np.ndarray] | None:
            return None if greedy else tg.sample_params(temperature, top_k, top_p, seed, counter=n)
        with self._lock:  # step and decode_loop each claim the KV cache; the loop checks it per token
            tok = self.step(ids, 0, want, sampling=params(0))
            # with the cache: every later token from one device-side decode loop (no host round trip
            # per token); it stops at max_new_tokens or at the end of the context, whichever is first
            steps = min(max_new_tokens - 1, self.max_context - len(ids) - 1)
            rest = self.decode_loop(tok, len(ids), steps, want, params(1)) if use_cache and steps > 0 else None
        try:
            for n in range(max_new_tokens):
                ids.append(tok)
                yield tok
                if tok in eos or n == max_new_tokens - 1:
                    return
                if len(ids) >= self.max_context:
                    print(f"tinygraph: context of {self.max_context} tokens is full; stopping after {n + 1} of "
                          f"{max_new_tokens} new tokens", file=sys.stderr)
                    return
                # without the cache every step runs the whole sequence again (and claims the cache)
                tok = next(rest) if rest is not None else self.step(ids, 0, want, sampling=params(n + 1))
        finally:
            if rest is not None:
                rest.close()

    def generate(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 use_cache: bool = True, seed: int | None = None, *, ignore_eos: bool = False) -> list[int]:
        """Prompt ids followed by the generated ids (see :meth:`generate_stream`). Holds the
        model's lock for the whole call, so concurrent calls from several threads run one after
        the other and each returns what it would alone."""
        with self._lock:
            stream = self.generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                                          use_cache, seed, ignore_eos=ignore_eos)
            return _prompt_ids(input_ids) + list(stream)

    # -- many sequences ----------------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 100, temperature: float = 1.0,
                       top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                       seed: "int | Sequence[int] | None" = None, *, ignore_eos: bool = False,
                       max_batch: int = 64, kv_memory: int | None = None) -> list[list[int]]:
        """The new ids (prompt not included) of each prompt in ``prompts``, decoded together:
        continuous batching over a paged KV cache (``models.engine.Engine``), the weights read
        once per step for every running sequence. Prompts may differ in length; each sequence
        stops at its own EOS or limit. Arguments as :meth:`generate_stream`; ``seed`` may also be
        one int per prompt. Each list equals ``generate(prompt, ..., seed=that seed)[len(prompt):]``
        (greedy always; sampled with a seed given). ``max_batch``: most sequences per step;
        ``kv_memory``: bytes of the KV pool (default: room for 4 full contexts; when it runs out,
        the newest sequences wait and are recomputed). The pool is kept for later calls with the
        same settings and released by ``close()``."""
        from .engine import Engine, SamplingParams
        self._check_open()
        _check_generate_args(temperature, top_k, top_p, max_new_tokens, eos_token_id)
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not len(prompts):
            raise ValueError("prompts must be a non-empty list of token-id sequences")
        ids = [_prompt_ids(p) for p in prompts]
        seeds = list(seed) if isinstance(seed, Sequence) else [seed] * len(ids)
        if len(seeds) != len(ids):
            raise ValueError(f"{len(seeds)} seeds for {len(ids)} prompts")
        for s in seeds:
            _check_generate_args(temperature, top_k, top_p, max_new_tokens, None, s)
        eos = frozenset() if ignore_eos else frozenset(
            self.config.eos_token_ids if eos_token_id is None else _eos_ids(eos_token_id))
        with self._lock:
            key = (max_batch, kv_memory)
            eng = getattr(self, "_batch_engine", None)
            if eng is None or eng[0] != key:
                if eng is not None:
                    eng[1].close()
                self._batch_engine = eng = (key, Engine(self, max_batch=max_batch, kv_memory=kv_memory))
            engine = eng[1]
            reqs = [engine.submit(p, SamplingParams(max_new_tokens, temperature, top_k, top_p, s, eos))
                    for p, s in zip(ids, seeds)]
            try:
                engine.run_until_done(reqs)
            finally:  # interrupted: free what the unfinished requests hold
                if not all(r.done for r in reqs):
                    for r in reqs:
                        r.cancel()
                    engine.reap()
            for r in reqs:
                if r.error is not None:
                    raise r.error
            return [list(r.tokens) for r in reqs]

    def close(self) -> None:
        eng = getattr(self, "_batch_engine", None)
        if eng is not None:
            self._batch_engine = None
            eng[1].close()
        super().close()
