"""``tools/bench.py --batch 1,8,32,64``: aggregate decode throughput of N sequences decoded together,
tinygraph's continuous-batching engine beside ``llama-batched-bench`` on the same F16 GGUF.

llama-batched-bench (``tools/batched-bench/batched-bench.cpp``) prefills ``pl`` prompts of ``npp``
random tokens in one batch (T_PP), then runs ``ntg`` decode steps that each give every sequence one
token (T_TG), and prints S_TG = pl * ntg / T_TG: generated tokens over the time of the steps that
generated them, all ``pl`` sequences in every step.

tinygraph: ``models.engine.Engine`` (what ``model.generate_batch`` drives), driven from this thread
the way ``generate_batch`` drives it (``submit`` every prompt, ``step()`` until all are done), with
a clock read after each step. ``max_batch`` is the largest N (one engine serves every N, as
``generate_batch(..., max_batch=max N)`` would) and ``kv_memory`` holds every sequence's whole
context, so no sequence is preempted. The engine admits all N at once and prefills up to
``PREFILL_BATCH`` (8) prompts per step (each step also decodes the sequences already running):
sequence i gets its first token in step i // 8, and the N sequences decode together from then on
until the first one ends. So:

  decode tok/s  (S_TG's counterpart) tokens generated in the steps after the one that gave the last
                sequence its first token, up to and including the one that gave the first sequence
                its last token, over the time of those steps (read from the timeline: every step
                of that span gives all N sequences a token); at N = 1, (T - 1) / (last - first
                token time), as the batch-1 decode rate. No value when no step has all N decoding.
                Not N * (T - 1) / (end - last sequence's first token): by then the earlier
                sequences have made part of their tokens, and the batch shrinks towards the end.
  span tok/s    the tokens made after the last sequence's first token / (end - that token's time):
                the same span with the tokens really made in it, ramp-down included.
  e2e tok/s     N * T / (time from the submit of the batch to its last token), prefill included.
  TTFT          per sequence, from the submit of the batch to its first token: the median sequence
                and the last one (when every sequence has started; llama.cpp's T_PP is the analog).

Each N: fresh random prompts for every run (the engine's prefix cache would otherwise reuse the
previous run's blocks: ``kv_reused_tokens`` is recorded and is 0), ``Engine.warmup()`` once (it
builds and runs the step graphs), at least one warm-up run per N (the first N also until
--warmup-seconds of warm-up), then --runs timed runs; medians over the runs.
"""
from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import bench_configs as bc
from bench_llamacpp import _run
from bench_report import _pick, _ratio, markdown_table
from bench_tinygraph import free_device_bytes, load_tinygraph
from bench_util import _num, guarded, log, median, token_match

#: the issue's goals: tinygraph's decode tok/s over llama.cpp's S_TG at these N, per model
GOALS: dict[str, float] = {"smollm2": 2.0, "tinyllama": 1.5, "qwen3-8b": 1.5}
GOAL_SIZES = (8, 32, 64)
#: most sequences per N (the engine's default queue holds 1,024 waiting requests)
MAX_SIZE = 1024
TOOL = "llama-batched-bench"
#: llama-batched-bench's markdown columns -> the names its JSONL output uses
MD_COLUMNS = {"PP": "pp", "TG": "tg", "B": "pl", "N_KV": "n_kv", "T_PP s": "t_pp", "S_PP t/s": "speed_pp",
              "T_TG s": "t_tg", "S_TG t/s": "speed_tg", "T s": "t", "S t/s": "speed"}
DEFINITIONS = {
    "batch_decode_tok_s": "tinygraph: tokens made in the steps after the last sequence's first token up to the first "
                          "sequence's last token / their time = N*(new-N)/(t[new-1]-t[N-1]); llama.cpp: S_TG = "
                          "pl*ntg/T_TG of llama-batched-bench -npp prompt -ntg new -npl N",
    "batch_ttft_ms": "per sequence, from the submit of the batch to its first token (median sequence / last)",
    "batch_e2e_tok_s": "N * new tokens / (submit to the batch's last token)",
}


