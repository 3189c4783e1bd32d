"""Loaders on bad input: every malformed, truncated or inconsistent checkpoint raises a LoadError
(or its subclass UnsupportedModelError) that names the file, the tensor and the problem; nothing
reads past the mapped file; a load that fails midway leaves nothing open.

(tests/test_io_*.py hold the first, basic cases; tests/test_reliability_fuzz.py fuzzes the same
parsers.)"""
from __future__ import annotations

import gc
import json
import shutil
import struct
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import save_file

import tinygraph as tg
from tinygraph.io import LoadError, SafeTensorsFile, TinygraphError, UnsupportedModelError, load_checkpoint
from tinygraph.models import CausalLM, load_model

FIX = Path(__file__).parent / "fixtures"


# ============================================================================ safetensors
def _st(path: Path, header: dict | bytes, data: bytes = b"", header_len: int | None = None) -> Path:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)
    return path


def _e(dtype="F32", shape=(2,), offs=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


@pytest.mark.parametrize("header,data,header_len,pattern", [
    # header length larger than the file / absurd
    ({"t": _e()}, b"\0" * 8, 2**63, r"header length \d+ exceeds the file"),
    ({"t": _e()}, b"\0" * 8, 200, r"header length 200 exceeds the file \(\d+ bytes\)"),
    # invalid JSON, wrong JSON types, nesting bombs, duplicate names
    (b'{"t": ', b"", None, "not valid UTF-8 JSON"),
    (b"\xff\xfe\x00", b"", None, "not valid UTF-8 JSON"),
    (b"[" * 50_000 + b"]" * 50_000, b"", None, "nested too deeply|must be an object"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8, None, "'t' appears twice"),
    ({"__metadata__": [1, 2], "t": _e()}, b"\0" * 8, None, "__metadata__ must be an object"),
    # unknown dtypes, including non-strings (unhashable: must not become a TypeError)
    ({"t": _e(dtype="F8_E5M2")}, b"\0" * 8, None, r"'t'.*unsupported dtype 'F8_E5M2'"),
    ({"t": _e(dtype=["F32"])}, b"\0" * 8, None, r"'t'.*unsupported dtype \['F32'\]"),
    ({"t": _e(dtype=None)}, b"\0" * 8, None, r"'t'.*unsupported dtype None"),
    # shapes
    ({"t": _e(shape=(2.0,))}, b"\0" * 8, None, r"'t'.*shape must be a list of non-negative ints"),
    ({"t": _e(shape=(True, 2))}, b"\0" * 8, None, r"'t'.*shape must be"),
    ({"t": _e(shape=[1] * 40, offs=(0, 4))}, b"\0" * 4, None, r"'t'.*40 dimensions"),
    ({"t": _e(shape=(2**40, 2**40))}, b"\0" * 8, None, r"'t'.*needs \d+"),
    # offsets out of range, reversed, negative, wrong size
    ({"t": _e(offs=(0, 16))}, b"\0" * 8, None, r"'t'.*\[0, 16\] outside the data buffer of 8 bytes"),
    ({"t": _e(offs=(-8, 0))}, b"\0" * 8, None, r"'t'.*outside the data buffer"),
    ({"t": _e(offs=(8, 0))}, b"\0" * 8, None, r"'t'.*reversed \(end < begin\)"),
    ({"t": _e(offs=(0, 2**64 + 8))}, b"\0" * 8, None, r"'t'.*outside the data buffer"),
    ({"t": _e(shape=(3,))}, b"\0" * 8, None, r"'t'.*span 8 bytes but shape \(3,\) x F32 needs 12"),
    # overlapping (in any order in the JSON)
    ({"b": _e(offs=(4, 12)), "a": _e(offs=(0, 8))}, b"\0" * 12, None, r"'a' and 'b' overlap"),
    ({"a": _e(offs=(0, 8)), "b": _e(offs=(0, 8))}, b"\0" * 8, None, r"'a' and 'b' overlap"),
    # truncated data: the header promises more bytes than the file has
    ({"a": _e(offs=(0, 8)), "b": _e(shape=(4,), offs=(8, 24))}, b"\0" * 20, None,
     r"'b'.*\[8, 24\] outside the data buffer of 20 bytes"),
])
def test_malformed_safetensors(tmp_path, header, data, header_len, pattern):
    p = _st(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(LoadError, match=pattern) as ei:
        SafeTensorsFile(p)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, TinygraphError) and isinstance(ei.value, ValueError)


def test_safetensors_truncated_at_every_length(tmp_path):
    """Cutting a valid file anywhere either still parses (cut inside trailing data that no
    tensor uses) or raises LoadError; a tensor is never readable past the end."""
    p = tmp_path / "ok.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2), np.float16)}, str(p))
    full = p.read_bytes()
    for n in range(len(full)):
        q = tmp_path / "cut.safetensors"
        q.write_bytes(full[:n])
        with pytest.raises(LoadError, match=str(q)):
            with SafeTensorsFile(q) as f:
                for name in f.tensor_names:
                    bytes(f.tensor_bytes(name))


def test_safetensors_shrunk_after_the_header_was_read(tmp_path, monkeypatch):
    """If the file shrinks between parsing and mapping, refuse instead of mapping fewer bytes
    than the header promised (reading those would fault)."""
    from tinygraph.io import safetensors as stmod

    p = tmp_path / "m.safetensors"
    save_file({"a": np.arange(64, dtype=np.float32)}, str(p))
    real = stmod._parse_header

    def parse_then_truncate(path):
        out = real(path)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 100)
        return out

    monkeypatch.setattr(stmod, "_parse_header", parse_then_truncate)
    with pytest.raises(LoadError, match="truncated while opening"):
        SafeTensorsFile(p)


