"""``load_checkpoint``: one entry point for HF safetensors directories/files and GGUF files.

A :class:`Checkpoint` exposes every weight under its *canonical* name (see
:mod:`tinygraph.io.spec`) in HF ``[out, in]`` orientation, already transposed,
split and un-permuted, together with the config, spec, tokenizer and chat
template. Tensors are produced on demand (``.tensor(name)``); nothing large is
read at load time, but names and shapes are validated against the config
up front so a broken checkpoint fails before any graph is built.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .config import TransformerConfig, load_hf_config
from .errors import LoadError, UnsupportedModelError
from .files import check_directory, check_regular_file, optional_file, read_bytes, read_text
from .moe import check_expert_names
from .rope_scaling import RopeScaling, rope_scaling
from .safetensors import INDEX_SUFFIX, SafeTensorsFile
from .spec import (
    GPT2_SPEC,
    ModelSpec,
    Source,
    detect_model_spec,
    expected_shape,
    map_hf_names,
    required_names,
    source_shape,
    spec_for_model_type,
    split_rows,
    strip_prefix,
    upgrade_spec,
)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.")



def _refuse_pickle(p: Path) -> LoadError:
    return LoadError(
        f"{p}: PyTorch pickle checkpoints are not loaded: unpickling can execute arbitrary code. "
        "Convert to .safetensors (e.g. save_pretrained(..., safe_serialization=True)) or use a .gguf file."
    )


class Checkpoint:
    """Weights + metadata of one model, addressed by canonical names.

    Attributes:
        path: the file or directory that was opened.
        config: model hyper-parameters.
        spec: architecture description (bias flags reflect the tensors present).
        names: canonical names available, in model order (exactly the set the
            spec/config requires; ``lm_head.weight`` is absent when tied).
        tokenizer: ``tokenizers.Tokenizer`` or None.
        chat_template: Jinja chat template string or None.
        format: "safetensors" or "gguf".
    """

    def __init__(
        self,
        path: Path,
        config: TransformerConfig,
        spec: ModelSpec,
        backend: Any,
        shapes: dict[str, tuple[int, ...]],
        fmt: str,
        tokenizer: Any = None,
        chat_template: str | None = None,
        freq_factors: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.config = config
        self.spec = spec
        self.format = fmt
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._backend = backend
        self._shapes = shapes
        self._freq_factors = freq_factors
        self.names: list[str] = list(shapes)  # model order (as required_names lists them)

    # ---- tensors
    def __contains__(self, name: object) -> bool:
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def shape(self, name: str) -> tuple[int, ...]:
        """Canonical shape of ``name`` without reading data."""
        self._check(name)
        return self._shapes[name]

    def tensor(self, name: str) -> np.ndarray:
        """The canonical tensor ``name`` as a contiguous array in [out, in] orientation.

        Safetensors: stored dtype (float32/float16/bfloat16). GGUF: float32
        (dequantised). Tensors needing no conversion (plain safetensors entries,
        GGUF F32) are read-only zero-copy views of the memory-mapped file; the
        rest are new arrays. Views stay valid after :meth:`close`.
        """
        self._check(name)
        return self._backend.load(name)

    def quant_type(self, name: str) -> Any:
        """The ggml block dtype (``tinygraph.q4_k``, ...) tensor ``name`` is stored in, or None (float)."""
        self._check(name)
        f = getattr(self._backend, "quant_type", None)
        return f(name) if f is not None else None

    def tensor_raw(self, name: str) -> np.ndarray:
        """The raw blocks of a block-quantized tensor (see :meth:`quant_type`): uint8 [rows, row bytes]."""
        self._check(name)
        return self._backend.load_quant(name)

    def _check(self, name: str) -> None:
        if name not in self._shapes:
            import difflib

            close = difflib.get_close_matches(name, self.names, n=5, cutoff=0.5)
            raise KeyError(f"{self.path}: no canonical tensor {name!r}" + (f"; close names: {close}" if close else ""))

    @property
    def nbytes(self) -> int:
        """Bytes of all canonical tensors as ``tensor()`` returns them."""
        return sum(int(np.prod(s)) * self._backend.itemsize(n) for n, s in self._shapes.items())

    @property
    def rope_freq_factors(self) -> np.ndarray | None:
        """RoPE frequency divisors [rotary_dim/2] float32 (longrope: the short set), or None for
        plain RoPE (see :attr:`rope_scaling`)."""
        return self.rope_scaling.factors

    @property
    def rope_scaling(self) -> RopeScaling:
        """The RoPE scaling (frequency divisors, longrope's long set, attention factor; see
        :mod:`tinygraph.io.rope_scaling`): from the config for HF checkpoints, from the
        ``rope_freqs`` tensor for GGUF; empty without RoPE."""
        if self.spec.position != "rope":
            return RopeScaling()
        if self._freq_factors is not None:  # GGUF's rope_freqs tensor
            return RopeScaling(factors=self._freq_factors)
        return rope_scaling(self.config)

    @property
    def bos_token_id(self) -> int | None:
        return self.config.bos_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        return self.config.eos_token_ids

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (f"Checkpoint({str(self.path)!r}, {self.spec.name}, format={self.format}, layers={c.num_layers}, "
                f"hidden={c.hidden_size}, tensors={len(self.names)})")


# --------------------------------------------------------------------------- safetensors backend
class _SafetensorsBackend:
    def __init__(self, st: SafeTensorsFile, plan: dict[str, Source], cfg: TransformerConfig) -> None:
        self.st = st
        self.plan = plan
        self.cfg = cfg

    def itemsize(self, name: str) -> int:
        info = self.st.tensor_info(self.plan[name].hf_name)
        return int(np.dtype(_np_dtype(info.dtype_name)).itemsize)

    def load(self, name: str) -> np.ndarray:
        src = self.plan[name]
        a = self.st.tensor_as_numpy(src.hf_name)
        if src.split is not None:
            axis = 1 if (src.transpose and a.ndim == 2) else 0  # split the *out* axis
            rows = split_rows(src.split, src.layout, a.shape[axis], self.cfg)
            a = a[:, rows] if axis == 1 else a[rows]
        if src.transpose and a.ndim == 2:
            a = a.T
        if src.add:  # in float32, as HF computes Gemma's 1 + w, before any cast to the model dtype
            a = a.astype(np.float32) + np.float32(src.add)
        # Contiguous slices of the mmap stay zero-copy; transposes/column slices are copied once.
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    def close(self) -> None:
        self.st.close()


def _np_dtype(name: str) -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _read_json(p: Path, want: type | None = None, what: str = "JSON file") -> Any:
    text = read_text(p, what)  # a FIFO or device is refused, never read (it could block)
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise LoadError(f"{p}: cannot read JSON: {exc}") from exc
    if want is not None and not isinstance(d, want):
        raise LoadError(f"{p}: expected a JSON {want.__name__}, got {type(d).__name__}")
    return d


def _infer_config(st: SafeTensorsFile, spec: ModelSpec, where: Path) -> TransformerConfig:
    """Config from tensor shapes; only GPT-2 is unambiguous enough to do this."""
    if spec is not GPT2_SPEC:
        raise LoadError(
            f"{where}: config.json is needed next to the weights: for {spec.name} the head count, head_dim, "
            "rope_theta and norm epsilon cannot be inferred from tensor shapes"
        )
    short = {strip_prefix(n): n for n in st.tensor_names}
    try:
        vocab, hidden = st.tensor_info(short["wte.weight"]).shape
        max_pos = st.tensor_info(short["wpe.weight"]).shape[0]
        inter = st.tensor_info(short["h.0.mlp.c_fc.weight"]).shape[1]
    except KeyError as exc:
        raise LoadError(f"{where}: no config.json and GPT-2 tensor {exc.args[0]!r} is missing") from exc
    layers = len({m.group(1) for n in short if (m := re.match(r"h\.(\d+)\.", n))})
    warnings.warn(f"{where}: no config.json; inferring a GPT-2 config (head_dim 64, eps 1e-5)", stacklevel=3)
    return TransformerConfig(
        model_type="gpt2", vocab_size=vocab, hidden_size=hidden, num_layers=layers,
        num_heads=max(1, hidden // 64),  # every published GPT-2 size uses 64-wide heads
        intermediate_size=inter, max_position_embeddings=max_pos, norm_eps=1e-5,
        tie_word_embeddings="lm_head.weight" not in short, activation="gelu_tanh",
    )


def _merge_generation_eos(cfg: TransformerConfig, gen_path: Path) -> int | list[int] | None:
    """config.json's eos ids plus generation_config.json's (HF generate stops on the latter;
    e.g. Qwen2.5-Instruct's config says <|endoftext|> but chat turns end with <|im_end|>)."""
    if not optional_file(gen_path, "generation config"):
        return cfg.eos_token_id
    extra = _read_json(gen_path, dict, "generation config").get("eos_token_id")
    extra_ids = [] if extra is None else (extra if isinstance(extra, list) else [extra])
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in extra_ids):
        raise LoadError(f"{gen_path}: eos_token_id must be an int or a list of ints, got {extra!r}")
    ids = list(dict.fromkeys(cfg.eos_token_ids + [int(x) for x in extra_ids]))
    return ids[0] if len(ids) == 1 else (ids or None)


