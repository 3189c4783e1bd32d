"""A paged KV cache for many sequences, and the step layout that writes and reads it.

The pool holds, per layer, keys and values ``[kv_heads, rows, head_dim]`` (the layout of the
one-sequence cache, so the same kernels read it); ``rows = num_blocks * block_size + 1``. A
sequence owns whole blocks of ``block_size`` rows, listed in its block table: position ``p``
lives in row ``table[p // block_size] * block_size + p % block_size``. The last row is scratch:
padding tokens of a step write there, and gathers of positions a sequence does not own read it
(the causal mask hides them).

A decode step over several sequences (:class:`PagedStep`, one token each) is one
``attention_store`` per layer with a table of each sequence's pool rows: it writes the token's
keys/values into its row and attends over the sequence's rows where they lie (on CUDA one
kernel). Prefill steps, and models whose attention that op cannot express (Gemma 2's capped
scores), write each token's keys/values into its row (``set_rows``), gather each sequence's first
``S`` positions into contiguous keys/values (``get_rows``) and attend over them with the model's
own attention (``Transformer.attend``). ``S`` is the step's context bucket: graphs are built per
(sequences, tokens each, bucket) and fed new tables every step.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

import tinygraph as tg
from tinygraph.util import format_bytes

if TYPE_CHECKING:
    from .transformer import Transformer


class KVLayout(Protocol):
    """Where a step's keys/values go and which keys its queries see (``Transformer.build_step``)."""

    def attend(self, q: tg.Tensor, k: tg.Tensor, v: tg.Tensor, i: int, positions: tg.Tensor) -> tg.Tensor:
        """Store layer ``i``'s ``k``/``v`` [N, nkv, hd] and attend with ``q`` [N, nh, hd] (tokens at
        ``positions``, int32 [N]) -> [N, nh * hd]."""
        ...


class KVPoolFullError(RuntimeError):
    """The pool has too few free blocks for a request."""


def token_bytes(model: "Transformer") -> int:
    """KV-cache bytes one token takes over all layers (keys and values)."""
    c = model.config
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * model.dtype.itemsize


