"""Serving a model split over processes: rank 0's engine leads, the others follow in lockstep.

Every rank runs an :class:`models.engine.Engine` over its own shard (its KV heads, its slice of
the MLP). The all-reduces in every step need all ranks to run the same step graphs in the same
order. The schedulers decide from the requests, their tokens and the pool, and every rank
computes the same tokens. So the ranks stay together if they see the same submissions and
cancellations at the same steps.

- :class:`LeaderEngine` (rank 0, the one the HTTP server uses) takes submissions and
  cancellations as they come. At the start of each step, under the engine's lock, it sends them
  to the followers (:class:`tinygraph.distributed.ControlChannel`) with every request's seed as
  rank 0 drew it. It then retires only the cancellations it sent, so a cancel that lands during
  the step waits for the next one, on every rank alike.
- :func:`follow` (every other rank) applies each message to its own engine and runs the same
  step, until the leader closes.

A step that fails on one rank fails that step's requests there. The ranks are then no longer
in step, so the leader closes and the launcher stops the job.
"""
from __future__ import annotations

from typing import Any

from .engine import Engine, Request, SamplingParams


class LeaderEngine(Engine):
    """Rank 0's engine: an :class:`Engine` that sends each step's submissions and cancellations
    to the followers over ``channel`` before running the step (arguments as ``Engine``)."""

    def __init__(self, model: Any, channel: Any, **kw: Any) -> None:
        super().__init__(model, **kw)
        self._channel = channel
        self._sent: set[int] = set()       # request ids the followers know
        self._cut: set[int] = set()        # request ids whose cancellation was sent

    def _before_schedule(self) -> None:
        live = self.running + list(self.waiting)
        new = [r for r in self.waiting if r.id not in self._sent]
        cancels = [r.id for r in live if r._cancelled and r.id not in self._cut]  # after the submissions
        self._channel.send({"op": "step",
                            "submit": [{"id": r.id, "prompt": r.prompt, "max_new_tokens": r.params.max_new_tokens,
                                        "temperature": r.params.temperature, "top_k": r.params.top_k,
                                        "top_p": r.params.top_p, "seed": r._seed, "eos": sorted(r.params.eos)}
                                       for r in new],
                            "cancel": cancels})
        alive = {r.id for r in live}  # forget the requests retired by earlier steps
        self._sent = (self._sent & alive) | {r.id for r in new}
        self._cut = (self._cut & alive) | set(cancels)

    def _is_cancelled(self, r: Request) -> bool:
        return r.id in self._cut

    def close(self) -> None:
        first = not self._closed
        super().close()
        if first:
            try:
                self._channel.send({"op": "close"})
            except OSError:  # a follower is gone already: nothing to tell
                pass


def follow(engine: Engine, channel: Any) -> int:
    """Run ``engine`` (a rank other than 0) as the leader's messages say, until it closes; returns
    the number of steps run. ``engine`` is closed at the end."""
    mine: dict[int, Request] = {}
    steps = 0
    try:
        while True:
            try:
                msg = channel.recv()
            except (ConnectionError, OSError):
                return steps  # the leader is gone: the launcher stops this rank too
            if msg["op"] == "close":
                return steps
            for s in msg["submit"]:
                p = SamplingParams(s["max_new_tokens"], s["temperature"], s["top_k"], s["top_p"], s["seed"],
                                   frozenset(s["eos"]))
                mine[s["id"]] = engine.submit(s["prompt"], p)
            for i in msg["cancel"]:
                if i in mine:
                    mine[i].cancel()
            engine.step()
            steps += 1
            for i in [i for i, r in mine.items() if r.done]:
                del mine[i]
    finally:
        engine.close()
