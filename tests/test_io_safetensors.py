"""Safetensors reader: accessors, bf16, sharded indexes, and malformed files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from tinygraph.io import LoadError, SafeTensorsFile, TensorInfo, load_safetensors

RNG = np.random.default_rng(0)


def _bf16_file(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """safetensors.numpy cannot write bfloat16, so lay the file out by hand (header + raw bytes)."""
    header: dict[str, object] = {}
    blobs, off = [], 0
    for k, v in tensors.items():
        b = v.astype(ml_dtypes.bfloat16).tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    _raw_file(path, header, b"".join(blobs))


def _raw_file(path: Path, header: object, data: bytes = b"", header_len: int | None = None) -> Path:
    """Write a safetensors file by hand (for malformed-header cases)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return path


@pytest.fixture()
def mixed(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    arrs = {
        "a.f32": RNG.standard_normal((3, 5)).astype(np.float32),
        "b.f16": RNG.standard_normal((4,)).astype(np.float16),
        "c.i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "d.i64": np.array([1, -2, 3], dtype=np.int64),
        "e.scalar": np.array(2.5, dtype=np.float32),
    }
    p = tmp_path / "m.safetensors"
    save_file(arrs, str(p), metadata={"format": "np"})
    return p, arrs


def test_single_file_accessors(mixed: tuple[Path, dict[str, np.ndarray]]) -> None:
    p, arrs = mixed
    st = load_safetensors(p)
    assert isinstance(st, SafeTensorsFile)
    assert sorted(st.tensor_names) == sorted(arrs)
    assert st.num_tensors == len(arrs) == len(st)
    assert st.file_size == os.path.getsize(p)
    assert st.metadata == {"format": "np"}
    for name, a in arrs.items():
        assert name in st
        info = st.tensor_info(name)
        assert info == TensorInfo(name, a.shape, str(a.dtype), a.nbytes)
        assert bytes(st.tensor_bytes(name)) == a.tobytes()
        got = st.tensor_as_numpy(name)
        assert got.dtype == a.dtype and got.shape == a.shape
        np.testing.assert_array_equal(got, a)
        f = st.tensor_as_f32(name)
        assert f.dtype == np.float32
        np.testing.assert_array_equal(f, a.astype(np.float32))
    assert "nope" not in st
    st.close()


def test_arrays_are_readonly_views_that_survive_close(mixed: tuple[Path, dict[str, np.ndarray]]) -> None:
    p, arrs = mixed
    with SafeTensorsFile(p) as st:
        a = st.tensor_as_numpy("a.f32")
        assert type(a) is np.ndarray and not a.flags.writeable
    np.testing.assert_array_equal(a, arrs["a.f32"])  # mapping kept alive by the view
    with pytest.raises(LoadError, match="closed"):
        st.tensor_as_numpy("a.f32")
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_bfloat16(tmp_path: Path) -> None:
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    p = tmp_path / "bf.safetensors"
    _bf16_file(p, {"w": x})
    st = load_safetensors(p)
    info = st.tensor_info("w")
    assert info.dtype_name == "bfloat16" and info.size_bytes == 64 and info.shape == (4, 8)
    a = st.tensor_as_numpy("w")
    assert a.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(a, x.astype(ml_dtypes.bfloat16))
    f = st.tensor_as_f32("w")
    np.testing.assert_allclose(f, x, rtol=2**-8)
    assert bytes(st.tensor_bytes("w")) == x.astype(ml_dtypes.bfloat16).tobytes()
    # the hand-made file is valid for the reference implementation too
    from safetensors import safe_open

    with safe_open(str(p), framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("w"), a)


def test_unknown_name_suggests_close_names(mixed: tuple[Path, dict[str, np.ndarray]]) -> None:
    st = load_safetensors(mixed[0])
    with pytest.raises(KeyError, match="a.f32"):
        st.tensor_info("a.f33")


def _sharded(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    a = {"x.weight": RNG.standard_normal((2, 3)).astype(np.float32)}
    b = {"y.weight": RNG.standard_normal((5,)).astype(np.float16), "z.bias": np.ones(2, np.float32)}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": wm}))
    return idx, a | b


def test_sharded_index_lazy(tmp_path: Path) -> None:
    idx, arrs = _sharded(tmp_path)
    st = load_safetensors(idx)
    assert st._shards == {}  # nothing opened yet
    assert sorted(st.tensor_names) == sorted(arrs) and st.num_tensors == 3
    assert len(st._shard_files) == 2
    assert st.file_size == sum(os.path.getsize(f) for f in tmp_path.glob("*.safetensors"))
    np.testing.assert_array_equal(st.tensor_as_numpy("y.weight"), arrs["y.weight"])
    assert len(st._shards) == 1  # only the shard holding y.weight
    assert st.tensor_info("x.weight").shape == (2, 3)
    assert len(st._shards) == 2
    for k, v in arrs.items():
        np.testing.assert_array_equal(st.tensor_as_numpy(k), v)
    st.close()


def test_directory_resolution(tmp_path: Path, mixed: tuple[Path, dict[str, np.ndarray]]) -> None:
    sdir = tmp_path / "s"
    sdir.mkdir()
    idx, _ = _sharded(sdir)
    assert load_safetensors(sdir).path == idx
    single_dir = mixed[0].parent
    st = load_safetensors(single_dir)  # one .safetensors file in the directory
    assert st.path == mixed[0]
    with pytest.raises(LoadError, match="no .safetensors"):
        (tmp_path / "empty").mkdir()
        load_safetensors(tmp_path / "empty")
    with pytest.raises(LoadError, match="no such file"):
        load_safetensors(tmp_path / "missing.safetensors")


GOOD = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("header", "data", "header_len", "pattern"),
    [
        (GOOD, b"\0" * 8, 10**6, "header length .* exceeds the file"),
        (b"{not json", b"", None, "not valid UTF-8 JSON"),
        ([1, 2], b"", None, "must be an object"),
        ({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "'t'.*unsupported dtype 'Q4'"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8, None,
         "'t'.*outside the data buffer"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 12, None, "'t'.*needs 12"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "'t'.*shape"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, b"\0" * 8, None, "'t'.*data_offsets"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 8, None, "'t'.*outside"),
        ({"t": "x"}, b"", None, "'t'.*entry must be an object"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
    ],
)
def test_malformed_header(tmp_path: Path, header: object, data: bytes, header_len: int | None, pattern: str) -> None:
    p = _raw_file(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(LoadError, match=pattern) as ei:
        load_safetensors(p)
    assert str(p) in str(ei.value)  # the message names the file
    assert isinstance(ei.value, ValueError)


def test_too_short_file(tmp_path: Path) -> None:
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\1\2\3")
    with pytest.raises(LoadError, match="need >= 8"):
        load_safetensors(p)


def test_bad_indexes(tmp_path: Path) -> None:
    idx, _ = _sharded(tmp_path)
    bad = tmp_path / "bad.safetensors.index.json"
    bad.write_text("{")
    with pytest.raises(LoadError, match="JSON"):
        load_safetensors(bad)
    bad.write_text(json.dumps({"no_weight_map": {}}))
    with pytest.raises(LoadError, match="weight_map"):
        load_safetensors(bad)
    bad.write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(LoadError, match="do not exist: missing.safetensors"):
        load_safetensors(bad)
    bad.write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(LoadError, match="outside the checkpoint directory"):
        load_safetensors(bad)
    # weight_map claims a tensor lives in a shard that does not hold it
    bad.write_text(json.dumps({"weight_map": {"ghost": "model-00001-of-00002.safetensors"}}))
    st = load_safetensors(bad)
    with pytest.raises(LoadError, match="'ghost'"):
        st.tensor_as_numpy("ghost")
