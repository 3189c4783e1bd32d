"""``python -m tinygraph.run`` error paths: each exits non-zero with exactly one line on stderr
(a full traceback only with --debug). Uses the tiny fixtures and temporary files only; never the
default (downloaded) model."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinygraph.run import main

FIX = Path(__file__).parent / "fixtures"


def _run_inproc(capsys, *args) -> tuple[int, str]:
    try:
        rc = main([*args])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err


def _one_line(rc: int, err: str, pattern: str) -> None:
    import re

    assert rc not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture()
def bad_models(tmp_path) -> dict[str, Path]:
    d = {}
    d["missing"] = tmp_path / "nope" / "model.safetensors"
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text("{}")
    d["noweights"] = tmp_path / "noweights"
    d["garbage"] = tmp_path / "garbage.safetensors"
    d["garbage"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    trunc = tmp_path / "trunc"
    shutil.copytree(FIX / "llama", trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    d["truncated"] = trunc
    d["pickle"] = tmp_path / "pytorch_model.bin"
    d["pickle"].write_bytes(b"\x80\x04\x95junk")
    d["gguf"] = tmp_path / "bad.gguf"
    d["gguf"].write_bytes(b"GGUF\x07\x00\x00\x00" + b"\x00" * 16)
    d["badconfig"] = tmp_path / "badconfig"
    shutil.copytree(FIX / "llama", d["badconfig"])
    (d["badconfig"] / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    return d


@pytest.mark.parametrize("which,pattern", [
    ("missing", r"model path .*nope.* does not exist"),
    ("noweights", r"holds no .safetensors file"),
    ("garbage", r"garbage.safetensors: header is not valid UTF-8 JSON"),
    ("truncated", r"model.safetensors: .*(outside the data buffer|exceeds the file)"),
    ("pickle", r"pytorch_model.bin: PyTorch pickle checkpoints are not loaded"),
    ("gguf", r"bad.gguf: GGUF version 7 is not supported"),
    ("badconfig", r"config.json: config \(llama\): required key .* is missing"),
])
def test_bad_model_paths(capsys, bad_models, which, pattern):
    rc, err = _run_inproc(capsys, "--model", str(bad_models[which]), "--prompt", "hi", "--backend", "numpy")
    _one_line(rc, err, r"^python -m tinygraph.run: error: .*" + pattern)


def test_model_without_tokenizer_given_text(capsys):
    rc, err = _run_inproc(capsys, "--model", str(FIX / "llama"), "--prompt", "hello", "--backend", "numpy")
    _one_line(rc, err, r"has no tokenizer \(tokenizer.json or GGUF vocabulary\) to encode the prompt")


@pytest.mark.parametrize("args,pattern", [
    (["--temperature", "-1"], r"--temperature must be a finite number >= 0, got -1"),
    (["--top-p", "2"], r"--top-p must be in \(0, 1\], got 2"),
    (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
    (["--top-k", "-3"], r"--top-k must be >= 0, got -3"),
    (["--max-new-tokens", "-1"], r"--max-new-tokens must be >= 0"),
    (["--max-context", "0"], r"--max-context must be >= 1, got 0"),
    (["--seed", "-5"], r"--seed must be >= 0, got -5"),
    (["--temperature", "nan"], r"--temperature must be a finite number >= 0, got nan"),
    (["--temperature", "inf"], r"--temperature must be a finite number >= 0, got inf"),
    (["--max-new-tokens", "x"], r"argument --max-new-tokens: invalid int value: 'x'"),
    (["--backend", "tpu"], r"argument --backend: invalid choice: 'tpu'"),
    (["--dtype", "int8"], r"argument --dtype: invalid choice"),
    (["--frobnicate"], r"unrecognized arguments: --frobnicate"),
    (["--dump-graph", "/nonexistent-dir/x.dot"], r"--dump-graph: directory '/nonexistent-dir' does not exist"),
])
def test_bad_arguments(capsys, args, pattern):
    rc, err = _run_inproc(capsys, "--model", str(FIX / "llama"), "--prompt", "hi", "--backend", "numpy", *args)
    _one_line(rc, err, pattern)


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinygraph.run", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_real_process_exit_codes_and_debug(bad_models):
    r = _cli("--model", str(bad_models["garbage"]), "--prompt", "hi", "--backend", "numpy")
    assert r.returncode == 2 and r.stdout == ""
    _one_line(r.returncode, r.stderr, "header is not valid UTF-8 JSON")
    r = _cli("--model", str(bad_models["garbage"]), "--prompt", "hi", "--backend", "numpy", "--debug")
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "LoadError" in r.stderr
    r = _cli("--max-new-tokens", "x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_multiline_and_empty_messages_become_one_line():
    from tinygraph.run import _one_line as fmt

    assert fmt(ValueError("first\nsecond")) == "first [...] (--debug shows the details)"
    assert fmt(MemoryError()) == "MemoryError"
    assert fmt(KeyError("x")) == "'x'"
