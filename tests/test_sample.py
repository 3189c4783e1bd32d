"""The sample op (tinygraph.ops.sample): its reference against an independent sort-based
implementation, its random stream and the distribution it draws from, greedy equivalence and
special values; then sampled generation on the NumPy backend (reproducible per seed, the decode
graph reused, only token ids leave the step graph). GPU tests: tests/test_cuda_sample.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import load_model
from tinygraph.models.sampling import sample as host_sample
from tinygraph.ops import OPS, sample_draw, sample_params, sample_uniform, sample_weights

FIX = Path(__file__).parent / "fixtures"
REF = OPS["sample"].reference


def kept_by_sorting(x, t, k, p):
    """Independent: sort z descending; the top-k cut is the k-th value; top-p walks the distinct
    values downwards, adding each tie group's weight, until the mass reaches p of the top-k mass.
    Returns (kept mask, weights exp(z - max))."""
    z = np.asarray(x, np.float32) / np.float32(t)
    z = np.where(np.isnan(z), -np.inf, z).astype(np.float32)
    zs = np.sort(z)[::-1]
    thr = zs[k - 1] if 0 < k < z.size else -np.inf
    w = np.exp(z - zs[0]).astype(np.float64)
    top = z >= thr
    if p < 1:
        need, acc = float(np.float32(p)) * w[top].sum(), 0.0
        for v in np.unique(z[top])[::-1]:
            acc += w[top & (z == v)].sum()
            if acc >= need:
                thr = v
                break
    return z >= thr, w


def logits_cases(rng, V):
    yield "normal", (rng.standard_normal(V) * 3).astype(np.float32)
    yield "ties", np.round(rng.standard_normal(V) * 2).astype(np.float32)
    x = (rng.standard_normal(V) * 4).astype(np.float32)
    x[rng.random(V) < 0.2] = -np.inf
    x[rng.random(V) < 0.05] = np.nan
    x[0] = 1.0  # at least one finite value
    yield "inf_nan", x


@pytest.mark.parametrize("V", [1, 7, 300, 5000])
def test_kept_set_matches_sorting(V):
    rng = np.random.default_rng(V)
    for name, x in logits_cases(rng, V):
        for t in (0.5, 1.0, 2.0):
            for k in (0, 1, 5, 50, V - 1, V, V + 3):
                for p in (1.0, 0.9, 0.37, 1e-6, 0.0):
                    w = sample_weights(x, t, k, p)
                    kept, wref = kept_by_sorting(x, t, k, p)
                    what = f"{name} t={t} k={k} p={p}"
                    np.testing.assert_array_equal(w > 0, kept & (wref > 0), err_msg=what)
                    np.testing.assert_allclose(w[w > 0], wref[w > 0], rtol=1e-12, err_msg=what)


def test_top_k_and_top_p_keep_ties():
    x = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 0.5], np.float32)
    assert np.flatnonzero(sample_weights(x, 1.0, 1, 1.0)).tolist() == [1, 3]        # both maxima
    assert np.flatnonzero(sample_weights(x, 1.0, 3, 1.0)).tolist() == [1, 2, 3, 4]  # 3rd value tied
    assert np.flatnonzero(sample_weights(x, 1.0, 0, 1e-6)).tolist() == [1, 3]
    # the two maxima hold ~0.68 of the mass: top_p 0.6 keeps them, 0.7 adds the 2.0 pair
    assert np.flatnonzero(sample_weights(x, 1.0, 0, 0.6)).tolist() == [1, 3]
    assert np.flatnonzero(sample_weights(x, 1.0, 0, 0.7)).tolist() == [1, 2, 3, 4]
    # with ties at the maximum, a single draw lands on either
    picks = {sample_draw(sample_weights(x, 1.0, 1, 1.0), sample_uniform(9, c)) for c in range(50)}
    assert picks == {1, 3}


def test_random_stream():
    # splitmix64 seeded with 0: first output 0xE220A8397B1DCDAF
    assert sample_uniform(0, 0) == (0xE220A8397B1DCDAF >> 40) / 2**24
    u = np.array([sample_uniform(12345, c) for c in range(40000)])
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * 20).astype(int), minlength=20)
    chi2 = ((counts - 2000.0) ** 2 / 2000.0).sum()
    assert chi2 < 60, f"uniformity chi2 {chi2:.1f} over 19 degrees of freedom"
    assert sample_uniform(1, 5) != sample_uniform(2, 5) and sample_uniform(1, 5) != sample_uniform(1, 6)
    assert sample_uniform(2**64 + 1, 5) == sample_uniform(1, 5)  # seeds are mod 2**64


def test_params_layout():
    f, i = sample_params(0.8, 40, 0.9, seed=(7 << 32) | 5, counter=2**32 + 3)
    assert f.dtype == np.float32 and f.tolist() == [np.float32(0.8), np.float32(0.9)]
    assert i.dtype == np.int32 and i.tolist() == [40, 5, 7, 3]
    assert sample_params(1.0, -3)[1][0] == 0 and sample_params(1.0, 2**40)[1][0] == 2**31 - 1
    assert sample_params(1.0, seed=-1)[1].view(np.uint32)[1:3].tolist() == [2**32 - 1] * 2


@pytest.mark.parametrize("t,k,p", [(0.7, 4, 0.9), (1.3, 0, 1.0), (1.0, 0, 0.5)])
def test_draws_follow_the_distribution(t, k, p):
    x = np.array([2.0, -1.0, 0.5, 1.5, 1.5, -3.0, 0.0, 1.0], np.float32)
    N = 20000
    fp, ip = sample_params(t, k, p, seed=2024, counter=0)
    draws = REF({}, np.broadcast_to(x, (N, x.size)), fp, ip)  # row r draws with counter r
    w = sample_weights(x, t, k, p)
    prob = w / w.sum()
    counts = np.bincount(draws, minlength=x.size)
    assert (counts[prob == 0] == 0).all(), "a token outside the kept set was drawn"
    nz = prob > 0
    chi2 = ((counts[nz] - N * prob[nz]) ** 2 / (N * prob[nz])).sum()
    df = max(int(nz.sum()) - 1, 1)
    assert chi2 < df + 8 * np.sqrt(2 * df) + 10, f"chi2 {chi2:.1f} with {df} degrees of freedom"


def test_deterministic_and_rows_use_consecutive_counters():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 500)) * 2).astype(np.float32)
    fp, ip = sample_params(0.9, 50, 0.95, seed=77, counter=10)
    a = REF({}, x, fp, ip)
    np.testing.assert_array_equal(a, REF({}, x, fp, ip))
    for r in range(3):
        f1, i1 = sample_params(0.9, 50, 0.95, seed=77, counter=10 + r)
        assert REF({}, x[r:r + 1], f1, i1)[0] == a[r]
    draws = {int(REF({}, x[:1], *sample_params(0.9, 50, 0.95, seed=77, counter=c))[0]) for c in range(40)}
    assert len(draws) > 3, "different counters should give different tokens"


def test_greedy_and_special_values():
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal((6, 40)) * 2).astype(np.float32)  # ties
    x[2, 7] = np.nan
    for t in (0.0, -1.0, np.nan):
        fp, ip = sample_params(t, 5, 0.5, seed=1)
        np.testing.assert_array_equal(REF({}, x, fp, ip), np.argmax(x, axis=-1))
    y = np.zeros(6, np.float32)
    y[[2, 4]] = np.inf
    assert REF({}, y, *sample_params(1.0))[()] == 2                 # the first +inf
    assert REF({}, np.full(5, -np.inf, np.float32), *sample_params(1.0))[()] == 0
    y = np.array([np.nan, 1.0, -np.inf, 0.5], np.float32)        # NaN counts as -inf
    assert {int(REF({}, y, *sample_params(5.0, seed=s))) for s in range(60)} == {1, 3}
    # top_k = 1 and a tiny top_p are greedy when the maximum is unique
    z = (rng.standard_normal((4, 300)) * 2).astype(np.float16)
    for k, p in ((1, 1.0), (0, 1e-6), (7, 1e-9)):
        np.testing.assert_array_equal(REF({}, z, *sample_params(0.6, k, p, seed=4)), np.argmax(z, axis=-1))


def test_host_utility_matches_op():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(1000) * 3).astype(np.float32)
    for c in range(5):
        assert host_sample(x, 0.8, 40, 0.9, seed=3, counter=c) == REF({}, x, *sample_params(0.8, 40, 0.9, 3, c))
    assert host_sample(x, 0) == int(np.argmax(x))


def test_op_in_a_graph_and_checks():
    sess = tg.Session(backend="numpy")
    g = sess.graph()
    x = g.input((2, 64), tg.bfloat16, name="logits")
    fp = g.input((2,), tg.float32, name="fp")
    ip = g.input((4,), tg.int32, name="ip")
    out = tg.sample(x, fp, ip)
    assert out.shape == (2,) and out.dtype == tg.int32
    g.output(out)
    xv = np.random.default_rng(7).standard_normal((2, 64)).astype(np.float32)
    xb = xv.astype(tg.bfloat16.np)
    for c in range(3):  # new parameters, same graph and plan
        f, i = sample_params(0.7, 10, 0.9, seed=5, counter=c)
        (got,) = sess.compute(g, {x: xv, fp: f, ip: i})
        np.testing.assert_array_equal(got, REF({}, xb, f, i))
    assert len(sess._plans) == 1
    with pytest.raises(tg.DTypeError):
        tg.sample(ip, fp, ip)
    with pytest.raises(tg.ShapeError, match="fparams"):
        tg.sample(x, ip, ip)
    with pytest.raises(tg.ShapeError, match="iparams"):
        tg.sample(x, fp, fp)
    sess.close()


# ----------------------------------------------------------------------------------------------
# generation (NumPy backend, tiny fixture models)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    m = load_model(FIX / "llama", backend="numpy")
    yield m
    m.close()


def _prompt():
    return np.load(FIX / "llama" / "reference.npz")["input_ids"][0]


def test_sampled_generation_is_reproducible(llama):
    prompt = _prompt()
    kw = dict(max_new_tokens=12, temperature=0.8, top_k=40, top_p=0.9)
    a = llama.generate(prompt, seed=1, **kw)
    assert a == llama.generate(prompt, seed=1, **kw) and len(a) == len(prompt) + 12
    assert a == llama.generate(prompt, seed=1, use_cache=False, **kw)  # same stream without the cache
    outs = {tuple(llama.generate(prompt, seed=s, **kw)) for s in range(2, 6)}
    assert len(outs | {tuple(a)}) > 1, "different seeds should give different samples"
    # an unseeded stream may draw the EOS id and stop early: length is only fixed when EOS is ignored
    assert len(llama.generate(prompt, seed=None, ignore_eos=True, **kw)) == len(a)
    vocab = llama.config.vocab_size
    assert all(0 <= t < vocab for t in a)


def test_sampling_runs_in_the_graph(llama, monkeypatch):
    prompt = _prompt()
    wants = []
    real = llama.step

    def step(ids, start, want="logits", times=None, sampling=None):
        wants.append(want)
        return real(ids, start, want, times, sampling)
    built = []
    real_graph = llama.step_graph

    def step_graph(T, want="logits", fuse=True):
        built.append((T, want))
        return real_graph(T, want, fuse)
    loops = []
    real_loop = llama.decode_loop

    def decode_loop(token, start, steps, want="argmax", sampling=None):
        loops.append((start, steps, want))
        return real_loop(token, start, steps, want, sampling)
    monkeypatch.setattr(llama, "step", step)
    monkeypatch.setattr(llama, "step_graph", step_graph)
    monkeypatch.setattr(llama, "decode_loop", decode_loop)
    llama._graphs.clear()
    got = llama.generate(prompt, max_new_tokens=10, temperature=1.1, top_k=0, top_p=0.95, seed=8)
    assert wants == ["sample"] and loops == [(len(prompt), 9, "sample")]  # prefill, then one decode loop
    assert built == [(len(prompt), "sample"), (1, "sample")]  # one prefill and one decode graph
    # the loop's tokens are those of single steps with the counter of each token
    toks = [real(prompt, 0, "sample", sampling=tg.sample_params(1.1, 0, 0.95, 8, counter=0))]
    for n in range(1, 10):
        toks.append(real([toks[-1]], len(prompt) + n - 1, "sample",
                         sampling=tg.sample_params(1.1, 0, 0.95, 8, counter=n)))
    assert got[len(prompt):] == toks
    g = llama._graphs[(1, "sample")][0]
    (out,) = g.outputs
    assert out.op == "sample" and out.shape == (1,) and out.dtype == tg.int32


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy(llama):
    ref = np.load(FIX / "llama" / "reference.npz")
    prompt, greedy = ref["input_ids"][0], list(ref["greedy"][0])
    assert llama.generate(prompt, max_new_tokens=8, temperature=0.7, top_k=1, seed=3) == greedy
    assert llama.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=4) == greedy


def test_seed_must_be_an_integer(llama):
    with pytest.raises(ValueError, match="seed"):
        llama.generate([1, 2], max_new_tokens=2, seed=1.5)
    with pytest.raises(ValueError, match="sampling"):
        llama.step([1], 0, "sample")
