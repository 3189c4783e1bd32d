"""Mixture-of-experts GGUF files (tinygraph/io/gguf_moe.py) as llama.cpp's converter writes them
(tests/fixtures/gguf, tools/make_gguf_fixtures.py): Mixtral (``llama`` with 3-D ``ffn_*_exps``),
``qwen3moe`` and ``qwen2moe`` (shared expert) against HF transformers' outputs of the same weights
(logits, incremental decode, greedy ids), every canonical tensor equal to the safetensors one, HF's
per-expert routing counts, block-quantized experts kept in their blocks, fused gate/up experts, and
clear refusals of the MoE variants not built."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

import tinygraph as tg
from conftest import rel_err
from hf_checks import reference as _ref
from hf_checks import check_full_sequence_logits, reference_tests
from tinygraph import quant
from tinygraph.io import LoadError, UnsupportedModelError, load_checkpoint
from tinygraph.io.gguf_loader import load_gguf
from tinygraph.models import load_model

FIX = Path(__file__).parent / "fixtures"
# HF fixture folder (reference.npz, model.safetensors) -> its GGUF's llama.cpp architecture
FAMILIES = {"mixtral": "llama", "qwen3_moe_gguf": "qwen3moe", "qwen2_moe": "qwen2moe"}


def _gguf(fam: str) -> Path:
    return FIX / "gguf" / f"{fam}.gguf"


def _check_moe(m, fam: str) -> None:
    assert m.config.moe is not None and all(m.config.moe.sparse)


test_full_sequence_logits, test_incremental_decode_and_greedy, test_half_precision = reference_tests(
    FAMILIES, lambda fam, backend, dtype: load_model(_gguf(fam), dtype=dtype, backend=backend), _check_moe)


@pytest.mark.parametrize("fam", FAMILIES)
def test_same_model_as_safetensors(fam):
    """Spec (a ``llama`` file with experts is Mixtral), MoE config (llama.cpp's renormalised top-k
    for llama / qwen3moe, not for qwen2moe, which the fixtures' norm_topk_prob match) and every
    canonical tensor (each expert a slice of the 3-D tensor; Mixtral's Q/K un-permuted) equal the
    safetensors fixture's."""
    with load_checkpoint(_gguf(fam)) as g, load_checkpoint(FIX / fam) as s:
        assert g.format == "gguf" and g.config.model_type == FAMILIES[fam]
        assert g.spec == s.spec and g.config.moe == s.config.moe
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                    "norm_eps", "rope_theta", "tie_word_embeddings", "activation", "sliding_window"):
            assert getattr(g.config, key) == getattr(s.config, key), key
        assert g.names == s.names
        for n in g.names:
            np.testing.assert_array_equal(g.tensor(n), s.tensor(n), err_msg=n)


def _routing_counts(m, ids: np.ndarray) -> np.ndarray:
    """int [MoE layers, experts]: how many of ``ids``' tokens tinygraph's routing weights send to
    each expert (a nonzero weight) in a full forward."""
    g, tid, pid = m.step_graph(len(ids), "all_logits", fuse=False)
    weights = [n for n in g.nodes if n.name and n.name.endswith(".moe.weights")]
    for w in weights:
        g.output(w)
    out = m.session.compute(g, {tid: ids.astype(np.int32), pid: np.arange(len(ids), dtype=np.int32)})
    return np.stack([(w > 0).sum(0) for w in out[1:]])


@pytest.mark.parametrize("fam", FAMILIES)
def test_routes_like_hf_to_every_expert(fam):
    """Over the greedy sequence, tinygraph's routing of the GGUF model chooses each expert of each
    layer exactly as often as HF's routers (``expert_hits``, made by tools/fixture_moe.py), and
    every expert at least once: a wrong expert's weights cannot hide."""
    ref = _ref(fam)
    with load_model(_gguf(fam), backend="numpy") as m:
        counts = _routing_counts(m, ref["greedy"][0])
    np.testing.assert_array_equal(counts, ref["expert_hits"])
    assert counts.min() > 0


# ------------------------------------------------------------------ rewritten files
def _rewrite(src: Path, dst: Path, tensors: Callable[[str, np.ndarray], list[tuple[str, np.ndarray, QT | None]]],
             meta: dict[str, tuple[object, VT]] | None = None) -> Path:
    """``src`` with each tensor replaced by ``tensors(name, float32 array)`` ((name, array, raw
    ggml type or None) each) and metadata ``meta`` ({key: (value, type)}) added or replaced."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=str(r.fields["general.architecture"].contents()))
    meta = meta or {}
    for key, f in r.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture" and key not in meta:
            w.add_key_value(key, f.contents(), f.types[0], f.types[-1] if f.types[0] == VT.ARRAY else None)
    for key, (v, vt) in meta.items():
        w.add_key_value(key, v, vt)
    for t in r.tensors:
        a = np.asarray(t.data, np.float32).reshape(tuple(reversed([int(x) for x in t.shape])))
        for name, arr, raw in tensors(t.name, a):
            w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _same(name: str, a: np.ndarray) -> list:
    return [(name, a, None)]


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("fam", ["qwen3_moe_gguf", "qwen2_moe"])
def test_quantized_experts_keep_their_blocks(fam, qtype, tmp_path):
    """3-D expert tensors stored in a ggml block type (tinygraph's quantizer, ggml's reference
    bytes): each expert is its byte slice, the packed gate/up matrix holds exactly the file's blocks
    (no re-quantization), and the logits equal those of the same file dequantized at load."""
    qt = QT[qtype.upper()]

    def exps_quantized(name: str, a: np.ndarray) -> list:
        if a.ndim == 3 and a.shape[-1] % 32 == 0:  # gate / up [E, I, hidden]; down's rows are 16 wide
            return [(name, quant.quantize(a, qtype), qt)]
        return _same(name, a)

    p = _rewrite(_gguf(fam), tmp_path / f"{fam}-{qtype}.gguf", exps_quantized)
    ref = _ref(fam)
    ids = ref["input_ids"][0]
    r = gguf.GGUFReader(str(p))
    raw = {t.name: np.asarray(t.data) for t in r.tensors}
    with load_model(p, backend="numpy") as m:
        gu = m.W["layers.1.moe.gate_up.weight"]
        assert gu.dtype == tg.dtypes.as_dtype(qtype) and m.W["layers.1.moe.down.0.weight"].dtype == tg.float32
        want = np.concatenate([raw["blk.1.ffn_gate_exps.weight"][e] for e in range(8)]
                              + [raw["blk.1.ffn_up_exps.weight"][e] for e in range(8)])
        np.testing.assert_array_equal(m.session.download(gu), want)
        got = m.get_logits(m(ids)[0]).to_numpy()
    with load_model(p, backend="numpy", dequantize=True) as m:
        assert m.W["layers.1.moe.gate_up.weight"].dtype == tg.float32
        deq = m.get_logits(m(ids)[0]).to_numpy()
    assert rel_err(got, deq) < 1e-5
    assert rel_err(got, ref["logits"][0]) < (3e-2 if qtype == "q8_0" else 2e-1)


def test_fused_gate_up_experts(tmp_path):
    """The converter's ``--fuse-gate-up-exps`` form, ``ffn_gate_up_exps`` [E, 2 I, hidden] (gate
    rows, then up rows), gives the same tensors and logits."""
    def fuse(name: str, a: np.ndarray) -> list:
        if name.endswith("ffn_gate_exps.weight"):
            return []
        if name.endswith("ffn_up_exps.weight"):
            return [(name.replace("ffn_up_exps", "ffn_gate_up_exps"), np.concatenate([gates[name], a], axis=1), None)]
        return _same(name, a)

    r = gguf.GGUFReader(str(_gguf("mixtral")))
    gates = {t.name.replace("ffn_gate_exps", "ffn_up_exps"):
             np.asarray(t.data, np.float32) for t in r.tensors if t.name.endswith("ffn_gate_exps.weight")}
    p = _rewrite(_gguf("mixtral"), tmp_path / "fused.gguf", fuse)
    assert "blk.0.ffn_gate_up_exps.weight" in load_gguf(p).tensor_names
    with load_checkpoint(p) as g, load_checkpoint(_gguf("mixtral")) as s:
        assert g.config.moe == s.config.moe and g.names == s.names
        for n in g.names:
            np.testing.assert_array_equal(g.tensor(n), s.tensor(n), err_msg=n)
    with load_model(p, backend="numpy") as m:
        check_full_sequence_logits(m, _ref("mixtral"))


# ------------------------------------------------------------------ metadata and refusals
def test_expert_weights_norm_key_is_taken(tmp_path):
    """Without the key: llama.cpp's fixed choice per architecture; with it: the key."""
    assert load_gguf(_gguf("qwen2_moe")).config.moe.norm_topk is False
    p = _rewrite(_gguf("qwen2_moe"), tmp_path / "n.gguf", _same, {"qwen2moe.expert_weights_norm": (True, VT.BOOL)})
    assert load_gguf(p).config.moe.norm_topk is True


