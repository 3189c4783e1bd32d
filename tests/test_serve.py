"""The OpenAI-compatible server (``tinygraph.serve``) on the tiny random LLaMA fixture, NumPy backend.

The fixture model gets a byte-level tokenizer (id == byte value for bytes 3..255; 0..2 are
<unk>, <s>, </s>) and a small chat template, so its random answers are arbitrary bytes: good
for checking that multi-byte characters split over tokens are never sent broken. Servers run
in-process (uvicorn on a thread, on a free port), except one test of the real command line.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# the server's stack and the test clients are dependencies (dev extras for the clients); a machine
# without them (e.g. the GPU image, which cannot download) skips this module with the reason
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from tinygraph.models import load_model  # noqa: E402
from tinygraph.models.engine import Engine  # noqa: E402
from tinygraph.serve import create_app  # noqa: E402
from tinygraph.serve.__main__ import parse_bytes  # noqa: E402
from tinygraph.textstream import IncrementalDecoder, StopMatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "llama"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NAME = "tiny"


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_model_dir(dst: Path, chat_template: bool = True) -> Path:
    """The llama fixture plus a 256-token byte-level tokenizer and (optionally) a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    shutil.copytree(FIXTURE, dst)
    assert json.loads((dst / "config.json").read_text())["vocab_size"] == 256
    chars = _byte_chars()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chars[b]: b for b in range(3, 256)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(dst / "tokenizer.json"))
    cfg = {"eos_token": "</s>", "bos_token": "<s>"}
    if chat_template:
        cfg["chat_template"] = TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


