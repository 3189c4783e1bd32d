"""Continuous batching: many generation requests decoded together over a paged KV pool.

:class:`Engine` keeps a queue of :class:`Request` objects. Each scheduler iteration it retires
finished and cancelled requests (their KV blocks go back at once), admits waiting ones while KV
blocks and batch slots allow, runs one prefill step (a chunk of up to ``PREFILL_BATCH`` admitted
requests whose chunks pad to one size, in one graph), and then one decode
step for every request that is decoding (one token each, the weights read once for all rows).
When a decoding request needs a new block and none is free, the most recently admitted request
is preempted: its blocks are freed and it goes back to the front of the queue, to be prefilled
again from its prompt and the tokens it already produced (nothing it streamed changes).

Each request gets exactly the tokens ``model.generate`` would give it alone: greedy is argmax of
its own logits, sampling draws token ``n`` from the ``sample`` op's stream ``(seed, n)``, on the
backend (a ``sample`` node per row of the step, each with its row's parameters).

Run it on a background thread (``start()``; the server does) or drive it from the calling thread
(``run_until_done``; ``generate_batch`` does).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Iterator, Sequence

import numpy as np

import tinygraph as tg

from .batch import PREFILL_BATCH, BatchRunner
from .paged import KVPool, blocks_for_memory, token_bytes
from .sampling import check_sampling_args, effective_temperature

if TYPE_CHECKING:
    from .model import CausalLM

#: default KV memory when none is given: room for this many full contexts
DEFAULT_CONTEXTS = 4


class _Notices(threading.local):
    """Asyncio waiters to wake at the end of a scheduler step, per event loop (None: wake at once)."""
    pending: "dict[asyncio.AbstractEventLoop, list[asyncio.Event]] | None" = None


_notices = _Notices()


def _set_all(events: list) -> None:
    for ev in events:
        ev.set()


@contextlib.contextmanager
def _batched_notices() -> Iterator[None]:
    """Within it (a scheduler step), the asyncio consumers of every request that got tokens are
    woken once per event loop when it ends: one ``call_soon_threadsafe`` (one write to the loop's
    self-pipe, one wakeup) per step instead of one per request."""
    if _notices.pending is not None:
        yield
        return
    _notices.pending = {}
    try:
        yield
    finally:
        pending, _notices.pending = _notices.pending, None
        for loop, events in pending.items():
            try:
                loop.call_soon_threadsafe(_set_all, events)
            except RuntimeError:  # that event loop is closed: its consumers are gone
                pass


class QueueFullError(RuntimeError):
    """The engine's queue of waiting requests is full (the server answers 503)."""


class EngineClosedError(RuntimeError):
    """The engine was closed; the request did not (or will not) finish."""


