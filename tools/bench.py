#!/usr/bin/env python3
"""Side-by-side benchmark: tinygraph against HF transformers and llama.cpp on random-weight models at
real sizes. This file is the entry point (arguments, one model's run, the output); the parts live
beside it: ``bench_configs.py`` (the published configs), ``bench_tinygraph.py``, ``bench_hf.py``,
``bench_device.py`` (device facts, the copy-bandwidth floor), ``bench_gguf.py`` (a checkpoint as
an F16 GGUF), ``bench_llamacpp.py`` (llama-quantize / llama-bench), ``bench_quant.py`` (``--quant``,
``--llamacpp``), ``bench_report.py`` (tables), ``bench_util.py``.

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
    decode@2k, @8k    --contexts: d random tokens prefilled in chunks of --prefill-chunk, then
                      --context-decode-tokens (128) decode steps from position d, as
                      ``llama-bench -d d -n 128``; median over --runs runs from the same position.
                      Skipped, with the reason, past the model's max positions or the free
                      device memory.
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

  llama.cpp (--llamacpp DIR: DIR or DIR/bin holds llama-quantize and llama-bench)
    the checkpoint written as an F16 GGUF (cached in --gguf-dir), ``llama-bench -m F -p 512 -n 128
    -ngl 99 -fa 1 -o json`` (tok/s = its avg_ts), and with --contexts ``llama-bench -d 2048,8192
    -p 0 -n 128``.
  --batch 1,8,32,64  (``tools/bench_batch.py`` has the details) for each N, N sequences of
    --prompt-tokens (32) random tokens, --new-tokens (128) greedy tokens each (EOS ignored), through
    tinygraph's continuous-batching engine (``Engine(max_batch=max N)``, as ``generate_batch``;
    ``Engine.warmup()``, one warm-up run per N, median of --runs). Decode tok/s = tokens made in the
    steps in which all N sequences decode / the time of those steps (llama-batched-bench's S_TG:
    generated tokens over generation time); TTFT per sequence; the KV pool's bytes and every step's
    time in the JSON. With --llamacpp: ``llama-batched-bench -m F16.gguf -c N*(P+T) -npp 32 -ntg 128
    -npl 1,8,32,64 -ngl 99 -fa on --output-format jsonl`` --runs times, median S_TG per N. One table:
    tinygraph, llama.cpp and the ratio per N. ``--batch-only``: nothing else (no HF, no batch-1).
  --quant Q8_0,Q4_K_M  for each type, with --llamacpp: ``llama-quantize F16.gguf X-Q4_K_M.gguf
    Q4_K_M``, tinygraph loads that file (keeping its types) and is timed as above, then llama-bench
    runs on it; without: ``load_model(checkpoint, quantize="q4_k")`` (tinygraph's own quantizer;
    a K-mix maps to its base type). One table per type; the floor counts the file's tensor bytes.

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
    python tools/bench.py --models smollm2 --quant Q8_0,Q4_K_M --llamacpp /tmp/llbuild/bin --no-hf
    python tools/bench.py --models qwen3-0.6b --contexts 2048,8192,32768 --llamacpp /tmp/llbuild/bin
    python tools/bench.py --models smollm2 --batch 1,8,32,64 --batch-only --llamacpp /tmp/llbuild/bin

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
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_configs as bc  # noqa: E402
import bench_batch as bb  # noqa: E402
from bench_device import device_info, measure_floor, torch_copy_check  # noqa: E402
from bench_hf import (bench_hf, build_torch_model, free_torch, have_torch,  # noqa: E402
                      prepare_hf_for_generate, save_torch_model)
from bench_llamacpp import find_tools  # noqa: E402
from bench_quant import bench_quant, f16_gguf_path, parse_quant_types, table_types  # noqa: E402
from bench_report import (format_context_table, format_quant_table, format_table,  # noqa: E402,F401
                          notes_for, quant_notes, quant_row, quant_title, summarize)
from bench_tinygraph import bench_tinygraph  # noqa: E402
from bench_util import (GIB, _num, _write_json, context_label, copy_bandwidth, error_record,  # noqa: E402,F401
                        floor_tok_s, log, slugify, token_match)

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# one model
# --------------------------------------------------------------------------------------------
def _build_checkpoint(name: str, hf: dict[str, Any], args, use_torch: bool, ckpt: Path, m: dict) -> Any:
    """Write the random-weight checkpoint to ``ckpt``; returns the HF model when torch built it."""
    t = time.perf_counter()
    hf_model = None
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
    return hf_model


def _matches(m: dict[str, Any], tokens: list[int] | None) -> None:
    """Token agreement: tinygraph vs HF eager, HF compile vs eager, both vs the fp32 reference."""
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
                               "hf_compile_fp16": token_match(comp.get("tokens") if comp else None, ref["tokens"])}
    if m["match"]:
        log(f"  tokens match HF eager: {m['match']['first10']}/10, {m['match']['first32']}/32, "
            f"common prefix {m['match']['common_prefix']}")


def bench_model(name: str, args, use_torch: bool, work: Path, gguf_dir: Path) -> dict[str, Any]:
    """Everything measured on one model; a failing part is recorded and the rest runs."""
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
    if args.skip_f16:
        m["hf"] = m["tinygraph"] = {"skipped": "--skip-f16"}
        if args.llamacpp and f16_gguf_path(name, args, gguf_dir).exists():   # no checkpoint needed
            bench_quant(name, hf, None, args, prompts, m, gguf_dir)
            return m
    try:
        hf_model = _build_checkpoint(name, hf, args, use_torch and not args.skip_f16, ckpt, m)
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
        if args.skip_f16:
            bench_quant(name, hf, ckpt, args, prompts, m, gguf_dir)
            return m
        if args.batch_only:
            hf_model = None
            free_torch()
            bb.batch_only(name, hf, ckpt, args, m, gguf_dir)
            return m
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
        _matches(m, tokens)
        if args.batch:                     # before bench_quant: it deletes the checkpoint
            bb.batch_tinygraph(m, ckpt, hf, args)
        if args.quant_types or args.llamacpp:
            bench_quant(name, hf, ckpt, args, prompts, m, gguf_dir)
        if args.batch and args.llamacpp:   # on the F16 GGUF bench_quant wrote
            bb.batch_llamacpp(m, args)
    finally:
        hf_model = None
        free_torch()
        shutil.rmtree(ckpt, ignore_errors=True)
    return m


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------
def _int_list(p: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        p.error(f"{flag} takes comma-separated integers, got {text!r}")
    if any(x < 1 for x in out):
        p.error(f"{flag} values must be >= 1, got {text!r}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tinygraph vs HF transformers and llama.cpp, side by side (random weights)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(bc.DEFAULT_MODELS),
                   help=f"comma-separated, from {', '.join(bc.CONFIGS)} (default: {', '.join(bc.DEFAULT_MODELS)}; "
                        "gemma2-2b and phi3-mini against HF only, no GGUF)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 3; --quick 2)")
    p.add_argument("--warmup-seconds", type=float, default=2.0,
                   help="decode warm-ups continue until this much decoding has run (default 2 s)")
    p.add_argument("--warmup", type=int, default=2,
                   help="tinygraph warm-up runs before the timed ones (default 2: the second run of a "
                        "shape can still be slower); HF eager warms up with one generate plus the TTFT runs")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--contexts", default=None,
                   help="context depths for decode, e.g. 2048,8192,32768 (default 2048,8192; --quick none)")
    p.add_argument("--context-decode-tokens", type=int, default=128,
                   help="decode steps timed after each context depth (default 128, as llama-bench -n 128)")
    p.add_argument("--prefill-chunk", type=int, default=512, help="chunk size for prefilling the long contexts")
    p.add_argument("--quant", default="", metavar="TYPES",
                   help="llama-quantize types to run too, e.g. Q8_0,Q4_K_M (one table per type; without "
                        "--llamacpp tinygraph quantizes the checkpoint itself)")
    p.add_argument("--llamacpp", default=None, metavar="DIR",
                   help="llama.cpp build (DIR or DIR/bin has llama-quantize, llama-bench): run llama-bench on the "
                        "same GGUF files, F16 and each --quant type, and at the --contexts depths")
    p.add_argument("--gguf-dir", default=None,
                   help="keep the GGUF files here and reuse them in later runs (default: the temporary work dir)")
    p.add_argument("--skip-f16", action="store_true",
                   help="only the --quant types: no HF, F16 or context runs; with --llamacpp the checkpoint is "
                        "built only when the F16 GGUF is not in --gguf-dir yet")
    p.add_argument("--batch", default="", metavar="N,...",
                   help="numbers of sequences decoded together, e.g. 1,8,32,64: tinygraph's batching engine "
                        "(and llama-batched-bench with --llamacpp), aggregate decode tok/s per N")
    p.add_argument("--batch-only", action="store_true", help="only the --batch measurements (no HF, no batch-1)")
    p.add_argument("--llamacpp-reps", type=int, default=5, help="llama-bench -r (default 5)")
    p.add_argument("--llamacpp-timeout", type=float, default=900.0, help="seconds per llama.cpp command")
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
    for flag, v in (("--runs", a.runs), ("--context-decode-tokens", a.context_decode_tokens),
                    ("--llamacpp-reps", a.llamacpp_reps)):
        if v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.contexts is None:
        a.contexts = "" if a.quick else "2048,8192"
    a.contexts = _int_list(p, "--contexts", a.contexts)
    try:
        a.quant_types = parse_quant_types(a.quant)
    except ValueError as e:
        p.error(f"--quant: {e}")
    if a.skip_f16 and not a.quant_types:
        p.error("--skip-f16 needs --quant")
    try:
        a.batch = bb.parse_batch_sizes(a.batch)
    except ValueError as e:
        p.error(f"--batch {e}")
    if a.batch_only and not a.batch:
        p.error("--batch-only needs --batch, e.g. --batch 1,8,32,64")
    if a.batch and a.skip_f16:
        p.error("--batch measures the F16 model: not with --skip-f16")
    if a.skip_f16:
        a.contexts = []
    if a.llamacpp and not a.merge:
        try:
            find_tools(a.llamacpp)
        except FileNotFoundError as e:
            p.error(str(e))
        a.llamacpp = str(Path(a.llamacpp).resolve())
    if a.backend == "cuda" and a.copy_gib < 1:
        p.error("--copy-gib must be >= 1 on the GPU")
    return a


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def default_json_path(device_name: str) -> Path:
    date = _dt.date.today().isoformat()
    base = REPO / "bench" / "results" / f"{slugify(device_name)}-{date}.json"
    path, i = base, 2
    while path.exists():
        path = base.with_name(f"{base.stem}-{i}.json")
        i += 1
    return path


def add_tables(results: dict[str, Any], contexts: list[int], settings: dict[str, Any]) -> None:
    """Fill ``results`` with the main table, one table per quantization type, the context table
    (when llama.cpp ran) and the notes; each model's floor uses its ``floor_bandwidth_Bps``."""
    models = results.get("models", {})
    for m in models.values():
        m["summary"] = summarize(m, contexts, m.get("floor_bandwidth_Bps"))
    results["table"] = format_table([m["summary"] for m in models.values()], contexts)
    results["quant_tables"] = {}
    for qt in table_types(settings):
        rows = [quant_row(m, qt, m.get("floor_bandwidth_Bps"), settings) for m in models.values()]
        results["quant_tables"][qt] = {"title": quant_title(qt, models), "rows": rows,
                                       "table": format_quant_table(rows, settings)}
    if settings.get("llamacpp") and contexts:
        results["context_table"] = format_context_table(results, contexts, settings.get("context_decode_tokens", 128))
    if bb.batch_sizes_of(results):
        results["batch_table"], results["batch_ttft_table"] = bb.format_batch_tables(results)
    results["notes"] = notes_for(results) + quant_notes(results) + bb.batch_notes(results)