@pytest.mark.parametrize("key, value, vt, match", [
    ("expert_gating_func", 2, VT.UINT32, "expert_gating_func 2"),
    ("expert_weights_scale", 2.5, VT.FLOAT32, "expert_weights_scale 2.5"),
    ("expert_group_count", 4, VT.UINT32, "grouped expert routing"),
])
def test_other_routing_is_refused(key, value, vt, match, tmp_path):
    p = _rewrite(_gguf("qwen3_moe_gguf"), tmp_path / "r.gguf", _same, {f"qwen3moe.{key}": (value, vt)})
    with pytest.raises(UnsupportedModelError, match=f"'qwen3moe': {match}"):
        load_checkpoint(p)


def test_bad_expert_metadata(tmp_path):
    for v, match in ((9, "expert_used_count' must be 1..8"), (0, "expert_used_count' must be 1..8")):
        p = _rewrite(_gguf("mixtral"), tmp_path / f"k{v}.gguf", _same, {"llama.expert_used_count": (v, VT.UINT32)})
        with pytest.raises(LoadError, match=match):
            load_checkpoint(p)
    p = _rewrite(_gguf("mixtral"), tmp_path / "e.gguf", _same, {"llama.expert_count": (7, VT.UINT32)})
    with pytest.raises(LoadError, match=r"ffn_\w+_exps.weight' has shape \(8, .*expected \[7 experts"):
        load_checkpoint(p)


