"""The graph page's files (package data, inlined into one self-contained page) and its layout in a
real headless Chromium (skipped where there is none): the columns' headings and the legend leave the
graph free, the arena's scale shows every layer's blocks, the memory a node writes is shown as
links, and the CLI and the page count nodes the same way."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import tinygraph as tg
from test_viz import ROOT, _embedded, _kv_write, browser, kv_graph, llama, llama_graph  # noqa: F401 (fixtures)
from tinygraph.viz import graph_data, summary_line, to_html, write_graph_files

# ------------------------------------------------------------------------------------------------
# the page's files: package data, inlined
# ------------------------------------------------------------------------------------------------
def test_page_assets_are_package_data_and_inlined():
    import fnmatch

    from tinygraph import viz_html
    assets = ROOT / "tinygraph" / viz_html.ASSETS
    names = sorted(p.name for p in assets.iterdir() if p.is_file())
    assert {"page.html", "page.css", *viz_html.JS_FILES} <= set(names)
    # every file there is shipped by a non-editable install (pyproject's package-data globs)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "tinygraph.viz_assets" in st["packages"]
    globs = st["package-data"]["tinygraph.viz_assets"]
    for n in names:
        assert any(fnmatch.fnmatch(n, gl) for gl in globs), n
    g, _ = kv_graph()
    page = to_html(g)
    for n in ("page.css", *viz_html.JS_FILES):  # inlined as they are: the page stays one file
        assert (assets / n).read_text(encoding="utf-8") in page
    assert "@CSS@" not in page and "@JS@" not in page
    assert len((ROOT / "tinygraph" / "viz_html.py").read_text().splitlines()) < 300
    for n in names:
        assert len((assets / n).read_text().splitlines()) <= 600, n


def test_missing_page_asset_names_the_file(monkeypatch):
    from tinygraph import viz_html
    monkeypatch.setattr(viz_html, "JS_FILES", ("graph.js", "nope.js"))
    g, _ = kv_graph()
    with pytest.raises(viz_html.VizAssetError, match=r"viz_assets/nope\.js"):
        to_html(g)


# ------------------------------------------------------------------------------------------------
# the page's layout (issue 13: headings, legend, arena scale, "written", one node count)
# ------------------------------------------------------------------------------------------------
def outlier_graph(n_small: int = 30):
    """Many small arena blocks (a "layer" each 256 B) and one LM-head-like block 256x larger."""
    sess = tg.Session(backend="numpy", verbose=False)
    W = sess.persistent((64, 16384), tg.float32, name="lm_head.weight")
    sess.finalize()
    g = sess.graph()
    h = g.input((1, 64), tg.float32, name="x")
    for i in range(n_small):
        h = tg.scale(h, 1.01, name=f"layers.{i // 3}.s{i}")
    g.output(tg.argmax(tg.matmul(h, W, name="lm_head"), name="next_token"))
    return g


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    problems: list[str] = []
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=10000)
    return page, problems


# every arena block as drawn, with its node's memory range and lifetime
_BLOCKS_JS = """() => { const S = window.tinygraphViz.state, L = S.L[S.g];
  return [...document.querySelectorAll('rect.blk')].map(r => { const n = L.byId.get(+r.dataset.id);
    return {name: n.name, off: n.arena.offset, end: n.arena.offset + n.arena.size, x: +r.getAttribute('x'),
            w: +r.getAttribute('width'), y: +r.getAttribute('y'), h: +r.getAttribute('height')}; }); }"""


def _check_blocks_disjoint(blocks: list[dict]) -> None:
    """Blocks alive at the same time in disjoint memory never overlap on the page (the x scale is monotonic)."""
    for a in blocks:
        for b in blocks:
            same_time = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
            if a is not b and same_time and a["end"] <= b["off"] and a["w"] > 2:
                assert a["x"] + a["w"] <= b["x"] + 0.5, (a, b)


def test_page_headings_and_legend_leave_the_graph_free(browser, llama_graph, tmp_path):
    files = write_graph_files(llama_graph, tmp_path, stem="g", formats=("html",))
    page, problems = _open(browser, files["html"])
    # (screen coordinates: the page opens at scale 1 or less, with the top of the drawing in view)
    first_row = page.evaluate("Math.min(...[...document.querySelectorAll('g.n rect.b')].map(r => r.getBoundingClientRect().y))")
    # no two texts above the first row (the columns' headings, the arena's axis labels) overlap
    texts = page.evaluate("""(top) => [...document.querySelectorAll('#vp text')].map(t => {
        const b = t.getBoundingClientRect(); return {x: b.x, y: b.y, w: b.width, h: b.height, text: t.textContent}; })
        .filter(b => b.y < top)""", first_row)
    assert any("SCHEDULE" in t["text"] for t in texts) and any("WEIGHTS" in t["text"] for t in texts)
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or
                     a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, (a, b)
    heads = page.evaluate("""() => [...document.querySelectorAll('g.colh')].map(g => {
        const b = g.getBBox(); return {x0: +g.dataset.x0, x1: +g.dataset.x1, x: b.x, y: b.y, w: b.width, h: b.height,
                                       text: g.textContent}; })""")
    assert len(heads) == 3, heads  # weights/caches/inputs, schedule, arena
    for h in heads:  # each heading inside its own column...
        assert h["x0"] - 0.5 <= h["x"] and h["x"] + h["w"] <= h["x1"] + 0.5, h
    for a, b in zip(heads, heads[1:]):  # ...and the columns do not overlap, so neither do the headings
        assert a["x1"] <= b["x0"], (a, b)
    assert max(t["y"] + t["h"] for t in texts) <= first_row, (texts, first_row)
    # the legend is a bar below the drawing, not over it
    svg = page.locator("#svg").bounding_box()
    legend = page.locator("#legend").bounding_box()
    assert legend["height"] > 10 and page.locator("#legend .it").first.is_visible()
    assert legend["y"] >= svg["y"] + svg["height"] - 0.5, (legend, svg)
    assert "output" in page.inner_text("#legend")
    page.close()
    assert not problems, problems


def test_page_arena_scale_shows_small_blocks(browser, tmp_path):
    g = outlier_graph()
    data = graph_data(g)
    big = next(n for n in data["nodes"] if n["name"] == "lm_head")["arena"]["size"]
    files = write_graph_files(g, tmp_path, stem="o", formats=("html",))
    page, problems = _open(browser, files["html"])
    col = page.evaluate("(() => { const g = [...document.querySelectorAll('g.colh')].find(g => /ARENA/.test(g.textContent));"
                        " return g ? +g.dataset.x1 - +g.dataset.x0 : 300; })()")
    blocks = page.evaluate(_BLOCKS_JS)
    small = [b for b in blocks if b["name"].startswith("layers.")]
    assert len(small) == 30 and all(b["end"] - b["off"] == 256 for b in small) and big == 256 * 256
    # the 256-byte blocks get a real width (a linear scale to the 64 KiB peak gives them 1 px)
    assert min(b["w"] for b in small) >= 0.25 * col, (min(b["w"] for b in small), col)
    lm = next(b for b in blocks if b["name"] == "lm_head")
    x0 = min(b["x"] for b in blocks)
    assert abs(lm["x"] + lm["w"] - (x0 + col)) < 1  # the outlier ends at the peak, the column's end...
    assert page.locator(f'text.bsz[data-id="{next(n["id"] for n in data["nodes"] if n["name"] == "lm_head")}"]') \
        .text_content() == "64.0 KiB"              # ...and, drawn past the axis break, prints its size
    assert "axis broken at 256 B" in page.locator("g.colh", has_text="ARENA").text_content()
    _check_blocks_disjoint(blocks)
    page.close()
    assert not problems, problems


def test_page_arena_blocks_of_a_model(browser, llama_graph, tmp_path):
    files = write_graph_files(llama_graph, tmp_path, stem="g", formats=("html",))
    page, problems = _open(browser, files["html"])
    page.click("#expand")
    _check_blocks_disjoint(page.evaluate(_BLOCKS_JS))
    page.close()
    assert not problems, problems


def test_page_written_buffers_are_links(browser, llama, llama_graph, tmp_path):
    data = graph_data(llama_graph)
    by_name = {n["name"]: n for n in data["nodes"]}
    st = _kv_write(by_name, 1)
    assert [w["memory"] for w in st["written"]][:1] == ["kv_cache"]
    assert by_name[st["written"][0]["buffer"]]["id"] == st["written"][0]["storage"]
    files = write_graph_files(llama_graph, tmp_path, stem="g", formats=("html",))
    page, problems = _open(browser, files["html"])
    page.evaluate(f"window.tinygraphViz.select({st['id']}, true)")
    row = page.locator("#details tr", has=page.locator("td:first-child", has_text="written"))
    assert row.count() == 1
    text = row.inner_text()
    assert "{" not in text and '"buffer"' not in text  # not raw JSON
    links = row.locator("a[data-goto]")
    assert [links.nth(i).inner_text() for i in range(links.count())] == [w["buffer"] for w in st["written"]]
    assert text.count("KV cache") == len(st["written"])
    links.first.click()
    page.wait_for_function(f"document.querySelector('#details h2').textContent === '{st['written'][0]['buffer']}'")
    page.close()
    assert not problems, problems


def _dump_count(llama, path: Path, capsys) -> list[int]:
    """``run --dump-graph``'s line, parsed: nodes in all, compute, views, buffers, inputs."""
    from tinygraph.run import _dump
    _dump(llama, str(path))
    m = re.search(r"wrote the decode graph \((\d+) nodes in all \((\d+) compute, (\d+) views, (\d+) "
                  r"weights/KV-cache buffers, (\d+) inputs\)\)", capsys.readouterr().err)
    assert m, path.name
    return [int(x) for x in m.groups()]


