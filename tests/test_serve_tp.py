"""``python -m tinygraph.serve --tensor-parallel 2`` under ``tinygraph.launch`` on NumPy ranks:
rank 0 serves the OpenAI API while rank 1 follows its steps (``models/lockstep.py``); greedy
answers equal the one-process server's, including with requests batched together and one
cancelled mid-stream; stopping the launcher stops both ranks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from conftest import free_port  # noqa: E402
from test_serve import make_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("serve_tp") / "tiny")


def _start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, *cmd], stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stderr:
        if "tinygraph: serving" in line:
            return p, line.split(" at ")[-1].split()[0]
    p.wait(30)
    raise AssertionError(f"no startup line (exit {p.returncode})")


def _answers(url: str) -> list[str]:
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
    prompts = ["hello there", "the cat sat on", "x", "numbers: 1 2 3"]
    out: list[str | None] = [None] * len(prompts)

    def one(i: int) -> None:
        out[i] = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=12, temperature=0).choices[0].text

    # a stream closed after two chunks: the server cancels it, at a step boundary on both ranks
    stream = c.completions.create(model="tiny", prompt="a long one", max_tokens=40, temperature=0, stream=True)
    for k, _ in enumerate(stream):
        if k == 1:
            break
    stream.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.append(c.completions.create(model="tiny", prompt="after", max_tokens=8, temperature=0.9, seed=7)
               .choices[0].text)
    return out  # type: ignore[return-value]


def test_two_rank_server_answers_as_one_process(model_dir):
    args = ["--model", str(model_dir), "--backend", "numpy", "--port", "0", "--kv-memory", "1M", "--max-batch", "4"]
    one, url = _start(["-m", "tinygraph.serve", *args])
    try:
        want = _answers(url)
    finally:
        one.send_signal(signal.SIGINT)
        assert one.wait(30) == 0
    tp, url = _start(["-m", "tinygraph.launch", "--gpus", "2", "--master-port", str(free_port()), "--grace", "5",
                      "-m", "tinygraph.serve", *args, "--tensor-parallel", "2"])
    try:
        got = _answers(url)
        assert got[:-1] == want[:-1]  # greedy: the same text as one process
        assert got[-1] and isinstance(got[-1], str)  # a seeded sample runs too (sums in another order)
        assert _answers(url)[:-1] == want[:-1]  # and again: the ranks are still in step
    finally:
        tp.send_signal(signal.SIGINT)
        tp.wait(60)
    assert tp.returncode in (0, 130)
