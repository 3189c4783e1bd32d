"""Tensor parallelism on CPU (issue 19): the ``all_reduce`` op, the in-process communicator
(``tinygraph.parallel``) and Megatron-style sharded models (``models/tensor_parallel.py``) on 2
and 4 simulated ranks against the unsharded model, for every architecture fixture whose head
counts divide."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hf_checks import reference as _ref
import tinygraph as tg
from tinygraph.backends.cuda.lower import LOWERINGS
from tinygraph.io import load_checkpoint
from tinygraph.models import load_model
from tinygraph.parallel import CommunicatorError, InProcessCommunicator, attach, run_ranks, split
from tinygraph.models.tensor_parallel import ShardedCheckpoint, ShardedModel
from conftest import rel_err
from test_io_gguf import llama_gguf  # noqa: F401  (the toy GGUF fixture)

FIX = Path(__file__).parent / "fixtures"
#: the fixtures of test_families.py, test_families_breadth.py, test_moe.py and test_models.py
FIXTURES = ["llama", "llama3", "gpt2", "gpt2_prefixed", "qwen2", "qwen3", "mistral", "gemma", "granite", "olmo2",
            "stablelm", "stablelm_parallel", "qwen3_yarn", "llama_dynamic", "phi3", "phi3_partial", "phi",
            "gpt_neox", "gpt_neox_sequential", "gemma2", "gemma3_text", "mixtral", "qwen3_moe", "qwen3_moe_step",
            "qwen2_moe"]
LOAD = {"llama_dynamic": {"max_context": 32}}  # its max_position_embeddings is 10


def _heads(fam: str) -> tuple[int, int]:
    d = json.loads((FIX / fam / "config.json").read_text())
    nh = d.get("num_attention_heads", d.get("n_head"))
    return nh, d.get("num_key_value_heads") or nh


def _cases() -> tuple[list, list]:
    ok, refused = [], []
    for fam in FIXTURES:
        nh, nkv = _heads(fam)
        for R in (2, 4):
            (ok if nh % R == 0 and nkv % R == 0 else refused).append((fam, R))
    return ok, refused


SHARDABLE, UNSHARDABLE = _cases()


@pytest.mark.parametrize("fam, R", SHARDABLE)
def test_sharded_model_matches_unsharded(fam, R):
    """Logits of the whole prompt, incremental decode through every rank's KV cache and greedy
    ids (prefill + the decode loop; and without the cache) equal the unsharded model's."""
    prompt = _ref(fam)["input_ids"][0]
    kw = LOAD.get(fam, {})
    with load_model(FIX / fam, backend="numpy", **kw) as m0, \
            load_model(FIX / fam, backend="numpy", tensor_parallel=R, **kw) as m:
        assert isinstance(m, ShardedModel) and m.tensor_parallel == R
        h0, c0 = m0(prompt[:-2])
        h, c = m(prompt[:-2])
        assert rel_err(m.get_logits(h).to_numpy(), m0.get_logits(h0).to_numpy()) < 1e-5
        for tok in prompt[-2:]:  # continue through the caches
            h0, c0 = m0([tok], past_key_values=c0)
            h, c = m([tok], past_key_values=c)
            assert c.length == c0.length
            assert rel_err(m.get_logits(h).to_numpy(), m0.get_logits(h0).to_numpy()) < 1e-5
        want = m0.generate(prompt, max_new_tokens=8, temperature=0)
        assert m.generate(prompt, max_new_tokens=8, temperature=0) == want
        assert m.generate(prompt, max_new_tokens=4, temperature=0, use_cache=False) == want[:len(prompt) + 4]
        assert rel_err(m.step(prompt, 0), m0.step(prompt, 0)) < 1e-5


@pytest.mark.parametrize("fam, R", UNSHARDABLE)
def test_heads_that_do_not_divide_are_refused(fam, R):
    with pytest.raises(ValueError, match=f"not divisible by {R}"):
        load_model(FIX / fam, backend="numpy", tensor_parallel=R)


@pytest.mark.parametrize("bad", [0, -2, 2.0, "2", True])
def test_bad_rank_counts(bad):
    with pytest.raises(ValueError, match="tensor_parallel"):
        load_model(FIX / "llama", backend="numpy", tensor_parallel=bad)


