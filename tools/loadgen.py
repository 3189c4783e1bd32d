"""Load generator for ``python -m tinygraph.serve`` (or any OpenAI-compatible server).

Runs ``--clients`` concurrent streaming clients, together ``--requests`` requests, against a running
server and reports the aggregate generation speed (completion tokens per second of wall time),
time to first token and inter-token latency (p50/p99), each request read as raw server-sent events
with httpx so that every chunk is timed as it arrives.

    python -m tinygraph.serve --model path/to/model &
    python tools/loadgen.py --url http://127.0.0.1:8000/v1 --clients 16 --requests 64 --max-tokens 128

Or let it start the servers itself (``tools/loadgen_servers.py``), each on a free local port, and put
the same load on tinygraph and on llama.cpp's llama-server (same GGUF file) in one invocation:

    python tools/loadgen.py --serve model.gguf --llama-server /path/to/llama-server --gguf model.gguf \
        --clients 1,64 --rounds 2 --max-tokens 128 --completions --ignore-eos

``--clients 1,64`` runs the load once per value. ``--json`` prints the summary (and each request's
record with ``--per-request``) as one JSON object; with several runs, ``{"runs": [summary, ...]}``.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen_servers as servers  # noqa: E402


@dataclass
class Record:
    """One request as the client saw it."""
    ok: bool = False
    error: str | None = None
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None            # request sent -> first text
    total_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)   # between consecutive text chunks


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between the closest ranks; None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


#: numbers the requests of one loadgen process (each gets its own random prompt ids)
_prompt_counter = itertools.count()


def _payload(args: argparse.Namespace, model: str, i: int) -> dict:
    body: dict = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature,
                  "stream": True, "stream_options": {"include_usage": True}}
    if args.seed is not None:
        body["seed"] = args.seed + i   # a different, reproducible stream per request
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.prompt_ids:
        # fresh ids for every request sent (warm-up included): no request finds another's prompt
        # in a server's prefix cache, and both engines see the same tokens whatever their vocabulary
        r = random.Random(next(_prompt_counter))
        lo, hi = args.id_range
        body["prompt"] = [r.randrange(lo, hi) for _ in range(args.prompt_ids)]
    elif args.completions:
        body["prompt"] = args.prompt
    else:
        body["messages"] = [{"role": "user", "content": args.prompt}]
    return body


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Record:
    """Send one streaming request and time its chunks."""
    rec = Record()
    t0 = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
                return rec
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = chunk["error"].get("message", str(chunk["error"]))
                    continue
                if chunk.get("usage"):
                    rec.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    rec.completion_tokens = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices", []):
                    piece = c.get("text") if "text" in c else (c.get("delta") or {}).get("content")
                    if piece:
                        now = time.perf_counter()
                        if last is None:
                            rec.ttft_s = now - t0
                        else:
                            rec.gaps_s.append(now - last)
                        last = now
                        rec.text += piece
                    if c.get("finish_reason"):
                        rec.finish_reason = c["finish_reason"]
            if not done and rec.error is None:
                rec.error = "the stream ended without [DONE]"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec.error = f"{type(e).__name__}: {e}"
    rec.total_s = time.perf_counter() - t0
    rec.ok = rec.error is None and rec.finish_reason is not None
    return rec


async def run_load(args: argparse.Namespace, url: str, clients: int, requests: int) -> dict:
    """Put ``requests`` requests on the server at ``url`` (its /v1 base), at most ``clients`` in
    flight, and return the summary (and the records under "requests_detail")."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = url.rstrip("/")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model
        if model is None:
            r = await client.get(f"{base}/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        url = f"{base}/completions" if args.completions else f"{base}/chat/completions"
        sem = asyncio.Semaphore(clients)   # at most `clients` requests in flight

        async def bounded(i: int) -> Record:
            async with sem:
                return await one_request(client, url, _payload(args, model, i))
        t0 = time.perf_counter()
        records = await asyncio.gather(*(bounded(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    ok = [r for r in records if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    ms = lambda v: None if v is None else round(v * 1000, 2)   # noqa: E731
    errors = [r.error for r in records if not r.ok]
    return {"model": model, "clients": clients, "requests": len(records), "ok": len(ok),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": round(wall, 3), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
            "ttft_ms_p50": ms(percentile(ttft, 50)), "ttft_ms_p99": ms(percentile(ttft, 99)),
            "itl_ms_p50": ms(percentile(gaps, 50)), "itl_ms_p99": ms(percentile(gaps, 99)),
            "requests_detail": [asdict(r) for r in records]}


def build_parser() -> argparse.ArgumentParser:
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass
    p = argparse.ArgumentParser(prog="python tools/loadgen.py", description=__doc__, formatter_class=Fmt)
    p.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 base URL")
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--model", default=None, help="model name (default: the first of /v1/models)")
    p.add_argument("--clients", default="8",
                   help="concurrent streaming clients; a comma list (1,64) runs the load once per value")
    p.add_argument("--requests", default=None,
                   help="requests in all, per run (default: clients x --rounds); a comma list gives one count per "
                        "--clients value")
    p.add_argument("--rounds", type=int, default=1, help="without --requests: requests = clients x rounds")
    p.add_argument("--warmup", type=int, default=None,
                   help="unmeasured requests (one at a time) before a server's first run (default: 2 for a "
                        "server loadgen starts, else 0)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None, help="request i gets seed SEED + i")
    p.add_argument("--ignore-eos", action="store_true",
                   help="ask the server to go on past end-of-text (tinygraph/vLLM extension): fixed lengths")
    p.add_argument("--prompt", default="Write a short story about a robot learning to paint.",
                   help="the user message (or prompt, with --completions)")
    p.add_argument("--completions", action="store_true", help="use /v1/completions instead of chat")
    p.add_argument("--prompt-ids", type=int, default=0, metavar="N",
                   help="/v1/completions with a prompt of N random token ids, new for every request (no prefix-cache "
                        "hits; the same tokens on servers with different vocabularies)")
    p.add_argument("--id-range", default="300,20000", metavar="LO,HI", help="the ids --prompt-ids draws from")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--per-request", action="store_true", help="with --json: include every request's record")
    g = p.add_argument_group("servers loadgen starts itself (instead of --url), on free local ports")
    g.add_argument("--serve", metavar="MODEL", default=None,
                   help="start 'python -m tinygraph.serve --model MODEL' ('default': the default model)")
    g.add_argument("--serve-args", default="", help="more tinygraph.serve arguments, e.g. '--kv-memory 4G'")
    g.add_argument("--llama-server", metavar="BIN", default=None,
                   help="start llama.cpp's llama-server binary on --gguf (-ngl 99 -fa on, one slot per client)")
    g.add_argument("--gguf", default=None, help="the GGUF file llama-server loads")
    g.add_argument("--llama-context", type=int, default=1024, help="llama-server's context per slot (tokens)")
    g.add_argument("--llama-args", default="", help="more llama-server arguments")
    g.add_argument("--start-timeout", type=float, default=900.0, help="seconds a started server may take to load")
    return p


def parse_counts(text: str, flag: str = "--clients") -> list[int]:
    """``"1,64"`` -> [1, 64]; SystemExit naming ``flag`` for anything but integers >= 1."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        sys.exit(f"loadgen: {flag} takes integers >= 1 (e.g. 8 or 1,64), got {text!r}")
    return values


def _targets(args: argparse.Namespace, most_clients: int) -> list[tuple[str, Any]]:
    """(name, a context manager giving the /v1 URL) of every server to load, in order: the ones
    loadgen starts (one at a time, each stopped before the next starts), else --url."""
    out: list[tuple[str, Any]] = []
    if args.serve:
        port = servers.free_port()
        cmd = servers.tinygraph_command("" if args.serve == "default" else args.serve, port,
                                        shlex.split(args.serve_args))
        out.append(("tinygraph", servers.started(cmd, "tinygraph", args.start_timeout, port)))
    if args.llama_server:
        if not args.gguf:
            sys.exit("loadgen: --llama-server needs --gguf FILE (the model it loads)")
        port = servers.free_port()
        cmd = servers.llama_server_command(args.llama_server, args.gguf, port, most_clients, args.llama_context,
                                           shlex.split(args.llama_args))
        out.append(("llama.cpp", servers.started(cmd, "llama-server", args.start_timeout, port)))
    return out or [(args.url, nullcontext(args.url))]


def _print_text(s: dict) -> None:
    print(f"{s['server']}: {s['requests']} requests ({s['clients']} concurrent) to {s['model']}: {s['ok']} ok, "
          f"{s['errors']} failed" + (f" (first: {s['first_error']})" if s["errors"] else ""))
    print(f"  {s['completion_tokens']} completion tokens in {s['wall_s']} s: {s['tokens_per_s']} tok/s")
    print(f"  time to first token: p50 {s['ttft_ms_p50']} ms, p99 {s['ttft_ms_p99']} ms")
    print(f"  inter-token latency: p50 {s['itl_ms_p50']} ms, p99 {s['itl_ms_p99']} ms")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = parse_counts(args.clients)
    counts = parse_counts(args.requests, "--requests") if args.requests is not None else [c * args.rounds for c in sizes]
    if len(counts) == 1:
        counts *= len(sizes)
    if len(counts) != len(sizes):
        sys.exit(f"loadgen: --requests gives {len(counts)} counts for {len(sizes)} --clients values")
    try:
        args.id_range = tuple(int(v) for v in args.id_range.split(","))
        assert len(args.id_range) == 2 and 0 <= args.id_range[0] < args.id_range[1]
    except (ValueError, AssertionError):
        sys.exit(f"loadgen: --id-range takes LO,HI with 0 <= LO < HI, got {args.id_range!r}")
    if args.prompt_ids < 0:
        sys.exit("loadgen: --prompt-ids must be >= 0")
    args.completions = args.completions or args.prompt_ids > 0
    if args.rounds < 1:
        sys.exit("loadgen: --rounds must be >= 1")
    started = bool(args.serve or args.llama_server)
    warmup = (2 if started else 0) if args.warmup is None else args.warmup
    runs: list[dict] = []
    try:
        for name, server in _targets(args, max(sizes)):
            with server as url:
                if warmup:
                    asyncio.run(run_load(args, url, 1, warmup))
                for c, n in zip(sizes, counts):
                    s = asyncio.run(run_load(args, url, c, n))
                    s["server"] = name
                    detail = s.pop("requests_detail")
                    if args.per_request:
                        s["requests_detail"] = detail
                    runs.append(s)
                    if not args.json:
                        _print_text(s)
    except httpx.HTTPError as e:
        sys.exit(f"loadgen: a request failed outright ({type(e).__name__}: {e}); is the server at {args.url} up?")
    except RuntimeError as e:                      # a server loadgen started did not come up
        sys.exit(f"loadgen: {e}")
    if args.json:
        print(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}))
    elif len(runs) > 1:
        print("\n| server | clients | tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | ok |\n|---|---|---|---|---|---|")
        for s in runs:
            print(f"| {s['server']} | {s['clients']} | {s['tokens_per_s']} | {s['ttft_ms_p50']} / {s['ttft_ms_p99']} | "
                  f"{s['itl_ms_p50']} / {s['itl_ms_p99']} | {s['ok']}/{s['requests']} |")
    return 0 if all(s["errors"] == 0 for s in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
