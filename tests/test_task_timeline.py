"""The persistent kernel's timeline (tinygraph/task_timeline.py) on stamps made here: a schedule
that honours the counters has no order violations and reads back per node and per block; a task
that starts before a node it needs is done, one never stamped, and stamps out of order are each
reported. The same checks run on a GPU's real stamps in tests/test_cuda_persistent.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinygraph import task_timeline, tasks
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"


def _plan_and_schedule(work_ns: int = 1000):
    """A llama decode step's task tables on 4 queues, and stamps of a run that keeps the order:
    each queue runs its tasks in turn, a task's needs are met when every task of the nodes it
    needs is done (plus 100 ns), and it works ``work_ns``."""
    with load_model(FIX / "llama", backend="numpy") as m:
        m.step(np.arange(3, 8, dtype=np.int32), 0)
        g, _, _ = m.step_graph(1, "logits")
        plan = m.session._plan_for(g)
        tp = tasks.task_plan(plan, num_sms=4, tile_cols=16)
        names = [n.name for n in plan.order]
    t = tp.tables()
    n_tasks = len(t.tasks)
    stamps = np.zeros((n_tasks, 4), np.uint64)
    queue_of = np.zeros(n_tasks, int)
    for b in range(len(t.queue_start) - 1):
        queue_of[t.queue_tasks[t.queue_start[b]:t.queue_start[b + 1]]] = b
    clock = np.full(len(t.queue_start) - 1, 10_000, np.int64)
    done = np.zeros(t.counters, np.int64)
    for k in range(t.counters):  # plan order: a queue's tasks are in it, and needs point back
        for task in np.flatnonzero(t.tasks[:, 0] == k):
            b, first, count = queue_of[task], t.tasks[task, 3], t.tasks[task, 4]
            start = clock[b]
            ready = max([start] + [done[c] + 100 for c, _ in t.needs[first:first + count]])
            end = ready + work_ns
            stamps[task] = (start, ready, end, (b // 2) << 32 | b)
            clock[b] = end
        done[k] = max(stamps[t.tasks[:, 0] == k, 2])
    return t, stamps, names


def test_an_ordered_run_reads_back() -> None:
    t, stamps, names = _plan_and_schedule()
    assert task_timeline.order_violations(t, stamps) == []
    text = task_timeline.report(t, stamps, names, "seg: ")
    lines = text.splitlines()
    assert lines[0].startswith(f"seg: {len(t.tasks)} tasks of {t.counters} nodes on 4 blocks")
    assert any(line.startswith(names[0][:40]) for line in lines)  # a row per node
    blocks = [line for line in lines if line.startswith("block ") and "(SM " in line]
    assert len(blocks) == 4 and "(SM   1)" in blocks[2]
    # every task once on its block's line, as node.part start+wait+work
    assert sum(len(line.split(": ", 1)[1].split(" ")) // 2 for line in blocks) == len(t.tasks)


def test_a_task_that_ran_early_is_reported() -> None:
    t, stamps, _ = _plan_and_schedule()
    task = next(i for i in range(len(t.tasks)) if t.tasks[i, 4] > 0)  # one with needs
    c = int(t.needs[t.tasks[task, 3], 0])
    last_done = int(stamps[t.tasks[:, 0] == c, 2].max())
    stamps[task, :2] = last_done - 500  # needs "met" 0.5 µs before node c was done
    bad = task_timeline.order_violations(t, stamps)
    assert len(bad) >= 1 and f"task {task} " in bad[0] and f"node {c} was done" in bad[0] and "0.50 µs" in bad[0]


def test_unstamped_and_disordered_tasks_are_reported() -> None:
    t, stamps, _ = _plan_and_schedule()
    s = stamps.copy()
    s[3] = 0
    assert any("1 tasks were never stamped (first: task 3)" in v for v in task_timeline.order_violations(t, s))
    s = stamps.copy()
    s[5, 0] = s[5, 2] + 1  # started after it was done
    assert any("start <= ready <= done broken (first: task 5)" in v for v in task_timeline.order_violations(t, s))
    with pytest.raises(ValueError, match=r"stamps of shape \(2, 4\)"):
        task_timeline.order_violations(t, stamps[:2])
