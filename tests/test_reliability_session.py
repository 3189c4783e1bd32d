"""Sessions and models under misuse and long runs: generation argument errors, lifetimes
(close, ``with``, closed objects, two sessions, two models in one session), failure rollback,
and bounded host / device memory over many generate() calls and load/close cycles.

Tests that take the ``backend`` fixture run on NumPy and, where a GPU is usable, on CUDA."""
from __future__ import annotations

import gc
import re
import weakref
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.io import load_checkpoint
from tinygraph.models import CausalLM, load_model
from tinygraph.session import SessionClosedError

FIX = Path(__file__).parent / "fixtures"
REF = np.load(FIX / "llama" / "reference.npz")
PROMPT = [int(i) for i in REF["input_ids"][0]]
GREEDY = [int(i) for i in REF["greedy"][0]]


@pytest.fixture(scope="module")
def llama():
    m = load_model(FIX / "llama", backend="numpy")
    yield m
    m.close()


def _rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; tracemalloc elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import tracemalloc
    return tracemalloc.get_traced_memory()[0]


def _device_free() -> int:
    from tinygraph.backends.cuda import driver
    driver.get_device(0)
    return driver.mem_get_info()[0]


def _tiny_graph(sess: tg.Session, W: tg.Tensor) -> np.ndarray:
    g = sess.graph()
    x = g.input((1, 4), tg.float32, name="x")
    g.output(tg.matmul(x, W))
    (out,) = sess.compute(g, {x: np.ones((1, 4), np.float32)})
    return out


# ====================================================================== 3. generation arguments
@pytest.mark.parametrize("kw,name,shown", [
    ({"temperature": -1.0}, "temperature", "-1.0"),
    ({"temperature": float("nan")}, "temperature", "nan"),
    ({"temperature": float("inf")}, "temperature", "inf"),
    ({"temperature": "hot"}, "temperature", "'hot'"),
    ({"top_p": 0.0}, "top_p", "0.0"),
    ({"top_p": 1.5}, "top_p", "1.5"),
    ({"top_p": float("nan")}, "top_p", "nan"),
    ({"top_k": -1}, "top_k", "-1"),
    ({"top_k": 2.5}, "top_k", "2.5"),
    ({"max_new_tokens": -2}, "max_new_tokens", "-2"),
    ({"max_new_tokens": 1.5}, "max_new_tokens", "1.5"),
    ({"eos_token_id": "2"}, "eos_token_id", "'2'"),
    ({"eos_token_id": [2, "x"]}, "eos_token_id", "'x'"),
])
def test_bad_sampling_arguments_name_the_value(llama, kw, name, shown):
    for call in (llama.generate, llama.generate_stream):  # generate_stream checks eagerly, not on next()
        with pytest.raises(ValueError, match=re.escape(name) + ".*" + re.escape(shown)):
            call(PROMPT, **kw)


@pytest.mark.parametrize("ids,pattern", [
    ([], "input_ids is empty"),
    (np.zeros(0, np.int64), "input_ids is empty"),
    ("The capital", "got text: encode it with model.tokenizer"),
    ([1.5, 2.0], "integer token ids, got an array of dtype float64"),
    ([1, 256], r"token id 256 outside the vocabulary \[0, 256\)"),
    ([-1, 3], r"token id -1 outside the vocabulary"),
    (list(range(10)) * 13, r"prompt of 130 tokens is longer than the context of 128"),
])
def test_bad_prompts(llama, ids, pattern):
    for call in (llama.generate, llama.generate_stream):
        with pytest.raises(ValueError, match=pattern):
            call(ids, max_new_tokens=1)


def test_bad_forward_arguments(llama):
    with pytest.raises(ValueError, match="vocabulary"):
        llama([3, 999])
    with pytest.raises(ValueError, match="position_ids must continue the cache"):
        llama([3, 4], position_ids=[5, 6])
    with pytest.raises(ValueError, match="exceed the context of 128"):
        llama.step([1] * 10, 125)


