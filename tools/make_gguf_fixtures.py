"""GGUF versions of the tiny HF fixtures, written by llama.cpp's own converter (DEV-ONLY).

Runs ``convert_hf_to_gguf``'s model classes (llama.cpp's ``conversion`` package, imported from a
llama.cpp checkout given with ``--llama-cpp``; nothing of it is copied here) on a temporary copy of
each fixture in ``tests/fixtures/<family>`` and writes ``tests/fixtures/gguf/<family>.gguf`` (F32,
``--outtype f32``), so the tests hold tinygraph's GGUF loader to the HF reference logits of the
same weights. Needs the torch venv (torch, transformers, tokenizers) and llama.cpp's gguf-py (the
converter puts its own on ``sys.path``).

The tiny fixtures have no tokenizer, and the converter's vocabulary step needs one, so each temp
copy gets a 256-token byte-level BPE ``tokenizer.json`` (the 256 byte symbols, no merges) and the
vocabulary is written through the converter's own byte-level path (``_set_vocab_gpt2``) with its
pre-tokenizer fingerprint check answered "gpt-2" (the fingerprint list knows only published
tokenizers), and GPT-NeoX configs get the hub's ``rotary_pct`` key beside transformers 5's
``rope_parameters.partial_rotary_factor`` (same value; the converter reads only the former). Those are
the only deviations: hyper-parameters and tensors (names, the Gemma ``+ 1``,
GPT-NeoX's q/k/v re-layout, Granite's Q/K permutation, the experts stacked into 3-D ``ffn_*_exps``,
...) are the converter's, unchanged. Qwen3-MoE converts from ``qwen3_moe_gguf`` (every layer MoE,
top-k renormalised): the converter cannot map ``qwen3_moe``'s dense layer (``mlp_only_layers``).

    /work/venv-ref/bin/python tools/make_gguf_fixtures.py --llama-cpp /path/to/llama.cpp [--family NAME ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
OUT = FIXTURES / "gguf"
# HF fixture folder -> what it covers in GGUF form (llama.cpp architecture name in brackets)
FAMILIES = {
    "gemma": "gemma", "granite": "granite", "olmo2": "olmo2", "stablelm": "stablelm",
    "stablelm_parallel": "stablelm", "phi": "phi2", "phi3": "phi3", "phi3_partial": "phi3",
    "gpt_neox": "gptneox", "gpt_neox_sequential": "gptneox", "gemma2_gguf": "gemma2", "gemma3_gguf": "gemma3",
    # mixture-of-experts: Mixtral is llama with 3-D ``ffn_*_exps`` tensors
    "mixtral": "llama", "qwen3_moe_gguf": "qwen3moe", "qwen2_moe": "qwen2moe",
}
# the older families (not committed as fixtures; ``--family`` converts them for a manual check)
OLDER = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2", "llama3": "llama",
         "qwen3_yarn": "qwen3"}


def byte_tokenizer(d: Path) -> None:
    """A 256-token byte-level BPE tokenizer (no merges) in ``d``: the vocabulary the converter
    needs; the tiny models' vocabulary size is 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def v4_keys(hparams: dict) -> dict:
    """GPT-NeoX's converter reads the hub's ``rotary_pct``; transformers 5's config (which the
    converter loads through ``AutoConfig``) has the same value only as
    ``rope_parameters.partial_rotary_factor``. Add the v4 key (HF reads both alike)."""
    if hparams.get("model_type") == "gpt_neox" and "rotary_pct" not in hparams:
        hparams = dict(hparams, rotary_pct=hparams["rope_parameters"]["partial_rotary_factor"])
    return hparams


def convert(llama_cpp: Path, family: str, out: Path) -> None:
    """Convert ``tests/fixtures/<family>`` to ``out`` with llama.cpp's model class for it."""
    import torch

    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    sys.path.insert(0, str(llama_cpp))
    import gguf
    # the converter's own gguf-py, not an installed gguf package (their versions may differ)
    assert Path(gguf.__file__).resolve().is_relative_to((llama_cpp / "gguf-py").resolve()), gguf.__file__
    from conversion import ModelBase, ModelType, TextModel, get_model_architecture, get_model_class

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / family
        shutil.copytree(FIXTURES / family, d)
        (d / "reference.npz").unlink()
        byte_tokenizer(d)
        hparams = v4_keys(ModelBase.load_hparams(d, False))
        cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT), mmproj=False)
        # deviation (see the module docstring): the vocabulary through the byte-level path
        patched = type(cls.__name__, (cls,), {
            "model_arch": cls.model_arch,
            "set_vocab": TextModel._set_vocab_gpt2,
            "get_vocab_base_pre": lambda self, tokenizer: "gpt-2",
        })
        with torch.inference_mode():
            m = patched(d, gguf.LlamaFileType.ALL_F32, out, eager=True, model_name=family, hparams=hparams)
            m.write()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp checkout (convert_hf_to_gguf.py, "
                    "conversion/, gguf-py/)")
    ap.add_argument("--family", action="append", choices=sorted({**FAMILIES, **OLDER}), help="only this fixture (repeatable)")
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    for fam in args.family or FAMILIES:
        convert(args.llama_cpp, fam, OUT / f"{fam}.gguf")
        print(f"{fam}: {OUT / f'{fam}.gguf'} ({(OUT / f'{fam}.gguf').stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
