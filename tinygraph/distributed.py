"""One process per GPU: who this process is (:class:`DistEnv`, torchrun-style environment
variables) and how the ranks meet before NCCL exists (:func:`broadcast_bytes`).

``python -m tinygraph.launch --gpus N ...`` (``tinygraph/launch.py``) starts N copies of a program
with these variables set; ``torchrun`` sets the same ones, so either launcher works:

- ``RANK`` (0 .. WORLD_SIZE-1), ``WORLD_SIZE``: this process's rank and the number of ranks;
- ``LOCAL_RANK``: the GPU this process uses (its index on this host; default ``RANK``);
- ``MASTER_ADDR``, ``MASTER_PORT``: where rank 0 serves the rendezvous (default 127.0.0.1:29500).

The rendezvous is one TCP exchange: rank 0 listens on ``MASTER_ADDR:MASTER_PORT`` and sends the
same bytes (NCCL's 128-byte unique id) to every other rank, which connects, says its rank and reads
them. Across hosts this is NCCL's usual bootstrap (rank 0's address reachable by all); it uses only
the standard library.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import struct
import time
from typing import Mapping

from .errors import TinygraphError

_MAGIC = b"TGRV1"  # the rendezvous protocol's first bytes (a stray client is refused, not trusted)


class RendezvousError(TinygraphError, RuntimeError):
    """The ranks did not meet: a rank is missing past the timeout, or the peers disagree."""


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place among the ranks (see the module docstring)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> "DistEnv | None":
        """The ranks' variables of ``environ`` (default ``os.environ``), or None when
        ``WORLD_SIZE`` is not set (a single process). Bad values raise ValueError naming them."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return None

        def num(name: str, default: int | None = None) -> int:
            raw = env.get(name)
            if raw is None:
                if default is None:
                    raise ValueError(f"{name} is not set (WORLD_SIZE is {env['WORLD_SIZE']!r}: each rank needs "
                                     "RANK; python -m tinygraph.launch sets them)")
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer") from None

        world, rank = num("WORLD_SIZE"), num("RANK")
        if world < 1:
            raise ValueError(f"WORLD_SIZE={world} must be >= 1")
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} outside 0..{world - 1} (WORLD_SIZE={world})")
        local = num("LOCAL_RANK", rank)
        if local < 0:
            raise ValueError(f"LOCAL_RANK={local} must be >= 0")
        port = num("MASTER_PORT", 29500)
        if not 0 < port < 65536:
            raise ValueError(f"MASTER_PORT={port} is not a TCP port")
        return DistEnv(rank, world, local, env.get("MASTER_ADDR", "127.0.0.1") or "127.0.0.1", port)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def broadcast_bytes(env: DistEnv, payload: bytes | None = None, timeout: float = 120.0) -> bytes:
    """Rank 0's ``payload`` on every rank (rank 0 passes it, the others None). Rank 0 serves it on
    ``env.master_addr:env.master_port`` until each of the other ``world_size - 1`` ranks has
    fetched it once; a rank that has not arrived after ``timeout`` seconds raises
    :class:`RendezvousError` (naming the missing ranks, on rank 0)."""
    if env.world_size == 1:
        if payload is None:
            raise ValueError("broadcast_bytes: rank 0 must pass the payload")
        return payload
    deadline = time.monotonic() + timeout
    if env.rank == 0:
        if payload is None:
            raise ValueError("broadcast_bytes: rank 0 must pass the payload")
        return _serve(env, payload, deadline, timeout)
    if payload is not None:
        raise ValueError(f"broadcast_bytes: only rank 0 passes a payload (this is rank {env.rank})")
    return _fetch(env, deadline, timeout)


def _serve(env: DistEnv, payload: bytes, deadline: float, timeout: float) -> bytes:
    waiting = set(range(1, env.world_size))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind(("" if env.master_addr not in ("127.0.0.1", "localhost") else env.master_addr, env.master_port))
        except OSError as e:
            raise RendezvousError(f"rank 0 cannot listen on port {env.master_port} ({e}); "
                                  "pick a free one with MASTER_PORT (tinygraph.launch --master-port)") from None
        srv.listen(env.world_size)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RendezvousError(f"rank 0: rank(s) {sorted(waiting)} did not connect within {timeout:g} s")
            srv.settimeout(left)
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(max(deadline - time.monotonic(), 1.0))
                try:
                    magic, rank, world = _recv_exact(conn, len(_MAGIC)), *struct.unpack("<ii", _recv_exact(conn, 8))
                except (OSError, ConnectionError, struct.error):
                    continue  # not one of ours (or it died mid-hello): keep serving
                if magic != _MAGIC:
                    continue
                if world != env.world_size or rank not in waiting:
                    conn.sendall(struct.pack("<i", -1))
                    raise RendezvousError(f"rank 0: a peer says it is rank {rank} of {world}; expected one of "
                                          f"{sorted(waiting)} of {env.world_size} (two jobs on one port?)")
                conn.sendall(struct.pack("<i", len(payload)) + payload)
                waiting.discard(rank)
    return payload


def _fetch(env: DistEnv, deadline: float, timeout: float) -> bytes:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((env.master_addr, env.master_port),
                                          timeout=max(min(deadline - time.monotonic(), 10.0), 0.1)) as s:
                s.sendall(_MAGIC + struct.pack("<ii", env.rank, env.world_size))
                (n,) = struct.unpack("<i", _recv_exact(s, 4))
                if n < 0:
                    raise RendezvousError(f"rank {env.rank}: rank 0 refused this rank (world sizes or ranks differ)")
                return _recv_exact(s, n)
        except (OSError, ConnectionError) as e:  # rank 0 not listening yet: try again shortly
            last = e
            time.sleep(0.05)
    raise RendezvousError(f"rank {env.rank}: no rank 0 at {env.master_addr}:{env.master_port} within "
                          f"{timeout:g} s (last error: {last})")
