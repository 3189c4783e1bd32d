"""The tables of ``tools/bench.py``: one row per model from its JSON record, Markdown formatting,
and the footnotes (errors, skipped contexts)."""
from __future__ import annotations

from typing import Any

import bench_configs as bc
from bench_util import _num, context_label, floor_tok_s


def _pick(section: Any, key: str) -> Any:
    """A number from a measurement record, or "err" / "skip" / "-"."""
    if not isinstance(section, dict):
        return "-"
    if "error" in section:
        return "err"
    if "skipped" in section:
        return "skip"
    v = section.get(key)
    return "-" if v is None else v


def _ratio(a: Any, b: Any) -> Any:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    return "err" if "err" in (a, b) else "-"


def summarize(m: dict[str, Any], contexts: list[int], bandwidth_Bps: float | None) -> dict[str, Any]:
    """One table row from a model's record: numbers, or "err" / "skip" / "-" markers."""
    if "error" in m and "tinygraph" not in m:   # the model never got built
        row = {k: "err" for k in ("decode_tok_s", "prefill_tok_s", "ttft_ms", "pct_floor", "hf_eager_tok_s",
                                  "hf_compile_tok_s", "x_eager", "x_compile", "match")}
        row.update(label=m.get("label", "?"), weights_gb=_weights_gb(m), floor_tok_s=None,
                   contexts={str(c): "err" for c in contexts})
        return row
    tg = m.get("tinygraph") or {}
    hf = m.get("hf") or {}
    load = tg.get("load")
    load_failed = not isinstance(load, dict) or "error" in load
    wb = None if load_failed else load.get("weight_bytes")
    row: dict[str, Any] = {"label": m.get("label", "?")}
    row["weights_gb"] = bc.gb(wb) if wb else _weights_gb(m)
    if load_failed:
        marker = "err" if isinstance(load, dict) else "-"
        row.update(decode_tok_s=marker, prefill_tok_s=marker, ttft_ms=marker,
                   contexts={str(c): marker for c in contexts})
    else:
        row["decode_tok_s"] = _pick(tg.get("decode"), "median_decode_tok_s")
        row["prefill_tok_s"] = _pick(tg.get("prefill"), "median_tok_s")
        row["ttft_ms"] = _pick(tg.get("decode"), "median_ttft_ms")
        ctxs = tg.get("contexts") or {}
        row["contexts"] = {str(c): _pick(ctxs.get(str(c)), "median_decode_tok_s") for c in contexts}
    fl = floor_tok_s(bandwidth_Bps, wb)
    row["floor_tok_s"] = fl
    d = row["decode_tok_s"]
    row["pct_floor"] = 100.0 * d / fl if isinstance(d, (int, float)) and fl else (d if isinstance(d, str) else "-")
    if hf.get("skipped"):
        row["hf_eager_tok_s"] = row["hf_compile_tok_s"] = "-"
    elif "error" in hf:
        row["hf_eager_tok_s"] = row["hf_compile_tok_s"] = "err"
    else:
        row["hf_eager_tok_s"] = _pick(hf.get("eager"), "median_decode_tok_s")
        row["hf_compile_tok_s"] = _pick(hf.get("compile"), "median_decode_tok_s")
    for key, col in (("x_eager", "hf_eager_tok_s"), ("x_compile", "hf_compile_tok_s")):
        row[key] = _ratio(row["decode_tok_s"], row[col])
    f32 = (m.get("match_fp32_ref") or {})
    parts = []
    for who in ("tinygraph", "hf_eager_fp16"):
        x = f32.get(who)
        parts.append(f"{x['first32']}/{x['n32']}" if isinstance(x, dict) else "-")
    row["match_fp32"] = " vs ".join(parts) if any(p != "-" for p in parts) else "-"
    mt = m.get("match")
    if isinstance(mt, dict) and "first10" in mt:
        row["match"] = f"{mt['first10']}/{mt['n10']} {mt['first32']}/{mt['n32']}"
    else:
        row["match"] = "err" if "err" in (row["decode_tok_s"], row["hf_eager_tok_s"]) else "-"
    return row


def _weights_gb(m: dict[str, Any]) -> float | None:
    p = m.get("params")
    return bc.gb(2 * p) if p else None


