"""Tensor parallelism's pieces on one GPU: the int32 id map's lookup (the vocabulary-parallel
embedding's first step) and, where nccl4py is installed, a one-rank NCCL model whose all_reduce
nodes run through NCCL, against the plain model. Skipped without a GPU; the multi-GPU figures
need a machine with several (tools/bench_tp.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from conftest import free_port
from tinygraph.backends.cuda import driver

if not driver.driver_available():
    pytest.skip(f"no CUDA driver/GPU: {driver.driver_unavailable_reason()}", allow_module_level=True)

FIX = Path(__file__).parent / "fixtures"


def test_get_rows_of_an_int32_map():
    s = tg.Session(backend="cuda")
    vocab_map = np.array([[5], [-1], [0], [2], [7]], np.int32)  # an id map: [V, 1]
    M = s.persistent((5, 1), tg.int32)
    s.finalize()
    s.upload(M, vocab_map)
    g = s.graph()
    ids = g.input((6,), tg.int32, name="ids")
    g.output(tg.get_rows(M, ids))
    pick = np.array([4, 0, 1, 3, 3, 2], np.int32)
    (got,) = s.compute(g, {ids: pick})
    np.testing.assert_array_equal(got, vocab_map[pick])


@pytest.mark.parametrize("fam", ["llama", "qwen3"])
def test_one_rank_nccl_model_matches_the_plain_model(fam):
    pytest.importorskip("nccl.bindings.nccl", reason="nccl4py is not installed (pip install tinygraph[multi-gpu])")
    from tinygraph.distributed import DistEnv
    from tinygraph.io import load_checkpoint
    from tinygraph.models import load_model
    from tinygraph.models.tensor_parallel import load_rank
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    with load_model(FIX / fam, backend="cuda", dtype="float32") as m0:
        want = m0.generate(prompt, max_new_tokens=8, temperature=0)
    with load_checkpoint(FIX / fam) as ckpt:
        m = load_rank(ckpt, 1, dtype="float32", env=DistEnv(0, 1, 0, master_port=free_port()))
    with m:
        assert m.generate(prompt, max_new_tokens=8, temperature=0) == want
        assert m._comm.rounds > 0  # the all_reduce nodes went through NCCL
