"""The interactive HTML page of :mod:`tinygraph.viz`: plain CSS and JavaScript, all inline, no network.

The page's parts are real files shipped as package data in ``tinygraph/viz_assets/``:
``page.html`` (the skeleton, with ``@TITLE@``, ``@CSS@``, ``@DATA@`` and ``@JS@`` slots),
``page.css``, and the code in ``graph.js`` (layout, drawing) and ``ui.js`` (interaction), which
run in one function scope, in that order. :func:`render_page` reads them and inlines their
contents, so the written page stays one self-contained file.

Layout: one row per compute node, in schedule order, top to bottom (the "spine"); views of
intermediates get a thin row just before their first reader. Memory from outside the arena
(weights, KV-cache buffers, inputs, and views of them) is drawn to the left of the node that
first reads it; a later reader shows a small reference chip instead of a long edge. Data edges
between rows are arcs on the right; hazard-ordering edges are dashed red arcs. On the far right,
the arena: each intermediate's block (offset, size) drawn over its lifetime. Rows of one layer
(``layers.{i}``) form a band that collapses into one box.
"""
from __future__ import annotations

import html
import re
from importlib import resources

from .errors import TinygraphError

#: the package-data directory holding the page's files
ASSETS = "viz_assets"
#: the page's code, inlined in this order into one function scope
JS_FILES = ("graph.js", "ui.js")
#: text that would end the inline element early (``</script>`` in JS, ``</style>`` in CSS)
_CLOSERS = {".js": "</script", ".css": "</style"}


class VizAssetError(TinygraphError, FileNotFoundError):
    """A file of the graph page is missing from the installed package or cannot be inlined."""


def asset_text(name: str) -> str:
    """The text of ``tinygraph/viz_assets/{name}``, read through :mod:`importlib.resources`
    (so an installed, non-editable package finds it too)."""
    res = resources.files("tinygraph").joinpath(ASSETS).joinpath(name)
    try:
        text = res.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as e:
        raise VizAssetError(f"graph page file {ASSETS}/{name} is missing from the tinygraph package "
                            "(package data not installed?)") from e
    closer = next((c for ext, c in _CLOSERS.items() if name.endswith(ext)), None)
    if closer and closer in text.lower():
        raise VizAssetError(f"graph page file {ASSETS}/{name} contains {closer!r}: it would end the inline element")
    return text


def page_parts() -> dict[str, str]:
    """The page's skeleton, CSS and JS (the JS files joined), as :func:`render_page` inlines them."""
    return {"PAGE": asset_text("page.html"), "CSS": asset_text("page.css"),
            "JS": "\n".join(asset_text(f) for f in JS_FILES)}


def render_page(title: str, data_json: str) -> str:
    """The page with ``data_json`` (already escaped for a script element) embedded."""
    parts = page_parts()
    parts.update(TITLE=html.escape(title), DATA=data_json)
    # one pass, so text inside a part (the data, the code) is never taken for a slot
    return re.sub(r"@(CSS|JS|TITLE|DATA)@", lambda m: parts[m.group(1)], parts["PAGE"])
