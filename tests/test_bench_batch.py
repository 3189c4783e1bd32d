"""tools/bench.py --batch without a GPU or llama.cpp: the argument checks, the rates of a batched
run from its step timeline, llama-batched-bench's output (both formats, as its source prints them),
the engine driven as generate_batch drives it, the tables, and the whole flow on the NumPy backend
against a stand-in llama-batched-bench."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_bench import _load, _synthetic_results, bc, bench
from test_bench_llamacpp import _TINY_RUN, _fake_llamacpp

bb = _load("bench_batch")

# stdout of `llama-batched-bench -m F -c 10240 -npp 32 -ntg 128 -npl 1,8,32,64 -ngl 99 -fa on`, laid out by
# tools/batched-bench/batched-bench.cpp's format strings (its LOG() lines go to stdout, the load logs and
# llama_perf_context_print to stderr), with the H200 anchor's SmolLM2 S_TG figures; T_PP made up.
BATCHED_MD = """

llama_batched_bench: n_kv_max = 16384, n_batch = 2048, n_ubatch = 512, flash_attn = 1, is_pp_shared = 0, \
is_tg_separate = 0, n_gpu_layers = 99, n_threads = 8, n_threads_batch = 8

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    32 |    128 |    1 |    160 |    0.004 |  7256.24 |    0.144 |   887.00 |    0.149 |  1075.87 |
|    32 |    128 |    8 |   1280 |    0.010 | 26890.76 |    0.240 |  4269.00 |    0.249 |  5132.55 |
|    32 |    128 |   32 |   5120 |    0.026 | 39218.69 |    0.359 | 11399.00 |    0.385 | 13283.53 |
|    32 |    128 |   64 |  10240 |    0.049 | 41881.39 |    0.415 | 19751.00 |    0.464 | 22084.97 |

