"""Persistent decode segments, planned on the CPU (tinygraph/backends/cuda/persistent.py): which
runs of a decode step become one persistent kernel, their task tables, and the argument record
the kernel reads. The kernel itself is checked on a GPU (tests/test_cuda_persistent.py)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tinygraph import tasks
from tinygraph.backends.cuda import persistent, select
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
GEMV = frozenset({"f32", "f16", "bf16"})
SMS = 8


@pytest.fixture(autouse=True)
def _segments_on(monkeypatch):
    monkeypatch.setattr(persistent, "ENABLED", True)  # off by default (it measured slower)


def _decode_plan(m):
    m.step(np.arange(3, 8, dtype=np.int32), 0)
    g, ids, pos = m.step_graph(1, "logits")
    feeds = {ids: np.array([7], np.int32), pos: np.array([5], np.int32)}
    plan = m.session._plan_for(g)
    choices = select.plan_choices(plan.order, select.DeviceCaps(sm_count=SMS), GEMV, {})
    written = {n.storage.id for n in plan.order}
    return g, feeds, plan, persistent.plan_segments(plan, choices, written, SMS)


def test_find_segments_takes_maximal_runs_of_one_dtype() -> None:
    ok = [True, True, False, True, True, True, True, False, True]
    dt = ["f16"] * 5 + ["bf16"] * 4
    assert persistent.find_segments(ok, dt) == [(0, 2), (3, 5), (5, 7)]
    assert persistent.find_segments(ok, dt, min_nodes=3) == []
    assert persistent.find_segments([True], ["f16"]) == []


@pytest.mark.parametrize("fam", ["llama", "qwen3", "gpt2", "phi3"])
def test_a_decode_step_runs_its_linears_between_attentions_as_segments(fam: str) -> None:
    with load_model(FIX / fam, backend="numpy") as m:
        _, _, plan, segs = _decode_plan(m)
        order = plan.order
        assert segs, "no persistent segment in a decode step"
        for s in segs:
            assert all(n.op == "linear" for n in order[s.start:s.stop])
            assert s.stop - s.start >= persistent.MIN_NODES
            # o_proj, gate_up (or fc1), down (fc2), and the next qkv or the head: up to the next attention
            assert s.stop == len(order) or order[s.stop].op != "linear"
            assert order[s.start - 1].op != "linear"
            t, q = s.tables, SMS * persistent.BLOCKS_PER_SM  # the queues: blocks of the kernel
            assert t.counters == s.stop - s.start
            for node, part, parts, n0, nn in t.tasks:
                assert parts == persistent.task_parts(order[s.start + node], q) and 0 <= part < parts
                assert all(c < node for c, _ in t.needs[n0:n0 + nn])   # within the segment, earlier
            assert len(t.queue_start) == q + 1 and sorted(t.queue_tasks) == list(range(len(t.tasks)))
            assert s.smem >= 4 * max(n.srcs[0].shape[-1] for n in order[s.start:s.stop])
        covered = {i for s in segs for i in range(s.start, s.stop)}
        attn = [i for i, n in enumerate(order) if n.op.startswith("attention")]
        assert attn and not covered & set(attn)
        assert len(segs) == len(attn)  # one segment after each attention


@pytest.mark.parametrize("fam", ["llama", "gpt2", "phi3"])
def test_segment_tasks_in_random_interleavings_give_the_ordinary_outputs(fam: str) -> None:
    # the whole step as tasks, the segments' linears split as the kernel splits them
    with load_model(FIX / fam, backend="numpy") as m:
        g, feeds, plan, segs = _decode_plan(m)
        seg_nodes = {n.id for s in segs for n in plan.order[s.start:s.stop]}
        tp = tasks.task_plan(plan, SMS, split=lambda n: persistent.task_parts(n, SMS) if n.id in seg_nodes else 1)
        assert tp.num_tasks > len(tp.order)
        be = m.session.backend
        _, arrays = m.session._prepare(g, feeds)
        (want,) = m.session.compute(g, feeds)
        for seed in range(3):
            buffers = {k: v.copy() for k, v in be.buffers.items()}
            (got,) = tasks.simulate(g, tp, arrays, buffers, np.random.default_rng(seed), values=be._values)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nothing_is_a_segment_when_turned_off(monkeypatch) -> None:
    monkeypatch.setattr(persistent, "ENABLED", False)
    with load_model(FIX / "llama", backend="numpy") as m:
        assert _decode_plan(m)[3] == []


def test_prefill_and_batched_linears_are_not_tasks() -> None:
    with load_model(FIX / "llama", backend="numpy") as m:
        g, ids, pos = m.step_graph(4, "logits")
        plan = m.session._plan_for(g)
        choices = select.plan_choices(plan.order, select.DeviceCaps(sm_count=SMS), GEMV, {})
        written = {n.storage.id for n in plan.order}
        forms = [n for n in plan.order if persistent.task_form(n, choices.get(n.id), written)]
        assert [n.srcs[0].size for n in forms] == [n.srcs[0].shape[-1] for n in forms]  # one row each
        assert len(forms) <= 1  # at most the head, on the last row: nothing to chain it with
        assert persistent.plan_segments(plan, choices, written, SMS) == []


def test_the_argument_record_matches_the_kernels_struct() -> None:
    src = (Path(persistent.__file__).parents[3] / "cuda_src" / "persist.cu").read_text()
    body = re.search(r"struct PLinear \{[^\n]*\n(.*?)\n\};", src, re.S).group(1)
    names = []
    for line in body.splitlines():
        decl = line.split(";")[0].strip()
        names += [v.strip().lstrip("*") for v in decl.split(" ", 1)[1].split(",")] if " " in decl else []
    names = [re.sub(r"^\*", "", n.split()[-1]) for n in names]
    assert names == [f for f, _ in persistent.PLinear._fields_]


@pytest.mark.parametrize("timeline", [False, True])
def test_a_decode_step_launches_a_persistent_kernel_per_segment(timeline: bool) -> None:
    # recorded without a GPU: one persist_linear launch per segment, one block per queue; with the
    # timeline on, the stamping kernel with a stamps buffer of its own per segment as its last argument
    from cuda_record import record_launches
    with load_model(FIX / "llama", backend="numpy", dtype="float16") as m:
        m.step(np.arange(3, 8, dtype=np.int32), 0)
        g, _, _ = m.step_graph(1, "argmax")
        plan = m.session._plan_for(g)
        rec = record_launches(g, plan, timeline=timeline)
    attn = sum(n.op.startswith("attention") for n in plan.order)
    persist = [x for x in rec if x[0].startswith("persist_linear")]
    assert len(persist) == attn  # a segment after each attention
    name = "persist_linear_stamps_f16" if timeline else "persist_linear_f16"
    assert {x[0] for x in persist} == {name}
    assert all(x[1][0] == 132 * persistent.BLOCKS_PER_SM and x[2][0] == persistent.BLOCK for x in persist)
    assert {len(x[5]) for x in persist} == {8 if timeline else 7}
    if timeline:
        assert len({x[5][-1] for x in persist}) == len(persist)  # a stamps buffer per segment
