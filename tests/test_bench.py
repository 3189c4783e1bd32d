"""tools/bench.py without a GPU or torch: configs and parameter counts, the floor arithmetic,
the table and JSON on synthetic numbers, and a tiny end-to-end run on the NumPy backend."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bc = _load("bench_configs")
bench = _load("bench")


# -- configs --------------------------------------------------------------------------------
def test_five_configs_with_published_fields():
    assert list(bc.CONFIGS) == ["gpt2", "smollm2", "qwen3-0.6b", "tinyllama", "qwen3-8b", "gemma2-2b", "phi3-mini",
                                "llama3-70b"]
    assert list(bc.DEFAULT_MODELS) == list(bc.CONFIGS)[:5]
    big = bc.CONFIGS["llama3-70b"]["hf"]  # meta-llama/Meta-Llama-3-70B's config.json
    assert (big["hidden_size"], big["num_hidden_layers"], big["num_attention_heads"], big["num_key_value_heads"],
            big["intermediate_size"], big["vocab_size"], big["rope_theta"], big["rms_norm_eps"]) == \
        (8192, 80, 64, 8, 28672, 128256, 500000.0, 1e-5)
    g = bc.CONFIGS["gpt2"]["hf"]
    assert (g["n_embd"], g["n_layer"], g["n_head"], g["vocab_size"], g["n_positions"]) == (768, 12, 12, 50257, 1024)
    s = bc.CONFIGS["smollm2"]["hf"]
    assert (s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"], s["num_key_value_heads"],
            s["intermediate_size"], s["vocab_size"], s["rope_theta"], s["max_position_embeddings"],
            s["rms_norm_eps"], s["tie_word_embeddings"]) == (576, 30, 9, 3, 1536, 49152, 1e5, 8192, 1e-5, True)
    q = bc.CONFIGS["qwen3-0.6b"]["hf"]
    assert (q["hidden_size"], q["num_hidden_layers"], q["num_attention_heads"], q["num_key_value_heads"],
            q["head_dim"], q["intermediate_size"], q["vocab_size"], q["tie_word_embeddings"],
            q["rope_theta"], q["max_position_embeddings"], q["rms_norm_eps"]) == \
        (1024, 28, 16, 8, 128, 3072, 151936, True, 1e6, 40960, 1e-6)
    t = bc.CONFIGS["tinyllama"]["hf"]
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["num_key_value_heads"],
            t["intermediate_size"], t["vocab_size"], t["rope_theta"], t["max_position_embeddings"],
            t["tie_word_embeddings"], t["rms_norm_eps"]) == (2048, 22, 32, 4, 5632, 32000, 1e4, 2048, False, 1e-5)
    e = bc.CONFIGS["qwen3-8b"]["hf"]
    assert (e["hidden_size"], e["num_hidden_layers"], e["num_attention_heads"], e["num_key_value_heads"],
            e["head_dim"], e["intermediate_size"], e["vocab_size"], e["tie_word_embeddings"],
            e["rope_theta"], e["max_position_embeddings"], e["rms_norm_eps"]) == \
        (4096, 36, 32, 8, 128, 12288, 151936, False, 1e6, 40960, 1e-6)
    for c in bc.CONFIGS.values():
        json.dumps(c)                                  # plain dicts


@pytest.mark.parametrize("name,approx", [("gpt2", 124.4e6), ("smollm2", 134.5e6), ("qwen3-0.6b", 596e6),
                                         ("tinyllama", 1.100e9), ("qwen3-8b", 8.19e9), ("gemma2-2b", 2.614e9),
                                         ("phi3-mini", 3.821e9)])
def test_param_counts(name, approx):
    hf = bc.CONFIGS[name]["hf"]
    n = bc.param_count(hf)
    assert n == bc.EXPECTED_PARAMS[name]
    assert abs(n - approx) / approx < 2e-3
    # the tensors save_pretrained writes add up to the same count (computed independently)
    assert sum(math.prod(s) for s in bc.hf_tensor_shapes(hf).values()) == n


def test_param_count_details():
    # Qwen3-8B's untied head is counted: 151936 * 4096 twice
    e = bc.CONFIGS["qwen3-8b"]["hf"]
    untied = bc.param_count(e)
    tied = bc.param_count({**e, "tie_word_embeddings": True})
    assert untied - tied == 151936 * 4096
    assert "lm_head.weight" in bc.hf_tensor_shapes(e)
    assert "lm_head.weight" not in bc.hf_tensor_shapes(bc.CONFIGS["qwen3-0.6b"]["hf"])
    # GPT-2: Conv1D weights stored [in, out]
    shapes = bc.hf_tensor_shapes(bc.CONFIGS["gpt2"]["hf"])
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (768, 2304)
    assert shapes["transformer.wpe.weight"] == (1024, 768)
    # KV bytes per token: 2 (K and V) * layers * kv_heads * head_dim * 2 bytes
    assert bc.kv_bytes_per_token(e) == 2 * 36 * 8 * 128 * 2


@pytest.mark.parametrize("name", list(bc.CONFIGS))
def test_tiny_keeps_the_layout(name):
    hf = bc.CONFIGS[name]["hf"]
    t = bc.tiny(hf)
    a, b = bc.dims(hf), bc.dims(t)
    assert b["family"] == a["family"] and b["tied"] == a["tied"] and b["max_pos"] == a["max_pos"]
    assert b["heads"] % b["kv_heads"] == 0 and b["hidden"] <= 96 and b["layers"] == 2
    assert ("head_dim" in t) == ("head_dim" in hf)
    assert bc.param_count(t) == sum(math.prod(s) for s in bc.hf_tensor_shapes(t).values())
    assert bc.param_count(t) < 300_000
    assert hf == bc.CONFIGS[name]["hf"]               # not modified in place


# -- floor arithmetic -----------------------------------------------------------------------
def test_floor_arithmetic():
    n = 2 << 30
    bw = bench.copy_bandwidth(n, 1.4316e-3)            # 2 GiB read + 2 GiB written in 1.43 ms
    assert bw == pytest.approx(3.0e12, rel=1e-3)
    assert bench.floor_tok_s(3.0e12, 270_000_000) == pytest.approx(11_111.1, rel=1e-4)
    assert bench.floor_tok_s(3.0e12, 16_380_000_000) == pytest.approx(183.15, rel=1e-3)
    assert bench.floor_tok_s(None, 1) is None and bench.floor_tok_s(1.0, 0) is None


def test_token_match():
    a = list(range(40))
    b = list(range(12)) + [999] + list(range(13, 40))
    m = bench.token_match(a, b)
    assert m["first10"] == 10 and m["first32"] == 31 and m["common_prefix"] == 12 and m["n32"] == 32
    assert bench.token_match(a, None) is None
    short = bench.token_match([1, 2, 3], [1, 2, 4])
    assert short["first10"] == 2 and short["n10"] == 3


def _synthetic_results() -> dict:
    ok = {
        "label": "SmolLM2-135M", "params": 134_515_008,
        "tinygraph": {
            "load": {"seconds": 1.0, "weight_bytes": 270_000_000, "max_context": 8192},
            "decode": {"median_decode_tok_s": 5000.0, "median_ttft_ms": 4.25, "decode_tok_s": [4900.0, 5000.0, 5100.0]},
            "prefill": {"median_tok_s": 90_000.0},
            "contexts": {"2048": {"median_decode_tok_s": 4000.0}, "8192": {"error": "CudaError: boom"}},
        },
        "hf": {"eager": {"median_decode_tok_s": 30.0, "tokens": [1, 2, 3]},
               "compile": {"median_decode_tok_s": 300.0}, "prefill": {"median_tok_s": 22650.0}},
        "match": {"first10": 10, "n10": 10, "first32": 29, "n32": 32, "common_prefix": 29},
    }
    gpt2 = {
        "label": "GPT-2 124M", "params": 124_439_808,
        "tinygraph": {
            "load": {"seconds": 1.0, "weight_bytes": 250_000_000, "max_context": 512},
            "decode": {"error": "RuntimeError: kernel failed"},
            "prefill": {"median_tok_s": 120_000.0},
            "contexts": {"2048": {"skipped": "2048 exceeds the model's max_position_embeddings 1024"},
                         "8192": {"skipped": "8192 exceeds the model's max_position_embeddings 1024"}},
        },
        "hf": {"eager": {"median_decode_tok_s": 137.0}, "compile": {"error": "BackendCompilerFailed: x"}},
        "match": None,
    }
    broken = {"label": "Qwen3-8B", "params": 8_190_735_360, "error": "OutOfMemoryError: CUDA out of memory"}
    nohf = {
        "label": "TinyLlama-1.1B", "params": 1_100_048_384,
        "tinygraph": {"load": {"weight_bytes": 2_200_000_000}, "decode": {"median_decode_tok_s": 1200.0,
                                                                         "median_ttft_ms": 12.0},
                      "prefill": {"median_tok_s": 20_000.0}, "contexts": {}},
        "hf": {"skipped": "--no-hf"}, "match": None,
    }
    return {"models": {"smollm2": ok, "gpt2": gpt2, "qwen3-8b": broken, "tinyllama": nohf}}


def test_summary_and_table_on_synthetic_numbers():
    res = _synthetic_results()
    ctx = [2048, 8192]
    rows = [bench.summarize(m, ctx, 3.0e12) for m in res["models"].values()]
    ok, gpt2, broken, nohf = rows
    assert ok["floor_tok_s"] == pytest.approx(11_111.1, rel=1e-4)
    assert ok["pct_floor"] == pytest.approx(45.0, rel=1e-4)
    assert ok["x_eager"] == pytest.approx(5000 / 30) and ok["x_compile"] == pytest.approx(5000 / 300)
    assert ok["contexts"] == {"2048": 4000.0, "8192": "err"}
    assert ok["match"] == "10/10 29/32"
    assert ok["weights_gb"] == pytest.approx(0.27)
    assert gpt2["decode_tok_s"] == "err" and gpt2["pct_floor"] == "err" and gpt2["x_eager"] == "err"
    assert gpt2["contexts"] == {"2048": "skip", "8192": "skip"} and gpt2["hf_compile_tok_s"] == "err"
    assert gpt2["prefill_tok_s"] == 120_000.0
    assert broken["decode_tok_s"] == "err" and broken["hf_eager_tok_s"] == "err"
    assert broken["weights_gb"] == pytest.approx(16.38, rel=1e-3)
    assert nohf["hf_eager_tok_s"] == "-" and nohf["x_eager"] == "-" and nohf["contexts"] == {"2048": "-", "8192": "-"}

    table = bench.format_table(rows, ctx)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["model", "weights GB", "decode tok/s", "prefill-512 tok/s", "TTFT ms", "decode@2k",
                    "decode@8k", "% floor", "HF eager", "HF compile", "x vs eager", "x vs compile",
                    "tokens match", "fp32 ref: tg vs HF"]
    assert len({len(line) for line in lines}) == 1          # aligned
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["SmolLM2-135M", "0.27", "5,000", "90,000", "4.2", "4,000", "err", "45.0%", "30.0",
                     "300", "166.67x", "16.67x", "10/10 29/32", "-"]
    gcells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert gcells[2] == "err" and gcells[5:7] == ["skip", "skip"] and gcells[9] == "err"
    assert "err" in lines[4] and "16.38" in lines[4]

    res["models"]["smollm2"]["summary"] = ok
    notes = bench.notes_for(res)
    assert any("gpt2 decode@2k: skipped" in n for n in notes)
    assert any("qwen3-8b: OutOfMemoryError" in n for n in notes)
    assert any("gpt2 HF compile: BackendCompilerFailed" in n for n in notes)
    assert any("smollm2 decode@8k: CudaError" in n for n in notes)


def test_number_formats():
    assert bench._num(12.345, "rate") == "12.3" and bench._num(1234.5, "rate") == "1,234"
    assert bench._num(None, "rate") == "-" and bench._num("skip", "rate") == "skip"
    assert bench._num(float("nan"), "x") == "-" and bench._num(2.5, "x") == "2.50x"
    assert bench.context_label(2048) == "decode@2k" and bench.context_label(3000) == "decode@3000"
    assert bench.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_args():
    a = bench.parse_args(["--quick", "--models", "gpt2,smollm2"])
    assert a.runs == 2 and a.contexts == [] and a.model_list == ["gpt2", "smollm2"]
    a = bench.parse_args([])
    assert a.runs == 3 and a.contexts == [2048, 8192] and a.model_list == list(bc.DEFAULT_MODELS)
    assert a.new_tokens == 128 and a.prompt_tokens == 32 and a.prefill_tokens == 512
    assert a.context_decode_tokens == 128 and a.quant_types == [] and a.llamacpp is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "gpt5"])


# -- end to end on the NumPy backend (tiny configs, no torch) ----------------------------------
def test_tiny_numpy_run_end_to_end(tmp_path, monkeypatch, capsys):
    real = bc.write_numpy_checkpoint

    def flaky(hf, out_dir, **kw):                      # the first model fails to build
        if hf["model_type"] == "gpt2":
            raise RuntimeError("synthetic build failure")
        return real(hf, out_dir, **kw)

    monkeypatch.setattr(bc, "write_numpy_checkpoint", flaky)
    out = tmp_path / "r.json"
    rc = bench.main(["--tiny", "--backend", "numpy", "--builder", "numpy", "--models", "gpt2,smollm2,qwen3-0.6b",
                     "--runs", "1", "--warmup", "1", "--warmup-seconds", "0", "--new-tokens", "6", "--prompt-tokens", "5", "--prefill-tokens", "16",
                     "--contexts", "96,100000", "--context-decode-tokens", "4", "--prefill-chunk", "40",
                     "--copy-reps", "2", "--json", str(out), "--work-dir", str(tmp_path)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["command"].endswith("--json " + str(out) + " --work-dir " + str(tmp_path))
    assert r["device"]["backend"] == "numpy" and r["floor"]["bandwidth_Bps"] > 0
    assert "synthetic build failure" in r["models"]["gpt2"]["error"]
    for name in ("smollm2", "qwen3-0.6b"):
        m = r["models"][name]
        tg = m["tinygraph"]
        assert tg["load"]["weight_bytes"] > 0
        d = tg["decode"]
        assert len(d["tokens"]) == 6 and len(d["runs"]) == 1 and len(d["runs"][0]["step_s"]) == 5
        assert len(d["warmup"]) == 1 and len(tg["contexts"]["96"]["warmup"]) == 1
        assert d["median_decode_tok_s"] > 0 and d["median_ttft_ms"] > 0
        assert tg["prefill"]["tokens"] == 16 and tg["prefill"]["median_tok_s"] > 0
        c = tg["contexts"]["96"]
        assert c["prompt_tokens"] == 96 and c["decode_tokens"] == 4 and c["median_decode_tok_s"] > 0
        assert tg["load"]["max_context"] == 100           # depth 96 + 4 decode steps
        assert "exceeds" in tg["contexts"]["100000"]["skipped"]
        assert m["hf"] == {"skipped": "--builder numpy"}
        assert m["summary"]["pct_floor"] > 0
    assert [ln for ln in r["table"].splitlines() if ln.startswith("| GPT-2")][0].count("err") >= 3
    printed = capsys.readouterr().out
    assert "| SmolLM2-135M (tiny)" in printed and "decode@100000" in printed
    assert not list(tmp_path.glob("tinygraph-bench-*"))   # temporary checkpoints removed


def test_merge(tmp_path, capsys):
    res = _synthetic_results()
    a = {"device": {"name": "H100"}, "floor": {"bandwidth_Bps": 3.0e12}, "settings": {"contexts": [2048]},
         "models": {"smollm2": res["models"]["smollm2"]}}
    b = {"device": {"name": "H100"}, "floor": {"bandwidth_Bps": 2.0e12}, "settings": {"contexts": [2048, 8192]},
         "models": {"gpt2": res["models"]["gpt2"]}}
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert bench.main(["--merge", str(pa), str(pb), "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert list(m["models"]) == ["smollm2", "gpt2"] and m["contexts"] == [2048, 8192]
    assert m["models"]["smollm2"]["summary"]["pct_floor"] == pytest.approx(45.0)   # its own file's bandwidth
    assert "warning" not in m and "decode@8k" in capsys.readouterr().out



@pytest.mark.parametrize("name", ["gemma2-2b", "phi3-mini"])
def test_hf_only_families_write_loadable_checkpoints(name, tmp_path):
    """The NumPy checkpoint writer's tensor names for issue 16's bench families are the ones HF
    writes: a small config of each loads in tinygraph as that family and decodes."""
    from tinygraph.models import load_model
    hf = bc.tiny(bc.CONFIGS[name]["hf"])
    path = bc.write_numpy_checkpoint(hf, tmp_path / name)
    with load_model(str(path), backend="numpy") as m:
        assert m.spec.name == hf["model_type"]
        assert len(m.generate([1, 2, 3], max_new_tokens=3, temperature=0)) >= 3
