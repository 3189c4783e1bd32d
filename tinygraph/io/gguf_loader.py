"""GGUF (llama.cpp) checkpoints: metadata -> TransformerConfig, tensors -> canonical float32 arrays.

Facts this module relies on:

* ggml stores dims innermost-first, so a GGUF tensor with ``ne = [in, out]``
  is the NumPy array ``[out, in]`` (HF orientation); the reader already
  reverses the dims for us.
* Quantised blocks run along the innermost (row) axis: Q8_0 = 34-byte blocks
  ``{f16 d, i8 q[32]}`` -> ``q*d``; Q4_0 = 18-byte ``{f16 d, u8 qs[16]}`` ->
  ``(q-8)*d``; Q4_1 = 20-byte ``{f16 d, f16 m, u8 qs[16]}`` -> ``q*d + m``;
  element ``j`` is the low nibble of ``qs[j]``, element ``j+16`` the high nibble.
  These and ggml's other block types (Q5_0/Q5_1, Q2_K..Q6_K) are decoded by
  ``tinygraph.quant``; F32/F16/BF16 here; any other type (IQ*, TQ*) goes through
  ``gguf.quants.dequantize``.
* llama.cpp's converter permutes the rows of LLaMA-architecture Q and K
  projections (``reshape(h, 2, rows/h/2, in).swapaxes(1, 2)``) so its
  interleaved ("normal") RoPE sees HF's rotate-half pairs. We undo that so every
  checkpoint has HF/"neox" layout. Only llama and granite are permuted (llama.cpp's "normal" RoPE
  families); the other architectures are NeoX-style and stored as HF has them.
* What each architecture's metadata means (Gemma's norms, Phi-3's fused tensors, partial rotary,
  soft-caps, sliding-window patterns, Granite's multipliers, ...) is in :mod:`.gguf_arch`.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import quant
from .config import TransformerConfig
from .errors import LoadError, UnsupportedModelError
from .files import open_regular
from .gguf_arch import (
    ARCH_SPECS,
    EXTRA_NAMES,
    FUSED_GATE_UP_ARCHS,
    NOT_WEIGHTS,
    PERMUTED_ARCHS,
    arch_config,
    arch_spec,
    check_supported,
    norm_eps_key,
    upgrade_spec,
 unpermute_rows)
from .gguf_moe import moe_parts
from .spec import ModelSpec

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT
except ImportError as _exc:  # pragma: no cover - gguf is a hard dependency in pyproject
    raise ImportError("tinygraph.io.gguf_loader needs the 'gguf' package (pip install gguf)") from _exc

# GGUF tensor name template -> canonical template ({i} = block index).
_GGUF_NAMES: tuple[tuple[str, str], ...] = (
    ("token_embd.weight", "tok_emb.weight"),
    ("position_embd.weight", "pos_emb.weight"),
    ("output_norm.weight", "final_norm.weight"),
    ("output_norm.bias", "final_norm.bias"),
    ("output.weight", "lm_head.weight"),
    ("blk.{i}.attn_norm.weight", "layers.{i}.attn_norm.weight"),
    ("blk.{i}.attn_norm.bias", "layers.{i}.attn_norm.bias"),
    ("blk.{i}.attn_q_norm.weight", "layers.{i}.attn.q_norm.weight"),
    ("blk.{i}.attn_k_norm.weight", "layers.{i}.attn.k_norm.weight"),
    ("blk.{i}.ffn_norm.weight", "layers.{i}.mlp_norm.weight"),
    ("blk.{i}.ffn_norm.bias", "layers.{i}.mlp_norm.bias"),
) + tuple(
    (f"blk.{{i}}.{g}.{kind}", f"layers.{{i}}.{c}.{kind}")
    for g, c in (
        ("attn_q", "attn.q"), ("attn_k", "attn.k"), ("attn_v", "attn.v"), ("attn_output", "attn.o"),
        ("ffn_gate", "mlp.gate"), ("ffn_up", "mlp.up"), ("ffn_down", "mlp.down"),
    )
    for kind in ("weight", "bias")
) + EXTRA_NAMES
_FUSED_QKV = re.compile(r"^blk\.(\d+)\.attn_qkv\.(weight|bias)$")
_FFN_UP = re.compile(r"^blk\.(\d+)\.ffn_up\.(weight|bias)$")
_NOT_WEIGHTS = NOT_WEIGHTS  # rope factors, exposed separately


def _rx(t: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(t).replace(r"\{i\}", r"(\d+)") + "$")


_GGUF_RULES = [(_rx(g), c) for g, c in _GGUF_NAMES]


# --------------------------------------------------------------------------- reader
GGUF_VERSIONS = (2, 3)
_GGML_MAX_DIMS = 4
# Smallest encodings: a metadata entry is key length (8) + value type (4) + >= 1 value byte; a
# tensor info is name length (8) + n_dims (4) + type (4) + offset (8).
_MIN_KV_BYTES, _MIN_TENSOR_INFO_BYTES, _HEADER_BYTES = 13, 24, 24

# Exceptions the gguf package's reader raises on corrupt input (it was written for valid files):
# short reads surface as IndexError/ValueError from NumPy, unknown enum values as ValueError,
# duplicate keys as KeyError, undecodable names as UnicodeDecodeError, nested arrays as
# RecursionError, ...
_READER_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError, RecursionError,
                  AttributeError, AssertionError, struct.error, OSError)


def _decodable(qtype: Any) -> bool:
    """Whether :func:`dequantize` can decode ggml type ``qtype``."""
    if qtype in (QT.F32, QT.F16, QT.BF16) or int(qtype) in _QUANT_IDS:
        return True
    traits = getattr(gguf.quants, "_type_traits", None)
    return traits is None or qtype in traits  # unknown gguf version: let dequantize decide


class _Reader(gguf.GGUFReader):
    """GGUFReader that slices a plain ndarray view of its memmap, and checks tensor infos.

    Why the view: the stock reader slices an ``np.memmap`` ~10^6 times while parsing a
    50k-token vocabulary, and every memmap slice runs Python-level
    ``__array_finalize__``; a base-class view of the same mapping is ~2x faster
    to parse and behaves identically (it still references the mmap).

    Why the checks: the stock reader trusts the tensor infos; a corrupt one can declare a type id
    that does not exist, more than 4 dims, data past the end of the file (which it silently
    shortens) or data overlapping another tensor. ``_build_tensors`` refuses those first, with a
    :class:`LoadError` naming the tensor.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)  # type: ignore[assignment]
        arr = super()._get(offset, dtype, count, override_order)
        # The stock reader silently returns fewer items at the end of the file; an array of
        # 2**64 scalars declared at EOF would then loop for ever, consuming 0 bytes per item.
        if len(arr) < int(count):
            raise LoadError(f"truncated: {int(count)} x {np.dtype(dtype).name} at offset {offset} "
                            f"run past the end of the file ({len(self.data)} bytes)")
        return arr

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        size = len(self.data)
        align = int(self.alignment)
        spans: list[tuple[int, int, str]] = []
        for field in fields:
            _nlen, name_data, _ndims, dims, raw_dtype, offset_tensor = field.parts
            name = bytes(name_data).decode("utf-8", errors="replace")
            where = f"tensor {name!r}"
            if len(dims) > _GGML_MAX_DIMS:
                raise LoadError(f"{where}: {len(dims)} dimensions (GGUF allows at most {_GGML_MAX_DIMS})")
            try:
                qtype = QT(int(raw_dtype[0]))
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise LoadError(f"{where}: unknown GGML tensor type id {int(raw_dtype[0])}") from None
            shape = [int(d) for d in dims.tolist()]
            n = math.prod(shape)
            if shape and shape[0] % block:
                raise LoadError(f"{where}: {qtype.name} rows of {shape[0]} values are not a whole number "
                                f"of {block}-value blocks")
            nbytes = n // block * type_size
            rel = int(offset_tensor[0])
            if rel % align:
                raise LoadError(f"{where}: data offset {rel} is not a multiple of the alignment {align}")
            begin = int(start_offs) + rel
            if begin + nbytes > size:
                raise LoadError(f"{where}: {qtype.name} {tuple(reversed(shape))} needs bytes "
                                f"[{begin}, {begin + nbytes}) but the file has {size}: truncated or corrupt")
            if nbytes:
                spans.append((begin, begin + nbytes, name))
        spans.sort()
        for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise LoadError(f"tensors {n0!r} and {n1!r} overlap in the data section")
        super()._build_tensors(start_offs, fields)


