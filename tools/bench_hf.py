"""HF transformers: the random-weight fp16 model built from a config, and its measurements
(eager generate, static cache + torch.compile, eager prefill, a float32 greedy reference)."""
from __future__ import annotations

import gc
import time
import traceback
from pathlib import Path
from typing import Any

import bench_configs as bc
from bench_util import guarded, log, median


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def hf_config(hf: dict[str, Any]):
    import transformers
    fields = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
    return transformers.AutoConfig.for_model(hf["model_type"], **fields)


def build_torch_model(hf: dict[str, Any], device: str, seed: int, std: float):
    """An fp16 HF model from the config, built on ``device``, weights re-drawn."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(hf)
    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
        except TypeError:  # transformers < 4.56
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    model = model.to(device=device, dtype=torch.float16).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():       # tied tensors appear once
            p.normal_(1.0 if bc.is_norm_param(name) else 0.0, std, generator=g)
    return model


def save_torch_model(model, out_dir: Path) -> None:
    try:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    except TypeError:
        model.save_pretrained(str(out_dir))


def prepare_hf_for_generate(model) -> None:
    gc_ = model.generation_config
    gc_.eos_token_id = None      # random weights: no early stop (tinygraph does not stop either)
    gc_.pad_token_id = 0
    gc_.do_sample = False
    for k in ("temperature", "top_p", "top_k"):
        if hasattr(gc_, k):
            setattr(gc_, k, None)



def _sync(device) -> None:
    import torch
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def _generate(model, ids, n: int) -> tuple[float, list[int]]:
    import torch
    _sync(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    _sync(model.device)
    return time.perf_counter() - t0, out[0, ids.shape[1]:].tolist()


def bench_hf(model, args, prompts: dict[str, list[int]], rec: dict) -> None:
    import torch

    dev = model.device
    ids = torch.tensor([prompts["decode"]], device=dev)
    n = args.new_tokens
    rec["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    rec["device"] = str(dev)

    def eager() -> dict[str, Any]:
        w, _ = _generate(model, ids, n)                       # warm-up
        ttft = [_generate(model, ids, 1)[0] for _ in range(args.runs)]
        totals, tokens = [], None
        for _ in range(args.runs):
            s, toks = _generate(model, ids, n)
            totals.append(s)
            tokens = tokens or toks
        t1 = median(ttft)
        out = {"warmup_s": w, "ttft_s": ttft, "median_ttft_ms": t1 * 1e3, "total_s": totals,
               "decode_tok_s": [(n - 1) / max(s - t1, 1e-9) for s in totals],
               "e2e_tok_s": [n / s for s in totals], "tokens": tokens,
               "distinct_tokens": len(set(tokens or []))}
        out["median_decode_tok_s"] = median(out["decode_tok_s"])
        out["median_e2e_tok_s"] = median(out["e2e_tok_s"])
        log(f"  HF eager: {out['median_decode_tok_s']:.1f} tok/s (e2e {out['median_e2e_tok_s']:.1f}), "
            f"TTFT {out['median_ttft_ms']:.1f} ms")
        return out

    guarded(rec, "eager", eager)

    def prefill() -> dict[str, Any]:
        x = torch.tensor([prompts["prefill"]], device=dev)

        def fwd():
            with torch.inference_mode():
                try:
                    return model(input_ids=x, use_cache=True, logits_to_keep=1)
                except TypeError:
                    return model(input_ids=x, use_cache=True)

        fwd()
        secs = []
        for _ in range(args.runs):
            _sync(dev)
            t0 = time.perf_counter()
            fwd()
            _sync(dev)
            secs.append(time.perf_counter() - t0)
        out = {"tokens": x.shape[1], "seconds": secs, "tok_s": [x.shape[1] / s for s in secs]}
        out["median_tok_s"] = median(out["tok_s"])
        log(f"  HF eager prefill-{x.shape[1]}: {out['median_tok_s']:.0f} tok/s")
        return out

    guarded(rec, "prefill", prefill)

    eager_ttft = rec.get("eager", {}).get("median_ttft_ms") if isinstance(rec.get("eager"), dict) else None

    def compiled() -> dict[str, Any]:
        out: dict[str, Any] = {"how": args.hf_compile}
        try:
            res = _compiled_run(model, ids, n, args, fullgraph=True)
            out["fullgraph"] = True
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001
            out["fullgraph_error"] = f"{type(e).__name__}: {e}"[:4000]
            out["fullgraph_traceback"] = traceback.format_exc()[-6000:]
            log(f"  HF compile fullgraph=True failed: {out['fullgraph_error'][:300]}; trying fullgraph=False")
            _reset_compile(model)
            res = _compiled_run(model, ids, n, args, fullgraph=False)
            out["fullgraph"] = False
        out.update(res)
        t1 = (eager_ttft or 0.0) / 1e3
        out["ttft_used_ms"] = eager_ttft
        out["decode_tok_s"] = [(n - 1) / max(s - t1, 1e-9) for s in out["total_s"]]
        out["e2e_tok_s"] = [n / s for s in out["total_s"]]
        out["median_decode_tok_s"] = median(out["decode_tok_s"])
        out["median_e2e_tok_s"] = median(out["e2e_tok_s"])
        if not out.get("compiled"):
            out["note"] = "transformers did not compile the forward (criteria unmet, e.g. not on a GPU)"
        log(f"  HF static+compile: {out['median_decode_tok_s']:.1f} tok/s (e2e {out['median_e2e_tok_s']:.1f}); "
            f"warm-ups {', '.join(f'{s:.1f}' for s in out['warmup_s'])} s")
        return out

    if args.no_compile:
        rec["compile"] = {"skipped": "--no-compile"}
    else:
        guarded(rec, "compile", compiled)
        _reset_compile(model)

    def fp32_reference() -> dict[str, Any]:
        """Greedy tokens of the same weights in float32 (no TF32): who is nearer the exact result."""
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model.float()                                        # in place; the fp16 runs are done
        nref = min(n, 32)
        s, toks = _generate(model, ids, nref)
        log(f"  HF fp32 reference: {nref} tokens in {s:.2f} s")
        return {"tokens": toks, "seconds": s, "dtype": "float32"}

    if args.no_fp32_ref:
        rec["fp32_ref"] = {"skipped": "--no-fp32-ref"}
    else:
        guarded(rec, "fp32_ref", fp32_reference)


def _compiled_run(model, ids, n: int, args, fullgraph: bool) -> dict[str, Any]:
    import torch
    gcfg = model.generation_config
    gcfg.cache_implementation = "static"
    if args.hf_compile == "manual":
        model._bench_eager_forward = model.forward
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=fullgraph)
    else:
        from transformers import CompileConfig
        gcfg.compile_config = CompileConfig(fullgraph=fullgraph, mode="reduce-overhead")
    warm = [_generate(model, ids, n)[0] for _ in range(2)]
    totals, tokens = [], None
    for _ in range(args.runs):
        s, toks = _generate(model, ids, n)
        totals.append(s)
        tokens = tokens or toks
    compiled = args.hf_compile == "manual" or hasattr(model, "_compiled_call")
    return {"warmup_s": warm, "total_s": totals, "tokens": tokens, "compiled": compiled}


def _reset_compile(model) -> None:
    import torch
    gcfg = model.generation_config
    gcfg.cache_implementation = None
    if hasattr(gcfg, "compile_config"):
        gcfg.compile_config = None
    if hasattr(model, "_bench_eager_forward"):
        model.forward = model._bench_eager_forward
        del model._bench_eager_forward
    for a in ("_compiled_call", "_last_compile_config"):
        if hasattr(model, a):
            try:
                delattr(model, a)
            except AttributeError:
                pass
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def free_torch() -> None:
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


