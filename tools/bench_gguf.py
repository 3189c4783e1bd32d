"""A bench checkpoint (HF safetensors, random weights) written as an F16 GGUF that llama.cpp's tools
(llama-quantize, llama-bench) and tinygraph's GGUF loader both read, so both engines run identical
weights.

Layout, as llama.cpp's converter writes these architectures: llama-style tensor names
(``token_embd``, ``blk.{i}.attn_q``, ...), 2-D tensors F16, 1-D tensors (norms, biases) F32, the
rows of LLaMA's Q and K projections permuted for llama.cpp's interleaved RoPE (Qwen3 and GPT-2 are
not permuted), GPT-2's Conv1D weights ``[in, out]`` transposed to ``[out, in]`` and its q/k/v
fused as ``attn_qkv``. The vocabulary is a SentencePiece-style placeholder (``<unk>``, ``<s>``,
``</s>``, 256 byte tokens, then ``t{i}``): llama.cpp needs one to load the file; the bench feeds
token ids, never text. Tensors are streamed one at a time, so a 16 GB model never sits in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import bench_configs as bc

#: HF name (after "model." / "transformer.") -> GGUF name, per family; {i} = layer
_LLAMA_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
_GPT2_NAMES = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "h.{i}.ln_1.weight": "blk.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "blk.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "blk.{i}.attn_qkv.weight",
    "h.{i}.attn.c_attn.bias": "blk.{i}.attn_qkv.bias",
    "h.{i}.attn.c_proj.weight": "blk.{i}.attn_output.weight",
    "h.{i}.attn.c_proj.bias": "blk.{i}.attn_output.bias",
    "h.{i}.ln_2.weight": "blk.{i}.ffn_norm.weight",
    "h.{i}.ln_2.bias": "blk.{i}.ffn_norm.bias",
    "h.{i}.mlp.c_fc.weight": "blk.{i}.ffn_up.weight",
    "h.{i}.mlp.c_fc.bias": "blk.{i}.ffn_up.bias",
    "h.{i}.mlp.c_proj.weight": "blk.{i}.ffn_down.weight",
    "h.{i}.mlp.c_proj.bias": "blk.{i}.ffn_down.bias",
}
_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation for its interleaved RoPE: within each head, the rotate-half
    pairs (j, j + d/2) of HF's layout become adjacent rows (2j, 2j + 1). The inverse is
    ``tinygraph.io.gguf_loader.unpermute_rows``."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {rows} rows over {n_head} heads (need a multiple of {2 * n_head})")
    return np.ascontiguousarray(w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
                                .swapaxes(1, 2).reshape(w.shape))


def gguf_tensor_names(hf: dict[str, Any]) -> dict[str, str]:
    """HF tensor name (as ``save_pretrained`` writes it) -> GGUF tensor name, in write order."""
    k = bc.dims(hf)
    table, prefix = (_GPT2_NAMES, "transformer.") if k["family"] == "gpt2" else (_LLAMA_NAMES, "model.")
    out: dict[str, str] = {}
    for hf_name in bc.hf_tensor_shapes(hf):
        short = hf_name[len(prefix):] if hf_name.startswith(prefix) else hf_name
        parts = short.split(".")
        key, layer = short, None
        if len(parts) > 2 and parts[0] in ("layers", "h") and parts[1].isdigit():
            layer = parts[1]
            key = ".".join([parts[0], "{i}", *parts[2:]])
        if key not in table:
            raise KeyError(f"no GGUF name for tensor {hf_name!r} ({k['family']})")
        out[hf_name] = table[key].replace("{i}", layer or "")
    return out


class _CheckpointReader:
    """Tensors of a safetensors checkpoint directory by HF name (single file or shards); a
    GPT-2 name may lack or carry the ``transformer.`` prefix."""

    def __init__(self, ckpt: Path) -> None:
        from safetensors import safe_open

        files = sorted(Path(ckpt).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{ckpt}: no *.safetensors files to convert")
        self._handles = [safe_open(str(f), framework="numpy") for f in files]
        self._where: dict[str, Any] = {}
        for h in self._handles:
            for name in h.keys():
                self._where[name] = h

    def get(self, name: str) -> np.ndarray:
        for cand in (name, name.removeprefix("transformer."), "transformer." + name):
            if cand in self._where:
                return self._where[cand].get_tensor(cand)
        raise KeyError(f"tensor {name!r} is not in the checkpoint")


def _placeholder_vocab(vocab: int) -> tuple[list[str], list[int]]:
    """SentencePiece-style tokens and token types (1 normal, 2 unknown, 3 control, 6 byte)."""
    if vocab < 259:
        raise ValueError(f"vocab_size {vocab} is too small for the placeholder vocabulary (>= 259)")
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    toks += [f"t{i}" for i in range(vocab - len(toks))]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab - 259)
    return toks, types


def _add_metadata(w: Any, hf: dict[str, Any], name: str) -> None:
    k = bc.dims(hf)
    w.add_name(name)
    w.add_context_length(k["max_pos"])
    w.add_embedding_length(k["hidden"])
    w.add_block_count(k["layers"])
    w.add_feed_forward_length(k["inter"])
    w.add_head_count(k["heads"])
    w.add_file_type(1)                                   # LLAMA_FTYPE_MOSTLY_F16
    if k["family"] == "gpt2":
        w.add_layer_norm_eps(float(hf["layer_norm_epsilon"]))
    else:
        w.add_head_count_kv(k["kv_heads"])
        w.add_key_length(k["head_dim"])
        w.add_value_length(k["head_dim"])
        w.add_rope_dimension_count(k["head_dim"])
        w.add_rope_freq_base(float(hf.get("rope_theta", 10000.0)))
        w.add_layer_norm_rms_eps(float(hf["rms_norm_eps"]))
    toks, types = _placeholder_vocab(k["vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * len(toks))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _converted(hf: dict[str, Any], read: Callable[[str], np.ndarray]) -> Iterator[tuple[str, Callable[[], np.ndarray],
                                                                                        tuple[int, ...], Any]]:
    """(GGUF name, loader of the converted array, NumPy shape, NumPy dtype) per tensor."""
    k = bc.dims(hf)
    shapes = bc.hf_tensor_shapes(hf)
    for hf_name, g_name in gguf_tensor_names(hf).items():
        shape = shapes[hf_name]
        dtype = np.float32 if len(shape) == 1 else np.float16
        if k["family"] == "gpt2" and hf_name.endswith(_GPT2_CONV1D):
            shape = shape[::-1]

        def load(hf_name: str = hf_name, dtype: Any = dtype) -> np.ndarray:
            a = np.asarray(read(hf_name))
            if k["family"] == "gpt2" and hf_name.endswith(_GPT2_CONV1D):
                a = a.T                                  # Conv1D [in, out] -> [out, in]
            if k["family"] == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
                a = permute_rows(a, k["heads"] if "q_proj" in hf_name else k["kv_heads"])
            return np.ascontiguousarray(a, dtype=dtype)

        yield g_name, load, tuple(shape), np.dtype(dtype)


def write_gguf(ckpt: str | Path, hf: dict[str, Any], out: str | Path, name: str = "tinygraph-bench") -> dict[str, Any]:
    """Write checkpoint directory ``ckpt`` (config ``hf``) as an F16 GGUF at ``out`` (written to a
    temporary name, then renamed, so a crash leaves no half file). Returns {path, tensor_bytes,
    file_bytes, tensors}."""
    import gguf

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    reader = _CheckpointReader(Path(ckpt))
    arch = "gpt2" if bc.dims(hf)["family"] == "gpt2" else hf["model_type"]
    w = gguf.GGUFWriter(str(tmp), arch)
    tensors = list(_converted(hf, reader.get))
    try:
        _add_metadata(w, hf, name)
        for g_name, _load, shape, dtype in tensors:
            w.add_tensor_info(g_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _g_name, load, _shape, _dtype in tensors:      # same order as the infos
            w.write_tensor_data(load())
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    w.close()
    tmp.replace(out)
    return {"path": str(out), **gguf_summary(out), "file_bytes": out.stat().st_size, "tensors": len(tensors)}


def gguf_summary(path: str | Path) -> dict[str, Any]:
    """{"tensor_bytes": bytes of tensor data (what a decode step streams), "types": ggml type name
    (lower case, as tinygraph prints dtypes) -> tensor count} of a GGUF file."""
    from tinygraph.io.gguf_loader import open_reader   # the checked, faster reader

    types: dict[str, int] = {}
    nbytes = 0
    for t in open_reader(Path(path)).tensors:
        nbytes += int(t.n_bytes)
        key = t.tensor_type.name.lower()
        types[key] = types.get(key, 0) + 1
    return {"tensor_bytes": nbytes, "types": dict(sorted(types.items()))}
