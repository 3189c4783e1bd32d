"""Quantized side-by-side runs (``--quant``) and llama.cpp's runs on the same GGUF files (``--llamacpp``).

With ``--llamacpp DIR``, per model: the random-weight checkpoint is written once as an F16 GGUF
(cached in ``--gguf-dir``), llama-bench runs on it (pp/tg, and at the ``--contexts`` depths), and
for each ``--quant`` type ``llama-quantize`` writes ``<model>-<TYPE>.gguf``; tinygraph loads that
file (keeping its quantized types: ``load_model(path.gguf, dtype="float16")``) and is timed exactly
like the F16 run, then llama-bench runs on the same file.

Without ``--llamacpp``, tinygraph quantizes the checkpoint itself while loading:
``load_model(dir, quantize=<lower-case ggml type>)``. A llama-quantize mix (``Q4_K_M``: Q4_K with
some Q6_K tensors) has no single type, so it maps to its base type (``q4_k``), and the table says so.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import bench_configs as bc
import bench_gguf
from bench_llamacpp import LlamaCpp
from bench_tinygraph import bench_tinygraph, plan_contexts
from bench_util import error_record, guarded, log, token_match

#: llama-quantize type -> the ggml type tinygraph's own quantizer writes for it (lower case)
QUANT_TYPES: dict[str, str] = {
    "Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1",
    "Q2_K": "q2_k", "Q3_K_S": "q3_k", "Q3_K_M": "q3_k", "Q3_K_L": "q3_k", "Q4_K_S": "q4_k",
    "Q4_K_M": "q4_k", "Q5_K_S": "q5_k", "Q5_K_M": "q5_k", "Q6_K": "q6_k",
}


def parse_quant_types(text: str) -> list[str]:
    """``"Q8_0,q4_k_m"`` -> ["Q8_0", "Q4_K_M"]; ValueError naming an unknown type."""
    out: list[str] = []
    for s in text.split(","):
        t = s.strip().upper()
        if not t:
            continue
        if t not in QUANT_TYPES:
            raise ValueError(f"unknown quantization type {s.strip()!r}; choose from {', '.join(QUANT_TYPES)}")
        if t not in out:
            out.append(t)
    return out


def table_types(settings: dict[str, Any]) -> list[str]:
    """The per-type tables a run has: F16 (when llama.cpp ran) and each --quant type."""
    f16 = settings.get("llamacpp") and not settings.get("skip_f16")
    return (["F16"] if f16 else []) + list(settings.get("quant_types") or [])


def gguf_stem(name: str, args) -> str:
    """File stem of a model's cached GGUFs: config (--tiny), seed and std. A cached file may come from
    either builder (torch or NumPy draw different values); speed does not depend on the values."""
    return f"{name}{'-tiny' if args.tiny else ''}-s{args.seed}-std{args.std:g}"


def llama_depths(hf: dict[str, Any], args) -> list[int]:
    """The --contexts depths llama-bench runs: those tinygraph does not skip for the model's positions."""
    return [d for d, why in plan_contexts(hf, args, None, 0).items() if why is None]


def f16_gguf_path(name: str, args, gguf_dir: Path) -> Path:
    """Where a model's F16 GGUF is (or will be) cached."""
    return gguf_dir / f"{gguf_stem(name, args)}-F16.gguf"


def _f16_gguf(name: str, hf: dict[str, Any], ckpt: Path | None, args, gguf_dir: Path) -> dict[str, Any]:
    path = f16_gguf_path(name, args, gguf_dir)
    if path.exists():
        rec: dict[str, Any] = {"path": str(path), "reused": True}
    else:
        if ckpt is None:
            raise RuntimeError(f"{path} is not there and no checkpoint was built")
        t = time.perf_counter()
        log(f"  writing {path.name}")
        rec = bench_gguf.write_gguf(ckpt, hf, path, name=bc.CONFIGS[name]["label"])
        rec.update(reused=False, seconds=time.perf_counter() - t)
    return _describe(rec)


def _describe(rec: dict[str, Any]) -> dict[str, Any]:
    rec.update(bench_gguf.gguf_summary(rec["path"]))
    log(f"  {Path(rec['path']).name}: {rec['tensor_bytes'] / 1e9:.3f} GB of tensors, {rec['types']}")
    return rec


def bench_quant(name: str, hf: dict[str, Any], ckpt: Path | None, args, prompts: dict[str, list[int]],
                m: dict[str, Any], gguf_dir: Path) -> None:
    """The --quant / --llamacpp part of one model: fills m["gguf"], m["llamacpp"] and m["quant"].
    ``ckpt`` may be None with --llamacpp when the F16 GGUF is cached. With --skip-f16 llama.cpp
    runs only on the quantized files. Every step's failure is recorded and the next one runs."""
    llama = None
    if args.llamacpp:
        llama = LlamaCpp(args.llamacpp, timeout=args.llamacpp_timeout, reps=args.llamacpp_reps)
        m["gguf"], m["llamacpp"] = {}, {}
        f16 = guarded(m["gguf"], "F16", lambda: _f16_gguf(name, hf, ckpt, args, gguf_dir))
        if f16 is None:
            return
        if ckpt is not None:        # every file from here on comes from the GGUF: free the disk (8B: 16 GB)
            shutil.rmtree(ckpt, ignore_errors=True)
        if not args.skip_f16:
            guarded(m["llamacpp"], "F16", lambda: llama.bench(Path(f16["path"]), args.prefill_tokens,
                                                              args.new_tokens))
        depths = [] if args.skip_f16 else llama_depths(hf, args)
        if depths:
            guarded(m["llamacpp"], "depths",
                    lambda: llama.bench(Path(f16["path"]), 0, args.context_decode_tokens, depths))
    m["quant"] = {}
    for qt in args.quant_types:
        log(f"  -- {qt}")
        rec: dict[str, Any] = {}
        m["quant"][qt] = rec
        if llama is not None:
            out = gguf_dir / f"{gguf_stem(name, args)}-{qt}.gguf"
            g = guarded(m["gguf"], qt, lambda: _describe(llama.quantize(Path(m["gguf"]["F16"]["path"]), out, qt)))
            if g is None:
                continue
            rec["source"] = f"llama-quantize {qt}; tinygraph loads the same file"
            _tinygraph(rec, Path(g["path"]), hf, args, prompts, m)
            guarded(m["llamacpp"], qt, lambda: llama.bench(Path(g["path"]), args.prefill_tokens, args.new_tokens))
        else:
            q = QUANT_TYPES[qt]
            rec["source"] = f"tinygraph quantize={q!r}" + ("" if q.upper() == qt else f" (for {qt})")
            _tinygraph(rec, ckpt, hf, args, prompts, m, quantize=q)


def _tinygraph(rec: dict[str, Any], path: Path, hf: dict[str, Any], args, prompts: dict[str, list[int]],
               m: dict[str, Any], **load_kw: Any) -> None:
    """tinygraph on the quantized weights, timed as the F16 run; its greedy tokens are compared with
    the F16 run's (quantization error shows as an earlier divergence)."""
    rec["tinygraph"] = tg = {}
    try:
        tokens = bench_tinygraph(path, hf, args, prompts, tg, contexts=False, **load_kw)
        f16 = (m.get("tinygraph") or {}).get("decode")
        rec["match_f16"] = token_match(tokens, f16.get("tokens") if isinstance(f16, dict) else None)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 -- a failing type must not end the run
        if "load" not in tg:
            tg["load"] = error_record(e)
        else:
            tg["error"] = error_record(e)["error"]
        log(f"  tinygraph ERROR {error_record(e)['error'][:300]}")
