"""Start one process per GPU: ``python -m tinygraph.launch --gpus N [-m module | script.py] [args...]``.

Each of the N processes runs the same program with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set (``tinygraph.distributed.DistEnv``; the variables torchrun
sets, so a program written for one runs under the other). ``NCCL_NVLS_ENABLE`` is set to 0 unless
the caller set it: NVLink multicast can take a host's shared GPUs out of service.

Examples::

    python -m tinygraph.launch --gpus 2 -m tinygraph.run --model Qwen/Qwen3-8B --tensor-parallel 2
    python -m tinygraph.launch --gpus 4 my_script.py --flag

When a rank exits with an error the others are stopped (SIGTERM, then SIGKILL after
``--grace`` seconds) and the launcher exits with that rank's code; Ctrl-C or SIGTERM to the
launcher stops them all.
Multi-node: run the launcher on every host with ``--nnodes``, ``--node-rank`` and a
``--master-addr`` that every host reaches; ranks are numbered node by node.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tinygraph.launch", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, required=True, help="processes (GPUs) on this host")
    ap.add_argument("--nnodes", type=int, default=1, help="hosts taking part (default 1)")
    ap.add_argument("--node-rank", type=int, default=0, help="this host's index, 0 .. nnodes-1")
    ap.add_argument("--master-addr", default="127.0.0.1", help="rank 0's host (default 127.0.0.1)")
    ap.add_argument("--master-port", type=int, default=29500, help="rank 0's rendezvous port (default 29500)")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default 10)")
    ap.add_argument("-m", dest="module", default=None, help="run a module (as python -m); what follows is its args")
    ap.epilog = "then: script.py [args...] (everything after the script or -m MODULE goes to the program)"
    return ap


_TAKES_VALUE = {"--gpus", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--grace"}


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the launcher's arguments, the program's): the program starts at the first word that is
    not an option (the script), after ``-m MODULE``, or after ``--``."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return argv[:i], argv[i + 1:]
        if a == "-m":
            return argv[:i + 2], argv[i + 2:]
        if a in _TAKES_VALUE:
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            return argv[:i], argv[i:]
    return argv, []


def rank_envs(gpus: int, nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
              master_port: int = 29500, base: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The environment of each of this host's ``gpus`` processes (``base``: default
    ``os.environ``). Raises ValueError on impossible counts."""
    if gpus < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"--gpus {gpus}, --nnodes {nnodes}, --node-rank {node_rank}: need gpus >= 1, "
                         "nnodes >= 1 and 0 <= node-rank < nnodes")
    if not 0 < master_port < 65536:
        raise ValueError(f"--master-port {master_port} is not a TCP port")
    envs = []
    for local in range(gpus):
        e = dict(os.environ if base is None else base)
        e.update(RANK=str(node_rank * gpus + local), WORLD_SIZE=str(nnodes * gpus), LOCAL_RANK=str(local),
                 LOCAL_WORLD_SIZE=str(gpus), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        e.setdefault("NCCL_NVLS_ENABLE", "0")
        envs.append(e)
    return envs


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(end - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _Terminated(Exception):
    """The launcher got SIGTERM (a job scheduler stopping it): the ranks are stopped too."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    own, prog = _split(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(own)
    if args.module is None and not prog:
        _parser().error("give a script (script.py [args...]) or -m module [args...]")
    try:
        envs = rank_envs(args.gpus, args.nnodes, args.node_rank, args.master_addr, args.master_port)
    except ValueError as e:
        _parser().error(str(e))
    cmd = [sys.executable] + (["-m", args.module] if args.module else []) + prog
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    procs: list[subprocess.Popen] = []
    try:
        for e in envs:
            procs.append(subprocess.Popen(cmd, env=e))
        return _watch(procs, args.node_rank * args.gpus, args.grace)
    except KeyboardInterrupt:
        _stop(procs, args.grace)
        return 130
    except _Terminated:
        _stop(procs, args.grace)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch(procs: list[subprocess.Popen], first: int, grace: float) -> int:
    """Wait for the ranks: 0 when all succeed; else stop the rest and return the first failure's code."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, c = failed[0]
            print(f"tinygraph.launch: rank {first + i} exited with code {c}; stopping the other ranks",
                  file=sys.stderr, flush=True)
            _stop(procs, grace)
            return c if c > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