"""
# the same run with --output-format jsonl (one object per line, "%f" numbers)
_JSONL_HEAD = ('{"n_kv_max": 16384, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 1, "is_pp_shared": 0, '
               '"n_gpu_layers": 99, "n_threads": 8, "n_threads_batch": 8, ')
BATCHED_JSONL = "\n".join(_JSONL_HEAD + r for r in (
    '"pp": 32, "tg": 128, "pl": 1, "n_kv": 160, "t_pp": 0.004410, "speed_pp": 7256.235840, "t_tg": 0.144307, '
    '"speed_tg": 887.000061, "t": 0.148717, "speed": 1075.871460}',
    '"pp": 32, "tg": 128, "pl": 8, "n_kv": 1280, "t_pp": 0.009520, "speed_pp": 26890.755859, "t_tg": 0.239869, '
    '"speed_tg": 4269.000000, "t": 0.249389, "speed": 5132.547852}',
    '"pp": 32, "tg": 128, "pl": 32, "n_kv": 5120, "t_pp": 0.026110, "speed_pp": 39218.687500, "t_tg": 0.359330, '
    '"speed_tg": 11399.000000, "t": 0.385440, "speed": 13283.528320}',
    '"pp": 32, "tg": 128, "pl": 64, "n_kv": 10240, "t_pp": 0.048900, "speed_pp": 41881.390625, "t_tg": 0.414764, '
    '"speed_tg": 19751.000000, "t": 0.463664, "speed": 22084.966797}')) + "\n\n"


# -- arguments ---------------------------------------------------------------------------------
def test_batch_sizes_and_argument_errors(capsys):
    assert bb.parse_batch_sizes("1,8,32,64") == [1, 8, 32, 64]
    assert bb.parse_batch_sizes(" 64, 1,8 ,8") == [1, 8, 64]           # sorted, repeats dropped
    assert bb.parse_batch_sizes("") == [] and bb.parse_batch_sizes(None) == []
    a = bench.parse_args(["--batch", "1,8,32,64"])
    assert a.batch == [1, 8, 32, 64] and not a.batch_only
    assert bench.parse_args([]).batch == []
    for bad, said in ((["--batch", "0"], "must be >= 1"), (["--batch", "4,-1"], "must be >= 1"),
                      (["--batch", "a,b"], "comma-separated integers"),
                      (["--batch", "1.5"], "comma-separated integers"),
                      (["--batch", ","], "comma-separated integers"), (["--batch", "2048"], "<= 1024"),
                      (["--batch-only"], "--batch-only needs --batch"),
                      (["--batch", "8", "--skip-f16", "--quant", "Q8_0"], "not with --skip-f16")):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
        err = capsys.readouterr().err
        assert said in err, (bad, err)
        assert "--batch" in err


# -- the rates of one run ----------------------------------------------------------------------
def test_batch_metrics_on_synthetic_timelines():
    # N = 3, T = 6, one step per ms: sequence i starts in step i and ends in step i + 5
    step_s = [0.001 * (k + 1) for k in range(8)]
    m = bb.batch_metrics(step_s, [1, 2, 3, 3, 3, 3, 2, 1], [0, 1, 2], [5, 6, 7])
    assert (m["last_first_step"], m["first_last_step"], m["decode_steps"]) == (2, 5, 3)
    assert m["decode_tokens"] == 9 and m["decode_tok_s"] == pytest.approx(9 / 0.003) and m["full_batch"]
    assert m["span_tok_s"] == pytest.approx(12 / 0.005)              # 3 + 3 + 3 + 2 + 1 after step 2
    assert m["e2e_tok_s"] == pytest.approx(18 / 0.008)
    assert m["ttft_s"] == step_s[:3] and m["ttft_median_ms"] == pytest.approx(2.0)
    assert m["ttft_last_ms"] == pytest.approx(3.0)
    # N = 1: the batch-1 decode rate, (new - 1) / (last - first token time)
    one = bb.batch_metrics([0.010, 0.012, 0.015, 0.016], [1, 1, 1, 1], [0], [3])
    assert one["decode_tok_s"] == pytest.approx(3 / 0.006) and one["decode_steps"] == 3
    # a stalled step (a preempted sequence) shows in full_batch and lowers the rate
    st = bb.batch_metrics(step_s, [1, 2, 3, 2, 3, 3, 2, 1], [0, 1, 2], [5, 6, 7])
    assert not st["full_batch"] and st["decode_tok_s"] == pytest.approx(8 / 0.003)
    # N >= T: the first sequence ends before the last starts; no full-batch span
    no = bb.batch_metrics([0.001, 0.002, 0.003], [1, 2, 1], [0, 1, 2], [1, 2, 2])
    assert no["decode_tok_s"] is None and "fewer sequences than new tokens" in no["note"]


# -- llama-batched-bench's output --------------------------------------------------------------
def test_parse_batched_bench_both_formats():
    md = bb.parse_batched_bench(BATCHED_MD)
    js = bb.parse_batched_bench("ggml_cuda_init: found 1 CUDA devices\n" + BATCHED_JSONL)
    assert list(md) == list(js) == ["1", "8", "32", "64"]
    assert [md[n]["speed_tg"] for n in md] == [887.0, 4269.0, 11399.0, 19751.0]
    for n in md:
        assert js[n]["speed_tg"] == pytest.approx(md[n]["speed_tg"], rel=1e-6)
        assert js[n]["t_tg"] == pytest.approx(md[n]["t_tg"], abs=5e-4)    # md rounds to 3 decimals
        assert md[n]["pp"] == js[n]["pp"] == 32 and md[n]["tg"] == js[n]["tg"] == 128
        assert md[n]["n_kv"] == js[n]["n_kv"] == int(n) * 160
    assert js["64"]["t_pp"] == 0.0489 and js["1"]["flash_attn"] == 1
    # S_TG is generated tokens over generation time
    assert js["64"]["speed_tg"] == pytest.approx(64 * 128 / js["64"]["t_tg"], rel=1e-5)
    with pytest.raises(ValueError, match="no llama-batched-bench results"):
        bb.parse_batched_bench("error: unable to load model\n")
    with pytest.raises(ValueError, match="two results for 8"):
        bb.parse_batched_bench(BATCHED_JSONL + BATCHED_JSONL.splitlines()[1])
    cmd = bb.batched_bench_command(Path("/b/llama-batched-bench"), Path("m.gguf"), [1, 8, 32, 64], 32, 128)
    assert " ".join(cmd[1:]) == ("-m m.gguf -c 10240 -npp 32 -ntg 128 -npl 1,8,32,64 -ngl 99 -fa on "
                                 "--output-format jsonl")


# -- the engine, driven as generate_batch drives it ------------------------------------------------
def test_run_batch_gives_generate_batchs_tokens(tmp_path):
    import warnings

    from tinygraph.models import load_model
    from tinygraph.models.engine import Engine

    hf = bc.tiny(bc.CONFIGS["smollm2"]["hf"])
    ckpt = bc.write_numpy_checkpoint(hf, tmp_path / "ckpt", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(ckpt), dtype="float32", backend="numpy", max_context=16)
    try:
        prompts = [[3, 17, 100, 5], [9, 250, 7, 1], [44, 2, 300, 12]]
        engine = Engine(model, max_batch=3, kv_memory=bb.kv_memory_for(model, 3, 16, 16))
        r = bb.run_batch(engine, prompts, 8)
        engine.close()
        want = model.generate_batch(prompts, max_new_tokens=8, temperature=0, ignore_eos=True, max_batch=3)
        assert r["tokens0"] == want[0]
        # the three prompts prefill together (one step, up to PREFILL_BATCH), then decode together
        assert r["first_step"] == [0, 0, 0] and r["last_step"] == [7, 7, 7] and r["kv_reused_tokens"] == 0
        assert r["decode_steps"] == 7 and r["full_batch"] and r["step_tokens"] == [3] * 8
    finally:
        model.close()


# -- tables ------------------------------------------------------------------------------------
def _batch_rec(tg: dict, ll: dict) -> dict:
    def part(vals: dict, key: str) -> dict:
        return {"sizes": {n: ({key: v} if not isinstance(v, dict) else v) for n, v in vals.items()}}
    return {"tinygraph": part(tg, "median_decode_tok_s"), "llamacpp": part(ll, "median_speed_tg")}


def test_batch_tables_on_synthetic_numbers():
    res = _synthetic_results()
    ms = res["models"]
    ms["smollm2"]["batch"] = _batch_rec({"1": 1600.0, "8": 9000.0, "64": 40_000.0},
                                        {"1": 887.0, "8": 4269.0, "64": {"missing": "no row"}})
    ms["smollm2"]["batch"]["tinygraph"]["sizes"]["8"].update(median_ttft_median_ms=5.0, median_ttft_last_ms=9.25)
    ms["smollm2"]["batch"]["llamacpp"]["sizes"]["8"]["median_t_pp_ms"] = 9.5
    ms["tinyllama"]["batch"] = _batch_rec({"1": 900.0, "8": 6000.0, "64": 32_000.0},
                                          {"1": 735.0, "8": 3386.0, "64": 20_935.0})
    ms["gpt2"]["batch"] = {"tinygraph": {"error": "RuntimeError: boom"}, "llamacpp": {"skipped": "no tool"}}
    rows = {n: bb.batch_row(n, m, [1, 8, 64]) for n, m in ms.items()}
    s = rows["smollm2"]["sizes"]
    assert s["8"]["x"] == pytest.approx(9000 / 4269) and s["64"]["llamacpp"] == "-" and s["64"]["x"] == "-"
    assert rows["smollm2"]["goal"] == ">= 2x ?"                    # N=64 has no llama.cpp figure
    assert rows["tinyllama"]["goal"] == ">= 1.5x ✓"
    assert rows["gpt2"]["sizes"]["8"]["tinygraph"] == "err" and rows["gpt2"]["sizes"]["8"]["llamacpp"] == "skip"
    assert rows["gpt2"]["goal"] == "-" and rows["qwen3-8b"]["sizes"]["1"]["x"] == "err"    # never built
    ms["tinyllama"]["batch"]["tinygraph"]["sizes"]["8"]["median_decode_tok_s"] = 5000.0    # 1.48x
    assert bb.batch_row("tinyllama", ms["tinyllama"], [1, 8, 64])["goal"] == ">= 1.5x ✗"

    assert bb.batch_sizes_of(res) == [1, 8, 64]
    table, ttft = bb.format_batch_tables(res)
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["model", "tinygraph N=1", "llama.cpp N=1", "x", "tinygraph N=8", "llama.cpp N=8", "x",
                    "tinygraph N=64", "llama.cpp N=64", "x", "goal at N=8/32/64"]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["SmolLM2-135M", "1,600", "887", "1.80x", "9,000", "4,269", "2.11x", "40,000", "-", "-", ">= 2x ?"]
    assert len({len(line) for line in lines}) == 1 and len(lines) == 2 + len(ms)
    trow = [c.strip() for c in ttft.splitlines()[2].strip("|").split("|")]
    assert trow[3:5] == ["5.0 / 9.2", "9.5"]
    notes = bb.batch_notes(res)
    assert "smollm2 batch llamacpp N=64: no row" in notes and "gpt2 batch tinygraph: RuntimeError: boom" in notes
    assert "gpt2 batch llamacpp: no tool" in notes


# -- the whole flow on the NumPy backend, against a stand-in llama-batched-bench -------------------
# answers in the JSONL layout of the real tool; like it, it leaves out an N whose N * (npp + ntg)
# exceeds -c, and reports S_TG = 1000 * N
_FAKE_BATCHED = """#!{py}
import sys
a = sys.argv[1:]
open(__file__ + ".calls", "a").write(" ".join(a) + "\\n")
opt = lambda f: a[a.index(f) + 1]
pp, tg, ctx = int(opt("-npp")), int(opt("-ntg")), int(opt("-c"))
assert opt("-fa") == "on" and opt("--output-format") == "jsonl" and opt("-ngl") == "99"
print("llama_model_loader: loaded meta data", file=sys.stderr)
for pl in [int(x) for x in opt("-npl").split(",")]:
    if pl * (pp + tg) > ctx:
        continue
    t_tg = pl * tg / (1000.0 * pl)
    print('{{"n_kv_max": %d, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 1, "is_pp_shared": 0, "n_gpu_layers": 99, '
          '"n_threads": 8, "n_threads_batch": 8, "pp": %d, "tg": %d, "pl": %d, "n_kv": %d, "t_pp": %f, "speed_pp": %f, '
          '"t_tg": %f, "speed_tg": %f, "t": %f, "speed": %f}}' % (ctx, pp, tg, pl, pl * (pp + tg), 0.002 * pl,
          pp / 0.002, t_tg, pl * tg / t_tg, 0.002 * pl + t_tg, (pl * pp + pl * tg) / (0.002 * pl + t_tg)))
