"""Where tinygraph keeps downloaded models and compiled kernels."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(sub: str = "") -> Path:
    """``$TINYGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/tinygraph``, else ``~/.cache/tinygraph``
    (plus ``sub``); created on first use."""
    root = os.environ.get("TINYGRAPH_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygraph"
    d = base / sub if sub else base
    d.mkdir(parents=True, exist_ok=True)
    return d