class Served:
    """``create_app`` under uvicorn on a thread, on a free local port."""

    def __init__(self, model, engine: Engine, **kw) -> None:
        self.model, self.engine = model, engine
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.url = self.base + "/v1"
        config = uvicorn.Config(create_app(model, engine, model_name=NAME, **kw), log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def client(self, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url, api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def wait_idle(self, timeout: float = 10) -> dict:
        """The engine's stats once nothing runs or waits (all KV blocks back), or fail."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.engine.stats()
            if s["running"] == 0 and s["waiting"] == 0 and s["kv_blocks_free"] == s["kv_blocks"]:
                return s
            assert time.monotonic() < deadline, f"engine not idle: {s}"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("serve") / "tiny")


def _new_model(model_dir: Path):
    return load_model(model_dir, backend="numpy")


@pytest.fixture(scope="module")
def srv(model_dir):
    model = _new_model(model_dir)
    s = Served(model, Engine(model, max_batch=64))
    yield s
    s.close()
    assert s.engine._closed, "the app's shutdown closes the engine"
    model.close()


def chat(client, content: str, **kw):
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}], **kw)


def _reference(model, content: str, max_tokens: int, **kw) -> tuple[str, int, list[int]]:
    """(text, prompt tokens, new ids) of the chat request, from ``model.generate`` alone."""
    from tinygraph.io import apply_chat_template
    ids = model.tokenizer.encode(apply_chat_template(TEMPLATE, [{"role": "user", "content": content}]),
                                 add_special_tokens=False).ids
    new = model.generate(ids, max_tokens, **kw)[len(ids):]
    text = model.tokenizer.decode([t for t in new if t not in model.config.eos_token_ids], skip_special_tokens=True)
    return text, len(ids), new


# -- text helpers ----------------------------------------------------------------------------------
def test_incremental_decoder_never_splits_a_character(model_dir):
    tok = _new_model(model_dir).tokenizer
    ids = list("a€b".encode())                       # € is three byte tokens
    dec = IncrementalDecoder(tok, list(b"x y"))
    pieces = [dec.push(t) for t in ids] + [dec.flush()]
    assert pieces == ["a", "", "", "€", "b", ""]
    dec = IncrementalDecoder(tok, list(b"x"))        # cut off in the middle: written as decoded
    assert [dec.push(t) for t in "é".encode()[:1]] + [dec.flush()] == ["", "\ufffd"]


def test_stop_matcher_holds_back_prefixes():
    m = StopMatcher(["STOP", "xyz"])
    assert m.push("abc ST") == ("abc ", False)       # "ST" may start "STOP"
    assert m.push("OR") == ("STOR", False)           # it did not
    assert m.push("x") == ("", False)
    assert m.push("yz tail") == ("", True)           # cut before the stop string
    assert m.push("more") == ("", True)
    m = StopMatcher(["ab"])
    assert m.push("xa") == ("x", False) and m.flush() == "a"
    assert StopMatcher([]).push("abc") == ("abc", False)


def test_streamed_text_chunks_render_as_the_chunk_json():
    """The per-token SSE line (the chunk's JSON rendered once around a placeholder) equals the
    chunk dict encoded, for texts JSON must escape (quotes, backslashes, controls, non-ASCII)."""
    from tinygraph.serve import app as A, protocol as P
    texts = ["", " Paris", 'say "hi"\\n', "\t\x01\u2028", "caf\u00e9 \u4e2d\U0001f600", "\x00tinygraph\x00"]
    for chunk in (lambda t, f: P.completion_chunk("cmpl-1", "m", 7, t, f, True),
                  lambda t, f: P.chat_chunk("chatcmpl-1", "m", 7, {"content": t} if f is None else {}, f, False)):
        line = A._text_sse(chunk)
        for t in texts:
            assert line(t) == A._sse(chunk(t, None))


def test_parse_bytes():
    assert parse_bytes("2G") == 2 * 2**30 and parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("4096") == 4096 and parse_bytes("64kb") == 65536
    for bad in ("", "2X", "-1", "0"):
        with pytest.raises(Exception):
            parse_bytes(bad)


# -- endpoints -------------------------------------------------------------------------------------
def test_health_and_models(srv):
    h = httpx.get(srv.base + "/health").json()
    assert h["status"] == "ok" and h["model"] == NAME and h["kv_blocks_free"] == h["kv_blocks"]
    ids = [m.id for m in srv.client().models.list().data]
    assert ids == [NAME]
    assert httpx.get(srv.url + "/models/" + NAME).json()["max_model_len"] == srv.model.max_context


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.9, seed=7, top_p=0.9),
                                dict(temperature=1.0, seed=2**64 + 11)])
def test_chat_equals_model_generate(srv, kw):
    r = chat(srv.client(), "hello there", max_tokens=24, **kw)
    gen_kw = dict(temperature=kw["temperature"], top_k=0, top_p=kw.get("top_p", 1.0), seed=kw.get("seed"))
    text, n_prompt, new = _reference(srv.model, "hello there", 24, **gen_kw)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == len(new)
    assert r.usage.total_tokens == n_prompt + len(new)
    assert r.choices[0].finish_reason == ("stop" if new[-1] in srv.model.config.eos_token_ids else "length")
    assert r.model == NAME and r.object == "chat.completion"


def _requests(k: int) -> list[dict]:
    """k different requests: greedy and seeded sampling, several prompts."""
    out = []
    for i in range(k):
        kw = dict(temperature=0) if i % 2 == 0 else dict(temperature=1.0, seed=100 + i)
        out.append(dict(content=f"question {i // 2}: {'é' * (i % 3)}?", max_tokens=12 + i % 5, **kw))
    return out


def _ask(client, r: dict) -> tuple[str, str, int]:
    r = dict(r)
    resp = chat(client, r.pop("content"), **r)
    return resp.choices[0].message.content, resp.choices[0].finish_reason, resp.usage.completion_tokens


def test_concurrent_chat_equals_one_at_a_time(srv):
    reqs = _requests(16)
    client = srv.client()
    alone = [_ask(client, r) for r in reqs]
    with ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda r: _ask(client, r), reqs))
    assert together == alone
    srv.wait_idle()


def _sse(base_url: str, path: str, body: dict) -> list[str]:
    """The raw ``data:`` payloads of a streamed request."""
    with httpx.stream("POST", base_url + path, json=body, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_stream_equals_non_stream(srv, path):
    body = dict(model=NAME, max_tokens=30, temperature=0.8, seed=3)
    body.update({"messages": [{"role": "user", "content": "stream ü"}]} if path.startswith("/chat")
                else {"prompt": "Once upon a time"})
    full = httpx.post(srv.url + path, json=body).json()
    data = _sse(srv.url, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    finish = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finish[-1] == full["choices"][0]["finish_reason"] and not any(finish[:-1])
    if path.startswith("/chat"):
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
        assert text == full["choices"][0]["message"]["content"]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
        assert text == full["choices"][0]["text"]
    assert len({c["id"] for c in chunks}) == 1
    # without include_usage: no usage chunk, [DONE] still last; the openai client reads the same text
    plain = _sse(srv.url, path, {**body, "stream": True})
    assert plain[-1] == "[DONE]" and "usage" not in json.loads(plain[-2])
    if path.startswith("/chat"):
        stream = srv.client().chat.completions.create(stream=True, **body)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def test_completions_text_and_token_ids(srv):
    c = srv.client()
    r = c.completions.create(model=NAME, prompt="abc", max_tokens=8, temperature=0)
    ids = list(b"abc")
    new = srv.model.generate(ids, 8, temperature=0)[3:]
    assert r.choices[0].text == srv.model.tokenizer.decode([t for t in new if t != 2], skip_special_tokens=True)
    assert r.usage.prompt_tokens == 3 and r.object == "text_completion"
    r2 = c.completions.create(model=NAME, prompt=ids, max_tokens=8, temperature=0)
    assert r2.choices[0].text == r.choices[0].text
    r3 = c.completions.create(model=NAME, prompt=["abc"], max_tokens=8, temperature=0)   # a batch of one
    assert r3.choices[0].text == r.choices[0].text


def _ascii_reference(srv) -> tuple[dict, str]:
    """A greedy request whose answer has a run of 3 printable ASCII characters after its start."""
    for i in range(40):
        body = dict(model=NAME, prompt=f"seed text {i}", max_tokens=40, temperature=0, ignore_eos=True)
        text = httpx.post(srv.url + "/completions", json=body).json()["choices"][0]["text"]
        for k in range(1, len(text) - 3):
            if text[k:k + 3].isascii() and text[k:k + 3].isprintable():
                return body, text
    pytest.skip("no ASCII run in the tiny model's answers")


def test_stop_strings(srv):
    body, text = _ascii_reference(srv)
    k = next(k for k in range(1, len(text) - 3) if text[k:k + 3].isascii() and text[k:k + 3].isprintable())
    stop = text[k:k + 3]                      # three byte tokens: the stop string spans token boundaries
    cut = text.find(stop)
    for stops in (stop, [stop, "\x00never"], ["never", stop]):
        r = httpx.post(srv.url + "/completions", json={**body, "stop": stops}).json()
        assert r["choices"][0]["text"] == text[:cut] and r["choices"][0]["finish_reason"] == "stop"
        assert r["usage"]["completion_tokens"] <= 40
        data = _sse(srv.url, "/completions", {**body, "stop": stops, "stream": True})
        chunks = [json.loads(d) for d in data[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == text[:cut]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and data[-1] == "[DONE]"
    r = httpx.post(srv.url + "/completions", json={**body, "stop": ["\x01\x02never"]}).json()
    assert r["choices"][0]["text"] == text and r["choices"][0]["finish_reason"] == "length"
    srv.wait_idle()


def test_max_tokens_and_finish_reason(srv):
    c = srv.client()
    r = c.completions.create(model=NAME, prompt="max", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    # no max_tokens: until end-of-text or the context is full
    r = c.completions.create(model=NAME, prompt="max", temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.total_tokens == srv.model.max_context and r.choices[0].finish_reason == "length"
    # more than fits: cut to what fits
    r = c.completions.create(model=NAME, prompt="max", max_tokens=10_000, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.usage.total_tokens == srv.model.max_context
    # an end-of-text token ends it with "stop" (counted, not in the text): find a seed that draws one
    for seed in range(200):
        r = c.completions.create(model=NAME, prompt="eos", max_tokens=40, temperature=2.0, seed=seed)
        if r.choices[0].finish_reason == "stop":
            new = srv.model.generate(list(b"eos"), 40, temperature=2.0, top_k=0, seed=seed)[3:]
            assert new[-1] == 2 and r.usage.completion_tokens == len(new)
            break
    else:
        pytest.fail("no sampled answer ended with the end-of-text token")


BAD = [
    ("/chat/completions", {}, "messages"),
    ("/chat/completions", {"messages": []}, "messages"),
    ("/chat/completions", {"messages": "hi"}, "messages"),
    ("/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ("/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ("/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/completions", {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ("/completions", {"prompt": "x", "temperature": -0.1}, "temperature"),
    ("/completions", {"prompt": "x", "temperature": 2.5}, "temperature"),
    ("/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/completions", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/completions", {"prompt": "x", "top_p": 1.1}, "top_p"),
    ("/completions", {"prompt": "x", "n": 2}, "n"),
    ("/completions", {"prompt": "x", "seed": "s"}, "seed"),
    ("/completions", {"prompt": "x", "stop": 5}, "stop"),
    ("/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/completions", {"prompt": "x", "logprobs": 2}, "logprobs"),
    ("/completions", {"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ("/completions", {}, "prompt"),
    ("/completions", {"prompt": ""}, "prompt"),
    ("/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/completions", {"prompt": [1, 999]}, "prompt"),
    ("/completions", {"prompt": "x" * 200}, "prompt"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x" * 200}]}, "messages"),
]


@pytest.mark.parametrize("path,body,param", BAD)
def test_bad_requests_get_400(srv, path, body, param):
    r = httpx.post(srv.url + path, json={"model": NAME, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"]
    if "x" * 200 in json.dumps(body):
        assert err["code"] == "context_length_exceeded"


def test_errors_keep_the_server_serving(srv):
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(srv.url + "/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        chat(srv.client(), "hi", temperature=3)
    assert e.value.body["param"] == "temperature"
    r = httpx.get(srv.url + "/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(srv.url + "/chat/completions").status_code == 405
    r = httpx.post(srv.url + "/completions", content=b'{"prompt": "' + b"x" * (9 * 2**20) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.NotFoundError) as e:
        srv.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert chat(srv.client(), "still here?", max_tokens=3, temperature=0).choices[0].finish_reason
    srv.wait_idle()


def test_no_chat_template_gets_400(srv, monkeypatch):
    monkeypatch.setattr(srv.model, "chat_template", None)
    r = httpx.post(srv.url + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_chat_template"


@pytest.fixture
def slow(model_dir):
    """A server whose engine steps are held by a gate (and slowed), with a queue of one."""
    model = _new_model(model_dir)
    engine = Engine(model, max_batch=1, max_queue=1)
    gate = threading.Event()
    step = engine.step

    def gated_step() -> None:
        gate.wait()
        time.sleep(0.02)   # 100 tokens take two seconds or more: a cancelled request stops long before
        step()
    engine.step = gated_step
    s = Served(model, engine)
    s.gate = gate
    yield s
    gate.set()
    s.close()
    model.close()


def test_queue_full_gets_503(slow):
    body = dict(model=NAME, prompt="q", max_tokens=3, temperature=0)
    with ThreadPoolExecutor(1) as ex:
        first = ex.submit(httpx.post, slow.url + "/completions", json=body, timeout=30)
        deadline = time.monotonic() + 10
        while slow.engine.stats()["waiting"] < 1:   # the first request waits (the gate holds the engine)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = httpx.post(slow.url + "/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        with pytest.raises(openai.InternalServerError):   # the openai client's class for 5xx
            slow.client().completions.create(**body)
        slow.gate.set()
        assert first.result().status_code == 200
    assert slow.client().completions.create(**body).choices[0].finish_reason   # serving again
    slow.wait_idle()


def test_cancelled_stream_frees_its_blocks(slow):
    slow.gate.set()
    body = dict(model=NAME, prompt="a long one", max_tokens=100, temperature=0, ignore_eos=True, stream=True)
    with httpx.stream("POST", slow.url + "/completions", json=body) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(4)]      # a few chunks: the request is running
        assert got[0].startswith("data: ") and slow.engine.stats()["kv_blocks_free"] < slow.engine.stats()["kv_blocks"]
    # the connection is closed: the server cancels the request and the engine frees its blocks
    s = slow.wait_idle()
    assert s["kv_blocks_free"] == s["kv_blocks"] and s["steps"] < 60, "the request ran on after its client left"


def test_disconnected_non_streamed_request_is_cancelled(slow):
    slow.gate.set()
    body = dict(model=NAME, prompt="slow", max_tokens=100, temperature=0, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(slow.url + "/completions", json=body, timeout=0.3)
    s = slow.wait_idle()
    assert s["kv_blocks_free"] == s["kv_blocks"] and s["steps"] < 60, "the request ran on after its client left"


def test_load_64_streaming_clients(srv):
    reqs = _requests(16)
    client = srv.client()
    alone = [_ask(client, r)[0] for r in reqs]

    async def one(aclient, r: dict) -> str:
        r = dict(r)
        stream = await aclient.chat.completions.create(model=NAME, messages=[{"role": "user", "content": r.pop("content")}],
                                                      stream=True, **r)
        parts, finish = [], None
        async for c in stream:
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
                finish = c.choices[0].finish_reason or finish
        assert finish in ("stop", "length")
        return "".join(parts)

    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=srv.url, api_key="none", max_retries=0,
                                     http_client=openai.DefaultAsyncHttpxClient(
                                         limits=httpx.Limits(max_connections=64)))
        async with aclient:
            return await asyncio.gather(*(one(aclient, reqs[i % 16]) for i in range(64)))
    t0 = time.monotonic()
    got = asyncio.run(run())
    assert got == [alone[i % 16] for i in range(64)]
    assert time.monotonic() - t0 < 30
    srv.wait_idle()


def test_loadgen_tool(srv):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "loadgen.py"), "--url", srv.url, "--clients", "2",
                          "--requests", "3", "--max-tokens", "6", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["ok"] == 3 and s["errors"] == 0 and s["model"] == NAME and s["completion_tokens"] > 0
    assert s["ttft_ms_p50"] is not None and s["tokens_per_s"] > 0
    help_text = subprocess.run([sys.executable, str(ROOT / "tools" / "loadgen.py"), "--help"],
                               capture_output=True, text=True).stdout
    assert "--clients" in help_text and "inter-token" in help_text
    srv.wait_idle()


def test_loadgen_starts_the_server(model_dir):
    """--serve: loadgen starts tinygraph.serve on a free port, warms it, runs once per --clients
    value, and stops it (a clean exit)."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "loadgen.py"), "--serve", str(model_dir),
                          "--serve-args", "--backend numpy --kv-memory 1M --max-batch 4", "--clients", "1,2",
                          "--max-tokens", "4", "--warmup", "1", "--json"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [(r["server"], r["clients"], r["requests"], r["ok"]) for r in runs] == [("tinygraph", 1, 1, 1),
                                                                                  ("tinygraph", 2, 2, 2)]
    assert "tinygraph ready in" in out.stderr


def test_loadgen_llama_server_command_and_failures(tmp_path):
    """--llama-server: one slot per client of --llama-context tokens; a binary that exits at once is
    reported with its output; no --gguf is an error before anything starts."""
    sys.path.insert(0, str(ROOT / "tools"))
    import loadgen_servers
    cmd = loadgen_servers.llama_server_command("llama-server", "m.gguf", 8123, 64, 512)
    assert cmd[:3] == ["llama-server", "-m", "m.gguf"]
    assert cmd[cmd.index("-np") + 1] == "64" and cmd[cmd.index("-c") + 1] == str(64 * 512)
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("-ngl") + 1] == "99"
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: no model here'\nexit 3\n")
    fake.chmod(0o755)
    tool = [sys.executable, str(ROOT / "tools" / "loadgen.py"), "--clients", "1"]
    out = subprocess.run(tool + ["--llama-server", str(fake), "--gguf", str(tmp_path / "m.gguf")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "exited with code 3" in out.stderr and "no model here" in out.stderr
    out = subprocess.run(tool + ["--llama-server", str(fake)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "needs --gguf" in out.stderr


def test_command_line_server(model_dir):
    """``python -m tinygraph.serve``: the startup line, the API key, a graceful stop on SIGINT."""
    p = subprocess.Popen([sys.executable, "-m", "tinygraph.serve", "--model", str(model_dir), "--port", "0",
                          "--backend", "numpy", "--api-key", "sekrit", "--kv-memory", "1M", "--max-batch", "4"],
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        assert "tinygraph: serving tiny" in line and "(API key required)" in line, line
        url = line.split(" at ")[-1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        r = httpx.get(url + "/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        c = openai.OpenAI(base_url=url, api_key="sekrit", max_retries=0)
        assert c.completions.create(model="tiny", prompt="hi", max_tokens=3).usage.completion_tokens >= 1
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"   # no key needed
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 0
        assert "server stopped" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