def _check_header(path: Path) -> None:
    """Magic, version and counts, checked before the gguf reader sees the file."""
    try:
        size = path.stat().st_size
        with open_regular(path, "GGUF file") as f:  # a FIFO or device is refused, never blocks
            head = f.read(_HEADER_BYTES)
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc}") from exc
    if head[:4] != b"GGUF":
        raise LoadError(f"{path}: not a readable GGUF file: bad magic {head[:4]!r} (expected b'GGUF')")
    if len(head) < _HEADER_BYTES:
        raise LoadError(f"{path}: not a readable GGUF file: truncated header ({size} bytes, need {_HEADER_BYTES})")
    order = "little"
    version = int.from_bytes(head[4:8], order)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = "big"
        version = int.from_bytes(head[4:8], order)
    if version not in GGUF_VERSIONS:
        raise LoadError(f"{path}: GGUF version {version} is not supported (supported: "
                        f"{', '.join(map(str, GGUF_VERSIONS))})")
    n_tensors = int.from_bytes(head[8:16], order)
    n_kv = int.from_bytes(head[16:24], order)
    if n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES > size - _HEADER_BYTES:
        raise LoadError(f"{path}: not a readable GGUF file: the header declares {n_tensors} tensors and {n_kv} "
                        f"metadata entries, which cannot fit in {size} bytes (truncated or corrupt)")


