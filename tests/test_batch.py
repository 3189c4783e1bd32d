"""Batched decoding (``generate_batch``, the continuous-batching ``Engine``, the paged KV pool)
against one-at-a-time ``generate`` on the NumPy backend: every sequence's tokens must equal what
it gets alone, greedy and seeded sampling, through chunked prefill, padding and preemption."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tinygraph.models import load_model
from tinygraph.models.engine import Engine, QueueFullError, SamplingParams
from tinygraph.models.paged import KVPool, token_bytes

FIX = Path(__file__).parent / "fixtures"


def _prompts(vocab: int, lens=(3, 17, 40, 5, 70, 1), seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in lens]


def _alone(m, prompts, **kw) -> list[list[int]]:
    return [m.generate(p, **kw)[len(p):] for p in prompts]


@pytest.fixture(scope="module")
def llama():
    m = load_model(FIX / "llama", backend="numpy")
    yield m
    m.close()


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "gemma", "stablelm_parallel", "olmo2", "phi3", "phi3_partial",
                                    "qwen3_yarn", "gemma2", "gemma3_text", "phi", "gpt_neox", "mixtral",
                                    "qwen3_moe", "qwen3_moe_step", "qwen2_moe"])
def test_greedy_batch_equals_one_at_a_time(family):
    with load_model(FIX / family, backend="numpy") as m:
        prompts = _prompts(m.config.vocab_size)
        kw = dict(max_new_tokens=20, temperature=0, ignore_eos=True)
        assert m.generate_batch(prompts, **kw) == _alone(m, prompts, **kw)


def test_sampled_batch_equals_one_at_a_time_per_seed(llama):
    prompts = _prompts(llama.config.vocab_size, seed=1)
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.95)
    seeds = list(range(10, 10 + len(prompts)))
    got = llama.generate_batch(prompts, seed=seeds, **kw)
    assert got == [llama.generate(p, seed=s, **kw)[len(p):] for p, s in zip(prompts, seeds)]
    assert len({tuple(g) for g in got}) > 1
    # one int seed: every prompt samples as it would alone with that seed
    assert llama.generate_batch(prompts[:2], seed=7, **kw) == _alone(llama, prompts[:2], seed=7, **kw)


def test_each_sequence_stops_at_its_own_eos_or_limit(llama):
    prompts = _prompts(llama.config.vocab_size, lens=(4, 9, 30))
    free = _alone(llama, prompts, max_new_tokens=12, temperature=0, ignore_eos=True)
    eos = free[1][3]  # the second sequence ends at its 4th token; the others may or may not
    got = llama.generate_batch(prompts, max_new_tokens=12, temperature=0, eos_token_id=eos)
    assert got == _alone(llama, prompts, max_new_tokens=12, temperature=0, eos_token_id=eos)
    assert got[1] == free[1][:4]
    assert llama.generate_batch(prompts, max_new_tokens=0) == [[], [], []]


def test_preemption_when_kv_memory_runs_out_gives_the_same_tokens(llama):
    prompts = _prompts(llama.config.vocab_size)
    kw = dict(max_new_tokens=30, temperature=0, ignore_eos=True)
    # 12 blocks of 16 tokens for 6 sequences that end up needing ~320 positions: the newest wait
    got = llama.generate_batch(prompts, kv_memory=token_bytes(llama) * 16 * 12, **kw)
    assert got == _alone(llama, prompts, **kw)
    eng = llama._batch_engine[1]
    assert eng.stats()["kv_blocks_free"] == eng.pool.num_blocks == 12
    assert eng.steps > 0


def test_context_full_stops_like_generate(tmp_path):
    with load_model(FIX / "llama", backend="numpy", max_context=48) as m:
        prompts = _prompts(m.config.vocab_size, lens=(40, 10))
        kw = dict(max_new_tokens=30, temperature=0, ignore_eos=True)
        got = m.generate_batch(prompts, **kw)
        assert got == _alone(m, prompts, **kw)
        assert len(got[0]) == 8 and len(got[1]) == 30


def test_long_prompt_prefills_in_chunks_and_sliding_window(tmp_path):
    d = tmp_path / "mistral_window"
    shutil.copytree(FIX / "mistral", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(sliding_window=24, max_position_embeddings=512)
    (d / "config.json").write_text(json.dumps(cfg))
    with load_model(d, backend="numpy", max_context=512) as m:
        assert m.windows[0] == 24
        prompts = _prompts(m.config.vocab_size, lens=(300, 33, 2))  # 256 + 64-padded chunks
        kw = dict(max_new_tokens=12, temperature=0, ignore_eos=True)
        assert m.generate_batch(prompts, **kw) == _alone(m, prompts, **kw)


def test_engine_on_a_thread_serves_concurrent_submitters_and_cancel_frees_blocks(llama):
    eng = Engine(llama, max_batch=4, kv_memory=token_bytes(llama) * 16 * 32).start()
    try:
        prompts = _prompts(llama.config.vocab_size, lens=(5, 12, 30, 7, 3, 50, 20, 9))
        want = _alone(llama, prompts, max_new_tokens=10, temperature=0, ignore_eos=True)
        got: dict[int, list[int]] = {}

        def client(i: int) -> None:
            r = eng.submit(prompts[i], SamplingParams(max_new_tokens=10, temperature=0))
            got[i] = list(r)
            assert r.finish_reason == "length"

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [got[i] for i in range(len(prompts))] == want
        # a cancelled request ends as "cancelled" and its blocks go back
        r = eng.submit(prompts[5], SamplingParams(max_new_tokens=1000, temperature=0))
        it = iter(r)
        next(it)
        r.cancel()
        assert r.wait(30) and r.finish_reason == "cancelled"
        for _ in range(100):
            if eng.stats()["kv_blocks_free"] == eng.pool.num_blocks:
                break
            threading.Event().wait(0.01)
        assert eng.stats() | {"steps": 0} == {"running": 0, "waiting": 0, "kv_blocks": 32, "kv_blocks_free": 32,
                                              "block_size": 16, "steps": 0}
    finally:
        eng.close()


def test_engine_rejects_bad_requests_and_a_full_queue(llama):
    eng = Engine(llama, max_batch=2, kv_memory=token_bytes(llama) * 16 * 4, max_queue=2)
    try:
        with pytest.raises(ValueError, match="empty"):
            eng.submit([])
        with pytest.raises(ValueError, match="vocabulary"):
            eng.submit([1, 999])
        with pytest.raises(ValueError, match="context"):
            eng.submit([1] * 128)
        with pytest.raises(ValueError, match="KV memory"):
            eng.submit([1] * 70)  # 4 blocks of 16 hold 64 positions
        with pytest.raises(ValueError, match="temperature"):
            eng.submit([1], SamplingParams(temperature=-1))
        a, b = eng.submit([1, 2]), eng.submit([3])
        with pytest.raises(QueueFullError):
            eng.submit([4])
        eng.run_until_done([a, b])
        assert a.finish_reason in ("stop", "length") and len(a.tokens) >= 1
    finally:
        eng.close()
    with pytest.raises(ValueError, match="kv_memory"):
        Engine(llama, kv_memory=100)


def test_kv_pool_tables_rows_and_gather_index(llama):
    pool = KVPool(llama, num_blocks=4, block_size=8)
    try:
        assert pool.reserve("a", 10) and pool.tables["a"] == [0, 1]
        assert pool.reserve("b", 8) and pool.tables["b"] == [2]
        assert not pool.reserve("c", 20) and "c" not in pool.tables  # all or nothing
        assert pool.reserve("a", 12) and pool.tables["a"] == [0, 1]  # already owned
        pool.release("a")
        assert pool.reserve("c", 9) and pool.tables["c"] == [0, 1]
        np.testing.assert_array_equal(pool.rows_of("b", [0, 7, 8]), [16, 23, pool.scratch])
        S, R = 4, pool.rows
        idx = pool.gather_index("c", S).reshape(llama.config.num_kv_heads, S)
        np.testing.assert_array_equal(idx[0], [0, 1, 2, 3])
        np.testing.assert_array_equal(idx[-1], (llama.config.num_kv_heads - 1) * R + np.arange(4))
    finally:
        pool.close()


def test_generate_batch_argument_errors(llama):
    with pytest.raises(ValueError, match="prompts"):
        llama.generate_batch([])
    with pytest.raises(ValueError, match="prompts"):
        llama.generate_batch("hello")
    with pytest.raises(ValueError, match="seeds"):
        llama.generate_batch([[1], [2]], seed=[1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        llama.generate_batch([[1], []])
    with pytest.raises(ValueError, match="top_p"):
        llama.generate_batch([[1]], top_p=0)


def test_warmup_builds_the_graphs_early_requests_use(llama):
    eng = Engine(llama, max_batch=8, kv_memory=token_bytes(llama) * 16 * 16)
    try:
        n = eng.warmup()
        built = set(eng.runner._graphs)
        assert n == len(built) and (8, 1, 64, "argmax", False) in built and (1, 16, 64, "argmax", False) in built
        assert eng.stats()["kv_blocks_free"] == 16  # warming writes only the scratch row
        reqs = [eng.submit(p, SamplingParams(max_new_tokens=5, temperature=0))
                for p in _prompts(llama.config.vocab_size, lens=(3, 9, 20))]
        reqs.append(eng.submit([5, 6, 7], SamplingParams(max_new_tokens=5, temperature=0.7, seed=3)))
        eng.run_until_done(reqs)
        # nothing new was built for them, greedy or sampled, except (NumPy only) the prefill step
        # of several prompts at once, which only backends that capture graphs build ahead
        assert all(B > 1 and T > 1 for B, T, *_ in set(eng.runner._graphs) - built)
        assert [r.tokens for r in reqs[:3]] == _alone(llama, [r.prompt for r in reqs[:3]], max_new_tokens=5,
                                                      temperature=0)
        assert reqs[3].tokens == llama.generate([5, 6, 7], max_new_tokens=5, temperature=0.7, seed=3, ignore_eos=True)[3:]
    finally:
        eng.close()


def test_requests_sharing_a_prefix_reuse_its_blocks(llama):
    eng = Engine(llama, max_batch=4, kv_memory=token_bytes(llama) * 16 * 24)
    try:
        rng = np.random.default_rng(5)
        system = [int(t) for t in rng.integers(0, 256, 40)]  # 2 whole blocks + 8 tokens
        prompts = [system + [int(t) for t in rng.integers(0, 256, n)] for n in (5, 9, 3)]
        first = eng.submit(prompts[0], SamplingParams(max_new_tokens=6, temperature=0))
        eng.run_until_done([first])
        assert eng.pool.reused_tokens == 0
        rest = [eng.submit(p, SamplingParams(max_new_tokens=6, temperature=0)) for p in prompts[1:]]
        eng.run_until_done(rest)
        assert eng.pool.reused_tokens == 2 * 32  # each later prompt took the 2 cached blocks
        assert [r.tokens for r in [first] + rest] == _alone(llama, prompts, max_new_tokens=6, temperature=0,
                                                            ignore_eos=True)
        # a follow-up that continues a finished conversation reuses its generated tokens' blocks too
        follow = first.prompt + first.tokens + [7, 8, 9]
        r = eng.submit(follow, SamplingParams(max_new_tokens=4, temperature=0))
        eng.run_until_done([r])
        assert eng.pool.reused_tokens == 2 * 32 + 3 * 16
        assert r.tokens == _alone(llama, [follow], max_new_tokens=4, temperature=0, ignore_eos=True)[0]
        assert eng.stats()["kv_blocks_free"] == 24
    finally:
        eng.close()


def test_dynamic_ntk_past_max_positions_and_longrope_switch_like_generate():
    # dynamic NTK: every step past max_position_embeddings (10) has divisors of its own length
    with load_model(FIX / "llama_dynamic", backend="numpy", max_context=128) as m:
        prompts = _prompts(m.config.vocab_size, lens=(3, 8, 9, 17, 40))
        kw = dict(max_new_tokens=14, temperature=0, ignore_eos=True)
        assert m.generate_batch(prompts, **kw) == _alone(m, prompts, **kw)
    # longrope (switch at 12 positions): prompts on both sides, decodes crossing it
    with load_model(FIX / "phi3", backend="numpy") as m:
        prompts = _prompts(m.config.vocab_size, lens=(5, 11, 12, 13, 30))
        kw = dict(max_new_tokens=10, temperature=0, ignore_eos=True)
        assert m.generate_batch(prompts, **kw) == _alone(m, prompts, **kw)


def test_async_consumers_get_token_batches_and_one_wakeup_per_step(llama):
    """astream_batches: a consumer that looks only after several steps gets every token made
    meanwhile as one batch (so a busy server writes fewer chunks); a scheduler step wakes each
    event loop once (one call_soon_threadsafe), however many of its requests got tokens."""
    import asyncio

    e = Engine(llama, max_batch=4)
    sp = SamplingParams(max_new_tokens=6, temperature=0.0, seed=0, eos=frozenset())
    reqs = [e.submit(p, sp) for p in _prompts(llama.config.vocab_size, (3, 9, 5))]

    async def main() -> list[list[list[int]]]:
        loop = asyncio.get_running_loop()
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a, **k: (wakeups.append(a[0]), real(*a, **k))[1]
        streams = [r.astream_batches() for r in reqs]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0)                          # every consumer waits on its request
        e.step()                                        # prefill: the first token of each
        first = await asyncio.gather(*firsts)
        assert len(wakeups) == 1, wakeups               # one wakeup for the three requests
        while not all(r.done for r in reqs):            # the rest, while nobody looks
            e.step()
        rest = [[b async for b in s] for s in streams]
        return [[f] + r for f, r in zip(first, rest)]

    got = asyncio.run(main())
    for r, batches in zip(reqs, got):
        assert [t for b in batches for t in b] == r.tokens and len(r.tokens) == 6
        assert batches[0] == r.tokens[:1] and batches[1] == r.tokens[1:]   # 5 tokens in one batch
    e.close()
