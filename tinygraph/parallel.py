"""Communicators for tensor parallelism: how the ``all_reduce`` op (``tinygraph.ops.collective``)
reaches the other ranks.

Only an in-process one exists so far, :class:`InProcessCommunicator`: N ranks in one process,
each rank its own :class:`tinygraph.Session` (NumPy backend) driven by its own thread. A rank's
``all_reduce`` hands in its array and waits at a barrier until every rank has handed in one; the
last to arrive sums them **in rank order** (0, 1, ..., N-1, in float32) once, and every rank gets
that same array, so all ranks hold bit-identical results and take identical decisions afterwards
(argmax, sampling, MoE routing). Across processes (one per rank, ``tinygraph.launch``): NCCL on
GPUs (``tinygraph.backends.cuda.nccl.NcclCommunicator``) and TCP for NumPy ranks
(``tinygraph.distributed.SocketCommunicator``, the same sums as here); they register here too, so
the op's node finds any of them by id.

A session is given its rank's handle with :func:`attach` (``session.communicator``); the op's
node records the communicator's id and the rank (``params``), and its NumPy reference finds the
communicator again by that id (:func:`communicator`): references see only params and arrays.

Failure: a rank that raises calls :meth:`InProcessCommunicator.abort`, which breaks the barrier,
so the ranks waiting in ``all_reduce`` raise :class:`CommunicatorError` naming the failed rank
instead of hanging; a rank that never arrives (a deadlock, a rank stuck elsewhere) makes the
others raise after ``timeout`` seconds, naming the ranks that are missing.
"""
from __future__ import annotations

import itertools
import threading
import weakref
from typing import Callable, Sequence, TypeVar

import numpy as np

from .errors import TinygraphError

T = TypeVar("T")

#: communicator id -> communicator; weak, so a closed sharded model's communicator goes away
_COMMUNICATORS: "weakref.WeakValueDictionary[int, InProcessCommunicator]" = weakref.WeakValueDictionary()
_IDS = itertools.count(1)


class CommunicatorError(TinygraphError, RuntimeError):
    """A collective could not complete: another rank failed, a rank did not arrive within the
    timeout, or the ranks disagreed (different ops, shapes or dtypes in the same round)."""


