"""A Session owns persistent buffers (weights, KV caches) and runs graphs on one backend."""
from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from .backends import Backend, create_backend
from .dtypes import DType, as_dtype
from .errors import DTypeError, GraphError, ShapeError
from .graph import ExecPlan, Graph
from .memory import MemoryPlan
from .tensor import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .parallel import RankHandle


class SessionClosedError(GraphError):
    """An operation on a closed :class:`Session` (or on a closed model), or on a persistent
    buffer that was released with :meth:`Session.free`."""


def _input_of(g: Graph, key: "Tensor | str", what: str) -> Tensor:
    """The input of ``g`` that ``key`` (the tensor or its name) names; GraphError otherwise."""
    t = next((i for i in g.inputs if i.name == key), None) if isinstance(key, str) else key
    if t is None or t.op != "input" or t.graph is not g:
        raise GraphError(f"{what} {key!r} is not an input of this graph")
    return t


class Session:
    """Owns persistent buffers and a backend.

    ``backend``: ``"numpy"``, ``"cuda"`` or ``"auto"`` (CUDA when a GPU and driver are present,
    NumPy otherwise; the choice is printed to stderr once).

    Threads: every method may be called from any thread. A re-entrant lock serialises what
    touches the backend (compute, each step of a compute_loop, upload/download, free, close),
    since a backend's arena and input area are shared by all its graphs; the graph being built
    (``current_graph``) is per thread. ``close()`` from another thread waits for the running step;
    the next one raises :class:`SessionClosedError`."""

    def __init__(self, backend: str | Backend = "auto", verbose: bool = True) -> None:
        self.backend: Backend = create_backend(backend, verbose=verbose) if isinstance(backend, str) else backend
        self.persistents: list[Tensor] = []
        self._lock = threading.RLock()
        self._local = threading.local()  # current_graph, per thread
        self.finalized = False
        self.closed = False
        self._freed: set[int] = set()  # ids of persistent buffers released by free()
        self._frees = 0  # free() calls so far: a running compute_loop re-checks its buffers when it moves
        self._plans: dict[tuple, tuple[list[int], dict[str, dict[int, Any]], int, int]] = {}
        # this session's rank of a tensor-parallel model (tinygraph.parallel.attach): what the
        # all_reduce nodes of its graphs reduce over; None for an ordinary session
        self.communicator: "RankHandle | None" = None

    @property
    def current_graph(self) -> Graph | None:
        """The graph that ops on persistent buffers alone add to (set by :meth:`graph`); per thread."""
        return getattr(self._local, "graph", None)

    @current_graph.setter
    def current_graph(self, g: Graph | None) -> None:
        self._local.graph = g

    # -- persistent buffers -----------------------------------------------------------------
    def persistent(self, shape: Sequence[int], dtype: DType | str, name: str | None = None) -> Tensor:
        """Declare a buffer that lives across graphs. Allocated at :meth:`finalize` (immediately if
        the session is already finalized)."""
        self._check_open()
        shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in shape):
            raise ShapeError(f"persistent {name!r}: negative size in shape {shape}")
        dt = as_dtype(dtype)
        if dt.is_quant and (len(shape) != 2 or shape[1] % dt.block):
            raise ShapeError(f"persistent {name!r}: a {dt.name} tensor is a [rows, K] matrix with K a multiple of "
                             f"{dt.block} (whole blocks per row), got shape {shape}")
        t = Tensor("persistent", (), shape, dt, name=name, session=self)
        with self._lock:
            if self.finalized:
                self.backend.allocate(t)  # out of memory: raises, and t is not kept
            self.persistents.append(t)
        return t

    def finalize(self) -> None:
        """Allocate every declared persistent buffer (once).

        All or nothing: if an allocation fails (e.g. the GPU is out of memory; the backend's
        error says how many bytes were asked for and how many are free), the buffers allocated
        so far are released again and the error propagates; the session stays open and
        unfinalized, so it can be closed, or persistents declared again in a smaller form."""
        with self._lock:
            self._check_open()
            if not self.finalized:
                done: list[Tensor] = []
                try:
                    for t in self.persistents:
                        self.backend.allocate(t)
                        done.append(t)
                except BaseException:
                    self._release(done)
                    raise
                self.finalized = True

    def free(self, tensors: Sequence[Tensor]) -> None:
        """Release persistent buffers of this session before the session itself is closed (a
        model sharing the session releases its weights and KV cache this way). Using a released
        buffer afterwards raises :class:`SessionClosedError`."""
        with self._lock:  # waits for a running step of another thread
            self._check_open()
            ts = [t for t in tensors if t.op == "persistent" and t.session is self and t.id not in self._freed]
            if self.finalized:
                self._release(ts)
            ids = {t.id for t in ts}
            self._freed |= ids
            self._frees += 1
            self.persistents = [t for t in self.persistents if t.id not in ids]

    def _release(self, ts: Sequence[Tensor]) -> None:
        """Free the backend buffers of ``ts``."""
        for t in ts:
            self.backend.free(t)

    def _check_buffer(self, t: Tensor, what: str) -> None:
        self._check_open()
        if t.op != "persistent" or t.session is not self:
            raise GraphError(f"{what}: {t.describe()} is not a persistent buffer of this session")
        if t.id in self._freed:
            raise SessionClosedError(f"{what}: {t.describe()} was released (Session.free or model.close)")
        if not self.finalized:
            raise GraphError(f"{what}: call sess.finalize() before {what} of {t.describe()}")

    def upload(self, t: Tensor, array: Any) -> None:
        """Copy a host array (same shape; converted to the buffer's dtype) into persistent ``t``.

        A block-quantized ``t`` [N, K] takes its raw blocks (uint8 [N, row bytes], e.g. a GGUF
        tensor's data, uploaded as they are) or a float array [N, K] (float32/16, bfloat16),
        quantized here with ``tinygraph.quant.quantize``."""
        self._check_buffer(t, "upload")
        data = self._host_data(t, np.asarray(array))  # conversion and quantization outside the lock
        with self._lock:  # a step of another thread may be reading the buffer
            self._check_buffer(t, "upload")
            self.backend.upload(t, data)

    @staticmethod
    def _host_data(t: Tensor, a: np.ndarray) -> np.ndarray:
        """``a`` as the bytes ``t`` holds (checked; converted, or quantized for a block type)."""
        if not t.dtype.is_quant:
            if a.shape != t.shape:
                raise ShapeError(f"upload: array of shape {a.shape} into {t.describe()}")
            return np.ascontiguousarray(a, dtype=t.dtype.np)
        from .quant import nonfinite_scales, quantize
        rb = t.dtype.nbytes(t.shape[1])
        if a.dtype == np.uint8 and a.shape in ((t.shape[0], rb), (t.nbytes,)):
            bad = nonfinite_scales(a, t.dtype.name)
            if bad:
                warnings.warn(f"upload: {t.describe()}: {bad} block(s) have a NaN or infinite scale; their "
                              "weights are NaN/Inf", stacklevel=3)
            return np.ascontiguousarray(a).reshape(t.shape[0], rb)
        try:
            floating = as_dtype(a.dtype).is_float  # float32/16 and ml_dtypes' bfloat16
        except DTypeError:
            floating = a.dtype.kind == "f"  # float64
        if a.shape != t.shape or not floating:
            raise ShapeError(f"upload: {t.describe()} takes raw blocks uint8 [{t.shape[0]}, {rb}] or floats "
                             f"{t.shape}, got {a.dtype} {a.shape}")
        return quantize(a.astype(np.float32), t.dtype.name)

    def download(self, t: Tensor) -> np.ndarray:
        """A host copy of persistent ``t`` (block-quantized: its raw blocks, uint8 [N, row bytes])."""
        with self._lock:
            self._check_buffer(t, "download")
            return self.backend.download(t)

    # -- graphs -----------------------------------------------------------------------------
    def graph(self) -> Graph:
        """A fresh graph; it becomes the current graph that ops on persistent buffers add to."""
        self._check_open()
        g = Graph(self)
        self.current_graph = g
        return g

    def _plan_for(self, g: Graph) -> ExecPlan:
        key = g.signature()
        cached = self._plans.get(key)
        if cached is None:
            plan = g._compute_plan()
            pos = {n.id: i for i, n in enumerate(g.nodes)}
            m = plan.memory
            by_pos = {f: {pos[k]: v for k, v in getattr(m, f).items()}
                      for f in ("offsets", "sizes", "lifetimes")}
            by_pos["inplace"] = {pos[k]: pos[v] for k, v in m.inplace.items()}
            self._plans[key] = ([pos[n.id] for n in plan.order], by_pos, m.peak, m.total)
            return plan
        order, by_pos, peak, total = cached
        nodes = g.nodes
        mem = MemoryPlan(peak=peak, total=total, inplace={nodes[k].id: nodes[v].id for k, v in by_pos["inplace"].items()},
                         **{f: {nodes[k].id: v for k, v in by_pos[f].items()} for f in ("offsets", "sizes", "lifetimes")})
        return ExecPlan([nodes[i] for i in order], mem)

    def compute(self, g: Graph, feeds: Mapping[Tensor | str, Any] | None = None,
                times: dict[int, float] | None = None) -> list[np.ndarray]:
        """Run ``g``: ``feeds`` maps each input (or its name) to a NumPy array. Returns one array
        per output, in declaration order. With ``times`` (a dict), the run is profiled: each
        compute node's id maps to its run time in microseconds (CUDA: GPU time between events,
        launched one by one rather than replayed)."""
        with self._lock:
            plan, arrays = self._prepare(g, feeds)
            return self.backend.execute(g, plan, arrays, times)

    def compute_loop(self, g: Graph, feeds: Mapping[Tensor | str, Any] | None, steps: int,
                     feedback: Mapping[Tensor | str, Tensor] | None = None,
                     advance: Mapping[Tensor | str, int | Sequence[int]] | None = None,
                     lookahead: int = 4) -> Iterator[list[np.ndarray]]:
        """Run ``g`` ``steps`` times, each step's inputs made from the step before on the device:
        ``feedback`` maps an input to an output of the same shape and dtype (the next step's
        value is this step's output, e.g. the sampled token), ``advance`` maps an int32 input to
        an increment (one int for every element, or one per element; e.g. the position + 1);
        other inputs keep their value. The first step uses ``feeds``. Yields each step's outputs
        (as :meth:`compute` returns them).

        Decode without a host round trip per token: on CUDA, steps are queued up to
        ``lookahead`` ahead of the one being yielded (graph replay, then the feedback copies and
        increments on the GPU), so the GPU never waits for Python. Stopping early (``close()``
        on the iterator, or leaving the ``for``) waits for the queued steps: their side effects
        (e.g. KV-cache writes at later positions) have happened. The NumPy backend runs the
        same loop step by step. Each step holds the session's lock (see the class docstring)."""
        with self._lock:
            return self._compute_loop(g, feeds, steps, feedback, advance, lookahead)

    def _compute_loop(self, g: Graph, feeds, steps: int, feedback, advance, lookahead: int) -> Iterator[list[np.ndarray]]:
        plan, arrays = self._prepare(g, feeds)
        if steps < 0:
            raise ValueError(f"compute_loop: steps must be >= 0, got {steps}")
        if lookahead < 1:
            raise ValueError(f"compute_loop: lookahead must be >= 1, got {lookahead}")
        def find(k, what: str) -> Tensor:
            return _input_of(g, k, f"compute_loop: {what} key")
        fb: dict[int, int] = {}
        for k, out in (feedback or {}).items():
            t = find(k, "feedback")
            if not any(out is o for o in g.outputs):
                raise GraphError(f"compute_loop: feedback for {t.describe()} must be an output of the graph, "
                                 f"got {getattr(out, 'describe', lambda: repr(out))()}")
            if out.shape != t.shape or out.dtype != t.dtype:
                raise ShapeError(f"compute_loop: output {out.describe()} cannot feed input {t.describe()}")
            fb[t.id] = next(i for i, o in enumerate(g.outputs) if o is out)
        adv: dict[int, np.ndarray] = {}
        for k, inc in (advance or {}).items():
            t = find(k, "advance")
            if t.dtype.np != np.int32:
                raise GraphError(f"compute_loop: advance needs an int32 input, got {t.describe()}")
            a = np.broadcast_to(np.asarray(inc, np.int32).reshape(-1), (t.size,)).copy() \
                if np.ndim(inc) == 0 or np.size(inc) == t.size else None
            if a is None:
                raise ShapeError(f"compute_loop: advance for {t.describe()} needs one int or {t.size} of them")
            adv[t.id] = a
        run_loop = getattr(self.backend, "execute_loop", None)
        if run_loop is not None:
            inner = run_loop(g, plan, arrays, steps, fb, adv, lookahead)
        else:
            inner = self._host_loop(g, plan, arrays, steps, fb, adv)
        reads = {s.storage.id for n in plan.order for s in n.srcs}
        return self._locked_steps(inner, reads)

    def _locked_steps(self, inner: Iterator[list[np.ndarray]], reads: set[int]) -> Iterator[list[np.ndarray]]:
        """``inner``'s steps, each run under the session lock after checking that the session is
        open and that no buffer the graph reads was freed since (by another thread)."""
        frees = self._frees
        try:
            while True:
                with self._lock:
                    self._check_open()
                    if self._frees != frees:
                        frees = self._frees
                        if reads & self._freed:
                            raise SessionClosedError("compute_loop: a persistent buffer this loop reads was "
                                                     "released (Session.free or model.close) while it ran")
                    try:
                        outs = next(inner)
                    except StopIteration:
                        return
                yield outs
        finally:
            with self._lock:
                inner.close()

    def _host_loop(self, g: Graph, plan: ExecPlan, arrays: dict[int, np.ndarray], steps: int,
                   fb: dict[int, int], adv: dict[int, np.ndarray]) -> Iterator[list[np.ndarray]]:
        """compute_loop's meaning, one compute per step (backends without a device loop)."""
        arrays = dict(arrays)
        for i in range(steps):
            outs = self.backend.execute(g, plan, arrays, None)
            yield outs
            if i + 1 < steps:
                for tid, oi in fb.items():
                    arrays[tid] = np.ascontiguousarray(outs[oi])
                for tid, inc in adv.items():
                    arrays[tid] = (arrays[tid].reshape(-1) + inc).astype(np.int32).reshape(arrays[tid].shape)

    def _prepare(self, g: Graph, feeds: Mapping[Tensor | str, Any] | None) -> tuple[ExecPlan, dict[int, np.ndarray]]:
        """Checks shared by compute and compute_loop: the plan and the fed arrays by input id."""
        self._check_open()
        if g.session is not self:
            raise GraphError("compute: graph belongs to another session")
        if not self.finalized:
            self.finalize()
        if not g.outputs and not g.side_effects:
            raise GraphError("compute: graph has no outputs and no side effects (call g.output(...))")
        arrays: dict[int, np.ndarray] = {}
        for k, v in (feeds or {}).items():
            t = _input_of(g, k, "compute:")
            a = np.asarray(v)
            if a.shape != t.shape:
                raise ShapeError(f"compute: input {t.describe()} fed an array of shape {a.shape}")
            arrays[t.id] = np.ascontiguousarray(a, dtype=t.dtype.np)
        plan = g.plan()
        if plan.inputs_read is None:
            read = {s.storage.id for n in plan.order for s in n.srcs} | {o.storage.id for o in g.outputs}
            plan.inputs_read = [t for t in g.inputs if t.id in read]
        missing = [t.describe() for t in plan.inputs_read if t.id not in arrays]
        if missing:
            raise GraphError(f"compute: no value fed for input(s) {', '.join(missing)}")
        if self._freed:  # only after Session.free (a model sharing this session was closed)
            gone = [t.describe() for n in plan.order for t in n.srcs if t.storage.id in self._freed]
            if gone:
                raise SessionClosedError(f"compute: the graph reads released persistent buffer(s): "
                                         f"{', '.join(gone[:3])}")
        return plan, arrays

    # -- lifetime ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosedError("session is closed: close() released its buffers; create a new Session")

    def close(self) -> None:
        """Release every buffer the backend holds. The session is unusable afterwards: every
        method raises :class:`SessionClosedError`. Idempotent; the session counts as closed even
        if the backend reports an error while releasing (that error propagates)."""
        with self._lock:  # waits for a running step of another thread
            if not self.closed:
                self.closed = True
                self.current_graph = None
                self._plans.clear()
                self.persistents = []
                self.backend.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"Session(backend={self.backend.name!r}, persistent={len(self.persistents)}{state})"