def _chat_template_from_dir(d: Path) -> str | None:
    jinja = d / "chat_template.jinja"  # transformers v5 writes the template to its own file
    if optional_file(jinja, "chat template"):
        return read_text(jinja, "chat template")
    tc = d / "tokenizer_config.json"
    if optional_file(tc, "tokenizer config"):
        ct = _read_json(tc, dict, "tokenizer config").get("chat_template")
        if isinstance(ct, list):  # [{"name": "default", "template": ...}, ...]
            named = {e.get("name"): e.get("template") for e in ct if isinstance(e, dict)}
            ct = named.get("default") or next(iter(named.values()), None)
        return ct if isinstance(ct, str) else None
    return None


def _load_safetensors_checkpoint(p: Path, spec: ModelSpec | None) -> Checkpoint:
    if p.is_dir():
        if not any(p.glob("*.safetensors")) and not any(p.glob("*" + INDEX_SUFFIX)):
            pickles = [f for f in p.iterdir() if f.suffix in _PICKLE_SUFFIXES]
            if pickles:
                raise _refuse_pickle(pickles[0])
        model_dir = p
    else:
        model_dir = p.parent
    st = SafeTensorsFile(p)
    try:
        return _build_safetensors(p, st, model_dir, spec)
    except BaseException:
        st.close()
        raise


