"""GGUF loading: dequantisation (checked against the documented block layouts), Q/K
un-permutation, config from metadata, byte-level BPE tokenizer, chat templates."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from tokenizers import pre_tokenizers

from tinygraph.io import (
    GPT2_SPEC,
    LLAMA_SPEC,
    QWEN2_SPEC,
    LoadError,
    apply_chat_template,
    load_checkpoint,
    tokenizer_from_gguf,
)
from tinygraph.io.errors import UnsupportedModelError
from tinygraph.io.spec import required_names

RNG = np.random.default_rng(2)
H, HEADS, KV, HD, INTER, LAYERS = 64, 4, 2, 16, 96, 2


# ------------------------------------------------------------------ reference encoders/decoders
def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The forward permutation llama.cpp's converter applies to LLaMA q_proj/k_proj rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f16_bytes(x: float) -> bytes:
    return struct.pack("<e", x)


def build_q8_0(w: np.ndarray) -> np.ndarray:
    """Hand-built Q8_0 blocks: {f16 d, i8 q[32]} per 32 values (d = amax/127)."""
    out = bytearray()
    for row in w:
        for blk in row.reshape(-1, 32):
            d = float(np.float16(np.abs(blk).max() / 127.0)) or 1.0
            q = np.clip(np.rint(blk / d), -127, 127).astype(np.int8)
            out += _f16_bytes(d) + q.tobytes()
    return np.frombuffer(bytes(out), np.uint8).reshape(w.shape[0], -1)


def build_q4_0(w: np.ndarray) -> np.ndarray:
    """Hand-built Q4_0 blocks: {f16 d, u8 qs[16]}, value (q-8)*d, elem j low nibble of qs[j], j+16 high."""
    out = bytearray()
    for row in w:
        for blk in row.reshape(-1, 32):
            d = float(np.float16(np.abs(blk).max() / 8.0)) or 1.0
            q = np.clip(np.rint(blk / d) + 8, 0, 15).astype(np.uint8)
            out += _f16_bytes(d) + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()
    return np.frombuffer(bytes(out), np.uint8).reshape(w.shape[0], -1)


def build_q4_1(w: np.ndarray) -> np.ndarray:
    """Hand-built Q4_1 blocks: {f16 d, f16 m, u8 qs[16]}, value q*d + m."""
    out = bytearray()
    for row in w:
        for blk in row.reshape(-1, 32):
            m = float(np.float16(blk.min()))
            d = float(np.float16((blk.max() - m) / 15.0)) or 1.0
            q = np.clip(np.rint((blk - m) / d), 0, 15).astype(np.uint8)
            out += _f16_bytes(d) + _f16_bytes(m) + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()
    return np.frombuffer(bytes(out), np.uint8).reshape(w.shape[0], -1)


def ref_dequant(raw: np.ndarray, qtype: QT, cols: int) -> np.ndarray:
    """Independent per-block decoder straight from the documented layouts (float32 arithmetic)."""
    size = {QT.Q8_0: 34, QT.Q4_0: 18, QT.Q4_1: 20}[qtype]
    rows = []
    for row in np.asarray(raw, np.uint8).reshape(-1, cols // 32 * size):
        vals: list[np.float32] = []
        for b in range(cols // 32):
            blk = row[b * size:(b + 1) * size].tobytes()
            d = np.float32(struct.unpack("<e", blk[:2])[0])
            if qtype == QT.Q8_0:
                vals += [np.float32(q) * d for q in struct.unpack("32b", blk[2:])]
                continue
            qs = blk[4:] if qtype == QT.Q4_1 else blk[2:]
            q = [qs[j] & 0xF for j in range(16)] + [qs[j] >> 4 for j in range(16)]
            if qtype == QT.Q4_0:
                vals += [np.float32(x - 8) * d for x in q]
            else:
                m = np.float32(struct.unpack("<e", blk[2:4])[0])
                vals += [np.float32(x) * d + m for x in q]
        rows.append(np.array(vals, np.float32))
    return np.stack(rows)


# ------------------------------------------------------------------ toy vocabulary
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["l l", "ll o", "e llo", "h ello", "Ġ t", "h e", "Ġt he", "o r", "Ġ w", "Ġw or", "Ġwor l", "Ġworl d",
          "ï ¿", "ï¿ ½"]
USER = ["<think>"]


def toy_vocab() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += [m.replace(" ", "") for m in MERGES] + USER
    # llama.cpp writes some byte-level tokens raw (U+FFFD here) although the merges spell them "ï¿½"
    tokens[tokens.index("ï¿½")] = "\ufffd"
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - len(USER)) + [4] * len(USER)
    return tokens, types


CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a test bot<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _vocab_meta(w: gguf.GGUFWriter, pre: str = "smollm") -> int:
    tokens, types = toy_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    return len(tokens)


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _bf16_bytes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw uint8 bytes as the writer wants them, exact float32 values they encode)."""
    u = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return u.view(np.uint8).reshape(x.shape[0], -1), (u.astype(np.uint32) << 16).view(np.float32)


