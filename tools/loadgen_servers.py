"""Servers that ``tools/loadgen.py`` starts by itself, so that one invocation puts the same load on
tinygraph's server and on llama.cpp's ``llama-server``: each one on a free local port, waited for
until its ``/health`` answers 200, and stopped (SIGINT, then SIGKILL) when the load is done.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_healthy(url: str, proc: subprocess.Popen, log: str, name: str, timeout: float) -> float:
    """Poll ``url`` (a /health endpoint) until it answers 200; seconds waited. RuntimeError with
    the server's last log lines when the process exits first or ``timeout`` seconds pass
    (llama-server answers 503 while it loads the model)."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before it was ready:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.25)


@contextmanager
def started(cmd: Sequence[str], name: str, timeout: float, port: int) -> Iterator[str]:
    """Run ``cmd`` (a server listening on ``port``), wait until it is healthy, yield its /v1 base
    URL, and stop it afterwards. Its output goes to a temporary log, quoted in errors."""
    fd, log = tempfile.mkstemp(prefix=f"loadgen-{name}-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        waited = wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, name, timeout)
        print(f"loadgen: {name} ready in {waited:.1f} s (pid {proc.pid}, log {log})", file=sys.stderr)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)        # both servers stop gracefully on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tinygraph_command(model: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """``python -m tinygraph.serve`` on ``model`` (a path, or "" for the default model)."""
    cmd = [sys.executable, "-m", "tinygraph.serve", "--port", str(port)]
    return cmd + (["--model", model] if model else []) + list(extra)


def llama_server_command(binary: str, gguf: str, port: int, parallel: int, slot_context: int,
                         extra: Sequence[str] = ()) -> list[str]:
    """llama-server on ``gguf`` with every layer on the GPU, flash attention, ``parallel`` slots of
    ``slot_context`` tokens each (``-c`` is the total over the slots), continuous batching (its
    default)."""
    return [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-ngl", "99", "-fa", "on",
            "-np", str(parallel), "-c", str(parallel * slot_context), "--no-webui", *extra]