def render(results: dict[str, Any]) -> str:
    """The tables as printed: the main one, then each type's, the context table, the notes."""
    only_batch = all((m.get("tinygraph") or {}).get("skipped") == "--batch-only" for m in results["models"].values())
    out = [] if only_batch and results["models"] else [results["table"]]
    for qt, t in (results.get("quant_tables") or {}).items():
        out += ["", f"### {t['title']}", t["table"]]
    if results.get("context_table"):
        n = (results.get("settings") or {}).get("context_decode_tokens", 128)
        out += ["", f"### Decode of {n} tokens after a context of d tokens (llama.cpp: llama-bench -d d -n {n})",
                results["context_table"]]
    if results.get("batch_table"):
        out += ["", f"### {bb.batch_title(results)}", results["batch_table"], "", results["batch_ttft_table"]]
    out += [f"- {line}" for line in results.get("notes", []) + ([results["warning"]] if "warning" in results else [])]
    return "\n".join(out)


def _combine(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A model met again in a later file replaces the earlier record, except that a partial run
    (--skip-f16: quantized types only; --batch-only) and a run of another kind of the same model are
    combined: the full run's record (else the later one) with the other's GGUF, llama.cpp,
    quantized and batch results added."""
    def part(m: dict[str, Any]) -> str | None:
        s = (m.get("tinygraph") or {}).get("skipped")
        return s if s in ("--skip-f16", "--batch-only") else None

    if old is None or part(old) == part(new):
        return new
    base, extra = (old, new) if part(old) is None else (new, old)
    for key in ("gguf", "llamacpp", "quant", "batch"):
        if isinstance(extra.get(key), dict):
            base.setdefault(key, {}).update(extra[key])
    return base


def merge_results(paths: list[str]) -> dict[str, Any]:
    """One result from several files: models in order (a later file's model replaces an earlier
    one of the same name, or adds to it: :func:`_combine`), each summarised with its own file's
    copy bandwidth."""
    merged: dict[str, Any] = {"tool": "tools/bench.py --merge", "merged_from": [], "models": {}}
    contexts: list[int] = []
    settings: dict[str, Any] = {}
    for p in paths:
        r = json.loads(Path(p).read_text())
        bw = (r.get("floor") or {}).get("bandwidth_Bps")
        rs = r.get("settings") or {}
        merged["merged_from"].append({"path": str(p), "command": r.get("command"), "date": r.get("date"),
                                      "device": r.get("device"), "floor": r.get("floor"), "settings": rs})
        for key in ("device", "definitions"):
            merged.setdefault(key, r.get(key))
        for key, v in rs.items():
            settings.setdefault(key, v)
        settings["llamacpp"] = settings.get("llamacpp") or rs.get("llamacpp")
        settings["quant_types"] = list(dict.fromkeys((settings.get("quant_types") or []) + (rs.get("quant_types") or [])))
        for c in rs.get("contexts") or []:
            if c not in contexts:
                contexts.append(c)
        for name, m in r.get("models", {}).items():
            m["floor_bandwidth_Bps"] = bw
            merged["models"][name] = _combine(merged["models"].get(name), m)
    names = {(f.get("device") or {}).get("name") for f in merged["merged_from"]}
    if len(names) > 1:
        merged["warning"] = f"results from different devices: {sorted(map(str, names))}"
    settings["skip_f16"] = all((f.get("settings") or {}).get("skip_f16") for f in merged["merged_from"])
    merged["settings"] = settings
    merged["contexts"] = contexts
    add_tables(merged, contexts, settings)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        merged = merge_results(args.merge)
        if args.json:
            _write_json(Path(args.json), merged)
        print(render(merged))
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
    settings = {k: v for k, v in vars(args).items() if k != "model_list"}
    results: dict[str, Any] = {
        "tool": "tools/bench.py", "command": command, "cwd": os.getcwd(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": settings,
        "definitions": {
            "decode_tok_s": "(new_tokens - 1) / (time of last new token - time of first new token); "
                            "HF: (new_tokens - 1) / (generate total - median TTFT)",
            "ttft_ms": "time from the call to the first new token (prefill + first token)",
            "prefill_tok_s": "prefill_tokens / time of one forward pass over them (to the last position's "
                             "argmax / logits)",
            "contexts": "decode tok/s of context_decode_tokens steps after a context of d tokens (prefilled in "
                        "chunks); llama.cpp: llama-bench -d d -n context_decode_tokens -p 0, avg_ts",
            "floor_tok_s": "copy bandwidth (bytes read + written) / tinygraph model.weight_bytes; in the "
                           "per-type tables / the GGUF's tensor bytes (tinygraph's weight bytes without a file)",
            "pct_floor": "100 * decode_tok_s / floor_tok_s",
            "llama_cpp": "llama-bench -p prefill_tokens -n new_tokens -ngl 99 -fa 1 -o json: avg_ts of each test",
            **bb.DEFINITIONS,
        },
        "models": {},
    }
    log(f"models {args.model_list}; runs {args.runs}; backend {args.backend}; HF "
        f"{'off' if args.no_hf or not use_torch else args.hf_device}"
        + (f"; quant {args.quant_types}" if args.quant_types else "") + (f"; llama.cpp {args.llamacpp}"
                                                                           if args.llamacpp else ""))
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
    gguf_dir = Path(args.gguf_dir) if args.gguf_dir else work / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.model_list:
            log(f"== {name}")
            try:
                m = bench_model(name, args, use_torch, work, gguf_dir)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001
                m = {"label": bc.CONFIGS[name]["label"], "params": bc.param_count(bc.CONFIGS[name]["hf"]),
                     **error_record(e)}
            m["floor_bandwidth_Bps"] = bw
            m["summary"] = summarize(m, args.contexts, bw)
            results["models"][name] = m
            _write_json(json_path, results)          # partial results survive a crash
    finally:
        shutil.rmtree(work, ignore_errors=True)
    add_tables(results, args.contexts, settings)
    _write_json(json_path, results)
    dev = results["device"]
    print(f"\n{dev.get('name')} ({args.backend}); copy bandwidth "
          f"{(bw or 0) / 1e9:,.0f} GB/s -> floor = bandwidth / weight bytes; fp16, batch 1, "
          f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, median of {args.runs}")
    print(render(results))
    print(f"JSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
