#!/usr/bin/env python3
"""What rounding decode activations (int8, two int8 planes, float16) does to a model's output, on the CPU.

``linear_q8a`` (cuda_src/linear_q.cu, ``TINYGRAPH_QUANT_ACT=int8``) rounds the normalised input row
of each decode GEMV (at most 8 rows) to int8 per block of 32 (scale max|h| / 127, to nearest) before
the product with a block-quantized weight. This tool models that rounding in the NumPy backend's
``linear`` reference (float32, the model's own quantized weights) and, for each prompt of
``tools/make_quant_accuracy.py``, reports where free-running greedy decoding parts from the exact
model's, and how far one rounded decode step moves the logits (exact prefill of the prompt plus
``--teacher`` of the exact model's tokens, then one step).

``--scheme planes`` models ``linear_qr`` instead (cuda_src/linear_qr.cu: per 32, x ~= s * (hi + lo /
254) with s = max|x| / 127, two int8 planes) and ``--scheme f16`` the float16 row of ``linear_qmma``.

    python tools/quant_act_error.py [--model PATH] [--new-tokens 32] [--teacher 10] [--scheme int8]
    python tools/quant_act_error.py --products   # the error each scheme adds to random products
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinygraph.ops import fused, registry  # noqa: E402
from tinygraph.models import load_model  # noqa: E402
from make_quant_accuracy import PROMPTS  # noqa: E402

EXACT = registry.OPS["linear"].reference
ROUND = [False]
SCHEME = ["int8"]


def round_rows(x: np.ndarray, scheme: str = "int8") -> np.ndarray:
    """x [.., K] (K a multiple of 32) rounded as linear_q8a ("int8"), linear_qr ("planes") or
    linear_qmma ("f16") does."""
    if scheme == "f16":
        return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)
    xb = np.asarray(x, np.float32).reshape(x.shape[:-1] + (-1, 32))
    amax = np.abs(xb).max(-1, keepdims=True)
    safe = np.where(amax > 0, amax, 1.0)
    xs = (xb * (127 / safe)).astype(np.float32)
    hi = np.rint(xs)
    q = hi + np.rint((xs - hi) * 254) / 254 if scheme == "planes" else hi
    return (q * (amax / 127)).reshape(x.shape).astype(np.float32)


def linear_rounded(p, x, w, *rest):
    """The linear reference with linear_q8a's rounding on decode rows (prefill stays exact: on
    CUDA it dequantizes the weight and runs the GEMM on the 16-bit row)."""
    if not ROUND[0] or x.size // x.shape[-1] > 8:
        return EXACT(p, x, w, *rest)
    o = registry.OPS["linear"].named(p, (x, w) + rest)
    nw, nb = o["norm_w"], o["norm_b"]
    if p["norm"] == "rms":
        x = fused._rms_norm_ref({"eps": p["eps"], "has_w": nw is not None}, x, *([nw] if nw is not None else []))
    elif p["norm"] == "layer":
        x = fused._layer_norm_ref({"eps": p["eps"], "has_w": nw is not None, "has_b": nb is not None}, x,
                                  *[t for t in (nw, nb) if t is not None])
    p2 = dict(p, norm=None, has_norm_w=False, has_norm_b=False)
    srcs = [t for t in (o["bias"], o["residual"]) if t is not None]
    return EXACT(p2, round_rows(x, SCHEME[0]), w, *srcs)


def product_errors(K: int = 4096, N: int = 512, seed: int = 0) -> None:
    """The relative error each scheme adds to a product w @ x, on random rows (standard normal, and
    with 1% of the values 30x larger), against float64."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K))
    for name, x in (("normal", rng.standard_normal(K)),
                    ("outliers", rng.standard_normal(K) * np.where(rng.random(K) < 0.01, 30.0, 1.0))):
        ref = w @ x
        errs = [f"{sc} {np.linalg.norm(w @ round_rows(x, sc).astype(np.float64) - ref) / np.linalg.norm(ref):.1e}"
                for sc in ("f16", "planes", "int8")]
        print(f"random rows ({name}), relative error of w @ x: " + ", ".join(errs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint or GGUF (default: the default model)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--teacher", type=int, default=10, help="exact tokens before the one-step comparison")
    ap.add_argument("--scheme", choices=("int8", "planes", "f16"), default="int8",
                    help="the rounding modelled: linear_q8a, linear_qr or linear_qmma's")
    ap.add_argument("--products", action="store_true", help="only the error on random products, per scheme")
    args = ap.parse_args(argv)
    if args.products:
        product_errors()
        return 0
    SCHEME[0] = args.scheme
    registry.OPS["linear"] = dataclasses.replace(registry.OPS["linear"], reference=linear_rounded)
    m = load_model(args.model, backend="numpy", dtype="float32")
    print("weight types:", m.memory_usage()["weight_types"])
    for pr in PROMPTS:
        enc = m.tokenizer.encode(pr["text"])
        ids = list(getattr(enc, "ids", enc))  # chat prompts as plain text here
        runs = {}
        for r in (False, True):
            ROUND[0] = r
            runs[r] = m.generate(ids, max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        part = next((i for i, (a, b) in enumerate(zip(runs[False], runs[True])) if a != b), None)
        full = ids + runs[False][:args.teacher + 1]
        logits = {}
        for r in (False, True):
            ROUND[0] = False
            m.step(full[:-1], 0)
            ROUND[0] = r
            logits[r] = np.asarray(m.step([full[-1]], len(full) - 1), np.float64).reshape(-1)
        d = logits[True] - logits[False]
        print(f"{pr['name']:14s} free-running greedy: {'identical' if part is None else f'parts at token {part}'}; "
              f"one rounded step: logits moved rms {np.sqrt((d * d).mean()):.3f}, max {np.abs(d).max():.3f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
