"""Collectives across the ranks of a tensor-parallel model: ``all_reduce`` (a sum over ranks).

The node reduces over the communicator of its session (``session.communicator``, given by
``tinygraph.parallel.attach``): its params record that communicator's id, this session's rank and
the number of ranks, and its reference finds the communicator by id. The reference blocks until
every rank has contributed (``tinygraph.parallel.InProcessCommunicator``), so each rank's graph
must run its ``all_reduce`` nodes in the same order: the same builder on every rank gives the
same graph structure, hence the same schedule.
"""
from __future__ import annotations

from ..errors import GraphError
from ..tensor import Tensor
from .registry import _need_float, _node, _reference


def all_reduce(x: Tensor, name: str | None = None) -> Tensor:
    """The sum over every rank of its ``x`` (same shape and dtype on all ranks) -> ``x``'s shape
    and dtype, identical on every rank (summed in float32, in rank order). ``x``'s session must
    have a communicator (``tinygraph.parallel.attach``): the in-process one (NumPy backend,
    simulated ranks), TCP between NumPy processes (``tinygraph.distributed``), or NCCL (CUDA
    backend, one process per GPU: ``tinygraph.backends.cuda.nccl``, where 16-bit values are summed
    in their own type along NCCL's ring)."""
    _need_float("all_reduce", x)
    comm = getattr(x.session, "communicator", None)
    if comm is None:
        raise GraphError(f"all_reduce: the session of {x.describe()} has no communicator "
                         "(tinygraph.parallel.attach gives it one)")
    return _node("all_reduce", (x,), x.shape, x.dtype,
                 {"comm": comm.comm.id, "rank": comm.rank, "ranks": comm.size, "tag": name or ""}, name)


@_reference("all_reduce", "collective")
def _all_reduce_ref(p, x):
    from ..parallel import communicator
    # the tag (the node's name) lets the communicator tell ranks that run different collectives
    # in one round (a wrong schedule) from a sum
    return communicator(p["comm"]).all_reduce(p["rank"], x, tag=p.get("tag", ""))
