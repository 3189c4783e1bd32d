"""RoPE scalings as per-pair frequency divisors plus one attention factor.

Every supported scaling is reduced to what the existing ``rope`` op (and its CUDA kernel) already
takes: divisors ``freq_factors`` [rotary_dim/2] (``inv_freq_scaled = inv_freq / factors``) and a
float ``attention_factor`` that HF multiplies into cos and sin (so into every rotated element of
q and k; the model folds it into the attention scale, or scales the rotated part under partial
rotary). Nothing here needs a new kernel.

Types (HF transformers' ``modeling_rope_utils``, reimplemented from their definitions):
- ``linear``: every frequency divided by ``factor``.
- ``llama3``: wavelength bands kept / smoothed / divided by ``factor``.
- ``yarn``: a ramp between interpolated (``/ factor``) and original frequencies over the pairs,
  with an attention factor ``0.1 ln(factor) + 1`` (or from ``mscale`` / ``mscale_all_dim``).
- ``longrope`` (Phi-3): ``short_factor`` for a forward whose last position + 1 is at most
  ``original_max_position_embeddings``, ``long_factor`` beyond (HF picks per forward call, from
  the largest position in it), attention factor ``sqrt(1 + ln(s) / ln(original))`` with
  ``s = max_position_embeddings / original`` unless given.
- ``dynamic`` (NTK): plain frequencies up to ``max_position_embeddings``; a forward call whose
  last position + 1 = ``L`` exceeds it uses the base ``theta * (factor L / max - (factor - 1)) **
  (d / (d - 2))`` (:func:`dynamic_factors`; HF recomputes per call, keys cached earlier keep their
  rotation). HF keeps the largest frequencies seen until a call is shorter than
  ``max_position_embeddings``; here every step uses its own length (the same for one growing
  sequence).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import LoadError, UnsupportedModelError

if TYPE_CHECKING:
    from .config import TransformerConfig

ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope", "dynamic")


@dataclass(frozen=True)
class RopeScaling:
    """A config's RoPE scaling, ready for the ``rope`` op.

    Attributes:
        factors: float32 [rotary_dim/2] divisors of the frequencies, or None (plain RoPE); for
            longrope the short set.
        long_factors: longrope's long set (float32 [rotary_dim/2]), else None.
        switch_at: longrope: a step whose last position is >= this (positions are 0-based, so
            ``start + T > original_max_position_embeddings``) uses ``long_factors``.
        attention_factor: HF's ``attention_scaling`` (multiplies cos and sin); 1.0 when unused.
        dynamic: dynamic NTK's ``factor`` (its divisors depend on the step: :func:`dynamic_factors`;
            ``factors`` are then ones, the divisors up to ``switch_at`` = max_position_embeddings).
    """

    factors: np.ndarray | None = None
    long_factors: np.ndarray | None = None
    switch_at: int | None = None
    attention_factor: float = 1.0
    dynamic: float | None = None


def rotary_pairs(cfg: "TransformerConfig") -> tuple[int, int]:
    """(rotary_dim, rotary_dim // 2): the frequencies span ``rotary_dim`` (partial rotary) or the head."""
    assert cfg.head_dim is not None
    rd = cfg.rotary_dim or cfg.head_dim
    return rd, rd // 2


def rope_inv_freq(cfg: "TransformerConfig") -> np.ndarray:
    """Unscaled RoPE inverse frequencies, shape [rotary_dim // 2], float64, units rad/position.

    ``inv_freq[j] = theta ** (-2j / rotary_dim)``.
    """
    rd, _ = rotary_pairs(cfg)
    return 1.0 / (cfg.rope_theta ** (np.arange(0, rd, 2, dtype=np.float64) / rd))


def _inv_freq32(theta: float, dim: int) -> np.ndarray:
    """float32 ``1 / theta ** (arange(0, dim, 2) / dim)``, as torch computes it in HF (and as the
    ``rope`` op does), so divisors computed against it reproduce HF's frequencies."""
    expo = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(theta) ** expo)).astype(np.float32)


