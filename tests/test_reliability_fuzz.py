"""Fuzzing the loaders with hypothesis: structured mutations of small valid safetensors and GGUF
files (header bytes, JSON fields, offsets, counts, type ids, dims, truncation, byte flips) and of
a model's config.json.

The contract under test: whatever the bytes, only the documented exceptions escape
(:class:`LoadError` and its subclass :class:`UnsupportedModelError`), never a crash, a read past
the mapped file or a stray ``ValueError``/``IndexError``/``struct.error`` from the parsers
underneath; and whatever loads successfully returns arrays of exactly the declared shape.

Every file is tiny and rewritten in one temporary directory, so ~1,000 cases per format run in
a few seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ml_dtypes  # noqa: E402

from tinygraph.io import Checkpoint, LoadError, SafeTensorsFile, load_checkpoint  # noqa: E402

# TG_FUZZ_EXAMPLES=20000 for a deeper local run
FUZZ = settings(max_examples=int(os.environ.get("TG_FUZZ_EXAMPLES", "1000")), deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TMP = Path(tempfile.mkdtemp(prefix="tg-fuzz-"))


def teardown_module(module) -> None:
    shutil.rmtree(TMP, ignore_errors=True)


INTERESTING_U64 = [0, 1, 2, 3, 7, 8, 24, 31, 32, 33, 64, 255, 256, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                   2**48, 2**63 - 1, 2**63, 2**64 - 1]
u64 = st.one_of(st.sampled_from(INTERESTING_U64), st.integers(0, 2**64 - 1), st.integers(0, 100_000))
u32 = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 30, 31, 39, 40, 41, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1))


# ==================================================================== safetensors
def st_bytes(header: dict | bytes, data: bytes, header_len: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if header_len is None else header_len) + h + data


def _st_base() -> tuple[dict, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "a.f32": (rng.standard_normal((2, 3)).astype(np.float32), "F32"),
        "b.f16": (rng.standard_normal(4).astype(np.float16), "F16"),
        "c.bf16": (rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16), "BF16"),
        "d.i32": (np.arange(3, dtype=np.int32), "I32"),
        "e.empty": (np.zeros((0, 5), np.float32), "F32"),
    }
    header: dict = {"__metadata__": {"format": "pt"}}
    data, off = b"", 0
    for name, (a, code) in arrays.items():
        b = a.tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        data += b
        off += len(b)
    return header, data


ST_HEADER, ST_DATA = _st_base()
ST_NAMES = [k for k in ST_HEADER if k != "__metadata__"]
ST_VALID = st_bytes(ST_HEADER, ST_DATA)
JSON_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                      st.text(max_size=6), st.lists(st.integers(-3, 2**40), max_size=4),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def safetensors_files(draw) -> bytes:
    header = json.loads(json.dumps(ST_HEADER))
    data = ST_DATA
    kind = draw(st.sampled_from(["field", "field", "offsets", "header_len", "truncate", "flip", "raw_json",
                                 "extra", "combo"]))
    header_len = None
    if kind in ("field", "combo"):
        name = draw(st.sampled_from(ST_NAMES))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
        if field == "dtype":
            header[name]["dtype"] = draw(st.one_of(st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64",
                                                                   "I64", "Q4", "f32", "", "F8_E4M3"]), JSON_JUNK))
        elif field == "shape":
            header[name]["shape"] = draw(st.one_of(
                st.lists(st.integers(0, 8), max_size=4), st.lists(st.integers(-2, 2**62), max_size=3),
                st.lists(st.just(1), min_size=30, max_size=70), JSON_JUNK))
        elif field == "data_offsets":
            header[name]["data_offsets"] = draw(st.one_of(st.lists(st.integers(-8, 200), min_size=2, max_size=2),
                                                          st.lists(u64, min_size=2, max_size=2), JSON_JUNK))
        else:
            header[name] = draw(JSON_JUNK)
    if kind in ("offsets", "combo"):  # shift, swap or overlap spans while keeping them well-typed
        for name in draw(st.lists(st.sampled_from(ST_NAMES), min_size=1, max_size=3, unique=True)):
            entry = header[name]
            if not (isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
                    and len(entry["data_offsets"]) == 2 and all(isinstance(x, int) for x in entry["data_offsets"])):
                continue
            b, e = entry["data_offsets"]
            d0, d1 = draw(st.integers(-40, 40)), draw(st.integers(-40, 40))
            header[name]["data_offsets"] = draw(st.sampled_from([[b + d0, e + d0], [b + d0, e + d1], [e, b],
                                                                 [b, b + (e - b) * 2], [0, e - b]]))
    if kind == "extra":  # a second copy of a name, a metadata of the wrong type, ...
        which = draw(st.integers(0, 2))
        if which == 0:
            raw = json.dumps(header)[:-1] + ', "a.f32": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
            return st_bytes(raw.encode(), data)
        if which == 1:
            header["__metadata__"] = draw(JSON_JUNK)
        else:
            header[draw(st.text(max_size=8))] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    raw = json.dumps(header).encode()
    if kind == "raw_json":
        raw = draw(st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"{" * 5000 + b"}" * 5000,
                                    b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", b'{"a": NaN}',
                                    raw[: len(raw) // 2], raw + b" " * 7, raw.replace(b'"F32"', b'"F3\\u0032"')]))
    if kind in ("header_len", "combo"):
        header_len = draw(st.one_of(u64, st.integers(max(0, len(raw) - 16), len(raw) + 16)))
    out = bytearray(st_bytes(raw, data, header_len))
    if kind in ("flip", "combo"):
        n = len(raw) + 8
        for pos in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)):
            out[pos] ^= draw(st.integers(1, 255))
    if kind in ("truncate", "combo") and draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def check_safetensors(data: bytes) -> None:
    p = TMP / "fuzz.safetensors"
    p.write_bytes(data)
    try:
        f = SafeTensorsFile(p)
    except LoadError as e:
        assert str(p) in str(e)
        return
    with f:
        for name in f.tensor_names:
            info = f.tensor_info(name)
            a = f.tensor_as_numpy(name)
            assert a.shape == info.shape and a.nbytes == info.size_bytes, name
            raw = bytes(f.tensor_bytes(name))  # touches every byte: would fault past the mapping
            assert len(raw) == info.size_bytes


def test_safetensors_base_file_is_valid() -> None:
    check_safetensors(ST_VALID)
    with SafeTensorsFile(TMP / "fuzz.safetensors") as f:
        assert sorted(f.tensor_names) == sorted(ST_NAMES)


@FUZZ
@given(safetensors_files())
def test_fuzz_safetensors(data: bytes) -> None:
    check_safetensors(data)


# ==================================================================== GGUF
def _gguf_base() -> tuple[bytes, dict]:
    import gguf
    from gguf import GGMLQuantizationType as QT

    path = TMP / "base.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(32)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(["a", "b", "c", "ab"])
    w.add_token_types([1, 1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (4, 32), "output_norm.weight": (32,), "blk.0.attn_norm.weight": (32,),
              "blk.0.ffn_norm.weight": (32,), "blk.0.attn_q.weight": (32, 32), "blk.0.attn_k.weight": (16, 32),
              "blk.0.attn_v.weight": (16, 32), "blk.0.attn_output.weight": (32, 32),
              "blk.0.ffn_gate.weight": (32, 32), "blk.0.ffn_up.weight": (32, 32), "blk.0.ffn_down.weight": (32, 32)}
    for k, s in shapes.items():
        a = rng.standard_normal(s).astype(np.float32)
        if k == "blk.0.ffn_up.weight":
            w.add_tensor(k, gguf.quants.quantize(a, QT.Q8_0), raw_dtype=QT.Q8_0)
        elif k == "blk.0.ffn_gate.weight":
            w.add_tensor(k, gguf.quants.quantize(a, QT.Q4_0), raw_dtype=QT.Q4_0)
        elif k == "blk.0.attn_v.weight":
            w.add_tensor(k, a.astype(np.float16))
        else:
            w.add_tensor(k, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    # where each field lives, for structured mutations
    r = gguf.GGUFReader(str(path))
    layout: dict = {"kv": [], "tensors": [], "data_offset": int(r.data_offset)}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        klen = int(f.parts[0][0])
        vtype_at = f.offset + 8 + klen
        layout["kv"].append((name, vtype_at, int(f.types[0])))
    for t in r.tensors:
        o = t.field.offset
        nlen = int(t.field.parts[0][0])
        ndims_at = o + 8 + nlen
        nd = int(t.field.parts[2][0])
        layout["tensors"].append({"name": t.name, "ndims_at": ndims_at, "dims_at": ndims_at + 4,
                                  "type_at": ndims_at + 4 + 8 * nd, "offset_at": ndims_at + 4 + 8 * nd + 4, "nd": nd})
    del r
    return data, layout


GGUF_VALID, GGUF_LAYOUT = _gguf_base()


def _put(buf: bytearray, at: int, fmt: str, value: int) -> None:
    if 0 <= at and at + struct.calcsize(fmt) <= len(buf):
        buf[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)


@st.composite
def gguf_files(draw) -> bytes:
    b = bytearray(GGUF_VALID)
    kinds = draw(st.lists(st.sampled_from(["magic", "version", "counts", "ndims", "dims", "type", "offset",
                                           "kv_type", "kv_value", "kv_len", "truncate", "flip"]),
                          min_size=1, max_size=3))
    for kind in kinds:
        t = draw(st.sampled_from(GGUF_LAYOUT["tensors"]))
        if kind == "magic":
            b[0:4] = draw(st.sampled_from([b"GGUF", b"GGUG", b"FUGG", b"\0\0\0\0", b"GGML", b"ggjt"]))
        elif kind == "version":
            _put(b, 4, "<I", draw(st.one_of(st.integers(0, 5), u32)))
        elif kind == "counts":
            _put(b, draw(st.sampled_from([8, 16])), "<Q", draw(st.one_of(st.integers(0, 40), u64)))
        elif kind == "ndims":
            _put(b, t["ndims_at"], "<I", draw(st.one_of(st.integers(0, 6), u32)))
        elif kind == "dims":
            _put(b, t["dims_at"] + 8 * draw(st.integers(0, t["nd"] - 1)), "<Q",
                 draw(st.one_of(st.sampled_from([0, 1, 2, 4, 16, 31, 32, 33, 64, 1024]), u64)))
        elif kind == "type":
            _put(b, t["type_at"], "<I", draw(st.one_of(st.integers(0, 42), u32)))
        elif kind == "offset":
            _put(b, t["offset_at"], "<Q", draw(st.one_of(st.integers(0, 30_000), st.integers(0, 1000).map(lambda x: 32 * x),
                                                         u64)))
        elif kind == "kv_type":
            _name, at, _ty = draw(st.sampled_from(GGUF_LAYOUT["kv"]))
            _put(b, at, "<I", draw(st.one_of(st.integers(0, 13), u32)))
        elif kind == "kv_value":  # overwrite the first bytes of a value (a count, a length, a number)
            _name, at, _ty = draw(st.sampled_from(GGUF_LAYOUT["kv"]))
            _put(b, at + 4, draw(st.sampled_from(["<I", "<Q"])), draw(st.one_of(u32, st.integers(0, 64))))
        elif kind == "kv_len":  # an array's length or a string's length
            _name, at, ty = draw(st.sampled_from(GGUF_LAYOUT["kv"]))
            _put(b, at + (8 if ty == 9 else 4), "<Q", draw(st.one_of(u64, st.integers(0, 64))))
        elif kind == "truncate":
            b = b[: draw(st.integers(0, len(b)))]
        elif kind == "flip":
            hdr = GGUF_LAYOUT["data_offset"]
            for pos in draw(st.lists(st.integers(0, min(hdr, len(b)) - 1), min_size=1, max_size=8)) if b else []:
                if pos < len(b):
                    b[pos] ^= draw(st.integers(1, 255))
    return bytes(b)


def _load_or_refused(path: Path) -> Checkpoint | None:
    """``load_checkpoint(path)``, or None where it refused with a LoadError naming the file (the
    only way a bad file may fail). Call it with warnings silenced: fuzzed headers warn a lot."""
    try:
        return load_checkpoint(path)
    except LoadError as e:
        assert str(path) in str(e)
        return None


def check_gguf(data: bytes) -> None:
    p = TMP / "fuzz.gguf"
    p.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (ck := _load_or_refused(p)) is None:
            return
        with ck:
            for n in ck.names:
                try:
                    a = ck.tensor(n)
                except LoadError as e:
                    assert str(p) in str(e)
                    continue
                assert a.shape == ck.shape(n), n
                assert a.dtype == np.float32


def test_gguf_base_file_is_valid() -> None:
    check_gguf(GGUF_VALID)
    with load_checkpoint(TMP / "fuzz.gguf") as ck:
        assert len(ck.names) == 11 and ck.tokenizer is not None


@FUZZ
@given(gguf_files())
def test_fuzz_gguf(data: bytes) -> None:
    check_gguf(data)


# ==================================================================== config.json vs weights
def _tiny_llama_dir() -> Path:
    from safetensors.numpy import save_file

    d = TMP / "llama"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    H, I, V, NH, NKV, HD = 8, 16, 12, 2, 1, 4
    t = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for i in range(2):
        L = f"model.layers.{i}."
        t |= {L + "input_layernorm.weight": (H,), L + "post_attention_layernorm.weight": (H,),
              L + "self_attn.q_proj.weight": (NH * HD, H), L + "self_attn.k_proj.weight": (NKV * HD, H),
              L + "self_attn.v_proj.weight": (NKV * HD, H), L + "self_attn.o_proj.weight": (H, NH * HD),
              L + "mlp.gate_proj.weight": (I, H), L + "mlp.up_proj.weight": (I, H), L + "mlp.down_proj.weight": (H, I)}
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}, str(d / "model.safetensors"))
    return d


LLAMA_DIR = _tiny_llama_dir()
LLAMA_CFG = {"model_type": "llama", "vocab_size": 12, "hidden_size": 8, "intermediate_size": 16,
             "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
             "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
CFG_VALUES = {
    "model_type": st.sampled_from(["llama", "mistral", "qwen2", "qwen3", "gpt2", "falcon", "", "LLAMA", "smollm"]),
    "vocab_size": st.integers(-1, 20), "hidden_size": st.integers(-1, 20), "intermediate_size": st.integers(-1, 40),
    "num_hidden_layers": st.one_of(st.integers(-1, 4), st.just(2**40)),
    "num_attention_heads": st.integers(-1, 5), "num_key_value_heads": st.integers(-1, 3),
    "head_dim": st.integers(-1, 9), "max_position_embeddings": st.one_of(st.integers(-1, 64), st.just(2**62)),
    "rms_norm_eps": st.one_of(st.floats(-1, 1), st.just("x")), "rope_theta": st.floats(allow_nan=True),
    "tie_word_embeddings": st.booleans(), "eos_token_id": st.one_of(st.integers(-1, 20), st.lists(st.integers(0, 20))),
    "hidden_act": st.sampled_from(["silu", "gelu", "relu", "swish", "gelu_new"]),
    "rope_scaling": st.one_of(st.none(), st.fixed_dictionaries({"rope_type": st.sampled_from(["linear", "llama3", "yarn",
                                                                                             "default", "dynamic"]),
                                                                "factor": st.floats(0, 8)})),
}


@settings(max_examples=int(os.environ.get("TG_FUZZ_EXAMPLES", "1000")) * 3 // 10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_config_against_weights(data) -> None:
    """A config.json that disagrees with the weights is refused with LoadError; one that agrees
    gives a model that runs a step."""
    cfg = dict(LLAMA_CFG)
    for key in data.draw(st.lists(st.sampled_from(sorted(CFG_VALUES)), max_size=3, unique=True)):
        if data.draw(st.integers(0, 9)) == 0:
            cfg.pop(key, None)
        else:
            cfg[key] = data.draw(CFG_VALUES[key])
    (LLAMA_DIR / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (ck := _load_or_refused(LLAMA_DIR)) is None:
            return
    from tinygraph.models import CausalLM
    with ck:
        for n in ck.names:
            assert ck.tensor(n).shape == ck.shape(n)
        m = CausalLM(ck, backend="numpy", max_context=8)
    with m:
        assert 0 <= m.step([1, 2], 0, "argmax") < ck.config.vocab_size
