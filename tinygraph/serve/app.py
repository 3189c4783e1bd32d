"""The ASGI app: OpenAI-compatible endpoints on a continuous-batching :class:`Engine`.

Every request is submitted to the engine (which decodes all running requests together on its
own thread) and its tokens are read back with ``Request.astream_batches()`` on the event loop, so one
process serves many clients at once. Text is decoded incrementally (:mod:`.text`), stop strings
are cut on the server, and a request is cancelled (its KV blocks freed) as soon as its answer is
complete, its client goes away, or the server shuts down.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from ..textstream import IncrementalDecoder, StopMatcher

#: how often a non-streamed request checks whether its client is still connected (seconds)
DISCONNECT_POLL_S = 0.1
#: largest request body read (bytes): far more than any context's worth of text
MAX_BODY_BYTES = 8 * 2**20


class _Generation:
    """One request on the engine: its text pieces (:meth:`pieces`), then ``finish_reason`` and
    ``completion_tokens`` (every generated token, an end-of-text token included)."""

    def __init__(self, app: "ServeState", prompt: list[int], p: P.GenParams, param: str) -> None:
        from tinygraph.models.engine import EngineClosedError, QueueFullError, SamplingParams

        model = app.model
        room = model.max_context - len(prompt)
        if room < 1:
            raise P.bad(f"the prompt is {len(prompt)} tokens; this model's context is {model.max_context} "
                        "tokens, with room for at least one new token", param, "context_length_exceeded")
        # no max_tokens: until end-of-text or the context is full; more than fits is cut to what fits
        max_new = room if p.max_tokens is None else min(p.max_tokens, room)
        eos = frozenset() if p.ignore_eos else frozenset(model.config.eos_token_ids)
        sp = SamplingParams(max_new_tokens=max_new, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                            seed=p.seed, eos=eos)
        try:
            self.req = app.engine.submit(prompt, sp)
        except QueueFullError as e:
            raise P.APIError(503, f"the server is busy ({e}); retry later", "server_error", None,
                             "queue_full") from None
        except EngineClosedError:
            raise P.APIError(503, "the server is shutting down", "server_error", None, "shutting_down") from None
        except ValueError as e:   # the engine's own checks (ids outside the vocabulary, KV memory)
            raise P.bad(str(e), param) from None
        self.app, self.prompt, self.eos, self.stops = app, prompt, eos, p.stop
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def cancel(self) -> None:
        self.req.cancel()

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as it comes (never a broken character, never part of a stop string)."""
        from tinygraph.models.engine import EngineClosedError
        try:   # closed with this generator, so its request is cancelled at once, not when collected
            async with contextlib.aclosing(self._pieces()) as pieces:
                async for piece in pieces:
                    yield piece
        except EngineClosedError:
            raise P.APIError(503, "the server shut down before the answer was complete", "server_error", None,
                             "shutting_down") from None

    async def _pieces(self) -> AsyncIterator[str]:
        dec = IncrementalDecoder(self.app.tokenizer, self.prompt)
        stop = StopMatcher(self.stops)
        try:
            # every token that arrived since the last look becomes one piece: a busy server
            # writes fewer, larger chunks instead of falling further behind
            async with contextlib.aclosing(self.req.astream_batches()) as batches:
                async for batch in batches:
                    text, hit = [], False
                    for t in batch:
                        self.completion_tokens += 1
                        if t in self.eos:   # the engine ends the request with it; it has no text
                            continue
                        out, hit = stop.push(dec.push(t))
                        if out:
                            text.append(out)
                        if hit:
                            break
                    if text:
                        yield "".join(text)
                    if hit:
                        self.finish_reason = "stop"
                        return
            out, hit = stop.push(dec.flush())
            out += "" if hit else stop.flush()
            if out:
                yield out
            # the engine's "stop" is an end-of-text id; "length" is max_tokens or a full context
            self.finish_reason = "stop" if hit else ("stop" if self.req.finish_reason == "stop" else "length")
        finally:
            # a stop string, a client that went away or an error: the engine frees the blocks
            self.req.cancel()

    def usage(self) -> dict:
        return P.usage(len(self.prompt), self.completion_tokens)


class ServeState:
    """What the endpoints share: the model, its engine, its served name and the API key."""

    def __init__(self, model: Any, engine: Any, model_name: str, api_key: str | None) -> None:
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer (tokenizer.json or a GGUF vocabulary): "
                             "the server needs one to read prompts and write text")
        self.model, self.engine, self.model_name, self.api_key = model, engine, model_name, api_key
        self.tokenizer = model.tokenizer
        self.created = int(time.time())

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        # constant-time comparison: the key is not leaked through response timing
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise P.APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                             "invalid_request_error", None, "invalid_api_key")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise P.APIError(404, f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                             "invalid_request_error", "model", "model_not_found")

    def encode(self, text: str, param: str) -> list[int]:
        from tinygraph.io.tokenizer import TokenizerError
        try:   # no special tokens added: the text (or the chat template) says what it needs, as in the CLI
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        except TokenizerError as e:
            raise P.bad(str(e), param) from None
        if not ids:
            raise P.bad("the prompt encodes to no tokens", param)
        return list(ids)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        from tinygraph.io import apply_chat_template
        from tinygraph.io.errors import LoadError
        template = self.model.chat_template
        if not template:
            raise P.bad("this model has no chat template: use /v1/completions with a prompt", "messages",
                        "no_chat_template")
        try:
            return apply_chat_template(template, messages, add_generation_prompt=True)
        except LoadError as e:   # ChatTemplateError: e.g. a template that refuses this order of roles
            raise P.bad(f"the chat template could not render these messages: {e}", "messages") from None