# ------------------------------------------------------------------ the llama fixture
@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    path = tmp_path_factory.mktemp("gguf") / "toy-llama.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_key_length(HD)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    vocab = _vocab_meta(w)

    ref: dict[str, object] = {"vocab": vocab}
    emb = RNG.standard_normal((vocab, H)).astype(np.float32)
    q8 = gguf.quants.quantize(emb, QT.Q8_0)
    w.add_tensor("token_embd.weight", q8, raw_dtype=QT.Q8_0)
    ref["tok_emb.weight"] = (emb, q8, QT.Q8_0)
    for i in range(LAYERS):
        wq = RNG.standard_normal((HEADS * HD, H)).astype(np.float32)
        wk = RNG.standard_normal((KV * HD, H)).astype(np.float32)
        wv = RNG.standard_normal((KV * HD, H)).astype(np.float32)
        wo = RNG.standard_normal((H, HEADS * HD)).astype(np.float32)
        gate = RNG.standard_normal((INTER, H)).astype(np.float32)
        up = RNG.standard_normal((INTER, H)).astype(np.float32)
        down = RNG.standard_normal((H, INTER)).astype(np.float32)
        norm = RNG.standard_normal(H).astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm * 2)
        w.add_tensor(f"blk.{i}.attn_q.weight", llamacpp_permute(wq, HEADS))            # F32, exact
        kq = gguf.quants.quantize(llamacpp_permute(wk, KV), QT.Q4_1)
        w.add_tensor(f"blk.{i}.attn_k.weight", kq, raw_dtype=QT.Q4_1)                 # Q4_1 via gguf
        vq = build_q4_0(wv)
        w.add_tensor(f"blk.{i}.attn_v.weight", vq, raw_dtype=QT.Q4_0)                 # Q4_0 by hand
        w.add_tensor(f"blk.{i}.attn_output.weight", wo.astype(np.float16))             # F16
        gq = gguf.quants.quantize(gate, QT.Q4_0)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", gq, raw_dtype=QT.Q4_0)               # Q4_0 via gguf
        uq = build_q8_0(up)
        w.add_tensor(f"blk.{i}.ffn_up.weight", uq, raw_dtype=QT.Q8_0)                 # Q8_0 by hand
        draw, dval = _bf16_bytes(down)
        w.add_tensor(f"blk.{i}.ffn_down.weight", draw, raw_dtype=QT.BF16)              # BF16
        L = f"layers.{i}."
        ref |= {L + "attn_norm.weight": norm, L + "mlp_norm.weight": norm * 2, L + "attn.q.weight": wq,
                L + "attn.k.weight": (wk, kq, QT.Q4_1, KV), L + "attn.v.weight": (wv, vq, QT.Q4_0),
                L + "attn.o.weight": wo.astype(np.float16).astype(np.float32),
                L + "mlp.gate.weight": (gate, gq, QT.Q4_0), L + "mlp.up.weight": (up, uq, QT.Q8_0),
                L + "mlp.down.weight": dval}
    fn = RNG.standard_normal(H).astype(np.float32)
    w.add_tensor("output_norm.weight", fn)
    head = RNG.standard_normal((vocab, H)).astype(np.float32)
    hq = build_q4_1(head)
    w.add_tensor("output.weight", hq, raw_dtype=QT.Q4_1)                               # Q4_1 by hand
    ref |= {"final_norm.weight": fn, "lm_head.weight": (head, hq, QT.Q4_1)}
    _finish(w)
    return path, ref


