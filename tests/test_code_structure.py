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
