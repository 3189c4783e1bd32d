"""One process per rank: who this process is (:class:`DistEnv`, torchrun-style environment
variables), how the ranks meet before NCCL exists (:func:`broadcast_bytes`), and the NumPy
backend's communicator between processes (:class:`SocketCommunicator`).

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
import json
import os
import socket
import struct
import time
from typing import Mapping

import numpy as np

from .errors import TinygraphError
from .parallel import CommunicatorError, OneRankCommunicator

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
    if (env.rank == 0) != (payload is not None):
        raise ValueError("broadcast_bytes: rank 0 must pass the payload" if env.rank == 0 else
                         f"broadcast_bytes: only rank 0 passes a payload (this is rank {env.rank})")
    if env.world_size == 1:
        return payload  # type: ignore[return-value]
    deadline = time.monotonic() + timeout
    if env.rank:
        s, got = _dial(env, deadline, timeout)
        s.close()
        return got
    for _, conn in _accept_peers(env, payload, deadline, timeout):  # type: ignore[arg-type]
        conn.close()
    return payload  # type: ignore[return-value]


def _accept_peers(env: DistEnv, payload: bytes, deadline: float, timeout: float):
    """Rank 0: listen on the master port, and for each other rank (once each, any order) read its
    hello, send it ``payload`` (length-prefixed) and yield (rank, its open connection). A peer that
    is not one of this job's ranks is refused (-1) and raises; other strangers are ignored."""
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
            conn.settimeout(max(timeout, 1.0))
            try:
                magic, (rank, world) = _recv_exact(conn, len(_MAGIC)), struct.unpack("<ii", _recv_exact(conn, 8))
            except (OSError, ConnectionError, struct.error):
                conn.close()
                continue  # not one of ours (or it died mid-hello): keep serving
            if magic != _MAGIC:
                conn.close()
                continue
            if world != env.world_size or rank not in waiting:
                conn.sendall(struct.pack("<i", -1))
                conn.close()
                raise RendezvousError(f"rank 0: a peer says it is rank {rank} of {world}; expected one of "
                                      f"{sorted(waiting)} of {env.world_size} (two jobs on one port?)")
            conn.sendall(struct.pack("<i", len(payload)) + payload)
            waiting.discard(rank)
            yield rank, conn