# -- arguments ---------------------------------------------------------------------------------
def parse_batch_sizes(text: str | None) -> list[int]:
    """``"1,8,32,64"`` -> [1, 8, 32, 64] (sorted, repeats dropped); "" or None -> [] (off).
    ValueError saying what is wrong: not integers, below 1, above :data:`MAX_SIZE`."""
    if not text or not text.strip():
        return []
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        sizes = []
    if not sizes:
        raise ValueError(f"takes comma-separated integers (numbers of sequences decoded together), e.g. "
                         f"1,8,32,64; got {text!r}")
    if sizes[0] < 1:
        raise ValueError(f"numbers of sequences must be >= 1, got {text!r}")
    if sizes[-1] > MAX_SIZE:
        raise ValueError(f"numbers of sequences must be <= {MAX_SIZE} (the engine's queue), got {text!r}")
    return sizes


# -- tinygraph ---------------------------------------------------------------------------------
def batch_metrics(step_s: Sequence[float], step_tokens: Sequence[int], first_step: Sequence[int],
                  last_step: Sequence[int]) -> dict[str, Any]:
    """The rates of one batched run from its timeline (see the module docstring): ``step_s[k]`` the
    time after step k (from the submit), ``step_tokens[k]`` the tokens step k made, and per sequence
    the step of its first and of its last token."""
    n = len(first_step)
    a, b = max(first_step), min(last_step)
    out: dict[str, Any] = {"steps": len(step_s), "ttft_s": [step_s[k] for k in first_step],
                           "last_first_step": a, "first_last_step": b,
                           "e2e_tok_s": sum(step_tokens) / step_s[-1]}
    out["ttft_median_ms"] = 1e3 * float(np.median(out["ttft_s"]))
    out["ttft_last_ms"] = 1e3 * step_s[a]
    if b > a:
        toks = sum(step_tokens[a + 1:b + 1])
        out.update(decode_steps=b - a, decode_tokens=toks, decode_s=step_s[b] - step_s[a],
                   decode_tok_s=toks / (step_s[b] - step_s[a]),
                   # every step of the span gave every sequence a token (no preemption, no stall)
                   full_batch=all(t == n for t in step_tokens[a + 1:b + 1]))
    else:
        out.update(decode_tok_s=None, full_batch=False,
                   note=f"no step had all {n} sequences decoding (the first finished in step {b}, the last "
                        f"started in step {a}): use fewer sequences than new tokens")
    span = sum(step_tokens[a + 1:])
    out["span_tok_s"] = span / (step_s[-1] - step_s[a]) if span else None
    return out


def run_batch(engine: Any, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """Submit ``prompts`` (greedy, end-of-sequence ignored) and step the engine until all are done,
    reading the clock after every step; the run's record (:func:`batch_metrics` plus the timeline)."""
    from tinygraph.models.engine import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, seed=0, eos=frozenset())
    reused = engine.pool.reused_tokens
    n = len(prompts)
    t0 = time.perf_counter()
    reqs = [engine.submit(p, params) for p in prompts]
    step_s: list[float] = []
    step_tokens: list[int] = []
    counts = [0] * n
    first: list[int | None] = [None] * n
    last: list[int | None] = [None] * n
    limit = 4 * (n * (len(prompts[0]) + new_tokens) + 64)   # far past any schedule: the engine is stuck
    try:
        while not all(r.done for r in reqs):
            engine.step()
            t = time.perf_counter() - t0
            k = len(step_s)
            made = 0
            for i, r in enumerate(reqs):
                c = len(r.tokens)
                if c != counts[i]:
                    made += c - counts[i]
                    counts[i] = c
                    if first[i] is None:
                        first[i] = k
                if r.done and last[i] is None:
                    last[i] = k
            step_s.append(t)
            step_tokens.append(made)
            if k > limit:
                raise RuntimeError(f"the engine ran {k} steps for {n} sequences of {new_tokens} tokens")
    except BaseException:
        for r in reqs:                       # free what they hold: the next N runs on the same engine
            r.cancel()
        engine.reap()
        raise
    for r in reqs:
        if r.error is not None:
            raise r.error
    short = [len(r.tokens) for r in reqs if len(r.tokens) != new_tokens]
    if short:
        raise RuntimeError(f"{len(short)} of {n} sequences ended early ({short[:4]} tokens of {new_tokens})")
    rec = batch_metrics(step_s, step_tokens, first, last)          # type: ignore[arg-type]
    rec.update(n=n, step_s=step_s, step_tokens=step_tokens, first_step=first, last_step=last,
               kv_reused_tokens=engine.pool.reused_tokens - reused, tokens0=list(reqs[0].tokens))
    return rec


