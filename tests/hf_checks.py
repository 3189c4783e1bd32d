"""The checks every model family makes against its HF reference (``reference.npz`` from
tools/make_fixtures.py), written once: full-sequence logits, logits step by step through the KV
cache plus greedy ids with and without it, and half precision. ``ref["greedy_cached"]``, where a
fixture has it, is HF's argmax loop through its own KV cache (longrope: the two loops differ);
else ``ref["greedy"]`` serves both. :func:`reference_tests` turns the three into a module's
parametrized tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import numpy as np
import pytest

from conftest import rel_err

FIX = Path(__file__).parent / "fixtures"

#: dtype -> (relative logit tolerance, greedy tokens that must agree)
HALF = {"float16": (3e-2, 8), "bfloat16": (5e-2, 4)}


def reference(fam: str) -> dict:
    """Fixture ``fam``'s HF reference arrays (``greedy_cached`` defaulting to ``greedy``)."""
    r = dict(np.load(FIX / fam / "reference.npz"))
    r.setdefault("greedy_cached", r["greedy"])  # longrope: HF's cached loop differs (see README_fixtures)
    return r


def hf_config(fam: str, **changes) -> dict:
    """Fixture ``fam``'s config.json as a dict, with ``changes`` applied."""
    d = json.loads((FIX / fam / "config.json").read_text())
    d.update(changes)
    return d


def _cached(ref) -> np.ndarray:
    return ref["greedy_cached"][0] if "greedy_cached" in ref else ref["greedy"][0]


def check_full_sequence_logits(m, ref, tol: float = 1e-4) -> None:
    logits = m.get_logits(m(ref["input_ids"][0])[0]).to_numpy()
    for t in range(logits.shape[0]):
        assert rel_err(logits[t], ref["logits"][0, t]) < tol, f"position {t}"


def check_incremental_decode_and_greedy(m, ref, tol: float = 1e-4) -> None:
    prompt, greedy, cached_ids = ref["input_ids"][0], ref["greedy"][0], _cached(ref)
    hidden, cache = m(prompt)
    steps = [m.get_logits(hidden).to_numpy()[-1]]
    for tok in cached_ids[len(prompt):-1]:
        hidden, cache = m([tok], past_key_values=cache)
        steps.append(m.get_logits(hidden).to_numpy()[-1])
    for k, (got, want) in enumerate(zip(steps, ref["decode_logits"])):
        assert rel_err(got, want) < tol, f"decode step {k}"
    # fused prefill + the fused decode loop (argmax on the backend); without the cache every step
    # is a full forward, as HF's argmax loop
    assert m.generate(prompt, max_new_tokens=8, temperature=0) == list(cached_ids)
    assert m.generate(prompt, max_new_tokens=8, temperature=0, use_cache=False) == list(greedy)


def check_half_precision(m, ref, dtype: str) -> None:
    tol, n_same = HALF[dtype]
    prompt = ref["input_ids"][0]
    logits = m.get_logits(m(prompt)[0]).to_numpy()
    assert rel_err(logits, ref["logits"][0]) < tol
    out = m.generate(prompt, max_new_tokens=8, temperature=0)
    assert out[: len(prompt) + n_same] == list(_cached(ref)[: len(prompt) + n_same])


def reference_tests(families: Iterable[str], load: Callable[[str, str, str], ContextManager[Any]],
                    check_model: Callable[[Any, str], None] | None = None) -> tuple[Callable[..., None], ...]:
    """The three checks above as tests parametrized over ``families``, for a test module to bind
    at its top level (pytest collects them under these names)::

        test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision = \\
            reference_tests(FAMILIES, load)

    ``load(fam, backend, dtype)`` opens fixture ``fam``'s model (whichever file format);
    ``check_model(m, fam)``, where given, is asserted on the float32 model before its logits."""
    fams = pytest.mark.parametrize("fam", list(families))

    @fams
    def test_full_sequence_logits(fam: str, backend: str) -> None:
        with load(fam, backend, "float32") as m:
            if check_model is not None:
                check_model(m, fam)
            check_full_sequence_logits(m, reference(fam))

    @fams
    def test_incremental_decode_and_greedy(fam: str, backend: str) -> None:
        with load(fam, backend, "float32") as m:
            check_incremental_decode_and_greedy(m, reference(fam))

    @pytest.mark.parametrize("dtype", list(HALF))
    @fams
    def test_half_precision(fam: str, dtype: str, backend: str) -> None:
        with load(fam, backend, dtype) as m:
            check_half_precision(m, reference(fam), dtype)

    return test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision
