"""llama.cpp as the side-by-side anchor: ``llama-quantize`` and ``llama-bench`` from a build directory
(the project's shared scripts build them on the GPU machine: ``../shared/tools/llamacpp/``), run
as subprocesses, and llama-bench's JSON output parsed.

``llama-bench -o json`` prints one JSON array (logs go to stderr): one object per test with
``n_prompt``, ``n_gen``, ``n_depth``, ``avg_ts`` (mean tokens/s over the repetitions),
``stddev_ts``, ``samples_ts``, ``model_size`` (tensor bytes), ``flash_attn``, ``gpu_info``, ...
A test is named as llama-bench's own tables name it: ``pp512``, ``tg128``, ``tg128@d2048``.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from bench_util import log

#: the tools the bench runs, and where a build puts them (DIR itself, or DIR/bin)
TOOLS = ("llama-quantize", "llama-bench")


def find_tools(root: str | os.PathLike) -> dict[str, Path]:
    """Paths of llama-quantize and llama-bench under ``root`` (or ``root/bin``); FileNotFoundError
    naming what is missing."""
    root = Path(root)
    out: dict[str, Path] = {}
    for tool in TOOLS:
        for cand in (root / tool, root / "bin" / tool):
            if cand.is_file() and os.access(cand, os.X_OK):
                out[tool] = cand
                break
        else:
            raise FileNotFoundError(f"--llamacpp {root}: no executable {tool} in it or in {root / 'bin'} "
                                    "(build it with ../shared/tools/llamacpp/build_and_bench.sh)")
    return out


def result_name(rec: dict[str, Any]) -> str:
    """llama-bench's name for one result: pp512, tg128, pp512+tg128, with @d<depth> when deep."""
    p, g, d = int(rec.get("n_prompt") or 0), int(rec.get("n_gen") or 0), int(rec.get("n_depth") or 0)
    name = "+".join(s for s in ((f"pp{p}" if p else ""), (f"tg{g}" if g else "")) if s) or "none"
    return f"{name}@d{d}" if d else name


def parse_bench_json(text: str) -> dict[str, dict[str, Any]]:
    """llama-bench ``-o json`` (or ``-o jsonl``) output -> {test name: {avg_ts, stddev_ts, samples_ts,
    model_size, n_prompt, n_gen, n_depth, ...}}. Text around the JSON (stray log lines) is ignored;
    ValueError when there are no results."""
    text = text.strip()
    recs: list[dict[str, Any]] = []
    start = text.find("[")
    if start >= 0:
        try:
            recs = json.loads(text[start:text.rindex("]") + 1])
        except ValueError:
            recs = []
    if not recs:                                       # jsonl: one object per line
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    continue
    if not recs or not all(isinstance(r, dict) for r in recs):
        raise ValueError(f"no llama-bench results in its output: {text[:300]!r}")
    keep = ("avg_ts", "stddev_ts", "samples_ts", "avg_ns", "model_size", "model_n_params", "model_type",
            "n_prompt", "n_gen", "n_depth", "flash_attn", "n_gpu_layers", "gpu_info", "build_commit",
            "type_k", "type_v")
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        if "avg_ts" not in r:
            raise ValueError(f"a llama-bench result has no avg_ts: {json.dumps(r)[:300]}")
        out[result_name(r)] = {k: r[k] for k in keep if k in r}
    return out


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a tool; RuntimeError with the command and the end of its stderr when it fails."""
    log(f"  $ {' '.join(shlex.quote(c) for c in cmd)}")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{Path(cmd[0]).name} timed out after {timeout:.0f} s") from e
    if res.returncode != 0:
        tail = (res.stderr or res.stdout or "").strip()[-1500:]
        raise RuntimeError(f"{Path(cmd[0]).name} exited with status {res.returncode}: {tail}")
    return res


class LlamaCpp:
    """The llama.cpp tools of one build directory."""

    def __init__(self, root: str | os.PathLike, timeout: float = 900.0, reps: int = 5) -> None:
        self.root = Path(root)
        self.tools = find_tools(self.root)
        self.timeout = timeout
        self.reps = reps

    def quantize(self, src: Path, dst: Path, qtype: str) -> dict[str, Any]:
        """``llama-quantize src dst qtype nthreads`` (skipped when ``dst`` exists: files are cached)."""
        if dst.exists():
            return {"path": str(dst), "reused": True}
        tmp = dst.with_name(dst.name + ".part")
        t = time.perf_counter()
        cmd = [str(self.tools["llama-quantize"]), str(src), str(tmp), qtype, str(os.cpu_count() or 1)]
        try:
            _run(cmd, self.timeout)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dst)
        return {"path": str(dst), "reused": False, "seconds": time.perf_counter() - t, "command": cmd}

    def bench(self, model: Path, prompt: int = 512, gen: int = 128, depths: list[int] | None = None) -> dict[str, Any]:
        """``llama-bench -m model -p prompt -n gen [-d depths] -ngl 99 -fa 1 -r reps -o json``;
        {"command", "seconds", "tests": parse_bench_json(stdout)}."""
        cmd = [str(self.tools["llama-bench"]), "-m", str(model), "-p", str(prompt), "-n", str(gen)]
        if depths:
            cmd += ["-d", ",".join(str(d) for d in depths)]
        cmd += ["-ngl", "99", "-fa", "1", "-r", str(self.reps), "-o", "json"]
        t = time.perf_counter()
        res = _run(cmd, self.timeout)
        tests = parse_bench_json(res.stdout)
        log("  llama-bench: " + ", ".join(f"{k} {v['avg_ts']:,.1f} tok/s" for k, v in tests.items()))
        return {"command": cmd, "seconds": time.perf_counter() - t, "tests": tests}

