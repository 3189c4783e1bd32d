"""tools/bench_serve.py end to end on the NumPy backend (a dry run of the H200 serving bench): a
tiny bench config written as a GGUF, served by tinygraph, loaded by loadgen with random
token-id prompts, one run per --clients value, the JSON and the table written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_serve_dry_run(tmp_path):
    out = tmp_path / "serve.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_serve.py"), "--tiny", "--backend", "numpy",
                        "--models", "smollm2", "--clients", "1,2", "--requests", "2,3", "--max-tokens", "4",
                        "--prompt-tokens", "9", "--kv-memory", "16M", "--max-context", "128", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(x["bench_model"], x["server"], x["clients"], x["requests"], x["ok"]) for x in runs] == \
        [("smollm2", "tinygraph", 1, 2, 2), ("smollm2", "tinygraph", 2, 3, 3)]
    assert all(x["completion_tokens"] == 4 * x["requests"] and x["ttft_ms_p50"] > 0 for x in runs)
    assert "| smollm2 | tinygraph | 2 | 3/3 |" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_serve.py"), "--models", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown model" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_serve.py"), "--clients", "1,64", "--requests", "1,2,3",
                        "--work-dir", str(tmp_path / "w")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "3 counts for 2" in r.stderr and not (tmp_path / "w").exists()
