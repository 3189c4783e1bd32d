"""TINYGRAPH_PROFILE_SKIP (tinygraph/backends/cuda/launch.py) and tools/profile_skip.py, on the CPU:
a left-out kernel never reaches the driver; another one does."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tinygraph.backends.cuda import driver  # noqa: F401  (driver first: it imports launch)
from tinygraph.backends.cuda import launch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import profile_skip  # noqa: E402


class _Func:
    def __init__(self, name: str) -> None:
        self.name, self.pdl = name, False


class _DriverReached(Exception):
    pass


def _no_driver():
    raise _DriverReached


def test_a_left_out_kernel_is_not_launched(monkeypatch) -> None:
    monkeypatch.setattr(launch, "_drv", _no_driver)
    monkeypatch.setattr(launch, "PROFILE_SKIP", ("attn", "rope_store"))
    launch.launch(_Func("attn_gqa_f16_128"), 1, 128, [])       # dropped before the driver
    launch.launch(_Func("rope_store_f16"), 1, 128, [])
    with pytest.raises(_DriverReached):
        launch.launch(_Func("linear_qr_q4_k_f16"), 1, 256, [])
    monkeypatch.setattr(launch, "PROFILE_SKIP", ())
    with pytest.raises(_DriverReached):                         # unset: every kernel launches
        launch.launch(_Func("attn_gqa_f16_128"), 1, 128, [])


def test_profile_skip_sets_and_rows() -> None:
    assert profile_skip.parse_sets(" attn ; linear_qr, linear_qmma ;; ") == ["attn", "linear_qr,linear_qmma"]
    r = profile_skip.rows(250.0, {"attn": 400.0})  # 4 ms a token, 2.5 without attention
    assert r[0][0] == "attn" and r[0][2] == pytest.approx(2.5) and r[0][3] == pytest.approx(1.5)
