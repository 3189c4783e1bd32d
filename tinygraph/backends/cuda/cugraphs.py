"""CUDA graphs for the driver wrapper (``driver.py`` re-exports every name): capture a stream's
launches into a graph, instantiate it, replay it; and a timing helper built on them."""
from __future__ import annotations

import weakref

from .driver import CudaError, Event, Stream, _capture_begins, _capture_ends, _drv, _release, _stream_handle, check

class GraphExec:
    """An instantiated CUDA graph; ``launch(stream)`` replays it."""

    def __init__(self, handle):
        self.handle = handle
        self._finalizer = weakref.finalize(self, _release, GraphExec._destroy, handle)

    @staticmethod
    def _destroy(h) -> None:
        try:
            _drv().cuGraphExecDestroy(h)
        except Exception:
            pass

    def launch(self, stream: Stream | None = None) -> None:
        check(_drv().cuGraphLaunch(self.handle, _stream_handle(stream)), "cuGraphLaunch")

    def destroy(self) -> None:
        if self._finalizer.alive:
            self._finalizer()


class Graph:
    """A captured CUDA graph (from :func:`capture`)."""

    def __init__(self, handle=None):
        self.handle = handle
        self._finalizer = None

    def _set(self, handle) -> None:
        self.handle = handle
        self._finalizer = weakref.finalize(self, _release, Graph._destroy, handle)

    @staticmethod
    def _destroy(h) -> None:
        try:
            _drv().cuGraphDestroy(h)
        except Exception:
            pass

    def num_nodes(self) -> int:
        drv = _drv()
        res = drv.cuGraphGetNodes(self.handle, 0)
        check(res[:1], "cuGraphGetNodes")
        return int(res[-1])

    def instantiate(self) -> GraphExec:
        if self.handle is None:
            raise CudaError("graph capture has not finished")
        return GraphExec(check(_drv().cuGraphInstantiate(self.handle, 0), "cuGraphInstantiate"))


class capture:
    """Context manager capturing the work issued to ``stream`` into a :class:`Graph`::

        g = Graph()
        with capture(stream, g):
            launch(f, grid, block, args, stream=stream)
        exe = g.instantiate(); exe.launch(stream)

    ``mode`` is 'thread_local' (default), 'global' or 'relaxed'.
    """

    def __init__(self, stream: Stream, graph: Graph | None = None, mode: str = "thread_local"):
        if not isinstance(stream, Stream):
            raise TypeError("capture needs a Stream (the legacy default stream cannot be captured)")
        self.stream = stream
        self.graph = graph if graph is not None else Graph()
        self.mode = mode

    def __enter__(self) -> Graph:
        drv = _drv()
        M = drv.CUstreamCaptureMode
        mode = {"global": M.CU_STREAM_CAPTURE_MODE_GLOBAL,
                "thread_local": M.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                "relaxed": M.CU_STREAM_CAPTURE_MODE_RELAXED}[self.mode]
        check(drv.cuStreamBeginCapture(self.stream.handle, mode), "cuStreamBeginCapture")
        _capture_begins()
        return self.graph

    def __exit__(self, exc_type, exc, tb) -> None:
        drv = _drv()
        res = drv.cuStreamEndCapture(self.stream.handle)
        _capture_ends()
        if exc_type is not None:
            if res[0] == drv.CUresult.CUDA_SUCCESS and res[1] is not None:
                try:
                    drv.cuGraphDestroy(res[1])
                except Exception:
                    pass
            return None  # propagate the original exception
        self.graph._set(check(res, "cuStreamEndCapture"))
        return None


def graph_time_us(fn, stream: Stream, n_inner: int = 20, reps: int = 15) -> float:
    """Median microseconds per ``fn(i)`` call, timed as replays of a CUDA graph holding
    ``n_inner`` calls (so host-side launch cost stays out of the number). ``fn(0)`` runs once
    outside the capture first (module and function loading)."""
    import numpy as np

    fn(0)
    stream.synchronize()
    g = Graph()
    with capture(stream, g):
        for i in range(n_inner):
            fn(i)
    exe = g.instantiate()
    exe.launch(stream)
    stream.synchronize()
    e0, e1 = Event(), Event()
    ts = []
    for _ in range(reps):
        e0.record(stream)
        exe.launch(stream)
        e1.record(stream)
        stream.synchronize()
        ts.append(Event.elapsed_ms(e0, e1))
    return float(np.median(ts)) * 1e3 / n_inner