def format_table(rows: list[dict[str, Any]], contexts: list[int]) -> str:
    """A Markdown table, one row per model."""
    head = (["model", "weights GB", "decode tok/s", "prefill-512 tok/s", "TTFT ms"]
            + [context_label(c) for c in contexts]
            + ["% floor", "HF eager", "HF compile", "x vs eager", "x vs compile", "tokens match",
               "fp32 ref: tg vs HF"])
    body = []
    for r in rows:
        body.append([r["label"], _num(r.get("weights_gb"), "gb"), _num(r.get("decode_tok_s"), "rate"),
                     _num(r.get("prefill_tok_s"), "rate"), _num(r.get("ttft_ms"), "ms")]
                    + [_num(r.get("contexts", {}).get(str(c), "-"), "rate") for c in contexts]
                    + [_num(r.get("pct_floor"), "pct"), _num(r.get("hf_eager_tok_s"), "rate"),
                       _num(r.get("hf_compile_tok_s"), "rate"), _num(r.get("x_eager"), "x"),
                       _num(r.get("x_compile"), "x"), str(r.get("match", "-")), str(r.get("match_fp32", "-"))])
    return markdown_table(head, body)


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """Aligned Markdown: the first column left, the others right."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def notes_for(results: dict[str, Any]) -> list[str]:
    """Footnotes: skipped contexts and errors, one line each."""
    out = []
    for name, m in results.get("models", {}).items():
        if "error" in m and "tinygraph" not in m:
            out.append(f"{name}: {m['error']}")
        tg = m.get("tinygraph") or {}
        for key in ("load", "decode", "prefill"):
            if isinstance(tg.get(key), dict) and "error" in tg[key]:
                out.append(f"{name} tinygraph {key}: {tg[key]['error'][:200]}")
        for c, sec in (tg.get("contexts") or {}).items():
            if isinstance(sec, dict) and "skipped" in sec:
                out.append(f"{name} {context_label(int(c))}: skipped, {sec['skipped']}")
            elif isinstance(sec, dict) and "error" in sec:
                out.append(f"{name} {context_label(int(c))}: {sec['error'][:200]}")
        hf = m.get("hf") or {}
        for key in ("build", "eager", "prefill", "compile"):
            sec = hf.get(key)
            if isinstance(sec, dict) and "error" in sec:
                out.append(f"{name} HF {key}: {sec['error'][:200]}")
            if isinstance(sec, dict) and sec.get("fullgraph_error"):
                out.append(f"{name} HF compile fullgraph=True failed ({sec['fullgraph_error'][:160]}); "
                           f"fullgraph=False used")
            if isinstance(sec, dict) and sec.get("note"):
                out.append(f"{name} HF {key}: {sec['note']}")
    return out




# -- quantized and long-context tables (--quant, --llamacpp) ---------------------------------------
def weights_loaded(load: Any) -> int | None:
    """Device bytes of the loaded weights: ``memory_usage()["weights"]``, else ``weight_bytes``."""
    if not isinstance(load, dict) or "error" in load:
        return None
    mu = load.get("memory_usage")
    if isinstance(mu, dict) and isinstance(mu.get("weights"), (int, float)):
        return int(mu["weights"])
    return load.get("weight_bytes")


def _pct(rate: Any, floor: float | None) -> Any:
    return 100.0 * rate / floor if isinstance(rate, (int, float)) and floor else (rate if rate == "err" else "-")


def _types_text(load: Any) -> str:
    mu = load.get("memory_usage") if isinstance(load, dict) else None
    types = mu.get("weight_types") if isinstance(mu, dict) else None
    if not isinstance(types, dict) or not types:
        return "-"
    return " ".join(f"{k}:{v}" for k, v in sorted(types.items(), key=lambda kv: (-kv[1], kv[0])))


def _llama_ts(rec: Any, test: str) -> Any:
    if not isinstance(rec, dict):
        return "-"
    if "error" in rec:
        return "err"
    t = (rec.get("tests") or {}).get(test)
    return t["avg_ts"] if isinstance(t, dict) and "avg_ts" in t else "-"


def quant_row(m: dict[str, Any], qtype: str, bandwidth_Bps: float | None, settings: dict[str, Any]) -> dict[str, Any]:
    """One row of the ``qtype`` table: tinygraph (the F16 run for "F16", else ``m["quant"][qtype]``)
    beside llama-bench on the same GGUF; the floor counts the file's tensor bytes (tinygraph's
    loaded weight bytes when no file was written)."""
    row: dict[str, Any] = {"label": m.get("label", "?")}
    if qtype == "F16":
        tg = m.get("tinygraph")
    else:
        tg = ((m.get("quant") or {}).get(qtype) or {}).get("tinygraph")
    tg = tg if isinstance(tg, dict) else {}
    load = tg.get("load")
    failed = "error" in m and "tinygraph" not in m
    bad = "err" if failed or (isinstance(load, dict) and "error" in load) else None
    row["decode_tok_s"] = bad or _pick(tg.get("decode"), "median_decode_tok_s")
    row["prefill_tok_s"] = bad or _pick(tg.get("prefill"), "median_tok_s")
    ll = (m.get("llamacpp") or {}).get(qtype)
    if failed:
        ll = {"error": m.get("error")}
    row["llama_tg"] = _llama_ts(ll, f"tg{settings.get('new_tokens', 128)}")
    row["llama_pp"] = _llama_ts(ll, f"pp{settings.get('prefill_tokens', 512)}")
    row["x_tg"] = _ratio(row["decode_tok_s"], row["llama_tg"])
    row["x_pp"] = _ratio(row["prefill_tok_s"], row["llama_pp"])
    g = (m.get("gguf") or {}).get(qtype)
    row["file_bytes"] = g.get("tensor_bytes") if isinstance(g, dict) else None
    row["tg_bytes"] = weights_loaded(load)
    row["weight_types"] = _types_text(load)
    fl = floor_tok_s(bandwidth_Bps, row["file_bytes"] or row["tg_bytes"])
    row["floor_tok_s"] = fl
    row["pct_floor_tg"] = _pct(row["decode_tok_s"], fl)
    row["pct_floor_llama"] = _pct(row["llama_tg"], fl)
    return row


def format_quant_table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """Markdown table of one type: tinygraph beside llama.cpp, weight bytes, % of the floor."""
    n, p = settings.get("new_tokens", 128), settings.get("prefill_tokens", 512)
    head = ["model", "tinygraph decode", f"llama.cpp tg{n}", "x", f"tinygraph prefill-{p}", f"llama.cpp pp{p}",
            "x", "weights GB file / tinygraph", "tinygraph weight types", "% floor tinygraph / llama.cpp"]
    body = []
    for r in rows:
        gb_ = f"{_num(bc.gb(r['file_bytes']) if r['file_bytes'] else None, 'gb3')} / " \
              f"{_num(bc.gb(r['tg_bytes']) if r['tg_bytes'] else None, 'gb3')}"
        body.append([r["label"], _num(r["decode_tok_s"], "rate"), _num(r["llama_tg"], "rate"), _num(r["x_tg"], "x"),
                     _num(r["prefill_tok_s"], "rate"), _num(r["llama_pp"], "rate"), _num(r["x_pp"], "x"), gb_,
                     r["weight_types"], f"{_num(r['pct_floor_tg'], 'pct')} / {_num(r['pct_floor_llama'], 'pct')}"])
    return markdown_table(head, body)


def quant_title(qtype: str, models: dict[str, Any]) -> str:
    """The heading of a type's table: where tinygraph's weights came from."""
    if qtype == "F16":
        return ("F16: tinygraph loads the safetensors checkpoint, llama.cpp the same weights written as an "
                "F16 GGUF")
    sources = {((m.get("quant") or {}).get(qtype) or {}).get("source") for m in models.values()} - {None}
    return f"{qtype}: " + ("; ".join(sorted(sources)) if sources else "no runs")


def context_row(m: dict[str, Any], contexts: list[int], n_dec: int) -> list[Any]:
    """[label, then per depth: tinygraph decode tok/s, llama.cpp tg@depth, ratio]."""
    tg = m.get("tinygraph") if isinstance(m.get("tinygraph"), dict) else {}
    ctxs = tg.get("contexts") or {}
    deep = (m.get("llamacpp") or {}).get("depths")
    failed = "error" in m and "tinygraph" not in m
    out: list[Any] = [m.get("label", "?")]
    for d in contexts:
        a = "err" if failed else _pick(ctxs.get(str(d)), "median_decode_tok_s")
        b = "err" if failed else _llama_ts(deep, f"tg{n_dec}@d{d}")
        out += [a, b, _ratio(a, b)]
    return out


def format_context_table(results: dict[str, Any], contexts: list[int], n_dec: int) -> str:
    """Decode after ``d`` tokens of context: tinygraph beside ``llama-bench -d d -n n_dec``."""
    head = ["model"]
    for d in contexts:
        lab = context_label(d).removeprefix("decode")
        head += [f"tinygraph {lab}", f"llama.cpp {lab}", "x"]
    body = []
    for m in results.get("models", {}).values():
        r = context_row(m, contexts, n_dec)
        cells = [r[0]]
        for i in range(len(contexts)):
            a, b, x = r[1 + 3 * i: 4 + 3 * i]
            cells += [_num(a, "rate"), _num(b, "rate"), _num(x, "x")]
        body.append(cells)
    return markdown_table(head, body)


def quant_notes(results: dict[str, Any]) -> list[str]:
    """Footnotes of the --quant / --llamacpp part: failures of each step, one line each."""
    out = []
    for name, m in results.get("models", {}).items():
        for key in ("gguf", "llamacpp"):
            for qt, sec in (m.get(key) or {}).items():
                if isinstance(sec, dict) and "error" in sec:
                    what = "GGUF" if key == "gguf" else "llama-bench"
                    out.append(f"{name} {qt} {what}: {sec['error'][:200]}")
        for qt, rec in (m.get("quant") or {}).items():
            tg = rec.get("tinygraph") if isinstance(rec, dict) else None
            for key in ("load", "decode", "prefill"):
                sec = tg.get(key) if isinstance(tg, dict) else None
                if isinstance(sec, dict) and "error" in sec:
                    out.append(f"{name} {qt} tinygraph {key}: {sec['error'][:200]}")
    return out
