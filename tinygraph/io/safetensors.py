"""Memory-mapped reader for ``.safetensors`` files, single or sharded.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header
length ``N``, ``N`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {...}}``, then the data buffer; offsets are
relative to the start of the buffer (byte ``8 + N``).

We parse and validate the header ourselves (instead of trusting a library) so
that a truncated or hostile file fails with a :class:`LoadError` that names the
file and the tensor, never with a segfault or a silently wrong array. Tensor
data is never copied on access: arrays are read-only views into an ``mmap``,
which is also the fastest path to a GPU upload.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .errors import LoadError
from .files import check_regular_file, open_regular, optional_file, read_text

# safetensors dtype code -> (numpy dtype, readable name). Data is little endian.
_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "F32": (np.dtype("<f4"), "float32"),
    "F16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    "F64": (np.dtype("<f8"), "float64"),
    "I64": (np.dtype("<i8"), "int64"),
    "I32": (np.dtype("<i4"), "int32"),
    "I16": (np.dtype("<i2"), "int16"),
    "I8": (np.dtype("i1"), "int8"),
    "U8": (np.dtype("u1"), "uint8"),
    "U16": (np.dtype("<u2"), "uint16"),
    "U32": (np.dtype("<u4"), "uint32"),
    "U64": (np.dtype("<u8"), "uint64"),
    "BOOL": (np.dtype("?"), "bool"),
}

# A header larger than this is certainly corrupt (real ones are < 1 MiB even for
# 100B-parameter shards); refusing early avoids reading gigabytes of garbage.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# NumPy arrays have at most 32 (NumPy 1) or 64 (NumPy 2) axes; real tensors have <= 8.
_MAX_NDIM = 32

INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one stored tensor (no data is read to produce it).

    Attributes:
        name: tensor name as stored in the file.
        shape: NumPy-order shape (outermost first).
        dtype_name: "float32", "float16", "bfloat16", "int32", ...
        size_bytes: bytes of raw data (= prod(shape) * itemsize).
    """

    name: str
    shape: tuple[int, ...]
    dtype_name: str
    size_bytes: int


@dataclass(frozen=True)
class _Entry:
    dtype_code: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


