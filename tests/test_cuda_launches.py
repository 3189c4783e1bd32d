"""The CUDA backend launches exactly the kernels it launched when the snapshot was taken, for a set
of planned graphs (families, dtypes, decode/prefill/sampling, quantized weights, batched steps),
recorded without a GPU (``tests/cuda_record.py``). A refactor of the lowering must keep the
record; a change that means to alter launches regenerates the snapshot on purpose:
``TINYGRAPH_UPDATE_LAUNCHES=1 python -m pytest tests/test_cuda_launches.py`` (then run the GPU
suite: this test says the launches are the same, not that they are right)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cuda_record import cuda_graph_rules, record_launches
from tinygraph.models import load_model
from tinygraph.models.batch import BatchRunner
from tinygraph.models.paged import KVPool

FIX = Path(__file__).parent / "fixtures"
SNAPSHOT = FIX / "cuda_launches.json"

#: (fixture, dtype, quantize) -> graphs (T, want) recorded for it
MODELS = [
    ("llama", "float32", None), ("llama", "float16", None), ("llama", "float16", "q8_0"),
    ("llama", "bfloat16", "q4_0"), ("gpt2", "float16", None), ("qwen3", "bfloat16", None),
    ("mistral", "float16", None), ("gemma", "float16", None), ("gemma2", "float16", None),
    ("phi", "float16", None), ("gpt_neox", "float16", None), ("olmo2", "float16", None),
    ("granite", "float16", None), ("stablelm_parallel", "float16", None), ("phi3", "float16", None),
    ("mixtral", "bfloat16", None), ("qwen2_moe", "float16", None), ("gemma3_text", "float16", None),
]
STEPS = [(1, "argmax"), (1, "sample"), (7, "logits"), (40, "hidden")]


def _records() -> dict[str, list]:
    out: dict[str, list] = {}
    for fam, dtype, quant in MODELS:
        with load_model(FIX / fam, backend="numpy", dtype=dtype, quantize=quant) as m:
            key = f"{fam}/{dtype}/{quant or 'plain'}"
            for T, want in STEPS:
                g, _, _ = m.step_graph(T, want)
                out[f"{key}/T{T}/{want}"] = record_launches(g, m.session._plan_for(g))
            if fam in ("llama", "qwen3", "gemma2") and quant is None:
                pool = KVPool(m, num_blocks=8, block_size=16)
                runner = BatchRunner(m, pool, max_batch=4)
                with cuda_graph_rules(m.session):
                    for B, T, S, want in ((4, 1, 64, "argmax"), (4, 1, 128, "sample"), (1, 16, 64, "argmax")):
                        g, _ = runner.graph(B, T, S, want)
                        out[f"{key}/batch{B}x{T}/S{S}/{want}"] = record_launches(g, m.session._plan_for(g))
                pool.close()
    return out


def _digest(rec: list) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def records() -> dict[str, list]:
    return _records()


def test_launches_match_the_snapshot(records):
    if os.environ.get("TINYGRAPH_UPDATE_LAUNCHES"):
        SNAPSHOT.write_text(json.dumps({k: {"digest": _digest(r), "kernels": [x[0] for x in r]}
                                        for k, r in sorted(records.items())}, indent=0) + "\n")
    snap = json.loads(SNAPSHOT.read_text())
    assert sorted(snap) == sorted(records), "graphs recorded differ from the snapshot's"
    for key, rec in records.items():
        assert [x[0] for x in rec] == snap[key]["kernels"], f"{key}: kernels launched differ"
        assert _digest(rec) == snap[key]["digest"], f"{key}: launch configurations or arguments differ"


def test_every_node_launches_a_known_kernel(records):
    # every kernel a lowering launches is one the registry names (so tools/check_kernels.py and
    # KernelLibrary.precompile cover it), attention and quantized GEMVs included
    from tinygraph.backends.cuda.kernels import all_kernel_names
    names = {x[0] for rec in records.values() for x in rec}
    unknown = sorted(names - {n for _, n in all_kernel_names()})
    assert not unknown, unknown
    assert all(rec for rec in records.values())


def test_graph_kernels_name_each_nodes_launches() -> None:
    # the backend's record of which kernels each node launched (Graph.kernels, shown by dump())
    # equals the launches themselves, in order
    with load_model(FIX / "llama", backend="numpy", dtype="float16", quantize="q8_0") as m:
        g, _, _ = m.step_graph(1, "argmax")
        plan = m.session._plan_for(g)
        rec = record_launches(g, plan, g.kernels)
        assert [k for n in plan.order for k in g.kernels[n.id]] == [r[0] for r in rec]
        assert g.kernels[plan.order[-1].id] == ["argmax_f16"]
        assert any(ks == ["linear_qmma_q8_0_f16"] for ks in g.kernels.values())  # short rows: tensor cores
        table = g.dump()
        assert table.splitlines()[0].rstrip().endswith("kernels") and "linear_qmma_q8_0_f16" in table
        from tinygraph.viz import graph_data
        shown = {n["id"]: n.get("kernel") for n in graph_data(g)["nodes"]}
        assert all(shown[i] == " ".join(ks) for i, ks in g.kernels.items() if ks)


def test_the_backend_keeps_its_kernel_choices_in_the_plan() -> None:
    with load_model(FIX / "llama", backend="numpy", dtype="float16", quantize="q8_0") as m:
        g, _, _ = m.step_graph(1, "argmax")
        plan = m.session._plan_for(g)
        assert plan.choices is None
        record_launches(g, plan)
        assert plan.choices and all(n.op in ("linear", "matmul", "attention", "attention_store")
                                    for n in plan.order if n.id in plan.choices)
        assert {c.gemv for c in plan.choices.values() if hasattr(c, "gemv")} == {"linear_qmma"}


def test_plain_matmul_kernels_come_from_the_plan() -> None:
    # plain matmuls (not fused into linear): one decode row against a transposed weight (gemv),
    # a non-transposed one (gemv_nc), several rows and a batch (tensor cores), float32 (the
    # CUDA-core matmul), an operand of another dtype (copied first); the plan names each kernel
    import tinygraph as tg
    from tinygraph.backends.cuda import select
    s = tg.Session(backend="numpy")
    W = s.persistent((48, 64), tg.float16, name="W")
    W32 = s.persistent((48, 64), tg.float32, name="W32")
    s.finalize()
    g = s.graph()
    x1, x9 = g.input((1, 64), tg.float16, name="x1"), g.input((9, 64), tg.float16, name="x9")
    xb, xf = g.input((3, 5, 64), tg.float16, name="xb"), g.input((7, 64), tg.float32, name="xf")
    for a, b in ((x1, tg.transpose(W)), (x9, tg.transpose(W)), (xb, tg.transpose(W)), (xf, tg.transpose(W32)),
                 (x1, tg.reshape(W, (64, 48))), (x9, tg.transpose(W32))):
        g.output(tg.matmul(a, b))
    plan = s._plan_for(g)
    got = [r[0] for r in record_launches(g, plan)]
    tc = select.tc3_variant(1, select.DeviceCaps())
    small = ["matmul_tc3s_m16_f16", "matmul_splitk_reduce_f16"]  # 9 rows: 16-row tiles, partials added up
    assert got == ["gemv_f16", *small, f"{tc}_f16", "matmul_f32", "gemv_nc_f16", "cpy_f32_f16", *small]
    assert [plan.choices[n.id] for n in plan.order if n.op == "matmul"] == [
        "gemv", "matmul_tc3s_m16", tc, "matmul", "gemv_nc", "matmul_tc3s_m16"]
    s.close()


@pytest.mark.parametrize("qt", ["q4_k", "q8_0"])
def test_linear_qr_runs_every_linear_of_a_model_where_asked(qwen3_256, qt, monkeypatch) -> None:
    # TINYGRAPH_QUANT_GEMV=linear_qr on a model whose rows are 256n weights: the decode step's
    # q/k/v, o, gate/up, down of both layers and the LM head all launch linear_qr, each with a
    # block of 256 threads and the shared memory select.linear_q_shared_bytes names (the GPU
    # side: test_cuda_quant.test_linear_qr_model_matches_numpy)
    from tinygraph.backends.cuda import select
    monkeypatch.setenv("TINYGRAPH_QUANT_GEMV", "linear_qr")
    with load_model(qwen3_256, backend="numpy", dtype="float16", quantize=qt) as m:
        g, _, _ = m.step_graph(1, "argmax")
        plan = m.session._plan_for(g)
        rec = [r for r in record_launches(g, plan) if r[0].startswith("linear")]
    assert [r[0] for r in rec] == [f"linear_qr_{qt}_f16"] * 9
    assert all(r[2] == [256, 1, 1] for r in rec)
    assert {r[3] for r in rec} == {select.linear_q_shared_bytes(K, "linear_qr", qt) for K in (256, 512)}
