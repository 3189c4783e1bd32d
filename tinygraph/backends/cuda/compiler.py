"""NVRTC compilation of the kernel sources in ``cuda_src/`` to CUBIN, with a disk cache.

Works without a GPU or driver (only the NVRTC library and the CUDA headers are needed), so CI
can compile every kernel.

* ``compile_source(path_or_text, arch, options) -> bytes``: CUBIN for ``sm_XY``. Local headers
  (``#include "x.cuh"``) are read from the source's directory (or ``include_dirs``) and handed to
  NVRTC in memory, so exactly the text that was hashed gets compiled.
* Cache: ``kernels/`` in tinygraph's cache directory (``tinygraph.cache.cache_dir``:
  ``$TINYGRAPH_CACHE_DIR``, ``$XDG_CACHE_HOME/tinygraph`` or ``~/.cache/tinygraph``). Key =
  sha256 of (source text, every local header's name and text, options, NVRTC version, arch,
  cache format). Entries are written atomically (temp file +
  rename) with a header carrying the payload length and its sha256, so a truncated or corrupted
  entry is detected, removed and recompiled.
* CUBIN only, never PTX: PTX from an NVRTC newer than the driver does not load.
* No ``--use_fast_math``: the kernels are meant to match a float64 reference closely.

This module imports only the standard library, ``tinygraph.cache`` and ``cuda.bindings.nvrtc``
(lazily), so it can be used without the rest of the backend.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Sequence

from ...cache import cache_dir as _cache_root

__all__ = [
    "CompileError",
    "compile_source",
    "nvrtc_version",
    "normalize_arch",
    "cuda_include_dirs",
    "cuda_src_dir",
    "cache_dir",
    "cache_key",
    "DEFAULT_OPTIONS",
]

CACHE_FORMAT = b"TGCUBIN1"          # 8-byte magic; bump to invalidate every entry
_HEADER = struct.Struct("<8sQ32s")  # magic, payload length, sha256(payload)

DEFAULT_OPTIONS: tuple[str, ...] = ("-std=c++17", "-default-device", "-lineinfo")

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)
_LOC_RE = re.compile(r"^(.*?)\((\d+)\):")
_lock = threading.Lock()
_memo: dict[str, bytes] = {}
# (source dir, arch, key options, cache dir) -> [cache misses compiled so far, sources not cached at the first miss]
_progress: dict[tuple, list[int]] = {}


def _error_base() -> type:
    """tinygraph's ``BackendError`` (a ``RuntimeError``) when the package is importable, else
    ``RuntimeError``: this module also works on its own."""
    try:
        from tinygraph.errors import BackendError

        return BackendError
    except Exception:  # pragma: no cover - standalone use
        return RuntimeError


class CompileError(_error_base()):  # type: ignore[misc]
    """NVRTC failed. ``log`` holds NVRTC's log (it names file and line). A
    ``tinygraph.BackendError`` (hence ``RuntimeError``)."""

    def __init__(self, message: str, log: str = "", name: str = "", options: Sequence[str] = ()):
        super().__init__(message)
        self.log = log
        self.name = name
        self.options = list(options)


# --------------------------------------------------------------------------------------------
# locating things
# --------------------------------------------------------------------------------------------
def cuda_src_dir() -> Path:
    """Directory holding the kernel sources: the repo-root ``cuda_src/`` beside the ``tinygraph``
    package directory first, then the installed ``tinygraph.cuda_src`` package."""
    here = Path(__file__).resolve()
    # .../<root>/tinygraph/backends/cuda/compiler.py -> <root>/cuda_src
    cand = here.parents[3] / "cuda_src"
    if cand.is_dir() and any(cand.glob("*.cu")):
        return cand
    try:
        from importlib import resources

        res = resources.files("tinygraph.cuda_src")
        p = Path(str(res))
        if p.is_dir():
            return p
    except Exception:  # pragma: no cover - depends on installation
        pass
    raise FileNotFoundError(
        f"cannot find the kernel sources: neither {cand} nor the installed package "
        "tinygraph.cuda_src exists"
    )


def _looks_like_cuda_include(d: Path) -> bool:
    return (d / "cuda_fp16.h").is_file() and (d / "cuda_bf16.h").is_file()


_include_dirs_cache: list[str] | None = None


def _header_version(d: Path) -> tuple[int, int] | None:
    try:
        txt = (d / "cuda_runtime_api.h").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", txt)
    if not m:
        return None
    v = int(m.group(1))
    return (v // 1000, (v % 1000) // 10)


def cuda_include_dirs() -> list[str]:
    """Directories holding ``cuda_fp16.h`` / ``cuda_bf16.h`` (and what they include), best first.

    Candidates: ``$TINYGRAPH_CUDA_INCLUDE`` (os.pathsep separated; always first when set),
    cuda.pathfinder's answer for "cudart", the nvidia-* wheels' include dirs on sys.path,
    ``$CUDA_HOME``/``$CUDA_PATH``, and /usr/local/cuda. Among the others, headers whose
    CUDART_VERSION equals NVRTC's version come first, then older ones of the same major version
    (newest first), then the rest: headers newer than NVRTC may use features it lacks.
    Only the first is passed to NVRTC.
    """
    global _include_dirs_cache
    if _include_dirs_cache is not None:
        return list(_include_dirs_cache)
    forced: list[Path] = []
    cands: list[Path] = []
    env = os.environ.get("TINYGRAPH_CUDA_INCLUDE")
    if env:
        forced += [Path(p) for p in env.split(os.pathsep) if p]
    try:
        from cuda import pathfinder  # type: ignore

        d = pathfinder.find_nvidia_header_directory("cudart")
        if d:
            cands.append(Path(d))
    except Exception:
        pass
    for sp in sys.path:
        if not sp:
            continue
        for pat in ("nvidia/cu*/include", "nvidia/cuda_runtime/include", "nvidia/cuda_nvrtc/include"):
            cands += [Path(p) for p in sorted(glob.glob(os.path.join(sp, pat)), reverse=True)]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "include")
    cands.append(Path("/usr/local/cuda/include"))

    def ok(c: Path) -> str | None:
        try:
            if c.is_dir() and _looks_like_cuda_include(c):
                return str(c.resolve())
        except OSError:
            pass
        return None

    found_forced = [r for r in (ok(c) for c in forced) if r]
    found: list[str] = []
    for c in cands:
        r = ok(c)
        if r and r not in found and r not in found_forced:
            found.append(r)
    try:
        nv = nvrtc_version()
    except Exception:
        nv = None
    if nv is not None:
        def rank(item):
            i, d = item
            hv = _header_version(Path(d))
            if hv == nv:
                return (0, 0, i)
            if hv is not None and hv[0] == nv[0] and hv < nv:
                return (1, -(hv[1]), i)
            return (2, 0, i)

        found = [d for _, d in sorted(enumerate(found), key=rank)]
    _include_dirs_cache = found_forced + found
    return list(_include_dirs_cache)


def cache_dir() -> Path:
    """The kernel cache: ``kernels/`` under tinygraph's one cache root (not created here: the
    first write creates it, and an unwritable one only disables caching)."""
    return _cache_root("kernels", create=False)


# --------------------------------------------------------------------------------------------
# NVRTC
# --------------------------------------------------------------------------------------------
def _nvrtc():
    from cuda.bindings import nvrtc  # noqa: WPS433 (lazy: keep import cheap / optional)

    return nvrtc


_version_cache: tuple[int, int] | None = None


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the loaded NVRTC library."""
    global _version_cache
    if _version_cache is None:
        nvrtc = _nvrtc()
        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"nvrtcVersion failed: {err}")
        _version_cache = (int(major), int(minor))
    return _version_cache


