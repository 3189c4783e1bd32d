"""The step graphs of the families that ran before Gemma/Granite/OLMo 2 were added stay exactly as
they were: decode and prefill, fused and unfused, compared with hashes recorded from the code
before that change (tests/fixtures/graph_snapshots.json). ``python tests/test_graph_snapshots.py``
re-records them (only for a deliberate change of these graphs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from graph_listing import graph_hash  # noqa: E402

from tinygraph.models import load_model  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
SNAP = FIX / "graph_snapshots.json"
FAMILIES = ["gpt2", "llama", "llama3", "mistral", "qwen2", "qwen3"]
GRAPHS = {"decode": (1, "argmax"), "prefill": (7, "logits"), "prefill_all": (7, "all_logits")}


def _hashes(fam: str) -> dict[str, str]:
    out = {}
    with load_model(FIX / fam, backend="numpy") as m:
        for key, (T, want) in GRAPHS.items():
            for fuse in (False, True):
                g, _, _ = m.step_graph(T, want, fuse=fuse)
                out[f"{key}.{'fused' if fuse else 'unfused'}"] = graph_hash(g)
    return out


@pytest.mark.parametrize("fam", FAMILIES)
def test_step_graphs_unchanged(fam):
    want = json.loads(SNAP.read_text())[fam]
    assert _hashes(fam) == want


if __name__ == "__main__":
    SNAP.write_text(json.dumps({f: _hashes(f) for f in FAMILIES}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAP}")