def test_missing_expert_tensor_is_named(tmp_path):
    p = _rewrite(_gguf("mixtral"), tmp_path / "m.gguf",
                 lambda n, a: [] if n == "blk.1.ffn_down_exps.weight" else _same(n, a))
    with pytest.raises(LoadError, match=r"missing tensors for mixtral: layers\.1\.moe\.experts\.0\.down\.weight"):
        load_checkpoint(p)


@pytest.mark.parametrize("extra, match", [
    ("blk.0.ffn_up_exps.bias", "tensor 'blk.0.ffn_up_exps.bias'"),
    ("blk.0.exp_probs_b.bias", "tensor 'blk.0.exp_probs_b.bias'"),  # DeepSeek-style selection bias
    ("blk.0.ffn_gate_up_exps_s.weight", "tensor 'blk.0.ffn_gate_up_exps_s.weight'"),
])
def test_unknown_expert_tensors_are_refused(extra, match, tmp_path):
    p = _rewrite(_gguf("mixtral"), tmp_path / "x.gguf",
                 lambda n, a: _same(n, a) + ([(extra, np.zeros((8, 16), np.float32), None)]
                                             if n == "blk.0.ffn_gate_inp.weight" else []))
    with pytest.raises(UnsupportedModelError, match=f"'llama': mixture-of-experts {match}"):
        load_checkpoint(p)


def test_ungated_shared_expert_is_refused(tmp_path):
    """llama.cpp's ``llama`` adds an ungated shared expert (Llama-4 style); tinygraph's shared expert
    is Qwen2-MoE's gated one."""
    def shexp(n: str, a: np.ndarray) -> list:
        if n == "blk.0.ffn_gate_inp.weight":
            return _same(n, a) + [(f"blk.0.ffn_{p}_shexp.weight", np.zeros(s, np.float32), None)
                                  for p, s in (("gate", (32, 64)), ("up", (32, 64)), ("down", (64, 32)))]
        return _same(n, a)
    p = _rewrite(_gguf("mixtral"), tmp_path / "s.gguf", shexp)
    with pytest.raises(UnsupportedModelError, match="'llama': a shared expert without a gate"):
        load_checkpoint(p)


def test_moe_of_another_architecture_is_refused(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), arch="gemma")
    w.add_block_count(1)
    w.add_expert_count(8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="'gemma' with mixture-of-experts layers is not supported"):
        load_checkpoint(tmp_path / "g.gguf")
