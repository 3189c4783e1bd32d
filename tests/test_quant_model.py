"""Block-quantized weights through the graph, the NumPy backend and the model loader (CPU).

The meaning of a quantized weight is its dequantized values (tinygraph.quant.dequantize), so
every check compares against float math on those values."""
from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import load_model
from tinygraph.quant import dequantize, quantize

from test_io_gguf import llama_gguf  # noqa: F401  (a GGUF whose layers mix F32, F16, BF16, Q8_0, Q4_0, Q4_1)

TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
RNG = np.random.default_rng(7)


@pytest.mark.parametrize("qt", TYPES)
def test_linear_matmul_get_rows_use_the_dequantized_values(qt: str) -> None:
    dt = tg.dtypes.as_dtype(qt)
    N, K = 7, 2 * dt.block
    w = RNG.standard_normal((N, K)).astype(np.float32)
    raw = quantize(w, qt)
    wd = dequantize(raw, qt, K).astype(np.float64)
    x = RNG.standard_normal((3, K)).astype(np.float32)
    b = RNG.standard_normal(N).astype(np.float32)
    with tg.Session(backend="numpy") as s:
        W = s.persistent((N, K), dt, name="W")
        B = s.persistent((N,), tg.float32, name="b")
        s.finalize()
        s.upload(W, raw)
        s.upload(B, b)
        assert np.array_equal(s.download(W), raw)
        g = s.graph()
        xi = g.input((3, K), tg.float32, name="x")
        ids = g.input((2,), tg.int32, name="ids")
        g.output(tg.linear(xi, W, bias=B, act="silu"))
        g.output(tg.matmul(xi, tg.transpose(W)))
        g.output(tg.get_rows(W, ids, dtype=tg.float16))
        lin, mm, rows = s.compute(g, {xi: x, ids: np.array([5, 1], np.int32)})
    z = x.astype(np.float64) @ wd.T + b
    np.testing.assert_allclose(lin, z / (1 + np.exp(-z)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mm, x.astype(np.float64) @ wd.T, rtol=1e-4, atol=1e-4)
    assert rows.dtype == np.float16
    np.testing.assert_allclose(rows.astype(np.float32), wd[[5, 1]], rtol=1e-3, atol=1e-3)


def test_upload_quantizes_floats_and_checks_shapes() -> None:
    with tg.Session(backend="numpy") as s:
        W = s.persistent((4, 64), tg.q8_0, name="W")
        with pytest.raises(tg.ShapeError, match="whole blocks"):
            s.persistent((4, 48), tg.q8_0, name="bad")
        s.finalize()
        w = RNG.standard_normal((4, 64)).astype(np.float32)
        s.upload(W, w)
        assert np.array_equal(s.download(W), quantize(w, "q8_0"))
        with pytest.raises(tg.ShapeError, match="raw blocks"):
            s.upload(W, np.zeros((4, 10), np.uint8))
    assert tg.q4_k.nbytes(512) == 288 and tg.q8_0.nbytes(64) == 68


def test_ops_refuse_quantized_activations() -> None:
    with tg.Session(backend="numpy") as s:
        W = s.persistent((4, 32), tg.q4_0, name="W")
        s.finalize()
        g = s.graph()
        x = g.input((1, 32), tg.float32, name="x")
        with pytest.raises(tg.DTypeError):
            tg.matmul(tg.transpose(W), x)
        with pytest.raises(tg.DTypeError):
            tg.add(x, tg.view(W, (1, 32)))


@pytest.mark.parametrize("qt", ["q8_0", "q4_0", "q5_1", "q4_k"])
def test_quantize_on_load_equals_float_model_on_dequantized_weights(qt: str) -> None:
    mq = load_model("tests/fixtures/llama", backend="numpy", quantize=qt)
    mf = load_model("tests/fixtures/llama", backend="numpy")
    usage = mq.memory_usage()
    types = usage["weight_types"]
    assert sum(n for k, n in types.items() if k.startswith("q")) == 10, types
    assert usage["weights"] == sum(t.nbytes for t in mq.W.values()) < sum(t.nbytes for t in mf.W.values())
    for name, t in mq.W.items():
        if t.dtype.is_quant:
            mf.session.upload(mf.W[name], dequantize(mq.session.download(t), t.dtype.name, t.shape[1]))
    ids = [3, 17, 40, 9, 100]
    np.testing.assert_allclose(mq.step(ids, 0), mf.step(ids, 0), rtol=1e-4, atol=1e-4)
    assert mq.generate(ids, max_new_tokens=6, temperature=0, ignore_eos=True) == \
        mf.generate(ids, max_new_tokens=6, temperature=0, ignore_eos=True)


def test_quantize_argument_is_checked() -> None:
    with pytest.raises(ValueError, match="quantize"):
        load_model("tests/fixtures/llama", backend="numpy", quantize="q7_x")
    with pytest.raises(ValueError, match="quantize"):
        load_model("tests/fixtures/llama", backend="numpy", quantize="float16")


def test_gguf_keeps_its_block_types(llama_gguf) -> None:  # noqa: F811
    path, _ = llama_gguf
    mq = load_model(path, backend="numpy")
    md = load_model(path, backend="numpy", dequantize=True)
    types = mq.memory_usage()["weight_types"]
    assert types.get("q8_0") and types.get("q4_0") and types.get("q4_1"), types
    assert set(md.memory_usage()["weight_types"]) == {"f32"}
    # mixed q/k/v types: separate projections instead of one packed matrix
    assert "layers.0.attn.qkv.weight" not in mq.W and "layers.0.attn.k.weight" in mq.W
    assert mq.memory_usage()["weights"] < md.memory_usage()["weights"] / 2
    ids = [1, 4, 9, 2, 7]
    np.testing.assert_allclose(mq.step(ids, 0), md.step(ids, 0), rtol=1e-4, atol=1e-4)


def test_gguf_sliding_window_is_read(tmp_path) -> None:
    import gguf

    from tinygraph.io import load_checkpoint
    H, I, V = 32, 64, 40
    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(str(tmp_path / "sw.gguf"), arch="llama")
    for k, v in (("block_count", 1), ("context_length", 64), ("embedding_length", H), ("feed_forward_length", I),
                 ("head_count", 2), ("head_count_kv", 1)):
        getattr(w, f"add_{k}")(v)
    w.add_uint32("llama.attention.sliding_window", 4)
    w.add_layer_norm_rms_eps(1e-5)

    def t(name, *shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    t("token_embd.weight", V, H)
    t("output_norm.weight", H)
    for n, shape in (("attn_norm", (H,)), ("ffn_norm", (H,)), ("attn_q", (H, H)), ("attn_k", (16, H)),
                     ("attn_v", (16, H)), ("attn_output", (H, H)), ("ffn_gate", (I, H)), ("ffn_up", (I, H)),
                     ("ffn_down", (H, I))):
        t(f"blk.0.{n}.weight", *shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.warns(UserWarning):  # no vocabulary: no tokenizer
        ck = load_checkpoint(tmp_path / "sw.gguf")
    assert ck.config.sliding_window == 4
    ck.close()
    m = load_model(tmp_path / "sw.gguf", backend="numpy")
    assert m.windows == [4]



def test_a_nonfinite_scale_is_a_weight_value_with_a_warning() -> None:
    from tinygraph.quant import nonfinite_scales
    raw = quantize(RNG.standard_normal((3, 64)).astype(np.float32), "q8_0")
    assert nonfinite_scales(raw, "q8_0") == 0
    raw[1, 34:36] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)   # block 1 of row 1: NaN d
    assert nonfinite_scales(raw, "q8_0") == 1
    with tg.Session(backend="numpy") as s:
        W = s.persistent((3, 64), tg.q8_0, name="W")
        s.finalize()
        with pytest.warns(UserWarning, match="'W'.*1 block"):
            s.upload(W, raw)
        g = s.graph()
        x = g.input((1, 64), tg.float32, name="x")
        g.output(tg.matmul(x, tg.transpose(W)))
        (y,) = s.compute(g, {x: np.ones((1, 64), np.float32)})
    assert np.isnan(y[0, 1]) and np.isfinite(y[0, [0, 2]]).all()


def test_bfloat16_floats_are_quantized_on_upload() -> None:
    import ml_dtypes
    w = RNG.standard_normal((4, 64)).astype(ml_dtypes.bfloat16)
    with tg.Session(backend="numpy") as s:
        W = s.persistent((4, 64), tg.q8_0, name="W")
        s.finalize()
        s.upload(W, w)
        assert np.array_equal(s.download(W), quantize(w.astype(np.float32), "q8_0"))
        with pytest.raises(tg.ShapeError, match="raw blocks"):
            s.upload(W, np.zeros((4, 64), np.int32))


def test_quantize_a_gguf_whose_packed_parts_have_other_types(llama_gguf) -> None:  # noqa: F811
    path, _ = llama_gguf  # its q/k/v are F32/Q4_1/Q4_0 and gate/up Q4_0/Q8_0: packed again as q8_0
    m = load_model(path, backend="numpy", quantize="q8_0")
    assert "layers.0.attn.qkv.weight" in m.W and m.W["layers.0.mlp.gate_up.weight"].dtype == tg.q8_0
    md = load_model(path, backend="numpy", dequantize=True)
    ids = [1, 4, 9, 2, 7]
    a, b = m.step(ids, 0), md.step(ids, 0)
    assert np.corrcoef(a, b)[0, 1] > 0.99  # q8_0 of the dequantized weights: close, not equal


def test_block_types_are_weights_only() -> None:
    with tg.Session(backend="numpy") as s:
        W = s.persistent((4, 32), tg.q4_0, name="W")
        F = s.persistent((4, 32), tg.float32, name="F")
        s.finalize()
        g = s.graph()
        x = g.input((4, 32), tg.float32, name="x")
        ids = g.input((2,), tg.int32, name="ids")
        for build in (lambda: tg.cpy(x, W), lambda: tg.cpy(tg.view(W, (4, 32)), F), lambda: tg.cast(x, "q8_0"),
                      lambda: tg.cont(tg.transpose(W)), lambda: tg.concat(tg.view(W, (4, 32)), x, axis=0),
                      lambda: tg.get_rows(F, ids, dtype="q8_0"), lambda: g.input((1, 32), tg.q8_0, name="q")):
            with pytest.raises(tg.DTypeError, match="block-quantized"):
                build()


def test_cli_quantize_and_dequantize_exclude_each_other(capsys) -> None:
    from tinygraph.run import main
    with pytest.raises(SystemExit) as e:
        main(["--dequantize", "--quantize", "q8_0", "--prompt", "x"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("fam", ["llama", "olmo2"])
def test_q_and_k_of_one_type_are_packed_when_v_has_another(fam, monkeypatch) -> None:
    # llama-quantize's Q4_K_M keeps q / k in Q4_K and gives v Q6_K on some layers: q and k stay one
    # matrix (one GEMV), v its own; OLMo 2's q/k norms over the whole projections read the pack
    from tinygraph.models import transformer

    plain = transformer.Transformer._weight_dtype

    def mixed(self, ckpt, name, shape):
        t = plain(self, ckpt, name, shape)
        return tg.q4_0 if t.is_quant and name.endswith("attn.v.weight") else t
    fix = f"tests/fixtures/{fam}"
    ids = [3, 17, 40, 9, 100]
    monkeypatch.setattr(transformer.Transformer, "_weight_dtype", mixed)
    m = load_model(fix, backend="numpy", quantize="q8_0")
    assert m.W["layers.0.attn.qk.weight"].dtype == tg.q8_0 and m.W["layers.0.attn.v.weight"].dtype == tg.q4_0
    assert "layers.0.attn.qkv.weight" not in m.W and "layers.0.attn.q.weight" not in m.W
    outs = []
    for fuse in (False, True):
        g, tid, pid = m.step_graph(len(ids), "logits", fuse=fuse)
        outs.append(m.session.compute(g, {tid: np.array(ids, np.int32), pid: np.arange(len(ids), dtype=np.int32)})[0])
        if fuse:  # the attention norm folded into both projections
            assert "rms_norm" not in [n.op for n in g.nodes if n.name.startswith("layers.0.attn_norm")]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    # the float model (one packed q|k|v) on the same dequantized values
    monkeypatch.setattr(transformer.Transformer, "_weight_dtype", plain)
    ref = load_model(fix, backend="numpy")
    nv = ref.config.num_kv_heads * ref.config.head_dim
    for name, t in ref.W.items():
        if name.endswith("attn.qkv.weight"):
            w = ref.session.download(t)
            rq = [(w[:-nv], "q8_0"), (w[-nv:], "q4_0")]
            ref.session.upload(t, np.concatenate([dequantize(quantize(a, q), q, a.shape[1]) for a, q in rq]))
        elif name in m.W and m.W[name].dtype.is_quant:
            w, q = ref.session.download(t), m.W[name].dtype.name
            ref.session.upload(t, dequantize(quantize(w, q), q, w.shape[1]))
    want = ref.step(ids, 0)
    np.testing.assert_allclose(np.ravel(outs[1])[-want.size:], np.ravel(want), rtol=1e-4, atol=1e-4)
