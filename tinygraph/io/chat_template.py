"""Chat templates rendered in a bounded jinja2 sandbox.

A chat template comes with the model file, so it is untrusted code. It is
rendered in jinja2's ``ImmutableSandboxedEnvironment`` (no attribute tricks,
no mutation of lists/dicts), with bounded work:

- time: at most ``TIME_LIMIT_S`` seconds, checked from inside the rendering
  (the compiled template calls a check at the start of every block body: each
  loop iteration, macro call, if-branch, and at every function call, filter
  and intercepted operator), so no thread has to be killed;
- size: ``range()`` at most ``MAX_RANGE`` items; a string or list that an
  operator, filter or method would make longer than ``MAX_CHARS`` is refused
  before it is built (``'a' * 10**10``, ``x|center(10**9)``, ``'%999999999d'``);
  integers of more than ``MAX_INT_BITS`` bits are refused (``10**10**10``);
  the text produced, counted over all output including captured blocks and
  macro results, is at most ``MAX_CHARS``.

Every failure (syntax, ``raise_exception``, ZeroDivisionError, RecursionError,
a limit, a security violation) becomes :class:`ChatTemplateError`, a
``LoadError`` (so a ``ValueError``) naming the template and the line.
"""

from __future__ import annotations

import re
import string
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from typing import Any

from .errors import LoadError

TIME_LIMIT_S = 2.0
MAX_CHARS = 1_000_000  # rendered text, and any one string or list made on the way
MAX_RANGE = 100_000
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_WIDTH = 10_000  # a field width / padding in formatting


class ChatTemplateError(LoadError):
    """A chat template failed to render (error in the template, or a resource limit)."""


class _Limit(Exception):
    """A resource limit was hit while rendering."""


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, list, tuple)) else 0


