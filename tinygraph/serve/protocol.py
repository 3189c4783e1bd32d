"""The OpenAI API's request fields and response shapes, as far as tinygraph serves them.

Requests are plain JSON objects checked here by hand (not pydantic models) so that every bad value
gets an OpenAI error object naming the parameter (``param``), with status 400, instead of a
framework's 422. Fields tinygraph does not implement are refused when they would change the answer
(``n`` > 1, penalties, ``logit_bias``, ``logprobs``, tools, JSON mode); fields that do not (``user``,
``metadata``, ...) are ignored.
"""
from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

#: most stop strings per request (OpenAI allows 4)
MAX_STOP = 16
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


@dataclass
class GenParams:
    """One checked request: what to generate and how (``max_tokens`` None: until EOS or the
    context is full)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    model: str | None = None


# -- field checks ---------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number, got {v!r}", name)
    if v > hi or v < lo or (lo_open and v == lo):
        rng = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise bad(f"'{name}' must be in {rng}, got {v!r}", name)
    return float(v)


def _int(body: dict, name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise bad(f"'{name}' must be an integer, got {v!r}", name)
    if v < lo:
        raise bad(f"'{name}' must be >= {lo}, got {v}", name)
    return v


def _unsupported(body: dict) -> None:
    """400 for fields that would change the answer but are not implemented."""
    n = body.get("n")
    if n is not None and n != 1:
        raise bad(f"'n' must be 1 (one choice per request is supported), got {n!r}", "n")
    bo = body.get("best_of")
    if bo is not None and bo != 1:
        raise bad(f"'best_of' must be 1, got {bo!r}", "best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        v = body.get(name)
        if v not in (None, 0, 0.0):
            raise bad(f"'{name}' is not supported (only 0)", name)
    for name in ("logit_bias", "tools", "functions"):
        if body.get(name):
            raise bad(f"'{name}' is not supported", name)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("'logprobs' is not supported", "logprobs")
    if body.get("echo"):
        raise bad("'echo' is not supported", "echo")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
        raise bad("'response_format' other than {\"type\": \"text\"} is not supported", "response_format")


def parse_params(body: dict, chat: bool) -> GenParams:
    """The generation fields of a completions (``chat`` False) or chat request."""
    _unsupported(body)
    p = GenParams()
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string, got {model!r}", "model")
    p.model = model
    # chat's newer name wins over the legacy one
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    p.max_tokens = _int(body, name, 1)
    p.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    p.top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    p.top_k = _int(body, "top_k", 0) or 0   # an extension (vLLM's name): 0 = no limit
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad(f"'seed' must be an integer, got {seed!r}", "seed")
    p.seed = None if seed is None else seed % 2**64   # any int, taken mod 2**64 as model.generate does
    p.stop = _stop(body.get("stop"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad(f"'stream' must be a boolean, got {stream!r}", "stream")
    p.stream = bool(stream)
    ie = body.get("ignore_eos")   # an extension (vLLM's name): generate on past end-of-text
    if ie is not None and not isinstance(ie, bool):
        raise bad(f"'ignore_eos' must be a boolean, got {ie!r}", "ignore_eos")
    p.ignore_eos = bool(ie)
    so = body.get("stream_options")
    if so is not None:
        if not p.stream:
            raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
            raise bad("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
        p.include_usage = bool(so.get("include_usage", False))
    return p


def _stop(v: Any) -> list[str]:
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad(f"'stop' must be a string or a list of strings, got {v!r}", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"'stop' has {len(stops)} strings; at most {MAX_STOP}", "stop")
    return [s for s in stops if s]   # an empty stop string would match at once: ignored


def parse_prompt(body: dict) -> str | list[int]:
    """The completions ``prompt``: text or token ids (one prompt; a batch of several is refused)."""
    if "prompt" not in body or body["prompt"] is None:
        raise bad("'prompt' is required", "prompt")
    v = body["prompt"]
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]   # a batch of one
    if isinstance(v, str):
        if not v:
            raise bad("'prompt' is empty", "prompt")
        return v
    if isinstance(v, list) and v and all(_is_int(t) for t in v):
        return list(v)
    if isinstance(v, list) and v and all(isinstance(t, (str, list)) for t in v):
        raise bad("a list of several prompts is not supported: send one prompt per request", "prompt")
    raise bad("'prompt' must be a non-empty string or a non-empty list of token ids", "prompt")


def parse_messages(body: dict) -> list[dict[str, str]]:
    """The chat ``messages`` as ``[{"role", "content"}]`` with text content (text parts joined)."""
    msgs = body.get("messages")
    if msgs is None:
        raise bad("'messages' is required", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}", f"{where}.role")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):   # content parts: only text ones can be rendered
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise bad(f"{where}.content: only text parts are supported", f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string or a list of text parts", f"{where}.content")
        out.append({"role": role, "content": content})
    return out


# -- responses ------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(rid: str, model: str, text: str, finish: str, use: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], "usage": use}


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None,
                     with_usage: bool) -> dict:
    c = {"id": rid, "object": "text_completion", "created": created, "model": model,
         "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if with_usage:
        c["usage"] = None   # every chunk but the last carries "usage": null (OpenAI's shape)
    return c


def chat_completion(rid: str, model: str, text: str, finish: str, use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}], "usage": use}


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish: str | None, with_usage: bool) -> dict:
    c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if with_usage:
        c["usage"] = None
    return c


def usage_chunk(rid: str, obj: str, model: str, created: int, use: dict) -> dict:
    """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}
