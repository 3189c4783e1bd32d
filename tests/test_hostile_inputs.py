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


# ============================================================================ non-regular files
def _no_hang(fn, *args, fifos: tuple[Path, ...] = (), timeout: float = 20.0):
    """Run ``fn(*args)`` in a thread; fail (instead of hanging the suite) if it blocks, e.g. in
    open() of a FIFO. A blocked thread is released by opening its FIFOs read-write."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:
            os.close(os.open(f, os.O_RDWR | os.O_NONBLOCK))
        pytest.fail(f"{getattr(fn, '__name__', fn)} blocked for {timeout} s (FIFO opened for reading?)")
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def _llama_dir(tmp_path: Path, name: str = "llama") -> Path:
    d = tmp_path / name
    shutil.copytree(FIX / "llama", d)
    (d / "reference.npz").unlink()
    return d


def _fifo(p: Path) -> Path:
    if p.exists() or p.is_symlink():
        p.unlink()
    os.mkfifo(p)
    return p


@needs_fifo
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                                  "tokenizer_config.json", "chat_template.jinja"])
def test_fifo_inside_model_directory(tmp_path, name):
    d = _llama_dir(tmp_path)
    f = _fifo(d / name)
    with pytest.raises(LoadError, match=rf"{name}: .*is not a regular file \(it is a FIFO \(named pipe\)\)"):
        _no_hang(load_checkpoint, d, fifos=(f,))


@needs_fifo
@pytest.mark.parametrize("name", ["model.safetensors", "model.gguf", "model.safetensors.index.json", "weights"])
def test_fifo_as_the_checkpoint_path(tmp_path, name):
    f = _fifo(tmp_path / name)
    with pytest.raises(LoadError, match=r"checkpoint is not a regular file \(it is a FIFO") as ei:
        _no_hang(load_checkpoint, f, fifos=(f,))
    assert "no such file" not in str(ei.value) and str(f) in str(ei.value)


@needs_fifo
def test_fifo_gguf_alone_in_a_directory(tmp_path):
    f = _fifo(tmp_path / "model.gguf")
    with pytest.raises(LoadError, match=r"model.gguf: GGUF file is not a regular file"):
        _no_hang(load_checkpoint, tmp_path, fifos=(f,))


@needs_fifo
def test_fifo_through_the_lower_level_readers(tmp_path):
    from tinygraph.io.gguf_loader import load_gguf

    f = _fifo(tmp_path / "x")
    for fn in (load_hf_config, SafeTensorsFile, load_gguf, check_regular_file, read_text):
        with pytest.raises(LoadError, match="not a regular file"):
            _no_hang(fn, f, fifos=(f,))


@needs_fifo
def test_fifo_shard_of_a_sharded_checkpoint(tmp_path):
    d = _llama_dir(tmp_path)
    st = SafeTensorsFile(d / "model.safetensors")
    names = st.tensor_names
    st.close()
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))
    load_checkpoint(d).close()  # the sharded layout itself loads
    f = _fifo(d / "model-00001-of-00001.safetensors")
    with pytest.raises(LoadError, match=r"model-00001-of-00001.safetensors: shard is not a regular file"):
        _no_hang(load_checkpoint, d, fifos=(f,))
    f = _fifo(d / "model.safetensors.index.json")
    with pytest.raises(LoadError, match=r"index.json: sharded index is not a regular file"):
        _no_hang(load_checkpoint, d, fifos=(f,))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero(tmp_path):
    with pytest.raises(LoadError, match=r"/dev/zero: checkpoint is not a regular file \(it is a character device\)"):
        _no_hang(load_checkpoint, "/dev/zero")
    d = _llama_dir(tmp_path)
    (d / "config.json").unlink()
    (d / "config.json").symlink_to("/dev/zero")  # read(), it would never end
    with pytest.raises(LoadError, match=r"config.json: config is not a regular file \(it is a character device\)"):
        _no_hang(load_checkpoint, d)


@pytest.mark.parametrize("name,what", [("config.json", "config"), ("tokenizer.json", "tokenizer"),
                                       ("generation_config.json", "generation config"),
                                       ("model.safetensors", "safetensors file")])
def test_directory_where_a_file_is_expected(tmp_path, name, what):
    d = _llama_dir(tmp_path)
    if (d / name).exists():
        (d / name).unlink()
    (d / name).mkdir()
    with pytest.raises(LoadError, match=rf"{name}: {what} is not a regular file \(it is a directory\)"):
        _no_hang(load_checkpoint, d)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_socket_as_config(tmp_path):
    d = _llama_dir(tmp_path)
    (d / "config.json").unlink()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(d / "config.json"))
        with pytest.raises(LoadError, match=r"config.json: config is not a regular file \(it is a socket\)"):
            _no_hang(load_checkpoint, d)
    finally:
        s.close()


def test_dangling_symlink_is_named(tmp_path):
    d = _llama_dir(tmp_path)
    (d / "tokenizer.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(LoadError, match=r"tokenizer.json: cannot read tokenizer: a symlink whose target does not "
                                        r"exist"):
        load_checkpoint(d)


def test_missing_checkpoint_still_says_no_such_file(tmp_path):
    with pytest.raises(LoadError, match=r"nothing_here: checkpoint: no such file or directory"):
        load_checkpoint(tmp_path / "nothing_here")


# ============================================================================ unreadable files
def _simulate_no_permission(monkeypatch, locked: Path) -> None:
    """What ``chmod 000 locked`` does for a user other than root (tests may run as root, where
    permissions are not enforced): listing a locked directory fails, and so does any stat or
    open of a path below it; opening a locked file fails."""
    real = {n: getattr(os, n) for n in ("stat", "lstat", "open", "scandir", "listdir")}

    def path_of(a: tuple) -> Path | None:
        return Path(os.path.abspath(os.fsdecode(a[0]))) if a and isinstance(a[0], (str, bytes, os.PathLike)) else None

    def guard(name: str):
        def wrapped(*a, **kw):
            p = path_of(a)
            below = p is not None and locked in p.parents
            if below or (p == locked and name in ("open", "scandir", "listdir")):
                raise PermissionError(13, "Permission denied", str(p))
            return real[name](*a, **kw)
        return wrapped

    for n in real:
        monkeypatch.setattr(os, n, guard(n))


@pytest.mark.parametrize("real", [True, False], ids=["chmod", "simulated"])
def test_unreadable_model_directory(tmp_path, monkeypatch, real):
    if real and (not hasattr(os, "geteuid") or os.geteuid() == 0):
        pytest.skip("running as root (or not on POSIX): chmod 000 is not enforced; the simulated case covers it")
    d = _llama_dir(tmp_path)
    if real:
        d.chmod(0)
        try:
            with pytest.raises(LoadError, match=rf"{d}: cannot read model directory: permission denied"):
                load_checkpoint(d)
        finally:
            d.chmod(0o755)
    else:
        _simulate_no_permission(monkeypatch, d)
        with pytest.raises(LoadError, match=rf"{d}: cannot read model directory: permission denied"):
            load_checkpoint(d)
        with pytest.raises(LoadError, match=r"model.safetensors: cannot read checkpoint: permission denied"):
            load_checkpoint(d / "model.safetensors")
        with pytest.raises(LoadError, match=r"config.json: cannot read config: permission denied"):
            load_hf_config(d)


@pytest.mark.parametrize("real", [True, False], ids=["chmod", "simulated"])
@pytest.mark.parametrize("name,what", [("config.json", "config"), ("model.safetensors", "safetensors file"),
                                       ("tokenizer.json", "tokenizer"), ("generation_config.json", "generation config")])
def test_unreadable_file(tmp_path, monkeypatch, real, name, what):
    if real and (not hasattr(os, "geteuid") or os.geteuid() == 0):
        pytest.skip("running as root (or not on POSIX): chmod 000 is not enforced; the simulated case covers it")
    d = _llama_dir(tmp_path)
    f = d / name
    if not f.exists():
        f.write_text("{}")
    if real:
        f.chmod(0)
    else:
        _simulate_no_permission(monkeypatch, f)
    try:
        with pytest.raises(LoadError, match=rf"{name}: cannot read {what}: permission denied"):
            load_checkpoint(d)
    finally:
        f.chmod(0o644)


@pytest.mark.parametrize("real", [True, False], ids=["chmod", "simulated"])
def test_unreadable_gguf(tmp_path, monkeypatch, real):
    if real and (not hasattr(os, "geteuid") or os.geteuid() == 0):
        pytest.skip("running as root (or not on POSIX): chmod 000 is not enforced; the simulated case covers it")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(20))
    if real:
        f.chmod(0)
    else:
        _simulate_no_permission(monkeypatch, f)
    try:
        with pytest.raises(LoadError, match=r"m.gguf: cannot read GGUF file: permission denied"):
            load_checkpoint(f)
    finally:
        f.chmod(0o644)


# ============================================================================ sizes and positions
@pytest.fixture(scope="module")
def llama_model():
    from tinygraph.models import load_model

    with load_model(FIX / "llama", backend="numpy") as m:
        yield m


def test_max_context_beyond_memory_is_refused_before_allocating():
    """The issue's probe, max_context=10**9 (more where this machine's memory is larger): NumPy's
    own MemoryError (or, under overcommit, a later kill) becomes an error naming the buffer and
    the bytes, raised before the buffer is allocated; nothing stays allocated."""
    from tinygraph.backends.host_memory import HostMemoryError, host_memory_limit
    from tinygraph.models import CausalLM

    per_token = 4 * LLAMA["num_key_value_heads"] * LLAMA["head_dim"]  # one layer's K cache, float32
    ctx = max(10**9, 2 * (host_memory_limit() or 0) // per_token)
    sess = tg.Session(backend="numpy")
    with pytest.raises(tg.TinygraphError, match=r"cannot allocate persistent buffer 'cache\.[kv]\.\d+' \(shape "
                                                rf"\(2, {ctx}, 16\), float32\): \d+ bytes .* more than this machine's "
                                                r"memory .*max_context") as ei:
        with load_checkpoint(FIX / "llama") as ckpt:
            CausalLM(ckpt, max_context=ctx, session=sess)
    assert isinstance(ei.value, HostMemoryError) and isinstance(ei.value, MemoryError)
    assert not sess.backend.buffers  # the weights allocated before the cache were released
    sess.close()


def test_numpy_memory_error_names_the_buffer(monkeypatch):
    """Where the limit is unknown (or wrong), NumPy's own MemoryError is still turned into one that
    names the buffer."""
    from tinygraph.backends import host_memory

    monkeypatch.setattr(host_memory, "host_memory_limit", lambda: None)
    sess = tg.Session(backend="numpy")
    sess.persistent((3, 5), tg.float16, name="big")

    def no_memory(*a, **kw):
        raise MemoryError("Unable to allocate 30. B for an array")

    monkeypatch.setattr(np, "zeros", no_memory)
    with pytest.raises(host_memory.HostMemoryError, match=r"persistent buffer 'big' \(shape \(3, 5\), float16\): "
                                                          r"30 bytes .*out of host memory \(Unable to allocate"):
        sess.finalize()
    monkeypatch.undo()
    sess.finalize()  # the session is still usable
    sess.close()


@pytest.mark.parametrize("start", [-1, -100, 1.0, 0.5, True, "0", None])
def test_step_start_must_be_a_position(llama_model, start):
    cache_before = [llama_model.session.download(k).copy() for k in llama_model.kv_k]
    length = llama_model.kv.length
    with pytest.raises(tg.BoundsError, match=rf"start position must be an int >= 0, got {start!r}") as ei:
        llama_model.step([1, 2], start=start)
    assert isinstance(ei.value, IndexError)
    assert llama_model.kv.length == length  # nothing written (a negative row wrapped to the last rows)
    for k, before in zip(llama_model.kv_k, cache_before):
        np.testing.assert_array_equal(llama_model.session.download(k), before)


@pytest.mark.parametrize("start", [-1, -2, 2.0])
def test_decode_loop_start_must_be_a_position(llama_model, start):
    with pytest.raises(tg.BoundsError, match=rf"start position must be an int >= 0, got {start!r}"):
        list(llama_model.decode_loop(3, start=start, steps=2))


def test_numpy_int_start_still_works(llama_model):
    a = llama_model.step([1, 2], start=np.int64(0), want="argmax")
    b = llama_model.step([1, 2], start=0, want="argmax")
    assert a == b


def test_hostile_layer_count_in_config_json():
    """A config.json with 2**40 layers is refused before any per-layer list is built (Qwen2's
    sliding-window rule made one: the config fuzz test ran out of memory on it)."""
    from tinygraph.io.config import config_from_hf
    from tinygraph.io import LoadError
    with pytest.raises(LoadError, match="num_hidden_layers 1099511627776"):
        config_from_hf({"model_type": "qwen2", "vocab_size": 12, "hidden_size": 8, "intermediate_size": 16,
                        "num_hidden_layers": 2**40, "num_attention_heads": 2})