def _check_format(fmt: str) -> None:
    """Refuse %-formats and str.format fields whose widths or precisions are huge (or computed)."""
    for m in re.finditer(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?", fmt):
        for g in m.groups():
            if g == "*" or (g and int(g) > MAX_WIDTH):
                raise _Limit(f"format field {m.group(0)!r} is too wide")
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # not a str.format string; the call itself will say what is wrong
    for _, _, spec, _ in fields:
        if spec and ("{" in spec or any(int(d) > MAX_WIDTH for d in re.findall(r"\d+", spec))):
            raise _Limit(f"format spec {spec!r} is too wide")


def _check_ints(what: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and a > MAX_WIDTH:
            raise _Limit(f"{what}({a}) is too wide (at most {MAX_WIDTH})")


def _check_replace(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(new, str):
        most = len(s) + (len(s) // max(len(old) if isinstance(old, str) else 0, 1) + 1) * len(new)
        if most > MAX_CHARS:
            raise _Limit(f"replace() could make {most} characters (limit {MAX_CHARS})")


def _check_join(items: Any) -> None:
    if isinstance(items, (list, tuple)) and sum(_size(x) for x in items) > MAX_CHARS:
        raise _Limit(f"joined text would exceed {MAX_CHARS} characters")


# string methods (and filters) that build text from a width argument
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate"})


def _environment(deadline: float) -> Any:
    """A fresh bounded sandbox for one rendering (the deadline is its own)."""
    import jinja2
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # what jinja passes to pass_context / pass_eval_context / pass_environment filters
    passed = (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment)

    class Codegen(CodeGenerator):
        def blockvisit(self, nodes: Any, frame: Any) -> None:
            # every block body (loop iteration, macro call, branch) starts with a time check
            self.writeline("environment.tg_tick()")
            super().blockvisit(nodes, frame)

        def visit_Concat(self, node: Any, frame: Any) -> None:  # the ~ operator
            self.write("environment.tg_sized(")
            super().visit_Concat(node, frame)
            self.write(")")

        def _output_child_pre(self, node: Any, frame: Any, finalize: Any) -> None:
            self.write("environment.tg_out(")
            super()._output_child_pre(node, frame, finalize)

        def _output_child_post(self, node: Any, frame: Any, finalize: Any) -> None:
            super()._output_child_post(node, frame, finalize)
            self.write(")")

    class Env(ImmutableSandboxedEnvironment):
        code_generator_class = Codegen
        intercepted_binops = frozenset({"*", "**", "+", "%", "/", "//"})

        def __init__(self) -> None:
            super().__init__(trim_blocks=True, lstrip_blocks=True)
            self.tg_deadline = deadline
            self.tg_produced = 0
            self.globals["range"] = self.tg_range
            self.globals["raise_exception"] = self.tg_raise
            self.filters = {k: self.tg_filter(k, f) for k, f in self.filters.items()}
            self.concat = self.tg_concat  # joins block captures, macro output and the result

        def tg_tick(self) -> None:
            if time.monotonic() > self.tg_deadline:
                raise _Limit(f"rendering took longer than {TIME_LIMIT_S:g} s")

        def tg_sized(self, v: Any) -> Any:
            if _size(v) > MAX_CHARS:
                raise _Limit(f"a value of {_size(v)} items exceeds the limit of {MAX_CHARS}")
            if isinstance(v, int) and v.bit_length() > MAX_INT_BITS:
                raise _Limit(f"an integer of {v.bit_length()} bits exceeds the limit of {MAX_INT_BITS}")
            return v

        def tg_out(self, v: Any) -> Any:
            self.tg_produced += len(v)  # v is already str here
            if self.tg_produced > MAX_CHARS:
                raise _Limit(f"the template produced more than {MAX_CHARS} characters")
            return v

        def tg_concat(self, parts: Any) -> str:
            parts = list(parts)
            _check_join(parts)
            return "".join(parts)

        def tg_range(self, *args: int) -> range:
            self.tg_tick()
            r = range(*args)
            if len(r) > MAX_RANGE:
                raise _Limit(f"range of {len(r)} items exceeds the limit of {MAX_RANGE}")
            return r

        @staticmethod
        def tg_raise(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tg_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            @wraps(fn)  # keeps jinja's pass_context / pass_environment markers
            def guarded(*args: Any, **kwargs: Any) -> Any:
                self.tg_tick()
                values = [a for a in args if not isinstance(a, passed)]  # the value, then the arguments
                if name in _WIDTH_FILTERS:
                    _check_ints(name, values[1:], kwargs)
                elif name == "format" and values and isinstance(values[0], str):
                    _check_format(values[0])
                elif name == "join" and values:
                    _check_join(list(values[0]) if isinstance(values[0], (list, tuple)) else values[0])
                elif name == "replace" and len(values) >= 3:
                    _check_replace(*values[:3])
                return self.tg_sized(fn(*args, **kwargs))

            return guarded

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.tg_tick()
            ints = all(isinstance(x, int) for x in (left, right))
            if operator == "*":
                if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _Limit("integer product too large")
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(n, int) and _size(seq) * max(n, 0) > MAX_CHARS:
                    raise _Limit(f"repeating {_size(seq)} items {n} times exceeds the limit of {MAX_CHARS}")
            elif operator == "**" and ints and abs(left) > 1 and right > 0:
                if right * left.bit_length() > MAX_INT_BITS:
                    raise _Limit(f"{left} ** {right} is too large")
            elif operator == "+" and _size(left) + _size(right) > MAX_CHARS:
                raise _Limit(f"concatenation exceeds the limit of {MAX_CHARS}")
            elif operator == "%" and isinstance(left, str):
                _check_format(left)
            return self.tg_sized(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            __self.tg_tick()
            target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
            if isinstance(owner, str):
                if name in _WIDTH_METHODS:
                    _check_ints(name, args, kwargs)
                elif name in ("format", "format_map"):
                    _check_format(owner)
                elif name == "join" and args:
                    _check_join(list(args[0]) if isinstance(args[0], (list, tuple)) else args[0])
                elif name == "replace" and len(args) >= 2:
                    _check_replace(owner, args[0], args[1])
            return __self.tg_sized(super().call(__context, __obj, *args, **kwargs))

    return Env()


def _where(exc: BaseException, template: str) -> str:
    """' (line N: <text>)' for the template line an error came from, if known."""
    line = getattr(exc, "lineno", None)
    if line is None:  # jinja rewrites runtime tracebacks so template frames carry template lines
        for fs in reversed(traceback.extract_tb(exc.__traceback__)):
            if fs.filename == "<template>":
                line = fs.lineno
                break
    if not line:
        return ""
    lines = template.splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return f" (line {line}: {text[:80]!r})" if text else f" (line {line})"


def render_chat_template(template: str, name: str = "chat template", **variables: Any) -> str:
    """Render ``template`` with ``variables`` in the bounded sandbox (see the module docstring).

    Raises:
        ChatTemplateError: naming ``name`` and the template line, for any failure.
    """
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        env = _environment(deadline)
        out, total = [], 0
        for chunk in env.from_string(template).generate(**variables):
            total += len(chunk)
            if total > MAX_CHARS:
                raise _Limit(f"the rendered prompt exceeds {MAX_CHARS} characters")
            out.append(chunk)
            env.tg_tick()
        return "".join(out)
    except (KeyboardInterrupt, SystemExit):
        raise
    except _Limit as exc:
        raise ChatTemplateError(f"{name}: rendering stopped: {exc}{_where(exc, template)}") from None
    except Exception as exc:  # every failure of untrusted template code, MemoryError included
        msg = str(exc).strip()[:300] or type(exc).__name__
        kind = type(exc).__name__
        raise ChatTemplateError(f"{name} failed to render: {kind}: {msg}{_where(exc, template)}") from exc


__all__ = ["ChatTemplateError", "render_chat_template", "TIME_LIMIT_S", "MAX_CHARS", "MAX_RANGE"]
