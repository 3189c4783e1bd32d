"""Load generator for ``python -m tinygraph.serve`` (or any OpenAI-compatible server).

Runs ``--clients`` concurrent streaming clients, together ``--requests`` requests, against a running
server and reports the aggregate generation speed (completion tokens per second of wall time),
time to first token and inter-token latency (p50/p99), each request read as raw server-sent events
with httpx so that every chunk is timed as it arrives.

    python -m tinygraph.serve --model path/to/model &
    python tools/loadgen.py --url http://127.0.0.1:8000/v1 --clients 16 --requests 64 --max-tokens 128

``--json`` prints the summary (and each request's record with ``--per-request``) as one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx


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


def _payload(args: argparse.Namespace, model: str, i: int) -> dict:
    body: dict = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature,
                  "stream": True, "stream_options": {"include_usage": True}}
    if args.seed is not None:
        body["seed"] = args.seed + i   # a different, reproducible stream per request
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.completions:
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


async def run_load(args: argparse.Namespace) -> dict:
    """Run the load and return the summary (and the records under "requests")."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = args.url.rstrip("/")
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model
        if model is None:
            r = await client.get(f"{base}/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        url = f"{base}/completions" if args.completions else f"{base}/chat/completions"
        sem = asyncio.Semaphore(args.clients)   # at most --clients requests in flight

        async def bounded(i: int) -> Record:
            async with sem:
                return await one_request(client, url, _payload(args, model, i))
        t0 = time.perf_counter()
        records = await asyncio.gather(*(bounded(i) for i in range(args.requests)))
        wall = time.perf_counter() - t0
    ok = [r for r in records if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    ms = lambda v: None if v is None else round(v * 1000, 2)   # noqa: E731
    errors = [r.error for r in records if not r.ok]
    return {"model": model, "clients": args.clients, "requests": len(records), "ok": len(ok),
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
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    p.add_argument("--requests", type=int, default=None, help="requests in all (default: one per client)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None, help="request i gets seed SEED + i")
    p.add_argument("--ignore-eos", action="store_true",
                   help="ask the server to go on past end-of-text (tinygraph/vLLM extension): fixed lengths")
    p.add_argument("--prompt", default="Write a short story about a robot learning to paint.",
                   help="the user message (or prompt, with --completions)")
    p.add_argument("--completions", action="store_true", help="use /v1/completions instead of chat")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--per-request", action="store_true", help="with --json: include every request's record")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1:
        sys.exit("loadgen: --clients must be >= 1")
    args.requests = args.clients if args.requests is None else args.requests
    if args.requests < 1:
        sys.exit("loadgen: --requests must be >= 1")
    try:
        s = asyncio.run(run_load(args))
    except httpx.HTTPError as e:
        sys.exit(f"loadgen: cannot reach {args.url}: {e}")
    detail = s.pop("requests_detail")
    if args.json:
        if args.per_request:
            s["requests_detail"] = detail
        print(json.dumps(s))
    else:
        print(f"{s['requests']} requests ({s['clients']} concurrent) to {s['model']}: {s['ok']} ok, "
              f"{s['errors']} failed" + (f" (first: {s['first_error']})" if s["errors"] else ""))
        print(f"  {s['completion_tokens']} completion tokens in {s['wall_s']} s: {s['tokens_per_s']} tok/s")
        print(f"  time to first token: p50 {s['ttft_ms_p50']} ms, p99 {s['ttft_ms_p99']} ms")
        print(f"  inter-token latency: p50 {s['itl_ms_p50']} ms, p99 {s['itl_ms_p99']} ms")
    return 0 if s["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
