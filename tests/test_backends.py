"""Backend selection: 'auto' falls back to NumPy with a notice where CUDA is unusable; asking for
CUDA there is a clear error; unknown names are refused."""
from __future__ import annotations

import pytest

import tinygraph as tg
from tinygraph.backends import create_backend, cuda_available


def test_auto_says_what_it_chose(capsys):
    ok, why = cuda_available()
    b = create_backend("auto")
    err = capsys.readouterr().err
    assert "backend=auto chose" in err
    assert b.name == ("cuda" if ok else "numpy")
    if not ok:
        assert why in err
    b.close()


def test_cuda_without_a_driver_is_a_clear_error():
    ok, why = cuda_available()
    if ok:
        pytest.skip("a CUDA driver is present here")
    with pytest.raises(tg.BackendError, match="CUDA backend unavailable") as e:
        tg.Session(backend="cuda")
    assert isinstance(e.value, RuntimeError)


def test_unknown_backend():
    with pytest.raises(tg.BackendError, match="unknown backend 'tpu'"):
        tg.Session(backend="tpu")
