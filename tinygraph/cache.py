"""Where tinygraph keeps downloaded models and compiled kernels: the one place that decides."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(sub: str = "", create: bool = True) -> Path:
    """``$TINYGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/tinygraph``, else ``~/.cache/tinygraph``
    (plus ``sub``, e.g. ``"kernels"``); created on first use unless ``create`` is False (the
    kernel cache creates its directory when it writes, so an unwritable one only disables it)."""
    root = os.environ.get("TINYGRAPH_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygraph"
    d = base / sub if sub else base
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d
