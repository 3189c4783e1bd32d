"""tinygraph.quant: ggml block codecs checked against the gguf package's NumPy reference."""
from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygraph import quant
from tinygraph.errors import TinygraphError

NAMES = list(quant.QUANT_TYPES)
# types gguf.quants can quantize (its encoders follow ggml's quantize_row_*_ref)
REF_QUANTIZE = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
# byte offsets of each type's f16 fields (d, and m/dmin where it has one), from ggml's block structs
F16_FIELDS = {
    "q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2),
    "q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,),
}
# relative RMS error of quantize -> dequantize on standard normal data: bound (measured, seed 1,
# 64 x 1024 values: q8_0 0.54%, q4_0 8.6%, q4_1 7.9%, q5_0 4.3%, q5_1 3.8%, q2_k 27.4%,
# q3_k 14.4%, q4_k 7.4%, q5_k 3.7%, q6_k 1.7%)
ERROR_BOUND = {
    "q8_0": 0.006, "q4_0": 0.095, "q4_1": 0.087, "q5_0": 0.048, "q5_1": 0.042,
    "q2_k": 0.30, "q3_k": 0.16, "q4_k": 0.08, "q5_k": 0.04, "q6_k": 0.019,
}


def ref_type(name: str) -> QT:
    return QT[name.upper()]


