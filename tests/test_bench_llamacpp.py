"""tools/bench.py's --quant, --llamacpp and --contexts parts without a GPU or llama.cpp: argument
parsing, llama-bench JSON parsing (a recorded sample), the GGUF writer against the safetensors
logits, the per-type and context tables, and the whole flow against a stand-in llama.cpp."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from test_bench import _load, _synthetic_results, bc, bench

bq = _load("bench_quant")
bg = _load("bench_gguf")
bl = _load("bench_llamacpp")
br = _load("bench_report")

# llama-bench -o json output in the layout its README documents (one object per test; fields
# trimmed to those that matter), with the H200 anchor's SmolLM2 Q4_K_M figures; not captured from a
# run. A log line precedes the array, as when a build prints to stdout. The fields every test shares
# are written once.
_SAMPLE_COMMON = {
    "build_commit": "0000000", "build_number": 1, "gpu_info": "NVIDIA H200", "backends": "CUDA",
    "model_filename": "/tmp/llgguf/smollm2-135m-Q4_K_M.gguf", "model_type": "llama ?B Q4_K - Medium",
    "model_size": 101712384, "model_n_params": 134515008, "n_batch": 2048, "n_ubatch": 512,
    "type_k": "f16", "type_v": "f16", "n_gpu_layers": 99, "flash_attn": True,
}
# (n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts, samples_ns, samples_ts)
_SAMPLE_TESTS = [
    (512, 0, 0, "2026-11-30T10:01:02Z", 10431000, 91000, 49084.5, 431.2, [10400000, 10460000], [49230.8, 48948.4]),
    (0, 128, 0, "2026-11-30T10:01:03Z", 143498000, 520000, 892.0, 3.2, [143100000, 143900000], [894.5, 889.5]),
    (0, 128, 8192, "2026-11-30T10:01:09Z", 155717000, 610000, 822.0, 3.1, [155300000, 156100000], [824.2, 819.8]),
]
_SAMPLE_KEYS = ("n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
                "samples_ns", "samples_ts")
LLAMA_BENCH_SAMPLE = "ggml_cuda_init: found 1 CUDA devices:\n" + json.dumps(
    [_SAMPLE_COMMON | dict(zip(_SAMPLE_KEYS, t)) for t in _SAMPLE_TESTS], indent=2) + "\n"


def test_parse_llama_bench_json():
    tests = bl.parse_bench_json(LLAMA_BENCH_SAMPLE)
    assert list(tests) == ["pp512", "tg128", "tg128@d8192"]
    assert tests["pp512"]["avg_ts"] == 49084.5 and tests["tg128"]["avg_ts"] == 892.0
    assert tests["tg128@d8192"]["avg_ts"] == 822.0 and tests["tg128@d8192"]["n_depth"] == 8192
    assert tests["tg128"]["samples_ts"] == [894.5, 889.5] and tests["tg128"]["model_size"] == 101712384
    # -o jsonl gives the same
    start = LLAMA_BENCH_SAMPLE.index("[")
    jsonl = "\n".join(json.dumps(r) for r in json.loads(LLAMA_BENCH_SAMPLE[start:]))
    assert bl.parse_bench_json(jsonl) == tests
    assert bl.result_name({"n_prompt": 512, "n_gen": 128, "n_depth": 0}) == "pp512+tg128"
    with pytest.raises(ValueError, match="no llama-bench results"):
        bl.parse_bench_json("error: failed to load model\n")
    with pytest.raises(ValueError, match="no avg_ts"):
        bl.parse_bench_json('[{"n_prompt": 512, "n_gen": 0}]')


def test_quant_types_and_args(tmp_path):
    assert bq.parse_quant_types("q8_0, Q4_K_M,Q8_0") == ["Q8_0", "Q4_K_M"]
    assert bq.QUANT_TYPES["Q4_K_M"] == "q4_k" and bq.QUANT_TYPES["Q6_K"] == "q6_k"
    with pytest.raises(ValueError, match="'Q9_X'"):
        bq.parse_quant_types("Q8_0,Q9_X")
    fake = _fake_llamacpp(tmp_path / "ll")
    a = bench.parse_args(["--quant", "Q8_0,Q4_K_M", "--llamacpp", str(fake), "--contexts", "2048,8192,32768"])
    assert a.quant_types == ["Q8_0", "Q4_K_M"] and a.llamacpp == str(fake.resolve())
    assert a.contexts == [2048, 8192, 32768] and a.context_decode_tokens == 128
    for bad in (["--quant", "Q9"], ["--llamacpp", str(tmp_path / "none")], ["--contexts", "2k"],
                ["--contexts", "0"], ["--context-decode-tokens", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    # llama-bench runs the depths tinygraph runs: not past max positions (SmolLM2: 8192)
    a = bench.parse_args(["--contexts", "2048,8192,32768"])
    assert bq.llama_depths(bc.CONFIGS["smollm2"]["hf"], a) == [2048, 8192]
    assert bq.llama_depths(bc.CONFIGS["gpt2"]["hf"], a) == []       # 2048 > 1024 learned positions


def test_permute_rows_is_llamacpps_and_tinygraph_undoes_it():
    from tinygraph.io.gguf_loader import unpermute_rows

    heads, hd = 3, 8
    w = np.arange(heads * hd * 5, dtype=np.float32).reshape(heads * hd, 5)
    p = bg.permute_rows(w, heads)
    # within head 0, rows (j, j + hd/2) of HF's rotate-half layout become rows (2j, 2j + 1)
    assert (p[0] == w[0]).all() and (p[1] == w[hd // 2]).all() and (p[2] == w[1]).all()
    assert (p[hd + 1] == w[hd + hd // 2]).all()
    assert (unpermute_rows(p, heads) == w).all()
    with pytest.raises(ValueError, match="multiple of 6"):
        bg.permute_rows(w[:20], heads)


@pytest.mark.parametrize("name", ["smollm2", "qwen3-0.6b", "tinyllama", "gpt2"])
def test_gguf_writer_matches_the_safetensors_logits(name, tmp_path):
    """The F16 GGUF of a tiny config, loaded by tinygraph on NumPy, gives the safetensors
    checkpoint's logits (same f16 values, float32 math: equal)."""
    import warnings

    from gguf import GGUFReader
    from tinygraph.models import load_model

    hf = bc.tiny(bc.CONFIGS[name]["hf"])
    ckpt = bc.write_numpy_checkpoint(hf, tmp_path / "ckpt", seed=3)
    info = bg.write_gguf(ckpt, hf, tmp_path / "m.gguf")
    n_weights = sum(math.prod(s) for s in bc.hf_tensor_shapes(hf).values())
    assert info["tensors"] == len(bc.hf_tensor_shapes(hf))
    types = info["types"]
    assert bg.gguf_summary(info["path"]) == {"tensor_bytes": info["tensor_bytes"], "types": types}
    assert set(types) == {"f16", "f32"}
    n_1d = sum(1 for s in bc.hf_tensor_shapes(hf).values() if len(s) == 1)
    assert types["f32"] == n_1d
    d1 = sum(math.prod(s) for s in bc.hf_tensor_shapes(hf).values() if len(s) == 1)
    assert info["tensor_bytes"] == 2 * (n_weights - d1) + 4 * d1

    reader = GGUFReader(info["path"])
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.ffn_down.weight" in names
    assert ("output.weight" in names) == (not bc.dims(hf)["tied"])
    if hf["model_type"] == "llama":                   # Q rows stored permuted for llama.cpp's RoPE
        from safetensors.numpy import load_file

        q = load_file(str(ckpt / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
        stored = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
        got = np.asarray(stored.data).reshape(q.shape)
        assert (got == bg.permute_rows(q, bc.dims(hf)["heads"])).all() and not (got == q).all()

    ids = [3, 17, 100, 5, 9, 250]
    logits = []
    for path in (ckpt, info["path"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # the placeholder vocabulary has no tokenizer
            model = load_model(str(path), dtype="float32", backend="numpy", max_context=32)
        try:
            h, _ = model(ids)
            logits.append(model.get_logits(h).to_numpy())
        finally:
            model.close()
    assert np.abs(logits[0]).max() > 0.1
    np.testing.assert_allclose(logits[1], logits[0], rtol=0, atol=1e-5)


def _synthetic_quant_model() -> dict:
    m = _synthetic_results()["models"]["smollm2"]
    m["gguf"] = {"F16": {"tensor_bytes": 270_000_000}, "Q4_K_M": {"tensor_bytes": 100_000_000}}
    m["llamacpp"] = {"F16": {"tests": {"pp512": {"avg_ts": 80_000.0}, "tg128": {"avg_ts": 1000.0}}},
                     "Q4_K_M": {"tests": {"pp512": {"avg_ts": 49_000.0}, "tg128": {"avg_ts": 900.0}}},
                     "depths": {"tests": {"tg128@d2048": {"avg_ts": 2000.0}}}}
    m["quant"] = {"Q4_K_M": {"source": "llama-quantize Q4_K_M; tinygraph loads the same file", "tinygraph": {
        "load": {"weight_bytes": 110_000_000, "memory_usage": {"weights": 101_000_000, "kv_cache": 1,
                                                              "workspace": 2, "weight_types": {"q4_k": 154, "q6_k": 29,
                                                                                               "f32": 61}}},
        "decode": {"median_decode_tok_s": 1800.0}, "prefill": {"error": "CudaError: boom"}}}}
    return m


def test_quant_and_context_tables_on_synthetic_numbers():
    m = _synthetic_quant_model()
    broken = _synthetic_results()["models"]["qwen3-8b"]
    settings = {"new_tokens": 128, "prefill_tokens": 512, "llamacpp": "/x", "quant_types": ["Q4_K_M"],
                "context_decode_tokens": 128}
    assert bq.table_types(settings) == ["F16", "Q4_K_M"]
    f16 = br.quant_row(m, "F16", 3.0e12, settings)
    assert f16["decode_tok_s"] == 5000.0 and f16["llama_tg"] == 1000.0 and f16["x_tg"] == pytest.approx(5.0)
    assert f16["x_pp"] == pytest.approx(90_000 / 80_000) and f16["file_bytes"] == 270_000_000
    assert f16["pct_floor_tg"] == pytest.approx(45.0) and f16["pct_floor_llama"] == pytest.approx(9.0)
    q = br.quant_row(m, "Q4_K_M", 3.0e12, settings)
    assert q["decode_tok_s"] == 1800.0 and q["prefill_tok_s"] == "err" and q["x_pp"] == "err"
    assert q["x_tg"] == pytest.approx(2.0) and q["tg_bytes"] == 101_000_000   # memory_usage over weight_bytes
    assert q["pct_floor_tg"] == pytest.approx(100 * 1800 / 30_000) and q["weight_types"] == "q4_k:154 f32:61 q6_k:29"
    b = br.quant_row(broken, "Q4_K_M", 3.0e12, settings)
    assert b["decode_tok_s"] == "err" and b["llama_tg"] == "err" and b["pct_floor_tg"] == "err"

    table = br.format_quant_table([f16, q, b], settings)
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["model", "tinygraph decode", "llama.cpp tg128", "x", "tinygraph prefill-512", "llama.cpp pp512",
                    "x", "weights GB file / tinygraph", "tinygraph weight types", "% floor tinygraph / llama.cpp"]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells == ["SmolLM2-135M", "1,800", "900", "2.00x", "err", "49,000", "err", "0.100 / 0.101",
                     "q4_k:154 f32:61 q6_k:29", "6.0% / 3.0%"]
    assert len({len(line) for line in lines}) == 1
    assert "tinygraph loads the same file" in br.quant_title("Q4_K_M", {"smollm2": m})

    res = {"models": {"smollm2": m, "qwen3-8b": broken}}
    ctx = br.format_context_table(res, [2048, 8192], 128).splitlines()
    assert [c.strip() for c in ctx[0].strip("|").split("|")] == [
        "model", "tinygraph @2k", "llama.cpp @2k", "x", "tinygraph @8k", "llama.cpp @8k", "x"]
    assert [c.strip() for c in ctx[2].strip("|").split("|")] == ["SmolLM2-135M", "4,000", "2,000", "2.00x",
                                                                 "err", "-", "err"]
    assert ctx[3].count("err") == 6
    notes = br.quant_notes(res)
    assert notes == ["smollm2 Q4_K_M tinygraph prefill: CudaError: boom"]


# A stand-in llama.cpp build: llama-quantize writes Q8_0 for real (the 2-D tensors, with the gguf
# package's quantizer) and copies the file for other types; llama-bench answers with llama-bench's
# JSON for the tests asked.
_FAKE_QUANTIZE = """#!{py}
import shutil, sys
import gguf
src, dst, qtype = sys.argv[1:4]
open(__file__ + ".calls", "a").write(" ".join(sys.argv[1:]) + "\\n")
assert qtype in ("Q8_0", "Q4_K_M"), sys.argv
if qtype != "Q8_0":
    shutil.copyfile(src, dst)
    sys.exit(0)
r = gguf.GGUFReader(src)
w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
for name, f in r.fields.items():
    if not name.startswith("GGUF.") and name != "general.architecture":
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
for t in r.tensors:
    a = t.data.reshape([int(d) for d in reversed(t.shape.tolist())])
    if a.ndim == 2:
        w.add_tensor(t.name, gguf.quants.quantize(a.astype("float32"), gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(t.name, a)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"""
_FAKE_BENCH = """#!{py}
import json, os, sys
a = sys.argv[1:]
open(__file__ + ".calls", "a").write(" ".join(a) + "\\n")
opt = lambda f, d: a[a.index(f) + 1] if f in a else d
size = os.path.getsize(opt("-m", None))
recs = []
for d in [int(x) for x in opt("-d", "0").split(",")]:
    for p in [int(x) for x in opt("-p", "512").split(",")]:
        if p:
            recs.append(dict(n_prompt=p, n_gen=0, n_depth=d, avg_ts=10000.0 + p - d / 100, model_size=size))
    for n in [int(x) for x in opt("-n", "128").split(",")]:
        if n:
            recs.append(dict(n_prompt=0, n_gen=n, n_depth=d, avg_ts=100.0 + n - d / 100, model_size=size))
print("build: fake", file=sys.stderr)
print(json.dumps(recs, indent=2))
"""


def _fake_llamacpp(root: Path) -> Path:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for name, text in (("llama-quantize", _FAKE_QUANTIZE), ("llama-bench", _FAKE_BENCH)):
        f = root / "bin" / name
        f.write_text(text.replace("{py}", sys.executable))
        f.chmod(0o755)
    return root


_TINY_RUN = ["--tiny", "--backend", "numpy", "--builder", "numpy", "--runs", "1", "--warmup", "1",
             "--warmup-seconds", "0", "--new-tokens", "6", "--prompt-tokens", "5", "--prefill-tokens", "16",
             "--context-decode-tokens", "4", "--prefill-chunk", "40", "--copy-reps", "2"]


def test_quant_with_llamacpp_end_to_end(tmp_path, capsys):
    fake = _fake_llamacpp(tmp_path / "ll")
    out, gdir = tmp_path / "r.json", tmp_path / "gguf"
    out2 = tmp_path / "r2.json"
    argv = _TINY_RUN + ["--models", "smollm2,qwen3-0.6b", "--quant", "Q8_0", "--llamacpp", str(fake),
                        "--contexts", "64", "--gguf-dir", str(gdir), "--json", str(out), "--work-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    r = json.loads(out.read_text())
    for name in ("smollm2", "qwen3-0.6b"):
        m = r["models"][name]
        f16, q8 = m["gguf"]["F16"], m["gguf"]["Q8_0"]
        assert f16["reused"] is False and q8["reused"] is False and f16["types"] == {"f16": 15, "f32": f16["types"]["f32"]}
        assert Path(f16["path"]).parent == gdir and Path(q8["path"]).name.endswith("-Q8_0.gguf")
        assert m["llamacpp"]["F16"]["tests"]["tg6"]["avg_ts"] == 106.0
        assert m["llamacpp"]["F16"]["tests"]["pp16"]["avg_ts"] == 10016.0
        assert m["llamacpp"]["depths"]["tests"]["tg4@d64"]["avg_ts"] == pytest.approx(104 - 0.64)
        assert m["llamacpp"]["Q8_0"]["tests"]["tg6"]["model_size"] == Path(q8["path"]).stat().st_size
        shapes = bc.hf_tensor_shapes(bc.tiny(bc.CONFIGS[name]["hf"])).values()
        assert q8["types"] == {"q8_0": sum(len(s) == 2 for s in shapes), "f32": sum(len(s) == 1 for s in shapes)}
        assert q8["tensor_bytes"] < 0.6 * f16["tensor_bytes"]
        tg = m["quant"]["Q8_0"]["tinygraph"]
        assert tg["load"]["path"] == q8["path"] and tg["decode"]["median_decode_tok_s"] > 0
        assert tg["load"]["memory_usage"]["weight_types"]["q8_0"] > 0       # the file's types kept
        assert len(tg["decode"]["tokens"]) == 6 and tg["prefill"]["tokens"] == 16 and "contexts" not in tg
        # the same weights up to Q8_0 rounding: the 6 greedy tokens agree with the checkpoint's
        assert tg["decode"]["tokens"] == m["tinygraph"]["decode"]["tokens"]
        assert m["quant"]["Q8_0"]["match_f16"]["common_prefix"] == 6
        assert m["tinygraph"]["contexts"]["64"]["median_decode_tok_s"] > 0
    assert list(r["quant_tables"]) == ["F16", "Q8_0"]
    row = r["quant_tables"]["Q8_0"]["rows"][0]
    assert row["llama_tg"] == 106.0 and row["x_tg"] == pytest.approx(row["decode_tok_s"] / 106.0)
    assert "q8_0:" in row["weight_types"] and row["file_bytes"] == r["models"]["smollm2"]["gguf"]["Q8_0"]["tensor_bytes"]
    printed = capsys.readouterr().out
    assert "### Q8_0: llama-quantize Q8_0; tinygraph loads the same file" in printed
    assert "llama.cpp @64" in printed and printed.index("### F16") > printed.index("| SmolLM2-135M (tiny)")
    calls = (fake / "bin" / "llama-bench.calls").read_text().splitlines()
    assert len(calls) == 6 and all("-ngl 99 -fa 1" in c and c.endswith("-o json") for c in calls)
    assert sum("-d 64 -ngl" in c and "-p 0 -n 4" in c for c in calls) == 2

    # a second run reuses the GGUF files kept in --gguf-dir
    assert bench.main(argv[:-6] + ["--models", "smollm2", "--contexts", "", "--gguf-dir", str(gdir),
                                   "--json", str(out2), "--work-dir", str(tmp_path)]) == 0
    m = json.loads(out2.read_text())["models"]["smollm2"]
    assert m["gguf"]["F16"]["reused"] is True and m["gguf"]["Q8_0"]["reused"] is True
    assert "depths" not in m["llamacpp"]
    assert len((fake / "bin" / "llama-quantize.calls").read_text().splitlines()) == 2

    # --skip-f16 with the F16 GGUF cached: no checkpoint, no F16 runs, only the quantized file's
    out3 = tmp_path / "r3.json"
    assert bench.main(argv[:-6] + ["--models", "smollm2", "--skip-f16", "--quant", "Q4_K_M", "--gguf-dir",
                                   str(gdir), "--json", str(out3), "--work-dir", str(tmp_path)]) == 0
    r = json.loads(out3.read_text())
    m = r["models"]["smollm2"]
    assert "build" not in m and m["tinygraph"] == {"skipped": "--skip-f16"} and list(m["llamacpp"]) == ["Q4_K_M"]
    assert m["gguf"]["F16"]["reused"] is True and m["gguf"]["Q4_K_M"]["reused"] is False
    assert m["quant"]["Q4_K_M"]["tinygraph"]["decode"]["median_decode_tok_s"] > 0
    assert list(r["quant_tables"]) == ["Q4_K_M"] and r["settings"]["contexts"] == []

    # --merge puts a --skip-f16 run together with the full run of the same model
    merged = tmp_path / "m.json"
    assert bench.main(["--merge", str(out3), str(tmp_path / "r.json"), "--json", str(merged)]) == 0
    r = json.loads(merged.read_text())
    m = r["models"]["smollm2"]
    assert list(r["models"]) == ["smollm2", "qwen3-0.6b"] and list(r["quant_tables"]) == ["F16", "Q4_K_M", "Q8_0"]
    assert set(m["quant"]) == {"Q8_0", "Q4_K_M"} and set(m["llamacpp"]) == {"F16", "depths", "Q8_0", "Q4_K_M"}
    assert m["tinygraph"]["decode"]["median_decode_tok_s"] > 0 and "llama.cpp @64" in r["context_table"]
    assert r["quant_tables"]["Q4_K_M"]["rows"][0]["llama_tg"] == 106.0
    assert r["quant_tables"]["Q4_K_M"]["rows"][1]["decode_tok_s"] == "-"       # qwen3-0.6b had no Q4_K_M run
    assert not list(tmp_path.glob("tinygraph-bench-*"))
    with pytest.raises(SystemExit):
        bench.parse_args(["--skip-f16"])


def test_quant_without_llamacpp_uses_tinygraphs_quantizer(tmp_path, monkeypatch, capsys):
    import inspect

    import tinygraph.models as tm

    real, calls = tm.load_model, []
    native = "quantize" in inspect.signature(real).parameters

    def recording(path, **kw):                          # until load_model has quantize=: pass it over
        calls.append(kw.get("quantize"))
        if not native:
            kw.pop("quantize", None)
        return real(path, **kw)

    monkeypatch.setattr(tm, "load_model", recording)
    out = tmp_path / "r.json"
    assert bench.main(_TINY_RUN + ["--models", "smollm2", "--quant", "Q4_K_M,Q8_0", "--contexts", "",
                                   "--json", str(out), "--work-dir", str(tmp_path)]) == 0
    assert calls == [None, "q4_k", "q8_0"]
    r = json.loads(out.read_text())
    q = r["models"]["smollm2"]["quant"]
    assert q["Q4_K_M"]["source"] == "tinygraph quantize='q4_k' (for Q4_K_M)"
    assert q["Q8_0"]["source"] == "tinygraph quantize='q8_0'"
    assert q["Q4_K_M"]["tinygraph"]["load"]["quantize"] == "q4_k"
    assert q["Q8_0"]["tinygraph"]["decode"]["median_decode_tok_s"] > 0
    assert list(r["quant_tables"]) == ["Q4_K_M", "Q8_0"] and "gguf" not in r["models"]["smollm2"]
    row = r["quant_tables"]["Q8_0"]["rows"][0]
    assert row["llama_tg"] == "-" and row["file_bytes"] is None and row["pct_floor_tg"] > 0
    assert "### Q4_K_M: tinygraph quantize='q4_k' (for Q4_K_M)" in capsys.readouterr().out
