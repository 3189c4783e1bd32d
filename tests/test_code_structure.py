"""Code-structure rules the issue on readable code asks for: helpers defined once, the op
modules under the line budget, ``tinygraph.ops`` exposing every op name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tinygraph.util import contiguous_strides, format_bytes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = sorted(p for d in ("tinygraph", "models") for p in (ROOT / d).rglob("*.py"))


def _defined_functions() -> dict[str, list[str]]:
    """Module-level function name -> the files that define it (models/ and tinygraph/)."""
    out: dict[str, list[str]] = {}
    for p in PACKAGE_SOURCES:
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                out.setdefault(node.name, []).append(str(p.relative_to(ROOT)))
    return out


@pytest.mark.parametrize("name", ["contiguous_strides", "format_bytes", "cache_dir"])
def test_shared_helpers_defined_once(name):
    defs = _defined_functions()[name]
    if name == "cache_dir":  # compiler.cache_dir is a one-line view of tinygraph.cache's
        defs = [d for d in defs if not d.endswith("compiler.py")]
    assert len(defs) == 1, f"{name} is defined in {defs}"


def test_contiguous_strides():
    assert contiguous_strides((2, 3, 4)) == (12, 4, 1)
    assert contiguous_strides([5, 7]) == (7, 1)
    assert contiguous_strides((7,)) == (1,)
    assert contiguous_strides(()) == ()
    assert contiguous_strides((2, 0, 3)) == (3, 3, 1)  # a size-0 axis counts as 1


def test_format_bytes():
    assert format_bytes(100) == "100 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(5 * 2**40) == "5.0 TiB"


# every module-level name of the single-file tinygraph/ops.py (before its split into tinygraph/ops/)
OPS_NAMES = (
    "Array OpDef OPS _reference _f32 _graph_for _node _need_float _need_weight _broadcast_shape _norm_axis view "
    "reshape permute transpose cont _cont_ref cast _cast_ref cpy _cpy_ref set_rows _set_rows_ref get_rows "
    "_get_rows_ref concat _concat_ref matmul _matmul_ref add _add_ref mul _mul_ref scale _scale_ref gelu _gelu_ref "
    "silu _silu_ref _past_arg _past_value _window_arg softmax _causal_mask _softmax_ref attention _attention_ref "
    "_row_param layer_norm _layer_norm_ref rms_norm _rms_norm_ref rope _rope_args rope_angles _rope_ref _NORMS "
    "_ACTS linear _linear_ref rope_store _rope_store_ref attention_store _attention_store_ref argmax _argmax_ref "
    "_GOLDEN _MASK64 sample_uniform sample_params sample sample_weights sample_draw _sample_ref FLOAT_DTYPES").split()
OPS_DIR = ROOT / "tinygraph" / "ops"


def test_ops_names_kept():
    import tinygraph as tg
    from tinygraph import ops

    missing = [n for n in OPS_NAMES if not hasattr(ops, n)]
    assert not missing, f"tinygraph.ops lost {missing}"
    for n in ops.__all__:
        assert getattr(ops, n) is not None
    for n in tg.__all__:
        if hasattr(ops, n):  # tg.X is the same object as tinygraph.ops.X
            assert getattr(tg, n) is getattr(ops, n), n


def test_ops_modules_under_line_budget():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in OPS_DIR.glob("*.py")}
    assert len(sizes) >= 5, sizes
    assert all(n < 600 for n in sizes.values()), sizes


def test_each_op_defined_once():
    """Every op in OPS registers its reference exactly once, and every public builder is defined in
    exactly one module of tinygraph/ops/ (the package __init__ only re-exports)."""
    from tinygraph.ops import OPS, __all__ as public

    refs: dict[str, list[str]] = {}
    defs: dict[str, list[str]] = {}
    for p in sorted(OPS_DIR.glob("*.py")):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            defs.setdefault(node.name, []).append(p.name)
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "_reference":
                    refs.setdefault(d.args[0].value, []).append(f"{p.name}:{node.name}")
    assert set(refs) == set(OPS), set(refs) ^ set(OPS)
    assert all(len(v) == 1 for v in refs.values()), {k: v for k, v in refs.items() if len(v) > 1}
    builders = [n for n in public if n not in ("OPS", "OpDef", "FLOAT_DTYPES")]
    assert all(len(defs.get(n, [])) == 1 for n in builders), {n: defs.get(n) for n in builders}
    assert all(OPS[name].reference.__module__.startswith("tinygraph.ops.") for name in OPS)
