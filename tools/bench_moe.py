"""Decode and prefill speed of mixture-of-experts models (issue 16): Qwen3-30B-A3B and
Mixtral-8x7B shapes, tinygraph's grouped form (only the chosen experts read) against its dense
form (``TINYGRAPH_MOE=dense``), as a share of the floor computed from the *active* bytes per token.

No torch: the checkpoint is a safetensors file written here with HF's tensor names, its large
matrices left as holes of a sparse file (read back as zeros: no disk space, no write time),
the embeddings, norms and routers random so that tokens route to varying experts. The weights'
values do not change the work done per token (every chosen expert's rows are read whatever
they hold). ``--layers N`` keeps the first N layers (the full models do not fit the lent
machine's 64 GB disk / host memory twice over); per-layer work is unchanged, and the floor is
computed for the layers kept.

    python tools/bench_moe.py --models qwen3-30b-a3b,mixtral-8x7b --layers 12 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import log, median  # noqa: E402

#: HF config.json fields of the real models (Qwen/Qwen3-30B-A3B, mistralai/Mixtral-8x7B-v0.1)
MOE_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen3-30b-a3b": {
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048,
        "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
        "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "attention_bias": False, "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
    },
    "mixtral-8x7b": {
        "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    },
}


def tensor_shapes(hf: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF name -> (shape, kind) for the two MoE families; kind: "expert", "dense" (other
    matrices), "small" (norms, routers), "embed"."""
    h, L, hd = hf["hidden_size"], hf["num_hidden_layers"], hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    qn, kvn = hf["num_attention_heads"] * hd, hf["num_key_value_heads"] * hd
    qwen = hf["model_type"] == "qwen3_moe"
    E = hf["num_experts"] if qwen else hf["num_local_experts"]
    I = hf["moe_intermediate_size"] if qwen else hf["intermediate_size"]
    out: dict[str, tuple[tuple[int, ...], str]] = {"model.embed_tokens.weight": ((hf["vocab_size"], h), "embed"),
                                                   "model.norm.weight": ((h,), "small"),
                                                   "lm_head.weight": ((hf["vocab_size"], h), "dense")}
    for i in range(L):
        p = f"model.layers.{i}"
        out.update({f"{p}.input_layernorm.weight": ((h,), "small"),
                    f"{p}.post_attention_layernorm.weight": ((h,), "small"),
                    f"{p}.self_attn.q_proj.weight": ((qn, h), "dense"), f"{p}.self_attn.k_proj.weight": ((kvn, h), "dense"),
                    f"{p}.self_attn.v_proj.weight": ((kvn, h), "dense"), f"{p}.self_attn.o_proj.weight": ((h, qn), "dense")})
        if qwen:
            out.update({f"{p}.self_attn.q_norm.weight": ((hd,), "small"), f"{p}.self_attn.k_norm.weight": ((hd,), "small"),
                        f"{p}.mlp.gate.weight": ((E, h), "small")})
            for e in range(E):
                x = f"{p}.mlp.experts.{e}"
                out.update({f"{x}.gate_proj.weight": ((I, h), "expert"), f"{x}.up_proj.weight": ((I, h), "expert"),
                            f"{x}.down_proj.weight": ((h, I), "expert")})
        else:
            out[f"{p}.block_sparse_moe.gate.weight"] = ((E, h), "small")
            for e in range(E):
                x = f"{p}.block_sparse_moe.experts.{e}"
                out.update({f"{x}.w1.weight": ((I, h), "expert"), f"{x}.w3.weight": ((I, h), "expert"),
                            f"{x}.w2.weight": ((h, I), "expert")})
    return out


