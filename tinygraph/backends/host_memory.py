"""Host-memory allocation of persistent buffers for the NumPy backend, with a clear error.

``np.zeros`` of an absurd size either raises NumPy's own ``MemoryError`` (naming neither the
buffer nor what asked for it) or, under Linux overcommit, *succeeds* and the process is killed
later when the pages are touched. So a buffer that would bring the backend's total past this
machine's memory (RAM plus swap, capped by a cgroup limit) is refused before it is allocated,
and a ``MemoryError`` that still happens becomes the same error, naming the buffer and its bytes.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from ..errors import BackendError
from ..tensor import Tensor


class HostMemoryError(BackendError, MemoryError):
    """A persistent buffer does not fit in host memory (also a ``MemoryError``)."""


def _meminfo_bytes(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # the file says kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_memory_limit() -> int | None:
    """Bytes this process can hold at most: physical memory (or the cgroup's memory.max when
    smaller) plus swap; None where the platform does not say."""
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        phys = _meminfo_bytes("MemTotal")
    if not phys or phys <= 0:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            cap = f.read().strip()
        if cap.isdigit():
            phys = min(phys, int(cap))
    except OSError:
        pass
    return phys + (_meminfo_bytes("SwapTotal") or 0)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def allocate_zeros(t: Tensor, count: int, dtype: np.dtype, held: Iterable[np.ndarray]) -> np.ndarray:
    """A zeroed array of ``count`` elements of ``dtype`` for persistent buffer ``t``; ``held``:
    the backend's buffers already allocated. Raises HostMemoryError naming ``t`` and the bytes
    when they would not fit in host memory."""
    nbytes = int(count) * np.dtype(dtype).itemsize
    what = f"persistent buffer {t.name!r} (shape {tuple(t.shape)}, {t.dtype.name}): {nbytes} bytes ({_gib(nbytes)})"
    limit = host_memory_limit()
    if limit is not None:
        total = nbytes + sum(int(b.nbytes) for b in held)
        if total > limit:
            raise HostMemoryError(f"cannot allocate {what}: with the buffers already allocated that makes "
                                  f"{total} bytes ({_gib(total)}), more than this machine's memory "
                                  f"({limit} bytes = {_gib(limit)}, RAM plus swap); for a model, a smaller "
                                  f"max_context or dtype shrinks its KV cache")
    try:
        return np.zeros(count, dtype)
    except MemoryError as exc:  # NumPy's own (ArrayMemoryError) names no buffer
        raise HostMemoryError(f"cannot allocate {what}: out of host memory ({exc})") from exc


__all__ = ["HostMemoryError", "allocate_zeros", "host_memory_limit"]
