"""What a new user meets first: generation stops at the model's end-of-text, the CLI's help,
seed, stdin, context and dtype messages, and the interactive conversation. Runs the tiny LLaMA
fixture with a byte-level tokenizer and a ChatML template written here (no download)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygraph.models import CausalLM, load_model
from tinygraph.models.sampling import MIN_TEMPERATURE, effective_temperature
from tinygraph.run import _prompt, build_parser, main

FIX = Path(__file__).parent / "fixtures"
REF = np.load(FIX / "llama" / "reference.npz")
PROMPT_IDS = [int(i) for i in REF["input_ids"][0]]
GREEDY = [int(i) for i in REF["greedy"][0]]
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = "The capital of France is"


def _byte_tokenizer_json() -> str:
    """A byte-level BPE over the fixture's 256 ids: five special tokens, then bytes 5..255."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):  # GPT-2's byte -> character table
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {chars[b]: b for b in range(len(SPECIALS), 256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok.to_str()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The llama fixture with a tokenizer and chat template; its EOS is "</s>" (id 2)."""
    d = tmp_path_factory.mktemp("first_run") / "llama_tok"
    shutil.copytree(FIX / "llama", d)
    (d / "tokenizer.json").write_text(_byte_tokenizer_json())
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return d


def _greedy(d: Path, ids: list[int], n: int) -> list[int]:
    with load_model(d, backend="numpy") as m:
        return m.generate(ids, max_new_tokens=n, temperature=0, ignore_eos=True)[len(ids):]


@pytest.fixture(scope="module")
def eos_dir(model_dir, tmp_path_factory) -> tuple[Path, list[int], int]:
    """model_dir whose generation_config.json makes the 3rd greedy token of TEXT the EOS."""
    d = tmp_path_factory.mktemp("first_run_eos") / "m"
    shutil.copytree(model_dir, d)
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    new = _greedy(d, ids, 12)
    eos = new[2]
    assert eos not in new[:2]
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos]}))
    return d, new, eos


def _copy_with_eos(tmp_path: Path, eos: int, gen_eos: list[int] | None = None) -> Path:
    d = tmp_path / "m"
    shutil.copytree(FIX / "llama", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["eos_token_id"] = eos
    (d / "config.json").write_text(json.dumps(cfg))
    if gen_eos is not None:
        (d / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos}))
    return d


# -- the library -------------------------------------------------------------------------------
def test_generate_stops_at_the_models_eos_by_default(tmp_path):
    p = len(PROMPT_IDS)
    eos = GREEDY[p + 2]
    assert eos not in GREEDY[p:p + 2]
    with load_model(_copy_with_eos(tmp_path, eos), backend="numpy") as m:
        assert m.config.eos_token_ids == [eos]
        assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=0) == GREEDY[:p + 3]  # EOS included
        assert list(m.generate_stream(PROMPT_IDS, max_new_tokens=8, temperature=0)) == GREEDY[p:p + 3]
        assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=0, ignore_eos=True) == GREEDY
        assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=0, eos_token_id=[]) == GREEDY
        other = GREEDY[p + 5]  # an explicit id replaces the model's
        assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=0, eos_token_id=other) == GREEDY[:p + 6]
        assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=0, eos_token_id=np.int64(other),
                          ignore_eos=True) == GREEDY


def test_generation_config_eos_ids_stop_too(tmp_path):
    p = len(PROMPT_IDS)
    with load_model(_copy_with_eos(tmp_path, 255, gen_eos=[GREEDY[p + 4]]), backend="numpy") as m:
        assert set(m.config.eos_token_ids) == {255, GREEDY[p + 4]}
        assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=0) == GREEDY[:p + 5]


@pytest.mark.parametrize("bad", [7042.0, [2, 3.0], "2", True, [True], {"a": 1}, -1, [4, -2]])
def test_eos_token_id_of_a_wrong_type_is_a_value_error(bad):
    with load_model(FIX / "llama", backend="numpy") as m:
        with pytest.raises(ValueError, match=r"eos_token_id must be .*got " + repr(bad).replace("[", r"\[")
                           .replace("{", r"\{")):
            m.generate(PROMPT_IDS, max_new_tokens=2, eos_token_id=bad)


def test_tiny_temperatures_are_greedy():
    assert effective_temperature(MIN_TEMPERATURE) == MIN_TEMPERATURE
    assert effective_temperature(MIN_TEMPERATURE * 0.99) == 0.0 and effective_temperature(0.7) == 0.7
    with load_model(FIX / "llama", backend="numpy") as m:
        for t in (1e-38, 1e-40, 1e-45, 5e-7):  # 1e-38 sampled [.., 13, 13, 13, 69, ..] before
            for seed in (1, 2):
                assert m.generate(PROMPT_IDS, max_new_tokens=8, temperature=t, seed=seed, ignore_eos=True) == GREEDY


# -- the command line --------------------------------------------------------------------------
class _Stdin(io.TextIOWrapper):
    """A stdin of raw bytes; ``tty`` says whether it claims to be a terminal."""

    def __init__(self, data: bytes, tty: bool = False) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _cli(capsys, monkeypatch, *args, stdin: bytes | None = None, tty: bool = False) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin or b"", tty=tty))
    try:
        rc = main([*map(str, args)])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_stops_at_eos_and_does_not_print_it(capsys, monkeypatch, eos_dir):
    d, new, eos = eos_dir
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    rc, out, err = _cli(capsys, monkeypatch, "--model", d, "--prompt", TEXT, "--backend", "numpy",
                        "--max-new-tokens", 12)
    assert rc == 0, err
    assert out == TEXT + tok.decode(new[:2]) + "\n"
    assert "decode 2 tokens" in err  # the EOS was generated (and counted) but not printed
    rc, out, err = _cli(capsys, monkeypatch, "--model", d, "--prompt", TEXT, "--backend", "numpy",
                        "--max-new-tokens", 12, "--ignore-eos")
    assert rc == 0 and out == TEXT + tok.decode(new) + "\n"


def test_help_shows_every_default(capsys):
    p = build_parser()
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = "".join(capsys.readouterr().out.split())  # without whitespace: argparse wraps lines
    for a in p._actions:
        if a.dest == "help" or a.default is False:  # flags: off unless given
            continue
        h = p.formatter_class("x")._get_help_string(a)
        assert "default" in h, a.option_strings
        assert "".join((h % {"default": a.default}).split()) in text
    for shown in ("(default: 0.0)", "(default: 50)", "(default: 1.0)", "(default: auto)", "float32 on numpy",
                  "SmolLM2-135M-Instruct", "default: 64"):
        assert "".join(shown.split()) in text


def test_sampled_run_prints_the_seed_it_drew(capsys, monkeypatch, model_dir):
    base = ("--model", model_dir, "--prompt", TEXT, "--backend", "numpy", "--max-new-tokens", 10, "--ignore-eos",
            "--temperature", 0.9)
    rc, out, err = _cli(capsys, monkeypatch, *base)
    assert rc == 0
    seeds = [ln.split("--seed ")[1] for ln in err.splitlines() if "--seed " in ln]
    assert len(seeds) == 1 and seeds[0].isdigit()
    rc, out2, err2 = _cli(capsys, monkeypatch, *base, "--seed", seeds[0])
    assert rc == 0 and out2 == out and "--seed" not in err2
    rc, _, err3 = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", TEXT, "--backend", "numpy",
                       "--max-new-tokens", 2)
    assert rc == 0 and "seed" not in err3  # greedy: no seed to report


def test_stdin_prompt_loses_exactly_one_trailing_newline(capsys, monkeypatch, model_dir):
    args = build_parser().parse_args([])
    for data, want in ((b"abc\n\n", "abc\n"), (b"abc\r\n", "abc"), (b"abc", "abc"), (b"abc\n", "abc"),
                       ("é\n".encode(), "é")):
        monkeypatch.setattr(sys, "stdin", _Stdin(data))
        assert _prompt(args) == want
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--backend", "numpy", "--max-new-tokens", 1,
                        stdin=(TEXT + "\n").encode())
    assert rc == 0 and out.startswith(TEXT) and f"prompt {len(TEXT.encode())} tokens" in err


def test_invalid_utf8_on_stdin_is_one_line(model_dir):
    for extra in ((), ("--chat",)):
        r = subprocess.run([sys.executable, "-m", "tinygraph.run", "--model", str(model_dir), "--backend", "numpy",
                            *extra], input=b"caf\xe9 \xff\n", capture_output=True, timeout=300)
        err = r.stderr.decode()
        assert r.returncode == 2 and r.stdout == b"", err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "the prompt on stdin is not valid UTF-8 text (byte 0xe9 at offset 3)" in err


def test_over_long_prompt_is_refused_before_the_model_loads(capsys, monkeypatch, model_dir):
    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(CausalLM, "__init__", no_load)
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", "x" * 50, "--backend", "numpy",
                        "--max-context", 20)
    assert rc == 2 and out == ""
    assert err.strip() == ("python -m tinygraph.run: error: the prompt is 50 tokens, longer than the context of 20 "
                           "tokens: raise --max-context or shorten the prompt")


def test_context_full_notice_starts_its_own_line(model_dir):
    r = subprocess.run([sys.executable, "-m", "tinygraph.run", "--model", str(model_dir), "--backend", "numpy",
                        "--prompt", "abc", "--max-context", "12", "--max-new-tokens", "50", "--ignore-eos"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    text = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, text
    assert "\ntinygraph: context of 12 tokens is full" in text
    assert "\n\ntinygraph: context" not in text and "\n\ntinygraph: prompt" not in text


def test_max_new_tokens_0_prints_no_speeds(capsys, monkeypatch, model_dir):
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", TEXT, "--backend", "numpy",
                        "--max-new-tokens", 0)
    assert rc == 0 and out == TEXT + "\n"
    assert "tok/s" not in err


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_numpy_warns_once(capsys, monkeypatch, model_dir, dtype):
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", TEXT, "--backend", "numpy",
                        "--max-new-tokens", 2, "--dtype", dtype)
    assert rc == 0
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and dtype in warn[0] and "slow" in warn[0] and "--dtype float32" in warn[0]
    rc, _, err = _cli(capsys, monkeypatch, "--model", model_dir, "--prompt", TEXT, "--backend", "numpy",
                      "--max-new-tokens", 2)
    assert "warning" not in err


# -- the conversation --------------------------------------------------------------------------
@pytest.fixture
def prompts_seen(monkeypatch) -> list[list[int]]:
    """The prompt ids of every generate_stream call."""
    seen: list[list[int]] = []
    real = CausalLM.generate_stream

    def spy(self, input_ids, *a, **kw):
        seen.append(list(input_ids))
        return real(self, input_ids, *a, **kw)
    monkeypatch.setattr(CausalLM, "generate_stream", spy)
    return seen


def _decode(model_dir: Path, ids: list[int]) -> str:
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("how", ["interactive", "chat-on-a-tty"])
def test_conversation_keeps_the_history(capsys, monkeypatch, model_dir, prompts_seen, how):
    script = b"Hello there\n\nHow are you?\n/exit\nnot read\n"
    args = ("--interactive",) if how == "interactive" else ("--chat",)
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--backend", "numpy", "--max-new-tokens", 6,
                        *args, stdin=script, tty=how != "interactive")
    assert rc == 0, err
    assert len(prompts_seen) == 2  # the empty line is skipped, /exit leaves
    first, second = (_decode(model_dir, p) for p in prompts_seen)
    assert first == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    answer = out.split("\n")[0].removeprefix("> ") if how != "interactive" else out.split("\n")[0]
    assert second == (first + answer + "<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert "/exit or Ctrl-D leaves" in err


def test_conversation_ends_at_end_of_input_and_survives_bad_lines(capsys, monkeypatch, model_dir, prompts_seen):
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--backend", "numpy", "--max-new-tokens", 3,
                        "--interactive", stdin=b"one\n\xff\xfe\ntwo")
    assert rc == 0
    assert len(prompts_seen) == 2 and _decode(model_dir, prompts_seen[1]).endswith("user\ntwo<|im_end|>\n"
                                                                                   "<|im_start|>assistant\n")
    assert "this line of input is not valid UTF-8 text" in err


def test_ctrl_c_stops_only_the_answer(capsys, monkeypatch, model_dir, prompts_seen):
    real = CausalLM.generate_stream
    calls, yielded = [], []

    def interrupted(self, input_ids, *a, **kw):
        calls.append(1)
        inner = real(self, input_ids, *a, **kw)
        if len(calls) > 1:
            return inner

        def gen():
            for i, t in enumerate(inner):
                if i == 2:
                    raise KeyboardInterrupt
                yielded.append(t)
                yield t
        return gen()
    monkeypatch.setattr(CausalLM, "generate_stream", interrupted)
    rc, out, err = _cli(capsys, monkeypatch, "--model", model_dir, "--backend", "numpy", "--max-new-tokens", 5,
                        "--interactive", "--ignore-eos", stdin=b"first\nsecond\n")
    assert rc == 0 and len(calls) == 2
    assert "answer stopped" in err
    lines = out.split("\n")
    assert len(lines) == 3 and lines[2] == ""  # two answers, each on its line
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert len(yielded) == 2 and lines[0] == tok.decode(yielded)  # the first answer stopped after two tokens
    assert _decode(model_dir, prompts_seen[1]).startswith(_decode(model_dir, prompts_seen[0]))  # and was kept
