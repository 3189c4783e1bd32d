"""Backends execute planned graphs. ``create_backend`` picks one by name."""
from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import ExecPlan, Graph
    from ..tensor import Tensor


class Backend(ABC):
    """The interface every backend implements."""

    name: str = "?"

    @abstractmethod
    def allocate(self, t: "Tensor") -> None:
        """Allocate persistent buffer ``t`` (``t.nbytes`` bytes)."""

    @abstractmethod
    def upload(self, t: "Tensor", array: np.ndarray) -> None:
        """Copy a contiguous host array of ``t``'s dtype and shape into persistent ``t``."""

    @abstractmethod
    def download(self, t: "Tensor") -> np.ndarray:
        """A host copy of persistent ``t``."""

    @abstractmethod
    def free(self, t: "Tensor") -> None:
        """Release persistent buffer ``t`` (after any queued work that reads it)."""

    @abstractmethod
    def execute(self, graph: "Graph", plan: "ExecPlan", inputs: dict[int, np.ndarray],
                times: dict[int, float] | None = None) -> list[np.ndarray]:
        """Run ``plan.order``; ``inputs`` maps input node ids to host arrays. Returns the outputs.
        When ``times`` is a dict, fill it with each node's run time in microseconds."""

    def prepare_kernels(self) -> None:
        """Make every kernel the backend may launch ready now (a model is about to run many ops):
        the CUDA backend compiles the sources its kernel cache lacks, side by side. Nothing to do
        for a backend without compiled kernels."""

    def paged_attention_ok(self, dtype, head_dim: int, group: int) -> bool:
        """Whether an ``attention_store`` with a rows table (a paged cache: ``models.paged``) of
        ``dtype`` runs here for heads of ``head_dim`` and ``group`` query heads per key head. The
        NumPy reference runs every case."""
        return True

    def workspace_bytes(self) -> int:
        """Bytes of the backend's own working memory beyond persistent buffers (arena, staging,
        scratch, dequantized copies), as grown so far."""
        return 0

    def close(self) -> None:
        """Release everything."""


def cuda_available() -> tuple[bool, str]:
    """(usable, reason): whether the CUDA backend can run here, and why not."""
    try:
        from .cuda.driver import driver_available
    except Exception as e:  # missing cuda-python, broken install
        return False, f"cuda-python unusable ({e})"
    try:
        ok = driver_available()
    except Exception as e:  # pragma: no cover - driver_available should not raise
        return False, str(e)
    return (True, "") if ok else (False, "no NVIDIA driver or GPU found")


def create_backend(name: str, verbose: bool = True) -> Backend:
    """``"numpy"``, ``"cuda"`` or ``"auto"`` (CUDA if usable, else NumPy, with a one-line notice)."""
    if name == "auto":
        ok, why = cuda_available()
        name = "cuda" if ok else "numpy"
        if verbose:
            print(f"tinygraph: backend=auto chose {name}" + ("" if ok else f" ({why})"), file=sys.stderr)
    if name == "numpy":
        from .numpy import NumpyBackend
        return NumpyBackend()
    if name == "cuda":
        ok, why = cuda_available()
        if not ok:
            raise BackendError(f"CUDA backend unavailable: {why}")
        try:
            from .cuda.backend import CudaBackend
        except ImportError as e:
            raise BackendError(f"CUDA backend unavailable: {e}") from e
        return CudaBackend()
    raise BackendError(f"unknown backend {name!r}: use 'numpy', 'cuda' or 'auto'")