def test_max_new_tokens_beyond_the_context_stops_with_notice(capsys):
    with load_model(FIX / "llama", backend="numpy", max_context=12) as m:
        out = list(m.generate_stream(list(range(1, 11)), max_new_tokens=500, temperature=0))
        assert m.generate([5], max_new_tokens=0) == [5]
    assert len(out) == 2
    assert re.search(r"context of 12 tokens is full; stopping after 2 of 500", capsys.readouterr().err)


@pytest.mark.parametrize("kw,pattern", [({"max_context": -4}, "max_context must be an integer >= 1, got -4"),
                                        ({"max_context": 0}, "max_context must be an integer >= 1, got 0"),
                                        ({"max_context": 8.5}, "max_context must be an integer >= 1, got 8.5"),
                                        ({"max_context": 4096}, "max_context 4096 outside 1..128"),
                                        ({"dtype": "int32"}, "dtype must be float32, float16 or bfloat16")])
def test_bad_model_arguments(kw, pattern):
    # gpt2 has learned positions: max_context is capped by n_positions (128 in the fixture)
    with pytest.raises(ValueError, match=pattern):
        load_model(FIX / "gpt2", backend="numpy", **kw)


# ====================================================================== 4. session lifetime
CLOSED = "closed"


def test_closed_session_refuses_everything(backend):
    sess = tg.Session(backend=backend, verbose=False)
    W = sess.persistent((4, 3), tg.float32, name="W")
    sess.finalize()
    sess.upload(W, np.ones((4, 3)))
    assert _tiny_graph(sess, W).shape == (1, 3)
    g = sess.graph()
    x = g.input((1, 4), tg.float32, name="x")
    g.output(tg.matmul(x, W))
    sess.close()
    assert sess.closed and sess.backend.buffers == {}
    sess.close()  # idempotent
    for op in (lambda: sess.persistent((2,), tg.float32), sess.finalize, lambda: sess.upload(W, np.ones((4, 3))),
               lambda: sess.download(W), sess.graph, lambda: sess.compute(g, {x: np.ones((1, 4))}),
               lambda: sess.free([W])):
        with pytest.raises(SessionClosedError, match=CLOSED):
            op()
    assert issubclass(SessionClosedError, tg.TinygraphError)
    assert "closed" in repr(sess)


def test_with_session_releases_buffers(backend):
    with tg.Session(backend=backend, verbose=False) as sess:
        W = sess.persistent((1024, 1024), tg.float32, name="big")
        sess.finalize()
        assert len(sess.backend.buffers) == 1
    assert sess.closed and sess.backend.buffers == {}
    with pytest.raises(SessionClosedError):
        sess.download(W)


def test_session_closed_by_an_exception_in_with(backend):
    with pytest.raises(KeyError):
        with tg.Session(backend=backend, verbose=False) as sess:
            sess.persistent((8,), tg.float32)
            sess.finalize()
            raise KeyError("boom")
    assert sess.closed and sess.backend.buffers == {}


def test_finalize_is_all_or_nothing(backend, monkeypatch):
    sess = tg.Session(backend=backend, verbose=False)
    ts = [sess.persistent((16,), tg.float32, name=f"t{i}") for i in range(5)]
    real = sess.backend.allocate
    n = {"calls": 0}

    def failing(t):
        n["calls"] += 1
        if n["calls"] == 4:
            raise tg.BackendError(f"simulated: out of memory allocating {t.nbytes} bytes for {t.name!r}")
        real(t)

    monkeypatch.setattr(sess.backend, "allocate", failing)
    with pytest.raises(tg.BackendError, match="simulated"):
        sess.finalize()
    assert not sess.finalized and sess.backend.buffers == {}
    monkeypatch.setattr(sess.backend, "allocate", real)
    sess.finalize()  # a retry (e.g. after freeing memory elsewhere) succeeds
    sess.upload(ts[0], np.arange(16))
    assert sess.download(ts[0])[5] == 5
    # an allocation after finalize that fails leaves no half-declared buffer behind
    monkeypatch.setattr(sess.backend, "allocate", lambda t: (_ for _ in ()).throw(tg.BackendError("no memory")))
    with pytest.raises(tg.BackendError):
        sess.persistent((4,), tg.float32, name="late")
    assert len(sess.persistents) == 5
    sess.close()