print()
"""


def _fake_with_batched(root: Path) -> Path:
    fake = _fake_llamacpp(root)
    f = fake / "bin" / "llama-batched-bench"
    f.write_text(_FAKE_BATCHED.replace("{py}", sys.executable).replace("{{", "{").replace("}}", "}"))
    f.chmod(0o755)
    return fake


def test_batch_only_end_to_end_and_merge(tmp_path, capsys):
    fake = _fake_with_batched(tmp_path / "ll")
    out, full, merged = tmp_path / "b.json", tmp_path / "f.json", tmp_path / "m.json"
    assert bench.main(_TINY_RUN + ["--models", "smollm2", "--batch", "1,2,3", "--batch-only", "--runs", "2",
                                   "--llamacpp", str(fake), "--contexts", "", "--gguf-dir", str(tmp_path / "g"),
                                   "--json", str(out), "--work-dir", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    m = r["models"]["smollm2"]
    assert m["tinygraph"] == {"skipped": "--batch-only"} and m["hf"] == {"skipped": "--batch-only"}
    assert "llamacpp" not in m and list(m["gguf"]) == ["F16"]          # no llama-bench, no --quant runs
    tg = m["batch"]["tinygraph"]
    eng = tg["engine"]
    assert eng["max_batch"] == 3 and eng["kv_memory"] == 3 * 16 * eng["token_bytes"] and eng["warmup_graphs"] > 0
    assert tg["load"]["max_context"] == 5 + 6 and tg["match_generate"]["common_prefix"] == 6
    for n in (1, 2, 3):
        s = tg["sizes"][str(n)]
        assert len(s["runs"]) == 2 and len(s["warmup"]) == 1 and s["full_batch"]
        run = s["runs"][0]
        # the n prompts prefill in one step (n <= PREFILL_BATCH): all decode together from step 0
        assert run["decode_steps"] == 5 and run["decode_tokens"] == n * 5 and run["kv_reused_tokens"] == 0
        assert sum(run["step_tokens"]) == 6 * n and len(run["step_s"]) == run["steps"] == 6
        assert s["median_decode_tok_s"] > 0 and s["median_ttft_last_ms"] >= s["median_ttft_median_ms"] > 0
    ll = m["batch"]["llamacpp"]
    assert ll["command"][2] == m["gguf"]["F16"]["path"] and len(ll["runs"]) == 2
    assert [ll["sizes"][n]["median_speed_tg"] for n in ("1", "2", "3")] == [1000.0, 2000.0, 3000.0]
    calls = (fake / "bin" / "llama-batched-bench.calls").read_text().splitlines()
    assert len(calls) == 2 and "-c 33 -npp 5 -ntg 6 -npl 1,2,3 -ngl 99 -fa on --output-format jsonl" in calls[0]
    row = [c.strip() for c in r["batch_table"].splitlines()[2].strip("|").split("|")]
    x3 = tg["sizes"]["3"]["median_decode_tok_s"] / 3000.0
    assert row[0] == "SmolLM2-135M (tiny)" and row[8] == "3,000" and row[9] == f"{x3:.2f}x" and row[10] == "-"
    assert r["definitions"]["batch_decode_tok_s"].startswith("tinygraph: tokens made")
    printed = capsys.readouterr().out
    assert "### Batched decode tok/s: N sequences of 5-token random prompts" in printed
    assert "decode tok/s | prefill-512" not in printed                 # no batch-1 table in a --batch-only run

    # the full flow: batch-1 measurements, then the batch runs (before bench_quant deletes the checkpoint),
    # llama-bench and llama-batched-bench on the F16 GGUF; a size past the stand-in's context is missing
    assert bench.main(_TINY_RUN + ["--models", "smollm2", "--batch", "2", "--llamacpp", str(fake), "--contexts", "",
                                   "--json", str(full), "--work-dir", str(tmp_path)]) == 0
    f = json.loads(full.read_text())["models"]["smollm2"]
    assert f["tinygraph"]["decode"]["median_decode_tok_s"] > 0 and "F16" in f["llamacpp"]
    assert list(f["batch"]["tinygraph"]["sizes"]) == ["2"] and f["batch"]["llamacpp"]["sizes"]["2"]["median_speed_tg"]
    # --merge: the full run keeps its batch-1 results and takes the --batch-only run's batch record
    assert bench.main(["--merge", str(full), str(out), "--json", str(merged)]) == 0
    mm = json.loads(merged.read_text())
    assert mm["models"]["smollm2"]["tinygraph"]["decode"]["median_decode_tok_s"] > 0
    assert list(mm["models"]["smollm2"]["batch"]["tinygraph"]["sizes"]) == ["1", "2", "3"]
    assert "tinygraph N=3" in mm["batch_table"]
    assert not list(tmp_path.glob("tinygraph-bench-*"))


def test_missing_sizes_and_tool(tmp_path, monkeypatch):
    fake = _fake_with_batched(tmp_path / "ll")

    class A:
        batch, prompt_tokens, new_tokens, runs, llamacpp_timeout = [1, 4, 64], 32, 128, 1, 60.0

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    rec = bb.bench_batch_llamacpp(str(fake), gguf, A())
    assert rec["sizes"]["64"]["median_speed_tg"] == 64_000.0           # -c = 64 * 160 holds every size
    real = bb.batched_bench_command

    def small_context(*a):                                             # -c too small for N >= 4
        cmd = real(*a)
        cmd[cmd.index("-c") + 1] = "400"
        return cmd

    monkeypatch.setattr(bb, "batched_bench_command", small_context)
    rec = bb.bench_batch_llamacpp(str(fake), gguf, A())
    assert rec["sizes"]["1"]["median_speed_tg"] == 1000.0 and rec["sizes"]["1"]["median_t_pp_ms"] == pytest.approx(2.0)
    assert "printed no row for 4 sequences" in rec["sizes"]["4"]["missing"] and "missing" in rec["sizes"]["64"]
    (fake / "bin" / "llama-batched-bench").unlink()
    assert "no executable llama-batched-bench" in bb.bench_batch_llamacpp(str(fake), gguf, A())["skipped"]
