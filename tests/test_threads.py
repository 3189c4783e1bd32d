"""One model, or one Session, used from several threads: results equal to single-threaded runs,
a stream whose KV cache was taken over raises a clear error, and ``close()`` from another thread
gives ``SessionClosedError`` in the using thread. Several threads, repeated rounds, tiny fixtures
on the NumPy backend (and on CUDA where a GPU is usable)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.errors import TinygraphError
from tinygraph.io import load_checkpoint
from tinygraph.models import CausalLM, GenerationTakenOverError, load_model
from tinygraph.session import SessionClosedError

FIX = Path(__file__).parent / "fixtures"
ROUNDS = 4
N_THREADS = 4
NEW = 24  # enough steps per call that the threads' steps interleave


def _ref(fam: str) -> tuple[list[int], list[int]]:
    r = np.load(FIX / fam / "reference.npz")
    return [int(i) for i in r["input_ids"][0]], [int(i) for i in r["greedy"][0]]


def _jobs(vocab: int) -> list[dict]:
    """Different prompts and settings per thread: greedy and seeded sampling."""
    rng = np.random.default_rng(7)
    jobs = []
    for i in range(N_THREADS):
        prompt = [int(t) for t in rng.integers(3, vocab, size=5 + 3 * i)]
        kw = {"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "top_k": 40, "seed": 100 + i}
        jobs.append({"input_ids": prompt, "max_new_tokens": NEW, "ignore_eos": True, **kw})
    return jobs


def _run_threads(fns) -> list:
    """Run each fn in its own thread, all released at once; results (or exceptions) in order."""
    out: list = [None] * len(fns)
    go = threading.Barrier(len(fns))

    def body(i):
        go.wait()
        try:
            out[i] = fns[i]()
        except BaseException as e:  # reported to the test thread
            out[i] = e
    ts = [threading.Thread(target=body, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    return out


def test_generate_from_several_threads_on_one_model(backend):
    with load_model(FIX / "llama", backend=backend) as m:
        jobs = _jobs(m.config.vocab_size)
        want = [m.generate(**j) for j in jobs]
        for _ in range(ROUNDS):
            got = _run_threads([lambda j=j: m.generate(**j) for j in jobs])
            assert got == want


def test_two_models_sharing_a_session_one_thread_each(backend):
    pa, ga = _ref("llama")
    pb, gb = _ref("qwen3")
    with tg.Session(backend=backend, verbose=False) as sess:
        with load_checkpoint(FIX / "llama") as ck:
            a = CausalLM(ck, session=sess)
        with load_checkpoint(FIX / "qwen3") as ck:
            b = CausalLM(ck, session=sess)
        sampled = dict(max_new_tokens=NEW, temperature=0.8, seed=5, ignore_eos=True)
        want_a, want_b = a.generate(pa, **sampled), b.generate(pb, **sampled)

        def work(m, prompt, greedy, want):
            for _ in range(ROUNDS):  # greedy against the HF reference, sampled against a lone run
                assert m.generate(prompt, max_new_tokens=len(greedy) - len(prompt), temperature=0,
                                  ignore_eos=True) == greedy
                assert m.generate(prompt, **sampled) == want
                toks = list(m.generate_stream(prompt, max_new_tokens=len(greedy) - len(prompt), temperature=0,
                                              ignore_eos=True))
                assert prompt + toks == greedy
            return True
        got = _run_threads([lambda: work(a, pa, ga, want_a), lambda: work(b, pb, gb, want_b)])
        assert got == [True, True], got


def test_interleaved_streams_on_one_model_raise_taken_over(backend):
    prompt, greedy = _ref("llama")
    with load_model(FIX / "llama", backend=backend) as m:
        for _ in range(ROUNDS):
            first = m.generate_stream(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)
            assert [next(first), next(first)] == greedy[len(prompt):len(prompt) + 2]
            second = m.generate_stream([5, 6, 7], max_new_tokens=8, temperature=0, ignore_eos=True)
            got_second = list(second)  # takes the KV cache over; runs as it would alone
            assert [5, 6, 7] + got_second == m.generate([5, 6, 7], max_new_tokens=8, temperature=0,
                                                        ignore_eos=True)
            with pytest.raises(GenerationTakenOverError, match="taken over") as e:
                next(first)
            assert isinstance(e.value, RuntimeError) and isinstance(e.value, TinygraphError)
        # a forward call in between takes the cache over too; a stream left alone is unaffected
        s = m.generate_stream(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)
        next(s)
        m([1, 2, 3])
        with pytest.raises(GenerationTakenOverError):
            next(s)
        assert prompt + list(m.generate_stream(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)) == greedy


def test_stream_taken_over_from_another_thread(backend):
    prompt, greedy = _ref("llama")
    with load_model(FIX / "llama", backend=backend) as m:
        for _ in range(ROUNDS):
            s = m.generate_stream(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)
            next(s)
            (other,) = _run_threads([lambda: m.generate([9, 8, 7], max_new_tokens=4, temperature=0)])
            assert isinstance(other, list)
            with pytest.raises(GenerationTakenOverError):
                next(s)


@pytest.mark.parametrize("shared", [False, True], ids=["own-session", "shared-session"])
def test_close_from_another_thread_during_a_stream(backend, shared):
    prompt, _ = _ref("llama")
    for _ in range(ROUNDS):
        sess = tg.Session(backend=backend, verbose=False) if shared else None
        with load_checkpoint(FIX / "llama") as ck:
            m = CausalLM(ck, backend=backend, session=sess, max_context=200)
        # the stream stops after a few tokens and waits while another thread closes the model
        s = m.generate_stream(prompt, max_new_tokens=100, temperature=0, ignore_eos=True)
        [next(s) for _ in range(3)]
        assert _run_threads([m.close]) == [None]
        with pytest.raises(SessionClosedError):
            next(s)
        # and while the stream runs flat out in its own thread
        with load_checkpoint(FIX / "llama") as ck:
            m = CausalLM(ck, backend=backend, session=sess, max_context=200)
        started = threading.Event()

        def consume():
            for n, _ in enumerate(m.generate_stream(prompt, max_new_tokens=150, temperature=0, ignore_eos=True)):
                if n == 2:
                    started.set()
            return "finished"

        def closer():
            started.wait(30)
            m.close()
        got = _run_threads([consume, closer])
        assert got[1] is None
        assert got[0] == "finished" or isinstance(got[0], SessionClosedError), repr(got[0])
        if sess is not None:
            sess.close()


def test_close_from_another_thread_during_generate(backend):
    prompt, _ = _ref("llama")
    for _ in range(ROUNDS):
        m = load_model(FIX / "llama", backend=backend, max_context=200)
        started = threading.Event()
        real_step = m.step

        def step(*a, **kw):
            started.set()
            return real_step(*a, **kw)
        m.step = step

        def closer():
            started.wait(30)
            m.close()
        got = _run_threads([lambda: m.generate(prompt, max_new_tokens=150, temperature=0, ignore_eos=True),
                            closer])
        assert got[1] is None
        assert isinstance(got[0], (list, SessionClosedError)), repr(got[0])
        assert m.closed