def measure_size(engine: Any, n: int, args, vocab: int, rng: np.random.Generator, warm_seconds: float) -> dict:
    """One N: warm-up runs (at least one, and until ``warm_seconds`` of them), then --runs timed runs."""
    P, T = args.prompt_tokens, args.new_tokens
    warm, runs, warm_s = [], [], 0.0
    while len(runs) < args.runs:
        prompts = rng.integers(0, vocab, (n, P)).tolist()     # fresh: no prefix-cache hits
        r = run_batch(engine, prompts, T)
        if not warm or warm_s < warm_seconds:
            warm_s += r["step_s"][-1]
            # the rates only: a first N can take tens of warm-up runs, each with its whole timeline
            warm.append({k: r.get(k) for k in ("decode_tok_s", "e2e_tok_s", "ttft_last_ms", "steps", "full_batch")})
        else:
            runs.append(r)
    out: dict[str, Any] = {"n": n, "prompt_tokens": P, "new_tokens": T, "warmup": warm, "runs": runs,
                           "prompt0": prompts[0]}
    for key in ("decode_tok_s", "span_tok_s", "e2e_tok_s", "ttft_median_ms", "ttft_last_ms"):
        out[key] = [r[key] for r in runs]
        out[f"median_{key}"] = median(out[key])
    out["full_batch"] = all(r["full_batch"] for r in runs)
    if runs and runs[0].get("note"):
        out["note"] = runs[0]["note"]
    log(f"  tinygraph batch N={n}: decode {out['median_decode_tok_s'] or 0:,.1f} tok/s, e2e "
        f"{out['median_e2e_tok_s']:,.1f} tok/s, TTFT {out['median_ttft_median_ms']:.1f} / "
        f"{out['median_ttft_last_ms']:.1f} ms (median / last sequence; median of {len(runs)})")
    return out


def kv_memory_for(model: Any, n: int, tokens: int, block_size: int) -> int:
    """Bytes of a KV pool that holds ``n`` sequences of ``tokens`` positions each (whole blocks)."""
    from tinygraph.models.paged import token_bytes

    return n * math.ceil((tokens + 1) / block_size) * block_size * token_bytes(model)


def bench_batch_tinygraph(ckpt: Path, hf: dict[str, Any], args) -> dict[str, Any]:
    """Load the checkpoint (max_context = prompt + new tokens), build one engine for the largest N,
    warm it up, and measure every N of --batch; a failing N is recorded and the next one runs."""
    from tinygraph.models.engine import Engine
    from tinygraph.models.paged import token_bytes

    k = bc.dims(hf)
    P, T, sizes = args.prompt_tokens, args.new_tokens, args.batch
    if P + T > k["max_pos"]:
        raise ValueError(f"prompt + new tokens ({P + T}) exceed the model's {k['max_pos']} positions")
    rec: dict[str, Any] = {}
    model, rec["load"] = load_tinygraph(ckpt, args, P + T)
    engine = None
    try:
        block = 16
        kv = kv_memory_for(model, sizes[-1], P + T, block)
        free0 = free_device_bytes(args.backend)
        engine = Engine(model, max_batch=sizes[-1], kv_memory=kv, block_size=block)
        t = time.perf_counter()
        graphs = engine.warmup()
        rec["engine"] = {"max_batch": sizes[-1], "kv_memory": kv, "kv_blocks": engine.pool.num_blocks,
                         "block_size": block, "token_bytes": token_bytes(model), "pool_bytes": engine.pool.nbytes,
                         "warmup_graphs": graphs, "warmup_s": time.perf_counter() - t,
                         "device_free_before": free0, "device_free_after_warmup": free_device_bytes(args.backend)}
        log(f"  tinygraph batch: engine for N <= {sizes[-1]}, KV pool {engine.pool.nbytes / 1e9:.3f} GB, "
            f"{graphs} step graphs warmed in {rec['engine']['warmup_s']:.1f} s")
        rng = np.random.default_rng(args.seed + 7919)
        rec["sizes"] = {}
        for i, n in enumerate(sizes):
            guarded(rec["sizes"], str(n), lambda n=n, i=i: measure_size(
                engine, n, args, k["vocab"], rng, args.warmup_seconds if i == 0 else 0.0))
        engine.close()
        engine = None
        # the engine promises generate()'s tokens; fp16 batched and batch-1 kernels may round apart
        last = rec["sizes"].get(str(sizes[-1]))
        if isinstance(last, dict) and last.get("runs"):
            solo = model.generate(last["prompt0"], T, temperature=0, ignore_eos=True)[P:]
            rec["match_generate"] = token_match(last["runs"][-1]["tokens0"], solo)
    finally:
        if engine is not None:
            engine.close()
        model.close()
        model = None                                  # drop the last reference before collecting
        gc.collect()
    return rec


