"""Loading checkpoints (HF directories, safetensors, sharded indexes, GGUF) into models."""
from __future__ import annotations

import os

from tinygraph.io import GPT2_SPEC, LLAMA_SPEC, QWEN3_SPEC, ModelSpec, load_checkpoint

from .model import CausalLM


def load_model(path: str | os.PathLike, dtype: str = "float32", spec: ModelSpec | None = None,
               backend: str = "auto", max_context: int | None = None) -> CausalLM:
    """Load a model directory, ``.safetensors`` file, ``model.safetensors.index.json`` or ``.gguf``.

    ``dtype``: weights/activations/KV cache ("float32", "float16", "bfloat16"); ``spec``: force an
    architecture (default: detected from the tensor names / config); ``backend``: "auto", "numpy"
    or "cuda"; ``max_context``: KV-cache length in tokens."""
    ckpt = load_checkpoint(path, spec=spec)
    try:
        return CausalLM(ckpt, dtype=dtype, backend=backend, max_context=max_context)
    finally:
        ckpt.close()


def load_model_from_safetensors(path: str | os.PathLike, dtype: str = "float16", spec: ModelSpec | None = None,
                                backend: str = "auto", max_context: int | None = None) -> CausalLM:
    """PyGPUkit's name for :func:`load_model` (default dtype float16, as there)."""
    return load_model(path, dtype=dtype, spec=spec, backend=backend, max_context=max_context)


def load_gpt2_from_safetensors(path: str | os.PathLike, dtype: str = "float32", **kw) -> CausalLM:
    return load_model(path, dtype=dtype, spec=GPT2_SPEC, **kw)


def load_llama_from_safetensors(path: str | os.PathLike, dtype: str = "float16", **kw) -> CausalLM:
    return load_model(path, dtype=dtype, spec=LLAMA_SPEC, **kw)


def load_qwen3_from_safetensors(path: str | os.PathLike, dtype: str = "float16", **kw) -> CausalLM:
    return load_model(path, dtype=dtype, spec=QWEN3_SPEC, **kw)
