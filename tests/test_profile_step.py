"""tools/profile_step.py on the NumPy backend: per-op sums, the slowest nodes, the replayed rate."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import profile_step  # noqa: E402


def test_profile_two_models_side_by_side(capsys) -> None:
    fix = ROOT / "tests" / "fixtures"
    assert profile_step.main(["--model", str(fix / "llama"), "--compare", str(fix / "qwen3"), "--backend", "numpy",
                              "--dtype", "float32", "--runs", "1", "--context", "4", "--top", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["op", "llama", "qwen3"]
    assert any(line.startswith("linear") for line in lines) and "total (alone)" in out and "us/tok" in out
    assert out.count("slowest 3 nodes") == 2


def test_profile_a_prefill_step(capsys) -> None:
    # --tokens T: the T-token step's nodes (the linears see T rows), and the replayed step's time
    fix = ROOT / "tests" / "fixtures"
    assert profile_step.main(["--model", str(fix / "llama"), "--backend", "numpy", "--dtype", "float32",
                              "--runs", "1", "--context", "0", "--tokens", "8", "--top", "40"]) == 0
    out = capsys.readouterr().out
    assert "us/step" in out and "us/tok" not in out
    assert any("layers.0.attn.qkv" in line and "(8, " in line for line in out.splitlines()), out


def test_the_timeline_needs_the_cuda_backend(capsys) -> None:
    import pytest
    fix = ROOT / "tests" / "fixtures"
    with pytest.raises(SystemExit) as e:
        profile_step.main(["--model", str(fix / "llama"), "--backend", "numpy", "--timeline", "t.txt"])
    assert e.value.code == 2 and "--timeline needs the CUDA backend" in capsys.readouterr().err