def test_two_sessions_are_independent(backend):
    a = tg.Session(backend=backend, verbose=False)
    b = tg.Session(backend=backend, verbose=False)
    Wa, Wb = a.persistent((4, 3), tg.float32), b.persistent((4, 3), tg.float32)
    a.finalize()
    b.finalize()
    a.upload(Wa, np.ones((4, 3)))
    b.upload(Wb, 2 * np.ones((4, 3)))
    np.testing.assert_array_equal(_tiny_graph(a, Wa), 4 * np.ones((1, 3)))
    np.testing.assert_array_equal(_tiny_graph(b, Wb), 8 * np.ones((1, 3)))
    with pytest.raises(tg.GraphError, match="not a persistent buffer of this session"):
        a.upload(Wb, np.ones((4, 3)))
    a.close()
    np.testing.assert_array_equal(_tiny_graph(b, Wb), 8 * np.ones((1, 3)))
    b.close()


def test_model_close_and_context_manager(backend):
    m = load_model(FIX / "llama", backend=backend)
    sess = m.session
    assert m.generate(PROMPT, max_new_tokens=3, temperature=0) == GREEDY[:len(PROMPT) + 3]
    with m:
        pass
    assert m.closed and sess.closed and sess.backend.buffers == {}
    m.close()  # idempotent
    for op in (lambda: m.generate(PROMPT, max_new_tokens=1), lambda: m.generate_stream(PROMPT),
               lambda: m(PROMPT), lambda: m.get_logits(np.zeros((1, 64), np.float32)),
               lambda: m.step(PROMPT, 0)):
        with pytest.raises(SessionClosedError, match="closed"):
            op()


def test_two_models_in_one_session(backend):
    """Two models share one Session (one backend, one set of buffers); they generate
    independently, interleaved; closing one releases only its buffers."""
    ref3 = np.load(FIX / "qwen3" / "reference.npz")
    p3, g3 = [int(i) for i in ref3["input_ids"][0]], [int(i) for i in ref3["greedy"][0]]
    with tg.Session(backend=backend, verbose=False) as sess:
        with load_checkpoint(FIX / "llama") as ck:
            a = CausalLM(ck, session=sess)
        n_a = len(sess.backend.buffers)
        with load_checkpoint(FIX / "qwen3") as ck:
            b = CausalLM(ck, session=sess)
        n_ab = len(sess.backend.buffers)
        assert n_ab > n_a > 0 and a.session is b.session is sess
        sa = a.generate_stream(PROMPT, max_new_tokens=8, temperature=0)
        sb = b.generate_stream(p3, max_new_tokens=8, temperature=0)
        got_a, got_b = [], []
        for ta, tb in zip(sa, sb):  # interleaved token by token: the KV caches do not mix
            got_a.append(ta)
            got_b.append(tb)
        assert PROMPT + got_a == GREEDY and p3 + got_b == g3
        a.close()
        assert not sess.closed and len(sess.backend.buffers) == n_ab - n_a
        with pytest.raises(SessionClosedError, match="model is closed"):
            a.generate(PROMPT, max_new_tokens=1)
        assert b.generate(p3, max_new_tokens=8, temperature=0) == g3  # b unaffected
        with load_checkpoint(FIX / "llama") as ck:  # a new model reuses the session
            c = CausalLM(ck, session=sess)
        assert c.generate(PROMPT, max_new_tokens=8, temperature=0) == GREEDY
        b.close()
        c.close()
        assert sess.backend.buffers == {}
    assert sess.closed
    with pytest.raises(SessionClosedError):
        c.generate(PROMPT, max_new_tokens=1)


def test_closing_the_shared_session_closes_its_models(backend):
    sess = tg.Session(backend=backend, verbose=False)
    with load_checkpoint(FIX / "llama") as ck:
        m = CausalLM(ck, session=sess)
    sess.close()
    assert m.closed
    with pytest.raises(SessionClosedError, match="session is closed"):
        m.generate(PROMPT, max_new_tokens=1)
    m.close()  # fine after the session went away


