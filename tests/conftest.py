"""Shared fixtures: the backends to run op tests on (CUDA is skipped with a reason where absent)."""
from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.backends import cuda_available

BACKENDS = ["numpy", "cuda"]


def _use_this_checkouts_models() -> None:
    """``tinygraph.models`` from this checkout's ``models/``: when ``tinygraph`` comes from here but
    an editable install of another checkout (e.g. the main tree beside a git worktree) is on the
    path, its import finder would otherwise supply the models package from there."""
    root = Path(__file__).resolve().parents[1]
    if Path(tg.__file__).resolve().parent != root / "tinygraph" or "tinygraph.models" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("tinygraph.models", root / "models" / "__init__.py",
                                                  submodule_search_locations=[str(root / "models")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tinygraph.models"] = module
    spec.loader.exec_module(module)
    tg.models = module


_use_this_checkouts_models()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    name = request.param
    if name == "cuda":
        ok, why = cuda_available()
        if not ok:
            pytest.skip(f"CUDA backend not testable here: {why}")
        try:
            import tinygraph.backends.cuda.backend  # noqa: F401
        except ImportError as e:
            pytest.skip(f"CUDA graph backend not built yet: {e}")
    return name


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# relative error bounds per dtype (float32 math everywhere; inputs/outputs rounded to the dtype)
TOL = {"float32": 2e-5, "float16": 2e-2, "bfloat16": 2e-2}


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking (for a rendezvous between processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.isfinite(out).all(), "non-finite values in output"
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def kv_cache(sess: tg.Session, k: np.ndarray, v: np.ndarray, dtype: tg.DType) -> tuple[tg.Tensor, tg.Tensor]:
    """Persistent caches "K" and "V" of ``dtype`` holding ``k`` and ``v`` ([kv, S, d]); finalizes
    ``sess``, so declare any other persistent buffer first."""
    K = sess.persistent(k.shape, dtype, name="K")
    V = sess.persistent(v.shape, dtype, name="V")
    sess.finalize()
    sess.upload(K, k)
    sess.upload(V, v)
    return K, V


def attention_views(K: tg.Tensor, V: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
    """[kv, S, d] caches as grouped attention's operands, K^T [kv, 1, d, S] and V [kv, 1, S, d]:
    the size-1 axis (stride 0) broadcasts each KV head over its group of query heads."""
    kv, S, d = K.shape
    return tg.view(K, (kv, 1, d, S), (S * d, 0, 1, d)), tg.view(V, (kv, 1, S, d), (S * d, 0, d, 1))


def rounded(a: np.ndarray, dtype: tg.DType) -> np.ndarray:
    """``a`` rounded to ``dtype`` and returned as float64: the exact inputs a backend sees."""
    return np.asarray(a).astype(dtype.np).astype(np.float64)


@pytest.fixture(scope="session")
def qwen3_256(tmp_path_factory) -> Path:
    """A random 2-layer Qwen3 checkpoint whose every matrix has rows of 256 or 512 weights (hidden
    256, 4 x 64 query heads, 2 KV heads, MLP 512, vocabulary 512), the smallest shapes linear_qr
    (cuda_src/linear_qr.cu: rows of 256n) can run; float16, weights ~ N(0, 0.1)."""
    import copy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench_configs as bc

    hf = copy.deepcopy(bc.CONFIGS["qwen3-0.6b"]["hf"])
    hf.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64, hidden_size=256,
              intermediate_size=512, vocab_size=512, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("qwen3_256")
    bc.write_numpy_checkpoint(hf, out, seed=7, std=0.1)
    return out