def open_reader(path: Path) -> _Reader:
    """A checked GGUF reader for ``path``; any corruption raises LoadError naming the file."""
    _check_header(path)
    try:
        # corrupt offsets make the reader's uint64 arithmetic wrap; the checks catch the result
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return _Reader(str(path), "r")
    except LoadError as exc:  # raised by _Reader's own checks
        raise LoadError(f"{path}: not a readable GGUF file: {exc}") from None
    except _READER_ERRORS as exc:
        raise LoadError(f"{path}: not a readable GGUF file: {type(exc).__name__}: {exc}"[:500]) from exc


# --------------------------------------------------------------------------- metadata
def field_value(reader: Any, key: str, default: Any = None) -> Any:
    """Python value of metadata ``key`` (str, int, float, bool or list), or ``default``.

    Decoded from the reader's raw parts so it works across gguf package versions.
    """
    f = reader.fields.get(key)
    if f is None or not f.types:
        return default
    if f.types[0] == VT.ARRAY:
        sub = f.types[-1] if len(f.types) > 1 else None
        if sub == VT.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        if not f.data:
            return []
        return np.concatenate([np.asarray(f.parts[i]).ravel() for i in f.data]).tolist()
    if f.types[0] == VT.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    return np.asarray(f.parts[f.data[0]]).ravel()[0].item()


def _clean_f32(v: float) -> float:
    # GGUF stores float32; 9.999999747e-06 -> 1e-05 so configs compare equal to HF's.
    return float(str(np.float32(v)))


def _uniform(v: Any, key: str, path: Path) -> Any:
    """Per-layer arrays (e.g. head counts) are only supported when all equal."""
    if isinstance(v, list):
        if not v or any(x != v[0] for x in v):
            raise UnsupportedModelError(f"{path}: {key} varies per layer ({v[:8]}...), not supported")
        return v[0]
    return v


