"""The multi-GPU communicator: NCCL, one process per GPU (``python -m tinygraph.launch``).

:class:`NcclCommunicator` joins this process (``tinygraph.distributed.DistEnv``: its rank, the
number of ranks, rank 0's address) to the others: rank 0 asks NCCL for a unique id and hands it
to every rank over :func:`tinygraph.distributed.broadcast_bytes`, then every rank creates its
NCCL communicator on its GPU. The CUDA lowering of ``all_reduce`` (``lower.py``) enqueues
``ncclAllReduce`` (sum) on the backend's stream, so it is captured in the decode CUDA graph like
any kernel. NCCL sums 16-bit values in their own type along its ring: with more than two ranks
the rounding order differs from the NumPy reference's float32 rank-order sum, but every rank gets
the same bytes, so the ranks' decisions (argmax, sampling) agree.

NCCL comes from NVIDIA's packages on PyPI: ``nccl4py`` (the official Python binding; its
low-level ``nccl.bindings.nccl``) and the ``nvidia-nccl-cu13`` (or ``-cu12``) library, installed
by ``pip install "tinygraph[multi-gpu]"``. Keep NVLink multicast off (``NCCL_NVLS_ENABLE=0``,
which ``tinygraph.launch`` sets).
"""
from __future__ import annotations

import os
from types import ModuleType

from ... import parallel
from ...distributed import DistEnv, broadcast_bytes
from ...errors import BackendError

#: tinygraph dtype short names -> NCCL data type names (``nccl.bindings.nccl.DataType``)
NCCL_DTYPES = {"f16": "Float16", "bf16": "Bfloat16", "f32": "Float32"}


def load_binding() -> ModuleType:
    """nccl4py's low-level module; BackendError saying what to install when it is missing."""
    try:
        from nccl.bindings import nccl as binding  # type: ignore[import-not-found]
    except ImportError as e:
        raise BackendError("multi-GPU tensor parallelism needs NCCL: pip install \"tinygraph[multi-gpu]\" "
                           f"(nccl4py and nvidia-nccl-cu13) ({type(e).__name__}: {e})") from None
    return binding


class NcclCommunicator(parallel.OneRankCommunicator):
    """This process's rank of an NCCL communicator over ``env.world_size`` GPUs, on ``device``
    (a ``driver.Device``; made current here). ``timeout``: seconds the rendezvous waits for the
    other ranks. ``binding``: nccl4py's low-level module (tests pass a fake)."""

    kind = "nccl"

    def __init__(self, env: DistEnv, device, timeout: float = 120.0, binding: ModuleType | None = None) -> None:
        self._n = load_binding() if binding is None else binding
        self.size, self.rank, self.env = env.world_size, env.rank, env
        device.make_current()
        # rank 0's NCCL id, and 8 random bytes every rank seeds its samplers from (ranks that drew
        # their own seeds would sample different tokens and their all-reduces would mix them)
        payload = bytes(self._n.get_unique_id()) + os.urandom(8) if env.rank == 0 else None
        payload = broadcast_bytes(env, payload, timeout)
        uid, self.seed_base = payload[:-8], int.from_bytes(payload[-8:], "little")
        # the scalable form takes the id as a writable buffer (bytes are refused), as nccl4py's
        # own Communicator.init passes it
        self._comm = self._n.comm_init_rank_scalable(env.world_size, env.rank, 1, bytearray(uid), 0)
        self.rounds = 0
        self._register()

    def all_reduce_device(self, src: int, dst: int, count: int, dtype: str, stream) -> None:
        """Enqueue ``dst[:count] = sum over ranks of src[:count]`` (device pointers, ``dtype`` a
        short name: f16, bf16, f32; ``src`` may equal ``dst``) on ``stream``."""
        if self._comm is None:
            raise BackendError(f"all_reduce on rank {self.rank}: the NCCL communicator was closed")
        if dtype not in NCCL_DTYPES:
            raise BackendError(f"all_reduce: NCCL sums {sorted(NCCL_DTYPES)}, not {dtype}")
        n = self._n
        n.all_reduce(int(src), int(dst), int(count), int(getattr(n.DataType, NCCL_DTYPES[dtype])), int(n.RedOp.Sum),
                     self._comm, int(stream.handle))
        self.rounds += 1

    def all_reduce(self, rank: int, x, tag: str = ""):
        """The NumPy reference's entry point: refused (NCCL reduces device memory)."""
        raise parallel.CommunicatorError(f"all_reduce {tag!r}: an NCCL communicator sums GPU buffers; run the "
                                         "model on the CUDA backend (the NumPy backend uses the in-process one)")

    def close(self) -> None:
        """Destroy the NCCL communicator (idempotent)."""
        if self._comm is not None:
            comm, self._comm = self._comm, None
            self._n.comm_destroy(comm)

    def __repr__(self) -> str:
        return f"NcclCommunicator(rank {self.rank} of {self.size})"
