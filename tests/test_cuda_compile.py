"""NVRTC compilation and the kernel cache (no GPU needed)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python (cuda.bindings) not installed")




from tinygraph.backends.cuda import compiler, kernels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "cuda_src").glob("*.cu"))

SMALL = r"""
#include "hdr.cuh"
extern "C" __global__ void k(float* x) { x[threadIdx.x] = VALUE; }
"""


@pytest.fixture(autouse=True)
def _fresh_memo():
    compiler.clear_memory_cache()
    yield
    compiler.clear_memory_cache()


@pytest.fixture
def count_compiles(monkeypatch):
    calls = []
    real = compiler._nvrtc_compile

    def wrapped(*a, **k):
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(compiler, "_nvrtc_compile", wrapped)
    return calls


def test_sources_exist():
    names = {p.name for p in SOURCES}
    for f in kernels.SOURCE_FILES:
        assert f in names, f"registry names {f}, missing from cuda_src/"
    assert compiler.cuda_src_dir() == ROOT / "cuda_src"


def test_nvrtc_version_and_headers():
    major, minor = compiler.nvrtc_version()
    assert major >= 12
    inc = compiler.cuda_include_dirs()
    assert inc and (Path(inc[0]) / "cuda_fp16.h").is_file()


@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_every_source_compiles_sm90(src):
    cubin = compiler.compile_source(src, "sm_90", cache=False)
    assert cubin[:4] == b"\x7fELF", "expected a CUBIN (ELF), not PTX"
    for file, name in kernels.all_kernel_names():
        if file == src.name:
            assert name.encode() + b"\x00" in cubin, f"{name} missing from {src.name}"


def test_normalize_arch():
    assert compiler.normalize_arch("sm_90") == "sm_90"
    assert compiler.normalize_arch("90") == "sm_90"
    assert compiler.normalize_arch(80) == "sm_80"
    assert compiler.normalize_arch((8, 6)) == "sm_86"
    assert compiler.normalize_arch("compute_90a") == "sm_90a"
    with pytest.raises(ValueError):
        compiler.normalize_arch("hopper")


def _write_src(d: Path, value="1.0f", header_extra=""):
    (d / "hdr.cuh").write_text(f"#pragma once\n#define VALUE {value}\n{header_extra}")
    (d / "small.cu").write_text(SMALL)
    return d / "small.cu"


def test_cache_hits_and_misses(tmp_path, count_compiles):
    cache = tmp_path / "cache"
    (tmp_path / "s").mkdir()
    src = _write_src(tmp_path / "s")
    a = compiler.compile_source(src, "sm_90", cache_path=cache)
    assert len(count_compiles) == 1
    entries = list(cache.glob("*.cubin"))
    assert len(entries) == 1
    # same inputs: hit (from disk, memo cleared)
    compiler.clear_memory_cache()
    b = compiler.compile_source(src, "sm_90", cache_path=cache)
    assert a == b and len(count_compiles) == 1
    # in-process memo hit
    compiler.compile_source(src, "sm_90", cache_path=cache)
    assert len(count_compiles) == 1
    # changed option -> miss
    compiler.compile_source(src, "sm_90", ["-DUNUSED=1"], cache_path=cache)
    assert len(count_compiles) == 2
    # changed arch -> miss
    compiler.compile_source(src, "sm_80", cache_path=cache)
    assert len(count_compiles) == 3
    # changed source text -> miss
    src.write_text(SMALL + "\n// edit\n")
    compiler.compile_source(src, "sm_90", cache_path=cache)
    assert len(count_compiles) == 4
    # changed local header -> miss
    (src.parent / "hdr.cuh").write_text("#pragma once\n#define VALUE 2.0f\n")
    compiler.compile_source(src, "sm_90", cache_path=cache)
    assert len(count_compiles) == 5
    assert len(list(cache.glob("*.cubin"))) == 5
    assert not list(cache.glob("*.tmp")), "temporary files left behind"
    # cache=False always compiles
    compiler.compile_source(src, "sm_90", cache=False)
    assert len(count_compiles) == 6


def test_a_cache_miss_says_it_compiles(tmp_path, capsys):
    """A first compile can take seconds: one line on stderr names the file; a hit is silent."""
    (tmp_path / "s").mkdir()
    src = _write_src(tmp_path / "s")
    compiler.compile_source(src, "sm_90", cache_path=tmp_path / "cache")
    err = capsys.readouterr().err
    assert f"compiling {src.name} for sm_90" in err and len(err.splitlines()) == 1
    compiler.clear_memory_cache()
    compiler.compile_source(src, "sm_90", cache_path=tmp_path / "cache")
    assert capsys.readouterr().err == ""


def test_cache_key_depends_on_version():
    k1 = compiler.cache_key("x", {}, ["-a"], "sm_90", (13, 0))
    k2 = compiler.cache_key("x", {}, ["-a"], "sm_90", (13, 5))
    k3 = compiler.cache_key("x", {"h": "1"}, ["-a"], "sm_90", (13, 0))
    assert len({k1, k2, k3}) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupted_entry_is_recompiled(tmp_path, count_compiles, damage):
    cache = tmp_path / "cache"
    (tmp_path / "s").mkdir()
    src = _write_src(tmp_path / "s")
    good = compiler.compile_source(src, "sm_90", cache_path=cache)
    (entry,) = cache.glob("*.cubin")
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a cache entry at all" * 10)
    entry.write_bytes(bytes(data))
    compiler.clear_memory_cache()
    again = compiler.compile_source(src, "sm_90", cache_path=cache)
    assert again == good
    assert len(count_compiles) == 2, "damaged entry should have been recompiled"
    # and the rewritten entry is valid again
    compiler.clear_memory_cache()
    compiler.compile_source(src, "sm_90", cache_path=cache)
    assert len(count_compiles) == 2


def test_cache_dir_env(monkeypatch, tmp_path):
    # kernels live in kernels/ under the one cache root, whichever variable sets that root
    # (they used to land in $TINYGRAPH_CACHE_DIR itself, beside the models)
    from tinygraph import cache

    monkeypatch.setenv("TINYGRAPH_CACHE_DIR", str(tmp_path / "x"))
    assert compiler.cache_dir() == tmp_path / "x" / "kernels"
    assert compiler.cache_dir() == cache.cache_dir("kernels", create=False)
    assert not (tmp_path / "x").exists(), "the kernel cache directory is created on first write only"
    monkeypatch.delenv("TINYGRAPH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiler.cache_dir() == tmp_path / "xdg" / "tinygraph" / "kernels"
    assert cache.cache_dir() == tmp_path / "xdg" / "tinygraph"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compiler.cache_dir() == tmp_path / "home" / ".cache" / "tinygraph" / "kernels"


def test_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad_kernel.cu"
    bad.write_text('#include "common.cuh"\n\nextern "C" __global__ void k(float* x) {\n  x[0] = ;\n}\n')
    with pytest.raises(compiler.CompileError) as ei:
        compiler.compile_source(bad, "sm_90", cache_path=tmp_path / "cache")
    msg = str(ei.value)
    assert f"{bad}:4:" in msg, msg
    assert "bad_kernel.cu(4)" in ei.value.log
    assert isinstance(ei.value, RuntimeError)
    assert not list((tmp_path / "cache").glob("*.cubin"))


def test_source_text_compiles_and_header_error(tmp_path):
    cubin = compiler.compile_source('extern "C" __global__ void k(int* p) { p[0] = 1; }', "sm_80",
                                    cache=False)
    assert cubin[:4] == b"\x7fELF"
    with pytest.raises(compiler.CompileError) as ei:
        compiler.compile_source('extern "C" __global__ void k() { undefined_thing(); }', (9, 0),
                                cache=False, name="text.cu")
    assert "text.cu:1:" in str(ei.value)


def test_td_helper():
    d = kernels.td((3, 5))
    assert list(d.ne) == [1, 1, 3, 5] and list(d.st) == [0, 0, 5, 1]
    d = kernels.td((2, 3, 4), (1, 2, 6))
    assert list(d.ne) == [1, 2, 3, 4] and list(d.st) == [0, 1, 2, 6]
    d = kernels.td((2, 3, 4, 5, 6))  # contiguous rank 5 folds
    assert list(d.ne) == [6, 4, 5, 6]
    with pytest.raises(ValueError):
        kernels.td((2, 3, 4, 5, 6), (1, 2, 6, 24, 120 * 7))
    assert kernels.kernel_name("cpy", "float32", "bfloat16") == "cpy_f32_bf16"
    assert kernels.kernel_name("add", "f16") == "add_f16"
    with pytest.raises(TypeError):
        kernels.kernel_name("matmul_tc3_64_3", "f32")
    import ctypes

    assert ctypes.sizeof(kernels.TD) == 64


def test_check_kernels_tool_runs():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_kernels.py"), "--arch", "sm_90",
                        str(ROOT / "cuda_src" / "reduce.cu")], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   reduce.cu" in r.stdout


def test_check_kernels_tool_fails_on_error(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text("this is not C++\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_kernels.py"), "--arch", "sm_80",
                        str(bad)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0
    assert "FAIL broken.cu" in r.stdout and "error" in r.stdout


def test_driver_releases_wait_for_open_captures(monkeypatch):
    """Finalizers route through driver._release: deferred while a capture is open, run when the
    last one closes (no GPU needed: the release functions are stand-ins)."""
    from tinygraph.backends.cuda import driver

    done = []
    monkeypatch.setattr(driver, "_deferred", [])
    monkeypatch.setattr(driver, "_captures_open", 0)
    driver._release(done.append, 1)
    assert done == [1]
    monkeypatch.setattr(driver, "_captures_open", 2)
    driver._release(done.append, 2)
    driver._flush_deferred()
    assert done == [1] and len(driver._deferred) == 1
    monkeypatch.setattr(driver, "_captures_open", 0)
    driver._flush_deferred()
    assert done == [1, 2] and not driver._deferred


def test_tc3_variant_follows_tiles_and_shared_memory():
    """matmul_tc3's variant: 4 stages of 64 for at most one wave of output tiles, 3 stages of 64
    beyond it (two blocks per SM), smaller ones where the device allows less shared memory per
    block (sm_86/89: 99 KB)."""
    from types import SimpleNamespace

    lib = kernels.KernelLibrary.__new__(kernels.KernelLibrary)
    lib.sm_count = 132
    lib.device = SimpleNamespace(max_shared_per_block_optin=227 * 1024)
    assert lib._tc3_variant(128) == "matmul_tc3_64_4"
    assert lib._tc3_variant(768) == "matmul_tc3_64_3"
    lib.device = SimpleNamespace(max_shared_per_block_optin=99 * 1024)
    assert lib._tc3_variant(128) == "matmul_tc3_32_4"
    assert kernels.tc3_shared_bytes(32, 4) + 1024 <= 99 * 1024 < kernels.tc3_shared_bytes(64, 3)
    for name in ("matmul_tc3_32_3", "matmul_tc3_32_4", "matmul_tc3_64_3", "matmul_tc3_64_4"):
        assert name in kernels.KERNELS


def test_compile_many_side_by_side_fills_the_cache(tmp_path, monkeypatch, count_compiles):
    # KernelLibrary.precompile's path: several sources on threads, each once, then all cache hits
    monkeypatch.setenv("TINYGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    srcs = []
    for i in range(3):
        d = tmp_path / f"s{i}"
        d.mkdir()
        (d / "hdr.cuh").write_text(f"#define VALUE {i}.5f\n")
        (d / "k.cu").write_text(SMALL)
        srcs.append(d / "k.cu")
    got = compiler.compile_many(srcs, "sm_90", workers=3)
    assert len(count_compiles) == 3 and len(set(got)) == 3
    compiler.clear_memory_cache()
    again = compiler.compile_many(srcs, "sm_90", workers=3)
    assert again == got and len(count_compiles) == 3  # read back from the disk cache
    assert compiler.compile_many(srcs[:1], "sm_90") == got[:1]


def test_loading_a_model_prepares_the_backends_kernels(monkeypatch):
    # the model load is where the CUDA backend compiles its missing sources side by side
    from tinygraph.backends.numpy import NumpyBackend
    from tinygraph.models import load_model
    calls = []
    monkeypatch.setattr(NumpyBackend, "prepare_kernels", lambda self: calls.append(self), raising=False)
    load_model(ROOT / "tests" / "fixtures" / "llama", backend="numpy").close()
    assert len(calls) == 1


def test_compile_notice_is_one_write(monkeypatch):
    """Off a terminal the notice is one write of the whole line: sources compiled side by side
    (compile_many's threads) must not interleave their lines."""
    from tinygraph.backends.cuda import compiler

    class Err:
        def __init__(self):
            self.writes = []

        def write(self, s):
            self.writes.append(s)

        def flush(self):
            pass

        def isatty(self):
            return False
    err = Err()
    monkeypatch.setattr(compiler.sys, "stderr", err)
    with compiler._CompileNotice("tinygraph: compiling x.cu for sm_90 (1/2)"):
        pass
    assert err.writes == ["tinygraph: compiling x.cu for sm_90 (1/2)\n"]
