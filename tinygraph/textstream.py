"""Text from token ids as they come: incremental decoding and stop strings.

:class:`IncrementalDecoder` turns a stream of token ids into text pieces that are never a broken
character: a byte-level token may carry half of a multi-byte UTF-8 character (the tokenizer then
decodes the incomplete tail as U+FFFD), so text ending in U+FFFD is held back until the next token
completes it, or until the end (then it is written as decoded). Each step decodes only a short
window of recent tokens, so a long answer costs O(length) decoding, not O(length^2).

:class:`StopMatcher` cuts the text before the first stop string and, while streaming, holds back
the tail that could still grow into one (a stop string split over several tokens).

Both the command line (``tinygraph.run.stream_text``) and the server (``tinygraph.serve``) write
text through these.
"""
from __future__ import annotations

from typing import Any, Sequence

#: prompt tokens decoded before the new ones, so that a word's leading space survives
#: (SentencePiece decoders drop the space of the first token they decode)
CONTEXT_TOKENS = 8

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decode the new tokens after ``prompt`` one at a time (:meth:`push`), then :meth:`flush`.

    The concatenation of every piece returned equals the text of all pushed tokens decoded
    together (as ``tokenizer.decode`` gives it, special tokens skipped), except where the text is
    unstable under more tokens, which only U+FFFD tails are for byte-level and SentencePiece
    tokenizers."""

    def __init__(self, tokenizer: Any, prompt: Sequence[int]) -> None:
        self.tok = tokenizer
        ctx = list(prompt[-CONTEXT_TOKENS:])
        # a prompt ending inside a multi-byte character would make the context's text unstable;
        # start from no context then (the cost: a SentencePiece leading space may be dropped)
        if ctx and self._decode(ctx).endswith(REPLACEMENT):
            ctx = []
        self.ids: list[int] = ctx
        self.prefix = 0           # window start: tokens before it are fully written
        self.read = len(ctx)      # tokens before it have had their text written

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The new text that ``token`` completes ("" while a character is incomplete)."""
        self.ids.append(int(token))
        done = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(done) and not now.endswith(REPLACEMENT):
            piece = now[len(done):]
            self.prefix, self.read = self.read, len(self.ids)
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end, as decoded)."""
        done = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        piece = now[len(done):] if len(now) > len(done) else ""
        self.prefix = self.read = len(self.ids)
        return piece


class StopMatcher:
    """Feed text pieces (:meth:`push`); get back what may be written and whether a stop string
    was reached. Text from the first stop string on is dropped; text that could be the start of a
    stop string is held until it is known not to be (or :meth:`flush`)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, piece: str) -> tuple[str, bool]:
        """(text safe to write, stop string reached)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return piece, False
        buf = self.held + piece
        # held text holds no whole stop string, so a match in buf must end in the new piece: the
        # earliest start over all stop strings is where the text ends
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return buf[:cut], True
        keep = self._partial(buf)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def _partial(self, buf: str) -> int:
        """Length of the longest tail of ``buf`` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """The held text, at the end of generation (it never became a stop string)."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