def test_cuda_backend_without_the_launcher_is_refused_before_loading(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(tg.BackendError, match="no WORLD_SIZE.*tinygraph.launch --gpus 2"):
        load_model(FIX / "llama", backend="cuda", tensor_parallel=2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(tg.BackendError, match="WORLD_SIZE=4"):
        load_model(FIX / "llama", backend="cuda", tensor_parallel=2)


def test_shards_and_kv_cache_per_rank():
    """Each rank holds its heads' rows of q/k/v, the matching columns of o, half the MLP, its
    vocabulary slice (+ a zero row) and a KV cache of only its KV heads."""
    with load_checkpoint(FIX / "llama") as ckpt, ShardedModel(ckpt, 2) as m:
        cfg = ckpt.config
        hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        for r, rank in enumerate(m.ranks):
            assert rank.W["layers.0.attn.qkv.weight"].shape == ((nh + 2 * nkv) // 2 * hd, cfg.hidden_size)
            assert rank.W["layers.0.attn.o.weight"].shape == (cfg.hidden_size, nh // 2 * hd)
            assert rank.W["layers.0.mlp.down.weight"].shape == (cfg.hidden_size, cfg.intermediate_size // 2)
            assert rank.W["tok_emb.weight"].shape == (cfg.vocab_size // 2 + 1, cfg.hidden_size)
            assert rank.kv_k[0].shape == (nkv // 2, m.max_context, hd)
            full = ckpt.tensor("layers.0.attn.k.weight")
            lo = r * nkv // 2 * hd
            np.testing.assert_array_equal(ShardedCheckpoint(ckpt, 2, r).tensor("layers.0.attn.k.weight"),
                                          full[lo:lo + nkv // 2 * hd])
        assert m.memory_usage()["kv_cache"] * 2 == sum(p["kv_cache"] for p in m.memory_usage()["per_rank"])


@pytest.mark.parametrize("fam", ["llama", "olmo2", "phi", "qwen2_moe"])
def test_rank_graph_shows_all_reduces_and_still_fuses(fam):
    """One rank's decode graph: an all_reduce after the embedding lookup, after each layer's o and
    down (or MoE block), OLMo 2's whole-projection q/k gathers, the logits' gather; the attention
    still fuses into one attention_store per layer. The dump and the DOT show them."""
    from tinygraph.dump import to_dot
    with load_model(FIX / fam, backend="numpy", tensor_parallel=2) as m:
        g, _, _ = m.step_graph(1, "argmax")
        L = m.config.num_layers
    ops = [n.op for n in g.nodes]
    per_layer = 4 if fam == "olmo2" else 2
    assert ops.count("all_reduce") == per_layer * L + 2
    assert ops.count("attention_store") == L
    names = {n.name for n in g.nodes if n.op == "all_reduce"}
    assert {"tok_emb", "lm_head.gather", "layers.0.attn.o.reduce"} <= names
    assert "all_reduce" in g.dump() and "all_reduce" in to_dot(g)


def test_sampling_and_stream_and_batch():
    """Sampled ids with a seed, the token stream and batched generation equal the unsharded
    model's; a seed of None is drawn once, so every rank samples the same tokens."""
    prompt = list(_ref("qwen3")["input_ids"][0])
    with load_model(FIX / "qwen3", backend="numpy") as m0, \
            load_model(FIX / "qwen3", backend="numpy", tensor_parallel=2) as m:
        kw = dict(max_new_tokens=6, temperature=0.8, top_k=20, seed=5)
        assert m.generate(prompt, **kw) == m0.generate(prompt, **kw)
        # an unseeded stream may draw EOS and stop early: its length is fixed only with EOS ignored
        assert len(m.generate(prompt, max_new_tokens=6, temperature=0.8, seed=None, ignore_eos=True)) == len(prompt) + 6
        assert list(m.generate_stream(prompt, max_new_tokens=6, temperature=0)) == \
            m0.generate(prompt, max_new_tokens=6, temperature=0)[len(prompt):]
        prompts = [prompt, prompt[:3], prompt[2:]]
        assert m.generate_batch(prompts, max_new_tokens=5, temperature=0) == \
            m0.generate_batch(prompts, max_new_tokens=5, temperature=0)
        with pytest.raises(ValueError, match="temperature"):
            m.generate_stream(prompt, temperature=-1)


@pytest.mark.parametrize("fam", ["gpt2", "llama"])  # tied / untied LM head
def test_quantized_shards(fam):
    prompt = _ref(fam)["input_ids"][0]
    with load_model(FIX / fam, backend="numpy", quantize="q8_0") as m0, \
            load_model(FIX / fam, backend="numpy", tensor_parallel=2, quantize="q8_0") as m:
        assert m.memory_usage()["weight_types"].get("q8_0")
        assert rel_err(m.step(prompt, 0), m0.step(prompt, 0)) < 1e-5
        assert m.generate(prompt, max_new_tokens=6, temperature=0) == m0.generate(prompt, max_new_tokens=6,
                                                                                  temperature=0)


def test_float16_shards():
    prompt = _ref("llama")["input_ids"][0]
    with load_model(FIX / "llama", backend="numpy", dtype="float16") as m0, \
            load_model(FIX / "llama", backend="numpy", dtype="float16", tensor_parallel=2) as m:
        assert rel_err(m.step(prompt, 0), m0.step(prompt, 0)) < 1e-2


def test_a_failing_rank_stops_the_others():
    """A rank that raises mid-step: the others, waiting in all_reduce, stop at once (no hang until
    the timeout); the caller gets the failing rank's own error; the model works afterwards."""
    prompt = _ref("llama")["input_ids"][0]
    with load_checkpoint(FIX / "llama") as ckpt, ShardedModel(ckpt, 2, timeout=60) as m:
        want = m.step(prompt, 0)
        bad = m.ranks[1]
        real = bad.session.compute

        def broken(*a, **k):
            raise RuntimeError("rank 1 broke")
        bad.session.compute = broken
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="rank 1 broke"):
            m.step(prompt, 0)
        assert time.monotonic() - t0 < 10
        bad.session.compute = real
        np.testing.assert_array_equal(m.step(prompt, 0), want)


# -- the op and the communicator ---------------------------------------------------------------------
def _reduce_graphs(R: int, arrays: list[np.ndarray], dtype=tg.float32, timeout: float = 30.0):
    comm = InProcessCommunicator(R, timeout)
    sessions = [tg.Session(backend="numpy") for _ in range(R)]
    runs = []
    for r, s in enumerate(sessions):
        attach(s, comm, r)
        g = s.graph()
        x = g.input(arrays[r].shape, dtype, name="x")
        y = tg.all_reduce(tg.scale(x, 1.0), name="sum")
        g.output(y)
        runs.append(lambda s=s, g=g, a=arrays[r]: s.compute(g, {"x": a})[0])
    return comm, sessions, runs


@pytest.mark.parametrize("dtype", [tg.float32, tg.float16])
@pytest.mark.parametrize("R", [1, 2, 3, 4])
def test_all_reduce_op_against_numpy(R, dtype):
    rng = np.random.default_rng(R)
    arrays = [rng.standard_normal((3, 5)).astype(dtype.np) for _ in range(R)]
    comm, sessions, runs = _reduce_graphs(R, arrays, dtype)
    outs = run_ranks(comm, runs)
    want = np.zeros((3, 5), np.float32)
    for a in arrays:  # rank order, float32
        want += a.astype(np.float32)
    for o in outs:  # bit-identical on every rank
        assert o.dtype == dtype.np
        np.testing.assert_array_equal(o, want.astype(dtype.np))
    assert comm.rounds == 1
    assert tg.ops.OPS["all_reduce"].family == "collective"


def test_all_reduce_needs_a_communicator():
    s = tg.Session(backend="numpy")
    g = s.graph()
    x = g.input((2,), tg.float32, name="x")
    with pytest.raises(tg.GraphError, match="no communicator"):
        tg.all_reduce(x)
    with pytest.raises(tg.DTypeError):
        tg.all_reduce(g.input((2,), tg.int32, name="i"))


def test_cuda_lowering_refuses_clearly():
    comm = InProcessCommunicator(2)
    s = tg.Session(backend="numpy")
    attach(s, comm, 0)
    g = s.graph()
    y = tg.all_reduce(g.input((2,), tg.float32, name="x"), name="sum")
    with pytest.raises(tg.BackendError, match="needs an NCCL communicator.*tinygraph.launch"):
        LOWERINGS["all_reduce"](None, y, None, {})


def test_timeout_names_the_missing_rank():
    comm = InProcessCommunicator(3, timeout=0.2)
    errors = []

    def rank(r):
        try:
            comm.all_reduce(r, np.ones(2, np.float32), "t")
        except CommunicatorError as e:
            errors.append(str(e))
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 2)]  # rank 1 never comes
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 2 and all("timed out" in e and "[1]" in e for e in errors), errors
    with pytest.raises(CommunicatorError, match="timed out"):  # broken until reset
        comm.all_reduce(1, np.ones(2, np.float32))
    comm.reset()
    assert run_ranks(comm, [lambda r=r: comm.all_reduce(r, np.full(2, r, np.float32)) for r in range(3)])[0].tolist() \
        == [3.0, 3.0]


def test_failing_rank_aborts_waiting_ranks():
    comm = InProcessCommunicator(2, timeout=60)

    def fail():
        time.sleep(0.1)  # rank 0 is already waiting
        raise KeyError("boom")
    seen = []

    def wait():
        try:
            comm.all_reduce(0, np.ones(1, np.float32), "x")
        except CommunicatorError as e:
            seen.append(str(e))
            raise
    t0 = time.monotonic()
    with pytest.raises(KeyError, match="boom"):  # the original error, not the others' CommunicatorError
        run_ranks(comm, [wait, fail])
    assert time.monotonic() - t0 < 10
    assert seen and "rank 1 failed: KeyError" in seen[0]
    assert not comm.failed  # reset by run_ranks


def test_ranks_in_different_collectives_are_an_error():
    comm = InProcessCommunicator(2)
    with pytest.raises(CommunicatorError, match="disagree"):
        run_ranks(comm, [lambda: comm.all_reduce(0, np.ones(2, np.float32), "a"),
                         lambda: comm.all_reduce(1, np.ones(2, np.float32), "b")])
    with pytest.raises(CommunicatorError, match="disagree"):
        run_ranks(comm, [lambda: comm.all_reduce(0, np.ones(2, np.float32), "a"),
                         lambda: comm.all_reduce(1, np.ones(3, np.float32), "a")])


def test_split_covers_everything_once():
    for n in (1, 7, 256, 257):
        for parts in (1, 2, 3, 4):
            bounds = [split(n, parts, r) for r in range(parts)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_viz_tool_shows_a_rank_graph(tmp_path):
    """``tools/viz.py --tensor-parallel 2``: rank 0's decode graph, its all_reduce nodes in the text and DOT."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tools" / "viz.py"), "--model", str(FIX / "llama"),
                        "--tensor-parallel", "2", "--out", str(tmp_path), "--formats", "txt,dot"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    L = json.loads((FIX / "llama" / "config.json").read_text())["num_hidden_layers"]
    for ext in ("txt", "dot"):
        assert (tmp_path / f"decode.{ext}").read_text().count("all_reduce") >= 2 * L + 2


def test_gguf_shards_load_dequantized(llama_gguf):
    """A GGUF with block-quantized tensors: the shards hold the dequantized values (raw blocks are
    not sliced), so the sharded model equals the unsharded one loaded with ``dequantize=True``."""
    path, _ = llama_gguf
    with load_model(path, backend="numpy", dequantize=True) as m0, \
            load_model(path, backend="numpy", tensor_parallel=2) as m:
        ids = [1, 5, 9, 3]
        assert rel_err(m.step(ids, 0), m0.step(ids, 0)) < 1e-5
        assert m.generate(ids, max_new_tokens=4, temperature=0) == m0.generate(ids, max_new_tokens=4, temperature=0)


def test_one_rank_is_the_plain_model():
    from tinygraph.models import CausalLM
    with load_model(FIX / "llama", backend="numpy", tensor_parallel=1) as m:
        assert type(m) is CausalLM
