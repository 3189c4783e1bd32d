"""``python -m tinygraph.serve``: load a model (default: SmolLM2-135M-Instruct, as
``python -m tinygraph.run``) and serve the OpenAI API on it with uvicorn.

One startup line on stderr gives the URL and the model; SIGINT/SIGTERM shut down gracefully
(requests in flight get ``--shutdown-timeout`` seconds, then the engine is closed).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"64k"`` or plain bytes; suffixes are binary (G = 2**30)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (give bytes, or a number with K, M, G or T)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from ..run import _Defaults, _Parser   # the CLI's one-line errors and "(default: X)" help
    p = _Parser(prog="python -m tinygraph.serve", formatter_class=_Defaults,
                description="Serve a language model over an OpenAI-compatible HTTP API (/v1/completions, "
                            "/v1/chat/completions, /v1/models, /health), many requests batched together.")
    p.add_argument("--model", help="model directory, .safetensors, index .json or .gguf (default: "
                                   "SmolLM2-135M-Instruct, as python -m tinygraph.run)")
    p.add_argument("--served-model-name", help="the name clients use as 'model' (default: the model file's or "
                                               "directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    p.add_argument("--backend", choices=["auto", "numpy", "cuda"], default="auto", help="where to run")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="weights, activations and KV cache (default: float32 on numpy, float16 on cuda)")
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="split the model over N processes started by python -m tinygraph.launch --gpus N "
                        "(rank 0 serves; cuda: NCCL, numpy: TCP)")
    p.add_argument("--max-batch", type=int, default=64, help="most requests decoded together")
    p.add_argument("--max-context", type=int, default=None,
                   help="tokens per request, prompt and answer (default: the model's maximum, at most 4096)")
    p.add_argument("--kv-memory", type=parse_bytes, default=None,
                   help="bytes of the paged KV cache shared by all requests, e.g. 2G or 512M (default: room "
                        "for 4 full contexts)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="most requests waiting for a batch slot; beyond it requests get 503")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip building the step graphs of every batch size before serving (the first requests "
                        "then pay for it)")
    p.add_argument("--api-key", default=os.environ.get("TINYGRAPH_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $TINYGRAPH_API_KEY, else none)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds requests in flight get to finish at shutdown")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info: one line per request)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


class _Stopped(Exception):
    """A stop signal arrived (after uvicorn's graceful shutdown)."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket (bound here so that port 0 gives the real port for the startup line)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _serve(args: argparse.Namespace) -> int:
    for name in ("max_batch", "block_size", "max_context"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    import uvicorn

    from ..run import resolve_backend
    from ..hub import default_model_path
    from ..models import load_model
    from ..models.engine import Engine
    from .app import create_app

    from ..distributed import ControlChannel, DistEnv

    dist = DistEnv.from_env()
    world = dist.world_size if dist is not None else 1
    if args.tensor_parallel != world:
        raise ValueError(f"--tensor-parallel {args.tensor_parallel} needs as many processes, started by python -m "
                         f"tinygraph.launch --gpus {args.tensor_parallel} (this is {world} process(es))")
    path = Path(args.model) if args.model else None
    if path is not None and not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    path = path or default_model_path()
    backend, dtype = resolve_backend(args.backend, args.dtype)  # as tinygraph.run
    name = args.served_model_name or (path.stem if path.is_file() else path.name)
    leader = dist is None or dist.rank == 0
    sock = _listen(args.host, args.port) if leader else None  # fail on a taken port before the (slow) load
    t0 = time.perf_counter()
    model = load_model(path, dtype=dtype, backend=backend, max_context=args.max_context,
                       tensor_parallel=world if world > 1 else None)
    if sock is None:  # a follower: no HTTP, the leader's steps
        return _follow(args, model, ControlChannel(dist))
    engine = None
    try:
        kw = dict(max_batch=args.max_batch, kv_memory=args.kv_memory, block_size=args.block_size,
                  max_queue=args.max_queue)
        if world > 1:
            from ..models.lockstep import LeaderEngine
            engine = LeaderEngine(model, ControlChannel(dist), **kw)
        else:
            engine = Engine(model, **kw)
        if not args.no_warmup:   # before serving: no client waits while a graph is built
            engine.warmup(progress=sys.stderr.isatty())
        app = create_app(model, engine, model_name=name, api_key=args.api_key)
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        s = engine.stats()
        line = (f"tinygraph: serving {name} ({model.spec.name}, {backend} {dtype}, context {model.max_context}, "
                f"KV {s['kv_blocks'] * s['block_size']} tokens, max batch {args.max_batch}; ready in "
                f"{time.perf_counter() - t0:.1f} s) at {url}/v1" + (" (API key required)" if args.api_key else ""))

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                if self.started:   # listening: the line tells clients where to connect
                    print(line, file=sys.stderr, flush=True)

        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout)
        # uvicorn shuts down on SIGINT/SIGTERM and then raises the signal again for the previous
        # handler: these handlers turn that into a normal exit (status 0) after the graceful stop
        previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            Server(config).run(sockets=[sock])
        except _Stopped:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("tinygraph: server stopped", file=sys.stderr, flush=True)
    finally:
        if engine is not None:   # the app's shutdown closed it (a no-op then); a leader tells its followers
            engine.close()
        model.close()
        sock.close()
    return 0


def _follow(args: argparse.Namespace, model, channel) -> int:
    """A rank other than 0 of a split model: an engine over this rank's shard that runs the
    leader's steps (``models/lockstep.py``) until the leader stops."""
    from ..models.engine import Engine
    from ..models.lockstep import follow
    try:
        engine = Engine(model, max_batch=args.max_batch, kv_memory=args.kv_memory, block_size=args.block_size,
                        max_queue=args.max_queue)
        if not args.no_warmup:   # the leader warms up too: the same graphs, the same all-reduces
            engine.warmup()
        follow(engine, channel)
    finally:
        channel.close()
        model.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..run import error_exit
    args = build_parser().parse_args(argv)
    try:
        return _serve(args)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as e:   # one line unless --debug
        return error_exit("python -m tinygraph.serve", e, args.debug)


if __name__ == "__main__":
    sys.exit(main())
