"""Small helpers shared by the graph side (tensor.py, viz.py) and the CUDA driver/kernel modules.

Standard library only: ``backends/cuda/driver.py`` and ``kernels.py`` stay independent of the
graph classes (and of NumPy) by importing from here.
"""
from __future__ import annotations

from typing import Sequence


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides, in elements, for ``shape`` (a size-0 axis counts as 1: such a tensor
    addresses no element, and its strides stay those of the non-empty layout)."""
    if len(shape) == 2:  # fast path: the common case in a model graph
        return (max(int(shape[1]), 1), 1)
    strides, acc = [], 1
    for n in reversed(tuple(shape)):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def format_bytes(n: int | float) -> str:
    """A byte count for people: ``1536`` -> ``'1.5 KiB'``, ``100`` -> ``'100 B'`` (up to TiB)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024.0:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"
