#!/usr/bin/env python3
"""Serving benchmark (issue 17): tinygraph's OpenAI-compatible server beside llama.cpp's
llama-server, on the same file, under the same streaming load.

For each ``--models`` config of ``tools/bench_configs.py``: random float16 weights written as an
F16 GGUF (``tools/bench_gguf.py``: llama.cpp's tensor names and a placeholder vocabulary, so both
servers load the one file), then ``tools/loadgen.py`` starts ``python -m tinygraph.serve`` on it
and, with ``--llama-server BIN``, llama-server on it (one after the other, each on a free port) and
runs, at each ``--clients`` value, ``--requests`` streaming completions of ``--prompt-tokens``
random token ids (new ids for every request: no prefix-cache hits), ``--max-tokens`` greedy tokens
past end-of-text. Reported per run: completion tokens per second of wall time, time to first
token and inter-token latency (p50 / p99).

    python tools/bench_serve.py --models smollm2,qwen3-8b --llama-server /tmp/llbuild/bin/llama-server \\
        --json bench/results/<device>-<date>-serve.json

A dry run without a GPU: ``python tools/bench_serve.py --tiny --backend numpy --models smollm2``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_configs as bc  # noqa: E402
from bench_gguf import write_gguf  # noqa: E402
from bench_util import log  # noqa: E402
from loadgen import parse_counts  # noqa: E402

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/bench_serve.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="smollm2", help="comma list of tools/bench_configs.py names")
    p.add_argument("--clients", default="1,64", help="concurrent streaming clients, one run per value")
    p.add_argument("--requests", default="16,128", help="requests per run, one count per --clients value")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--backend", choices=("cuda", "numpy"), default="cuda", help="tinygraph's backend")
    p.add_argument("--max-context", type=int, default=512, help="both servers: tokens per request")
    p.add_argument("--kv-memory", default="4G", help="tinygraph's KV pool (tinygraph.serve --kv-memory)")
    p.add_argument("--llama-server", default=None, metavar="BIN", help="llama.cpp's llama-server binary")
    p.add_argument("--tiny", action="store_true", help="shrink every config (dry runs)")
    p.add_argument("--work-dir", default=None, help="where the GGUF files go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the GGUF files")
    p.add_argument("--json", default=None, help="write every run's summary here")
    return p


def bench_model(name: str, args: argparse.Namespace, work: Path, most_clients: int) -> list[dict[str, Any]]:
    """Write ``name``'s GGUF, run loadgen on it, return loadgen's run summaries (plus the model)."""
    hf = bc.CONFIGS[name]["hf"]
    hf = bc.tiny(hf) if args.tiny else hf
    t = time.perf_counter()
    ckpt = bc.write_numpy_checkpoint(hf, work / name)
    gguf = work / f"{name}.gguf"
    write_gguf(ckpt, hf, gguf, name=name)
    shutil.rmtree(ckpt, ignore_errors=True)
    log(f"{name}: wrote {gguf.name} ({gguf.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s")
    serve = (f"--backend {args.backend} --max-context {args.max_context} --kv-memory {args.kv_memory} "
             f"--max-batch {most_clients}")
    vocab = bc.dims(hf)["vocab"]
    cmd = [sys.executable, str(LOADGEN), "--serve", str(gguf), "--serve-args", serve, "--clients", args.clients,
           "--requests", args.requests, "--max-tokens", str(args.max_tokens), "--ignore-eos",
           "--prompt-ids", str(args.prompt_tokens), "--id-range", f"259,{min(vocab, 20000)}", "--json"]
    if args.llama_server:
        cmd += ["--llama-server", args.llama_server, "--gguf", str(gguf), "--llama-context", str(args.max_context)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    if not out.stdout.strip():
        raise RuntimeError(f"loadgen gave no result for {name} (exit {out.returncode})")
    res = json.loads(out.stdout)
    runs = res["runs"] if "runs" in res else [res]
    for r in runs:
        r["bench_model"] = name
    if not args.keep:
        gguf.unlink(missing_ok=True)
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    rows = ["| model | server | clients | requests ok | tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
            "|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['bench_model']} | {r['server']} | {r['clients']} | {r['ok']}/{r['requests']} | "
                    f"{r['tokens_per_s']} | {r['ttft_ms_p50']} / {r['ttft_ms_p99']} | "
                    f"{r['itl_ms_p50']} / {r['itl_ms_p99']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in bc.CONFIGS]
    if unknown:
        sys.exit(f"bench_serve: unknown model(s) {unknown}; known: {', '.join(bc.CONFIGS)}")
    # checked before any GGUF is written (loadgen would refuse them only after)
    sizes, counts = parse_counts(args.clients), parse_counts(args.requests, "--requests")
    if len(counts) not in (1, len(sizes)):
        sys.exit(f"bench_serve: --requests gives {len(counts)} counts for {len(sizes)} --clients values")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tinygraph-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for name in names:
        runs += bench_model(name, args, work, max(sizes))
    print(table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"tool": "tools/bench_serve.py", "argv": sys.argv[1:],
                                               "date": time.strftime("%Y-%m-%d"), "runs": runs}, indent=1))
    if not args.work_dir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
