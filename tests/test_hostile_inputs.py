"""Hostile and malformed input at the loading boundary (issue 13): config values that look valid
but are garbage, non-regular files (FIFOs, devices, directories, sockets) where a file is
expected, unreadable files and directories, absurd ``max_context`` and negative positions.
Each must end in a tinygraph error that names the key, file or argument, at once: never a hang,
a silent wrong answer or a foreign exception."""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.io import LoadError, config_from_hf, load_checkpoint, load_hf_config
from tinygraph.io.files import check_regular_file, read_text
from tinygraph.io.safetensors import SafeTensorsFile

FIX = Path(__file__).parent / "fixtures"
LLAMA = json.loads((FIX / "llama" / "config.json").read_text())
GPT2 = json.loads((FIX / "gpt2" / "config.json").read_text())


def _v4(cfg: dict) -> dict:
    """The same config in the transformers v4 form (rope_theta + rope_scaling at top level)."""
    c = dict(cfg)
    params = dict(c.pop("rope_parameters"))
    c["rope_theta"] = params.pop("rope_theta")
    c["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    return c


def _with_rope(form: str, **scaling) -> dict:
    """LLAMA with RoPE scaling parameters, in the v4 or v5 config form."""
    c = dict(LLAMA)
    c["rope_parameters"] = {"rope_theta": 10000.0, **scaling}
    return _v4(c) if form == "v4" else c


def _write(d: Path, cfg: dict) -> Path:
    p = d / "config.json"
    p.write_text(json.dumps(cfg))  # json writes NaN as NaN, which json (and HF) read back
    return p


# ============================================================================ config values
@pytest.mark.parametrize("form,key", [("v4", "rope_scaling"), ("v5", "rope_parameters")])
@pytest.mark.parametrize("param", ["factor", "low_freq_factor", "high_freq_factor"])
@pytest.mark.parametrize("value", [0, 0.0, -8.0, math.nan, math.inf, "8", True, None, [8.0]])
def test_rope_scaling_numbers_must_be_positive_finite(tmp_path, form, key, param, value):
    good = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    p = _write(tmp_path, _with_rope(form, **{**good, param: value}))
    with pytest.raises(LoadError, match=rf"bad value: {key}\.{param} must be a finite number > 0, got ") as ei:
        load_hf_config(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("form", ["v4", "v5"])
@pytest.mark.parametrize("value", [0, -1.5, math.nan, "2"])
def test_linear_rope_factor(form, value):
    key = "rope_scaling" if form == "v4" else "rope_parameters"
    with pytest.raises(LoadError, match=rf"{key}\.factor must be a finite number > 0, got {value!r}"):
        config_from_hf(_with_rope(form, rope_type="linear", factor=value))
    cfg = config_from_hf(_with_rope(form, rope_type="linear", factor=2.0))  # the good value loads
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize("form", ["v4", "v5"])
@pytest.mark.parametrize("value", [0, -64, 64.5, "64", math.nan])
def test_rope_original_context_is_a_positive_int(form, value):
    key = "rope_scaling" if form == "v4" else "rope_parameters"
    c = _with_rope(form, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=value)
    with pytest.raises(LoadError, match=rf"{key}\.original_max_position_embeddings must be a positive int"):
        config_from_hf(c)


@pytest.mark.parametrize("form", ["v4", "v5"])
@pytest.mark.parametrize("value", [0, -1e4, math.nan, "10000", False])
def test_rope_theta_is_a_positive_number(form, value):
    c = dict(LLAMA, rope_parameters={"rope_theta": value, "rope_type": "default"})
    c = _v4(c) if form == "v4" else c
    key = "rope_theta" if form == "v4" else "rope_parameters.rope_theta"
    with pytest.raises(LoadError, match=rf"bad value: {key} must be a finite number > 0"):
        config_from_hf(c)


def test_rope_scaling_must_be_an_object():
    with pytest.raises(LoadError, match=r"rope_scaling must be an object or null, got 'llama3'"):
        config_from_hf({**_v4(LLAMA), "rope_scaling": "llama3"})
    with pytest.raises(LoadError, match=r"rope_parameters must be an object, got \[1\]"):
        config_from_hf({**LLAMA, "rope_parameters": [1]})


@pytest.mark.parametrize("base", [LLAMA, GPT2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("value", [0.5, math.nan, 2**64, 2, -1, "true", "false", 1.0, [True]])
def test_tie_word_embeddings_must_be_a_bool(tmp_path, base, value):
    p = _write(tmp_path, {**base, "tie_word_embeddings": value})
    with pytest.raises(LoadError, match=r"bad value: tie_word_embeddings must be true or false \(or 0/1\), got ") as ei:
        load_hf_config(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("value,tied", [(True, True), (False, False), (1, True), (0, False)])
def test_tie_word_embeddings_accepts_bools_and_0_1(value, tied):
    assert config_from_hf({**LLAMA, "tie_word_embeddings": value}).tie_word_embeddings is tied


def test_tie_word_embeddings_checked_on_programmatic_configs():
    cfg = config_from_hf(LLAMA)
    with pytest.raises(LoadError, match="tie_word_embeddings must be a bool, got 0.5"):
        type(cfg)(**{**cfg.__dict__, "tie_word_embeddings": 0.5})


LLAMA_INT_KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "intermediate_size", "max_position_embeddings", "sliding_window"]
GPT2_INT_KEYS = ["vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions"]
BAD_INTS = [0, -1, -64, 2.5, 64.000001, "64", "2", True, False, math.nan, math.inf, [64], {"v": 64}]


@pytest.mark.parametrize("base,key", [(LLAMA, k) for k in LLAMA_INT_KEYS] + [(GPT2, k) for k in GPT2_INT_KEYS])
@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_int_keys_refuse_non_integers(tmp_path, base, key, value):
    p = _write(tmp_path, {**base, key: value})
    with pytest.raises(LoadError, match=rf"bad value: {key} must be a positive int, got ") as ei:
        load_hf_config(p)
    assert str(p) in str(ei.value) and repr(value)[:6] in str(ei.value)


@pytest.mark.parametrize("key", ["num_hidden_layers", "hidden_size", "max_position_embeddings"])
def test_whole_floats_are_ints(key):
    """JSON has one number type: 2.0 is the integer 2 (some converters write it so); 2.5 is not."""
    cfg = config_from_hf({**LLAMA, key: float(LLAMA[key])})
    same = config_from_hf(LLAMA)
    assert cfg == same
    assert all(type(getattr(cfg, f)) is int for f in ("num_layers", "hidden_size", "max_position_embeddings"))


def test_num_hidden_layers_fraction_is_refused_not_truncated():
    with pytest.raises(LoadError, match=r"num_hidden_layers must be a positive int, got 2.5"):
        config_from_hf({**LLAMA, "num_hidden_layers": 2.5})


def test_hidden_size_string_is_refused_at_load(tmp_path):
    d = tmp_path / "llama"
    shutil.copytree(FIX / "llama", d)
    _write(d, {**LLAMA, "hidden_size": "64"})
    with pytest.raises(LoadError, match=r"config.json: config \(llama\): bad value: hidden_size must be a positive "
                                        r"int, got '64'"):
        load_checkpoint(d)


@pytest.mark.parametrize("key,value", [("rms_norm_eps", "1e-5"), ("rms_norm_eps", 0), ("rms_norm_eps", math.nan),
                                       ("use_sliding_window", 0.5)])
def test_other_values(key, value):
    with pytest.raises(LoadError, match=rf"bad value: {key} must be"):
        config_from_hf({**LLAMA, key: value})


def test_nan_rope_factor_no_longer_gives_nan_logits(tmp_path):
    """The probe from the issue: a llama3 checkpoint with factor NaN loaded and produced NaN logits."""
    d = tmp_path / "llama3"
    shutil.copytree(FIX / "llama3", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"]["factor"] = math.nan
    _write(d, cfg)
    with pytest.raises(LoadError, match=r"rope_parameters.factor must be a finite number > 0, got nan"):
        load_checkpoint(d)