# -- llama.cpp ---------------------------------------------------------------------------------
def find_batched_bench(root: str | os.PathLike) -> Path | None:
    """``llama-batched-bench`` in ``root`` or ``root/bin`` (where llama-bench is), or None."""
    for cand in (Path(root) / TOOL, Path(root) / "bin" / TOOL):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def batched_bench_command(tool: Path, gguf: Path, sizes: list[int], prompt: int, gen: int) -> list[str]:
    """``llama-batched-bench -m F -c C -npp P -ntg T -npl 1,8,... -ngl 99 -fa on --output-format jsonl``.
    ``-c``: it silently skips an N whose N * (P + T) exceeds its context, which defaults to the
    model's trained one (TinyLlama's 2,048 would drop N >= 16)."""
    ctx = max(sizes) * (prompt + gen)
    return [str(tool), "-m", str(gguf), "-c", str(ctx), "-npp", str(prompt), "-ntg", str(gen),
            "-npl", ",".join(map(str, sizes)), "-ngl", "99", "-fa", "on", "--output-format", "jsonl"]


def parse_batched_bench(text: str) -> dict[str, dict[str, Any]]:
    """llama-batched-bench's stdout, JSONL (``--output-format jsonl``) or its markdown table ->
    {str(pl): {"pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed", ...}}.
    Other lines (logs) are ignored; ValueError when there is no result or a size repeats."""
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "speed_tg" in rec:
                rows.append(rec)
    if not rows:
        rows = _parse_markdown(text)
    if not rows:
        raise ValueError(f"no {TOOL} results in its output: {text[:300]!r}")
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = str(int(r["pl"]))
        if key in out:
            raise ValueError(f"{TOOL} printed two results for {key} sequences (one -npp and -ntg expected)")
        out[key] = r
    return out


def _parse_markdown(text: str) -> list[dict[str, Any]]:
    """The rows of the ``| PP | TG | B | N_KV | T_PP s | ... |`` table, by its header's column names."""
    cols: list[str] | None = None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "S_TG t/s" in cells:
            cols = [MD_COLUMNS.get(c, c) for c in cells]
        elif cols and len(cells) == len(cols) and not set("".join(cells)) <= set("-: "):
            try:
                rows.append({c: (float(v) if "." in v else int(v)) for c, v in zip(cols, cells)})
            except ValueError:
                continue
    return rows


