"""Language models as tinygraph graphs (importable as ``tinygraph.models``).

>>> from tinygraph.models import load_model_from_safetensors
>>> model = load_model_from_safetensors("path/to/model_dir", dtype="float32", backend="numpy")
>>> ids = model.generate([1, 2, 3], max_new_tokens=8, temperature=0)
"""
from .loader import (load_gpt2_from_safetensors, load_llama_from_safetensors, load_model,
                     load_model_from_safetensors, load_qwen3_from_safetensors)
from .model import CausalLM, GenerationTakenOverError
from .tensor_parallel import ShardedModel
from .transformer import HostArray, KVCache, Transformer

__all__ = ["CausalLM", "GenerationTakenOverError", "Transformer", "ShardedModel", "KVCache", "HostArray", "load_model", "load_model_from_safetensors",
           "load_gpt2_from_safetensors", "load_llama_from_safetensors", "load_qwen3_from_safetensors"]
