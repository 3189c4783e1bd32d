"""Step graphs over many sequences at once, on a paged KV pool (``models.paged``).

A step runs ``B`` sequences of ``T`` tokens each: decode steps are ``T = 1`` over every running
sequence (the weights are read once for all rows); prefill steps are one sequence's prompt chunk.
Graphs are keyed by (B, T, S, want) with all three sizes rounded up to buckets, so a handful of
graphs serve every step: ``B`` to a power of two (padding rows write the pool's scratch row),
``T`` to one of the prefill chunk sizes (padding tokens likewise), ``S`` (how many positions each
sequence's attention gathers) to a power of two of at least 64, capped at the context.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Sequence

import numpy as np

import tinygraph as tg
from tinygraph.passes import optimize

from .paged import KVPool, PagedStep

if TYPE_CHECKING:
    from .transformer import Transformer

#: prefill chunk sizes (tokens); a longer prompt runs in chunks of the largest
PREFILL_CHUNKS = (16, 64, 256)
#: most sequences one prefill step takes (their chunks padded to one size)
PREFILL_BATCH = 8
#: step graphs kept (least recently used dropped)
MAX_GRAPHS = 64
#: contexts (gathered positions) whose graphs ``warm`` builds ahead
WARM_CONTEXTS = (64, 128, 256)


def pow2_at_least(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(int(n) - 1, 0).bit_length())


class BatchRunner:
    """Builds, caches and runs the step graphs of ``model`` over ``pool``."""

    def __init__(self, model: "Transformer", pool: KVPool, max_batch: int = 64,
                 chunks: Sequence[int] = PREFILL_CHUNKS) -> None:
        self.model, self.pool = model, pool
        self.max_batch = int(max_batch)
        self.chunks = tuple(sorted(int(c) for c in chunks))
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()

    # -- buckets --------------------------------------------------------------------------------
    def batch_bucket(self, n: int) -> int:
        return min(pow2_at_least(n), max(pow2_at_least(self.max_batch), 1))

    def context_bucket(self, n: int) -> int:
        return min(pow2_at_least(n, 64), self.model.max_context)

    def chunk_for(self, remaining: int) -> int:
        """Tokens the next prefill chunk covers (a bucket size; the last chunk is padded)."""
        return next((c for c in self.chunks if c >= remaining), self.chunks[-1])

    # -- graphs ---------------------------------------------------------------------------------
    def graph(self, B: int, T: int, S: int, want: str, long_rope: bool = False) -> tuple[tg.Graph, PagedStep]:
        """The step graph for ``B`` sequences x ``T`` tokens gathering ``S`` positions each;
        ``want`` "logits" ([B, vocab] float32 output), "argmax" ([B] int32) or "sample" (one
        [1] int32 output per row, drawn by the ``sample`` op with the row's parameters: inputs
        ``sample_fparams`` [B, 2] and ``sample_iparams`` [B, 4], see ``tg.sample_params``). Inputs:
        ``token_ids``/``positions`` [B * T], ``pick`` [B] (the row of each sequence whose next
        token is wanted) and the layout's (see ``PagedStep``). ``long_rope``: with longrope's long
        factors (``Transformer._uses_long_rope``)."""
        key = (B, T, S, want, long_rope)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        m = self.model
        g = m.session.graph()
        layout = PagedStep(self.pool, g, B, T, S)
        m._long_rope = long_rope and m.rope.long_factors is not None
        try:
            _, _, h = m.build_step(g, B * T, last_only=False, kv=layout)        # [B * T, hidden]
        finally:
            m._long_rope = False
        pick = g.input((B,), tg.int32, name="pick")
        out = m.logits_node(tg.get_rows(h, pick, name="picked"))                 # [B, vocab]
        if want == "argmax":
            g.output(tg.argmax(out, name="next_token"))
        elif want == "sample":  # a sample node per row: each row its own parameters and stream
            V = out.shape[1]
            fp = g.input((B, 2), tg.float32, name="sample_fparams")
            ip = g.input((B, 4), tg.int32, name="sample_iparams")
            g.output(*(tg.sample(tg.view(out, (1, V), (V, 1), b * V, name=f"logits{b}"),
                                 tg.view(fp, (2,), (1,), 2 * b, name=f"fparams{b}"),
                                 tg.view(ip, (4,), (1,), 4 * b, name=f"iparams{b}"), name=f"next_token{b}")
                       for b in range(B)))
        else:
            g.output(tg.cast(out, tg.float32, name="logits"))
        optimize(g)
        while len(self._graphs) >= MAX_GRAPHS:
            self._graphs.popitem(last=False)
        self._graphs[key] = (g, layout)
        return g, layout

    def warm(self, progress: bool = False) -> int:
        """Build and run once (padding rows only: nothing but the scratch row is written) the
        graphs of every decode batch bucket and prefill chunk at the short contexts
        (``WARM_CONTEXTS``), so that early requests pay no graph building or planning. Returns
        the number of graphs."""
        from tqdm import tqdm
        sess = self.model.session
        # a backend that compiles and captures (CUDA) runs each graph once; NumPy has nothing to
        # warm beyond the build and the plan, and a run would only cost time
        captured = sess.backend.name != "numpy"
        Bs = sorted({self.batch_bucket(n) for n in range(1, self.max_batch + 1)})
        Ss = sorted({self.context_bucket(S) for S in WARM_CONTEXTS})
        keys = [(B, 1, S, w) for S in Ss for B in Bs for w in ("argmax", "sample")]
        Ps = sorted({self.batch_bucket(n) for n in range(1, min(PREFILL_BATCH, self.max_batch) + 1)})
        # several prompts per prefill step: the short chunks (256 tokens x 8 builds large graphs
        # that long prompts alone need: built on first use), and only where graphs are captured
        # (on NumPy building them ahead would only slow the start: ~3x here)
        keys += [(P, T, S, "argmax") for T in self.chunks for S in Ss for P in Ps
                 if P == 1 or (captured and T < self.chunks[-1])]
        for B, T, S, want in tqdm(keys, desc="tinygraph: step graphs", unit="graph", disable=not progress,
                                  leave=False):
            g, layout = self.graph(B, T, S, want)
            if not captured:
                sess._plan_for(g)
                continue
            feeds = layout.feeds([None] * B, [0] * B, [0] * B)
            feeds.update(token_ids=np.zeros(B * T, np.int32), positions=np.zeros(B * T, np.int32),
                         pick=np.arange(B, dtype=np.int32) * T)
            if want == "sample":
                greedy = tg.sample_params(0.0)
                feeds.update(sample_fparams=np.stack([greedy[0]] * B), sample_iparams=np.stack([greedy[1]] * B))
            sess.compute(g, feeds)
        return len(keys)

    def run(self, seqs: Sequence[object], tokens: Sequence[Sequence[int]], starts: Sequence[int],
            want: str, long_rope: bool = False,
            sampling: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        """One step: sequence ``seqs[b]`` runs ``tokens[b]`` at positions ``starts[b]..`` (their
        keys/values are stored in its pool rows, which it must own). Decode steps give one token
        per sequence; prefill steps up to a chunk each, the shorter ones padded.
        Returns, for each sequence's last token, the logits [n, vocab] (float32), or the argmax
        or sampled ids [n] (int32; ``sampling``: each sequence's ``tg.sample_params`` arrays)."""
        n = len(seqs)
        lens = [len(t) for t in tokens]
        T = self.chunk_for(max(lens)) if max(lens) > 1 else 1
        if any(L > T or L < 1 for L in lens):
            raise ValueError(f"batch step: token counts {lens} do not fit one step")
        B = self.batch_bucket(n)
        S = self.context_bucket(max(s + L for s, L in zip(starts, lens)))
        g, layout = self.graph(B, T, S, want, long_rope)
        pad = B - n
        ids = np.zeros((B, T), np.int32)
        if T == 1:  # decode: one token each
            ids[:n, 0] = [t[0] for t in tokens]
        else:
            for b, t in enumerate(tokens):
                ids[b, :len(t)] = t
        # padding tokens continue the positions (kept inside the context: learned position
        # tables end there); their keys/values go to the scratch row
        st = np.zeros(B, np.int64)
        st[:n] = starts
        pos = np.minimum(st[:, None] + np.arange(T), self.model.max_context - 1).astype(np.int32)
        feeds = layout.feeds(list(seqs) + [None] * pad, list(starts) + [0] * pad, lens + [0] * pad)
        feeds.update(token_ids=ids.reshape(-1), positions=pos.reshape(-1),
                     pick=np.array([b * T + max(L, 1) - 1 for b, L in enumerate(lens + [0] * pad)], np.int32))
        if want == "sample":
            greedy = tg.sample_params(0.0)
            rows = list(sampling) + [greedy] * pad
            feeds.update(sample_fparams=np.stack([f for f, _ in rows]), sample_iparams=np.stack([i for _, i in rows]))
        outs = self.model.session.compute(g, feeds)
        out = np.concatenate([np.asarray(o).reshape(-1) for o in outs]) if want == "sample" else outs[0]
        return out[:n]