def bench_batch_llamacpp(root: str, gguf: Path, args) -> dict[str, Any]:
    """llama-batched-bench on ``gguf`` --runs times (one process each: it runs every N once);
    S_TG and T_PP per N, their medians, and a note for each N it printed nothing for."""
    tool = find_batched_bench(root)
    if tool is None:
        return {"skipped": f"no executable {TOOL} in {root} or {Path(root) / 'bin'}"}
    sizes = args.batch
    cmd = batched_bench_command(tool, gguf, sizes, args.prompt_tokens, args.new_tokens)
    rec: dict[str, Any] = {"command": cmd, "runs": [], "sizes": {}}
    t = time.perf_counter()
    for _ in range(args.runs):
        rec["runs"].append(parse_batched_bench(_run(cmd, args.llamacpp_timeout).stdout))
    rec["seconds"] = time.perf_counter() - t
    for n in map(str, sizes):
        got = [r[n] for r in rec["runs"] if n in r]
        if not got:
            rec["sizes"][n] = {"missing": f"{TOOL} printed no row for {n} sequences (it skips a size whose "
                                          f"N * (npp + ntg) exceeds its context -c)"}
            continue
        s = {"speed_tg": [g["speed_tg"] for g in got], "t_pp_ms": [1e3 * g["t_pp"] for g in got],
             "speed_pp": [g["speed_pp"] for g in got], "n_kv": got[0].get("n_kv")}
        s.update(median_speed_tg=median(s["speed_tg"]), median_t_pp_ms=median(s["t_pp_ms"]))
        rec["sizes"][n] = s
    log("  llama-batched-bench S_TG: " + ", ".join(
        f"N={n} {v['median_speed_tg']:,.1f}" for n, v in rec["sizes"].items() if "median_speed_tg" in v))
    return rec


# -- one model (called by bench.py) -------------------------------------------------------------
def batch_tinygraph(m: dict[str, Any], ckpt: Path, hf: dict[str, Any], args) -> None:
    """``m["batch"]["tinygraph"]``: :func:`bench_batch_tinygraph`, or the error it raised."""
    guarded(m.setdefault("batch", {}), "tinygraph", lambda: bench_batch_tinygraph(ckpt, hf, args))


def batch_only(name: str, hf: dict[str, Any], ckpt: Path, args, m: dict[str, Any], gguf_dir: Path) -> None:
    """``--batch-only``: tinygraph's batch runs, then (with --llamacpp) the F16 GGUF and
    llama-batched-bench on it; no HF, batch-1 or --quant runs."""
    from bench_quant import _f16_gguf

    m["hf"] = m["tinygraph"] = {"skipped": "--batch-only"}
    batch_tinygraph(m, ckpt, hf, args)
    if args.llamacpp:
        m["gguf"] = {}
        guarded(m["gguf"], "F16", lambda: _f16_gguf(name, hf, ckpt, args, gguf_dir))
        batch_llamacpp(m, args)


def batch_llamacpp(m: dict[str, Any], args) -> None:
    """llama-batched-bench on the model's F16 GGUF (``m["gguf"]["F16"]``, written by bench_quant)."""
    f16 = (m.get("gguf") or {}).get("F16")
    batch = m.setdefault("batch", {})
    if not isinstance(f16, dict) or "path" not in f16:
        batch["llamacpp"] = {"skipped": "no F16 GGUF (its writing failed)"}
        return
    guarded(batch, "llamacpp", lambda: bench_batch_llamacpp(args.llamacpp, Path(f16["path"]), args))


# -- tables ------------------------------------------------------------------------------------
def batch_sizes_of(results: dict[str, Any]) -> list[int]:
    """Every N any model of ``results`` was measured at (by either engine)."""
    sizes: set[int] = set()
    for m in results.get("models", {}).values():
        b = m.get("batch") if isinstance(m.get("batch"), dict) else {}
        for part in (b.get("tinygraph"), b.get("llamacpp")):
            if isinstance(part, dict) and isinstance(part.get("sizes"), dict):
                sizes.update(int(n) for n in part["sizes"])
    return sorted(sizes)


def _size_value(part: Any, n: int, key: str) -> Any:
    """A median of one N from a tinygraph / llama.cpp batch record, or "err" / "skip" / "-"."""
    sizes = _pick(part, "sizes")
    if not isinstance(sizes, dict):
        return sizes if sizes in ("err", "skip") else "-"
    return _pick(sizes.get(str(n)), key)


