#!/usr/bin/env python3
"""Side-by-side benchmark: tinygraph against HF transformers on random-weight models at real sizes.

For each model (published configs in ``tools/bench_configs.py``; no downloads) it builds a
float16 model with random weights (``AutoModelForCausalLM.from_config``, weights re-drawn:
matrices/embeddings/biases ~ N(0, 0.04), norm scales ~ 1 + N(0, 0.04)), saves it with
``save_pretrained`` into a temporary directory, and measures, in the same process:

  tinygraph  (``load_model(dir, dtype="float16", backend=...)``)
    decode tok/s      32-token prompt, 128 new tokens, greedy; (new - 1) / (time of the last
                      token - time of the first), median over --runs (3) runs after --warmup (2)
                      warm-up runs and at least --warmup-seconds (2) of warm-up decoding
    TTFT              time to the first new token of the same runs (prefill + first token)
    prefill tok/s     one 512-token forward pass (to the argmax of its last position), median
    decode@2k, @8k    a long prompt (context - 32 tokens, prefilled in chunks of
                      --prefill-chunk), then 32 decode steps; median over --runs runs from the
                      same position. Skipped, with the reason, past the model's max positions or
                      the free device memory.
    % of floor        decode tok/s over the HBM floor: copy bandwidth / model.weight_bytes,
                      where the bandwidth comes from a >= 1 GiB device-to-device copy through
                      tinygraph's driver (cuMemcpyDtoDAsync, CUDA events), bytes read + written.
  HF transformers (when torch + transformers import; fp16 on the GPU, same weights)
    eager             ``generate(do_sample=False, max_new_tokens=128, min_new_tokens=128)``;
                      decode tok/s = (new - 1) / (total - TTFT), TTFT = median time of
                      ``generate(max_new_tokens=1)``; also end-to-end new / total
    compile           static cache + torch.compile the way current transformers does it:
                      ``generation_config.cache_implementation = "static"`` with
                      ``compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")``
                      (generate then compiles the decoding forward itself), warmed up twice;
                      ``--hf-compile manual`` instead sets ``model.forward = torch.compile(
                      model.forward, mode="reduce-overhead", fullgraph=True)``. If fullgraph
                      compilation fails, the error is recorded and fullgraph=False is tried.
                      Decode tok/s uses the eager TTFT (the prefill is not compiled).
    prefill           eager forward of the 512-token prompt (``logits_to_keep=1``), median
  correctness        tinygraph's greedy tokens against HF eager's, how many of the first 10
                      and 32 agree (fp16 rounding may make them part late); and both against
                      HF's greedy tokens in float32 (the model upcast, TF32 off; column
                      "fp32 ref: tg vs HF"), which says which fp16 run is nearer the exact result.

One table goes to stdout (rows = models); progress goes to stderr; everything (device, driver
and CUDA versions, the exact command, configs, every raw sample, medians, errors) goes to
``--json`` (default ``bench/results/<device-slug>-<date>.json``). An exception in one model or
mode is recorded, shown as "err" in the table, and the run goes on.

Why std 0.04 and not HF's 0.02: with 0.02 the tied-embedding models (SmolLM2-135M,
Qwen3-0.6B) greedily repeat one token forever (the token's own embedding dominates its logits);
with 0.04 every model's greedy tokens vary (32 distinct of 32 for SmolLM2, Qwen3-0.6B and
TinyLlama on the CPU), logits have a std of 1-2, and the residual stream stays far inside
float16's range (max |h| ~ 200 after 6 layers of Qwen3-8B). ``--std`` changes it.

Usage (from the repo root):

    python tools/bench.py                                         # all five, ~10+ min on an H100
    python tools/bench.py --models gpt2,smollm2 --quick           # ~2 min
    python tools/bench.py --tiny --backend numpy --hf-device cpu  # dry run without a GPU
    python tools/bench.py --merge a.json b.json --json all.json   # one table from split runs

Where one command may run at most 10 minutes (the lent GPUs), split the full run in two
(``--models gpt2,smollm2,qwen3-0.6b`` took 3.6 min on an H100; then ``--models
tinyllama,qwen3-8b``) and ``--merge`` the two JSON files; bench/README.md has the commands.

Dry runs: ``--tiny`` shrinks every config (2 layers, hidden <= 96, vocab 512; head layout and max
positions kept); ``--backend numpy`` runs tinygraph on the NumPy reference backend (the floor is
then a host memcpy); ``--hf-device cpu`` runs HF on the CPU. Without torch the weights are
written with NumPy (same recipe) and the HF columns are skipped.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_configs as bc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
_T0 = time.perf_counter()


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def error_record(e: BaseException) -> dict[str, str]:
    msg = f"{type(e).__name__}: {e}"
    return {"error": msg[:4000], "traceback": traceback.format_exc()[-6000:]}


def guarded(rec: dict, key: str, fn: Callable[[], Any]) -> Any:
    """``rec[key] = fn()``; an exception is recorded as ``rec[key] = {"error": ...}`` instead."""
    try:
        out = fn()
        rec[key] = out
        return out
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 -- a failing mode must not end the run
        rec[key] = error_record(e)
        log(f"  {key}: ERROR {rec[key]['error'][:300]}")
        return None


def slugify(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "device"


def context_label(n: int) -> str:
    return f"decode@{n // 1024}k" if n % 1024 == 0 else f"decode@{n}"


def floor_tok_s(bandwidth_Bps: float | None, weight_bytes: int | None) -> float | None:
    """Tokens/s if every decode step only streamed the weights once at the copy bandwidth."""
    if not bandwidth_Bps or not weight_bytes:
        return None
    return bandwidth_Bps / weight_bytes


def copy_bandwidth(nbytes: int, seconds: float) -> float:
    """Bytes/s of a copy of ``nbytes``: bytes read plus bytes written over the time."""
    return 2.0 * nbytes / seconds


def token_match(a: list[int] | None, b: list[int] | None, ns=(10, 32)) -> dict[str, Any] | None:
    """How many of the first n tokens agree (position by position), and the common prefix."""
    if not a or not b:
        return None
    out: dict[str, Any] = {}
    for n in ns:
        m = min(n, len(a), len(b))
        out[f"first{n}"] = sum(int(x == y) for x, y in zip(a[:m], b[:m]))
        out[f"n{n}"] = m
    prefix = 0
    for x, y in zip(a, b):
        if x != y:
            break
        prefix += 1
    out["common_prefix"] = prefix
    out["compared"] = min(len(a), len(b))
    out["equal_all"] = sum(int(x == y) for x, y in zip(a, b))
    return out


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------
def _num(v: Any, kind: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "gb":
        return f"{v:.2f}"
    if kind == "rate":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if kind == "ms":
        return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"
    if kind == "pct":
        return f"{v:.1f}%"
    if kind == "x":
        return f"{v:.2f}x"
    return str(v)


def summarize(m: dict[str, Any], contexts: list[int], bandwidth_Bps: float | None) -> dict[str, Any]:
    """One table row from a model's record: numbers, or "err" / "skip" / "-" markers."""
    def pick(section: Any, key: str) -> Any:
        if not isinstance(section, dict):
            return "-"
        if "error" in section:
            return "err"
        if "skipped" in section:
            return "skip"
        v = section.get(key)
        return "-" if v is None else v

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
        row["decode_tok_s"] = pick(tg.get("decode"), "median_decode_tok_s")
        row["prefill_tok_s"] = pick(tg.get("prefill"), "median_tok_s")
        row["ttft_ms"] = pick(tg.get("decode"), "median_ttft_ms")
        ctxs = tg.get("contexts") or {}
        row["contexts"] = {str(c): pick(ctxs.get(str(c)), "median_decode_tok_s") for c in contexts}
    fl = floor_tok_s(bandwidth_Bps, wb)
    row["floor_tok_s"] = fl
    d = row["decode_tok_s"]
    row["pct_floor"] = 100.0 * d / fl if isinstance(d, (int, float)) and fl else (d if isinstance(d, str) else "-")
    if hf.get("skipped"):
        row["hf_eager_tok_s"] = row["hf_compile_tok_s"] = "-"
    elif "error" in hf:
        row["hf_eager_tok_s"] = row["hf_compile_tok_s"] = "err"
    else:
        row["hf_eager_tok_s"] = pick(hf.get("eager"), "median_decode_tok_s")
        row["hf_compile_tok_s"] = pick(hf.get("compile"), "median_decode_tok_s")
    for key, col in (("x_eager", "hf_eager_tok_s"), ("x_compile", "hf_compile_tok_s")):
        a, b = row["decode_tok_s"], row[col]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            row[key] = a / b
        else:
            row[key] = "err" if "err" in (a, b) else "-"
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


