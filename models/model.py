"""CausalLM: a Transformer plus generation (PyGPUkit-compatible surface)."""
from __future__ import annotations

import math
import sys
from typing import Iterator, Sequence

import numpy as np


import tinygraph as tg

from .sampling import check_sampling_args
from .transformer import Transformer


def _prompt_ids(input_ids: Sequence[int]) -> list[int]:
    """``input_ids`` as a list of Python ints; ValueError naming the problem otherwise."""
    if isinstance(input_ids, (str, bytes)):
        raise ValueError("input_ids must be token ids (ints), got text: encode it with model.tokenizer first")
    a = np.asarray(input_ids)
    if a.size == 0:
        raise ValueError("input_ids is empty: give at least one prompt token")
    if a.dtype.kind not in "iu":
        raise ValueError(f"input_ids must be integer token ids, got an array of dtype {a.dtype}")
    return [int(i) for i in a.reshape(-1)]


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
    eos = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id or ())
    if isinstance(eos_token_id, (str, bytes)) or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                                                         for e in eos):
        raise ValueError(f"eos_token_id must be an int or a sequence of ints, got {eos_token_id!r}")


class CausalLM(Transformer):
    """A loaded model: ``model(input_ids)``, ``get_logits``, ``generate``, ``generate_stream``
    (lifetime as :class:`Transformer`)."""

    # -- generation ------------------------------------------------------------------------------
    def generate_stream(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                        top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                        use_cache: bool = True, seed: int | None = None) -> Iterator[int]:
        """Yield new token ids one at a time as they are produced (prompt not included).

        Stops after ``max_new_tokens``, at an ``eos_token_id`` (yielded), or when the context is
        full (with a notice on stderr). ``temperature=0`` is greedy (argmax); otherwise each token
        is drawn by the ``sample`` op inside the step graph, on the model's backend
        (temperature, then top-k, then top-p; exact semantics in ``tinygraph.ops.sample``): only
        the token id comes back to the host. Token ``n`` of the call uses the op's random stream
        ``(seed, n)``; ``seed`` (an int, taken mod 2**64) makes sampling reproducible on a given
        backend, None draws one from ``np.random.default_rng()``. Bad arguments raise ValueError
        here, before the first token is asked for."""
        self._check_open()
        _check_generate_args(temperature, top_k, top_p, max_new_tokens, eos_token_id, seed)
        ids = _prompt_ids(input_ids)
        if len(ids) > self.max_context:
            raise ValueError(f"prompt of {len(ids)} tokens is longer than the context of {self.max_context} "
                             "(load with a larger max_context)")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary [0, {self.config.vocab_size})")
        return self._generate(ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, use_cache, seed)

    def _generate(self, ids: list[int], max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  eos_token_id, use_cache: bool, seed: int | None) -> Iterator[int]:
        eos = {eos_token_id} if isinstance(eos_token_id, (int, np.integer)) else set(eos_token_id or ())
        if max_new_tokens == 0:
            return
        greedy = temperature == 0
        want = "argmax" if greedy else "sample"
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**63))

        def params(n: int) -> tuple[np.ndarray, np.ndarray] | None:
            return None if greedy else tg.sample_params(temperature, top_k, top_p, seed, counter=n)
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
                tok = next(rest) if rest is not None else self.step(ids, 0, want, sampling=params(n + 1))
        finally:
            if rest is not None:
                rest.close()

    def generate(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 use_cache: bool = True, seed: int | None = None) -> list[int]:
        """Prompt ids followed by the generated ids (see :meth:`generate_stream`)."""
        stream = self.generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                                      use_cache, seed)
        return _prompt_ids(input_ids) + list(stream)