def batch_row(name: str, m: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """One model's numbers: per N tinygraph decode, llama.cpp S_TG, their ratio, TTFT and T_PP."""
    b = m.get("batch") if isinstance(m.get("batch"), dict) else {}
    failed = "error" in m and "tinygraph" not in m
    tg, ll = ({"error": 1}, {"error": 1}) if failed else (b.get("tinygraph"), b.get("llamacpp"))
    row: dict[str, Any] = {"label": m.get("label", "?"), "sizes": {}}
    for n in sizes:
        d, s = _size_value(tg, n, "median_decode_tok_s"), _size_value(ll, n, "median_speed_tg")
        row["sizes"][str(n)] = {"tinygraph": d, "llamacpp": s, "x": _ratio(d, s),
                                "ttft_median_ms": _size_value(tg, n, "median_ttft_median_ms"),
                                "ttft_last_ms": _size_value(tg, n, "median_ttft_last_ms"),
                                "llama_t_pp_ms": _size_value(ll, n, "median_t_pp_ms")}
    goal = GOALS.get(name)
    xs = [row["sizes"][str(n)]["x"] for n in GOAL_SIZES if str(n) in row["sizes"]]
    if goal is None or not xs:
        row["goal"] = "-"
    elif all(isinstance(x, float) for x in xs):
        row["goal"] = f">= {goal:g}x " + ("✓" if all(x >= goal for x in xs) else "✗")
    else:
        row["goal"] = f">= {goal:g}x ?"
    return row


def format_batch_tables(results: dict[str, Any]) -> tuple[str, str]:
    """The decode table (tinygraph, llama.cpp S_TG and the ratio per N, the issue's goal) and the
    TTFT table (tinygraph's median and last sequence, llama.cpp's T_PP per N)."""
    sizes = batch_sizes_of(results)
    rows = [batch_row(name, m, sizes) for name, m in results.get("models", {}).items()]
    head = ["model"]
    thead = ["model"]
    for n in sizes:
        head += [f"tinygraph N={n}", f"llama.cpp N={n}", "x"]
        thead += [f"TTFT ms N={n} (median / last)", f"llama.cpp T_PP ms N={n}"]
    head.append("goal at N=" + "/".join(map(str, GOAL_SIZES)))
    body, tbody = [], []
    for r in rows:
        cells, tcells = [r["label"]], [r["label"]]
        for n in sizes:
            c = r["sizes"][str(n)]
            cells += [_num(c["tinygraph"], "rate"), _num(c["llamacpp"], "rate"), _num(c["x"], "x")]
            tcells += [f"{_num(c['ttft_median_ms'], 'ms')} / {_num(c['ttft_last_ms'], 'ms')}",
                       _num(c["llama_t_pp_ms"], "ms")]
        body.append(cells + [r["goal"]])
        tbody.append(tcells)
    return markdown_table(head, body), markdown_table(thead, tbody)


def batch_title(results: dict[str, Any]) -> str:
    s = results.get("settings") or {}
    p, t = s.get("prompt_tokens", 32), s.get("new_tokens", 128)
    return (f"Batched decode tok/s: N sequences of {p}-token random prompts, {t} greedy new tokens each "
            f"(tinygraph's engine; llama.cpp: llama-batched-bench -npp {p} -ntg {t}, S_TG)")


def batch_notes(results: dict[str, Any]) -> list[str]:
    """Footnotes: failed or skipped parts, N without a full-batch span, N llama.cpp did not print."""
    out = []
    for name, m in results.get("models", {}).items():
        b = m.get("batch") if isinstance(m.get("batch"), dict) else {}
        for who in ("tinygraph", "llamacpp"):
            part = b.get(who)
            if not isinstance(part, dict):
                continue
            if "error" in part or "skipped" in part:
                out.append(f"{name} batch {who}: {str(part.get('error') or part.get('skipped'))[:200]}")
            for n, s in (part.get("sizes") or {}).items():
                for key in ("error", "missing", "note"):
                    if isinstance(s, dict) and s.get(key):
                        out.append(f"{name} batch {who} N={n}: {str(s[key])[:200]}")
                if who == "tinygraph" and isinstance(s, dict) and s.get("runs") and not s.get("full_batch"):
                    out.append(f"{name} batch tinygraph N={n}: some decode steps did not serve every sequence")
        mg = (b.get("tinygraph") or {}).get("match_generate") if isinstance(b.get("tinygraph"), dict) else None
        if isinstance(mg, dict) and mg.get("common_prefix") != mg.get("compared"):
            out.append(f"{name} batch: sequence 0 follows generate()'s greedy tokens for {mg['common_prefix']} "
                       f"of {mg['compared']} (fp16 batched vs batch-1 kernels)")
    return out
