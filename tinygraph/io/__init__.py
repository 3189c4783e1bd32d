"""Loader layer: safetensors (single/sharded), GGUF, HF config.json, tokenizers, chat templates.

Everything the model builder needs comes through :func:`load_checkpoint`, which
names weights canonically (see :mod:`tinygraph.io.spec`) whatever the file format.
"""

from .checkpoint import Checkpoint, load_checkpoint
from .config import TransformerConfig, config_from_hf, load_hf_config, rope_freq_factors, rope_inv_freq
from .errors import LoadError, TinygraphError, UnsupportedModelError
from .safetensors import SafeTensorsFile, TensorInfo, load_safetensors
from .spec import (
    GPT2_SPEC,
    LLAMA_SPEC,
    MISTRAL_SPEC,
    MODEL_SPECS,
    QWEN2_SPEC,
    QWEN3_SPEC,
    ModelSpec,
    detect_model_spec,
    spec_for_model_type,
)
from .tokenizer import apply_chat_template, tokenizer_from_gguf

__all__ = [
    "load_safetensors",
    "SafeTensorsFile",
    "TensorInfo",
    "TransformerConfig",
    "config_from_hf",
    "load_hf_config",
    "rope_freq_factors",
    "rope_inv_freq",
    "ModelSpec",
    "GPT2_SPEC",
    "LLAMA_SPEC",
    "MISTRAL_SPEC",
    "QWEN2_SPEC",
    "QWEN3_SPEC",
    "MODEL_SPECS",
    "detect_model_spec",
    "spec_for_model_type",
    "load_checkpoint",
    "Checkpoint",
    "tokenizer_from_gguf",
    "apply_chat_template",
    "LoadError",
    "UnsupportedModelError",
    "TinygraphError",
]
