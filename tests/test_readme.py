"""The README's graph-API example runs as written, and its two quick-start commands are the ones CI uses."""
from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_graph_api_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "2 (1, 3)" in out and "arena peak" in out


def test_quick_start_commands_match_ci():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert len(blocks) == 2
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[dev]"' in ci and 'pip install -e ".[dev]"' in blocks[0]
    assert blocks[1].strip() in ci