# --------------------------------------------------------------------------- dequantisation
_QUANT_IDS = frozenset(t.ggml_id for t in quant.QUANT_TYPES.values())


def dequantize(data: np.ndarray, qtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Decode raw GGUF tensor ``data`` of ggml type ``qtype`` to float32 with NumPy ``shape``.

    ggml's block types are decoded by :mod:`tinygraph.quant` (blocks run along the last axis);
    other types (IQ*, TQ*, ...) by ``gguf.quants``."""
    qtype = QT(int(qtype))
    if qtype == QT.F32:
        return np.asarray(data, dtype=np.float32).reshape(shape)
    if qtype == QT.F16:
        return np.asarray(data).astype(np.float32).reshape(shape)
    raw = np.asarray(data).view(np.uint8).reshape(-1)
    if qtype == QT.BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if int(qtype) in _QUANT_IDS:
        return quant.dequantize(raw, int(qtype), shape[-1]).reshape(shape)
    try:
        out = gguf.quants.dequantize(np.asarray(data), qtype)
    except NotImplementedError as exc:
        raise UnsupportedModelError(f"GGUF tensor type {qtype.name} cannot be dequantised: {exc}") from exc
    return np.asarray(out, dtype=np.float32).reshape(shape)


# --------------------------------------------------------------------------- file
@dataclass(frozen=True)
class GGUFSource:
    """How a canonical tensor is read: GGUF tensor, optional expert (a 3-D expert tensor's [e]),
    optional row range (fused qkv), optional un-permute."""

    gguf_name: str
    rows: tuple[int, int] | None = None
    unpermute_heads: int | None = None
    expert: int | None = None


class GGUFFile:
    """An opened ``.gguf`` file: config, spec, canonical tensor plan.

    The reader memory-maps the file; tensors are decoded on demand by :meth:`load`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.reader = None
        self.reader = open_reader(self.path)
        try:
            self._tensors = {t.name: t for t in self.reader.tensors}
            arch = self.meta("general.architecture", "")
            self.arch: str = arch if isinstance(arch, str) else repr(arch)
            if self.arch not in ARCH_SPECS:
                raise UnsupportedModelError(
                    f"{self.path}: GGUF architecture {self.arch!r} is not supported "
                    f"(supported: {', '.join(ARCH_SPECS)})"[:500]
                )
            check_supported(self)
            self.config: TransformerConfig = self._config()
            self.plan: dict[str, GGUFSource] = self._plan()
            # bias / q-k-norm flags from the tensors present, as for safetensors
            self.spec: ModelSpec = upgrade_spec(arch_spec(self.arch, self.config.moe), set(self.plan))
        except LoadError as exc:
            self.close()
            if str(self.path) in str(exc):
                raise
            raise type(exc)(f"{self.path}: {exc}") from exc
        except _READER_ERRORS as exc:
            self.close()
            raise LoadError(f"{self.path}: bad GGUF metadata: {type(exc).__name__}: {exc}"[:500]) from exc
        for canon, src in self.plan.items():
            qtype = self._tensors[src.gguf_name].tensor_type
            if not _decodable(qtype):
                self.close()
                raise UnsupportedModelError(
                    f"{self.path}: tensor {src.gguf_name!r} ({canon}) has type {QT(int(qtype)).name}, "
                    "which tinygraph cannot decode")

    @property
    def tensor_names(self) -> Any:
        """Names of the tensors stored in the file (a set-like view)."""
        return self._tensors.keys()

    # ---- metadata
    def meta(self, key: str, default: Any = None) -> Any:
        return field_value(self.reader, key, default)

    def _need(self, key: str) -> Any:
        v = self.meta(key)
        if v is None:
            raise LoadError(f"{self.path}: required GGUF metadata {key!r} is missing")
        return _uniform(v, key, self.path)

    def _int(self, key: str, default: Any = None, required: bool = False) -> int | None:
        """Integer metadata ``key`` (per-layer lists must be uniform); LoadError naming the key
        when it has another type."""
        v = self._need(key) if required else _uniform(self.meta(key, default), key, self.path)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise LoadError(f"{self.path}: GGUF metadata {key!r} must be an integer, got {v!r}"[:300])
        return int(v)

    def _float(self, key: str, default: float) -> float:
        v = _uniform(self.meta(key, default), key, self.path)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LoadError(f"{self.path}: GGUF metadata {key!r} must be a finite number, got {v!r}"[:300])
        return _clean_f32(v)

    def _config(self) -> TransformerConfig:
        a = self.arch
        hidden = self._int(f"{a}.embedding_length", required=True)
        heads = self._int(f"{a}.attention.head_count", required=True)
        kv = self._int(f"{a}.attention.head_count_kv", heads)
        head_dim = self._int(f"{a}.attention.key_length")
        tokens = self.meta("tokenizer.ggml.tokens")
        if tokens is not None and not isinstance(tokens, list):
            raise LoadError(f"{self.path}: GGUF metadata 'tokenizer.ggml.tokens' must be a list of strings")
        vocab = len(tokens) if tokens else self._int(f"{a}.vocab_size")
        emb = self._tensors.get("token_embd.weight")
        if emb is not None:  # the embedding is what the model actually indexes
            vocab = int(emb.shape[-1])
        if not vocab:
            raise LoadError(f"{self.path}: cannot determine vocab size (no token list, vocab_size or token_embd)")
        scaling = None
        st = self.meta(f"{a}.rope.scaling.type")
        if st and st != "none":
            scaling = {"rope_type": str(st), "factor": self._float(f"{a}.rope.scaling.factor", 1.0)}
            orig = self._int(f"{a}.rope.scaling.original_context_length")
            if orig:
                scaling["original_max_position_embeddings"] = orig
        # Chat models end turns with an end-of-turn token that may differ from EOS
        # (<|eot_id|>, <|im_end|>); generation must stop on all of them.
        stops = [self._int(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        eos_ids = list(dict.fromkeys(x for x in stops if x is not None))
        eos: int | list[int] | None = eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None)
        bos = self._int("tokenizer.ggml.bos_token_id")
        kw = dict(
            model_type=a,
            vocab_size=int(vocab),
            hidden_size=hidden,
            num_layers=self._int(f"{a}.block_count", required=True),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim or None,
            intermediate_size=self._int(f"{a}.feed_forward_length", required=True),
            max_position_embeddings=self._int(f"{a}.context_length", 2048),
            norm_eps=self._float(norm_eps_key(a), 1e-5),
            rope_theta=self._float(f"{a}.rope.freq_base", 10000.0),
            rope_scaling=scaling,
            tie_word_embeddings="output.weight" not in self._tensors,
            bos_token_id=bos,
            eos_token_id=eos,
        )
        # per architecture: activation, sliding windows (every layer, or llama.cpp's patterns),
        # partial rotary, soft-caps, multipliers, LongRoPE, ...
        return TransformerConfig(**arch_config(self, kw))

    # ---- tensors
    def _plan(self) -> dict[str, GGUFSource]:
        cfg = self.config
        assert cfg.head_dim is not None and cfg.num_kv_heads is not None
        q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        permute = self.arch in PERMUTED_ARCHS
        assert cfg.intermediate_size is not None
        inter = cfg.intermediate_size
        plan: dict[str, GGUFSource] = {}
        self.unused: list[str] = []
        for name in self._tensors:
            m = _FUSED_QKV.match(name)
            if m:  # GPT-2 style fused projection: rows are [q; k; v]
                i, kind = m.groups()
                bounds = {"q": (0, q_out), "k": (q_out, q_out + kv_out), "v": (q_out + kv_out, q_out + 2 * kv_out)}
                for p, rows in bounds.items():
                    plan[f"layers.{i}.attn.{p}.{kind}"] = GGUFSource(name, rows=rows)
                continue
            m = _FFN_UP.match(name)
            if m and self.arch in FUSED_GATE_UP_ARCHS and self.stored_shape(name)[0] == 2 * inter:
                i, kind = m.groups()  # Phi-3's fused ffn_up: gate rows, then up rows
                plan[f"layers.{i}.mlp.gate.{kind}"] = GGUFSource(name, rows=(0, inter))
                plan[f"layers.{i}.mlp.up.{kind}"] = GGUFSource(name, rows=(inter, 2 * inter))
                continue
            for rx, canon in _GGUF_RULES:
                m = rx.match(name)
                if m:
                    c = canon.replace("{i}", m.group(1)) if m.groups() else canon
                    heads = None
                    if permute and (".attn.q." in c or ".attn.k." in c):
                        heads = cfg.num_heads if ".attn.q." in c else cfg.num_kv_heads
                    plan[c] = GGUFSource(name, unpermute_heads=heads)
                    break
            else:
                parts = moe_parts(self, name, cfg.moe)
                if parts is not None:  # router, shared expert, or one canonical tensor per expert
                    plan.update((c, GGUFSource(name, rows=r, expert=e)) for c, e, r in parts)
                elif name not in _NOT_WEIGHTS:
                    self.unused.append(name)
        if cfg.tie_word_embeddings:
            plan.pop("lm_head.weight", None)
        return plan

    def stored_shape(self, gguf_name: str) -> tuple[int, ...]:
        """NumPy-order shape of a GGUF tensor (ggml dims reversed)."""
        return tuple(int(x) for x in reversed(self._tensors[gguf_name].shape.tolist()))

    def shape(self, canonical: str) -> tuple[int, ...]:
        src = self.plan[canonical]
        shape = self._src_shape(src)
        if src.rows is not None:
            shape = (src.rows[1] - src.rows[0],) + shape[1:]
        return shape

    def _src_shape(self, src: GGUFSource) -> tuple[int, ...]:
        """Stored shape of ``src``'s tensor, or of its expert's slice."""
        shape = self.stored_shape(src.gguf_name)
        return shape if src.expert is None else shape[1:]

    def tensor_type(self, gguf_name: str) -> str:
        return QT(int(self._tensors[gguf_name].tensor_type)).name

    def load_raw(self, gguf_name: str, expert: int | None = None) -> np.ndarray:
        """Dequantised float32 array of a GGUF tensor (or of expert ``expert``'s slice of a 3-D
        expert tensor: only its blocks are decoded), NumPy shape, no remapping."""
        if self.reader is None:
            raise LoadError(f"{self.path}: file was closed; cannot read tensor {gguf_name!r}")
        t = self._tensors[gguf_name]
        shape = self._src_shape(GGUFSource(gguf_name, expert=expert))
        kind = self.tensor_type(gguf_name)
        try:
            return dequantize(t.data if expert is None else t.data[expert], t.tensor_type, shape)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{self.path}: tensor {gguf_name!r}: {exc}") from exc
        except (ValueError, TypeError, IndexError, KeyError, AssertionError) as exc:
            raise LoadError(f"{self.path}: tensor {gguf_name!r}: cannot decode {kind} {shape}: {exc}") from exc

    def quant_type(self, canonical: str) -> Any:
        """The tinygraph block dtype (``tinygraph.dtypes.q4_k``, ...) a canonical tensor is stored
        in, or None for float types and the types tinygraph has no kernels for (those load
        dequantised). LoadError when its rows are not whole blocks."""
        from ..dtypes import QUANT_BY_GGML_ID

        src = self.plan[canonical]
        t = self._tensors[src.gguf_name]
        dt = QUANT_BY_GGML_ID.get(int(t.tensor_type))
        shape = self._src_shape(src)
        if dt is None or len(shape) != 2:
            return None
        if shape[1] % dt.block:
            raise LoadError(f"{self.path}: tensor {src.gguf_name!r} ({dt.name}): rows of {shape[1]} elements are "
                            f"not whole blocks of {dt.block}")
        return dt

    def load_quant(self, canonical: str) -> np.ndarray:
        """Raw blocks of a canonical tensor of a block type (see :meth:`quant_type`): uint8 [rows,
        row bytes], split and un-permuted by whole rows (ggml blocks never cross a row)."""
        if self.reader is None:
            raise LoadError(f"{self.path}: file was closed; cannot read tensor {canonical!r}")
        src = self.plan[canonical]
        t = self._tensors[src.gguf_name]
        dt = self.quant_type(canonical)
        rows, k = self._src_shape(src)
        rb = dt.nbytes(k)
        where = f"{self.path}: tensor {src.gguf_name!r} ({dt.name} [{rows}, {k}])"
        try:  # an expert's rows are whole blocks: its slice of the 3-D tensor is its raw blocks
            raw = np.asarray(t.data if src.expert is None else t.data[src.expert]).view(np.uint8).reshape(-1)
        except (ValueError, TypeError, IndexError) as exc:
            raise LoadError(f"{where}: cannot read its blocks: {exc}") from exc
        if raw.size != rows * rb:
            raise LoadError(f"{where} holds {raw.size} bytes, expected {rows * rb}")
        return self._canonical_rows(src, raw.reshape(rows, rb), where)

    def load(self, canonical: str) -> np.ndarray:
        """Canonical float32 array: dequantised, split, un-permuted, contiguous."""
        src = self.plan[canonical]
        w = self.load_raw(src.gguf_name, src.expert)
        return self._canonical_rows(src, w, f"{self.path}: tensor {src.gguf_name!r}")

    @staticmethod
    def _canonical_rows(src: GGUFSource, w: np.ndarray, where: str) -> np.ndarray:
        """The rows of stored tensor ``w`` [rows, ...] (values or raw blocks: ggml blocks never
        cross a row) that make the canonical tensor: its row range (fused q/k/v), un-permuted."""
        if src.rows is not None:
            if src.rows[1] > w.shape[0]:
                raise LoadError(f"{where} has {w.shape[0]} rows, the fused tensor's part needs {src.rows[1]}")
            w = w[src.rows[0]: src.rows[1]]
        if src.unpermute_heads:
            try:
                w = unpermute_rows(w, src.unpermute_heads)
            except LoadError as exc:
                raise LoadError(f"{where}: {exc}") from exc
        return np.ascontiguousarray(w)

    def rope_freq_factors(self) -> np.ndarray | None:
        """llama.cpp's ``rope_freqs.weight`` (Llama 3.x scaling divisors), float32 [head_dim/2], if present."""
        if "rope_freqs.weight" not in self._tensors:
            return None
        return np.array(self.load_raw("rope_freqs.weight"), dtype=np.float32).reshape(-1)

    @property
    def chat_template(self) -> str | None:
        v = self.meta("tokenizer.chat_template")
        return str(v) if v else None

    def tokenizer(self) -> Any:
        from .tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(self.reader)

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        # GGUFReader keeps an np.memmap; dropping our references lets the OS unmap it.
        self._tensors = {}
        self.reader = None  # type: ignore[assignment]
        self.plan = {}


def load_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Open a ``.gguf`` file (validates architecture and metadata; decodes no tensors)."""
    return GGUFFile(path)


def __getattr__(name: str) -> Any:
    # tokenizer helpers live in tokenizer.py; keep them reachable from here too.
    if name in ("tokenizer_from_gguf", "apply_chat_template"):
        from . import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(name)


__all__ = ["GGUFFile", "GGUFSource", "load_gguf", "dequantize", "unpermute_rows", "field_value", "ARCH_SPECS"]