def _build_safetensors(p: Path, st: SafeTensorsFile, model_dir: Path, spec: ModelSpec | None) -> Checkpoint:
    cfg_path = model_dir / "config.json"
    if optional_file(cfg_path, "config"):  # present but a FIFO/directory/unreadable: refused
        cfg = load_hf_config(cfg_path)
        cfg.eos_token_id = _merge_generation_eos(cfg, model_dir / "generation_config.json")
        if spec is None:
            spec = spec_for_model_type(cfg.model_type)
    else:
        spec = spec or detect_model_spec(st.tensor_names)
        cfg = _infer_config(st, spec, p)

    plan, unused = map_hf_names(spec, st.tensor_names)
    # Biases that exist but the family normally lacks (e.g. llama with attention_bias)
    # must not be silently dropped: turn the spec flag on.
    spec = upgrade_spec(spec, set(plan))
    check_expert_names(p, cfg, unused, list(plan))  # fused 3-D or surplus experts: refused, not ignored
    if unused:
        warnings.warn(f"{p}: {len(unused)} tensors not used by {spec.name}: {unused[:5]}", stacklevel=3)

    shapes = _validate(p, spec, cfg, plan, lambda n: _st_shape(p, st, plan[n], cfg))
    plan = {k: plan[k] for k in shapes}
    for n, src in plan.items():
        dt = st.tensor_info(src.hf_name).dtype_name
        if dt not in _FLOAT_DTYPES:
            raise LoadError(f"{p}: tensor {src.hf_name!r} ({n}) is stored as {dt}; weights must be "
                            f"floating point ({', '.join(_FLOAT_DTYPES)})")
    if spec.position == "rope":
        rope_scaling(cfg)  # a bad or unsupported rope_scaling fails here, at load

    tokenizer = None
    tok_path = model_dir / "tokenizer.json"
    if optional_file(tok_path, "tokenizer"):
        from tokenizers import Tokenizer

        from .tokenizer import SafeTokenizer  # turns tokenizers' panics at encode/decode into TokenizerError

        raw = read_bytes(tok_path, "tokenizer")  # read here: tokenizers' own open() would block on a FIFO
        try:
            tokenizer = SafeTokenizer(Tokenizer.from_str(raw.decode("utf-8")), str(tok_path))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # tokenizers raises plain Exception subclasses, or a pyo3 panic
            raise LoadError(f"{tok_path}: cannot load tokenizer: {exc}") from exc
    return Checkpoint(
        path=p, config=cfg, spec=spec, backend=_SafetensorsBackend(st, plan, cfg), shapes=shapes,
        fmt="safetensors", tokenizer=tokenizer, chat_template=_chat_template_from_dir(model_dir),
    )