# Quantisation error bounds relative to the block range (Q8_0: d/2 = amax/254, Q4: d/2 = range/30 or amax/16).
_TOL = {QT.Q8_0: 1 / 100, QT.Q4_0: 1 / 7, QT.Q4_1: 1 / 14}


def test_llama_config_from_metadata(llama_gguf: tuple[Path, dict[str, object]]) -> None:
    path, ref = llama_gguf
    ck = load_checkpoint(path)
    c = ck.config
    assert ck.format == "gguf" and ck.spec is LLAMA_SPEC and c.model_type == "llama"
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (LAYERS, H, HEADS, KV, HD)
    assert (c.intermediate_size, c.max_position_embeddings, c.vocab_size) == (INTER, 128, ref["vocab"])
    assert c.rope_theta == 100000.0 and c.norm_eps == 1e-5  # float32 metadata cleaned to the decimal value
    assert c.tie_word_embeddings is False and c.bos_token_id == 1 and c.eos_token_id == 2
    assert c.activation == "silu" and ck.rope_freq_factors is None
    assert ck.names == required_names(LLAMA_SPEC, c)
    assert ck.nbytes == sum(int(np.prod(ck.shape(n))) * 4 for n in ck.names)


def test_llama_tensors(llama_gguf: tuple[Path, dict[str, object]]) -> None:
    path, ref = llama_gguf
    ck = load_checkpoint(path)
    for name in ck.names:
        got = ck.tensor(name)
        assert got.dtype == np.float32 and got.flags.c_contiguous, name
        r = ref[name]
        if isinstance(r, np.ndarray):  # stored exactly (F32 / F16 / BF16)
            np.testing.assert_array_equal(got, r, err_msg=name)
            continue
        orig, raw, qt, *heads = r  # type: ignore[misc]
        hand = ref_dequant(raw, qt, H)  # every quantised tensor here has H columns
        if heads:  # stored permuted: undo with the inverse permutation, then compare
            hand = hand.reshape(heads[0], -1, 2, H).swapaxes(1, 2).reshape(hand.shape)
        np.testing.assert_array_equal(got, hand, err_msg=name)  # exact vs documented layout
        amax = np.abs(orig).max(axis=1, keepdims=True)
        assert np.all(np.abs(got - orig) <= amax * _TOL[qt] + 1e-6), name  # close to the original