def normalize_arch(arch) -> str:
    """Accept 'sm_90', 'sm90', 'compute_90', '90', 90, (9, 0) -> 'sm_90' ('sm_90a' kept)."""
    if isinstance(arch, tuple):
        return f"sm_{int(arch[0])}{int(arch[1])}"
    if isinstance(arch, int):
        return f"sm_{arch}"
    s = str(arch).strip().lower()
    m = re.fullmatch(r"(?:sm_?|compute_?)?(\d{2,3}[a-z]?)", s)
    if not m:
        raise ValueError(f"unrecognised GPU architecture {arch!r} (want e.g. 'sm_90' or (9, 0))")
    return "sm_" + m.group(1)


def _collect_headers(text: str, search: Sequence[Path]) -> dict[str, str]:
    """Local headers reachable via #include "name" (recursively), name -> text."""
    out: dict[str, str] = {}
    todo = list(_INCLUDE_RE.findall(text))
    while todo:
        name = todo.pop(0)
        if name in out:
            continue
        for d in search:
            p = d / name
            if p.is_file():
                htext = p.read_text(encoding="utf-8")
                out[name] = htext
                todo += _INCLUDE_RE.findall(htext)
                break
        # not found locally: leave it to NVRTC's -I search (system-style header)
    return out


def cache_key(text: str, headers: dict[str, str], options: Sequence[str], arch: str,
              version: tuple[int, int] | None = None) -> str:
    h = hashlib.sha256()
    h.update(CACHE_FORMAT)

    def put(b: bytes):
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    put(text.encode("utf-8"))
    for name in sorted(headers):
        put(name.encode("utf-8"))
        put(headers[name].encode("utf-8"))
    for o in options:
        put(o.encode("utf-8"))
    put(arch.encode())
    v = version if version is not None else nvrtc_version()
    put(f"nvrtc-{v[0]}.{v[1]}".encode())
    return h.hexdigest()


