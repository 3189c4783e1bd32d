"""An interactive conversation: ``python -m tinygraph.run --chat`` with no prompt on a terminal, or
``--interactive`` (any stdin, e.g. a script of lines), after llama-cli's conversation mode.

Each line of input is a user turn. The whole history goes through the model's chat template every
turn and the answer streams to stdout. ``/exit`` (or ``/quit``) or Ctrl-D leaves, ``/clear`` forgets
the history, Ctrl-C during an answer stops that answer (what was said so far stays in the history).
"""
from __future__ import annotations

import sys

COMMANDS = "/exit or Ctrl-D leaves, /clear forgets the conversation, Ctrl-C stops an answer"


def _read_turn(tty: bool) -> str | None:
    """The next line of input without its newline; None at the end of input (or Ctrl-C at the prompt)."""
    if tty:
        try:
            return input("> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return None
    data = sys.stdin.buffer.readline()
    if not data:
        return None
    from .run import _utf8
    return _utf8(data, "this line of input").rstrip("\r\n")


def converse(args, model) -> int:
    """Run the conversation until the input ends; returns the exit status (0)."""
    from .io import apply_chat_template
    from .run import stream_text

    tty = sys.stdin.isatty()
    print(f"tinygraph: conversation with {model.spec.name} (context {model.max_context} tokens); {COMMANDS}",
          file=sys.stderr)
    tok = model.tokenizer
    history: list[dict[str, str]] = []
    while True:
        try:
            line = _read_turn(tty)
        except ValueError as e:  # not UTF-8: say so and read on
            print(f"tinygraph: {e}", file=sys.stderr)
            continue
        if line is None or line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/clear":
            history.clear()
            print("tinygraph: conversation cleared", file=sys.stderr)
            continue
        if not line.strip():
            continue
        turn = history + [{"role": "user", "content": line}]
        text = apply_chat_template(model.chat_template, turn, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) >= model.max_context:
            print(f"tinygraph: the conversation is {len(ids)} tokens, no room left in the context of "
                  f"{model.max_context} tokens: /clear to start over, or raise --max-context", file=sys.stderr)
            continue
        r = stream_text(args, model, ids, interruptible=True)
        if not r.ended_line:
            sys.stdout.write("\n")
        sys.stdout.flush()
        if r.interrupted:
            print("tinygraph: answer stopped", file=sys.stderr)
        history = turn + [{"role": "assistant", "content": r.text}]