# --------------------------------------------------------------------------------------------
# device facts and the HBM floor
# --------------------------------------------------------------------------------------------
def device_info(backend: str) -> dict[str, Any]:
    info: dict[str, Any] = {"backend": backend, "host": platform.node(), "platform": platform.platform(),
                            "python": sys.version.split()[0], "cpu_count": os.cpu_count()}
    if backend == "cuda":
        from tinygraph.backends.cuda import driver
        dev = driver.get_device(0)
        info.update(name=dev.name, arch=dev.arch, sm_count=dev.sm_count, total_memory=dev.total_memory)
        v = int(driver.check(driver._drv().cuDriverGetVersion(), "cuDriverGetVersion"))
        info["cuda_driver_api_version"] = f"{v // 1000}.{(v % 1000) // 10}"
        try:
            from tinygraph.backends.cuda.compiler import nvrtc_version
            info["nvrtc_version"] = ".".join(map(str, nvrtc_version()))
        except Exception as e:  # noqa: BLE001
            info["nvrtc_version"] = f"unknown ({e})"
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                "clocks.max.mem,power.limit", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            if q.stdout.strip():
                info["driver_version"] = q.stdout.strip().split(",")[1].strip()
        except Exception as e:  # noqa: BLE001
            info["nvidia_smi"] = f"unavailable ({e})"
    else:
        info["name"] = f"CPU ({platform.processor() or platform.machine()}), tinygraph {backend} backend"
    for mod in ("tinygraph", "numpy", "torch", "transformers", "cuda.bindings"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info.setdefault("versions", {})[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info.setdefault("versions", {})[mod] = None
    try:
        import torch
        info["torch_cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001
        pass
    return info


def measure_floor(backend: str, nbytes: int, reps: int) -> dict[str, Any]:
    """Device-to-device copy bandwidth (bytes read + written) through tinygraph's driver."""
    rec: dict[str, Any] = {"bytes_per_copy": nbytes, "reps": reps}
    if backend != "cuda":
        n = min(nbytes, 256 << 20)
        src = np.full(n, 0x5A, np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        samples = []
        for _ in range(reps):
            t = time.perf_counter()
            np.copyto(dst, src)
            samples.append((time.perf_counter() - t) * 1e3)
        rec.update(method="host numpy copyto (no GPU)", bytes_per_copy=n)
    else:
        from tinygraph.backends.cuda import driver
        dev = driver.get_device(0)
        src = driver.DeviceBuffer(nbytes, "bench copy source", dev)
        dst = driver.DeviceBuffer(nbytes, "bench copy destination", dev)
        try:
            driver.memset_d8(src.ptr, 0x5A, nbytes)      # not zeros
            s = driver.Stream()
            e0, e1 = driver.Event(), driver.Event()
            for _ in range(3):                          # warm-up
                driver.memcpy_dtod(dst.ptr, src.ptr, nbytes, s)
            s.synchronize("copy warm-up")
            samples = []
            for _ in range(reps):
                e0.record(s)
                driver.memcpy_dtod(dst.ptr, src.ptr, nbytes, s)
                e1.record(s)
                e1.synchronize()
                samples.append(driver.Event.elapsed_ms(e0, e1))
            s.destroy()
        finally:
            src.free()
            dst.free()
        rec["method"] = "tinygraph driver memcpy_dtod (cuMemcpyDtoDAsync), CUDA events"
    rec["samples_ms"] = samples
    rec["median_ms"] = median(samples)
    rec["bandwidth_Bps"] = copy_bandwidth(rec["bytes_per_copy"], rec["median_ms"] / 1e3)
    rec["bandwidth_GBps"] = rec["bandwidth_Bps"] / 1e9
    return rec


def torch_copy_check(nbytes: int, reps: int) -> dict[str, Any] | None:
    """The same copy through PyTorch, as a cross-check of the floor."""
    import torch
    if not torch.cuda.is_available():
        return None
    a = torch.full((nbytes,), 0x5A, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    samples = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        samples.append(e0.elapsed_time(e1))
    del a, b
    torch.cuda.empty_cache()
    med = median(samples)
    return {"samples_ms": samples, "median_ms": med, "bandwidth_GBps": copy_bandwidth(nbytes, med / 1e3) / 1e9}


# --------------------------------------------------------------------------------------------
# building the random-weight checkpoint
# --------------------------------------------------------------------------------------------
def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def hf_config(hf: dict[str, Any]):
    import transformers
    fields = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
    return transformers.AutoConfig.for_model(hf["model_type"], **fields)


def build_torch_model(hf: dict[str, Any], device: str, seed: int, std: float):
    """An fp16 HF model from the config, built on ``device``, weights re-drawn."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(hf)
    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
        except TypeError:  # transformers < 4.56
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    model = model.to(device=device, dtype=torch.float16).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():       # tied tensors appear once
            p.normal_(1.0 if bc.is_norm_param(name) else 0.0, std, generator=g)
    return model


def save_torch_model(model, out_dir: Path) -> None:
    try:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    except TypeError:
        model.save_pretrained(str(out_dir))


def prepare_hf_for_generate(model) -> None:
    gc_ = model.generation_config
    gc_.eos_token_id = None      # random weights: no early stop (tinygraph does not stop either)
    gc_.pad_token_id = 0
    gc_.do_sample = False
    for k in ("temperature", "top_p", "top_k"):
        if hasattr(gc_, k):
            setattr(gc_, k, None)


# --------------------------------------------------------------------------------------------
# tinygraph measurements
# --------------------------------------------------------------------------------------------
def plan_contexts(hf: dict[str, Any], args, free_bytes: int | None, weight_bytes_est: int) -> dict[int, str | None]:
    """context length -> None (run it) or the reason to skip it."""
    k = bc.dims(hf)
    out: dict[int, str | None] = {}
    for L in args.contexts:
        if L > k["max_pos"]:
            out[L] = f"{L} exceeds the model's max_position_embeddings {k['max_pos']}"
        elif L <= args.context_decode_tokens:
            out[L] = f"{L} is not longer than the {args.context_decode_tokens} decode tokens"
        else:
            out[L] = None
    if free_bytes is not None:
        for L in sorted((c for c, why in out.items() if why is None), reverse=True):
            need = tinygraph_memory_estimate(hf, L, args.prefill_chunk, weight_bytes_est)
            if need > free_bytes:
                out[L] = f"needs ~{need / 1e9:.1f} GB of device memory, {free_bytes / 1e9:.1f} GB free"
    return out


def tinygraph_memory_estimate(hf: dict[str, Any], ctx: int, chunk: int, weight_bytes: int) -> int:
    """Weights + KV cache for ``ctx`` + attention scores/probs of one prefill chunk + 2 GiB slack."""
    k = bc.dims(hf)
    kv = bc.kv_bytes_per_token(hf) * ctx
    scores = 2 * k["heads"] * min(chunk, ctx) * ctx * 4
    acts = 16 * min(chunk, ctx) * max(k["inter"], k["hidden"]) * 4 + min(chunk, ctx) * k["vocab"] * 4
    return weight_bytes + kv + scores + acts + 2 * GIB


def bench_tinygraph(ckpt: Path, hf: dict[str, Any], args, prompts: dict[str, list[int]], rec: dict) -> list[int] | None:
    from tinygraph.models import load_model

    k = bc.dims(hf)
    free = None
    if args.backend == "cuda":
        from tinygraph.backends.cuda import driver
        driver.get_device(0)
        free = driver.mem_get_info()[0]
    ctx_plan = plan_contexts(hf, args, free, 2 * bc.param_count(hf))
    base_need = max(args.prompt_tokens + args.new_tokens, args.prefill_tokens)
    if base_need > k["max_pos"]:
        raise ValueError(f"prompt + new tokens ({base_need}) exceed the model's {k['max_pos']} positions")
    max_context = max([base_need] + [L for L, why in ctx_plan.items() if why is None])

    t = time.perf_counter()
    log(f"  tinygraph: loading (backend {args.backend}, max_context {max_context})")
    model = load_model(str(ckpt), dtype="float16", backend=args.backend, max_context=max_context)
    rec["load"] = {"seconds": time.perf_counter() - t, "weight_bytes": int(model.weight_bytes),
                   "max_context": max_context}
    tokens: list[int] | None = None
    try:
        prompt = prompts["decode"]

        def decode_runs() -> dict[str, Any]:
            nonlocal tokens
            runs, warm = [], []
            warm_s, r = 0.0, 0
            # warm-ups: at least --warmup runs and --warmup-seconds of decoding (a fresh H100
            # ramps its clocks over ~1 s: GPT-2 measured 1,424 -> 2,686 tok/s over its first runs)
            while len(runs) < args.runs:
                toks, stamps = [], []
                t0 = time.perf_counter()
                for tok in model.generate_stream(prompt, max_new_tokens=args.new_tokens, temperature=0):
                    stamps.append(time.perf_counter() - t0)
                    toks.append(int(tok))
                n = len(toks)
                run = {"n_tokens": n, "ttft_s": stamps[0], "total_s": stamps[-1],
                       "step_s": [b - a for a, b in zip(stamps, stamps[1:])]}
                run["decode_tok_s"] = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else None
                run["e2e_tok_s"] = n / stamps[-1]
                warming = r < args.warmup or warm_s < args.warmup_seconds
                r += 1
                if warming:
                    warm_s += stamps[-1]
                    warm.append(run)
                    tokens = tokens or toks
                    log(f"  tinygraph decode warm-up: {run['decode_tok_s'] or 0:.1f} tok/s, "
                        f"TTFT {run['ttft_s'] * 1e3:.1f} ms")
                else:
                    runs.append(run)
                    tokens = tokens or toks
                    if toks != tokens:
                        run["tokens_differ_from_warmup"] = True
            out = {"prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "warmup": warm, "runs": runs,
                   "decode_tok_s": [r["decode_tok_s"] for r in runs],
                   "ttft_ms": [r["ttft_s"] * 1e3 for r in runs],
                   "e2e_tok_s": [r["e2e_tok_s"] for r in runs], "tokens": tokens,
                   "distinct_tokens": len(set(tokens or []))}
            out["median_decode_tok_s"] = median(out["decode_tok_s"])
            out["median_ttft_ms"] = median(out["ttft_ms"])
            out["median_e2e_tok_s"] = median(out["e2e_tok_s"])
            log(f"  tinygraph decode: {out['median_decode_tok_s'] or 0:.1f} tok/s, "
                f"TTFT {out['median_ttft_ms']:.1f} ms (median of {len(runs)})")
            return out

        guarded(rec, "decode", decode_runs)

        def prefill_runs() -> dict[str, Any]:
            ids = prompts["prefill"]
            for _ in range(max(1, args.warmup)):        # warm-up
                model.step(ids, 0, "argmax")
            secs = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model.step(ids, 0, "argmax")
                secs.append(time.perf_counter() - t0)
            out = {"tokens": len(ids), "seconds": secs, "tok_s": [len(ids) / s for s in secs]}
            out["median_tok_s"] = median(out["tok_s"])
            log(f"  tinygraph prefill-{len(ids)}: {out['median_tok_s']:.0f} tok/s")
            return out

        guarded(rec, "prefill", prefill_runs)

        rec["contexts"] = {}
        for L, why in ctx_plan.items():
            if why is not None:
                rec["contexts"][str(L)] = {"skipped": why}
                log(f"  tinygraph {context_label(L)}: skipped ({why})")
                continue
            guarded(rec["contexts"], str(L), lambda L=L: long_context(model, L, args, k["vocab"]))
    finally:
        model.close()
        del model
        gc.collect()
    return tokens


def long_context(model, L: int, args, vocab: int) -> dict[str, Any]:
    n_dec = args.context_decode_tokens
    P = L - n_dec
    rng = np.random.default_rng(args.seed + L)
    ids = rng.integers(0, vocab, P).tolist()
    chunk = max(1, args.prefill_chunk)
    t0 = time.perf_counter()
    tok = None
    for s in range(0, P, chunk):
        tok = model.step(ids[s:s + chunk], s, "argmax")
    prefill_s = time.perf_counter() - t0
    runs = []
    W = max(1, args.warmup)
    for r in range(W + args.runs):                    # the first W runs are warm-ups
        t0 = time.perf_counter()
        done = sum(1 for _ in model.decode_loop(tok, P, n_dec))  # as generate decodes: one device loop
        total = time.perf_counter() - t0
        assert done == n_dec
        runs.append({"seconds": total, "tok_s": n_dec / total})
    out = {"context": L, "prompt_tokens": P, "decode_tokens": n_dec, "prefill_chunk": chunk,
           "prefill_s": prefill_s, "prefill_tok_s": P / prefill_s, "warmup": runs[:W], "runs": runs[W:],
           "decode_tok_s": [r["tok_s"] for r in runs[W:]]}
    out["median_decode_tok_s"] = median(out["decode_tok_s"])
    log(f"  tinygraph {context_label(L)}: {out['median_decode_tok_s']:.1f} tok/s "
        f"(prefill of {P} took {prefill_s:.2f} s)")
    return out


# --------------------------------------------------------------------------------------------
# HF transformers measurements
# --------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def _generate(model, ids, n: int) -> tuple[float, list[int]]:
    import torch
    _sync(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    _sync(model.device)
    return time.perf_counter() - t0, out[0, ids.shape[1]:].tolist()


def bench_hf(model, args, prompts: dict[str, list[int]], rec: dict) -> None:
    import torch

    dev = model.device
    ids = torch.tensor([prompts["decode"]], device=dev)
    n = args.new_tokens
    rec["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    rec["device"] = str(dev)

    def eager() -> dict[str, Any]:
        w, _ = _generate(model, ids, n)                       # warm-up
        ttft = [_generate(model, ids, 1)[0] for _ in range(args.runs)]
        totals, tokens = [], None
        for _ in range(args.runs):
            s, toks = _generate(model, ids, n)
            totals.append(s)
            tokens = tokens or toks
        t1 = median(ttft)
        out = {"warmup_s": w, "ttft_s": ttft, "median_ttft_ms": t1 * 1e3, "total_s": totals,
               "decode_tok_s": [(n - 1) / max(s - t1, 1e-9) for s in totals],
               "e2e_tok_s": [n / s for s in totals], "tokens": tokens,
               "distinct_tokens": len(set(tokens or []))}
        out["median_decode_tok_s"] = median(out["decode_tok_s"])
        out["median_e2e_tok_s"] = median(out["e2e_tok_s"])
        log(f"  HF eager: {out['median_decode_tok_s']:.1f} tok/s (e2e {out['median_e2e_tok_s']:.1f}), "
            f"TTFT {out['median_ttft_ms']:.1f} ms")
        return out

    guarded(rec, "eager", eager)

    def prefill() -> dict[str, Any]:
        x = torch.tensor([prompts["prefill"]], device=dev)

        def fwd():
            with torch.inference_mode():
                try:
                    return model(input_ids=x, use_cache=True, logits_to_keep=1)
                except TypeError:
                    return model(input_ids=x, use_cache=True)

        fwd()
        secs = []
        for _ in range(args.runs):
            _sync(dev)
            t0 = time.perf_counter()
            fwd()
            _sync(dev)
            secs.append(time.perf_counter() - t0)
        out = {"tokens": x.shape[1], "seconds": secs, "tok_s": [x.shape[1] / s for s in secs]}
        out["median_tok_s"] = median(out["tok_s"])
        log(f"  HF eager prefill-{x.shape[1]}: {out['median_tok_s']:.0f} tok/s")
        return out

    guarded(rec, "prefill", prefill)

    eager_ttft = rec.get("eager", {}).get("median_ttft_ms") if isinstance(rec.get("eager"), dict) else None

    def compiled() -> dict[str, Any]:
        out: dict[str, Any] = {"how": args.hf_compile}
        try:
            res = _compiled_run(model, ids, n, args, fullgraph=True)
            out["fullgraph"] = True
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001
            out["fullgraph_error"] = f"{type(e).__name__}: {e}"[:4000]
            out["fullgraph_traceback"] = traceback.format_exc()[-6000:]
            log(f"  HF compile fullgraph=True failed: {out['fullgraph_error'][:300]}; trying fullgraph=False")
            _reset_compile(model)
            res = _compiled_run(model, ids, n, args, fullgraph=False)
            out["fullgraph"] = False
        out.update(res)
        t1 = (eager_ttft or 0.0) / 1e3
        out["ttft_used_ms"] = eager_ttft
        out["decode_tok_s"] = [(n - 1) / max(s - t1, 1e-9) for s in out["total_s"]]
        out["e2e_tok_s"] = [n / s for s in out["total_s"]]
        out["median_decode_tok_s"] = median(out["decode_tok_s"])
        out["median_e2e_tok_s"] = median(out["e2e_tok_s"])
        if not out.get("compiled"):
            out["note"] = "transformers did not compile the forward (criteria unmet, e.g. not on a GPU)"
        log(f"  HF static+compile: {out['median_decode_tok_s']:.1f} tok/s (e2e {out['median_e2e_tok_s']:.1f}); "
            f"warm-ups {', '.join(f'{s:.1f}' for s in out['warmup_s'])} s")
        return out

    if args.no_compile:
        rec["compile"] = {"skipped": "--no-compile"}
    else:
        guarded(rec, "compile", compiled)
        _reset_compile(model)

    def fp32_reference() -> dict[str, Any]:
        """Greedy tokens of the same weights in float32 (no TF32): who is nearer the exact result."""
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model.float()                                        # in place; the fp16 runs are done
        nref = min(n, 32)
        s, toks = _generate(model, ids, nref)
        log(f"  HF fp32 reference: {nref} tokens in {s:.2f} s")
        return {"tokens": toks, "seconds": s, "dtype": "float32"}

    if args.no_fp32_ref:
        rec["fp32_ref"] = {"skipped": "--no-fp32-ref"}
    else:
        guarded(rec, "fp32_ref", fp32_reference)


def _compiled_run(model, ids, n: int, args, fullgraph: bool) -> dict[str, Any]:
    import torch
    gcfg = model.generation_config
    gcfg.cache_implementation = "static"
    if args.hf_compile == "manual":
        model._bench_eager_forward = model.forward
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=fullgraph)
    else:
        from transformers import CompileConfig
        gcfg.compile_config = CompileConfig(fullgraph=fullgraph, mode="reduce-overhead")
    warm = [_generate(model, ids, n)[0] for _ in range(2)]
    totals, tokens = [], None
    for _ in range(args.runs):
        s, toks = _generate(model, ids, n)
        totals.append(s)
        tokens = tokens or toks
    compiled = args.hf_compile == "manual" or hasattr(model, "_compiled_call")
    return {"warmup_s": warm, "total_s": totals, "tokens": tokens, "compiled": compiled}


def _reset_compile(model) -> None:
    import torch
    gcfg = model.generation_config
    gcfg.cache_implementation = None
    if hasattr(gcfg, "compile_config"):
        gcfg.compile_config = None
    if hasattr(model, "_bench_eager_forward"):
        model.forward = model._bench_eager_forward
        del model._bench_eager_forward
    for a in ("_compiled_call", "_last_compile_config"):
        if hasattr(model, a):
            try:
                delattr(model, a)
            except AttributeError:
                pass
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def free_torch() -> None:
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------------------------
# one model
# --------------------------------------------------------------------------------------------
def bench_model(name: str, args, use_torch: bool, work: Path) -> dict[str, Any]:
    entry = bc.CONFIGS[name]
    hf = bc.tiny(entry["hf"]) if args.tiny else dict(entry["hf"])
    m: dict[str, Any] = {"label": entry["label"] + (" (tiny)" if args.tiny else ""), "config": hf,
                         "params": bc.param_count(hf)}
    k = bc.dims(hf)
    rng = np.random.default_rng(args.seed)
    prompts = {"decode": rng.integers(0, k["vocab"], args.prompt_tokens).tolist(),
               "prefill": rng.integers(0, k["vocab"], args.prefill_tokens).tolist()}
    m["prompts"] = prompts
    ckpt = work / name
    hf_model = None
    t = time.perf_counter()
    try:
        if use_torch:
            log(f"  building {name} with transformers on {args.hf_device}")
            hf_model = build_torch_model(hf, args.hf_device, args.seed, args.std)
            m["params_torch"] = int(sum(p.numel() for p in hf_model.parameters()))
            save_torch_model(hf_model, ckpt)
            m["build"] = {"method": "transformers from_config + save_pretrained", "device": args.hf_device}
        else:
            log(f"  building {name} with numpy (no torch/transformers)")
            bc.write_numpy_checkpoint(hf, ckpt, seed=args.seed, std=args.std)
            m["build"] = {"method": "numpy + safetensors (no torch)"}
        m["build"]["seconds"] = time.perf_counter() - t
        m["build"]["checkpoint_bytes"] = sum(f.stat().st_size for f in ckpt.iterdir())
        m["build"]["std"] = args.std
        log(f"  built in {m['build']['seconds']:.1f} s ({m['params'] / 1e6:.1f}M params)")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001
        m.update(error_record(e))
        log(f"  build ERROR {m['error'][:300]}")
        hf_model = None
        free_torch()
        shutil.rmtree(ckpt, ignore_errors=True)
        return m

    try:
        m["hf"] = {}
        if hf_model is not None and not args.no_hf:
            prepare_hf_for_generate(hf_model)
            try:
                bench_hf(hf_model, args, prompts, m["hf"])
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001
                m["hf"].update(error_record(e))
        else:
            m["hf"] = {"skipped": "--no-hf" if args.no_hf else
                       ("--builder numpy" if args.builder == "numpy" else "torch/transformers not importable")}
        hf_model = None
        free_torch()

        m["tinygraph"] = {}
        tokens = None
        try:
            tokens = bench_tinygraph(ckpt, hf, args, prompts, m["tinygraph"])
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001
            if "load" not in m["tinygraph"]:
                m["tinygraph"]["load"] = error_record(e)
            else:
                m["tinygraph"]["error"] = error_record(e)["error"]
            log(f"  tinygraph ERROR {error_record(e)['error'][:300]}")
        eager = m["hf"].get("eager") if isinstance(m["hf"].get("eager"), dict) else None
        hf_tokens = eager.get("tokens") if eager else None
        m["match"] = token_match(tokens, hf_tokens)
        comp = m["hf"].get("compile") if isinstance(m["hf"].get("compile"), dict) else None
        if comp and comp.get("tokens") and hf_tokens:
            m["match_hf_compile_vs_eager"] = token_match(comp["tokens"], hf_tokens)
        ref = m["hf"].get("fp32_ref") if isinstance(m["hf"].get("fp32_ref"), dict) else None
        if ref and ref.get("tokens"):
            m["match_fp32_ref"] = {"tinygraph": token_match(tokens, ref["tokens"]),
                                   "hf_eager_fp16": token_match(hf_tokens, ref["tokens"]),
                                   "hf_compile_fp16": token_match(comp.get("tokens") if comp else None,
                                                                  ref["tokens"])}
        if m["match"]:
            log(f"  tokens match HF eager: {m['match']['first10']}/10, {m['match']['first32']}/32, "
                f"common prefix {m['match']['common_prefix']}")
    finally:
        hf_model = None
        free_torch()
        shutil.rmtree(ckpt, ignore_errors=True)
    return m


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tinygraph vs HF transformers, side by side (random weights)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(bc.CONFIGS),
                   help=f"comma-separated, from {', '.join(bc.CONFIGS)} (default: all)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 3; --quick 2)")
    p.add_argument("--warmup-seconds", type=float, default=2.0,
                   help="decode warm-ups continue until this much decoding has run (default 2 s)")
    p.add_argument("--warmup", type=int, default=2,
                   help="tinygraph warm-up runs before the timed ones (default 2: the second run of a "
                        "shape can still be slower); HF eager warms up with one generate plus the TTFT runs")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--contexts", default=None, help="long contexts for decode, e.g. 2048,8192 (default; --quick none)")
    p.add_argument("--context-decode-tokens", type=int, default=32)
    p.add_argument("--prefill-chunk", type=int, default=512, help="chunk size for prefilling the long contexts")
    p.add_argument("--no-hf", action="store_true", help="tinygraph only")
    p.add_argument("--no-compile", action="store_true", help="skip HF static cache + torch.compile")
    p.add_argument("--no-fp32-ref", action="store_true", help="skip HF's float32 greedy reference tokens")
    p.add_argument("--hf-compile", choices=("auto", "manual"), default="auto",
                   help="auto: generate() compiles (CompileConfig); manual: model.forward = torch.compile(...)")
    p.add_argument("--quick", action="store_true", help="2 runs, no long contexts")
    p.add_argument("--json", default=None, help="output path (default bench/results/<device>-<date>.json)")
    p.add_argument("--backend", choices=("cuda", "numpy"), default="cuda", help="tinygraph backend (numpy: dry run)")
    p.add_argument("--hf-device", default=None, help="torch device for HF (default cuda when available, else cpu)")
    p.add_argument("--tiny", action="store_true", help="shrink every config (dry runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=0.04, help="std of the random weights")
    p.add_argument("--builder", choices=("auto", "torch", "numpy"), default="auto",
                   help="who writes the random checkpoint (auto: transformers when importable; numpy "
                        "works without torch and disables the HF columns)")
    p.add_argument("--copy-gib", type=float, default=2.0, help="size of the floor's device-to-device copy (>= 1)")
    p.add_argument("--copy-reps", type=int, default=20)
    p.add_argument("--work-dir", default=None, help="where the temporary checkpoints go (default: $TMPDIR)")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                   help="measure nothing: combine the models of earlier result files (e.g. runs split to fit a "
                        "time limit) into one table, and write it with --json")
    a = p.parse_args(argv)
    a.model_list = [s.strip() for s in a.models.split(",") if s.strip()]
    bad = [s for s in a.model_list if s not in bc.CONFIGS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {list(bc.CONFIGS)}")
    if a.runs is None:
        a.runs = 2 if a.quick else 3
    if a.runs < 1:
        p.error("--runs must be >= 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.contexts is None:
        a.contexts = "" if a.quick else "2048,8192"
    a.contexts = [int(s) for s in a.contexts.split(",") if s.strip()]
    if a.backend == "cuda" and a.copy_gib < 1:
        p.error("--copy-gib must be >= 1 on the GPU")
    return a


def default_json_path(device_name: str) -> Path:
    date = _dt.date.today().isoformat()
    base = REPO / "bench" / "results" / f"{slugify(device_name)}-{date}.json"
    path, i = base, 2
    while path.exists():
        path = base.with_name(f"{base.stem}-{i}.json")
        i += 1
    return path


def merge_results(paths: list[str]) -> dict[str, Any]:
    """One result from several files: models in order (a later file's model replaces an earlier
    one of the same name), each summarised with its own file's copy bandwidth."""
    merged: dict[str, Any] = {"tool": "tools/bench.py --merge", "merged_from": [], "models": {}}
    contexts: list[int] = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        bw = (r.get("floor") or {}).get("bandwidth_Bps")
        merged["merged_from"].append({"path": str(p), "command": r.get("command"), "date": r.get("date"),
                                      "device": r.get("device"), "floor": r.get("floor"),
                                      "settings": r.get("settings")})
        for key in ("device", "settings", "definitions"):
            merged.setdefault(key, r.get(key))
        for c in (r.get("settings") or {}).get("contexts") or []:
            if c not in contexts:
                contexts.append(c)
        for name, m in r.get("models", {}).items():
            merged["models"][name] = m
            m["floor_bandwidth_Bps"] = bw
    names = {(f.get("device") or {}).get("name") for f in merged["merged_from"]}
    if len(names) > 1:
        merged["warning"] = f"results from different devices: {sorted(map(str, names))}"
    merged["contexts"] = contexts
    for m in merged["models"].values():
        m["summary"] = summarize(m, contexts, m.get("floor_bandwidth_Bps"))
    merged["table"] = format_table([m["summary"] for m in merged["models"].values()], contexts)
    merged["notes"] = notes_for(merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        merged = merge_results(args.merge)
        if args.json:
            _write_json(Path(args.json), merged)
        print(merged["table"])
        for line in merged["notes"] + ([merged["warning"]] if "warning" in merged else []):
            print(f"- {line}")
        return 0
    command = " ".join(shlex.quote(x) for x in [sys.executable, *(sys.argv if argv is None else
                                                                    ["tools/bench.py", *argv])])
    use_torch = have_torch() if args.builder != "numpy" else False
    if args.builder == "torch" and not use_torch:
        raise SystemExit("--builder torch: torch/transformers are not importable")
    if use_torch:
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        import warnings
        warnings.filterwarnings("ignore", message=".*TensorFloat32.*")
        try:
            transformers.utils.logging.disable_progress_bar()
        except Exception:  # noqa: BLE001
            pass
        if args.hf_device is None:
            args.hf_device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        args.hf_device = args.hf_device or "cpu"
    results: dict[str, Any] = {
        "tool": "tools/bench.py", "command": command, "cwd": os.getcwd(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k != "model_list"},
        "definitions": {
            "decode_tok_s": "(new_tokens - 1) / (time of last new token - time of first new token); "
                            "HF: (new_tokens - 1) / (generate total - median TTFT)",
            "ttft_ms": "time from the call to the first new token (prefill + first token)",
            "prefill_tok_s": "prefill_tokens / time of one forward pass over them (to the last position's "
                             "argmax / logits)",
            "floor_tok_s": "copy bandwidth (bytes read + written) / tinygraph model.weight_bytes",
            "pct_floor": "100 * decode_tok_s / floor_tok_s",
        },
        "models": {},
    }
    log(f"models {args.model_list}; runs {args.runs}; backend {args.backend}; HF "
        f"{'off' if args.no_hf or not use_torch else args.hf_device}")
    try:
        results["device"] = device_info(args.backend)
    except Exception as e:  # noqa: BLE001
        results["device"] = {"name": "unknown", **error_record(e)}
    log(f"device: {results['device'].get('name')}")
    try:
        fl = measure_floor(args.backend, int(args.copy_gib * GIB), args.copy_reps)
        log(f"copy bandwidth: {fl['bandwidth_GBps']:.0f} GB/s ({fl['method']})")
    except Exception as e:  # noqa: BLE001
        fl = error_record(e)
        log(f"floor ERROR {fl['error']}")
    results["floor"] = fl
    if use_torch and args.backend == "cuda":
        try:
            results["floor_torch_check"] = torch_copy_check(int(args.copy_gib * GIB), args.copy_reps)
        except Exception as e:  # noqa: BLE001
            results["floor_torch_check"] = error_record(e)
    bw = fl.get("bandwidth_Bps")

    json_path = Path(args.json) if args.json else default_json_path(results["device"].get("name", "device"))
    work = Path(tempfile.mkdtemp(prefix="tinygraph-bench-", dir=args.work_dir))
    rows = []
    try:
        for name in args.model_list:
            log(f"== {name}")
            try:
                m = bench_model(name, args, use_torch, work)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001
                m = {"label": bc.CONFIGS[name]["label"], "params": bc.param_count(bc.CONFIGS[name]["hf"]),
                     **error_record(e)}
            m["summary"] = summarize(m, args.contexts, bw)
            results["models"][name] = m
            rows.append(m["summary"])
            _write_json(json_path, results)          # partial results survive a crash
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = format_table(rows, args.contexts)
    notes = notes_for(results)
    results["table"] = table
    results["notes"] = notes
    _write_json(json_path, results)
    dev = results["device"]
    print(f"\n{dev.get('name')} ({args.backend}); copy bandwidth "
          f"{(bw or 0) / 1e9:,.0f} GB/s -> floor = bandwidth / weight bytes; fp16, batch 1, "
          f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, median of {args.runs}")
    print(table)
    for line in notes:
        print(f"- {line}")
    print(f"JSON: {json_path}")
    return 0


def _write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


if __name__ == "__main__":
    sys.exit(main())
