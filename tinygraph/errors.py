"""tinygraph's exception hierarchy.

Every error tinygraph raises on purpose derives from :class:`TinygraphError`, and also from the
built-in exception a Python user would expect (``ValueError`` for bad values and shapes,
``TypeError`` for dtypes, ``IndexError`` for out-of-bounds views, ``RuntimeError`` for backend
failures), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class TinygraphError(Exception):
    """Base class of every error raised by tinygraph."""


class GraphError(TinygraphError, ValueError):
    """An invalid graph: wrong shapes, mixed graphs, misuse of the API."""


class ShapeError(GraphError):
    """Shapes that do not fit the op's rule."""


class DTypeError(TinygraphError, TypeError):
    """A dtype the op does not accept."""


class BoundsError(TinygraphError, IndexError):
    """A view that reaches outside its base buffer."""


class BackendError(TinygraphError, RuntimeError):
    """A backend could not be created or failed while running a graph."""
