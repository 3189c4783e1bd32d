#!/usr/bin/env python3
"""Write a graph as a text table, Graphviz DOT (+ SVG) and one interactive, self-contained HTML page.

The SVG is rendered from the DOT when Graphviz ``dot`` is installed. Open the HTML in any browser
(no network needed).

    python tools/viz.py                                    # SmolLM2-135M decode graph -> out/viz/decode.*
    python tools/viz.py --open                             # ... and open decode.html in the browser
    python tools/viz.py --step prefill --prompt-tokens 16  # the prefill graph of a 16-token prompt
    python tools/viz.py --model path/to/model --position 100
    python tools/viz.py --script my_graph.py               # any graph built with the API

``--script FILE``: a Python file defining ``build(sess) -> Graph``. It gets a fresh
``tinygraph.Session`` on ``--backend``; it declares its persistent buffers, calls
``sess.finalize()`` (uploading values is not needed to look at a graph), builds one graph and
returns it (with its outputs marked). Example::

    import tinygraph as tg

    def build(sess):
        W = sess.persistent((16, 8), tg.float32, name="W")
        K = sess.persistent((32, 8), tg.float32, name="cache.k.0")
        sess.finalize()
        g = sess.graph()
        x = g.input((1, 16), tg.float32, name="x")
        k = tg.matmul(x, W, name="k")
        tg.cpy(k, tg.view(K, (1, 8), (8, 1), 3 * 8), name="k_store")
        g.output(tg.softmax(tg.matmul(k, tg.transpose(tg.view(K, (4, 8), (8, 1), 0))), name="probs"))
        return g

``--before-after``: a page with a before/after toggle around the fusion passes: for a model, its
unfused and fused step graphs (``step_graph(T, fuse=False/True)``); for a script, ``build(sess)``
is called twice and the second graph goes through ``tinygraph.passes.apply_fusions(g) -> Graph``
if that exists, else ``tinygraph.passes.optimize(g)`` (in place). Without passes the graph is
written as is, with a notice.

``--position``: only builders that bake positions into the graph use it; the current one feeds
positions at run time, so one decode graph serves every position.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    first, _, rest = __doc__.partition("\n")
    p = argparse.ArgumentParser(prog="python tools/viz.py", description=first, epilog=rest.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory, .safetensors, index .json or .gguf "
                                   "(default: SmolLM2-135M-Instruct, as python -m tinygraph.run)")
    p.add_argument("--step", choices=["prefill", "decode"], default="decode",
                   help="which step's graph: the prompt (prefill) or one new token (decode; default)")
    p.add_argument("--prompt-tokens", type=int, default=8, metavar="N",
                   help="prefill: tokens in the prompt (default 8)")
    p.add_argument("--position", type=int, default=None, metavar="P",
                   help="decode: position of the new token = tokens already in the KV cache "
                        "(default: --prompt-tokens); prefill: where the prompt starts (default 0)")
    p.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="KV-cache length in tokens (default: the model's, as python -m tinygraph.run)")
    p.add_argument("--tensor-parallel", type=int, default=None, metavar="R",
                   help="shard the model over R simulated ranks (NumPy) and show rank 0's graph, with its "
                        "all_reduce nodes")
    p.add_argument("--script", metavar="FILE", help="a Python file defining build(sess) -> Graph")
    p.add_argument("--out", default="out/viz", metavar="DIR", help="output directory (default out/viz)")
    p.add_argument("--stem", default=None, help="file name stem (default: the step, or the script's name)")
    p.add_argument("--formats", default="txt,dot,html", help="comma-separated: txt,dot,svg,html (default txt,dot,html; "
                                                             "svg is written with dot when Graphviz is installed)")
    p.add_argument("--before-after", action="store_true",
                   help="page with a before/after toggle around the fusion passes (tinygraph.passes)")
    p.add_argument("--backend", choices=["numpy", "cuda", "auto"], default="numpy",
                   help="session backend (default numpy: building and planning a graph needs no GPU)")
    p.add_argument("--open", action="store_true", help="open the HTML page in the default web browser")
    p.add_argument("--tasks", type=int, default=None, metavar="SMS",
                   help="also write STEM.tasks.txt: the graph split into tasks for a persistent kernel on SMS "
                        "multiprocessors (tinygraph/tasks.py): each node's tasks and waits, then each SM's queue, "
                        "then the segments the CUDA backend runs as persistent kernels with TINYGRAPH_PERSISTENT=1")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _load_script(path: str):
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--script {path!r}: no such file")
    spec = importlib.util.spec_from_file_location(f"tinygraph_viz_script_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(p.parent.resolve()))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.pop(0)
    if not callable(getattr(mod, "build", None)):
        raise ValueError(f"--script {path!r} defines no build(sess) -> Graph function")
    return mod


def _script_graph(args):
    import tinygraph as tg
    mod = _load_script(args.script)

    def build():
        sess = tg.Session(backend=args.backend, verbose=False)
        g = mod.build(sess)
        if not isinstance(g, tg.Graph):
            raise TypeError(f"--script {args.script!r}: build(sess) returned {type(g).__name__}, not a tinygraph Graph")
        if not g.outputs and not g.side_effects:
            raise ValueError(f"--script {args.script!r}: the graph has no outputs (call g.output(...)) "
                             "and no side effects")
        return g

    g = build()
    before = None
    if args.before_after:
        before, g = g, _apply_passes(build)
    return g, Path(args.script).stem, Path(args.script).name, g.session, before


def _model_graph(args):
    from tinygraph.hub import default_model_path
    from tinygraph.models import load_model
    from tinygraph.viz import model_step_graph

    path = Path(args.model) if args.model else default_model_path()
    if args.model and not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if args.prompt_tokens < 1:
        raise ValueError(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
    if args.step == "decode":
        T, start = 1, args.prompt_tokens if args.position is None else args.position
    else:
        T, start = args.prompt_tokens, 0 if args.position is None else args.position
    if start < 0:
        raise ValueError(f"--position must be >= 0, got {start}")
    t0 = time.perf_counter()
    tp = getattr(args, "tensor_parallel", None)
    model = load_model(path, dtype="float32", backend=args.backend, max_context=args.max_context,
                       **({"tensor_parallel": tp} if tp else {}))
    if start + T > model.max_context:
        raise ValueError(f"positions {start}..{start + T - 1} do not fit the KV cache ({model.max_context} tokens); "
                         f"pass --max-context")
    print(f"viz: loaded {path.name} ({model.spec.name}, {model.config.num_layers} layers) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # positions are graph inputs: one graph serves every position
    what = "decode step" if args.step == "decode" else f"prefill of {T} tokens"
    title = f"{path.name} · {what}" + (f" · rank 0 of {tp}" if tp and tp > 1 else "")
    g = model_step_graph(model, T, start, fuse=True)
    before = model_step_graph(model, T, start, fuse=False) if args.before_after else None
    return g, args.step, title, model.session, before


def _backend_extra(sess, g):
    """Per-node facts a backend may offer (kernel, launch, time_us): ``backend.viz_extra(graph)``."""
    hook = getattr(getattr(sess, "backend", None), "viz_extra", None)
    return hook(g) if callable(hook) else None


def _apply_passes(rebuild):
    """A fresh copy of the graph from ``rebuild()`` after the fusion passes (``tinygraph.passes.optimize``)."""
    from tinygraph.passes import optimize
    after = rebuild()
    print(f"viz: passes: {optimize(after)}", file=sys.stderr)
    return after


def _write_tasks(sess, g, sms: int, path: Path) -> Path:
    """The persistent-kernel task plan of ``g`` on ``sms`` multiprocessors, as text, to ``path``."""
    from tinygraph.tasks import task_plan
    if sms < 1:
        raise ValueError(f"--tasks must be >= 1 (multiprocessors), got {sms}")
    plan = sess._plan_for(g)
    tp = task_plan(plan, num_sms=sms)
    # what the CUDA backend runs as persistent kernels with TINYGRAPH_PERSISTENT=1 (its kernel
    # choices are pure functions of shapes and device caps: no GPU needed)
    from tinygraph.backends.cuda import persistent, select
    choices = select.plan_choices(plan.order, select.DeviceCaps(sm_count=sms), frozenset(persistent.DTYPES), {})
    segs = persistent.plan_segments(plan, choices, {n.storage.id for n in plan.order}, sms, enabled=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tp.dump() + "\n\n" + tp.dump_queues() + "\n\nCUDA with TINYGRAPH_PERSISTENT=1: "
                    + persistent.dump(plan, segs) + "\n")
    return path


def run(args) -> int:
    from tinygraph.viz import graph_summary, summary_line, write_graph_files

    g, stem, title, sess, before = _script_graph(args) if args.script else _model_graph(args)
    if before is g:
        before = None
    extra = _backend_extra(sess, g)
    files = write_graph_files(g, args.out, stem=args.stem or stem, formats=args.formats, title=title,
                              before=before, extra=extra)
    for fmt, p in files.items():
        print(f"{fmt:>4}: {p}" if p is not None else f"{fmt:>4}: skipped ({files.notes.get(fmt, '')})")
    if args.tasks is not None:
        print(f"tasks: {_write_tasks(sess, g, args.tasks, Path(args.out) / f'{args.stem or stem}.tasks.txt')}")
    if before is not None:
        print(f"viz: before the passes: {summary_line(graph_summary(before))}")
    print(f"viz: {summary_line(graph_summary(g, extra))}")
    if args.open:
        if files.get("html") is None:
            print("viz: --open: no HTML page written (add html to --formats)", file=sys.stderr)
        else:
            import webbrowser
            uri = files["html"].resolve().as_uri()
            if not webbrowser.open(uri):
                print(f"viz: --open: no web browser found here; open {uri}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from tinygraph.run import error_exit
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except Exception as e:   # the whole message (str), not run's one line
        return error_exit("python tools/viz.py", e, args.debug, str)


if __name__ == "__main__":
    sys.exit(main())