class _Shard:
    """One ``.safetensors`` file: validated header + read-only memory map."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries, self.metadata = _parse_header(path)
        # A file with only a header (no tensors) can still be mapped: size >= 8.
        try:  # mapped through a descriptor opened like the header's: never a FIFO or device
            with open_regular(path, "safetensors file") as f:
                self._mm: np.memmap | None = np.memmap(f, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise LoadError(f"{path}: cannot memory-map: {exc}") from exc
        # The mapping, not an earlier stat(), is what reads go through: if the file shrank in
        # between, refuse rather than hand out views that reach past the end of the mapping.
        self.file_size = len(self._mm)
        end = max((e.end for e in self.entries.values()), default=0)
        if end > self.file_size:
            self._mm = None
            raise LoadError(f"{path}: file is {self.file_size} bytes but its header needs {end}: truncated while opening")

    def raw(self, name: str) -> np.ndarray:
        if self._mm is None:
            raise LoadError(f"{self.path}: file was closed; cannot read tensor {name!r}")
        e = self.entries[name]
        return self._mm[e.begin : e.end]

    def close(self) -> None:
        # Arrays already handed out keep their own reference to the mapping, so
        # dropping ours is safe; the OS unmaps once the last view is gone.
        self._mm = None


def _parse_header(path: Path) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Read and validate the header of ``path``; raise LoadError naming file+tensor."""
    try:
        with open_regular(path, "safetensors file") as f:  # a FIFO or device is refused, never blocks
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise LoadError(f"{path}: not a safetensors file: {file_size} bytes, need >= 8 for the header length")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER_BYTES or 8 + n > file_size:
                raise LoadError(
                    f"{path}: header length {n} exceeds the file ({file_size} bytes): truncated or not safetensors"
                )
            raw = f.read(n)
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise LoadError(f"{path}: tensor {exc.args[0]!r} appears twice in the header") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoadError(f"{path}: header is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError:  # absurdly nested JSON
        raise LoadError(f"{path}: header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise LoadError(f"{path}: header JSON must be an object, got {type(header).__name__}")

    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise LoadError(f"{path}: __metadata__ must be an object of strings")

    data_start = 8 + n
    data_size = file_size - data_start
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        entries[name] = _validate_entry(path, name, info, data_start, data_size)

    # Overlapping tensors would alias memory; the format forbids it.
    spans = sorted((e.begin, e.end, k) for k, e in entries.items() if e.end > e.begin)
    for (_b0, e0, k0), (b1, _e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise LoadError(f"{path}: tensors {k0!r} and {k1!r} overlap in the data buffer")
    return entries, {str(k): str(v) for k, v in meta.items()}


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def _validate_entry(path: Path, name: str, info: Any, data_start: int, data_size: int) -> _Entry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise LoadError(f"{where}: entry must be an object, got {type(info).__name__}")
    code = info.get("dtype")
    if not isinstance(code, str) or code not in _DTYPES:
        raise LoadError(f"{where}: unsupported dtype {code!r} (known: {', '.join(_DTYPES)})")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise LoadError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    if len(shape) > _MAX_NDIM:
        raise LoadError(f"{where}: shape has {len(shape)} dimensions (at most {_MAX_NDIM} supported)")
    offs = info.get("data_offsets")
    if (
        not isinstance(offs, list)
        or len(offs) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
    ):
        raise LoadError(f"{where}: data_offsets must be [begin, end] ints, got {offs!r}")
    begin, end = offs
    if begin > end:
        raise LoadError(f"{where}: data_offsets [{begin}, {end}] are reversed (end < begin), outside any valid span")
    if not 0 <= begin <= end <= data_size:
        raise LoadError(f"{where}: data_offsets [{begin}, {end}] outside the data buffer of {data_size} bytes")
    expected = math.prod(shape) * _DTYPES[code][0].itemsize
    if end - begin != expected:
        raise LoadError(
            f"{where}: data_offsets span {end - begin} bytes but shape {tuple(shape)} x {code} needs {expected}"
        )
    return _Entry(code, tuple(shape), data_start + begin, data_start + end)


class SafeTensorsFile:
    """Read-only view of a safetensors checkpoint (one file or a sharded index).

    ``SafeTensorsFile(path)`` accepts a ``.safetensors`` file, a
    ``*.safetensors.index.json`` (shards are opened lazily, on first access to
    one of their tensors) or a directory containing either.

    All arrays returned are read-only, zero-copy views of the memory-mapped
    file (except :meth:`tensor_as_f32`, which converts); they stay valid after
    :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = resolve_safetensors_path(Path(path))
        self.path: Path = p
        self._shards: dict[Path, _Shard] = {}
        self._where: dict[str, Path] = {}  # tensor name -> shard file
        self._closed = False
        self.metadata: dict[str, Any] = {}
        if p.name.endswith(".json"):
            self._init_index(p)
        else:
            shard = _Shard(p)
            self._shards[p] = shard
            self._where = {k: p for k in shard.entries}
            self.metadata = dict(shard.metadata)
        self._shard_files: list[Path] = sorted(set(self._where.values()), key=str)
        if not self._shard_files and not p.name.endswith(".json"):
            self._shard_files = [p]

    def _init_index(self, p: Path) -> None:
        text = read_text(p, "sharded index")  # a FIFO or device is refused, never read
        try:
            index = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise LoadError(f"{p}: cannot read sharded index JSON: {exc}") from exc
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise LoadError(f"{p}: index must contain a 'weight_map' object of tensor name -> shard file name")
        base = p.parent.resolve()
        for name, shard_name in wm.items():
            shard_path = (base / shard_name).resolve()
            # Refuse shard names that escape the checkpoint directory (../../etc).
            if shard_path.parent != base and base not in shard_path.parents:
                raise LoadError(f"{p}: tensor {name!r} points outside the checkpoint directory: {shard_name!r}")
            self._where[name] = shard_path
        # a shard that exists but is a FIFO, directory or unreadable is refused, not called missing
        missing = sorted({s.name for s in set(self._where.values()) if not optional_file(s, "shard")})
        if missing:
            raise LoadError(f"{p}: shard file(s) listed in weight_map do not exist: {', '.join(missing)}")
        meta = index.get("metadata")
        self.metadata = dict(meta) if isinstance(meta, dict) else {}

    # -- lookup helpers -------------------------------------------------
    def _shard_for(self, name: str) -> tuple[_Shard, str]:
        if name not in self._where:
            close = difflib.get_close_matches(name, self._where.keys(), n=5, cutoff=0.5)
            hint = f"; close names: {close}" if close else f"; {len(self._where)} tensors present"
            raise KeyError(f"{self.path}: no tensor named {name!r}{hint}")
        if self._closed:
            raise LoadError(f"{self.path}: file was closed; cannot read tensor {name!r}")
        sp = self._where[name]
        shard = self._shards.get(sp)
        if shard is None:  # lazily open a shard the first time one of its tensors is used
            shard = self._shards[sp] = _Shard(sp)
        if name not in shard.entries:
            raise LoadError(f"{self.path}: weight_map puts tensor {name!r} in {sp.name}, but that shard lacks it")
        return shard, name

    # -- PyGPUkit-style surface -------------------------------------------
    @property
    def tensor_names(self) -> list[str]:
        """All tensor names, in file/index order."""
        return list(self._where)

    @property
    def num_tensors(self) -> int:
        return len(self._where)

    @property
    def file_size(self) -> int:
        """Total bytes on disk (summed over shards; does not open them)."""
        return sum(s.stat().st_size for s in self._shard_files)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def tensor_info(self, name: str) -> TensorInfo:
        shard, _ = self._shard_for(name)
        e = shard.entries[name]
        return TensorInfo(name, e.shape, _DTYPES[e.dtype_code][1], e.end - e.begin)

    def tensor_bytes(self, name: str) -> memoryview:
        """Raw little-endian bytes of ``name`` (zero-copy memoryview of the mapping)."""
        shard, _ = self._shard_for(name)
        return memoryview(shard.raw(name))  # type: ignore[arg-type]  # ndarray exports the buffer protocol

    def tensor_as_numpy(self, name: str) -> np.ndarray:
        """Array in its stored dtype (bfloat16 via ml_dtypes), shape as stored; read-only view."""
        shard, _ = self._shard_for(name)
        e = shard.entries[name]
        # np.asarray drops the np.memmap subclass (so arithmetic yields plain arrays)
        # without copying; numpy tolerates the possibly unaligned start offset.
        raw = shard.raw(name)
        try:
            return np.asarray(raw.view(_DTYPES[e.dtype_code][0]).reshape(e.shape))
        except ValueError as exc:  # cannot happen for a validated header; never let it escape raw
            raise LoadError(f"{shard.path}: tensor {name!r}: cannot view {raw.size} bytes as "
                            f"{e.dtype_code} {e.shape}: {exc}") from exc

    def tensor_as_f32(self, name: str) -> np.ndarray:
        """A new float32 copy of ``name``."""
        return self.tensor_as_numpy(name).astype(np.float32)

    def close(self) -> None:
        """Drop the memory maps; arrays already returned stay valid, new reads raise LoadError."""
        self._closed = True
        for s in self._shards.values():
            s.close()
        self._shards.clear()

    def __enter__(self) -> SafeTensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafeTensorsFile({str(self.path)!r}, tensors={self.num_tensors}, shards={len(self._shard_files)})"


def resolve_safetensors_path(p: Path) -> Path:
    """Map a directory to the index or single file inside it; check files exist and are regular
    files (a FIFO or device is refused by name: opening it could block)."""
    if os.path.isdir(p):  # (Path.is_dir raises PermissionError in an unreadable parent directory)
        idx = p / ("model" + INDEX_SUFFIX)
        single = p / "model.safetensors"
        if optional_file(idx, "sharded index"):
            return idx
        if optional_file(single, "safetensors file"):
            return single
        indexes = sorted(p.glob("*" + INDEX_SUFFIX))
        files = sorted(p.glob("*.safetensors"))
        if len(indexes) == 1:
            return indexes[0]
        if len(files) == 1:
            return files[0]
        if not files and not indexes:
            raise LoadError(f"{p}: directory holds no .safetensors file or {INDEX_SUFFIX}")
        raise LoadError(
            f"{p}: ambiguous: {len(files)} .safetensors files and {len(indexes)} index files; pass one explicitly"
        )
    check_regular_file(p, "safetensors file")
    return p


def load_safetensors(path: str | os.PathLike[str]) -> SafeTensorsFile:
    """Open a ``.safetensors`` file, a sharded ``*.safetensors.index.json``, or a directory with either."""
    return SafeTensorsFile(path)


__all__ = ["SafeTensorsFile", "TensorInfo", "load_safetensors", "resolve_safetensors_path"]