async def _json_body(request: Request) -> dict:
    chunks, size = [], 0
    async for chunk in request.stream():   # read with a limit: a huge body is refused, not buffered
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise P.APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                             "invalid_request_error", None, "request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise P.bad(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise P.bad("the request body must be a JSON object")
    return body


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _text_sse(chunk: Callable[[str, str | None], dict]) -> Callable[[str], str]:
    """``_sse(chunk(text, None))`` for any text, with the chunk's JSON rendered once around a
    placeholder: a streamed token then costs one string escape, not a dict and a JSON encoding."""
    mark = "\x00tinygraph\x00"
    pre, post = _sse(chunk(mark, None)).split(json.dumps(mark), 1)
    return lambda text: pre + json.dumps(text) + post


class _SSEResponse(StreamingResponse):
    """Server-sent events whose generator is closed however the response ends, so that a client
    disconnect cancels the engine request even where the server reports it by raising (ASGI 2.4)
    rather than by cancelling the stream task (uvicorn, ASGI 2.3)."""

    def __init__(self, body: AsyncIterator[str], gen: _Generation) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._body, self._gen = body, gen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._gen.cancel()   # also when the body never started (closing it then runs no finally)
            await self._body.aclose()


async def _stream(gen: _Generation, chunk: Callable[[str, str | None], dict], obj: str, rid: str, model: str,
                  created: int, include_usage: bool, first: dict | None) -> AsyncIterator[str]:
    """The SSE lines of one streamed answer: chunks, the finish chunk, a usage chunk, [DONE]."""
    try:
        if first is not None:
            yield _sse(first)
        text = _text_sse(chunk)
        async for piece in gen.pieces():
            yield text(piece)
        yield _sse(chunk("", gen.finish_reason))
        if include_usage:
            yield _sse(P.usage_chunk(rid, obj, model, created, gen.usage()))
    except P.APIError as e:   # the status line is sent: errors go in the stream
        yield _sse(e.body())
    except Exception as e:   # noqa: BLE001
        yield _sse(P.error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"))
    finally:
        gen.cancel()
    yield "data: [DONE]\n\n"


async def _collect(gen: _Generation, request: Request) -> str:
    """The whole answer; a client that disconnects meanwhile cancels the request."""
    async def watch() -> None:
        while True:
            await asyncio.sleep(DISCONNECT_POLL_S)
            if await request.is_disconnected():
                gen.cancel()
                return
    watcher = asyncio.ensure_future(watch())
    try:
        return "".join([p async for p in gen.pieces()])
    finally:
        watcher.cancel()
        gen.cancel()


def create_app(model: Any, engine: Any, model_name: str = "tinygraph", api_key: str | None = None,
               close_engine: bool = True) -> FastAPI:
    """The FastAPI app serving ``model`` through ``engine`` (a :class:`models.engine.Engine` on
    it) under the name ``model_name``. The engine is started when the app starts and, with
    ``close_engine``, closed when it shuts down (unfinished requests then end). ``api_key``:
    every ``/v1`` request must send ``Authorization: Bearer <api_key>``."""
    st = ServeState(model, engine, model_name, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            if close_engine:
                engine.close()

    app = FastAPI(title="tinygraph", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = st

    @app.exception_handler(P.APIError)
    async def api_error(request: Request, e: P.APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(P.error_body(msg, "invalid_request_error", None, code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(P.error_body(str(e)), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(P.error_body(f"internal error: {type(e).__name__}: {e}", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict:
        """Liveness and the engine's counts (requests running/waiting, KV blocks free)."""
        return {"status": "ok", "model": st.model_name, **engine.stats()}

    def model_card() -> dict:
        return {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "tinygraph",
                "max_model_len": model.max_context}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        st.check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request) -> dict:
        st.check_key(request)
        st.check_model(name)
        return model_card()

    async def start(request: Request, chat: bool) -> tuple[_Generation, P.GenParams, str, int]:
        """What both generation endpoints do first, in this order: the key, the body's parameters
        and model name, the prompt's ids (a chat rendered through the template), the request on the
        engine; then the response's id and creation time."""
        st.check_key(request)
        body = await _json_body(request)
        p = P.parse_params(body, chat=chat)
        st.check_model(p.model)
        if chat:
            param, ids = "messages", st.encode(st.render_chat(P.parse_messages(body)), "messages")
        else:
            param, prompt = "prompt", P.parse_prompt(body)
            ids = st.encode(prompt, "prompt") if isinstance(prompt, str) else prompt
        gen = _Generation(st, ids, p, param)
        return gen, p, P.new_id("chatcmpl" if chat else "cmpl"), int(time.time())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        gen, p, rid, created = await start(request, chat=False)
        if p.stream:
            def chunk(text: str, finish: str | None) -> dict:
                return P.completion_chunk(rid, st.model_name, created, text, finish, p.include_usage)
            return _SSEResponse(_stream(gen, chunk, "text_completion", rid, st.model_name, created,
                                        p.include_usage, None), gen)
        text = await _collect(gen, request)
        return P.completion(rid, st.model_name, text, gen.finish_reason, gen.usage())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        gen, p, rid, created = await start(request, chat=True)
        if p.stream:
            def chunk(text: str, finish: str | None) -> dict:
                delta = {"content": text} if finish is None else {}
                return P.chat_chunk(rid, st.model_name, created, delta, finish, p.include_usage)
            first = P.chat_chunk(rid, st.model_name, created, {"role": "assistant", "content": ""}, None,
                                 p.include_usage)
            return _SSEResponse(_stream(gen, chunk, "chat.completion.chunk", rid, st.model_name, created,
                                        p.include_usage, first), gen)
        text = await _collect(gen, request)
        return P.chat_completion(rid, st.model_name, text, gen.finish_reason, gen.usage())

    return app
