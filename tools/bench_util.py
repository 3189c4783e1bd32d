"""Small helpers shared by the ``tools/bench*.py`` modules: logging, medians, error records,
guarded measurements, number formats, the floor arithmetic and the JSON writer."""
from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

GIB = 1 << 30
_T0 = time.perf_counter()


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



def _num(v: Any, kind: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "gb":
        return f"{v:.2f}"
    if kind == "gb3":
        return f"{v:.3f}"
    if kind == "rate":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if kind == "ms":
        return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"
    if kind == "pct":
        return f"{v:.1f}%"
    if kind == "x":
        return f"{v:.2f}x"
    return str(v)


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

