"""Graph dump and visualisation: the JSON/DOT/HTML describe exactly the graph (needed nodes,
networkx edges, hazard edges of KV-cache writes, every view's offset and strides), the CLI writes
the files, and the HTML page works in a real headless Chromium (skipped where there is none)."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tinygraph as tg
from tinygraph.dump import node_groups, to_dot
from tinygraph.viz import (graph_data, graph_summary, model_step_graph, summary_line, to_html,
                           write_graph_files)

ROOT = Path(__file__).parent.parent
FIX = Path(__file__).parent / "fixtures"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = (os.environ.get("TINYGRAPH_CHROMIUM") or
            ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")) or
            "/usr/bin/chromium")


# ------------------------------------------------------------------------------------------------
# graphs
# ------------------------------------------------------------------------------------------------
def kv_graph(name_x: str = "x"):
    """A decode-like step: write a key into slot 3 of a KV cache, then read the first 4 slots."""
    sess = tg.Session(backend="numpy", verbose=False)
    W = sess.persistent((16, 8), tg.float32, name="W")
    K = sess.persistent((32, 8), tg.float32, name="cache.k.0")
    sess.finalize()
    g = sess.graph()
    x = g.input((1, 16), tg.float32, name=name_x)
    k = tg.matmul(x, W, name="layers.0.k")
    slot = tg.view(K, (1, 8), (8, 1), 3 * 8, name="layers.0.slot")
    store = tg.cpy(k, slot, name="layers.0.k_store")
    hist = tg.view(K, (4, 8), (8, 1), 0, name="layers.0.hist")
    scores = tg.matmul(k, tg.transpose(hist), name="layers.0.scores")
    probs = tg.softmax(tg.scale(scores, 0.35), name="probs")
    g.output(probs)
    return g, {"W": W, "K": K, "x": x, "k": k, "slot": slot, "store": store, "hist": hist, "scores": scores}


def strided_graph():
    """Views with offsets and odd strides: rows of a packed matrix, a transposed column block."""
    sess = tg.Session(backend="numpy", verbose=False)
    sess.finalize()
    g = sess.graph()
    a = g.input((6, 10), tg.float32, name="a")
    b = tg.scale(a, 2.0, name="b")
    top = tg.view(b, (2, 10), (10, 1), 10, name="rows_1_2")
    cols = tg.view(b, (6, 3), (10, 1), 4, name="cols_4_6")
    ct = tg.transpose(cols, name="cols_T")
    p = tg.permute(tg.reshape(top, (2, 5, 2)), (2, 0, 1))
    g.output(tg.matmul(ct, tg.cont(cols)), tg.add(tg.cont(p), tg.cont(p)))
    return g


@pytest.fixture(scope="module")
def llama():
    from tinygraph.models import load_model
    m = load_model(FIX / "llama", backend="numpy")
    yield m
    m.close()


@pytest.fixture(scope="module")
def llama_graph(llama):
    return model_step_graph(llama, 1, 5, fuse=True)


def _edges(nxg):
    return {(a, b, d["kind"]) for a, b, d in nxg.edges(data=True)}


def _shape(x):
    return "(" + ", ".join(map(str, x)) + ("," if len(x) == 1 else "") + ")"


# ------------------------------------------------------------------------------------------------
# JSON / summary
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: kv_graph()[0], strided_graph], ids=["kv", "strided"])
def test_json_nodes_and_edges_are_the_graph(make):
    g = make()
    nxg = g.to_networkx()
    data = graph_data(g)
    assert [n["id"] for n in data["nodes"]] == list(nxg.nodes)
    assert {(e["src"], e["dst"], e["kind"]) for e in data["edges"]} == _edges(nxg)
    assert len(data["edges"]) == nxg.number_of_edges()
    plan = g.plan()
    by_id = {n["id"]: n for n in data["nodes"]}
    assert [n.id for n in plan.order] == sorted((i for i, n in by_id.items() if n["step"] is not None),
                                                key=lambda i: by_id[i]["step"])
    for nid, n in by_id.items():
        t = nxg.nodes[nid]["tensor"]
        assert (n["name"], n["op"], n["shape"], n["strides"], n["offset"]) == \
            (t.name, t.op, list(t.shape), list(t.strides), t.offset)
        assert n["buffer"] == t.storage.name and n["storage"] == t.storage.id
        assert n["srcs"] == [s.id for s in t.srcs]
        if t.id in plan.memory.offsets:
            assert n["arena"]["offset"] == plan.memory.offsets[t.id]
            assert n["arena"]["size"] == plan.memory.sizes[t.id]
            assert n["arena"]["inplace_of"] == plan.memory.inplace.get(t.id)
        else:
            assert n["arena"] is None
    json.dumps(data, allow_nan=False)  # plain JSON


def test_summary_counts_and_bytes():
    g, t = kv_graph()
    s = graph_summary(g)
    nxg = g.to_networkx()
    assert s["nodes"] == nxg.number_of_nodes() == len(graph_data(g)["nodes"])
    assert s["compute_nodes"] == len(g.plan().order)
    assert s["edges"] == nxg.number_of_edges() == s["data_edges"] + s["hazard_edges"]
    assert s["arena_peak_bytes"] == g.plan().memory.peak > 0
    assert s["weight_bytes"] == t["W"].nbytes and s["kv_cache_bytes"] == t["K"].nbytes
    assert s["persistent_buffers"] == 2 and s["inputs"] == 1 and s["outputs"] == 1 and s["side_effects"] == 1
    assert s["total_time_us"] is None
    assert "compute" in summary_line(s)


def test_hazard_edges_of_a_kv_slot_cpy():
    g, t = kv_graph()
    data = graph_data(g)
    hz = [e for e in data["edges"] if e["kind"] == "hazard"]
    # the history read must run after the write into slot 3 (read-after-write on cache.k.0)
    assert {"src": t["store"].id, "dst": t["scores"].id, "kind": "hazard", "buffer": "cache.k.0"} in hz
    store = next(n for n in data["nodes"] if n["id"] == t["store"].id)
    assert store["writes"] and store["side_effect"] and store["memory"] == "kv_cache"
    assert store["offset"] == 24 and store["buffer"] == "cache.k.0"
    dot = to_dot(g)
    assert re.search(rf"n{t['store'].id} -> n{t['scores'].id} \[style=dashed, color=red.*hazard cache\.k\.0", dot)


@pytest.mark.parametrize("make", [lambda: kv_graph()[0], strided_graph], ids=["kv", "strided"])
def test_every_view_offset_and_strides_in_dot_and_json(make):
    g = make()
    dot = to_dot(g)
    labels = dict(re.findall(r'^\s*n(\d+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M))
    by_id = {n["id"]: n for n in graph_data(g)["nodes"]}
    views = [d["tensor"] for _, d in g.to_networkx().nodes(data=True) if not d["tensor"].is_owner]
    assert len(views) >= 4
    for t in views:
        lab = labels[str(t.id)]
        assert f"strides {_shape(t.strides)} offset {t.offset}" in lab, lab
        assert t.storage.name in lab
        assert by_id[t.id]["offset"] == t.offset and by_id[t.id]["strides"] == list(t.strides)
    assert any(t.offset for t in views)  # the test means something


def test_groups_by_layer_prefix():
    g, t = kv_graph()
    groups = node_groups(d["tensor"] for _, d in g.to_networkx().nodes(data=True))
    assert groups[t["store"].id] == "layers.0" and groups[t["scores"].id] == "layers.0"
    assert groups[t["K"].id] == "layers.0"          # a buffer only layer 0 reads
    assert groups[t["x"].id] == "layers.0"          # an input only layer 0 reads
    assert groups[g.outputs[0].id] is None          # "probs": named, no layer prefix


def test_extra_fields_from_a_backend():
    g, t = kv_graph()
    extra = {t["k"].id: {"kernel": "matmul_f32_tn", "launch": {"grid": [1, 1, 1], "block": [128, 1, 1]},
                         "time_us": 12.5},
             t["store"].id: {"kernel": "copy_strided", "time_us": 1.5, "shape": "clash"}}
    data = graph_data(g, extra)
    k = next(n for n in data["nodes"] if n["id"] == t["k"].id)
    assert k["kernel"] == "matmul_f32_tn" and k["launch"]["block"] == [128, 1, 1] and k["time_us"] == 12.5
    st = next(n for n in data["nodes"] if n["id"] == t["store"].id)
    assert st["shape"] == [1, 8] and st["extra"] == {"shape": "clash"}   # core keys are not overwritten
    assert data["summary"]["total_time_us"] == 14.0 == graph_summary(g, extra)["total_time_us"]
    assert "kernel matmul_f32_tn" in to_dot(g, extra)


# ------------------------------------------------------------------------------------------------
# DOT syntax
# ------------------------------------------------------------------------------------------------
_ID = r'(?:n\d+|"(?:[^"\\]|\\.)*")'
_ATTRS = r'\[(?:[^\]"]|"(?:[^"\\]|\\.)*")*\]'
_LINE = [re.compile(p) for p in (
    r"^digraph \w+ \{$", r"^\s*\}$", r"^\s*(graph|node|edge) " + _ATTRS + ";$",
    r"^\s*n\d+ " + _ATTRS + ";$", r"^\s*n\d+ -> n\d+( " + _ATTRS + ")?;$",
    r"^\s*subgraph " + _ID + r" \{$", r"^\s*\{ rank=same; (n\d+; )+\}$", r"^\s*(\w+=(\"(?:[^\"\\]|\\.)*\"|\w+); ?)+$")]


def check_dot(text: str) -> tuple[int, int]:
    """A line-level DOT syntax check of what to_dot writes; returns (node count, edge count)."""
    depth, nodes, edges = 0, 0, 0
    for line in text.splitlines():
        assert any(p.match(line) for p in _LINE), f"not DOT: {line!r}"
        depth += line.endswith("{") - (line.strip() == "}")
        assert depth >= 0
        nodes += bool(re.match(r"^\s*n\d+ \[", line))
        edges += bool(re.match(r"^\s*n\d+ -> ", line))
    assert depth == 0
    return nodes, edges


@pytest.mark.parametrize("make", [lambda: kv_graph()[0], strided_graph], ids=["kv", "strided"])
def test_dot_parses(make, tmp_path):
    g = make()
    dot = to_dot(g)
    nxg = g.to_networkx()
    assert check_dot(dot) == (nxg.number_of_nodes(), nxg.number_of_edges())
    if shutil.which("dot"):
        p = tmp_path / "g.dot"
        p.write_text(dot)
        r = subprocess.run(["dot", "-Tsvg", str(p), "-o", str(tmp_path / "g.svg")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_dot_escapes_names():
    sess = tg.Session(backend="numpy", verbose=False)
    sess.finalize()
    g = sess.graph()
    x = g.input((2,), tg.float32, name='a "quoted" \\ name')
    g.output(tg.scale(x, 2.0, name="</script><b>x</b>"))
    assert check_dot(to_dot(g)) == (2, 1)
    html = to_html(g)
    assert "</script><b>" not in html
    assert html.count("</script>") == 2  # the data block and the code block


# ------------------------------------------------------------------------------------------------
# files, HTML, CLI
# ------------------------------------------------------------------------------------------------
def _embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_write_graph_files(tmp_path):
    g, _ = kv_graph()
    files = write_graph_files(g, tmp_path / "out", stem="kv", title="kv test")
    assert files["txt"].read_text().strip() == g.dump().strip()
    assert files["dot"].read_text() == to_dot(g)
    if shutil.which("dot"):
        assert files["svg"].read_text().lstrip().startswith(("<?xml", "<svg"))
    else:
        assert files["svg"] is None and "dot" in files.notes["svg"]
    html = files["html"].read_text()
    data = _embedded(html)
    assert data["title"] == "kv test" and list(data["graphs"]) == ["after"]
    assert data["graphs"]["after"] == json.loads(json.dumps(graph_data(g)))
    # self-contained: no external scripts, styles, fonts or fetches
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    assert not re.search(r"\b(fetch|XMLHttpRequest|import\s*\()", html)
    assert "https://" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    only = write_graph_files(g, tmp_path / "only", formats="html")
    assert list(only) == ["html"] and [p.name for p in (tmp_path / "only").iterdir()] == ["graph.html"]
    with pytest.raises(ValueError, match="unknown graph format"):
        write_graph_files(g, tmp_path, formats=("png",))


def test_before_after_page():
    before = strided_graph()
    after, _ = kv_graph()
    data = _embedded(to_html(after, before=before))
    assert set(data["graphs"]) == {"before", "after"}
    assert data["graphs"]["before"]["summary"] == graph_summary(before)


def _kv_write(by_name: dict, i: int) -> dict:
    """Layer i's KV-cache write: the set_rows ``k_store``, or once fused the ``attention_store``
    (decode) or ``rope_store`` (longer steps)."""
    for n in ("k_store", "attention_store", "rope_store"):
        if f"layers.{i}.attn.{n}" in by_name:
            return by_name[f"layers.{i}.attn.{n}"]
    raise KeyError(f"no KV-cache write of layer {i} in {sorted(by_name)[:8]}...")


def test_model_graph_structure(llama, llama_graph):
    g = llama_graph
    nxg = g.to_networkx()
    data = graph_data(g)
    assert len(data["nodes"]) == nxg.number_of_nodes()
    assert {(e["src"], e["dst"], e["kind"]) for e in data["edges"]} == _edges(nxg)
    by_name = {n["name"]: n for n in data["nodes"]}
    assert {n["group"] for n in data["nodes"]} >= {"layers.0", "layers.1"}
    for i in range(llama.config.num_layers):
        st = _kv_write(by_name, i)
        assert st["writes"] and f"cache.k.{i}" in [w["buffer"] for w in st["written"]] and st["group"] == f"layers.{i}"
        if st["op"] != "attention_store":  # a separate write is ordered before the attention reading it
            assert any(e["src"] == st["id"] and e["kind"] == "hazard" for e in data["edges"])
    s = data["summary"]
    assert s["weight_bytes"] == llama.weight_bytes
    assert s["kv_cache_bytes"] == sum(t.nbytes for t in llama.kv_k + llama.kv_v)
    assert s["compute_nodes"] == len(g.plan().order) and s["layers"] == llama.config.num_layers
    assert check_dot(to_dot(g)) == (nxg.number_of_nodes(), nxg.number_of_edges())


def test_run_dump_graph_html(llama, tmp_path):
    from tinygraph.run import _dump
    for name in ("decode.html", "decode.dot", "decode.txt"):
        _dump(llama, str(tmp_path / name))
    data = _embedded((tmp_path / "decode.html").read_text())
    assert data["graphs"]["after"]["summary"]["layers"] == llama.config.num_layers
    assert (tmp_path / "decode.dot").read_text().startswith("digraph")
    assert "arena peak" in (tmp_path / "decode.txt").read_text()


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "viz.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_model(tmp_path):
    r = _cli("--model", str(FIX / "llama"), "--out", str(tmp_path), "--step", "prefill", "--prompt-tokens", "4")
    assert r.returncode == 0, r.stderr
    for ext in ("txt", "dot", "html"):
        assert (tmp_path / f"prefill.{ext}").is_file() and f"prefill.{ext}" in r.stdout
    assert re.search(r"viz: \d+ nodes in all \(\d+ compute, \d+ views", r.stdout)
    r = _cli("--model", str(FIX / "llama"), "--out", str(tmp_path), "--before-after", "--formats", "html")
    assert r.returncode == 0, r.stderr
    data = _embedded((tmp_path / "decode.html").read_text())
    try:
        import tinygraph.passes  # noqa: F401
        assert set(data["graphs"]) == {"before", "after"}
    except ImportError:
        assert "no fusion passes" in r.stderr
    r = _cli("--model", str(tmp_path / "missing"), "--out", str(tmp_path))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def _doc_example() -> str:
    """The ``--script`` example of tools/viz.py's docstring (its --help): the test runs what the
    help shows, so the two cannot drift apart."""
    doc = ast.get_docstring(ast.parse((ROOT / "tools" / "viz.py").read_text()))
    return textwrap.dedent(doc.split("Example::\n", 1)[1].split("\n\n``", 1)[0])


SCRIPT = _doc_example()


def test_cli_script(tmp_path):
    script = tmp_path / "my_graph.py"
    script.write_text(SCRIPT)
    r = _cli("--script", str(script), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    data = _embedded((tmp_path / "o" / "my_graph.html").read_text())["graphs"]["after"]
    assert data["summary"]["nodes"] == 10 and data["summary"]["hazard_edges"] == 1
    r = _cli("--script", str(script), "--out", str(tmp_path / "t"), "--formats", "txt", "--tasks", "3")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "t" / "my_graph.tasks.txt").read_text()   # the persistent kernel's queues
    assert "tasks on 3 SMs" in text and text.count("\nSM ") == 3
    assert "TINYGRAPH_PERSISTENT=1: " in text and "persistent segments" in text  # what CUDA would fuse
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    r = _cli("--script", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "build(sess)" in r.stderr


# ------------------------------------------------------------------------------------------------
# the page in a real browser
# ------------------------------------------------------------------------------------------------
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; or set TINYGRAPH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=30000)
        except Exception as e:  # a Chromium that does not start here
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def test_html_in_chromium(browser, llama, tmp_path):
    t0 = time.perf_counter()
    before = model_step_graph(llama, 1, 5, fuse=False)
    after = model_step_graph(llama, 1, 5, fuse=True)
    g = after or before
    files = write_graph_files(g, tmp_path, stem="llama", formats=("html",), title="llama fixture · decode",
                              before=before if after is not None else None)
    data = graph_data(g)
    by_name = {n["name"]: n for n in data["nodes"]}
    store = _kv_write(by_name, 1)
    kv = store["name"].rsplit(".", 1)[1]  # k_store (unfused) or attention_store (fused: RoPE + KV write + attention)
    n_nodes, n_compute = data["summary"]["nodes"], data["summary"]["compute_nodes"]

    page = browser.new_page(viewport={"width": 1500, "height": 950})
    problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: r.url.startswith(("file:", "data:")) or problems.append(f"request: {r.url}"))
    page.goto(files["html"].as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=10000)

    # the summary bar and the drawing show every node, each once
    assert page.inner_text("#stat-nodes").split()[0] == str(n_nodes)
    assert page.inner_text("#stat-compute").split()[0] == str(n_compute)
    assert page.locator("#svg").get_attribute("data-rendered-nodes") == str(n_nodes)
    assert page.locator("g.n:not([data-ref])").count() == n_nodes

    # scroll to layer 1, click its KV-cache write: the details panel shows its layout and buffer
    page.select_option("#jump", "layers.1")
    page.locator(f'g.n[data-id="{store["id"]}"]:not([data-ref])').click(timeout=5000)
    panel = page.locator("#details")
    panel.wait_for(state="visible")
    text = panel.inner_text()
    assert store["name"] in text and "cache.k.1" in text
    assert re.search(rf"view offset\s+{store['offset']} elements", text)
    assert _shape(store["strides"]) in text
    if store["op"] != "attention_store":  # a separate KV write is ordered before its reader
        assert "Hazard ordering".upper() in text.upper()

    # search finds a node and selects it
    page.fill("#search", kv)
    page.wait_for_function("document.querySelector('#hits').textContent.includes('match')")
    expect = sum(kv in n["name"] for n in data["nodes"])
    assert expect == llama.config.num_layers
    assert page.inner_text("#hits") == f"{expect} matches"
    page.press("#search", "Enter")
    page.wait_for_function(f"document.querySelector('#details h2').textContent === 'layers.0.attn.{kv}'")
    assert page.locator("g.n.match").count() == expect
    page.fill("#search", "")
    page.wait_for_timeout(200)

    # collapse layer 1 into one box, then expand it again
    in_layer1 = sum(1 for n in data["nodes"] if n["group"] == "layers.1")
    page.select_option("#jump", "layers.1")
    page.locator('g.hdr[data-group="layers.1"]').click(timeout=5000)
    page.wait_for_selector('g.box[data-group="layers.1"]')
    assert int(page.locator("#svg").get_attribute("data-rendered-nodes")) <= n_nodes - in_layer1
    assert page.locator(f'g.n[data-id="{store["id"]}"]').count() == 0
    assert "layers.1" in page.locator('g.box[data-group="layers.1"]').text_content()
    page.locator('g.box[data-group="layers.1"]').click(timeout=5000)
    page.wait_for_selector(f'g.n[data-id="{store["id"]}"]')
    assert page.locator("#svg").get_attribute("data-rendered-nodes") == str(n_nodes)

    # the before/after toggle, when there is a fusion pass
    if after is not None:
        page.click('#ba button[data-g="before"]', timeout=5000)
        assert page.inner_text("#stat-compute").split()[0] == str(graph_summary(before)["compute_nodes"])
        page.click('#ba button[data-g="after"]')
        assert page.inner_text("#stat-compute").split()[0] == str(n_compute)

    # open layer 1's KV write again for the screenshot
    page.fill("#search", store["name"])
    page.press("#search", "Enter")
    page.wait_for_function(f"document.querySelector('#details h2').textContent === '{store['name']}'")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viz_llama_decode.png"))
    page.close()
    assert not problems, problems
    assert time.perf_counter() - t0 < 30


def test_profiled_decode_step(llama):
    """A profiled decode step times every compute node; the table and the page show the times."""
    from tinygraph.dump import profile_table
    from tinygraph.viz import graph_data
    llama.step([1, 2, 3], 0, "argmax")
    g, times = llama.profile_decode(4, 3)
    assert set(times) == {n.id for n in g.plan().order} and all(t >= 0 for t in times.values())
    table = profile_table(g, times, top=5)
    assert "total" in table and len(table.splitlines()) == 5 + 3
    data = graph_data(g, extra={nid: {"time_us": t} for nid, t in times.items()})
    assert abs(data["summary"]["total_time_us"] - sum(times.values())) < 1e-6 * max(1.0, sum(times.values()))
