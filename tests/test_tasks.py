"""The persistent-kernel task plan (tinygraph/tasks.py), checked on NumPy: a decode step graph
split into tasks and run in random interleavings of the SM queues that its counters allow gives
the ordinary run's outputs; without the write-after-read waits (arena reuse) some interleaving
does not; waits only point backwards, so no queue deadlocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinygraph import tasks
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
FAMILIES = ["llama", "qwen3", "gemma2", "phi3", "gpt2", "mixtral", "olmo2"]


def _decode_case(m, T_prompt: int = 5):
    """A model with a prompt in its cache, and its next decode step: graph, feeds."""
    prompt = np.arange(3, 3 + T_prompt, dtype=np.int32)
    m.step(prompt, 0)
    g, ids, pos = m.step_graph(1, "logits")
    feeds = {ids: np.array([7], np.int32), pos: np.array([T_prompt], np.int32)}
    return g, feeds


def _simulate(m, g, feeds, tp, seed):
    be = m.session.backend
    _, arrays = m.session._prepare(g, feeds)
    buffers = {k: v.copy() for k, v in be.buffers.items()}  # the graph writes the KV cache
    return tasks.simulate(g, tp, arrays, buffers, np.random.default_rng(seed), values=be._values)


@pytest.mark.parametrize("fam", FAMILIES)
def test_random_interleavings_give_the_ordinary_outputs(fam: str) -> None:
    with load_model(FIX / fam, backend="numpy") as m:
        g, feeds = _decode_case(m)
        tp = tasks.task_plan(m.session._plan_for(g), num_sms=8, tile_cols=16)
        assert tp.num_tasks > len(tp.order)  # the decode linears were split
        assert all(i < j for j, w in enumerate(tp.waits) for i in w)
        for q in tp.queues:  # each queue in plan order: what it waits on is never behind it
            assert [t.step for t in q] == sorted(t.step for t in q)
        queues = tp.dump_queues().splitlines()[1:]   # every task once, on its SM's line
        assert len(queues) == 8 and sum(len(q.split(": ", 1)[1].split(" ")) // 2 for q in queues) == tp.num_tasks
        got = [_simulate(m, g, feeds, tp, seed) for seed in range(3)]
        (want,) = m.session.compute(g, feeds)
        for (out,) in got:
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_the_write_after_read_waits_matter() -> None:
    # b reads a's arena block; c, on a branch of its own, is given the same block once a is dead
    # (the planner's reuse). Without c's wait on b (a write-after-read, not a data edge) some
    # interleaving lets c overwrite the block before b has read it.
    import tinygraph as tg
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    x = g.input((1, 256), tg.float32, name="x")
    y = g.input((1, 256), tg.float32, name="y")
    a = tg.scale(x, 2.0)
    b = tg.rms_norm(a, eps=1e-5)
    c = tg.scale(y, 5.0)
    d = tg.scale(c, 7.0)
    g.output(b)
    g.output(d)
    plan = sess._plan_for(g)
    mem = plan.memory
    assert mem.offsets[c.id] == mem.offsets[a.id]  # the reuse this test is about
    feeds = {x: np.arange(256, dtype=np.float32).reshape(1, 256), y: np.ones((1, 256), np.float32)}
    want = sess.compute(g, feeds)
    _, arrays = sess._prepare(g, feeds)
    tp = tasks.task_plan(plan, num_sms=4)
    step = {n.id: i for i, n in enumerate(tp.order)}
    assert step[b.id] in tp.waits[step[c.id]]  # the WAR wait
    for seed in range(10):
        got = tasks.simulate(g, tp, arrays, {}, np.random.default_rng(seed))
        assert all(np.array_equal(u, v) for u, v in zip(got, want))
    rw = [tasks._reads_writes(n, plan) for n in tp.order]
    raw_only = [[i for i in w if tasks._overlap(rw[i][1], rw[j][0])] for j, w in enumerate(tp.waits)]
    bad = tasks.TaskPlan(tp.order, tp.parts, raw_only, tp.queues, tp.memory)
    outs = [tasks.simulate(g, bad, arrays, {}, np.random.default_rng(seed)) for seed in range(20)]
    assert any(not np.array_equal(o[0], want[0]) for o in outs)


def test_split_parts_and_dump() -> None:
    with load_model(FIX / "llama", backend="numpy") as m:
        g, _ = _decode_case(m)
        tp = tasks.task_plan(m.session._plan_for(g), num_sms=4, tile_cols=32)
        for n, k in zip(tp.order, tp.parts):
            assert k == (-(-n.shape[-1] // 32) if n.op == "linear" else 1)
        assert sum(len(q) for q in tp.queues) == tp.num_tasks
        text = tp.dump()
        assert text.splitlines()[0].startswith(f"{len(tp.order)} nodes, {tp.num_tasks} tasks on 4 SMs, ")
        g40, _, _ = m.step_graph(40, "hidden")  # prefill rows: linears stay whole
        assert all(k == 1 for k in tasks.task_plan(m.session._plan_for(g40)).parts)


def _closure(waits):
    """Bit sets: node j runs after node i in the order the waits impose."""
    out = []
    for w in waits:
        b = 0
        for i in w:
            b |= out[i] | (1 << i)
        out.append(b)
    return out


def test_reduce_waits_drops_only_implied_waits() -> None:
    # 2 waits on 0 and 1, 1 waits on 0: 2 needs only 1; 3 waits on 0 and 2: needs only 2
    assert tasks.reduce_waits([[], [0], [0, 1], [0, 2], [1]]) == [[], [0], [1], [2], [1]]
    with pytest.raises(ValueError):
        tasks.reduce_waits([[], [1]])
    with load_model(FIX / "qwen3", backend="numpy") as m:
        g, _ = _decode_case(m)
        tp = tasks.task_plan(m.session._plan_for(g), num_sms=8)
    assert all(set(n) <= set(w) for n, w in zip(tp.needs, tp.waits))
    assert _closure(tp.needs) == _closure(tp.waits)  # the same order, fewer checks
    assert sum(map(len, tp.needs)) < sum(map(len, tp.waits)) / 2


def test_tables_hold_the_plan() -> None:
    with load_model(FIX / "gemma2", backend="numpy") as m:
        g, _ = _decode_case(m)
        tp = tasks.task_plan(m.session._plan_for(g), num_sms=6, tile_cols=16)
    tb = tp.tables()
    assert tb.counters == len(tp.order) and tb.tasks.dtype == tb.needs.dtype == np.int32
    assert sorted(tb.queue_tasks.tolist()) == list(range(tp.num_tasks))  # every task once
    for s, q in enumerate(tp.queues):  # each SM's slice: its tasks, in order
        rows = tb.tasks[tb.queue_tasks[tb.queue_start[s]:tb.queue_start[s + 1]]]
        assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == [(t.step, t.part, t.parts) for t in q]
        for node, _, _, n0, nn in rows:  # its needs: the node's, each counted to that node's tasks
            assert tb.needs[n0:n0 + nn, 0].tolist() == tp.needs[node]
            assert tb.needs[n0:n0 + nn, 1].tolist() == [tp.parts[i] for i in tp.needs[node]]
