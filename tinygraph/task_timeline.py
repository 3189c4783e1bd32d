"""A persistent kernel's timeline, from the stamps its tasks write (backend-free).

``persist_linear_stamps`` (cuda_src/persist.cu) has thread 0 of the block that runs task t write
``stamps[t] = (start, ready, done, sm << 32 | block)``: ``%globaltimer`` nanoseconds when the task
starts (before its first weight load), when its needs are met (the counters it waits on are
full), and when its outputs are written (just before it releases its node's counter), and where
it ran. This module turns one launch's stamps and its :class:`tinygraph.tasks.TaskTables` into
text (:func:`report`: per node, then per block queue) and checks the order the counters promise
(:func:`order_violations`: no task may find its needs met before every task of the nodes it
needs is done). ``tools/profile_step.py --timeline`` writes the report for a decode step.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .tasks import TaskTables

#: the columns of a stamps row
START, READY, DONE, WHERE = range(4)


def _check(tables: TaskTables, stamps: np.ndarray) -> np.ndarray:
    s = np.asarray(stamps, np.uint64)
    if s.shape != (len(tables.tasks), 4):
        raise ValueError(f"stamps of shape {s.shape} for {len(tables.tasks)} tasks (want [n_tasks, 4])")
    return s


def order_violations(tables: TaskTables, stamps: np.ndarray) -> list[str]:
    """What breaks the counters' promise in one launch's ``stamps`` [n_tasks, 4]: a task never
    stamped (all zeros), stamps out of order within a task (start <= ready <= done), or a task
    whose needs were met before a task of a node it needs was done. Empty when all is well."""
    s = _check(tables, stamps)
    out = []
    unstamped = np.flatnonzero((s[:, :WHERE] == 0).all(axis=1))
    if len(unstamped):
        out.append(f"{len(unstamped)} tasks were never stamped (first: task {int(unstamped[0])})")
    bad = np.flatnonzero((s[:, START] > s[:, READY]) | (s[:, READY] > s[:, DONE]))
    if len(bad):
        out.append(f"{len(bad)} tasks with start <= ready <= done broken (first: task {int(bad[0])})")
    node = tables.tasks[:, 0]
    last_done = np.zeros(tables.counters, np.uint64)
    np.maximum.at(last_done, node, s[:, DONE])
    for t, (_, _, _, first, count) in enumerate(tables.tasks):
        for c, _want in tables.needs[first:first + count]:
            if s[t, READY] < last_done[c]:
                out.append(f"task {t} (node {int(node[t])}) found its needs met "
                           f"{(int(last_done[c]) - int(s[t, READY])) / 1e3:.2f} µs before node {int(c)} was done")
    return out


def report(tables: TaskTables, stamps: np.ndarray, names: Sequence[str], title: str = "") -> str:
    """One launch's timeline as text, times in µs from its first task's start: per node (tasks,
    first start, last done, mean wait from start to needs met, mean work from needs met to done),
    then one line per block queue with its SM and each task as ``node.part start+wait+work``.
    ``names``: the segment's node names, by node index."""
    s = _check(tables, stamps).astype(np.int64)
    t0 = int(s[:, START].min()) if len(s) else 0
    us = (s[:, :WHERE] - t0) / 1e3  # start, ready, done
    node = tables.tasks[:, 0]
    span = float(us[:, DONE].max()) if len(us) else 0.0
    lines = [f"{title}{len(s)} tasks of {tables.counters} nodes on {len(tables.queue_start) - 1} blocks, "
             f"{span:.1f} µs from the first start to the last done",
             f"{'node':40s} {'tasks':>5s} {'start':>8s} {'done':>8s} {'wait':>7s} {'work':>7s}   (µs)"]
    for k in range(tables.counters):
        m = node == k
        if not m.any():
            continue
        u = us[m]
        lines.append(f"{names[k][:40]:40s} {int(m.sum()):5d} {u[:, START].min():8.2f} {u[:, DONE].max():8.2f} "
                     f"{(u[:, READY] - u[:, START]).mean():7.2f} {(u[:, DONE] - u[:, READY]).mean():7.2f}")
    lines.append("")
    lines.append("block (SM): its tasks in order, node.part start+wait+work (µs)")
    for b in range(len(tables.queue_start) - 1):
        q = tables.queue_tasks[tables.queue_start[b]:tables.queue_start[b + 1]]
        if not len(q):
            continue
        sm = int(s[q[0], WHERE]) >> 32
        items = " ".join(f"{int(node[t])}.{int(tables.tasks[t, 1])} {us[t, START]:.1f}+{us[t, READY] - us[t, START]:.1f}"
                         f"+{us[t, DONE] - us[t, READY]:.1f}" for t in q)
        lines.append(f"block {b:3d} (SM {sm:3d}): {items}")
    return "\n".join(lines)
