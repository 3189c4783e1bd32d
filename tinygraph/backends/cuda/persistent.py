"""Persistent decode segments (issue 18): runs of a decode step's fused linears as one kernel.

A *segment* is a run of consecutive nodes of the plan that all have a task form (here: a decode
``linear`` on the fused 16/32-bit GEMV, one row, weights that nothing in the graph writes). It
runs as one launch of ``persist_linear`` (cuda_src/persist.cu): one block per SM walks its queue
of :mod:`tinygraph.tasks` tasks, each task part p of P of a node's GEMV (the columns block p of a
P-block ``linear_gemv1`` launch computes), ordered by the plan's needs through counters in global
memory, not by kernel boundaries. A block loads a task's first weight batch before it spins on
the task's needs, so the next node's weights stream in while the previous node finishes.

In a LLaMA-style decode step the nodes between two attentions -- o_proj, gate_up, down and the
next layer's qkv -- form one segment: 2 launches per layer instead of 5. Nodes without a task
form (attention, norms that did not fuse, sampling) run as today's kernels, in stream order
around the segments.

Off by default: on the H200 it measured slower than today's kernel-per-node replay with
programmatic dependent launch (SmolLM2 -6%, Qwen3-0.6B -6%, TinyLlama -10% decode tok/s; see
bench/README.md). ``TINYGRAPH_PERSISTENT=1`` turns it on, for A/B timing and for work on it.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...graph import ExecPlan
from ...ops.registry import optional_srcs
from ...tensor import Tensor
from ... import tasks
from . import driver
from .kernel_specs import LINEAR_ACTS, LINEAR_NORMS, TD, i32, ptr
from .lower_linear import weights_ready

if TYPE_CHECKING:
    from .backend import CudaBackend

#: whether decode steps run their linear segments as persistent kernels (off unless
#: TINYGRAPH_PERSISTENT=1: it measured slower, see the module docstring)
ENABLED = os.environ.get("TINYGRAPH_PERSISTENT", "0") == "1"
#: fewest nodes worth a persistent launch (one node is just its own kernel)
MIN_NODES = 2
#: threads per block of persist_linear (8 warps: one output column each at a time)
BLOCK = 256
#: blocks (task queues) per SM: 2 keeps twice the weight loads in flight of one (the kernel's
#: __launch_bounds__ allows 2; a segment whose shared memory leaves fewer resident runs unfused)
BLOCKS_PER_SM = int(os.environ.get("TINYGRAPH_PERSISTENT_BLOCKS", "2"))
#: output columns a task gets at least (one per warp)
TASK_COLS = BLOCK // 32
#: the float dtypes with a persist_linear kernel
DTYPES = ("f32", "f16", "bf16")


class PLinear(ctypes.Structure):
    """``struct PLinear<T>`` of cuda_src/persist.cu: one node's linear_gemv1 arguments."""

    _fields_ = [("y", ctypes.c_uint64), ("x", ctypes.c_uint64), ("w", ctypes.c_uint64),
                ("bias", ctypes.c_uint64), ("res", ctypes.c_uint64), ("nw", ctypes.c_uint64),
                ("nb", ctypes.c_uint64), ("ldw", ctypes.c_int64), ("yd", TD), ("xd", TD), ("rd", TD),
                ("eps", ctypes.c_float), ("norm", ctypes.c_int32), ("act", ctypes.c_int32),
                ("N", ctypes.c_int32), ("K", ctypes.c_int32)]


def task_form(n: Tensor, choice, written: set[int]) -> bool:
    """Whether node ``n`` can be a persistent task: a ``linear`` that the plan runs on the fused
    GEMV (``choice.path == "gemv"``) for one row, with a 16/32-bit weight of its own dtype, every
    operand of that dtype, and weights (matrix, bias, norm) that are model weights no node of the
    graph writes (a task loads them before it waits)."""
    if n.op != "linear" or getattr(choice, "path", None) != "gemv" or n.dtype.short not in DTYPES:
        return False
    x, w = n.srcs[:2]
    if w.dtype.is_quant or x.size != x.shape[-1]:
        return False
    o = optional_srcs(n)
    if any(t is not None and t.dtype != n.dtype for t in (x, w, *o.values())):
        return False
    return weights_ready((w, o["bias"], o["norm_w"], o["norm_b"]), written)


