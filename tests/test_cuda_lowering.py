"""Every op in ``OPS`` has a CUDA lowering (no GPU needed: the table is plain data).

The CUDA lowering of an op is its entry in ``tinygraph.backends.cuda.lower.LOWERINGS`` (a
function that launches its kernels; ``CudaBackend._dispatch`` only looks it up). This test fails
when an op registered in ``OPS`` has no entry, so a new op cannot land with only its NumPy
reference; ``tests/test_cuda_launches.py`` checks what the lowerings launch.
"""
from __future__ import annotations

import inspect

from tinygraph.backends.cuda import backend
from tinygraph.backends.cuda.lower import LOWERINGS
from tinygraph.dtypes import float32
from tinygraph.ops import OPS
from tinygraph.schedule import is_compute
from tinygraph.tensor import LEAF_OPS, Tensor

#: node ops that need no kernel, and why (none of them is in OPS: they have no reference either)
NO_KERNEL = {
    "view": "a new layout over existing memory (view, reshape, permute, transpose): never scheduled",
    "persistent": "a leaf: memory the Session allocates once",
    "input": "a leaf: memory the backend fills from the feeds",
}


def test_every_op_has_a_cuda_lowering():
    missing = set(OPS) - set(LOWERINGS)
    assert not missing, f"ops without a CUDA lowering (an entry of lower.LOWERINGS): {sorted(missing)}"


def test_no_lowering_for_an_unknown_op():
    stale = set(LOWERINGS) - set(OPS)
    assert not stale, f"LOWERINGS has ops that OPS does not define: {sorted(stale)}"


def test_lowerings_take_backend_node_output_base():
    for op, fn in LOWERINGS.items():
        params = list(inspect.signature(fn).parameters)
        assert params[:4] == ["be", "n", "out", "base"], f"{op}: {fn.__name__}{params}"


def test_dispatch_goes_through_the_table():
    src = inspect.getsource(backend.CudaBackend._dispatch)
    assert "LOWERINGS" in src and "elif" not in src


def test_no_kernel_ops_are_never_scheduled():
    for op in NO_KERNEL:
        assert op not in OPS, f"{op!r} is in OPS: it needs a lowering, not a NO_KERNEL entry"
        assert op not in LOWERINGS
        assert not is_compute(Tensor(op, (), (2, 3), float32)), f"{op!r} would be scheduled as a compute node"
    assert LEAF_OPS <= set(NO_KERNEL)
