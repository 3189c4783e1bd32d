"""Exceptions raised by the loader layer (``tinygraph.io``).

``LoadError`` subclasses ``ValueError`` so callers that only know the standard
library still catch malformed-file problems; messages always name the file,
the tensor (where one is involved) and what is wrong.
"""

from __future__ import annotations

try:  # the graph core may own the root of the hierarchy; share it when present
    from tinygraph.errors import TinygraphError  # type: ignore[attr-defined]
except ImportError:  # core not written yet (or stripped-down install)

    class TinygraphError(Exception):  # type: ignore[no-redef]
        """Root of every error tinygraph raises on purpose."""


class LoadError(TinygraphError, ValueError):
    """A checkpoint, config or tokenizer file is malformed, inconsistent or unsupported."""


class UnsupportedModelError(LoadError):
    """The file is well formed but describes an architecture/feature tinygraph cannot run."""


__all__ = ["TinygraphError", "LoadError", "UnsupportedModelError"]