def _read_entry(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, n, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if magic != CACHE_FORMAT or n != len(payload) or hashlib.sha256(payload).digest() != digest:
        return None
    return payload


def _write_entry(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = _HEADER.pack(CACHE_FORMAT, len(payload), hashlib.sha256(payload).digest()) + payload
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _nvrtc_compile(text: str, name: str, headers: dict[str, str], options: Sequence[str]) -> bytes:
    nvrtc = _nvrtc()
    hnames = list(headers)
    err, prog = nvrtc.nvrtcCreateProgram(
        text.encode("utf-8"),
        name.encode("utf-8"),
        len(hnames),
        [headers[h].encode("utf-8") for h in hnames],
        [h.encode("utf-8") for h in hnames],
    )
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"nvrtcCreateProgram({name}) failed: {err}", name=name, options=options)
    try:
        opts = [o.encode("utf-8") for o in options]
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log = ""
        e2, logsize = nvrtc.nvrtcGetProgramLogSize(prog)
        if e2 == nvrtc.nvrtcResult.NVRTC_SUCCESS and logsize > 1:
            buf = b" " * logsize
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf.rstrip(b"\x00").decode("utf-8", "replace").strip()
        if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            first = next((ln for ln in log.splitlines() if "error" in ln), log.splitlines()[0] if log else "")
            # NVRTC writes "file(12): error: ..."; say "file:12: error: ..." like other compilers.
            first = _LOC_RE.sub(r"\1:\2:", first, count=1)
            raise CompileError(
                f"NVRTC failed to compile {name}: {first}\n--- NVRTC log ---\n{log}\n"
                f"--- options: {' '.join(options)}",
                log=log, name=name, options=options,
            )
        e3, size = nvrtc.nvrtcGetCUBINSize(prog)
        if e3 != nvrtc.nvrtcResult.NVRTC_SUCCESS or size == 0:
            raise CompileError(f"nvrtcGetCUBINSize({name}) failed: {e3} (was a virtual arch given?)",
                               log=log, name=name, options=options)
        cubin = b" " * size
        (e4,) = nvrtc.nvrtcGetCUBIN(prog, cubin)
        if e4 != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"nvrtcGetCUBIN({name}) failed: {e4}", log=log, name=name, options=options)
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_source(
    path_or_text,
    arch,
    options: Iterable[str] | None = None,
    *,
    name: str | None = None,
    include_dirs: Sequence[str | os.PathLike] = (),
    cache: bool = True,
    cache_path: str | os.PathLike | None = None,
) -> bytes:
    """Compile CUDA C++ to CUBIN for ``arch`` ('sm_90', 90 or (9, 0)); returns the CUBIN bytes.

    ``path_or_text``: a path (``os.PathLike``, or a ``str`` naming an existing ``*.cu`` / ``*.cuh``
    file) or the source text itself. ``options`` are appended to ``DEFAULT_OPTIONS`` (pass
    ``-D...`` etc.); ``--gpu-architecture`` and the CUDA include directory are added here.
    ``cache=False`` bypasses the disk cache; ``cache_path`` overrides the cache directory.
    Raises ``CompileError`` (with the NVRTC log naming file and line) on failure.
    """
    src_dir: Path | None = None
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str)
        and "\n" not in path_or_text
        and path_or_text.endswith((".cu", ".cuh"))
    ):
        p = Path(path_or_text)
        text = p.read_text(encoding="utf-8")
        src_dir = p.resolve().parent
        prog_name = name or str(p)
    else:
        text = str(path_or_text)
        prog_name = name or "<tinygraph-source>.cu"

    sm = normalize_arch(arch)
    search = [Path(d) for d in include_dirs]
    if src_dir is not None:
        search.insert(0, src_dir)
    try:
        search.append(cuda_src_dir())
    except FileNotFoundError:
        pass
    headers = _collect_headers(text, search)

    opts = list(DEFAULT_OPTIONS) + list(options or ())
    opts.append(f"--gpu-architecture={sm}")
    # The include dir path is machine-specific; it is not part of the cache key (the headers'
    # content is versioned with the toolkit, and NVRTC's version is in the key).
    key_opts = list(opts)
    inc = cuda_include_dirs()
    if not inc:
        raise CompileError(
            "cannot find cuda_fp16.h / cuda_bf16.h: install the nvidia-cuda-runtime wheel or set "
            "TINYGRAPH_CUDA_INCLUDE to a CUDA include directory", name=prog_name, options=opts)
    full_opts = opts + [f"-I{inc[0]}"]
    hv = _header_version(Path(inc[0]))
    key_opts.append(f"#cuda-headers-{hv[0]}.{hv[1]}" if hv else "#cuda-headers-unknown")

    key = cache_key(text, headers, key_opts, sm)
    if cache:
        with _lock:
            hit = _memo.get(key)
        if hit is not None:
            return hit
        cdir = Path(cache_path) if cache_path is not None else cache_dir()
        entry = cdir / f"{key}.cubin"
        payload = _read_entry(entry)
        if payload is not None:
            with _lock:
                _memo[key] = payload
            return payload
        if entry.exists():  # corrupted / truncated / stale format: drop it
            try:
                entry.unlink()
            except OSError:
                pass
    if cache:  # a cache miss can take seconds (linear_q_k.cu: ~20 s): say what the wait is, and how many
        count = _miss_count(src_dir, search, key_opts, sm, cdir) if src_dir is not None else ""
        with _CompileNotice(f"tinygraph: compiling {Path(prog_name).name} for {sm}{count} "
                            "(once; kept in the kernel cache)"):
            cubin = _nvrtc_compile(text, prog_name, headers, full_opts)
    else:
        cubin = _nvrtc_compile(text, prog_name, headers, full_opts)
    if cache:
        try:
            _write_entry(entry, cubin)
        except OSError as e:  # a read-only cache dir must not break compilation
            print(f"tinygraph: warning: could not write kernel cache entry {entry}: {e}",
                  file=sys.stderr)
        with _lock:
            _memo[key] = cubin
    return cubin