def find_segments(ok: Sequence[bool], dtypes: Sequence[str], min_nodes: int = MIN_NODES) -> list[tuple[int, int]]:
    """Maximal runs ``[i, j)`` of nodes with a task form (``ok``) and one dtype, at least
    ``min_nodes`` long."""
    out, i, n = [], 0, len(ok)
    while i < n:
        if not ok[i]:
            i += 1
            continue
        j = i + 1
        while j < n and ok[j] and dtypes[j] == dtypes[i]:
            j += 1
        if j - i >= min_nodes:
            out.append((i, j))
        i = j
    return out


def task_parts(n: Tensor, num_sms: int) -> int:
    """Tasks of a linear node: one per ``TASK_COLS`` output columns, at most one per SM (each task
    stages and normalises x once, like a block of linear_gemv1)."""
    nout = n.shape[-1]
    return max(1, min(-(-nout // TASK_COLS), num_sms))


@dataclass
class Segment:
    """One persistent launch: nodes ``order[start:stop]`` of the plan, their task plan (``tasks``,
    fixed for the plan; ``tables`` what the kernel reads) and the dynamic shared memory bytes the
    largest K needs."""

    start: int
    stop: int
    dtype: str
    tasks: tasks.TaskPlan
    smem: int

    @cached_property
    def tables(self) -> tasks.TaskTables:
        return self.tasks.tables()


def plan_segments(plan: ExecPlan, choices: dict, written: set[int], num_sms: int,
                  enabled: bool | None = None) -> list[Segment]:
    """The plan's persistent segments (none unless ``enabled``, default :data:`ENABLED`).
    ``written``: the storages the plan's nodes write; ``num_sms``: the queues (blocks) are
    ``BLOCKS_PER_SM`` per SM."""
    if not (ENABLED if enabled is None else enabled):
        return []
    order = plan.order
    queues = num_sms * max(1, BLOCKS_PER_SM)
    ok = [task_form(n, choices.get(n.id), written) for n in order]
    segs = []
    for i, j in find_segments(ok, [n.dtype.short for n in order]):
        sub = ExecPlan(order[i:j], plan.memory)
        tp = tasks.task_plan(sub, queues, split=lambda n: task_parts(n, queues))
        smem = max(-(-n.srcs[0].shape[-1] // 4) * 16 for n in order[i:j])
        segs.append(Segment(i, j, order[i].dtype.short, tp, smem))
    return segs


def dump(plan: ExecPlan, segments: list[Segment]) -> str:
    """One line per segment (its nodes, tasks and blocks), then each segment's task queues."""
    lines = [f"{len(segments)} persistent segments"]
    for s in segments:
        t = s.tables
        names = ", ".join(n.name for n in plan.order[s.start:s.stop])
        lines.append(f"nodes {s.start}..{s.stop - 1} ({s.dtype}): {len(t.tasks)} tasks on "
                     f"{len(t.queue_start) - 1} blocks, {len(t.needs)} needs: {names}")
    for s in segments:
        lines += ["", f"segment at node {s.start} (a queue per block, {BLOCKS_PER_SM} blocks per SM): "
                  + s.tasks.dump_queues()]
    return "\n".join(lines)


def _args(be: "CudaBackend", n: Tensor, base: dict[int, int]) -> PLinear:
    x, w = n.srcs[:2]
    o = optional_srcs(n)
    p = n.params

    def addr(t: Tensor | None) -> int:
        return be._arg(t, base).ptr if t is not None else 0
    y = be._arg(n, base)
    rd = be._arg(o["residual"], base).td if o["residual"] is not None else y.td
    N, K = w.shape
    return PLinear(y.ptr, addr(x), addr(w), addr(o["bias"]), addr(o["residual"]), addr(o["norm_w"]),
                   addr(o["norm_b"]), w.strides[0], y.td, be._arg(x, base).td, rd,
                   float(p["eps"] or 0.0), LINEAR_NORMS[p["norm"] or 0], LINEAR_ACTS[p["act"] or 0], N, K)


def _blob(be: "CudaBackend", seg: Segment, order: list[Tensor], base: dict[int, int]) -> tuple[bytes, list[int]]:
    """The segment's argument records, task tables and zeroed counters as one byte string, and
    the byte offset of each part (args, tasks, needs, queue starts, queue tasks, counters)."""
    args = (PLinear * (seg.stop - seg.start))(*[_args(be, n, base) for n in order[seg.start:seg.stop]])
    t = seg.tables
    parts = [bytes(args)] + [np.ascontiguousarray(a, np.int32).tobytes()
                             for a in (t.tasks, t.needs if t.needs.size else np.zeros(2, np.int32),
                                       t.queue_start, t.queue_tasks, np.zeros(t.counters + 1, np.int32))]
    offs, at = [], 0
    for b in parts:
        offs.append(at)
        at += -(-max(len(b), 1) // 256) * 256
    blob = bytearray(at)
    for o, b in zip(offs, parts):
        blob[o:o + len(b)] = b
    return bytes(blob), offs


def launch(be: "CudaBackend", seg: Segment, order: list[Tensor], base: dict[int, int]) -> bool:
    """Queue the segment's persistent kernel on the backend's stream; False (nothing queued) when
    its blocks could not all be resident at once (every queue must run: a block spins on tasks of
    others). Its tables and counters go to device memory once per distinct content
    (``be._persist``, kept while the backend lives: a captured graph holds their address); the
    kernel leaves its counters at zero for the next run."""
    lib = be.lib
    stamps = be._persist_stamps
    f = lib.get("persist_linear" if stamps is None else "persist_linear_stamps", seg.dtype)
    lib._ensure_dynamic_smem(f, seg.smem)
    nq = len(seg.tables.queue_start) - 1
    if lib._blocks_per_sm(f, BLOCK, seg.smem) * lib.sm_count < nq:
        return False
    blob, offs = _blob(be, seg, order, base)
    kept = be._persist.get(blob)
    if kept is None:
        dev = driver.DeviceBuffer(len(blob), what="persistent kernel tables", device=be.device)
        host = None
        if driver.capturing():  # no synchronous copy inside a capture: an async one from pinned memory
            host = driver.PinnedBuffer(len(blob), "persistent kernel tables")
            host.array(np.uint8, len(blob))[:] = np.frombuffer(blob, np.uint8)
            driver.memcpy_htod(dev.ptr, host.ptr, len(blob), be.stream)
        else:
            dev.upload(np.frombuffer(blob, np.uint8))
        kept = be._persist[blob] = (dev, host)
    dev = kept[0]
    args = [*(ptr(dev.ptr + o) for o in offs), i32(seg.tables.counters)]
    if stamps is not None:
        args.append(ptr(_stamp_buffer(be, seg).ptr))
    lib._launch(f, nq, BLOCK, args, stream=be.stream, shared_mem=seg.smem, pdl=None)
    return True


def _stamp_buffer(be: "CudaBackend", seg: Segment) -> driver.DeviceBuffer:
    """The device buffer segment ``seg``'s stamps go to ([n_tasks, 4] uint64), made (zeroed
    where no capture is open: the kernel stamps every task anyway) on first use."""
    kept = be._persist_stamps.get(id(seg))
    if kept is None:
        nbytes = len(seg.tables.tasks) * 4 * 8
        buf = driver.DeviceBuffer(nbytes, what="persistent kernel timeline", device=be.device)
        if not driver.capturing():
            driver.memset_d8(buf, 0, nbytes)
        kept = be._persist_stamps[id(seg)] = (seg, buf)
    return kept[1]


def record_timeline(be: "CudaBackend", on: bool = True) -> None:
    """From now on (``on``), the persistent launches of backend ``be`` run the kernel that
    stamps each task (``persist_linear_stamps``); steps captured before keep their launches, so
    turn it on before a graph's first run. :func:`read_timeline` reads what the launches wrote."""
    if not on:
        for _, buf in (be._persist_stamps or {}).values():
            buf.free()
    be._persist_stamps = {} if on else None


def read_timeline(be: "CudaBackend") -> list[tuple[Segment, np.ndarray]]:
    """Each segment's stamps from its latest launch, [n_tasks, 4] uint64 (start, needs met, done:
    ns of %globaltimer; SM << 32 | block), once the stream has finished; see
    :mod:`tinygraph.task_timeline` for reading them."""
    if be._persist_stamps is None:
        raise RuntimeError("no timeline is being recorded: call persistent.record_timeline(backend) first")
    be.stream.synchronize("reading the persistent kernels' timeline")
    out = []
    for seg, buf in be._persist_stamps.values():
        host = np.zeros((len(seg.tables.tasks), 4), np.uint64)
        buf.download(host)
        out.append((seg, host))
    return out