def active_bytes(hf: dict[str, Any], itemsize: int = 2) -> int:
    """Weight bytes one decode token reads: everything but the experts (one embedding row), plus
    top_k experts per layer."""
    shapes = tensor_shapes(hf)
    E = hf.get("num_experts") or hf["num_local_experts"]
    n = sum(int(np.prod(s)) for name, (s, kind) in shapes.items() if kind in ("dense", "small"))
    n += hf["hidden_size"]  # the embedding row
    expert = sum(int(np.prod(s)) for name, (s, kind) in shapes.items() if kind == "expert")
    return (n + expert // E * hf["num_experts_per_tok"]) * itemsize


def write_sparse_checkpoint(hf: dict[str, Any], out_dir: Path, seed: int = 0) -> int:
    """config.json + a bfloat16 model.safetensors (see the module docstring); returns its size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({**hf, "torch_dtype": "bfloat16"}, indent=1))
    shapes = tensor_shapes(hf)
    header, off = {}, 0
    for name, (shape, _) in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(out_dir / "model.safetensors", "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        start = f.tell()
        for name, (shape, kind) in shapes.items():
            if kind in ("small", "embed"):
                mean = 1.0 if name.endswith("norm.weight") else 0.0
                v = (rng.standard_normal(int(np.prod(shape)), np.float32) * 0.5 + mean).astype(np.float32)
                f.seek(start + header[name]["data_offsets"][0])
                f.write((v.view(np.uint32) >> 16).astype(np.uint16).tobytes())  # bfloat16: the top half
        f.truncate(start + off)  # the rest: holes, read as zeros
    return start + off


def measure(path: Path, hf: dict[str, Any], args, grouped: bool) -> dict[str, Any]:
    import tinygraph.models.moe as moe_mod
    from bench_tinygraph import measure_decode, measure_prefill
    from tinygraph.models import load_model

    was, moe_mod.GROUPED = moe_mod.GROUPED, grouped
    t = time.perf_counter()
    try:
        model = load_model(str(path), dtype="bfloat16", backend=args.backend, max_context=args.prefill_tokens + 8)
    finally:
        moe_mod.GROUPED = was  # the form is fixed when the model packs its experts (and builds graphs below)
    rec: dict[str, Any] = {"load_s": time.perf_counter() - t, "weight_bytes": int(model.weight_bytes)}
    log(f"  {'grouped' if grouped else 'dense'}: loaded in {rec['load_s']:.1f} s, {rec['weight_bytes'] / 1e9:.2f} GB")
    try:
        rng = np.random.default_rng(1)
        prompt = [int(i) for i in rng.integers(10, hf["vocab_size"] - 10, args.prompt_tokens)]
        rec["decode"] = measure_decode(model, args, prompt)
        ids = [int(i) for i in rng.integers(10, hf["vocab_size"] - 10, args.prefill_tokens)]
        rec["prefill"] = measure_prefill(model, args, ids)
    finally:
        model.close()
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3-30b-a3b,mixtral-8x7b")
    ap.add_argument("--layers", type=int, default=0, help="keep the first N layers (0: all)")
    ap.add_argument("--dir", default="/tmp/bench-moe", help="where the sparse checkpoints go")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--forms", default="grouped,dense")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--bandwidth", type=float, default=4.2e12, help="bytes/s for the floor (H200 copy: 4.2e12)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"bandwidth_Bps": args.bandwidth, "layers": args.layers, "models": {}}
    for name in args.models.split(","):
        hf = dict(MOE_CONFIGS[name])
        if args.layers:
            hf["num_hidden_layers"] = min(args.layers, hf["num_hidden_layers"])
        path = Path(args.dir) / f"{name}-L{hf['num_hidden_layers']}"
        size = write_sparse_checkpoint(hf, path)
        act = active_bytes(hf)
        floor = args.bandwidth / act
        log(f"== {name}: {hf['num_hidden_layers']} layers, {size / 1e9:.1f} GB, active {act / 1e9:.2f} GB/token, "
            f"floor {floor:,.0f} tok/s")
        rec: dict[str, Any] = {"config": hf, "file_bytes": size, "active_bytes": act, "floor_tok_s": floor}
        for form in args.forms.split(","):
            try:
                r = measure(path, hf, args, form == "grouped")
                d = r["decode"]["median_decode_tok_s"]
                r["pct_floor"] = 100 * d / floor if d else None
                log(f"  {form}: decode {d:,.1f} tok/s = {r['pct_floor']:.1f}% of floor; prefill-{args.prefill_tokens} "
                    f"{r['prefill']['median_tok_s']:,.0f} tok/s")
            except Exception as e:  # noqa: BLE001 -- one form failing must not lose the other
                r = {"error": f"{type(e).__name__}: {e}"[:500]}
                log(f"  {form}: {r['error']}")
            rec[form] = r
        results["models"][name] = rec
        for f in path.iterdir():
            f.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