def test_qk_unpermute_restores_hf_layout(llama_gguf: tuple[Path, dict[str, object]]) -> None:
    path, ref = llama_gguf
    wq = ref["layers.0.attn.q.weight"]
    assert isinstance(wq, np.ndarray)
    p = llamacpp_permute(wq, HEADS)
    # direction check: llama.cpp interleaves HF's rotate-half pairs (j, j + HD/2) into rows (2j, 2j+1)
    np.testing.assert_array_equal(p[2 * 3 + 1], wq[3 + HD // 2])
    np.testing.assert_array_equal(p[HD + 2 * 5], wq[HD + 5])  # head 1
    ck = load_checkpoint(path)
    np.testing.assert_array_equal(ck.tensor("layers.0.attn.q.weight"), wq)
    from tinygraph.io.gguf_loader import unpermute_rows

    b = np.arange(HEADS * HD, dtype=np.float32)  # 1-D biases use the same row permutation
    np.testing.assert_array_equal(unpermute_rows(llamacpp_permute(b, HEADS), HEADS), b)


def test_dequantize_matches_gguf_package() -> None:
    from tinygraph.io.gguf_loader import dequantize

    x = RNG.standard_normal((8, 64)).astype(np.float32)
    for qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.BF16):
        raw = gguf.quants.quantize(x, qt)
        np.testing.assert_array_equal(dequantize(raw, qt, x.shape), gguf.quants.dequantize(raw, qt), err_msg=qt.name)


def test_tokenizer_roundtrip(llama_gguf: tuple[Path, dict[str, object]]) -> None:
    path, _ = llama_gguf
    tok = load_checkpoint(path).tokenizer
    assert tok is not None
    tokens, _ = toy_vocab()
    tid = {t: i for i, t in enumerate(tokens)}
    text = "hello the world<|im_end|> <think>ok 123"
    enc = tok.encode(text)
    for piece in ("hello", "Ġthe", "Ġworld", "<|im_end|>", "<think>"):
        assert tid[piece] in enc.ids, piece  # merges applied; added tokens atomic
    # smollm pre-tokenizer splits digits one by one before the GPT-2 regex
    assert enc.tokens[-4:] == ["Ġ", "1", "2", "3"]
    assert tok.decode(enc.ids, skip_special_tokens=False) == text
    assert tok.decode(enc.ids) == text.replace("<|im_end|>", "")  # control tokens are special
    assert tok.encode("abc").ids[0] != 1  # no BOS added (add_bos_token false)
    assert tok.encode("\ufffd").ids == [tid["\ufffd"]]  # raw-spelled token re-spelled to match its merges
    # also callable with a reader or a path directly
    assert tokenizer_from_gguf(gguf.GGUFReader(str(path))).encode(text).ids == enc.ids
    assert tokenizer_from_gguf(path).encode(text).ids == enc.ids


def test_chat_template(llama_gguf: tuple[Path, dict[str, object]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = llama_gguf
    ck = load_checkpoint(path)
    assert ck.chat_template == CHATML
    msgs = [{"role": "user", "content": "Hi"}]
    want = ("<|im_start|>system\nYou are a test bot<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n")
    monkeypatch.setitem(sys.modules, "jinja2", None)  # force the built-in ChatML path
    assert apply_chat_template(ck.chat_template, msgs) == want
    sysmsg = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert apply_chat_template(None, sysmsg, add_generation_prompt=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    with pytest.raises(LoadError, match="jinja2"):
        apply_chat_template("{{ bos_token }}[INST]", msgs)
    monkeypatch.undo()
    pytest.importorskip("jinja2")
    assert apply_chat_template(ck.chat_template, msgs) == want
    assert apply_chat_template(ck.chat_template, sysmsg) == apply_chat_template(None, sysmsg)


# ------------------------------------------------------------------ other architectures
def test_qwen2_is_not_unpermuted_and_has_biases(tmp_path: Path) -> None:
    path = tmp_path / "q2.gguf"
    w = gguf.GGUFWriter(str(path), arch="qwen2")
    for f, v in ((w.add_block_count, 1), (w.add_context_length, 64), (w.add_embedding_length, 32),
                 (w.add_feed_forward_length, 64), (w.add_head_count, 2), (w.add_head_count_kv, 1)):
        f(v)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    vocab = _vocab_meta(w, pre="qwen2")
    w.add_eot_token_id(0)  # end-of-turn differs from eos (2): both must stop generation
    t = {"token_embd.weight": (vocab, 32), "output_norm.weight": (32,), "blk.0.attn_norm.weight": (32,),
         "blk.0.ffn_norm.weight": (32,), "blk.0.attn_q.weight": (32, 32), "blk.0.attn_q.bias": (32,),
         "blk.0.attn_k.weight": (16, 32), "blk.0.attn_k.bias": (16,), "blk.0.attn_v.weight": (16, 32),
         "blk.0.attn_v.bias": (16,), "blk.0.attn_output.weight": (32, 32), "blk.0.ffn_gate.weight": (64, 32),
         "blk.0.ffn_up.weight": (64, 32), "blk.0.ffn_down.weight": (32, 64)}
    arrs = {k: RNG.standard_normal(s).astype(np.float32) for k, s in t.items()}
    for k, a in arrs.items():
        w.add_tensor(k, a)
    _finish(w)
    ck = load_checkpoint(path)
    assert ck.spec is QWEN2_SPEC and ck.config.tie_word_embeddings and "lm_head.weight" not in ck
    assert ck.config.rope_theta == 1e6 and ck.config.head_dim == 16
    assert ck.eos_token_ids == [2, 0]
    np.testing.assert_array_equal(ck.tensor("layers.0.attn.q.weight"), arrs["blk.0.attn_q.weight"])
    np.testing.assert_array_equal(ck.tensor("layers.0.attn.k.bias"), arrs["blk.0.attn_k.bias"])
    assert ck.tokenizer is not None
    assert ck.tokenizer.encode("hello the world").tokens == ["hello", "Ġthe", "Ġworld"]


def test_gpt2_fused_qkv(tmp_path: Path) -> None:
    path = tmp_path / "g.gguf"
    w = gguf.GGUFWriter(str(path), arch="gpt2")
    for f, v in ((w.add_block_count, 1), (w.add_context_length, 16), (w.add_embedding_length, 32),
                 (w.add_feed_forward_length, 128), (w.add_head_count, 2)):
        f(v)
    w.add_layer_norm_eps(1e-5)
    vocab = _vocab_meta(w, pre="gpt-2")
    t = {"token_embd.weight": (vocab, 32), "position_embd.weight": (16, 32),
         "output_norm.weight": (32,), "output_norm.bias": (32,),
         "blk.0.attn_norm.weight": (32,), "blk.0.attn_norm.bias": (32,),
         "blk.0.ffn_norm.weight": (32,), "blk.0.ffn_norm.bias": (32,),
         "blk.0.attn_qkv.weight": (96, 32), "blk.0.attn_qkv.bias": (96,),
         "blk.0.attn_output.weight": (32, 32), "blk.0.attn_output.bias": (32,),
         "blk.0.ffn_up.weight": (128, 32), "blk.0.ffn_up.bias": (128,),
         "blk.0.ffn_down.weight": (32, 128), "blk.0.ffn_down.bias": (32,)}
    arrs = {k: RNG.standard_normal(s).astype(np.float32) for k, s in t.items()}
    for k, a in arrs.items():
        w.add_tensor(k, a)
    _finish(w)
    ck = load_checkpoint(path)
    assert ck.spec is GPT2_SPEC and ck.config.activation == "gelu_tanh" and ck.config.norm_eps == 1e-5
    assert ck.names == required_names(GPT2_SPEC, ck.config)
    qkv, b = arrs["blk.0.attn_qkv.weight"], arrs["blk.0.attn_qkv.bias"]
    for n, p in enumerate("qkv"):
        np.testing.assert_array_equal(ck.tensor(f"layers.0.attn.{p}.weight"), qkv[32 * n:32 * (n + 1)])
        np.testing.assert_array_equal(ck.tensor(f"layers.0.attn.{p}.bias"), b[32 * n:32 * (n + 1)])
    np.testing.assert_array_equal(ck.tensor("pos_emb.weight"), arrs["position_embd.weight"])


def test_bad_gguf_files(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOTGGUF" + b"\0" * 64)
    with pytest.raises(LoadError, match="not a readable GGUF"):
        load_checkpoint(p)
    w = gguf.GGUFWriter(str(tmp_path / "f.gguf"), arch="falcon")
    w.add_block_count(1)
    _finish(w)
    with pytest.raises(UnsupportedModelError, match="'falcon'"):
        load_checkpoint(tmp_path / "f.gguf")