def test_one_node_count_in_cli_and_summary(llama, tmp_path, capsys):
    counts = {n: _dump_count(llama, tmp_path / n, capsys) for n in ("decode.txt", "decode.dot", "decode.html")}
    from tinygraph.viz import node_count_text
    s = _embedded((tmp_path / "decode.html").read_text())["graphs"]["after"]["summary"]
    g = llama.step_graph(1, "argmax")[0]
    assert len(g.nodes) != s["nodes"]  # Graph.nodes leaves out weights and their views: not the count used
    want = [s["nodes"], s["compute_nodes"], s["views"], s["persistent_buffers"], s["inputs"]]
    assert all(c == want for c in counts.values()) and sum(want[1:]) == want[0]
    assert node_count_text(s) in summary_line(s)  # tools/viz.py's line


def test_one_node_count_in_cli_and_page(browser, llama, tmp_path, capsys):
    count = _dump_count(llama, tmp_path / "decode.html", capsys)
    from tinygraph.viz import node_count_text
    s = _embedded((tmp_path / "decode.html").read_text())["graphs"]["after"]["summary"]
    page, problems = _open(browser, tmp_path / "decode.html")
    chip = page.locator("#stat-nodes")
    assert chip.inner_text() == f"{count[0]} nodes in all"
    assert chip.get_attribute("title") == node_count_text(s)
    page.close()
    assert not problems, problems


def test_written_memory_in_json():
    g, t = kv_graph()
    store = next(n for n in graph_data(g)["nodes"] if n["id"] == t["store"].id)
    assert store["written"] == [{"buffer": "cache.k.0", "storage": t["K"].id, "memory": "kv_cache", "offset": 24,
                                 "shape": [1, 8], "strides": [8, 1]}]