def _divisors(inv_freq_scaled: np.ndarray, theta: float, dim: int) -> np.ndarray:
    """The divisors that turn the op's own float32 frequencies into ``inv_freq_scaled``."""
    return (_inv_freq32(theta, dim).astype(np.float64) / inv_freq_scaled.astype(np.float64)).astype(np.float32)


def rope_scaling(cfg: "TransformerConfig") -> RopeScaling:
    """The :class:`RopeScaling` of ``cfg`` (plain RoPE: no factors). Unknown types raise
    UnsupportedModelError naming the model type; missing or bad parameters raise LoadError."""
    sc = cfg.rope_scaling
    if not sc or sc.get("rope_type", "default") == "default":
        return RopeScaling()
    rtype = sc["rope_type"]
    where = f"config ({cfg.model_type}): rope_scaling {rtype!r}"
    if rtype not in ROPE_TYPES:
        raise UnsupportedModelError(f"{where} is not supported (supported: {', '.join(ROPE_TYPES)})")
    dim, half = rotary_pairs(cfg)
    try:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # checked below instead
            if rtype == "linear":
                out = RopeScaling(np.full(half, float(sc["factor"]), dtype=np.float32))
            elif rtype == "llama3":
                out = RopeScaling(_llama3(cfg, sc, dim, where))
            elif rtype == "yarn":
                out = _yarn(cfg, sc, dim, where)
            elif rtype == "longrope":
                out = _longrope(cfg, sc, dim, where)
            else:
                out = RopeScaling(np.ones(half, np.float32), switch_at=cfg.max_position_embeddings,
                                  dynamic=float(sc["factor"]))
    except KeyError as exc:
        raise LoadError(f"{where}: missing parameter {exc.args[0]!r}") from exc
    # extreme parameters (a factor of 0, a base that underflows float32) would give inf/NaN
    # rotations, i.e. silently wrong logits: refuse them here
    base = _inv_freq32(cfg.rope_theta, dim)
    for f in (out.factors, out.long_factors):
        if f is None:
            continue
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            freqs = base / f
        if not (np.all(np.isfinite(f)) and np.all(f > 0) and np.all(np.isfinite(freqs))):
            raise LoadError(f"{where}: its parameters (with rope_theta {cfg.rope_theta}) give RoPE frequencies "
                            "that are not finite and positive in float32")
    if not (math.isfinite(out.attention_factor) and out.attention_factor > 0):
        raise LoadError(f"{where}: attention factor {out.attention_factor} is not finite and positive")
    return out


def rope_freq_factors(cfg: "TransformerConfig") -> np.ndarray | None:
    """Per-pair divisors of the RoPE frequencies, float32 [rotary_dim // 2]; None for plain RoPE
    (longrope: the short set). See :func:`rope_scaling`."""
    return rope_scaling(cfg).factors


def dynamic_factors(cfg: "TransformerConfig", factor: float, end: int) -> np.ndarray:
    """Dynamic NTK's divisors [rotary_dim/2] float32 for a forward call over positions ``< end``:
    ones up to ``max_position_embeddings``, else those of the enlarged base (float32, as torch
    computes it in HF)."""
    dim, half = rotary_pairs(cfg)
    mx = cfg.max_position_embeddings
    if end <= mx:
        return np.ones(half, np.float32)
    f32 = np.float32
    grow = (f32(factor) * f32(end) / f32(mx) - f32(factor - 1)) ** f32(dim / (dim - 2))
    base = f32(cfg.rope_theta) * f32(grow)
    inv = (f32(1) / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(f32) / f32(dim)))).astype(f32)
    return _divisors(inv, cfg.rope_theta, dim)


def _original_max(cfg: "TransformerConfig", sc: dict) -> int:
    """HF's pretraining length: the scaling's ``original_max_position_embeddings``, else
    ``max_position_embeddings`` (the config parser has already given a top-level value priority)."""
    return int(sc.get("original_max_position_embeddings") or cfg.max_position_embeddings)