def test_released_buffer_is_refused(backend):
    with tg.Session(backend=backend, verbose=False) as sess:
        W = sess.persistent((4, 3), tg.float32, name="W")
        V = sess.persistent((4, 3), tg.float32, name="V")
        sess.finalize()
        sess.upload(V, np.ones((4, 3)))
        sess.free([W])
        with pytest.raises(SessionClosedError, match="'W'.*released|released"):
            sess.upload(W, np.ones((4, 3)))
        with pytest.raises(SessionClosedError, match="released persistent buffer"):
            _tiny_graph(sess, W)
        np.testing.assert_array_equal(_tiny_graph(sess, V), 4 * np.ones((1, 3)))


# ====================================================================== 5. stability
def test_many_generate_calls_bounded_memory(llama):
    """200 consecutive generate() calls: same results, bounded host memory, bounded caches."""
    m = llama
    for _ in range(20):  # warm up: plans, graphs, arena
        m.generate(PROMPT, max_new_tokens=4, temperature=0)
    import tracemalloc

    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    try:
        for i in range(200):
            out = m.generate(PROMPT, max_new_tokens=4, temperature=0.0 if i % 2 else 0.8, seed=i)
            assert len(out) == len(PROMPT) + 4
            if i == 19:
                gc.collect()
                traced0 = tracemalloc.get_traced_memory()[0]
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced0
    finally:
        tracemalloc.stop()
    grown = _rss() - rss0
    assert traced < 1 << 20, f"Python allocations grew by {traced / 2**10:.0f} KiB over 180 generate() calls"
    assert grown < 16 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 generate() calls"
    assert len(m.session._plans) <= 8
    assert len(getattr(m, "_graphs", {})) <= 8
    assert m.generate(PROMPT, max_new_tokens=8, temperature=0) == GREEDY


def test_load_close_cycles_bounded_memory():
    """50 load/close cycles: every session is released (nothing keeps it alive) and host
    memory stays bounded."""
    refs = []
    for _ in range(5):  # warm up
        load_model(FIX / "llama", backend="numpy").close()
    gc.collect()
    rss0 = _rss()
    for _ in range(50):
        m = load_model(FIX / "llama", backend="numpy")
        refs.append(weakref.ref(m.session))
        m.close()
        del m
    gc.collect()
    grown = _rss() - rss0
    assert grown < 24 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 50 load/close cycles"
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of 50 closed sessions are still referenced"


@pytest.fixture()
def cuda():
    ok, why = tg.backends.cuda_available()
    if not ok:
        pytest.skip(f"needs a CUDA GPU: {why}")
    return "cuda"


def test_cuda_generate_and_load_cycles_do_not_leak_device_memory(cuda):
    """On CUDA: 200 generate() calls, then 50 load/close cycles, give back every byte of device
    memory (measured with cuMemGetInfo, after a warm-up that loads the kernel modules)."""
    from tinygraph.backends.cuda import driver

    with load_model(FIX / "llama", backend="cuda", dtype="float32") as m:  # warm up
        m.generate(PROMPT, max_new_tokens=4, temperature=0)
    del m
    gc.collect()
    driver.get_device(0).synchronize()
    free0 = _device_free()
    m = load_model(FIX / "llama", backend="cuda", dtype="float32")
    for i in range(200):
        out = m.generate(PROMPT, max_new_tokens=4, temperature=0.0 if i % 2 else 0.8, seed=i)
        assert len(out) == len(PROMPT) + 4
    assert m.generate(PROMPT, max_new_tokens=8, temperature=0) == GREEDY
    m.close()
    del m
    for _ in range(50):
        load_model(FIX / "llama", backend="cuda", dtype="float32").close()
    gc.collect()
    driver.get_device(0).synchronize()
    free1 = _device_free()
    if free1 < free0 - (8 << 20):
        # cuMemGetInfo counts the whole device: under pytest -n, other workers allocate meanwhile.
        # A leak of ours grows with the cycles; another process's memory does not: 50 more cycles.
        for _ in range(50):
            load_model(FIX / "llama", backend="cuda", dtype="float32").close()
        gc.collect()
        driver.get_device(0).synchronize()
        free2 = _device_free()
        assert free2 >= free1 - (8 << 20) or free2 >= free0 - (8 << 20), \
            f"device memory: {(free0 - free1) / 2**20:.1f} MiB, then {(free1 - free2) / 2**20:.1f} MiB more not returned"