def _miss_count(src_dir: Path, search: Sequence[Path], key_opts: Sequence[str], sm: str, cdir: Path) -> str:
    """" (i/n)": this is the i-th cache miss among the n ``*.cu`` sources of ``src_dir`` that the
    cache lacked at the first miss (for these options); "" if the directory cannot be read."""
    k = (str(src_dir), sm, tuple(key_opts), str(cdir))
    with _lock:
        st = _progress.get(k)
    if st is None:
        missing = 0
        try:
            for f in sorted(src_dir.glob("*.cu")):
                t = f.read_text(encoding="utf-8")
                key = cache_key(t, _collect_headers(t, search), key_opts, sm)
                missing += key not in _memo and not (cdir / f"{key}.cubin").is_file()
        except (OSError, UnicodeDecodeError, CompileError):
            return ""
        with _lock:
            st = _progress.setdefault(k, [0, missing])
    with _lock:
        st[0] += 1
        st[1] = max(st[1], st[0])
        return f" ({st[0]}/{st[1]})"


class _CompileNotice:
    """The compile notice: on a terminal a line whose elapsed time ticks (tqdm) while NVRTC
    works; otherwise the plain line, once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.bar = None
        self._stop = threading.Event()

    def __enter__(self) -> "_CompileNotice":
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        tqdm = None
        if tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
        if tqdm is None:  # one write: files compiling side by side must not interleave their lines
            sys.stderr.write(self.text + "\n")
            sys.stderr.flush()
            return self
        self.bar = tqdm(total=None, desc=self.text, bar_format="{desc} {elapsed}", file=sys.stderr, leave=True)
        threading.Thread(target=self._tick, daemon=True).start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()


def compile_many(paths: Sequence[str | os.PathLike], arch, options: Iterable[str] | None = None,
                 workers: int | None = None) -> list[bytes]:
    """:func:`compile_source` of each of ``paths`` (cached as usual), on up to ``workers``
    threads at once (default: one per CPU): NVRTC releases the GIL, so a cold kernel cache
    (every file missing) compiles in about the time of the longest file instead of the sum."""
    from concurrent.futures import ThreadPoolExecutor

    opts = list(options or ())
    paths = [Path(p) for p in paths]
    n = max(1, min(len(paths), workers or os.cpu_count() or 1))
    if n == 1:
        return [compile_source(p, arch, opts) for p in paths]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="tinygraph-nvrtc") as pool:
        return list(pool.map(lambda p: compile_source(p, arch, opts), paths))


def clear_memory_cache() -> None:
    """Forget the in-process memo (the disk cache is untouched). Used by tests."""
    with _lock:
        _memo.clear()
        _progress.clear()