def _validate(
    where: Path,
    spec: ModelSpec,
    cfg: TransformerConfig,
    plan: dict[str, Any],
    shape_of: Callable[[str], tuple[int, ...]],
) -> dict[str, tuple[int, ...]]:
    """Check every required canonical tensor exists with the config's shape, and that the file
    holds no layers beyond the config's; return name -> shape."""
    layers: dict[int, str] = {}
    for n, src in plan.items():
        m = _LAYER_RE.match(n)
        if m:
            layers.setdefault(int(m.group(1)), getattr(src, "hf_name", None) or getattr(src, "gguf_name", n))
    extra = sorted(i for i in layers if i >= cfg.num_layers)
    if extra:
        raise LoadError(f"{where}: the config says {cfg.num_layers} layers but the weights include layer "
                        f"{extra[0]} (e.g. {layers[extra[0]]!r}); {len(layers)} layers present")
    if cfg.num_layers > len(layers):  # before required_names, which lists every layer's names
        first = next(i for i in range(len(layers) + 1) if i not in layers)
        raise LoadError(f"{where}: the config says {cfg.num_layers} layers but the weights hold only "
                        f"{len(layers)}: missing tensors for layer {first} (and possibly more)")
    need = required_names(spec, cfg)
    missing = [n for n in need if n not in plan]
    if missing:
        more = f" (+{len(missing) - 12} more)" if len(missing) > 12 else ""
        raise LoadError(f"{where}: missing tensors for {spec.name}: {', '.join(missing[:12])}{more}")
    shapes: dict[str, tuple[int, ...]] = {}
    for n in need:
        found = tuple(shape_of(n))
        exp = expected_shape(n, cfg, spec)
        if exp is not None and found != exp:
            src = plan[n]
            origin = getattr(src, "hf_name", None) or getattr(src, "gguf_name", None)
            raise LoadError(f"{where}: tensor {n!r} (stored as {origin!r}) has shape {found}, config expects {exp}")
        shapes[n] = found
    return shapes


def _st_shape(where: Path, st: SafeTensorsFile, src: Source, cfg: TransformerConfig) -> tuple[int, ...]:
    stored = st.tensor_info(src.hf_name).shape
    if src.split is not None:
        axis = 1 if (src.transpose and len(stored) == 2) else 0
        if len(stored) <= axis or (src.layout == "blocks" and stored[axis] % src.split[1]):
            raise LoadError(
                f"{where}: tensor {src.hf_name!r} of shape {stored} cannot be split into {src.split[1]} equal parts"
            )
        try:
            return source_shape(src, stored, cfg)
        except LoadError as exc:
            raise LoadError(f"{where}: tensor {src.hf_name!r} of shape {stored}: {exc}") from None
    return source_shape(src, stored)