def _dial(env: DistEnv, deadline: float, timeout: float) -> tuple[socket.socket, bytes]:
    """A rank other than 0: connect to rank 0 (retrying until it listens), say which rank this is,
    and read rank 0's payload; returns the open connection and the payload."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection((env.master_addr, env.master_port),
                                         timeout=max(min(deadline - time.monotonic(), 10.0), 0.1))
        except OSError as e:  # rank 0 not listening yet: try again shortly
            last = e
            time.sleep(0.05)
            continue
        try:
            s.settimeout(max(timeout, 1.0))
            s.sendall(_MAGIC + struct.pack("<ii", env.rank, env.world_size))
            (n,) = struct.unpack("<i", _recv_exact(s, 4))
            if n < 0:
                raise RendezvousError(f"rank {env.rank}: rank 0 refused this rank (world sizes or ranks differ)")
            return s, _recv_exact(s, n)
        except (OSError, ConnectionError) as e:
            s.close()
            last = e
            time.sleep(0.05)
        except BaseException:
            s.close()
            raise
    raise RendezvousError(f"rank {env.rank}: no rank 0 at {env.master_addr}:{env.master_port} within "
                          f"{timeout:g} s (last error: {last})")


class SocketCommunicator(OneRankCommunicator):
    """``all_reduce`` between processes over TCP, for the NumPy backend: this process's rank of
    ``env.world_size`` (one process each, e.g. started by ``tinygraph.launch``). Rank 0 is the
    hub: every other rank keeps one connection to it, sends its array, and gets back the sum that
    rank 0 adds up in rank order, in float32 -- the in-process communicator's arithmetic, so a
    model split over processes gives bit for bit the in-process simulation's results. Also hands
    every rank the same ``seed_base`` (8 random bytes from rank 0). ``timeout``: seconds to wait
    for the other ranks, at the start and in each collective."""

    kind = "socket"

    def __init__(self, env: DistEnv, timeout: float = 120.0) -> None:
        self.size, self.rank, self.env, self.timeout = env.world_size, env.rank, env, float(timeout)
        self.rounds = 0
        self._peers: list[socket.socket] = []  # rank 0: ranks 1.. in order; others: rank 0
        payload = os.urandom(8)
        if env.world_size > 1:
            deadline = time.monotonic() + timeout
            if env.rank:
                s, payload = _dial(env, deadline, timeout)
                self._peers = [s]
            else:
                peers = dict(_accept_peers(env, payload, deadline, timeout))
                self._peers = [peers[r] for r in range(1, env.world_size)]
        self.seed_base = int.from_bytes(payload, "little")
        self._register()

    @staticmethod
    def _send(s: socket.socket, tag: str, a) -> None:
        a = np.ascontiguousarray(a)
        head = json.dumps({"tag": tag, "dtype": a.dtype.str, "shape": list(a.shape)}).encode()
        s.sendall(struct.pack("<iq", len(head), a.nbytes) + head + a.tobytes())

    @staticmethod
    def _recv(s: socket.socket):
        nh, nb = struct.unpack("<iq", _recv_exact(s, 12))
        head = json.loads(_recv_exact(s, nh))
        if "error" in head:
            return head, None
        return head, np.frombuffer(_recv_exact(s, nb), np.dtype(head["dtype"])).reshape(head["shape"])

    def all_reduce(self, rank: int, x, tag: str = ""):
        """The float32 sum over the ranks of ``x``, in rank order (read-only, the same on all)."""
        if self.size == 1:
            acc = np.array(x, dtype=np.float32)
            acc.flags.writeable = False
            return acc
        try:
            if self.rank:
                self._send(self._peers[0], tag, x)
                head, out = self._recv(self._peers[0])
                if out is None:
                    raise CommunicatorError(f"all_reduce {tag!r} on rank {self.rank}: {head['error']}")
            else:
                acc, err = np.array(x, dtype=np.float32), None
                for r, s in enumerate(self._peers, 1):
                    head, y = self._recv(s)
                    if err is None and (head["tag"] != tag or tuple(head["shape"]) != acc.shape):
                        err = (f"ranks disagree in one round: rank 0 has {tag!r} {acc.shape}, rank {r} "
                               f"{head['tag']!r} {tuple(head['shape'])}")
                    elif err is None:
                        acc += y
                for s in self._peers:
                    if err is None:
                        self._send(s, tag, acc)
                    else:
                        body = json.dumps({"error": err}).encode()
                        s.sendall(struct.pack("<iq", len(body), 0) + body)
                if err is not None:
                    raise CommunicatorError(f"all_reduce {tag!r} on rank 0: {err}")
                out = acc
        except (OSError, ConnectionError) as e:
            who = "rank 0" if self.rank else "a rank"
            raise CommunicatorError(f"all_reduce {tag!r} on rank {self.rank}: lost {who} "
                                    f"({type(e).__name__}: {e}); a rank failed or stopped") from None
        self.rounds += 1
        out.flags.writeable = False  # float32 on every rank: rank 0's sum, or those bytes as received
        return out

    def close(self) -> None:
        """Close the connections (idempotent)."""
        for s in self._peers:
            s.close()
        self._peers = []

    def __repr__(self) -> str:
        return f"SocketCommunicator(rank {self.rank} of {self.size})"


class ControlChannel:
    """Rank 0's messages (JSON objects) to every other rank, in order, over TCP on
    ``MASTER_PORT + 1`` (the communicator's rendezvous has ``MASTER_PORT``): how a lockstep
    leader tells its followers what each step does (``models/lockstep.py``)."""

    def __init__(self, env: DistEnv, timeout: float = 120.0) -> None:
        self.rank, self.size = env.rank, env.world_size
        self._peers: list[socket.socket] = []
        if env.world_size == 1:
            return
        env = dataclasses.replace(env, master_port=env.master_port + 1)
        deadline = time.monotonic() + timeout
        if env.rank:
            s, _ = _dial(env, deadline, timeout)
            s.settimeout(None)  # a follower waits as long as the leader serves
            self._peers = [s]
        else:
            peers = dict(_accept_peers(env, b"", deadline, timeout))
            self._peers = [peers[r] for r in range(1, env.world_size)]

    def send(self, msg: dict) -> None:
        """Rank 0: ``msg`` to every other rank."""
        body = json.dumps(msg).encode()
        for s in self._peers:
            s.sendall(struct.pack("<q", len(body)) + body)

    def recv(self) -> dict:
        """Another rank: rank 0's next message (blocks); ConnectionError when rank 0 is gone."""
        (n,) = struct.unpack("<q", _recv_exact(self._peers[0], 8))
        return json.loads(_recv_exact(self._peers[0], n))

    def close(self) -> None:
        for s in self._peers:
            s.close()
        self._peers = []
