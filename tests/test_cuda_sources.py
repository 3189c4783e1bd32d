"""Source-level rules every kernel in cuda_src/ must follow (text checks; no GPU, no NVRTC).

The CUDA backend launches every kernel built for sm_90+ with programmatic dependent launch, so
a kernel may start while the previous one still runs: each must reach ``tg_pdl_wait`` (directly,
through ``tg_pdl_enter``, or through a helper it calls) before touching activations.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "cuda_src"
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_DEF = re.compile(r"(\w+)\s*(?:<[^;{}()]*>)?\s*\([^;{}]*\)\s*(?:const\s*)?\{")
_CALL = re.compile(r"\b(\w+)\s*(?:<[^;{}()]*>)?\s*\(")


def _text(path: Path) -> str:
    # join macro continuation lines so kernels defined inside macros parse like plain code
    return _COMMENT.sub("", path.read_text()).replace("\\\n", "\n")


def _unit(path: Path, seen: set[str] | None = None) -> str:
    """The text of a translation unit: the file with the cuda_src headers it includes (once each)
    inlined, so that kernels defined in a shared header (linear_q.cuh, attention.cuh) and
    instantiated by a small .cu file are checked there."""
    seen = set() if seen is None else seen
    out = []
    for line in _text(path).split("\n"):
        m = re.match(r'\s*#include\s+"([^"]+)"', line)
        if m and (SRC / m.group(1)).is_file() and m.group(1) not in ("common.cuh",):
            if m.group(1) not in seen:
                seen.add(m.group(1))
                out.append(_unit(SRC / m.group(1), seen))
            continue
        out.append(line)
    return "\n".join(out)


def _bodies(text: str) -> dict[str, list[str]]:
    """Function name -> bodies of its definitions (brace-matched; overloads collected)."""
    out: dict[str, list[str]] = {}
    for m in _DEF.finditer(text):
        name = m.group(1)
        if name in ("if", "for", "while", "switch", "__launch_bounds__"):
            continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.setdefault(name, []).append(text[m.end():i])
    return out


def _kernels(text: str) -> list[tuple[str, str]]:
    ks = []
    for m in re.finditer(r"__global__([^{;]*)\{", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        name = re.findall(r"([\w#]+)\s*\(", m.group(1))[-1]  # e.g. linear_gemv_##sfx
        ks.append((name, text[m.end():i]))
    return ks


def _waits(body: str, defs: dict[str, list[str]], seen: set[str]) -> bool:
    for name in _CALL.findall(body):
        if name in ("tg_pdl_wait", "tg_pdl_enter"):
            return True
        if name in defs and name not in seen:
            seen.add(name)
            if any(_waits(b, defs, seen) for b in defs[name]):
                return True
    return False


COMMON = _bodies(_text(SRC / "common.cuh"))


@pytest.mark.parametrize("src", sorted(SRC.glob("*.cu")), ids=lambda p: p.name)
def test_every_kernel_waits_for_its_predecessor(src):
    text = _unit(src)
    defs = {**COMMON, **_bodies(text)}
    kernels = _kernels(text)
    assert kernels, f"no __global__ kernels found in {src.name}"
    missing = [name for name, body in kernels if not _waits(body, defs, set())]
    assert not missing, f"{src.name}: kernels that never call tg_pdl_wait/tg_pdl_enter: {missing}"


def test_the_check_catches_a_kernel_without_wait(tmp_path):
    f = tmp_path / "bad.cu"
    f.write_text('#include "common.cuh"\n__device__ void helper(float* x) { x[0] = 1; }\n'
                 'extern "C" __global__ void good(float* x) { tg_pdl_enter(); helper(x); }\n'
                 '#define K(n) extern "C" __global__ void n(float* x) { \\\n    helper(x); \\\n}\nK(bad)\n')
    text = _text(f)
    defs = {**COMMON, **_bodies(text)}
    got = {name: _waits(body, defs, set()) for name, body in _kernels(text)}
    assert got == {"good": True, "n": False}
