"""Every op in ``OPS`` has a CUDA lowering (source check: no GPU, no cuda-python needed).

Today the CUDA lowering of an op is a branch of the if/elif chain in
``CudaBackend._dispatch`` (tinygraph/backends/cuda/backend.py); ``linear``, ``attention`` and
``attention_store`` branch on to ``_linear``, ``_attention`` and ``_attention_store``. This test
reads that chain with ``ast`` and fails when an op registered in ``OPS`` has no branch, so a new
op cannot land with only its NumPy reference.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tinygraph.dtypes import float32
from tinygraph.ops import OPS
from tinygraph.schedule import is_compute
from tinygraph.tensor import LEAF_OPS, Tensor

BACKEND = Path(__file__).resolve().parents[1] / "tinygraph" / "backends" / "cuda" / "backend.py"

#: node ops that need no kernel, and why (none of them is in OPS: they have no reference either)
NO_KERNEL = {
    "view": "a new layout over existing memory (view, reshape, permute, transpose): never scheduled",
    "persistent": "a leaf: memory the Session allocates once",
    "input": "a leaf: memory the backend fills from the feeds",
}
#: ops whose branch must hand over to a helper method of CudaBackend
HELPERS = {"linear": "_linear", "attention": "_attention", "attention_store": "_attention_store"}


def _method(tree: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{cls}.{name} not found in {BACKEND.name}")


def _ops_tested(test: ast.expr) -> set[str]:
    """Op names an if-test compares the local ``op`` with (``op == "x"``, ``op in ("x", "y")``)."""
    names: set[str] = set()
    for c in ast.walk(test):
        if isinstance(c, ast.Compare) and isinstance(c.left, ast.Name) and c.left.id == "op":
            for right in c.comparators:
                values = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
                names |= {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    return names


def dispatch_branches(source: str) -> dict[str, list[list[ast.stmt]]]:
    """Op name -> the bodies of the ``_dispatch`` branches that handle it (an op may have several,
    e.g. ``matmul`` with a float or a block-quantized weight)."""
    fn = _method(ast.parse(source), "CudaBackend", "_dispatch")
    chain = next(s for s in fn.body if isinstance(s, ast.If) and _ops_tested(s.test))
    out: dict[str, list[list[ast.stmt]]] = {}
    node: ast.stmt | None = chain
    while isinstance(node, ast.If):
        for name in _ops_tested(node.test):
            out.setdefault(name, []).append(node.body)
        node = node.orelse[0] if len(node.orelse) == 1 else None
    return out


def missing_lowerings(op_names, source: str) -> set[str]:
    """The ops of ``op_names`` that ``_dispatch`` has no branch for (NO_KERNEL ones excepted)."""
    return set(op_names) - set(dispatch_branches(source)) - set(NO_KERNEL)


def _calls(body: list[ast.stmt]) -> set[str]:
    return {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
            for s in body for c in ast.walk(s) if isinstance(c, ast.Call)}


def test_every_op_has_a_cuda_lowering():
    source = BACKEND.read_text(encoding="utf-8")
    missing = missing_lowerings(OPS, source)
    assert not missing, (f"ops without a CUDA lowering (a branch of CudaBackend._dispatch in {BACKEND.name}): "
                         f"{sorted(missing)}")


def test_no_branch_for_an_unknown_op():
    stale = set(dispatch_branches(BACKEND.read_text(encoding="utf-8"))) - set(OPS)
    assert not stale, f"CudaBackend._dispatch handles ops that OPS does not define: {sorted(stale)}"


def test_branches_launch_something():
    branches = dispatch_branches(BACKEND.read_text(encoding="utf-8"))
    for op, bodies in branches.items():
        for body in bodies:
            assert _calls(body), f"the _dispatch branch for {op!r} calls nothing"
    for op, helper in HELPERS.items():
        assert any(helper in _calls(b) for b in branches[op]), f"{op!r} no longer goes through {helper}"


def test_no_kernel_ops_are_never_scheduled():
    for op in NO_KERNEL:
        assert op not in OPS, f"{op!r} is in OPS: it needs a lowering, not a NO_KERNEL entry"
        assert not is_compute(Tensor(op, (), (2, 3), float32)), f"{op!r} would be scheduled as a compute node"
    assert LEAF_OPS <= set(NO_KERNEL)


def test_the_check_catches_a_missing_op():
    source = BACKEND.read_text(encoding="utf-8")
    assert missing_lowerings(set(OPS) | {"new_op"}, source) == {"new_op"}
    # a chain without the "rope" branch reports rope
    without_rope = source.replace('elif op == "rope":', 'elif op == "rope_was_here":')
    assert without_rope != source
    assert missing_lowerings(OPS, without_rope) == {"rope"}
