"""tinygraph measurements: decode (generate_stream), prefill, and decode after a long context."""
from __future__ import annotations

import gc
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import bench_configs as bc
from bench_util import GIB, context_label, error_record, guarded, log, median


def plan_contexts(hf: dict[str, Any], args, free_bytes: int | None, weight_bytes_est: int) -> dict[int, str | None]:
    """context depth -> None (run it) or the reason to skip it.

    A depth of d means d tokens already in the KV cache, then ``--context-decode-tokens`` timed
    decode steps from position d (as ``llama-bench -d d -n 128``). Depths past the model's max
    positions are skipped; with RoPE the decode steps may run past it (speed does not depend on
    the position), with learned positions (GPT-2) they may not."""
    k = bc.dims(hf)
    n_dec = args.context_decode_tokens
    out: dict[int, str | None] = {}
    for L in args.contexts:
        if L > k["max_pos"]:
            out[L] = f"{L} exceeds the model's max_position_embeddings {k['max_pos']}"
        elif k["family"] == "gpt2" and L + n_dec > k["max_pos"]:
            out[L] = f"{L} + {n_dec} decode tokens exceed GPT-2's {k['max_pos']} learned positions"
        else:
            out[L] = None
    if free_bytes is not None:
        for L in sorted((c for c, why in out.items() if why is None), reverse=True):
            need = tinygraph_memory_estimate(hf, L + n_dec, args.prefill_chunk, weight_bytes_est)
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


def free_device_bytes(backend: str) -> int | None:
    """Free device memory on CUDA (None on the NumPy backend: no check)."""
    if backend != "cuda":
        return None
    from tinygraph.backends.cuda import driver
    driver.get_device(0)
    return int(driver.mem_get_info()[0])


