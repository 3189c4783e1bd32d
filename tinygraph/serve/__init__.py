"""``python -m tinygraph.serve``: an OpenAI-compatible HTTP server on the continuous-batching engine.

:func:`create_app` makes the ASGI app for a loaded model and its engine (:mod:`.app`); the
request fields and response shapes are in :mod:`.protocol`; incremental text and stop strings in
:mod:`.text`; the command line in :mod:`.__main__`.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "main"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`tinygraph.serve.app.create_app` (imported lazily: FastAPI loads only when serving)."""
    from .app import create_app as make
    return make(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """The command line (:func:`tinygraph.serve.__main__.main`)."""
    from .__main__ import main as run
    return run(argv)