@dataclass
class SamplingParams:
    """How one request generates (the arguments of ``model.generate``): ``temperature`` 0 is
    greedy; ``top_k`` 0 and ``top_p`` 1 are no limit; ``seed`` None draws one; ``eos`` the ids
    that end the request (yielded), empty to ignore end-of-sequence."""

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    eos: frozenset[int] = frozenset()

    def check(self) -> None:
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.max_new_tokens)


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    """One generation: ``prompt`` ids in, ``tokens`` out (as they come). ``finish_reason``:
    None while running, then "stop" (an EOS id, included in ``tokens``), "length"
    (``max_new_tokens`` or the context is full), "cancelled" or "error" (``error`` says why).
    Iterate it (blocking) or ``async for`` over :meth:`astream` to get the tokens as they come;
    ``cancel()`` stops it and frees its KV blocks at the next scheduler step."""

    prompt: list[int]
    params: SamplingParams
    id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None
    created: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._cancelled = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._seed = self.params.seed if self.params.seed is not None else \
            int(np.random.default_rng().integers(0, 2**63))
        self._greedy = effective_temperature(self.params.temperature) == 0
        self._cached = 0   # positions of prompt + tokens in the KV pool
        self._logits_due = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def context(self) -> list[int]:
        return self.prompt + self.tokens

    @property
    def length(self) -> int:
        """``len(context)`` without building it (read per request per scheduler step)."""
        return len(self.prompt) + len(self.tokens)

    @property
    def last(self) -> int:
        """The newest id of ``context``."""
        return self.tokens[-1] if self.tokens else self.prompt[-1]

    def cancel(self) -> None:
        """Stop generating (no-op when finished); the engine frees the KV blocks."""
        self._cancelled = True

    # -- delivery (engine thread -> consumers) --------------------------------------------------
    def _sample_params(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``sample`` op's parameters for this request's next token (token ``n`` draws with
        counter ``n``, as ``generate`` does); temperature 0 for greedy requests."""
        p = self.params
        return tg.sample_params(effective_temperature(p.temperature), p.top_k, p.top_p, self._seed, len(self.tokens))

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
            waiters = list(self._waiters)
        pending = _notices.pending
        for loop, ev in waiters:
            if pending is not None:  # inside a scheduler step: woken when it ends
                pending.setdefault(loop, []).append(ev)
                continue
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that event loop is closed: its consumer is gone
                pass

    def _emit(self, tok: int) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.tokens.append(int(tok))
        self._notify()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.finish_reason is None:
            self.error = error
            self.finish_reason = reason
            self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request is finished (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout)

    def __iter__(self) -> Iterator[int]:
        """The new tokens as they come (blocking); raises the request's error, if any."""
        i = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(self.tokens) > i or self.done)
                new, finished = self.tokens[i:], self.done  # tokens come before the finish
            yield from new
            i += len(new)
            if finished:
                break
        if self.error is not None:
            raise self.error

    async def astream(self) -> AsyncIterator[int]:
        """The new tokens as they come, for asyncio code (one event-loop wakeup per token batch)."""
        async with contextlib.aclosing(self.astream_batches()) as batches:
            async for batch in batches:
                for t in batch:
                    yield t

    async def astream_batches(self) -> AsyncIterator[list[int]]:
        """The new tokens as they come, for asyncio code: each item is every token that arrived
        since the consumer last looked (one token per scheduler step while it keeps up; more when
        it falls behind, so that a busy server writes fewer, larger pieces)."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, ev))
        try:
            i = 0
            while True:
                ev.clear()
                new, finished = self.tokens[i:], self.done
                if new:
                    yield new
                i += len(new)
                if finished and i >= len(self.tokens):
                    break
                if not new:
                    await ev.wait()
        finally:
            with self._cond:
                self._waiters.remove((loop, ev))
        if self.error is not None:
            raise self.error


class Engine:
    """Continuous-batching generation on ``model`` (see the module docstring).

    ``max_batch``: most requests decoding at once; ``kv_memory``: bytes of the KV pool (default:
    room for ``DEFAULT_CONTEXTS`` full contexts); ``block_size``: tokens per KV block;
    ``max_queue``: most waiting requests (``submit`` raises :class:`QueueFullError` beyond)."""

    def __init__(self, model: "CausalLM", max_batch: int = 64, kv_memory: int | None = None,
                 block_size: int = 16, max_queue: int = 1024) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if kv_memory is None:
            kv_memory = DEFAULT_CONTEXTS * (model.max_context + block_size) * token_bytes(model)
        self.model = model
        # no longrope switch nor dynamic NTK: every step rotates alike (one regime, one graph)
        self._fixed_regime = model.rope.switch_at is None and model.rope.dynamic is None
        self.max_batch, self.max_queue = max_batch, int(max_queue)
        self.pool = KVPool(model, blocks_for_memory(model, kv_memory, block_size), block_size)
        self.runner = BatchRunner(model, self.pool, max_batch)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0

    # -- requests -------------------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], params: SamplingParams | None = None) -> Request:
        """Queue a request; ValueError for a bad one (empty prompt, ids outside the vocabulary,
        a prompt that leaves no room in the context or does not fit the KV pool)."""
        params = params or SamplingParams()
        params.check()
        prompt = [int(t) for t in prompt]
        m = self.model
        if not prompt:
            raise ValueError("prompt is empty: give at least one token")
        bad = [t for t in prompt if not 0 <= t < m.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary [0, {m.config.vocab_size})")
        if len(prompt) >= m.max_context:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the context of {m.max_context} tokens")
        if self.pool.blocks_for(len(prompt) + 1) > self.pool.num_blocks:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the KV memory "
                             f"({self.pool.num_blocks * self.pool.block_size} tokens)")
        req = Request(prompt, params)
        with self._cond:
            if self._closed:
                raise EngineClosedError("engine is closed")
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are waiting (max_queue {self.max_queue})")
            if params.max_new_tokens == 0:
                req._finish("length")
                return req
            self.waiting.append(req)
            self._cond.notify_all()
        return req

    def warmup(self, progress: bool = False) -> int:
        """Build, plan and run once the step graphs early requests need (``BatchRunner.warm``), so
        that no request pays for building a graph; ``progress``: a bar on stderr. Call before
        :meth:`start`. Returns the number of graphs."""
        return self.runner.warm(progress)

    def stats(self) -> dict:
        """Counts for monitoring: requests running/waiting, KV blocks total/free, steps run."""
        return {"running": len(self.running), "waiting": len(self.waiting), "kv_blocks": self.pool.num_blocks,
                "kv_blocks_free": self.pool.free_blocks, "block_size": self.pool.block_size, "steps": self.steps}

    # -- driving --------------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Run the scheduler on a background thread (daemon) until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tinygraph-engine", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self.waiting or self.running)
                if self._closed:
                    return
            try:
                self.step()
            except BaseException as e:  # a failing step fails the requests in it, not the server
                print(f"tinygraph engine: step failed: {type(e).__name__}: {e}", file=sys.stderr)
                self._fail_all(e)

    def run_until_done(self, requests: Sequence[Request]) -> None:
        """Drive the scheduler from this thread until every request in ``requests`` is finished."""
        while not all(r.done for r in requests):
            self.step()

    def _fail_all(self, e: BaseException) -> None:
        with self._cond:
            for r in self.running + list(self.waiting):
                self.pool.release(r)
                r._finish("error", e)
            self.running.clear()
            self.waiting.clear()

    def close(self) -> None:
        """Stop the scheduler; unfinished requests end with :class:`EngineClosedError`. Frees the pool."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._fail_all(EngineClosedError("engine closed"))
        self.pool.close()

    # -- one scheduler iteration ----------------------------------------------------------------
    def step(self) -> None:
        """Retire, admit, one prefill step, one decode step (asyncio consumers woken at its end)."""
        with _batched_notices():
            self._step()

    def _step(self) -> None:
        with self._cond:
            self._before_schedule()
            self._retire()
            self._admit()
        self.steps += 1
        # a request's tokens not yet in the pool: all but its newest are prefilled in chunks; the
        # newest one runs in the decode step, which gives its next token
        pre = [r for r in self.running if r.length - r._cached > 1]
        if pre:
            self._prefill(pre)
        dec = [r for r in self.running if r.length - r._cached == 1]
        if dec:
            self._decode(dec)

    def reap(self) -> None:
        """Retire finished and cancelled requests now (their blocks go back to the pool)."""
        with self._cond:
            self._retire()

    def _before_schedule(self) -> None:
        """Called at the start of each step, under the engine's lock (a lockstep leader sends its
        followers the step's submissions and cancellations here: ``models/lockstep.py``)."""

    def _is_cancelled(self, r: Request) -> bool:
        """Whether this step retires ``r`` as cancelled (a lockstep leader: only cancellations it sent)."""
        return r._cancelled

    def _retire(self) -> None:
        for r in [r for r in self.running if r.done or self._is_cancelled(r)]:
            self.running.remove(r)
            self.pool.release(r)
            r._finish("cancelled")
        for r in [r for r in self.waiting if self._is_cancelled(r)]:
            self.waiting.remove(r)
            r._finish("cancelled")

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            salt = self._rope_regime(len(r.context))
            # reuse the cached blocks of a shared prefix (never the newest token: decode runs it)
            reused = self.pool.share(r, r.context, len(r.context) - 1, salt)
            if not self.pool.reserve(r, len(r.context)):
                self.pool.release(r)
                break
            self.waiting.popleft()
            r._cached = reused
            self.running.append(r)

    def _rope_regime(self, end: int) -> tuple[bool, int | None]:
        """What a step ending before position ``end`` rotates with, as ``generate`` has it:
        longrope's long factors or not, and dynamic NTK's enlarged base (its ``end``) past
        ``max_position_embeddings`` (None: the plain divisors). Steps of one regime share a graph
        and uploaded divisors; keys of different regimes differ (the prefix cache's salt)."""
        m = self.model
        dyn = end if m.rope.dynamic is not None and end > m.config.max_position_embeddings else None
        return m._uses_long_rope(end), dyn

    def _run(self, rs: list[Request], tokens: list[list[int]], starts: list[int], want: str, end: int,
             sampling=None) -> np.ndarray:
        """One runner step in the rope regime of ``end`` (dynamic NTK's divisors uploaded first)."""
        self.model._dynamic_rope(end)
        return self.runner.run(rs, tokens, starts, want, self._rope_regime(end)[0], sampling)

    def _prefill(self, pending: list[Request]) -> None:
        """One prefill chunk each for the first of ``pending`` and the next ones (up to
        ``PREFILL_BATCH``) whose chunks fit the same chunk size and rope regime, in one step;
        never a request's newest token, which the decode step runs."""
        cap = self.runner.chunks[-1]
        first = pending[0]
        T = self.runner.chunk_for(min(len(first.context) - 1 - first._cached, cap))
        # the rope regime as generate() has it: the whole prompt's (one forward call there)
        regime = self._rope_regime(len(first.context))
        group = [first]
        if regime[1] is None:  # dynamic NTK's divisors are per length: those prefill alone
            for r in pending[1:]:
                if len(group) == min(PREFILL_BATCH, self.max_batch):
                    break
                if (min(len(r.context) - 1 - r._cached, cap) <= T
                        and self._rope_regime(len(r.context)) == regime):
                    group.append(r)
        ns = [min(len(r.context) - 1 - r._cached, cap) for r in group]
        self._run(group, [r.context[r._cached:r._cached + n] for r, n in zip(group, ns)],
                  [r._cached for r in group], "argmax", len(first.context))
        for r, n in zip(group, ns):
            r._cached += n
            self.pool.register(r, r.context, r._cached, regime)

    def _decode(self, rs: list[Request]) -> None:
        # every row needs a pool row for its new position (a new block once per block_size steps);
        # free blocks by preempting the newest
        bs, tables = self.pool.block_size, self.pool.tables
        for r in [r for r in rs if len(tables.get(r, ())) * bs <= r._cached]:
            while r in self.running and not self.pool.reserve(r, r._cached + 1):
                if len(self.running) == 1:  # it alone fills the pool: waiting would not help
                    print(f"tinygraph engine: KV memory ({self.pool.num_blocks * self.pool.block_size} tokens) "
                          f"is full; request {r.id} stops after {len(r.tokens)} tokens", file=sys.stderr)
                    self._drop(r, "length")
                    rs.remove(r)
                    break
                victim = self.running[-1]
                self._preempt(victim)
                if victim in rs:
                    rs.remove(victim)
        # one step per rope regime (longrope past its switch: another graph; dynamic NTK past
        # max_position_embeddings: divisors of each length); almost always a single one
        if self._fixed_regime:
            regimes = {(False, None): rs} if rs else {}
        else:
            regimes = {}
            for r in rs:
                regimes.setdefault(self._rope_regime(r._cached + 1), []).append(r)
        for part in regimes.values():
            greedy = all(r._greedy for r in part)
            sampling = None if greedy else [r._sample_params() for r in part]
            out = self._run(part, [[r.last] for r in part], [r._cached for r in part],
                            "argmax" if greedy else "sample", part[0]._cached + 1, sampling)
            for r, o in zip(part, out):
                r._cached += 1
                # generated tokens' blocks are reusable too (where the regime does not move); a
                # decode step fills at most one block: offered when it does
                if r._cached % self.pool.block_size == 0 and self._fixed_regime:
                    self.pool.register(r, r.context, r._cached, (False, None))
                self._accept(r, o)

    def _preempt(self, r: Request) -> None:
        with self._cond:
            self.running.remove(r)
            self.pool.release(r)
            r._cached = 0
            self.waiting.appendleft(r)

    def _accept(self, r: Request, tok: int) -> None:
        """Emit request ``r``'s next token and finish it at EOS or a limit."""
        p = r.params
        tok = int(tok)
        r._emit(tok)
        if tok in p.eos:
            r._finish("stop")
        elif len(r.tokens) >= p.max_new_tokens:
            r._finish("length")
        elif r.length >= self.model.max_context:
            r._finish("length")
        if r.done:
            self._drop(r, r.finish_reason)

    def _drop(self, r: Request, reason: str) -> None:
        """Take finished ``r`` out of the running set and free its blocks."""
        with self._cond:
            if r in self.running:
                self.running.remove(r)
            self.pool.release(r)
        r._finish(reason)