def load_tinygraph(path: Path, args, max_context: int, **load_kw: Any) -> tuple[Any, dict[str, Any]]:
    """``load_model(path, dtype="float16", backend=--backend, max_context, **load_kw)`` and its load
    record: seconds, ``weight_bytes``, ``memory_usage()`` where the model has it, the warnings."""
    from tinygraph.models import load_model

    t = time.perf_counter()
    extra = "".join(f", {k}={v!r}" for k, v in load_kw.items())
    log(f"  tinygraph: loading {Path(path).name} (backend {args.backend}, max_context {max_context}{extra})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(str(path), dtype="float16", backend=args.backend, max_context=max_context, **load_kw)
    rec: dict[str, Any] = {"seconds": time.perf_counter() - t, "weight_bytes": int(model.weight_bytes),
                           "max_context": max_context, "path": str(path), **{k: v for k, v in load_kw.items()}}
    if hasattr(model, "memory_usage"):            # the quantized loader's report (bytes, per-type counts)
        try:
            rec["memory_usage"] = model.memory_usage()
        except Exception as e:  # noqa: BLE001 -- a report failing must not lose the measurement
            rec["memory_usage"] = error_record(e)
    if caught:
        rec["warnings"] = [str(w.message)[:300] for w in caught[:10]]
    return model, rec


def measure_decode(model, args, prompt: list[int]) -> dict[str, Any]:
    """Greedy ``generate_stream`` of --new-tokens after ``prompt``: (new - 1) / (last - first token
    time), median of --runs after the warm-ups (at least --warmup runs and --warmup-seconds)."""
    tokens: list[int] | None = None
    runs, warm = [], []
    warm_s, r = 0.0, 0
    # warm-ups: at least --warmup runs and --warmup-seconds of decoding (a fresh H100
    # ramps its clocks over ~1 s: GPT-2 measured 1,424 -> 2,686 tok/s over its first runs)
    while len(runs) < args.runs:
        toks, stamps = [], []
        t0 = time.perf_counter()
        for tok in model.generate_stream(prompt, max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True):
            stamps.append(time.perf_counter() - t0)
            toks.append(int(tok))
        n = len(toks)
        run = {"n_tokens": n, "ttft_s": stamps[0], "total_s": stamps[-1],
               "step_s": [b - a for a, b in zip(stamps, stamps[1:])]}
        run["decode_tok_s"] = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else None
        run["e2e_tok_s"] = n / stamps[-1]
        warming = r < args.warmup or warm_s < args.warmup_seconds
        r += 1
        tokens = tokens or toks
        if warming:
            warm_s += stamps[-1]
            warm.append(run)
            log(f"  tinygraph decode warm-up: {run['decode_tok_s'] or 0:.1f} tok/s, "
                f"TTFT {run['ttft_s'] * 1e3:.1f} ms")
        else:
            runs.append(run)
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


def measure_prefill(model, args, ids: list[int]) -> dict[str, Any]:
    """One forward pass over ``ids`` to the last position's argmax; median of --runs."""
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


def bench_tinygraph(path: Path, hf: dict[str, Any], args, prompts: dict[str, list[int]], rec: dict,
                    contexts: bool = True, **load_kw: Any) -> list[int] | None:
    """Load ``path`` (a checkpoint directory or a GGUF file; ``load_kw`` e.g. ``quantize=``) and fill
    ``rec`` with "load", "decode", "prefill" and (``contexts``) "contexts"; returns the greedy tokens.
    A failing measurement is recorded and the next one runs."""
    k = bc.dims(hf)
    free = free_device_bytes(args.backend)
    ctx_plan = plan_contexts(hf, args, free, 2 * bc.param_count(hf)) if contexts else {}
    base_need = max(args.prompt_tokens + args.new_tokens, args.prefill_tokens)
    if base_need > k["max_pos"]:
        raise ValueError(f"prompt + new tokens ({base_need}) exceed the model's {k['max_pos']} positions")
    max_context = max([base_need] + [L + args.context_decode_tokens for L, why in ctx_plan.items() if why is None])
    model, rec["load"] = load_tinygraph(path, args, max_context, **load_kw)
    try:
        guarded(rec, "decode", lambda: measure_decode(model, args, prompts["decode"]))
        guarded(rec, "prefill", lambda: measure_prefill(model, args, prompts["prefill"]))
        if contexts:
            rec["contexts"] = {}
            for L, why in ctx_plan.items():
                if why is not None:
                    rec["contexts"][str(L)] = {"skipped": why}
                    log(f"  tinygraph {context_label(L)}: skipped ({why})")
                    continue
                guarded(rec["contexts"], str(L), lambda L=L: long_context(model, L, args, k["vocab"]))
    finally:
        model.close()
        model = None                                  # drop the last reference before collecting
        gc.collect()
    dec = rec.get("decode")
    return dec.get("tokens") if isinstance(dec, dict) else None


def long_context(model, L: int, args, vocab: int) -> dict[str, Any]:
    """Prefill ``L`` random tokens in chunks of --prefill-chunk, then time --context-decode-tokens
    decode steps from position ``L`` (one device loop, as generate decodes); median of --runs."""
    n_dec = args.context_decode_tokens
    rng = np.random.default_rng(args.seed + L)
    ids = rng.integers(0, vocab, L).tolist()
    chunk = max(1, args.prefill_chunk)
    t0 = time.perf_counter()
    tok = None
    for s in range(0, L, chunk):
        tok = model.step(ids[s:s + chunk], s, "argmax")
    prefill_s = time.perf_counter() - t0
    runs = []
    W = max(1, args.warmup)
    for r in range(W + args.runs):                    # the first W runs are warm-ups
        t0 = time.perf_counter()
        done = sum(1 for _ in model.decode_loop(tok, L, n_dec))  # as generate decodes: one device loop
        total = time.perf_counter() - t0
        if done != n_dec:
            raise RuntimeError(f"decode_loop gave {done} of {n_dec} tokens at depth {L}")
        runs.append({"seconds": total, "tok_s": n_dec / total})
    out = {"context": L, "prompt_tokens": L, "decode_tokens": n_dec, "prefill_chunk": chunk,
           "prefill_s": prefill_s, "prefill_tok_s": L / prefill_s, "warmup": runs[:W], "runs": runs[W:],
           "decode_tok_s": [r["tok_s"] for r in runs[W:]]}
    out["median_decode_tok_s"] = median(out["decode_tok_s"])
    log(f"  tinygraph {context_label(L)}: {out['median_decode_tok_s']:.1f} tok/s "
        f"(prefill of {L} took {prefill_s:.2f} s)")
    return out
