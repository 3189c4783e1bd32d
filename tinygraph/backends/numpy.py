"""The reference backend: runs each op's NumPy reference, honouring the memory plan.

Intermediates live in one byte arena per plan, at the planner's offsets, so a planner that let two
live blocks overlap would give wrong results here too. Every tensor is read through a strided
NumPy view of its buffer: views, transposes and KV-cache slots cost no copy.

Block-quantized weights keep their raw blocks, and beside them a float32 copy dequantized once
(at the first graph that reads them after an upload): the ops' references see the dequantized
values, which is their meaning, and a decode step does not decode the weights again each token.
"""
from __future__ import annotations

import time

import numpy as np

from ..graph import ExecPlan, Graph
from ..ops import OPS
from ..tensor import Tensor
from . import Backend
from .host_memory import allocate_zeros


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}  # persistent id -> flat array (quantized: raw bytes)
        self._dequantized: dict[int, np.ndarray] = {}  # quantized persistent id -> flat float32 values
        self._arena = np.empty(0, np.uint8)

    def allocate(self, t: Tensor) -> None:
        # refused (HostMemoryError naming the buffer and its bytes) when it would not fit in memory
        self.buffers[t.id] = allocate_zeros(t, t.nbytes if t.dtype.is_quant else t.size, t.dtype.np,
                                            self.buffers.values())

    def upload(self, t: Tensor, array: np.ndarray) -> None:
        self.buffers[t.id][:] = array.reshape(-1)
        self._dequantized.pop(t.id, None)

    def free(self, t: Tensor) -> None:
        self.buffers.pop(t.id, None)
        self._dequantized.pop(t.id, None)

    def download(self, t: Tensor) -> np.ndarray:
        if t.dtype.is_quant:
            return self.buffers[t.id].reshape(t.shape[0], -1).copy()
        return self.buffers[t.id].reshape(t.shape).copy()

    def workspace_bytes(self) -> int:
        return self._arena.nbytes + sum(v.nbytes for v in self._dequantized.values())

    def _values(self, t: Tensor) -> np.ndarray:
        """Flat float32 values of quantized persistent ``t`` (decoded once per upload)."""
        v = self._dequantized.get(t.id)
        if v is None:
            from ..quant import dequantize
            raw = self.buffers[t.id].reshape(t.shape[0], -1)
            v = self._dequantized[t.id] = dequantize(raw, t.dtype.name, t.shape[1]).reshape(-1)
        return v

    def close(self) -> None:
        self.buffers.clear()
        self._dequantized.clear()
        self._arena = np.empty(0, np.uint8)

    def execute(self, graph: Graph, plan: ExecPlan, inputs: dict[int, np.ndarray],
                times: dict[int, float] | None = None) -> list[np.ndarray]:
        if self._arena.nbytes < plan.arena_bytes:  # grows to the largest plan seen, then is reused
            self._arena = np.empty(plan.arena_bytes, np.uint8)
        flat: dict[int, np.ndarray] = dict(self.buffers)
        for tid, a in inputs.items():
            flat[tid] = a.reshape(-1)
        mem = plan.memory
        for tid, off in mem.offsets.items():
            flat[tid] = self._arena[off: off + mem.sizes[tid]]

        made: dict[int, np.ndarray] = {}

        def arr(t: Tensor) -> np.ndarray:
            a = made.get(t.id)
            if a is None:
                if t.dtype.is_quant:  # a quantized weight is read as its float32 values
                    npd, buf = np.dtype(np.float32), self._values(t.storage)
                else:
                    npd, buf = t.dtype.np, flat[t.storage.id]
                it = npd.itemsize
                a = made[t.id] = np.ndarray(t.shape, npd, buffer=buf, offset=t.offset * it,
                                            strides=tuple(s * it for s in t.strides))
            return a

        for n in plan.order:
            t0 = time.perf_counter() if times is not None else 0.0
            d = OPS[n.op]
            if d.dst is not None:  # writes into its destination in place
                d.reference(n.params, arr(n), *[arr(s) for i, s in enumerate(n.srcs) if i != d.dst])
            else:
                result = d.reference(n.params, *[arr(s) for s in n.srcs])
                out = arr(n)
                out[...] = result if result.dtype == out.dtype else result.astype(out.dtype)
            if times is not None:
                times[n.id] = (time.perf_counter() - t0) * 1e6
        return [arr(o).copy() for o in graph.outputs]