def _llama3(cfg: "TransformerConfig", sc: dict, dim: int, where: str) -> np.ndarray:
    """Llama 3: wavelengths shorter than ``old_ctx / high_freq_factor`` keep their frequency, those
    longer than ``old_ctx / low_freq_factor`` are divided by ``factor``, the band between is
    interpolated. Bands are classified on float32 frequencies, as HF does, so edges agree."""
    factor = float(sc["factor"])
    low, high = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
    old_ctx = float(sc["original_max_position_embeddings"])
    if high == low:
        raise LoadError(f"{where}: high_freq_factor must differ from low_freq_factor")
    wavelen32 = (np.float32(2 * math.pi) / _inv_freq32(cfg.rope_theta, dim)).astype(np.float32)
    smooth = (old_ctx / wavelen32.astype(np.float64) - low) / (high - low)
    factors = np.ones(dim // 2, dtype=np.float64)
    factors[wavelen32 > old_ctx / low] = factor
    medium = ~(wavelen32 < old_ctx / high) & ~(wavelen32 > old_ctx / low)
    # smoothed_inv_freq = inv_freq * ((1 - s) / factor + s)  => the divisor is its reciprocal
    factors[medium] = 1.0 / ((1.0 - smooth[medium]) / factor + smooth[medium])
    return factors.astype(np.float32)


def _yarn(cfg: "TransformerConfig", sc: dict, dim: int, where: str) -> RopeScaling:
    """YaRN: pair ``j`` mixes the interpolated frequency ``inv_freq / factor`` and the original one
    with weight ``1 - ramp(j)``, ramp rising linearly between the pairs that turn ``beta_fast`` and
    ``beta_slow`` times over the original context (floored / ceiled unless ``truncate`` is false)."""
    orig = _original_max(cfg, sc)
    factor = sc.get("factor")
    factor = float(factor) if factor is not None else cfg.max_position_embeddings / orig
    theta = cfg.rope_theta

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    af = sc.get("attention_factor")
    if af is None:
        m, m_all = sc.get("mscale"), sc.get("mscale_all_dim")
        af = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = float(sc.get("beta_fast") or 32), float(sc.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:  # the pair that turns `rotations` times over orig
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if sc.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001  # HF's guard against a zero-width ramp
    # float32 throughout, as torch computes it
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    keep = (np.float32(1) - ramp).astype(np.float32)            # weight of the original frequency
    pos_freqs = (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32)
    extrap = (np.float32(1) / pos_freqs).astype(np.float32)
    interp = (np.float32(1) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv_freq = (interp * (np.float32(1) - keep) + extrap * keep).astype(np.float32)
    return RopeScaling(_divisors(inv_freq, theta, dim), attention_factor=float(af))


def _longrope(cfg: "TransformerConfig", sc: dict, dim: int, where: str) -> RopeScaling:
    """LongRoPE: per-pair divisors ``short_factor`` / ``long_factor`` (each [rotary_dim/2]) of the
    plain frequencies; which set a step uses depends on its last position (see RopeScaling)."""
    orig = _original_max(cfg, sc)
    sets = []
    for key in ("short_factor", "long_factor"):
        f = sc[key]
        if not isinstance(f, list) or len(f) != dim // 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in f):
            raise LoadError(f"{where}: {key} must be a list of {dim // 2} finite numbers > 0 (rotary_dim {dim} / 2)")
        # HF: inv_freq = 1 / (ext_factors * base ** (arange(0, dim, 2) / dim)) in float32
        base = (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32)
                                              / np.float32(dim))).astype(np.float32)
        inv = (np.float32(1) / (np.asarray(f, np.float32) * base)).astype(np.float32)
        sets.append(_divisors(inv, cfg.rope_theta, dim))
    factor = sc.get("factor")
    factor = float(factor) if factor is not None else cfg.max_position_embeddings / orig
    af = sc.get("attention_factor")
    if af is None:
        af = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    return RopeScaling(sets[0], sets[1], orig, float(af))


__all__ = ["RopeScaling", "ROPE_TYPES", "rope_scaling", "rope_freq_factors", "rope_inv_freq", "rotary_pairs",
           "dynamic_factors"]