class InProcessCommunicator:
    """``size`` ranks in one process (threads); see the module docstring. ``timeout``: seconds a
    rank waits in one collective for the others before raising :class:`CommunicatorError`."""

    def __init__(self, size: int, timeout: float = 120.0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"communicator size must be an int >= 1, got {size!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.size = size
        self.timeout = float(timeout)
        self.id = next(_IDS)
        _COMMUNICATORS[self.id] = self
        self._lock = threading.Lock()
        self._slots: list[tuple[str, np.ndarray] | None] = [None] * size
        self._result: np.ndarray | None = None
        self._error: str | None = None  # this round's disagreement, raised on every rank
        self._failure: str | None = None  # "rank r failed: ..." (abort)
        self._barrier = threading.Barrier(size, action=self._reduce)
        self.rounds = 0  # completed collectives (tests and diagnostics)

    def handle(self, rank: int) -> "RankHandle":
        """Rank ``rank``'s view of this communicator (what :func:`attach` gives a session)."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} outside 0..{self.size - 1}")
        return RankHandle(self, rank)

    def all_reduce(self, rank: int, x: np.ndarray, tag: str = "") -> np.ndarray:
        """Sum of every rank's ``x`` (same shape on all), in float32, summed in rank order; the
        same read-only array is returned to every rank. ``tag`` (the node's name) must be equal
        on all ranks: ranks running different collectives in one round is an error, not a sum."""
        with self._lock:
            if self._failure is not None:
                raise CommunicatorError(f"all_reduce {tag!r} on rank {rank}: {self._failure}")
            self._slots[rank] = (tag, x)
        try:
            self._barrier.wait(self.timeout)
        except threading.BrokenBarrierError:
            with self._lock:
                if self._failure is not None:
                    raise CommunicatorError(f"all_reduce {tag!r} on rank {rank}: {self._failure}") from None
                missing = [r for r, s in enumerate(self._slots) if s is None]
                self._failure = (f"timed out after {self.timeout:g} s waiting for rank(s) {missing} "
                                 "(a rank failed, or stopped calling all_reduce)")
                raise CommunicatorError(f"all_reduce {tag!r} on rank {rank}: {self._failure}") from None
        # every rank has passed the barrier's action: _result is this round's until all ranks
        # enter the next round (the next action runs only then)
        if self._error is not None:
            raise CommunicatorError(f"all_reduce {tag!r} on rank {rank}: {self._error}")
        assert self._result is not None
        return self._result

    def _reduce(self) -> None:
        """The barrier's action (run by one thread, all ranks waiting): the rank-ordered sum."""
        slots = self._slots
        self._slots = [None] * self.size
        self.rounds += 1
        self._result, self._error = None, None
        tags = {s[0] for s in slots}  # type: ignore[index]
        shapes = {s[1].shape for s in slots}  # type: ignore[index]
        if len(tags) != 1 or len(shapes) != 1:
            self._error = (f"ranks disagree in one round: tags {[s[0] for s in slots]}, "  # type: ignore[index]
                           f"shapes {[s[1].shape for s in slots]}")  # type: ignore[index]
            return
        acc = np.array(slots[0][1], dtype=np.float32)  # type: ignore[index]  # a copy: never a rank's arena
        for s in slots[1:]:
            acc += s[1]  # type: ignore[index]
        acc.flags.writeable = False
        self._result = acc

    def abort(self, rank: int, error: BaseException) -> None:
        """Rank ``rank`` failed with ``error``: wake every rank waiting in a collective (they raise
        :class:`CommunicatorError` naming it); later collectives fail at once until :meth:`reset`."""
        with self._lock:
            if self._failure is None:
                self._failure = f"rank {rank} failed: {type(error).__name__}: {error}"
        self._barrier.abort()

    def reset(self) -> None:
        """Make the communicator usable again after a failure; call only while no rank is inside a
        collective (e.g. after joining every rank's thread)."""
        with self._lock:
            self._failure, self._error, self._result = None, None, None
            self._slots = [None] * self.size
            self._barrier.reset()

    @property
    def failed(self) -> bool:
        return self._failure is not None


class OneRankCommunicator:
    """Base of the communicators across processes (NCCL, TCP), of which this process holds one
    rank: ``size``, ``rank``; :meth:`_register` makes the ``all_reduce`` node find it by id."""

    size: int
    rank: int

    def _register(self) -> None:
        self.id = next(_IDS)
        _COMMUNICATORS[self.id] = self  # type: ignore[assignment]

    def handle(self, rank: int) -> "RankHandle":
        """This process's handle (what :func:`attach` gives a session): only its own rank."""
        if rank != self.rank:
            raise ValueError(f"{type(self).__name__} belongs to rank {self.rank} only, not {rank}")
        return RankHandle(self, rank)  # type: ignore[arg-type]


class RankHandle:
    """One rank's side of a communicator (``session.communicator``)."""

    def __init__(self, comm: InProcessCommunicator, rank: int) -> None:
        self.comm, self.rank, self.size = comm, rank, comm.size

    def all_reduce(self, x: np.ndarray, tag: str = "") -> np.ndarray:
        return self.comm.all_reduce(self.rank, x, tag)

    def __repr__(self) -> str:
        return f"RankHandle(communicator {self.comm.id}, rank {self.rank} of {self.size})"


def attach(session, comm: InProcessCommunicator, rank: int) -> None:
    """Give ``session`` rank ``rank``'s handle of ``comm``: its graphs' ``all_reduce`` nodes
    reduce over ``comm``."""
    session.communicator = comm.handle(rank)


def communicator(comm_id: int) -> InProcessCommunicator:
    """The live communicator with id ``comm_id`` (the ``all_reduce`` reference's lookup)."""
    c = _COMMUNICATORS.get(comm_id)
    if c is None:
        raise CommunicatorError(f"all_reduce: communicator {comm_id} no longer exists (its model was closed)")
    return c


def split(n: int, parts: int, rank: int) -> tuple[int, int]:
    """The [lo, hi) slice of ``n`` items that ``rank`` of ``parts`` holds: contiguous, the first
    ``n % parts`` slices one longer (so ``n`` need not divide)."""
    base, extra = divmod(n, parts)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def run_ranks(comm: InProcessCommunicator, fns: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``fns[r]`` on its own thread for every rank ``r`` and wait for all; returns their
    results in rank order. A rank that raises aborts the communicator (the others stop waiting
    in their collectives); then the first *original* error in rank order is raised (a
    :class:`CommunicatorError` only when every failure is one, e.g. a timeout), and the
    communicator is reset for the next call."""
    if len(fns) != comm.size:
        raise ValueError(f"run_ranks: {len(fns)} functions for {comm.size} ranks")
    results: list = [None] * comm.size
    errors: list[BaseException | None] = [None] * comm.size

    def body(r: int) -> None:
        try:
            results[r] = fns[r]()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            errors[r] = e
            comm.abort(r, e)

    threads = [threading.Thread(target=body, args=(r,), name=f"tinygraph-rank{r}", daemon=True)
               for r in range(comm.size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [e for e in errors if e is not None]
    if failed:
        comm.reset()
        raise next((e for e in failed if not isinstance(e, CommunicatorError)), failed[0])
    return results