class KVPool:
    """Per-layer key/value buffers shared by many sequences, handed out in blocks of
    ``block_size`` tokens. ``num_blocks`` blocks in all (see :func:`blocks_for_memory`).
    Not thread-safe: one scheduler owns it."""

    def __init__(self, model: "Transformer", num_blocks: int, block_size: int = 16) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV pool needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        c, s = model.config, model.session
        self.model, self.num_blocks, self.block_size = model, int(num_blocks), int(block_size)
        self.rows = self.num_blocks * self.block_size + 1
        self.scratch = self.rows - 1
        shape = (c.num_kv_heads, self.rows, c.head_dim)
        self.k = [s.persistent(shape, model.dtype, name=f"pool.k.{i}") for i in range(c.num_layers)]
        self.v = [s.persistent(shape, model.dtype, name=f"pool.v.{i}") for i in range(c.num_layers)]
        # [kv_heads * rows, head_dim] views for gathering a sequence's rows (made once, outside graphs)
        flat = (c.num_kv_heads * self.rows, c.head_dim)
        self.k_rows = [tg.view(t, flat, name=f"pool.k.{i}.rows") for i, t in enumerate(self.k)]
        self.v_rows = [tg.view(t, flat, name=f"pool.v.{i}.rows") for i, t in enumerate(self.v)]
        self._free = list(range(self.num_blocks - 1, -1, -1))  # pop() hands out low blocks first
        self.tables: dict[object, list[int]] = {}
        # prefix reuse: a full block whose keys/values a prefix of tokens produced is kept under
        # the chained hash of that prefix; sequences starting with the same tokens share it
        self._refs: dict[int, int] = {}                       # block -> sequences using it
        self._by_hash: OrderedDict[int, int] = OrderedDict()  # prefix hash -> block (LRU order)
        self._hash_of: dict[int, int] = {}                    # block -> its prefix hash
        self._idle = 0                                        # cached blocks no sequence uses
        self._chains: dict[object, list[int]] = {}            # seq -> hashes of its full blocks
        self.reused_tokens = 0

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    @property
    def free_blocks(self) -> int:
        """Blocks a request can get: free ones and cached prefix blocks no sequence uses."""
        return len(self._free) + self._idle

    def blocks_for(self, tokens: int) -> int:
        return -(-int(tokens) // self.block_size)

    def _take(self) -> int:
        """A free block, else the least recently used cached prefix block no sequence uses."""
        if self._free:
            return self._free.pop()
        h, b = next((h, b) for h, b in self._by_hash.items() if not self._refs.get(b))
        del self._by_hash[h], self._hash_of[b]
        self._idle -= 1
        return b

    def reserve(self, seq: object, tokens: int) -> bool:
        """Make ``seq`` own enough blocks for ``tokens`` positions; False (nothing taken) when
        too few blocks are free."""
        table = self.tables.setdefault(seq, [])
        need = self.blocks_for(tokens) - len(table)
        if need > self.free_blocks:
            if not table:
                del self.tables[seq]
            return False
        for _ in range(max(need, 0)):
            b = self._take()
            self._refs[b] = 1
            table.append(b)
        return True

    def share(self, seq: object, tokens: list[int], limit: int, salt: object = None) -> int:
        """Give ``seq`` (which owns nothing yet) the cached blocks of its longest cached prefix of
        whole blocks within ``tokens[:limit]``; returns how many positions they hold (their
        keys/values need no computing). ``salt`` separates prefixes whose keys differ for the same
        tokens (e.g. longrope's regime)."""
        table, chain = self.tables.setdefault(seq, []), self._chains.setdefault(seq, [])
        bs, h = self.block_size, hash(("tinygraph-kv", salt))
        for k in range(int(limit) // bs):
            h = hash((h, tuple(tokens[k * bs:(k + 1) * bs])))
            b = self._by_hash.get(h)
            if b is None:
                break
            self._by_hash.move_to_end(h)
            if not self._refs.get(b):
                self._idle -= 1
            self._refs[b] = self._refs.get(b, 0) + 1
            table.append(b)
            chain.append(h)
        self.reused_tokens += len(table) * bs
        return len(table) * bs

    def register(self, seq: object, tokens: list[int], filled: int, salt: object = None) -> None:
        """Offer ``seq``'s whole blocks among its first ``filled`` positions (computed from
        ``tokens``) for reuse by later sequences with the same prefix."""
        table, chain = self.tables.get(seq, []), self._chains.setdefault(seq, [])
        bs = self.block_size
        h = chain[-1] if chain else hash(("tinygraph-kv", salt))
        for k in range(len(chain), min(int(filled) // bs, len(table))):
            h = hash((h, tuple(tokens[k * bs:(k + 1) * bs])))
            chain.append(h)
            b = table[k]
            if h not in self._by_hash and b not in self._hash_of:
                self._by_hash[h], self._hash_of[b] = b, h

    def release(self, seq: object) -> None:
        """Give ``seq``'s blocks back (no-op for an unknown sequence); cached prefix blocks stay
        cached until their room is needed."""
        self._chains.pop(seq, None)
        for b in reversed(self.tables.pop(seq, [])):
            self._refs[b] -= 1
            if not self._refs[b]:
                del self._refs[b]
                if b in self._hash_of:
                    self._idle += 1
                else:
                    self._free.append(b)

    def rows_at(self, seqs: "list[object | None]", positions: np.ndarray) -> np.ndarray:
        """Pool rows (int64 [len(seqs), n]) of each sequence's ``positions`` [len(seqs), n], in one
        vectorised lookup over the block tables padded into one array; positions a sequence does
        not own (and every position of None, a padding row) map to scratch."""
        bs = self.block_size
        positions = np.asarray(positions, np.int64)
        tabs = [self.tables.get(s, []) if s is not None else [] for s in seqs]
        width = max(max(map(len, tabs), default=0), int(positions.max(initial=0)) // bs + 1) + 1
        tbl = np.full((len(seqs), width), -1, np.int64)  # -1: not owned
        for b, t in enumerate(tabs):
            tbl[b, :len(t)] = t
        blk = np.take_along_axis(tbl, positions // bs, axis=1)
        return np.where(blk >= 0, blk * bs + positions % bs, self.scratch)

    def rows_of(self, seq: object, positions: np.ndarray) -> np.ndarray:
        """Pool rows (int32) of ``seq``'s ``positions``; positions it does not own map to scratch."""
        positions = np.asarray(positions, np.int64)
        return self.rows_at([seq], positions.reshape(1, -1))[0].reshape(positions.shape).astype(np.int32)

    def position_rows(self, seqs: "list[object | None]", S: int) -> np.ndarray:
        """Pool rows of each sequence's positions 0..S-1 (int32 [len(seqs), S]; positions it does
        not own, and every position of None, a padding row: scratch). Built block by block (a
        decode step's table every step: ~4x faster than :meth:`rows_at` over every position)."""
        bs, nb = self.block_size, -(-int(S) // self.block_size)
        pad = [-1] * nb
        tbl = np.array([((self.tables.get(s, []) if s is not None else [])[:nb] + pad)[:nb] for s in seqs],
                       np.int32).reshape(len(seqs), nb)
        rows = np.where(tbl[:, :, None] >= 0, tbl[:, :, None] * bs + np.arange(bs, dtype=np.int32), self.scratch)
        return np.ascontiguousarray(rows.reshape(len(seqs), nb * bs)[:, :S], dtype=np.int32)

    def gather_indices(self, seqs: "list[object | None]", S: int) -> np.ndarray:
        """Indices into the ``[kv_heads * rows, hd]`` views of each sequence's positions 0..S-1,
        head by head (int32 [len(seqs), kv_heads * S]); None: all scratch (a padding row)."""
        ctx = self.position_rows(seqs, S).astype(np.int64)
        heads = np.arange(self.model.config.num_kv_heads, dtype=np.int64)[None, :, None] * self.rows
        return (heads + ctx[:, None, :]).reshape(len(seqs), -1).astype(np.int32)

    def gather_index(self, seq: object | None, S: int) -> np.ndarray:
        """:meth:`gather_indices` of one sequence (int32 [kv_heads * S])."""
        return self.gather_indices([seq], S)[0]

    def close(self) -> None:
        """Release the pool's buffers (the model's session stays open)."""
        s = self.model.session
        if not s.closed:
            s.free(self.k + self.v)
        self.k, self.v, self.k_rows, self.v_rows, self.tables = [], [], [], [], {}
        self._by_hash.clear()
        self._idle = 0

    def __repr__(self) -> str:
        return (f"KVPool({self.num_blocks} blocks x {self.block_size} tokens, {self.free_blocks} free, "
                f"{format_bytes(self.nbytes)})")


def blocks_for_memory(model: "Transformer", kv_memory: int, block_size: int) -> int:
    """How many blocks of ``block_size`` tokens fit in ``kv_memory`` bytes (ValueError if none)."""
    per_block = token_bytes(model) * block_size
    n = int(kv_memory) // per_block
    if n < 1:
        raise ValueError(f"kv_memory of {format_bytes(int(kv_memory))} holds no block of {block_size} tokens "
                         f"({format_bytes(per_block)} each for this model)")
    return n


@dataclass
class PagedStep:
    """The KV layout of one step graph over ``B`` sequences of ``T`` tokens each (row ``b * T + t``
    is token ``t`` of sequence ``b``), each seeing its positions ``0..S-1`` of the pool.

    Decode steps (``T == 1``) whose attention ``attention_store`` expresses (``fused``: no score
    soft-capping, and a backend kernel for the head size and group,
    ``Backend.paged_attention_ok``; ``TINYGRAPH_PAGED_ATTN=0`` turns it off) declare one input,
    ``kv_table`` int32 [B, S] (each sequence's pool row of positions 0..S-1), and run one
    ``attention_store`` per layer: every sequence's new key and value go to its row of its
    position, and each attends over its own rows in place.

    Other steps declare (all fed by :meth:`feeds`) ``kv_rows`` int32 [B * T] (each token's pool
    row), ``kv_gather`` int32 [B, kv_heads * S] (each sequence's gather indices) and ``kv_past``
    int32 [B] (each sequence's first position in the step); unfused decode steps also
    ``kv_past_heads`` [B * kv_heads] (the same, once per KV head: the attention's rows). They
    store with ``set_rows``, gather with ``get_rows`` and attend with ``Transformer.attend``:
    unfused decode steps in one attention whose rows are (sequence, KV head), each at its own
    position, prefill steps per sequence."""

    pool: KVPool
    g: tg.Graph
    B: int
    T: int
    S: int

    def __post_init__(self) -> None:
        m = self.pool.model
        c = m.config
        # TINYGRAPH_PAGED_ATTN=0: the unfused form everywhere (for A/B runs)
        self.fused = self.T == 1 and os.environ.get("TINYGRAPH_PAGED_ATTN", "1") != "0" \
            and m.session.backend.paged_attention_ok(m.dtype, c.head_dim, c.num_heads // c.num_kv_heads)
        if self.fused:
            self.table = self.g.input((self.B, self.S), tg.int32, name="kv_table")
            return
        self.rows = self.g.input((self.B * self.T,), tg.int32, name="kv_rows")
        self.gather = self.g.input((self.B, c.num_kv_heads * self.S), tg.int32, name="kv_gather")
        self.past = self.g.input((self.B,), tg.int32, name="kv_past")
        if self.T == 1:  # each sequence's position once per KV head (the attention's rows)
            self.past_heads = self.g.input((self.B * c.num_kv_heads,), tg.int32, name="kv_past_heads")

    def attend(self, q: tg.Tensor, k: tg.Tensor, v: tg.Tensor, i: int, positions: tg.Tensor) -> tg.Tensor:
        m, pool, B, T, S = self.pool.model, self.pool, self.B, self.T, self.S
        nkv, hd = m.config.num_kv_heads, m.config.head_dim
        P = f"layers.{i}.attn"
        if self.fused:  # RoPE and q/k norms join it in passes.fuse_attention_store
            out = tg.attention_store(q, k, v, positions, pool.k[i], pool.v[i], m.attn_scale(i),
                                     window=m.windows[i], rows=self.table, name=f"{P}.attention_store",
                                     softcap=m.config.attn_softcap)
            return tg.reshape(out, (B, q.shape[1] * hd), name=f"{P}.heads")
        tg.set_rows(pool.k[i], tg.permute(k, (1, 0, 2)), self.rows, name=f"{P}.k_store")
        tg.set_rows(pool.v[i], tg.permute(v, (1, 0, 2)), self.rows, name=f"{P}.v_store")
        if T == 1:  # decode: every sequence's keys in one gather, one attention with a position per row
            keys, vals = self._gather(i, 0, B * nkv * S)                        # [B * nkv * S, hd]
            keys_t = tg.view(keys, (B * nkv, 1, hd, S), (S * hd, 0, 1, hd), name=f"{P}.keys_t")
            vals = tg.view(vals, (B * nkv, 1, S, hd), (S * hd, 0, hd, 1), name=f"{P}.values_v")
            return m.attend(q, keys_t, vals, i, self.past_heads, per_row=True)
        outs = []
        for b in range(B):  # prefill chunks: one sequence's queries over its own keys
            keys, vals = self._gather(i, b * nkv * S, nkv * S, f"{b}")
            keys_t = tg.view(keys, (nkv, 1, hd, S), (S * hd, 0, 1, hd), name=f"{P}.keys{b}_t")
            vals = tg.view(vals, (nkv, 1, S, hd), (S * hd, 0, hd, 1), name=f"{P}.values{b}_v")
            qb = tg.view(q, (T,) + q.shape[1:], q.strides, b * T * q.strides[0], name=f"{P}.q{b}")
            past = tg.view(self.past, (1,), (1,), b, name=f"{P}.past{b}")
            outs.append(m.attend(qb, keys_t, vals, i, past))
        return _concat_rows(outs, f"{P}.seqs")

    def _gather(self, i: int, start: int, n: int, tag: str = "") -> tuple[tg.Tensor, tg.Tensor]:
        """Layer ``i``'s keys and values at ``n`` gather indices from ``start`` ([n, hd] each)."""
        P = f"layers.{i}.attn"
        idx = tg.view(self.gather, (n,), (1,), start, name=f"{P}.gather{tag}")
        return (tg.get_rows(self.pool.k_rows[i], idx, name=f"{P}.keys{tag}"),
                tg.get_rows(self.pool.v_rows[i], idx, name=f"{P}.values{tag}"))

    def feeds(self, seqs: list[object | None], starts: list[int], lens: list[int]) -> dict[str, np.ndarray]:
        """Layout inputs for sequences ``seqs`` (None: a padding row) whose ``lens[b]`` real
        tokens start at position ``starts[b]``; a sequence's padding tokens, and padding rows,
        write the scratch row."""
        pool, T = self.pool, self.T
        if self.fused:  # a padding row's table is all scratch: its token writes there
            return {"kv_table": pool.position_rows(seqs, self.S)}
        # every sequence at once (KVPool.rows_at): a Python loop per sequence cost ~30 µs each,
        # 2 ms a step at 64 sequences
        pos = np.asarray(starts, np.int64)[:, None] + np.arange(T)
        real = np.arange(T)[None, :] < np.asarray(lens)[:, None]
        rows = np.where(real, pool.rows_at(seqs, pos), pool.scratch).astype(np.int32)
        out = {"kv_rows": rows.reshape(-1), "kv_gather": pool.gather_indices(seqs, self.S),
               "kv_past": np.asarray(starts, np.int32)}
        if T == 1:
            out["kv_past_heads"] = np.repeat(np.asarray(starts, np.int32), pool.model.config.num_kv_heads)
        return out


def _concat_rows(parts: list[tg.Tensor], name: str) -> tg.Tensor:
    """``parts`` stacked along axis 0, as a balanced tree of ``concat`` (log depth, not B copies)."""
    while len(parts) > 1:
        nxt = [tg.concat(parts[j], parts[j + 1], axis=0, name=f"{name}.{len(parts)}.{j}")
               for j in range(0, len(parts) - 1, 2)]
        parts = nxt + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]