def test_safetensors_non_float_weight_is_refused(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIX / "llama", d)
    f = SafeTensorsFile(d / "model.safetensors")
    t = {n: np.array(f.tensor_as_numpy(n)) for n in f.tensor_names}
    f.close()
    t["model.norm.weight"] = t["model.norm.weight"].astype(np.int32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(LoadError, match=r"'model.norm.weight' \(final_norm.weight\) is stored as int32"):
        load_checkpoint(d)


# ============================================================================ GGUF
H, NH, NKV, HD, INTER = 32, 2, 1, 16, 32


def _gguf(path: Path, *, arch="llama", layers=1, tensors=None, types=None, extra_meta=None, tokens=True) -> Path:
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(layers)
    w.add_context_length(16)
    w.add_embedding_length(H)
    w.add_feed_forward_length(INTER)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_layer_norm_rms_eps(1e-5)
    if tokens:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(["a", "b", "c", "ab"])
        w.add_token_merges(["a b"])
    for k, v in (extra_meta or {}).items():
        getattr(w, k)(*v) if isinstance(v, tuple) else getattr(w, k)(v)
    shapes = tensors or _llama_shapes(layers)
    rng = np.random.default_rng(0)
    for k, s in shapes.items():
        a = rng.standard_normal(s).astype(np.float32)
        qt = (types or {}).get(k)
        if qt is None:
            w.add_tensor(k, a)
        else:
            w.add_tensor(k, gguf.quants.quantize(a, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _llama_shapes(layers=1) -> dict:
    t = {"token_embd.weight": (4, H), "output_norm.weight": (H,)}
    for i in range(layers):
        t |= {f"blk.{i}.attn_norm.weight": (H,), f"blk.{i}.ffn_norm.weight": (H,),
              f"blk.{i}.attn_q.weight": (NH * HD, H), f"blk.{i}.attn_k.weight": (NKV * HD, H),
              f"blk.{i}.attn_v.weight": (NKV * HD, H), f"blk.{i}.attn_output.weight": (H, NH * HD),
              f"blk.{i}.ffn_gate.weight": (INTER, H), f"blk.{i}.ffn_up.weight": (INTER, H),
              f"blk.{i}.ffn_down.weight": (H, INTER)}
    return t


def _tensor_field_offsets(path: Path, name: str) -> dict:
    r = gguf.GGUFReader(str(path))
    t = next(t for t in r.tensors if t.name == name)
    at = t.field.offset + 8 + int(t.field.parts[0][0])
    nd = int(t.field.parts[2][0])
    out = {"ndims": at, "dims": at + 4, "type": at + 4 + 8 * nd, "offset": at + 8 + 8 * nd,
           "data_offset": int(r.data_offset), "rel": int(t.field.parts[5][0])}
    del r
    return out


def _patch(path: Path, at: int, fmt: str, value) -> None:
    b = bytearray(path.read_bytes())
    b[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(b))


@pytest.fixture()
def good_gguf(tmp_path) -> Path:
    return _gguf(tmp_path / "m.gguf")


def _load_err(p: Path, pattern: str, cls=LoadError) -> LoadError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(cls, match=pattern) as ei:
            load_checkpoint(p)
    assert str(p) in str(ei.value), ei.value
    return ei.value


def test_good_gguf_loads(good_gguf):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with load_checkpoint(good_gguf) as ck:
            assert ck.config.num_layers == 1 and ck.tokenizer is not None
            for n in ck.names:
                assert ck.tensor(n).shape == ck.shape(n)


@pytest.mark.parametrize("head,pattern", [
    (b"", "bad magic b''"),
    (b"GGU", "bad magic b'GGU'"),
    (b"GGML" + b"\0" * 40, "bad magic b'GGML'"),
    (b"GGUF\x03\0\0", r"truncated header \(7 bytes, need 24\)"),
    (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "GGUF version 1 is not supported"),
    (b"GGUF" + struct.pack("<IQQ", 99, 0, 0), "GGUF version 99 is not supported"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2**63, 0), r"declares 9223372036854775808 tensors .* cannot fit in 24 bytes"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 10**6) + b"\0" * 100, r"1000000 metadata entries, which cannot fit"),
])
def test_bad_gguf_headers(tmp_path, head, pattern):
    p = tmp_path / "x.gguf"
    p.write_bytes(head)
    _load_err(p, pattern)


def test_gguf_unknown_tensor_type(good_gguf):
    o = _tensor_field_offsets(good_gguf, "blk.0.ffn_up.weight")
    _patch(good_gguf, o["type"], "<I", 77)
    _load_err(good_gguf, r"tensor 'blk.0.ffn_up.weight': unknown GGML tensor type id 77")


def test_gguf_unsupported_tensor_type(tmp_path):
    """A type gguf knows but tinygraph cannot decode: refused at load time (before any GPU
    memory is touched), naming the tensor and the type."""
    p = _gguf(tmp_path / "m.gguf")
    o = _tensor_field_offsets(p, "blk.0.ffn_up.weight")
    _patch(p, o["type"], "<I", int(QT.I32))  # same 4-byte element size, so the layout stays valid
    _load_err(p, r"tensor 'blk.0.ffn_up.weight' \(layers.0.mlp.up.weight\) has type I32, which tinygraph cannot "
                 "decode", UnsupportedModelError)


def test_gguf_too_many_dims(good_gguf):
    o = _tensor_field_offsets(good_gguf, "output_norm.weight")
    _patch(good_gguf, o["ndims"], "<I", 9)
    _load_err(good_gguf, "not a readable GGUF file")


@pytest.mark.parametrize("dim,pattern", [
    (2**62, r"'blk.0.ffn_down.weight'.*needs bytes .* but the file has \d+: truncated or corrupt"),
    (33, r"'blk.0.ffn_down.weight'.*needs bytes|overlap"),
])
def test_gguf_impossible_dims(good_gguf, dim, pattern):
    o = _tensor_field_offsets(good_gguf, "blk.0.ffn_down.weight")
    _patch(good_gguf, o["dims"], "<Q", dim)
    _load_err(good_gguf, pattern)


def test_gguf_quantised_row_not_whole_blocks(tmp_path):
    p = _gguf(tmp_path / "m.gguf", types={"blk.0.ffn_up.weight": QT.Q8_0})
    o = _tensor_field_offsets(p, "blk.0.ffn_up.weight")
    _patch(p, o["dims"], "<Q", 40)
    _load_err(p, r"'blk.0.ffn_up.weight': Q8_0 rows of 40 values are not a whole number of 32-value blocks")


@pytest.mark.parametrize("how,pattern", [
    ("past_end", r"'output_norm.weight'.*needs bytes \[\d+, \d+\) but the file has \d+"),
    ("unaligned", r"'output_norm.weight': data offset \d+ is not a multiple of the alignment 32"),
    ("overlap", r"tensors .* overlap in the data section"),
    ("huge", r"'output_norm.weight'.*needs bytes"),
])
def test_gguf_bad_offsets(good_gguf, how, pattern):
    o = _tensor_field_offsets(good_gguf, "output_norm.weight")
    size = good_gguf.stat().st_size
    new = {"past_end": (size - o["data_offset"]) // 32 * 32, "unaligned": o["rel"] + 4, "overlap": 0,
           "huge": 2**64 - 32}[how]
    if how == "overlap" and o["rel"] == 0:
        o = _tensor_field_offsets(good_gguf, "blk.0.attn_norm.weight")
    _patch(good_gguf, o["offset"], "<Q", new)
    _load_err(good_gguf, pattern)


def test_gguf_truncated_everywhere(good_gguf):
    full = good_gguf.read_bytes()
    step = max(1, len(full) // 300)
    for n in list(range(0, len(full), step)) + [len(full) - 1]:
        good_gguf.write_bytes(full[:n])
        _load_err(good_gguf, "GGUF|tensor")


def test_gguf_array_length_past_the_end(good_gguf):
    """An array declaring 2**64 - 1 elements must fail, not loop for ever."""
    r = gguf.GGUFReader(str(good_gguf))
    f = r.fields["tokenizer.ggml.tokens"]
    at = f.offset + 8 + int(f.parts[0][0]) + 4 + 4  # key, value type, item type -> count
    del r
    _patch(good_gguf, at, "<Q", 2**64 - 1)
    _load_err(good_gguf, "not a readable GGUF file")


@pytest.mark.parametrize("meta,pattern,cls", [
    ({"add_string": ("llama.block_count", "two")}, "not a readable GGUF file|must be an integer", LoadError),
    ({"add_string": ("general.architecture", "falcon")}, "not a readable GGUF file|'falcon' is not supported",
     LoadError),
    ({"add_float32": ("llama.rope.freq_base", float("nan"))}, r"'llama.rope.freq_base' must be a finite number",
     LoadError),
    ({"add_uint32": ("tokenizer.ggml.bos_token_id", 2**31)}, None, None),  # out of vocab bos: loads, no BOS
])
def test_gguf_bad_metadata_values(tmp_path, meta, pattern, cls):
    p = tmp_path / "m.gguf"
    try:
        _gguf(p, extra_meta=meta)
    except (KeyError, ValueError):  # the writer refuses a duplicate key: write it in place instead
        pytest.skip("gguf writer refuses this metadata")
    if pattern is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_checkpoint(p).close()
        return
    _load_err(p, pattern, cls)


def test_gguf_metadata_of_the_wrong_type(tmp_path):
    """llama.embedding_length stored as a string (written by hand: the writer would refuse)."""
    p = _gguf(tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(p))
    f = r.fields["llama.embedding_length"]
    vtype_at = f.offset + 8 + int(f.parts[0][0])
    del r
    _patch(p, vtype_at, "<I", int(gguf.GGUFValueType.FLOAT32))  # same size: the file stays parseable
    _load_err(p, r"'llama.embedding_length' must be an integer, got 4\.")


def test_gguf_unknown_architecture(tmp_path):
    p = _gguf(tmp_path / "m.gguf", arch="mamba")
    _load_err(p, r"GGUF architecture 'mamba' is not supported \(supported: llama", UnsupportedModelError)


def test_gguf_missing_and_extra_tensors(tmp_path):
    t = _llama_shapes()
    del t["blk.0.ffn_down.weight"]
    _load_err(_gguf(tmp_path / "a.gguf", tensors=t), r"missing tensors for llama: layers.0.mlp.down.weight")
    # a second block in the file, but block_count says 1: the config disagrees with the weights
    _load_err(_gguf(tmp_path / "b.gguf", tensors=_llama_shapes(2)),
              r"the config says 1 layers but the weights include layer 1 \(e.g. 'blk.1.")
    # block_count says 3, the file has 1: refused before listing 3 layers' names
    _load_err(_gguf(tmp_path / "c.gguf", layers=3, tensors=_llama_shapes(1)),
              r"the config says 3 layers but the weights hold only 1: missing tensors for layer 1")


def test_gguf_huge_block_count_is_cheap(tmp_path):
    """block_count = 2**31 must not build a list of 2**31 layers' tensor names."""
    p = _gguf(tmp_path / "m.gguf", layers=2**31, tensors=_llama_shapes(1))
    _load_err(p, r"the config says 2147483648 layers but the weights hold only 1")


def test_gguf_config_disagrees_with_shapes(tmp_path):
    t = _llama_shapes()
    t["blk.0.attn_k.weight"] = (2 * HD, H)  # head_count_kv says 1
    _load_err(_gguf(tmp_path / "m.gguf", tensors=t),
              r"'layers.0.attn.k.weight' \(stored as 'blk.0.attn_k.weight'\) has shape \(32, 32\), config expects "
              r"\(16, 32\)")


def test_gguf_tokenizer_merge_outside_vocab(tmp_path):
    """tokenizers *panics* (a BaseException) on such a merge; it must come out as LoadError."""
    p = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(p), arch="llama")
    for f, v in ((w.add_block_count, 1), (w.add_context_length, 16), (w.add_embedding_length, H),
                 (w.add_feed_forward_length, INTER), (w.add_head_count, NH), (w.add_head_count_kv, NKV)):
        f(v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(["a", "b", "c", "d"])
    w.add_token_merges(["a b"])  # "ab" is not a token
    for k, s in _llama_shapes().items():
        w.add_tensor(k, np.zeros(s, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _load_err(p, r"merge 0 'a b' uses 'ab', which is not in the vocabulary")


# ============================================================================ HF directories
def _llama_dir(tmp_path: Path, **cfg_changes) -> Path:
    d = tmp_path / "llama"
    shutil.copytree(FIX / "llama", d)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in cfg_changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("change,pattern,cls", [
    ({"num_hidden_layers": 3}, r"config says 3 layers but the weights hold only 2", LoadError),
    ({"num_hidden_layers": 1}, r"config says 1 layers but the weights include layer 1 \(e.g. 'model.layers.1.",
     LoadError),
    ({"num_hidden_layers": 10**12}, r"config says 1000000000000 layers", LoadError),
    ({"hidden_size": 32}, r"has shape \(256, 64\), config expects \(256, 32\)", LoadError),
    ({"vocab_size": 300}, r"'tok_emb.weight'.*config expects \(300, 64\)", LoadError),
    ({"num_key_value_heads": 4}, r"'layers.0.attn.k.weight'.*config expects \(64, 64\)", LoadError),
    ({"num_attention_heads": 3}, r"num_heads=3 is not a multiple of num_kv_heads=2", LoadError),
    ({"intermediate_size": -1}, r"intermediate_size must be a positive int", LoadError),
    ({"hidden_size": None}, r"required key 'hidden_size' is missing", LoadError),
    ({"hidden_size": "64"}, r"bad value: hidden_size must be a positive int, got '64'", LoadError),
    ({"rms_norm_eps": "small"}, r"bad value", LoadError),
    ({"model_type": "mamba"}, r"model_type 'mamba' is not supported", UnsupportedModelError),
    ({"hidden_act": "relu"}, r"activation 'relu' is not supported", UnsupportedModelError),
    ({"rope_parameters": {"rope_type": "mrope", "factor": 2.0, "rope_theta": 1e4}},
     r"rope_scaling 'mrope' is not supported", UnsupportedModelError),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 2.0, "rope_theta": 1e4}},
     r"missing parameter 'low_freq_factor'", LoadError),
    ({"architectures": 5, "model_type": None}, r"config", LoadError),
    ({"max_position_embeddings": 10**30}, None, None),  # only caps max_context (rope model)
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}}, r"rope_theta must be a finite number > 0",
     LoadError),
    ({"eos_token_id": "</s>"}, r"bos/eos token ids must be ints, got '</s>'", LoadError),
    ({"eos_token_id": [2, None]}, r"bos/eos token ids must be ints, got None", LoadError),
    ({"eos_token_id": None}, None, None),
    ({"max_position_embeddings": 0}, r"max_position_embeddings must be a positive int", LoadError),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "fast"}}, r"bad value", LoadError),
])
def test_config_disagrees_with_weights(tmp_path, change, pattern, cls):
    d = _llama_dir(tmp_path, **change)
    if pattern is None:
        load_checkpoint(d).close()
        return
    with pytest.raises(cls, match=pattern) as ei:
        load_checkpoint(d)
    assert str(d) in str(ei.value)


