"""CausalLM: a Transformer plus generation (PyGPUkit-compatible surface)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .sampling import check_sampling_args, sample
from .transformer import Transformer


class CausalLM(Transformer):
    """A loaded model: ``model(input_ids)``, ``get_logits``, ``generate``, ``generate_stream``."""

    def generate_stream(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                        top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                        use_cache: bool = True, seed: int | None = None) -> Iterator[int]:
        """Yield new token ids one at a time as they are produced (prompt not included).

        Stops after ``max_new_tokens``, at an ``eos_token_id`` (yielded), or when the context is
        full (with a notice on stderr). ``temperature=0`` is greedy; ``seed`` makes sampling
        reproducible."""
        check_sampling_args(temperature, top_k, top_p, max_new_tokens)
        ids = [int(i) for i in np.asarray(input_ids).reshape(-1)]
        if not ids:
            raise ValueError("input_ids is empty: give at least one prompt token")
        if len(ids) > self.max_context:
            raise ValueError(f"prompt of {len(ids)} tokens is longer than the context of {self.max_context}")
        eos = {eos_token_id} if isinstance(eos_token_id, (int, np.integer)) else set(eos_token_id or ())
        rng = np.random.default_rng(seed)
        greedy = temperature == 0
        want = "argmax" if greedy else "logits"
        out = self.step(ids, 0, want)
        for n in range(max_new_tokens):
            tok = out if greedy else sample(out, temperature, top_k, top_p, rng)
            ids.append(tok)
            yield tok
            if tok in eos or n == max_new_tokens - 1:
                return
            if len(ids) >= self.max_context:
                import sys
                print(f"tinygraph: context of {self.max_context} tokens is full; stopping", file=sys.stderr)
                return
            out = self.step([tok], len(ids) - 1, want) if use_cache else self.step(ids, 0, want)

    def generate(self, input_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 use_cache: bool = True, seed: int | None = None) -> list[int]:
        """Prompt ids followed by the generated ids (see :meth:`generate_stream`)."""
        prompt = [int(i) for i in np.asarray(input_ids).reshape(-1)]
        return prompt + list(self.generate_stream(prompt, max_new_tokens, temperature, top_k, top_p,
                                                  eos_token_id, use_cache, seed))