def random_blocks(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random raw blocks [*shape, block_bytes]: random quant bytes, random finite f16 scales
    (every finite f16 bit pattern: subnormals, zeros, both signs, up to 65504)."""
    qt = quant.QUANT_TYPES[name]
    raw = rng.integers(0, 256, (*shape, qt.block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[name]:
        bits = rng.integers(0, 1 << 16, shape, dtype=np.uint16)
        inf_nan = (bits & 0x7C00) == 0x7C00
        bits[inf_nan] &= np.uint16(0xBFFF)  # clear the exponent's top bit: finite
        raw[..., off:off + 2] = bits[..., None].view(np.uint8).reshape(*shape, 2)
    return raw


def reference_quantize(x: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.quantize(x, ref_type(name))


def reference_dequantize(raw: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, ref_type(name))


# --------------------------------------------------------------------------- the type table
def test_table_matches_gguf() -> None:
    assert len(NAMES) == 10
    for name, qt in quant.QUANT_TYPES.items():
        ref = ref_type(name)
        assert qt.name == name and qt.ggml_id == int(ref)
        assert (qt.block, qt.block_bytes) == gguf.GGML_QUANT_SIZES[ref]
        assert quant.row_bytes(name, 3 * qt.block) == 3 * qt.block_bytes


def test_quant_type_resolution() -> None:
    class Named:
        name = "q4_k"

    q4k = quant.QUANT_TYPES["q4_k"]
    for spelling in ("q4_k", "Q4_K", QT.Q4_K, 12, np.int64(12), q4k, Named()):
        assert quant.quant_type(spelling) is q4k


# --------------------------------------------------------------------------- dequantize
@pytest.mark.parametrize("name", NAMES)
def test_dequantize_matches_gguf(name: str) -> None:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    block = quant.QUANT_TYPES[name].block
    for shape in [(1, 1), (3, 2), (5, 7, 3), (1, 9)]:
        raw = random_blocks(name, shape[:-1] + (shape[-1],), rng).reshape(*shape[:-1], -1)
        k = shape[-1] * block
        out = quant.dequantize(raw, name, k)
        assert out.dtype == np.float32 and out.shape == shape[:-1] + (k,)
        np.testing.assert_array_equal(out, reference_dequantize(raw, name), err_msg=f"{name} {shape}")
        assert np.isfinite(out).all()  # finite scales give finite values


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(NAMES), rows=st.integers(0, 6), blocks=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_dequantize_matches_gguf_property(name: str, rows: int, blocks: int, seed: int) -> None:
    qt = quant.QUANT_TYPES[name]
    raw = random_blocks(name, (rows, blocks), np.random.default_rng(seed)).reshape(rows, blocks * qt.block_bytes)
    k = blocks * qt.block
    out = quant.dequantize(raw, name, k)
    assert out.shape == (rows, k)
    if rows:
        np.testing.assert_array_equal(out, reference_dequantize(raw, name))


def test_dequantize_flat_rows_and_bytes() -> None:
    rng = np.random.default_rng(3)
    raw = random_blocks("q4_k", (3, 2), rng).reshape(3, -1)
    expect = quant.dequantize(raw, "q4_k", 512)
    np.testing.assert_array_equal(quant.dequantize(raw.reshape(-1), "q4_k", 512), expect)  # flat, 3 rows
    np.testing.assert_array_equal(quant.dequantize(raw[1], "q4_k", 512), expect[1])        # one row -> [k]
    np.testing.assert_array_equal(quant.dequantize(raw.tobytes(), "q4_k", 512), expect)
    np.testing.assert_array_equal(quant.dequantize(raw.view(np.int8), "q4_k", 512), expect)
    np.testing.assert_array_equal(quant.dequantize(raw[:, ::-1][:, ::-1], "q4_k", 512), expect)  # strided


@pytest.mark.parametrize("name", NAMES)
def test_dequantize_nan_scale_gives_nan(name: str) -> None:
    raw = random_blocks(name, (2,), np.random.default_rng(4))
    off = F16_FIELDS[name][0]
    raw[0, off:off + 2] = np.array([0x7E00], np.uint16).view(np.uint8)  # f16 NaN as the first block's d
    block = quant.QUANT_TYPES[name].block
    out = quant.dequantize(raw.reshape(-1), name, 2 * block)
    assert np.isnan(out[:block]).any() and np.isfinite(out[block:]).all()
    np.testing.assert_array_equal(out, reference_dequantize(raw, name).reshape(-1))


def test_dequantize_4096_square_q4_k_is_fast() -> None:
    raw = random_blocks("q4_k", (4096, 16), np.random.default_rng(5)).reshape(4096, -1)
    quant.dequantize(raw[:64], "q4_k", 4096)
    t = time.perf_counter()
    out = quant.dequantize(raw, "q4_k", 4096)
    elapsed = time.perf_counter() - t
    assert out.shape == (4096, 4096)
    assert elapsed < 2.0, f"dequantizing 4096x4096 q4_k took {elapsed:.2f} s (~0.05-0.2 s expected)"


# --------------------------------------------------------------------------- quantize
def special_rows(block: int) -> np.ndarray:
    """Rows that stress the scale choice: zeros, constants, one outlier, one sign only, ties of
    the largest magnitude, halves that round both ways, small values (f16-subnormal scales; much
    smaller ones lose all precision to the f16 block scale, as in ggml)."""
    rng = np.random.default_rng(6)
    k = 2 * block
    rows = [
        np.zeros(k), np.full(k, 3.0), np.full(k, -0.25), np.r_[np.zeros(k - 1), 7.0],
        np.abs(rng.standard_normal(k)), -np.abs(rng.standard_normal(k)),
        np.tile([1.0, -1.0], k // 2), np.tile([-2.0, 2.0, 0.5], k)[:k],
        np.arange(k) - k / 2.0, (np.arange(k) % 17) * 0.5 - 4.0, rng.standard_normal(k) * 1e-3,
        rng.standard_normal(k) * 1e4, np.round(rng.standard_normal(k) * 8) / 8,
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("name", REF_QUANTIZE)
def test_quantize_matches_gguf_bytes(name: str) -> None:
    block = quant.QUANT_TYPES[name].block
    rng = np.random.default_rng(7)
    for x in (rng.standard_normal((9, 4 * block)).astype(np.float32), special_rows(block),
              rng.standard_normal((2, 3, block)).astype(np.float32) * 100):
        raw = quant.quantize(x, name)
        assert raw.dtype == np.uint8 and raw.shape == x.shape[:-1] + (quant.row_bytes(name, x.shape[-1]),)
        np.testing.assert_array_equal(raw, reference_quantize(x, name), err_msg=name)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(REF_QUANTIZE),
       x=hnp.arrays(np.float32, (2, 32), elements=st.floats(-1e4, 1e4, width=32)))
def test_quantize_matches_gguf_bytes_property(name: str, x: np.ndarray) -> None:
    x[np.abs(x) < 1e-30] = 0  # below, 1/d overflows: see test_quantize_tiny_input
    np.testing.assert_array_equal(quant.quantize(x, name), reference_quantize(x, name))


@pytest.mark.parametrize("name", REF_QUANTIZE)
def test_quantize_tiny_input(name: str) -> None:
    # blocks whose largest magnitude is < ~1e-36: 1/d overflows and ggml's C casts inf/NaN to int (undefined), so the
    # codes may differ from gguf's; the f16 scale is 0 in both, so both decode to zeros
    x = np.zeros((2, 32), np.float32)
    x[0, :4], x[1, 3] = [1.5e-40, 1.1754944e-38, 0, -1e-37], -1e-45
    raw = quant.quantize(x, name)
    np.testing.assert_array_equal(quant.dequantize(raw, name, 32), 0)
    np.testing.assert_array_equal(reference_dequantize(reference_quantize(x, name), name), 0)


def relative_rms(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_error(name: str) -> None:
    x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
    raw = quant.quantize(x, name)
    y = quant.dequantize(raw, name, 1024)
    np.testing.assert_array_equal(y, reference_dequantize(raw, name))  # valid ggml blocks
    err = relative_rms(y, x)
    assert err < ERROR_BOUND[name], f"{name}: relative RMS error {err:.4f}"
    # what dequantize gives is (close to) a fixed point: quantizing it again barely moves it
    y2 = quant.dequantize(quant.quantize(y, name), name, 1024)
    assert relative_rms(y2, y) <= 0.2 * err, f"{name}: re-quantizing moved {relative_rms(y2, y):.5f}"


@pytest.mark.parametrize("name", NAMES)
def test_quantize_special_rows(name: str) -> None:
    block = quant.QUANT_TYPES[name].block
    x = special_rows(block)
    y = quant.dequantize(quant.quantize(x, name), name, x.shape[-1])
    np.testing.assert_array_equal(y[0], 0)  # zeros stay exactly zero
    scale = np.abs(x).reshape(len(x), -1, block).max(-1, keepdims=True)
    rel = np.abs(y - x).reshape(len(x), -1, block) / np.where(scale > 0, scale, 1)
    # each value is within a fraction of its block's largest magnitude (2-bit q2_k: ~1/3 step)
    assert rel.max() < {"q2_k": 0.6, "q3_k": 0.35}.get(name, 0.2), f"{name}: {rel.max():.3f}"


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.data())
def test_quantize_any_finite_rows(name: str, data: st.DataObject) -> None:
    block = quant.QUANT_TYPES[name].block
    x = data.draw(hnp.arrays(np.float32, (1, block), elements=st.floats(-1e4, 1e4, width=32)))
    raw = quant.quantize(x, name)
    y = quant.dequantize(raw, name, block)
    np.testing.assert_array_equal(y, reference_dequantize(raw, name))
    # within a fraction of the largest magnitude, plus what the f16 scale's resolution loses
    bound = {"q2_k": 0.6, "q3_k": 0.35}.get(name, 0.2) * np.abs(x).max() + 1e-3
    assert np.abs(y - x).max() <= bound


@pytest.mark.parametrize("name", NAMES)
def test_quantize_accepts_other_dtypes(name: str) -> None:
    x = np.random.default_rng(8).standard_normal((2, quant.QUANT_TYPES[name].block))
    np.testing.assert_array_equal(quant.quantize(x, name), quant.quantize(x.astype(np.float32), name))
    np.testing.assert_array_equal(quant.quantize(x.astype(np.float16), name),
                                  quant.quantize(x.astype(np.float16).astype(np.float32), name))


# --------------------------------------------------------------------------- errors
def test_row_bytes_errors() -> None:
    for k in (0, -32, 33, 48, 2.0 * 32, True):
        with pytest.raises(ValueError, match="q8_0"):
            quant.row_bytes("q8_0", k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="q4_k.*256"):
        quant.row_bytes("q4_k", 576)  # SmolLM2's rows: not a whole number of K-blocks


@pytest.mark.parametrize("bad", ["q4_2", "Q9_9", "", "f16", 99, 0, None, 3.0])
def test_unknown_type(bad: object) -> None:
    with pytest.raises(quant.QuantError, match="supported"):
        quant.quant_type(bad)
    with pytest.raises(ValueError):
        quant.dequantize(np.zeros(34, np.uint8), bad, 32)
    with pytest.raises(ValueError):
        quant.quantize(np.zeros(32, np.float32), bad)


def test_dequantize_bad_raw() -> None:
    raw = np.zeros((2, 34), np.uint8)
    with pytest.raises(ValueError, match=r"q8_0.*\(2, 34\).*68"):
        quant.dequantize(raw, "q8_0", 64)  # rows are 68 bytes
    with pytest.raises(ValueError, match="q8_0"):
        quant.dequantize(np.zeros(35, np.uint8), "q8_0", 32)  # not whole rows
    with pytest.raises(ValueError, match="not a positive multiple"):
        quant.dequantize(raw, "q8_0", 17)
    with pytest.raises(TypeError, match="uint8"):
        quant.dequantize(raw.astype(np.float32), "q8_0", 32)
    with pytest.raises(ValueError):
        quant.dequantize(np.uint8(3), "q8_0", 32)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_errors(name: str) -> None:
    block = quant.QUANT_TYPES[name].block
    x = np.ones((2, block), np.float32)
    for v, word in ((np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")):
        bad = x.copy()
        bad[1, 5] = v
        with pytest.raises(ValueError, match=rf"{name}.*1 non-finite.*{word}.*\(1, 5\)"):
            quant.quantize(bad, name)
    with pytest.raises(ValueError, match=f"{name}.*{block + 1}"):
        quant.quantize(np.ones((2, block + 1), np.float32), name)
    with pytest.raises(ValueError, match="float16 block scale"):
        quant.quantize(np.full((1, block), 3e38, np.float32), name)
    with pytest.raises(ValueError, match="scalar"):
        quant.quantize(np.float32(1), name)
    with pytest.raises(TypeError, match="dtype"):
        quant.quantize(np.array([["a"] * block]), name)
    assert issubclass(quant.QuantError, TinygraphError)


@pytest.mark.parametrize("name", NAMES)
def test_gguf_loader_decodes_with_quant(name: str) -> None:
    from tinygraph.io.gguf_loader import _decodable, dequantize

    block = quant.QUANT_TYPES[name].block
    raw = random_blocks(name, (3, 2), np.random.default_rng(9)).reshape(3, -1)
    assert _decodable(ref_type(name))
    out = dequantize(raw, ref_type(name), (3, 2 * block))
    np.testing.assert_array_equal(out, reference_dequantize(raw, name))
    np.testing.assert_array_equal(dequantize(raw.reshape(-1), ref_type(name), (3, 2 * block)), out)


def test_readme_table_matches() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = re.findall(r"`(q\d_[0-9k])` \| (\d+) \| (\d+) \| ([\d.]+)", readme)
    assert sorted(r[0] for r in rows) == sorted(NAMES)
    for name, block, nbytes, bits in rows:
        qt = quant.QUANT_TYPES[name]
        assert (qt.block, qt.block_bytes, qt.bits_per_weight) == (int(block), int(nbytes), float(bits)), name
