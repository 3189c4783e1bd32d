"""A long step runs in chunks of ``PREFILL_CHUNK`` tokens (models/transformer.py): the same
logits, hidden states and greedy ids as one step over the whole prompt, with the whole call's
RoPE regime (longrope's long factors, dynamic NTK) and sliding windows across chunk borders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinygraph.models.transformer as tr
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
FAMILIES = ["llama", "gpt2", "gemma2", "phi3", "llama_dynamic", "qwen3_yarn", "mixtral"]


def _run(fam: str, chunk: int, monkeypatch) -> dict:
    monkeypatch.setattr(tr, "PREFILL_CHUNK", chunk)
    with load_model(FIX / fam, backend="numpy", max_context=96) as m:
        ids = (np.arange(45) * 37 + 5) % min(m.config.vocab_size, 500)
        out = {"logits": m.step(ids, 0), "next": m.step([int(ids[3])], 45)}
        out["all"] = m.step(ids[:29], 0, want="all_logits")
        out["hidden"] = m.step(ids[:29], 0, want="hidden")
        out["greedy"] = m.generate(list(ids[:37]), max_new_tokens=6, temperature=0, ignore_eos=True)
        out["graphs"] = {k[0] for k in m._graphs}
        return out


@pytest.mark.parametrize("fam", FAMILIES)
def test_chunks_equal_one_step(fam: str, monkeypatch) -> None:
    whole = _run(fam, 10 ** 9, monkeypatch)
    chunked = _run(fam, 8, monkeypatch)
    for k in ("logits", "next", "all", "hidden"):
        np.testing.assert_allclose(chunked[k], whole[k], rtol=2e-5, atol=2e-5, err_msg=f"{fam} {k}")
    assert chunked["all"].shape == whole["all"].shape and chunked["hidden"].shape == whole["hidden"].shape
    assert chunked["greedy"] == whole["greedy"]
    assert max(chunked["graphs"]) <= 8 < max(whole["graphs"])  # no step graph longer than a chunk
