"""The CUDA backend: runs planned graphs with the NVRTC-compiled kernels of ``cuda_src/``.

Memory: every persistent buffer is one device allocation made at ``finalize``; a graph's
intermediates live in one arena (grown to the largest plan, then reused); graph inputs are
staged into one device input area. A node's address is its owner's base address plus its view
offset; kernels read strides from the descriptor, so views, transposes and KV-cache slots cost no
copy. Operands whose dtype differs from the kernel's are converted into scratch space first.

Replay: when the same graph object runs again with the same plan and the same device addresses,
its launches are captured into a CUDA graph and every later run is one ``cuGraphLaunch``
(inputs are copied in before it, outputs out after). Graphs whose position-dependent values come
from input tensors (``set_rows``, ``softmax``/``attention`` with a tensor ``past``) are identical
from step to step, so a model's decode step replays for every token.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import BackendError
from ...graph import ExecPlan, Graph
from ...tensor import Tensor
from .. import Backend
from . import driver, persistent, select
from .kernels import Arg, KernelLibrary
from .launch import LAUNCH_OBSERVER
from .limits import ALIGN, COUNTER_BYTES, NeedScratch
from .lower import LOWERINGS
from .lower_linear import GEMV_DTYPES

_ALIGN = ALIGN
_COUNTER_BYTES = COUNTER_BYTES
_NeedScratch = NeedScratch
#: runs of one graph before it is captured (the first run sizes scratch space and loads modules)
CAPTURE_AFTER = int(os.environ.get("TINYGRAPH_CUDA_CAPTURE_AFTER", "1"))
#: 0 disables CUDA-graph replay (every launch from Python)
REPLAY = os.environ.get("TINYGRAPH_CUDA_GRAPHS", "1") != "0"


@dataclass
class ReplayState:
    """What the backend keeps per graph between runs (``CudaBackend._replay``): the plan and the
    device addresses it last ran with (a change of either starts over), how many eager runs it
    had, the captured step (``exec``, after ``CAPTURE_AFTER`` eager runs), every node's base
    address, the input area's layout (total bytes, input id -> byte offset), and compute_loop's
    step-with-tail capture (``loop_key``, ``loop_exec``, the increments' device buffer)."""

    plan: ExecPlan
    addresses: tuple[int, ...]
    base: dict[int, int]
    layout: tuple[int, dict[int, int]]
    eager_runs: int = 0
    exec: Any = None
    loop_key: Any = None
    loop_exec: Any = None
    loop_incs: Any = None

    def current(self, plan: ExecPlan, addresses: tuple[int, ...]) -> bool:
        """Whether this state belongs to ``plan`` at these device addresses."""
        return self.plan is plan and self.addresses == addresses


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, ordinal: int = 0) -> None:
        self.device = driver.get_device(ordinal)
        self.device.make_current()
        # TINYGRAPH_CUDA_OPTIONS: extra NVRTC options for every kernel (e.g. "-DTG_LQR_TMA=0",
        # a tuning knob of a .cu file), so a whole model can be timed with a kernel variant
        self.lib = KernelLibrary(self.device, options=os.environ.get("TINYGRAPH_CUDA_OPTIONS", "").split())
        self.stream = driver.Stream()
        self.buffers: dict[int, driver.DeviceBuffer] = {}
        self._arena: driver.DeviceBuffer | None = None
        self._inputs: driver.DeviceBuffer | None = None
        self._scratch: driver.DeviceBuffer | None = None
        self._work: driver.DeviceBuffer | None = None  # attention split partials
        self._pin: driver.PinnedBuffer | None = None  # page-locked staging of the replay path
        self._rings: list[driver.PinnedBuffer] = []  # free output rings of compute_loops
        self._written: set[int] = set()
        self._owner: object | None = None  # the compute_loop whose inputs the input area holds
        self._pin_free = driver.Event(timing=False)  # recorded after each upload from self._pin
        self._replay: "weakref.WeakKeyDictionary[Graph, ReplayState]" = weakref.WeakKeyDictionary()
        self.launches = 0
        self._klog: dict[int, list[str]] | None = None  # the graph being lowered's Graph.kernels
        self._choices: dict[int, object] = {}  # the kernel choices of the plan being run
        self._persist: dict[bytes, tuple] = {}  # persistent segments' device tables, by content
        self._persist_stamps: dict[int, tuple] | None = None  # persistent.record_timeline's buffers

    # -- persistent buffers -------------------------------------------------------------------
    def allocate(self, t: Tensor) -> None:
        buf = driver.DeviceBuffer(max(t.nbytes, 1), what=f"allocating persistent buffer '{t.name}'",
                                  device=self.device)
        driver.memset_d8(buf.ptr, 0, buf.nbytes)  # KV caches start as zeros, never garbage/NaN
        self.buffers[t.id] = buf

    def upload(self, t: Tensor, array: np.ndarray) -> None:
        if array.nbytes:
            driver.upload_staged(self.buffers[t.id].ptr, np.ascontiguousarray(array).view(np.uint8).reshape(-1))

    def download(self, t: Tensor) -> np.ndarray:
        self.stream.synchronize("download")
        shape = (t.shape[0], t.dtype.nbytes(t.shape[1])) if t.dtype.is_quant else t.shape  # raw blocks
        out = np.empty(shape, t.dtype.np)
        if out.nbytes:
            self.buffers[t.id].download(out.view(np.uint8).reshape(-1))
        return out

    def free(self, t: Tensor) -> None:
        buf = self.buffers.pop(t.id, None)
        if buf is not None:
            self.stream.synchronize("freeing a persistent buffer")  # queued kernels may read it
            buf.free()
            self._replay.clear()  # captured graphs may hold its address

    def close(self) -> None:
        try:
            self.stream.synchronize("close")
        except Exception:
            pass
        for b in self.buffers.values():
            b.free()
        self.buffers.clear()
        self._replay.clear()
        for b in (self._arena, self._inputs, self._scratch, self._work, self._pin, *self._rings,
                  *(x for kept in self._persist.values() for x in kept),
                  *(buf for _, buf in (self._persist_stamps or {}).values())):
            if b is not None:
                b.free()
        self._persist.clear()
        self._persist_stamps = None
        self._arena = self._inputs = self._scratch = self._work = self._pin = None
        self._rings.clear()
        for m in self.lib._modules.values():  # the kernels' device memory
            m.unload()
        self.lib._modules.clear()
        self.lib._functions.clear()
        self.stream.destroy()

    def prepare_kernels(self) -> None:
        self.lib.precompile()

    def paged_attention_ok(self, dtype, head_dim: int, group: int) -> bool:
        """attn_gqa_paged's cases (``select.gqa_fits``): f16 / bf16, heads of 64 or 128, groups
        of at most 16."""
        return select.gqa_fits(dtype.short, head_dim, head_dim, group, self.lib.caps)

    def workspace_bytes(self) -> int:
        return sum(b.nbytes for b in (self._arena, self._inputs, self._scratch, self._work) if b is not None)

    # -- helpers ------------------------------------------------------------------------------
    def _grow(self, attr: str, nbytes: int, what: str) -> driver.DeviceBuffer:
        buf = getattr(self, attr)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.stream.synchronize(what)
                buf.free()
            buf = driver.DeviceBuffer(max(nbytes, _ALIGN), what=what, device=self.device)
            setattr(self, attr, buf)
        return buf

    def _addresses(self) -> tuple[int, ...]:
        return tuple(b.ptr if b is not None else 0 for b in (self._arena, self._inputs, self._scratch, self._work))

    def execute(self, graph: Graph, plan: ExecPlan, inputs: dict[int, np.ndarray],
                times: dict[int, float] | None = None) -> list[np.ndarray]:
        self.device.make_current()
        self._owner = None  # a running compute_loop must re-stage its inputs (shared input area)
        state = self._replay.get(graph)
        if times is None and self._captured(graph, plan):
            return self._replay_fast(graph, state, inputs)
        base: dict[int, int] = {tid: b.ptr for tid, b in self.buffers.items()}
        # storages this graph writes: a linear whose weight is not among them may start loading
        # it before the kernels ahead of it finish (programmatic dependent launch)
        self._written = {n.storage.id for n in plan.order}
        # programmatic dependent launch pays where kernels are short (decode: +12% tok/s on
        # SmolLM2) and costs where they are long (512-token prefill: -5%; H100, measured)
        self.lib.pdl_active = _decode_like(plan)
        arena = self._grow("_arena", plan.arena_bytes, "allocating the graph's arena")
        for tid, off in plan.memory.offsets.items():
            base[tid] = arena.ptr + off
        # inputs: one staging area, each input 256-byte aligned
        offs, total = {}, 0
        for tid, a in inputs.items():
            offs[tid] = total
            total += -(-max(a.nbytes, 1) // _ALIGN) * _ALIGN
        if inputs:
            area = self._grow("_inputs", total, "staging graph inputs")
            for tid in inputs:
                base[tid] = area.ptr + offs[tid]
        layout = (total, offs)
        self._stage(inputs, base, layout)
        self._scratch_used = 0
        addresses = self._addresses()
        if state is None or not state.current(plan, addresses):
            state = self._replay[graph] = ReplayState(plan, addresses, base, layout)
        graph.kernels.clear()
        self._klog = graph.kernels
        try:
            if times is not None:
                self._run_timed(plan, base, times)
            elif REPLAY and state.eager_runs >= CAPTURE_AFTER:
                cg = driver.Graph()
                with driver.capture(self.stream, cg):
                    self._run_all(plan, base)
                state.exec = cg.instantiate()
                state.exec.launch(self.stream)
            else:
                self._run_all(plan, base)
                state.addresses = self._addresses()  # scratch may have grown during the run
                state.eager_runs += 1
        finally:
            self._klog = None
        outs = []
        self.stream.synchronize("reading graph outputs")
        for o in graph.outputs:
            outs.append(self._fetch(o, base))
        return outs

    @staticmethod
    def _out_spans(graph: Graph, base: dict[int, int]) -> list[tuple[Tensor, int, int]]:
        """(output, device address, bytes of its span) per graph output."""
        return [(o, base[o.storage.id] + o.offset * o.dtype.itemsize, o.extent * o.dtype.itemsize)
                for o in graph.outputs]

    def _download_spans(self, spans: list, host_ptr: int) -> None:
        """Queue the copies of the outputs' spans to page-locked memory at ``host_ptr`` (laid out
        as :func:`_unpack` reads them)."""
        for _, src, nb in spans:
            if nb:
                driver.memcpy_dtoh(host_ptr, src, nb, self.stream)
            host_ptr += _aligned(nb)

    def _replay_stage(self, state: ReplayState, inputs: dict[int, np.ndarray], extra: int = 0) -> np.ndarray:
        """Queue the copy of ``inputs`` into the captured graph's input area through page-locked
        memory; returns that memory (``extra`` more bytes past the inputs, e.g. for outputs)."""
        total, offs = state.layout
        self._pin_free.synchronize()  # a compute_loop's upload may still be reading it
        pin = self._pinned(total + extra)
        host = pin.array(np.uint8, total + extra)
        if inputs:
            for tid, a in inputs.items():
                host[offs[tid]: offs[tid] + a.nbytes] = a.view(np.uint8).reshape(-1)
            driver.memcpy_htod(self._inputs.ptr, pin.ptr, total, self.stream)
            self._pin_free.record(self.stream)
        return host

    def _replay_fast(self, graph: Graph, state: ReplayState, inputs: dict[int, np.ndarray]) -> list[np.ndarray]:
        """The per-token path: inputs into page-locked memory and up, one graph launch, the
        outputs' spans down into page-locked memory, one wait: all queued at once, so the GPU
        sees no host work between them."""
        spans = self._out_spans(graph, state.base)
        total = state.layout[0]
        host = self._replay_stage(state, inputs, _span_bytes(spans))
        state.exec.launch(self.stream)
        self._download_spans(spans, self._pin.ptr + total)
        self.stream.synchronize("reading graph outputs")
        outs = _unpack(host, total, spans)
        return outs

    def execute_loop(self, graph: Graph, plan: ExecPlan, inputs: dict[int, np.ndarray], steps: int,
                     feedback: dict[int, int], advance: dict[int, np.ndarray], lookahead: int):
        """Session.compute_loop on the GPU: once the graph is captured, each step is a graph
        replay, the outputs' copy into a ring of page-locked slots, and the next step's inputs
        made on the device (feedback copies, advance kernels), queued ``lookahead`` steps ahead
        of the step being yielded."""
        for oi in feedback.values():
            o = graph.outputs[oi]
            if not o.is_contiguous:
                raise BackendError(f"compute_loop: feedback output {o.describe()} must be contiguous")
        return self._loop(graph, plan, dict(inputs), steps, feedback, advance, lookahead)

    def _loop(self, graph, plan, inputs, steps, feedback, advance, lookahead):
        # cur: host values of the inputs of step `queued`; fed-back ones are stale while the
        # device made them (fb_known False) and are read back from the last step's outputs when
        # the loop must re-stage (another graph ran on this backend since: it shares the input
        # area and the arena), or when the graph is (re)captured.
        cur = {tid: a.copy() for tid, a in inputs.items()}
        fb_known = True
        token = object()
        host_outs: dict[int, list[np.ndarray]] = {}  # steps run through execute() (not captured yet)
        ring = slot = spans = copies = None
        own: list = [None]  # the page-locked ring of output slots this loop holds
        depth = lookahead + 1
        events = [driver.Event(timing=False) for _ in range(depth)]
        adv = [(tid, inc) for tid, inc in advance.items() if tid in cur]

        def step_after(values: dict, outs: list) -> dict:
            nxt = dict(values)
            for tid, oi in feedback.items():
                nxt[tid] = np.ascontiguousarray(outs[oi]).astype(cur[tid].dtype).reshape(cur[tid].shape)
            for tid, inc in adv:
                nxt[tid] = (nxt[tid].reshape(-1) + inc).astype(np.int32).reshape(nxt[tid].shape)
            return nxt

        def outputs_of(k: int) -> list[np.ndarray]:
            if k in host_outs:
                return host_outs.pop(k)
            events[k % depth].synchronize()
            return _unpack(ring, (k % depth) * slot, spans)

        def layout() -> None:
            nonlocal ring, slot, spans, copies
            state = self._replay[graph]
            base, offs = state.base, state.layout[1]
            copies = [(self._inputs.ptr + offs[tid], base[o.storage.id] + o.offset * o.dtype.itemsize, o.nbytes)
                      for tid, oi in feedback.items() if tid in offs for o in (graph.outputs[oi],)]
            spans = self._out_spans(graph, base)
            slot = _span_bytes(spans)
            if own[0] is None or own[0].nbytes < slot * depth:  # this loop's own ring (loops may interleave)
                if own[0] is not None:
                    self._rings.append(own[0])
                fit = [r for r in self._rings if r.nbytes >= slot * depth]
                own[0] = self._rings.pop(self._rings.index(fit[0])) if fit else \
                    driver.PinnedBuffer(slot * depth, "the ring of compute_loop outputs")
            ring = own[0].array(np.uint8, slot * depth)

        def enqueue(k: int) -> None:
            # one graph: step k, then step k+1's inputs from its outputs (the loop's tail)
            self._loop_exec(graph, plan, copies, adv).launch(self.stream)
            self._download_spans(spans, own[0].ptr + (k % depth) * slot)
            events[k % depth].record(self.stream)

        try:
            queued = 0
            for k in range(steps):
                while queued < steps and queued < k + lookahead:
                    if self._owner is token and self._captured(graph, plan):
                        enqueue(queued)
                    else:
                        if not fb_known:  # inputs of step `queued` from the outputs of the one before
                            self.stream.synchronize("re-staging compute_loop inputs")
                            prev = host_outs[queued - 1] = outputs_of(queued - 1)
                            for tid, oi in feedback.items():  # (advanced inputs are up to date)
                                v = np.ascontiguousarray(prev[oi]).astype(cur[tid].dtype).reshape(cur[tid].shape)
                                inc = advance.get(tid)
                                cur[tid] = v if inc is None else (v.reshape(-1) + inc).astype(np.int32).reshape(v.shape)
                            fb_known = True
                        if not self._captured(graph, plan):  # the first runs size and capture
                            outs = host_outs[queued] = self.execute(graph, plan, cur)
                            cur = step_after(cur, outs)
                            queued += 1
                            continue
                        layout()
                        self._replay_stage(self._replay[graph], cur)
                        self._owner = token
                        enqueue(queued)
                    # the device made step queued+1's inputs: advanced ones are known here
                    fb_known = not feedback
                    for tid, inc in adv:
                        if tid not in feedback:
                            cur[tid] = (cur[tid].reshape(-1) + inc).astype(np.int32).reshape(cur[tid].shape)
                    queued += 1
                yield outputs_of(k)
        finally:
            # an unfinished loop may be collected after the backend closed: then there is
            # nothing left to wait for or free
            if self.stream.alive:
                self.stream.synchronize("finishing compute_loop")
                if own[0] is not None:
                    self._rings.append(own[0])

    def _loop_exec(self, graph: Graph, plan: ExecPlan, copies: list, adv: list) -> driver.GraphExec:
        """The captured graph of one compute_loop step with its tail: the plan's kernels, then
        the fed-back outputs copied into their inputs and the advanced inputs incremented, so
        that a step costs one graph launch. Kept with the graph's replay state (a new capture of
        the graph drops it) per (copies, increments); the tail comes after every kernel of the
        step, so kernels that read inputs before their programmatic-launch wait (attention_store's
        positions) never race it."""
        state = self._replay[graph]
        key = (tuple(copies), tuple((tid, inc.tobytes()) for tid, inc in adv))
        if state.loop_key == key:
            return state.loop_exec
        from .kernels import i32, ptr
        base, offs = state.base, state.layout[1]
        incbuf = None
        if adv:
            incs = np.concatenate([inc for _, inc in adv]).astype(np.int32)
            incbuf = driver.DeviceBuffer(incs.nbytes, what="compute_loop increments", device=self.device)
            incbuf.upload(incs)
        self._written = {n.storage.id for n in plan.order}
        self.lib.pdl_active = _decode_like(plan)
        self._scratch_used = 0
        cg = driver.Graph()
        with driver.capture(self.stream, cg):
            self._run_all(plan, base)
            for dst, src, nb in copies:
                driver.memcpy_dtod(dst, src, nb, self.stream)
            at = 0
            for tid, inc in adv:
                driver.launch(self.lib.get("advance", "i32"), 1, 32,
                              [ptr(self._inputs.ptr + offs[tid]), ptr(incbuf.ptr + at), i32(inc.size)],
                              stream=self.stream, pdl=False)
                at += inc.nbytes
        state.loop_key, state.loop_exec, state.loop_incs = key, cg.instantiate(), incbuf
        return state.loop_exec

    def _captured(self, graph: Graph, plan: ExecPlan) -> bool:
        state = self._replay.get(graph)
        return state is not None and state.exec is not None and state.current(plan, self._addresses())

    def _pinned(self, nbytes: int) -> driver.PinnedBuffer:
        """Page-locked host staging for the replay path (grown on demand; reused: every replay
        waits for its copies before returning)."""
        if self._pin is None or self._pin.nbytes < nbytes:
            self._pin = driver.PinnedBuffer(max(nbytes, 4096), "staging graph inputs and outputs")
        return self._pin

    def _stage(self, inputs: dict[int, np.ndarray], base: dict[int, int], layout: tuple) -> None:
        """Copy the host inputs into the device staging area (one transfer)."""
        total, offs = layout
        if not inputs:
            return
        host = np.empty(total, np.uint8)
        for tid, a in inputs.items():
            host[offs[tid]: offs[tid] + a.nbytes] = a.view(np.uint8).reshape(-1)
        driver.memcpy_htod(self._inputs.ptr, host, total, self.stream)
        self._host_inputs = host  # keep alive until the stream has read it

    def _run_timed(self, plan: ExecPlan, base: dict[int, int], times: dict[int, float]) -> None:
        """Run node by node with an event before and after each: GPU time per node (us)."""
        self._run_all(plan, base)  # first pass: sizes scratch space, loads modules
        events = []
        for n in plan.order:
            a, b = driver.Event(), driver.Event()
            a.record(self.stream)
            self._run(n, base)
            b.record(self.stream)
            events.append((n.id, a, b))
        self.stream.synchronize("profiling")
        for nid, a, b in events:
            times[nid] = driver.Event.elapsed_ms(a, b) * 1e3

    def _run_all(self, plan: ExecPlan, base: dict[int, int]) -> None:
        if plan.choices is None:  # the plan's kernel choices, made on its first run and kept in it
            plan.choices = select.plan_choices(plan.order, self.lib.caps, GEMV_DTYPES, os.environ)
        self._choices = plan.choices
        if plan.segments is None:
            plan.segments = persistent.plan_segments(plan, plan.choices, self._written, self.lib.sm_count)
        starts = {s.start: s for s in plan.segments}
        i, order = 0, plan.order
        while i < len(order):
            seg = starts.get(i)
            if seg is not None and self.lib.pdl_active and self._run_segment(seg, order, base):
                i = seg.stop  # decode-like plans only (see execute)
                continue
            n = order[i]
            try:
                self._run(n, base)
            except driver.CudaError as e:
                raise driver.CudaError(f"while running node {n.describe()}: {e}", getattr(e, "result", None)) from e
            i += 1

    def _run_segment(self, seg: "persistent.Segment", order: list[Tensor], base: dict[int, int]) -> bool:
        """Nodes ``order[seg.start:seg.stop]`` as one persistent kernel (its launch logged under
        the segment's first node, the others with none); False when it cannot run so (the nodes
        then run as their own kernels)."""
        names: list[str] = []
        tok = LAUNCH_OBSERVER.set(names.append)
        try:
            if not persistent.launch(self, seg, order, base):
                return False
        except driver.CudaError as e:
            raise driver.CudaError(f"while running the persistent segment of nodes {seg.start}..{seg.stop - 1} "
                                   f"({order[seg.start].describe()} ...): {e}", getattr(e, "result", None)) from e
        finally:
            LAUNCH_OBSERVER.reset(tok)
        self.launches += 1
        if self._klog is not None:
            self._klog[order[seg.start].id] = names
            for n in order[seg.start + 1: seg.stop]:
                self._klog[n.id] = []
        return True

    def _fetch(self, t: Tensor, base: dict[int, int]) -> np.ndarray:
        """Host copy of ``t`` (any strides): download its span, then view it with its strides."""
        it = t.dtype.itemsize
        span = t.extent
        raw = np.empty(max(span, 1), t.dtype.np)
        if span:
            driver.memcpy_dtoh(raw, base[t.storage.id] + t.offset * it, span * it)
        view = np.lib.stride_tricks.as_strided(raw, t.shape, tuple(s * it for s in t.strides))
        return np.array(view)

    def _arg(self, t: Tensor, base: dict[int, int]) -> Arg:
        return Arg(base[t.storage.id] + t.offset * t.dtype.itemsize, t.shape, t.strides)

    def _tmp(self, shape: tuple[int, ...], dtype) -> Arg:
        """A contiguous temporary in scratch space, alive until the current node finishes."""
        nbytes = max(1, int(np.prod(shape))) * dtype.itemsize
        need = self._scratch_used + -(-nbytes // _ALIGN) * _ALIGN
        scratch = self._scratch
        if scratch is None or scratch.nbytes < need:
            raise _NeedScratch(need, "_scratch")
        ptr = scratch.ptr + self._scratch_used
        self._scratch_used = need
        return Arg(ptr, tuple(shape), None)

    def _as(self, t: Tensor, base: dict[int, int], dtype) -> Arg:
        """``t`` as an operand of ``dtype``: itself, or a converted contiguous copy in scratch."""
        a = self._arg(t, base)
        if t.dtype == dtype:
            return a
        out = self._tmp(t.shape, dtype)
        self.lib.copy(out, a, t.dtype.short, dtype.short, stream=self.stream)
        return out

    def _run(self, n: Tensor, base: dict[int, int]) -> None:
        self._scratch_used = 0  # a node's temporaries are dead once the next node is queued
        for _ in range(8):  # a node with several temporaries may find each one too small in turn
            try:
                self._dispatch(n, base)
                return
            except _NeedScratch as e:  # first sight of a node needing more scratch: make room, retry
                self.stream.synchronize("growing scratch")
                old = getattr(self, e.attr)
                buf = driver.DeviceBuffer(max(e.nbytes * 2, 1 << 20), what="kernel scratch space", device=self.device)
                driver.memset_d8(buf.ptr, 0, buf.nbytes)  # attention's split counters must start at zero
                setattr(self, e.attr, buf)
                if old is not None:
                    old.free()
                if e.attr == "_scratch":
                    self._scratch_used = 0
        raise BackendError(f"{n.describe()}: kernel scratch space kept growing")

    def _dispatch(self, n: Tensor, base: dict[int, int]) -> None:
        """Launch ``n``'s kernels: its entry in the lowering table (``lower.LOWERINGS``)."""
        lower = LOWERINGS.get(n.op)
        if lower is None:
            raise BackendError(f"CUDA backend has no kernel for op {n.op!r} (node {n.describe()})")
        out = self._arg(n, base)
        self.launches += 1
        if self._klog is None:
            lower(self, n, out, base)
            return
        names: list[str] = []
        tok = LAUNCH_OBSERVER.set(names.append)
        try:
            lower(self, n, out, base)
        finally:
            LAUNCH_OBSERVER.reset(tok)
        self._klog[n.id] = names

    def choice(self, n: Tensor):
        """The kernel choice of node ``n`` (``select.plan_choices``), from the plan being run
        (every node is run by ``_run_all``, which makes the plan's choices first)."""
        return self._choices[n.id]

    def _pdl(self) -> bool | None:
        """A direct launch's PDL choice: the kernel's own (None), unless the run turned it off."""
        return None if self.lib.pdl_active else False

    def _contiguous_ids(self, t: Tensor, base: dict[int, int]) -> int:
        if not t.is_contiguous:
            raise BackendError(f"CUDA backend needs contiguous int32 ids/positions: {t.describe()}")
        return self._arg(t, base).ptr


def _decode_like(plan: ExecPlan) -> bool:
    """Whether every matrix product of the plan is a decode GEMV (``select.decode_like``)."""
    rows = [n.srcs[0].size // n.srcs[1].shape[1] for n in plan.order if n.op == "linear"]
    rows += [n.shape[-2] for n in plan.order if n.op == "matmul" and n.ndim >= 2]
    return select.decode_like(rows)


def _aligned(nbytes: int) -> int:
    return -(-max(nbytes, 1) // _ALIGN) * _ALIGN


def _span_bytes(spans: list) -> int:
    return sum(_aligned(nb) for _, _, nb in spans)


def _unpack(buf: np.ndarray, at: int, spans: list) -> list[np.ndarray]:
    """The outputs as arrays (copies, with their strides) from host bytes ``buf[at:]``."""
    outs = []
    for o, _, nb in spans:
        raw = buf[at: at + nb].view(o.dtype.np) if nb else np.empty(1, o.dtype.np)
        it = o.dtype.itemsize
        outs.append(np.array(np.lib.stride_tricks.as_strided(raw, o.shape, tuple(st * it for st in o.strides))))
        at += _aligned(nb)
    return outs