# --------------------------------------------------------------------------- GGUF backend
class _GGUFBackend:
    def __init__(self, g: Any) -> None:
        self.g = g

    def itemsize(self, name: str) -> int:
        return 4

    def load(self, name: str) -> np.ndarray:
        return self.g.load(name)

    def quant_type(self, name: str) -> Any:
        return self.g.quant_type(name)

    def load_quant(self, name: str) -> np.ndarray:
        return self.g.load_quant(name)

    def close(self) -> None:
        self.g.close()


def _load_gguf_checkpoint(p: Path, spec: ModelSpec | None) -> Checkpoint:
    from .gguf_loader import GGUFFile

    g = GGUFFile(p)
    try:
        spec = spec or g.spec
        if g.unused:
            warnings.warn(f"{p}: {len(g.unused)} GGUF tensors not used: {g.unused[:5]}", stacklevel=3)
        shapes = _validate(p, spec, g.config, g.plan, g.shape)
        tokenizer = None
        try:
            tokenizer = g.tokenizer()
        except UnsupportedModelError as exc:
            warnings.warn(f"{p}: no tokenizer: {exc}", stacklevel=3)
        ff = g.rope_freq_factors() if spec.position == "rope" else None
        half = (g.config.head_dim or 0) // 2
        if ff is not None and ff.shape != (half,):
            raise LoadError(f"{p}: tensor 'rope_freqs.weight' has {ff.size} values, head_dim "
                            f"{g.config.head_dim} needs {half}")
        return Checkpoint(
            path=p, config=g.config, spec=spec, backend=_GGUFBackend(g), shapes=shapes, fmt="gguf",
            tokenizer=tokenizer, chat_template=g.chat_template, freq_factors=ff,
        )
    except BaseException:
        g.close()
        raise


# --------------------------------------------------------------------------- entry point
def load_checkpoint(path: str | os.PathLike[str], spec: ModelSpec | None = None) -> Checkpoint:
    """Open a model for inference.

    Args:
        path: a model directory (``config.json`` + ``model.safetensors`` or
            ``model.safetensors.index.json``, optional ``tokenizer.json`` /
            ``tokenizer_config.json``), a ``.safetensors`` file (config.json
            beside it; GPT-2 config is inferred when absent), a
            ``*.safetensors.index.json``, or a ``.gguf`` file.
        spec: force an architecture instead of using config.json / GGUF metadata.

    Raises:
        LoadError: malformed files, pickle checkpoints, missing tensors, shape mismatches.
        UnsupportedModelError: architectures/features tinygraph does not implement.
    """
    p = Path(path)
    try:
        return _load_checkpoint(p, spec)
    except LoadError as exc:  # every message names the file it is about
        msg, parent = str(exc), str(p.parent)
        if str(p) in msg or (parent not in ("", ".") and parent + os.sep in msg):
            raise
        raise type(exc)(f"{p}: {exc}") from exc


def _load_checkpoint(p: Path, spec: ModelSpec | None) -> Checkpoint:
    # stat first: a FIFO or device must be refused before anything opens it (open() would block),
    # and an unreadable path must be a LoadError naming it, not a PermissionError from a glob
    if os.path.isdir(p):
        check_directory(p)
    else:
        check_regular_file(p, "checkpoint")
    if p.is_file() and p.suffix.lower() in _PICKLE_SUFFIXES:
        raise _refuse_pickle(p)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return _load_gguf_checkpoint(p, spec)
    if p.is_dir() and not any(p.glob("*.safetensors")) and not any(p.glob("*" + INDEX_SUFFIX)):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            check_regular_file(ggufs[0], "GGUF file")
            return _load_gguf_checkpoint(ggufs[0], spec)
    return _load_safetensors_checkpoint(p, spec)


__all__ = ["Checkpoint", "load_checkpoint"]