@pytest.mark.parametrize("name,content,pattern", [
    ("config.json", "{", "cannot read config JSON"),
    ("config.json", "[1, 2]", "expected a JSON object"),
    ("generation_config.json", "[]", "expected a JSON dict"),
    ("generation_config.json", '{"eos_token_id": "2"}', "eos_token_id must be an int or a list of ints"),
    ("tokenizer_config.json", "7", "expected a JSON dict"),
    ("tokenizer.json", "{}", "cannot load tokenizer"),
    ("tokenizer.json", b"\xff\x00", "cannot load tokenizer"),
])
def test_bad_side_files(tmp_path, name, content, pattern):
    d = _llama_dir(tmp_path)
    (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LoadError, match=pattern) as ei:
        load_checkpoint(d)
    assert str(d) in str(ei.value)


def test_extra_unknown_tensors_warn_but_load(tmp_path):
    """Tensors no rule maps (e.g. an extra head) are reported, not fatal; layers beyond the
    config are fatal (test above)."""
    d = _llama_dir(tmp_path)
    f = SafeTensorsFile(d / "model.safetensors")
    t = {n: np.array(f.tensor_as_numpy(n)) for n in f.tensor_names}
    f.close()
    t["mtp_head.weight"] = np.zeros(3, np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.warns(UserWarning, match="tensors not used by llama: \\['mtp_head.weight'\\]"):
        load_checkpoint(d).close()


def test_directory_without_weights_and_pickles(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LoadError, match=r"holds no .safetensors file"):
        load_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    with pytest.raises(LoadError, match="pickle.*arbitrary code"):
        load_checkpoint(tmp_path)
    for suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        p = tmp_path / f"model{suffix}"
        p.write_bytes(b"\x80\x04junk")
        with pytest.raises(LoadError, match="pickle") as ei:
            load_model(p, backend="numpy")
        assert str(p) in str(ei.value)


def test_every_load_error_is_a_tinygraph_error():
    assert issubclass(LoadError, TinygraphError) and issubclass(LoadError, ValueError)
    assert issubclass(UnsupportedModelError, LoadError)
    assert tg.TinygraphError is TinygraphError


# ============================================================================ no half-built models
@pytest.fixture
def created(monkeypatch) -> list[tg.Session]:
    """Every tg.Session made during the test, in order (to check that a failed load closed it)."""
    sessions: list[tg.Session] = []
    real_init = tg.Session.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        sessions.append(self)

    monkeypatch.setattr(tg.Session, "__init__", spy)
    return sessions


def test_load_model_failing_midway_closes_its_session(tmp_path, monkeypatch, created):
    """A failure after the session was created (here: while uploading the weights) closes that
    session and the checkpoint, and propagates the original error."""
    real_upload = tg.Session.upload
    calls = {"n": 0}

    def failing_upload(self, t, a):
        calls["n"] += 1
        if calls["n"] == 5:
            raise LoadError(f"{tmp_path}: simulated read error while uploading {t.name}")
        return real_upload(self, t, a)

    monkeypatch.setattr(tg.Session, "upload", failing_upload)
    from tinygraph.io import checkpoint as ckmod

    closed: list[object] = []
    real_close = ckmod.Checkpoint.close
    monkeypatch.setattr(ckmod.Checkpoint, "close", lambda self: (closed.append(self), real_close(self)))
    with pytest.raises(LoadError, match="simulated read error"):
        load_model(FIX / "llama", backend="numpy")
    assert len(created) == 1 and created[0].closed
    assert created[0].backend.buffers == {}
    assert len(closed) == 1


def test_bad_model_arguments_close_the_session(created):
    for kw in ({"dtype": "int32"}, {"max_context": 10**6, "spec": None}):
        kw.pop("spec", None)
        with pytest.raises(ValueError):
            m = load_model(FIX / "gpt2", backend="numpy", **kw)
            m.close()
    assert created and all(s.closed for s in created)


def test_corrupt_tensor_data_in_shared_session_frees_only_the_failed_model(tmp_path, monkeypatch):
    """Two models in one session: when the second fails while loading, its buffers are released
    and the first keeps working."""
    ref = np.load(FIX / "llama" / "reference.npz")
    prompt, greedy = ref["input_ids"][0], list(ref["greedy"][0])
    with tg.Session(backend="numpy", verbose=False) as sess:
        a = CausalLM(load_checkpoint(FIX / "llama"), session=sess)
        n_a = len(sess.backend.buffers)
        ck = load_checkpoint(FIX / "llama")
        real = ck.tensor
        monkeypatch.setattr(ck, "tensor", lambda n: (_ for _ in ()).throw(LoadError("boom")) if "down" in n
                            else real(n))
        with pytest.raises(LoadError, match="boom"):
            CausalLM(ck, session=sess)
        assert len(sess.backend.buffers) == n_a
        assert a.generate(prompt, max_new_tokens=8, temperature=0) == greedy
    gc.collect()


def test_tokenizer_from_a_corrupt_gguf_path(tmp_path):
    from tinygraph.io import tokenizer_from_gguf

    p = tmp_path / "t.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + b"\x05\0\0\0\0\0\0\0abc")
    with pytest.raises(LoadError, match=str(p)):
        tokenizer_from_gguf(p)
