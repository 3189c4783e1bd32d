"""One process per GPU, without GPUs: the ranks' environment, the TCP rendezvous across real
processes, the launcher (environment, failure of one rank stops the rest), the NCCL communicator
and the CUDA lowering of ``all_reduce`` against a fake NCCL binding (what reaches NCCL: pointers,
counts, types, the shared id). Whether NCCL then sums correctly on GPUs is for a multi-GPU machine
(issue 19's runs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from conftest import free_port
from tinygraph import parallel
from tinygraph.distributed import DistEnv, RendezvousError, broadcast_bytes
from tinygraph.launch import rank_envs

ROOT = Path(__file__).resolve().parents[1]


def _env(**kw) -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update({k: str(v) for k, v in kw.items()})
    return e


# -- DistEnv ------------------------------------------------------------------------------------------
def test_dist_env_from_variables():
    assert DistEnv.from_env({}) is None
    e = DistEnv.from_env({"WORLD_SIZE": "4", "RANK": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert e == DistEnv(rank=2, world_size=4, local_rank=2, master_addr="10.0.0.1", master_port=1234)
    assert DistEnv.from_env({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}).local_rank == 1


@pytest.mark.parametrize("env, why", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 outside 0..1"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "70000"}, "not a TCP port"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
])
def test_dist_env_bad_values_are_named(env, why):
    with pytest.raises(ValueError, match=why):
        DistEnv.from_env(env)


# -- the rendezvous -----------------------------------------------------------------------------------
_FETCH = textwrap.dedent("""
    import sys
    from tinygraph.distributed import DistEnv, broadcast_bytes
    env = DistEnv.from_env()
    payload = bytes(range(256)) * 3 if env.rank == 0 else None
    got = broadcast_bytes(env, payload, timeout=60)
    print(env.rank, got.hex())
""")


def test_rank_zero_bytes_reach_every_process():
    port, world = free_port(), 4
    procs = [subprocess.Popen([sys.executable, "-c", _FETCH], stdout=subprocess.PIPE, text=True,
                              env=_env(WORLD_SIZE=world, RANK=r, MASTER_PORT=port))
             for r in (3, 1, 2, 0)]  # rank 0 last: the others retry until it listens
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    got = dict(o.split() for o in outs)
    assert sorted(got) == ["0", "1", "2", "3"]
    assert set(got.values()) == {(bytes(range(256)) * 3).hex()}


def test_single_rank_needs_no_network():
    assert broadcast_bytes(DistEnv(0, 1, 0), b"id") == b"id"
    with pytest.raises(ValueError, match="rank 0 must pass"):
        broadcast_bytes(DistEnv(0, 2, 0), None)
    with pytest.raises(ValueError, match="only rank 0"):
        broadcast_bytes(DistEnv(1, 2, 1), b"x")


def test_missing_ranks_time_out_with_names():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(RendezvousError, match=r"rank\(s\) \[1, 2\] did not connect within 0.5 s"):
        broadcast_bytes(DistEnv(0, 3, 0, master_port=port), b"id", timeout=0.5)
    with pytest.raises(RendezvousError, match="rank 1: no rank 0 at 127.0.0.1"):
        broadcast_bytes(DistEnv(1, 3, 1, master_port=port), None, timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_a_peer_of_another_job_is_refused():
    port = free_port()
    peer = subprocess.Popen([sys.executable, "-c", _FETCH], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(WORLD_SIZE=3, RANK=1, MASTER_PORT=port))
    with pytest.raises(RendezvousError, match="rank 1 of 3; expected one of \\[1\\] of 2"):
        broadcast_bytes(DistEnv(0, 2, 0, master_port=port), b"id", timeout=60)
    _, err = peer.communicate(timeout=60)
    assert peer.returncode != 0 and "refused this rank" in err


# -- the launcher -------------------------------------------------------------------------------------
def test_rank_envs():
    envs = rank_envs(2, nnodes=2, node_rank=1, master_addr="h0", master_port=999, base={"X": "1"})
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [("2", "0", "4"), ("3", "1", "4")]
    assert all(e["MASTER_ADDR"] == "h0" and e["MASTER_PORT"] == "999" and e["X"] == "1" for e in envs)
    assert all(e["NCCL_NVLS_ENABLE"] == "0" for e in envs)  # multicast off unless asked for
    assert rank_envs(1, base={"NCCL_NVLS_ENABLE": "1"})[0]["NCCL_NVLS_ENABLE"] == "1"
    for bad in ({"gpus": 0}, {"gpus": 1, "nnodes": 2, "node_rank": 2}, {"gpus": 1, "master_port": 0}):
        with pytest.raises(ValueError):
            rank_envs(**bad)


def test_launcher_runs_every_rank_with_its_environment(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "NCCL_NVLS_ENABLE")
        out = {{k: os.environ[k] for k in keys}}
        out["argv"] = sys.argv[1:]
        open(os.path.join({str(tmp_path)!r}, "rank%s.json" % os.environ["RANK"]), "w").write(json.dumps(out))
    """))
    r = subprocess.run([sys.executable, "-m", "tinygraph.launch", "--gpus", "3", "--master-port", "4321",
                        str(script), "--flag", "x"], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(3)]
    assert [g["RANK"] for g in got] == ["0", "1", "2"]
    assert all(g["WORLD_SIZE"] == "3" and g["MASTER_PORT"] == "4321" and g["argv"] == ["--flag", "x"]
               and g["NCCL_NVLS_ENABLE"] == "0" for g in got)


def test_launcher_stops_the_others_when_a_rank_fails(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '1':\n    sys.exit(3)\n"
                      "time.sleep(120)\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tinygraph.launch", "--gpus", "3", "--grace", "2", str(script)],
                       env=_env(), capture_output=True, text=True, timeout=100)
    assert r.returncode == 3
    assert "rank 1 exited with code 3; stopping the other ranks" in r.stderr
    assert time.monotonic() - t0 < 60  # not the 120 s the other ranks would sleep


def test_launcher_runs_a_module(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinygraph.launch", "--gpus", "2", "-m", "json.tool", "--help"],
                       env=_env(), capture_output=True, text=True, timeout=100)
    assert r.returncode == 0 and r.stdout.count("usage") == 2


# -- NCCL, against a fake binding ---------------------------------------------------------------------
class FakeNccl:
    """The parts of nccl4py's ``nccl.bindings.nccl`` the communicator calls, recorded."""

    class DataType:
        Float16, Bfloat16, Float32 = 6, 9, 7

    class RedOp:
        Sum = 0

    def __init__(self) -> None:
        self.calls: list = []

    def get_unique_id(self):
        return bytes(range(128))

    def comm_init_rank_scalable(self, nranks, rank, n_ids, ids, cfg):
        if memoryview(ids).readonly:  # nccl4py refuses read-only buffers (bytes) for the ids
            raise ValueError("buf must be ... a 1D contiguous writable buffer")
        self.calls.append(("init", nranks, rank, n_ids, bytes(ids), cfg))
        return "comm"

    def all_reduce(self, *args):
        self.calls.append(("all_reduce",) + args)

    def comm_destroy(self, comm):
        self.calls.append(("destroy", comm))


class FakeDevice:
    def make_current(self) -> None:
        pass


class FakeNcclComm(parallel.OneRankCommunicator):
    """A communicator of the NCCL kind that records what the CUDA lowering hands it."""

    kind = "nccl"

    def __init__(self, rank: int, size: int = 2) -> None:
        self.rank, self.size, self.calls = rank, size, []
        self._register()

    def all_reduce_device(self, src, dst, count, dtype, stream):
        self.calls.append((src, dst, count, dtype))


def test_nccl_communicator_calls(monkeypatch):
    from tinygraph.backends.cuda.nccl import NcclCommunicator
    fake = FakeNccl()
    comm = NcclCommunicator(DistEnv(0, 1, 0), FakeDevice(), binding=fake)
    assert fake.calls == [("init", 1, 0, 1, bytes(range(128)), 0)]
    assert parallel.communicator(comm.id) is comm and comm.kind == "nccl"
    stream = type("S", (), {"handle": 77})()
    comm.all_reduce_device(0x1000, 0x2000, 12, "bf16", stream)
    assert fake.calls[-1] == ("all_reduce", 0x1000, 0x2000, 12, 9, 0, "comm", 77)
    with pytest.raises(tg.BackendError, match="not i8"):
        comm.all_reduce_device(0, 0, 1, "i8", stream)
    with pytest.raises(parallel.CommunicatorError, match="CUDA backend"):
        comm.all_reduce(0, np.zeros(2, np.float32))
    comm.close()
    comm.close()
    assert fake.calls.count(("destroy", "comm")) == 1
    with pytest.raises(tg.BackendError, match="closed"):
        comm.all_reduce_device(0, 0, 1, "f16", stream)


_NCCL_RANK = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from test_distributed import FakeNccl, FakeDevice
    from tinygraph.backends.cuda.nccl import NcclCommunicator
    from tinygraph.distributed import DistEnv
    fake = FakeNccl()
    c = NcclCommunicator(DistEnv.from_env(), FakeDevice(), timeout=60, binding=fake)
    print(c.rank, fake.calls[0][4].hex(), c.seed_base)
""")


def test_nccl_ranks_share_rank_zeros_id_and_seed():
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _NCCL_RANK, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                              text=True, env=_env(WORLD_SIZE=2, RANK=r, MASTER_PORT=port)) for r in (1, 0)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {o[0] for o in outs} == {"0", "1"}
    assert outs[0][1:] == outs[1][1:] and outs[0][1] == bytes(range(128)).hex()


def test_cuda_lowering_hands_the_node_to_nccl():
    """The all_reduce node's lowering: a contiguous input is summed out of place into the node's
    buffer (f16, its element count, on the backend's stream); a strided one is first copied."""
    from cuda_record import record_launches

    comm = FakeNcclComm(0)
    s = tg.Session(backend="numpy")
    s.communicator = comm.handle(0)
    g = s.graph()
    x = g.input((4, 6), tg.float16, name="x")
    y = tg.all_reduce(tg.scale(x, 2.0), name="sum")
    z = tg.all_reduce(tg.transpose(y), name="sum_t")  # a strided view
    g.output(z)
    rec = record_launches(g, s._plan_for(g))
    (src, dst, count, dtype), (src2, dst2, count2, dtype2) = comm.calls
    assert (count, dtype, count2, dtype2) == (24, "f16", 24, "f16")
    assert src != dst  # out of place from the scale's buffer
    assert src2 == dst2  # the transposed view was gathered into the output, then summed in place
    assert [r[0] for r in rec] == ["scale_f16", "cpy_f16_f16"]  # NCCL calls are not kernel launches


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok_model(tmp_path_factory) -> Path:
    import shutil

    from test_first_run import _byte_tokenizer_json
    d = tmp_path_factory.mktemp("tp_cli") / "llama_tok"
    shutil.copytree(ROOT / "tests" / "fixtures" / "llama", d)
    (d / "tokenizer.json").write_text(_byte_tokenizer_json())
    return d


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env or _env(), capture_output=True, text=True, timeout=300)


def test_run_tensor_parallel_on_numpy_gives_the_same_text(tok_model):
    base = ("-m", "tinygraph.run", "--model", str(tok_model), "--backend", "numpy", "--prompt", "hello there",
            "--max-new-tokens", "8", "--ignore-eos")
    one, two = _cli(*base), _cli(*base, "--tensor-parallel", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert one.stdout == two.stdout and one.stdout.startswith("hello there")


def test_run_under_the_launcher_on_numpy_prints_once_the_same_text(tok_model):
    """Two processes (NumPy ranks, all-reduces over TCP): rank 0 alone prints, the same text as
    one process; a rank count that is not the launcher's, or a prompt on stdin, is refused."""
    base = ("-m", "tinygraph.launch", "--gpus", "2", "--master-port", str(free_port()), "-m", "tinygraph.run",
            "--model", str(tok_model), "--backend", "numpy")
    args = ("--prompt", "hello there", "--max-new-tokens", "8", "--ignore-eos")
    r = _cli(*base, "--tensor-parallel", "2", *args)
    one = _cli("-m", "tinygraph.run", "--model", str(tok_model), "--backend", "numpy", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == one.stdout and one.stdout.startswith("hello there")
    r = _cli(*base, "--tensor-parallel", "3", "--prompt", "hi")
    assert r.returncode != 0 and "pass --tensor-parallel 2" in r.stderr
    r = _cli(*base, "--tensor-parallel", "2")
    assert r.returncode != 0 and "give the prompt as --prompt" in r.stderr


def test_run_tensor_parallel_on_cuda_without_the_launcher_is_refused(tok_model):
    env = _env()
    env.pop("WORLD_SIZE", None)
    r = _cli("-m", "tinygraph.run", "--model", str(tok_model), "--backend", "cuda", "--tensor-parallel", "2",
             "--prompt", "hi", env=env)
    assert r.returncode != 0
    # without a GPU the backend is refused first; with one, the missing launcher is named
    assert "tinygraph.launch --gpus 2" in r.stderr or "CUDA" in r.stderr


def test_rank_models_draw_the_same_seeds_from_the_shared_base():
    """Two processes' rank models turn a seed of None into the same sequence of seeds (drawn from
    the communicator's shared base): their samplers agree. A given seed is kept."""
    from tinygraph.models.tensor_parallel import RankModel

    class Comm:
        seed_base = 12345

    def seeds():
        m = RankModel.__new__(RankModel)
        m._comm, m._seed_calls = Comm(), 0
        return [m._shared_seed(None) for _ in range(3)] + [m._shared_seed(7)]

    a, b = seeds(), seeds()
    assert a == b and len(set(a[:3])) == 3 and a[3] == 7


def test_bench_tp_tool_runs_and_records(tmp_path):
    """tools/bench_tp.py on the NumPy backend and a tiny config, in one process and then as two
    processes under tinygraph.launch (the checkpoint written once, by rank 0): one JSON line
    each with the rate and the greedy ids, and the two-rank run finds its ids equal to one's."""
    tool = [str(ROOT / "tools" / "bench_tp.py"), "--config", "qwen3-8b", "--tiny", "--backend", "numpy",
            "--new", "5", "--runs", "2", "--work", str(tmp_path)]
    r = _cli(*tool)
    assert r.returncode == 0, r.stderr
    r2 = _cli("-m", "tinygraph.launch", "--gpus", "2", "--master-port", str(free_port()), *tool)
    assert r2.returncode == 0, r2.stderr
    one, two = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert (one["ranks"], two["ranks"]) == (1, 2) and one["config"] == "qwen3-8b-tiny" and len(one["ids"]) == 5
    assert one["decode_tok_s"] > 0 and two["decode_tok_s"] > 0 and two["ids"] == one["ids"]
    assert "ids equal to 1 GPU's: True" in r2.stdout and r2.stdout.count("GPU(s):") == 1  # rank 0 reports
def test_sigterm_to_the_launcher_stops_every_rank(tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import os, pathlib, sys, time\n"
                      f"pathlib.Path({str(tmp_path)!r}, 'pid' + os.environ['RANK']).write_text(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-m", "tinygraph.launch", "--gpus", "2", "--grace", "2", str(script)],
                         env=_env())
    pids = [tmp_path / f"pid{r}" for r in range(2)]
    end = time.monotonic() + 60
    while not all(f.exists() and f.read_text() for f in pids) and time.monotonic() < end:
        time.sleep(0.05)
    p.terminate()
    assert p.wait(timeout=60) == 143

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    assert not any(alive(int(f.read_text())) for f in pids)


# -- the CUDA lowering of every family's sharded graphs (recorded, no GPU) --------------------------
def _shardable_families() -> list[str]:
    from test_tensor_parallel import SHARDABLE
    return sorted({fam for fam, R in SHARDABLE if R == 2})


@pytest.mark.parametrize("fam", _shardable_families())
def test_cuda_backend_lowers_every_sharded_graph(fam, monkeypatch):
    """Rank 1 of 2 of every shardable fixture, with an NCCL-kind communicator: the CUDA backend
    (driver faked, tests/cuda_record.py) lowers its prefill and decode graphs (vocabulary-parallel
    embedding, the zero-padded logits gather, the row-parallel reductions), and every all_reduce
    node reaches NCCL once, with its own element count and 16-bit type."""
    import ctypes

    from cuda_record import record_launches
    from test_tensor_parallel import FIX, LOAD
    from tinygraph.backends.cuda import gemm_launch
    from tinygraph.io import load_checkpoint
    from tinygraph.models.tensor_parallel import RankModel, ShardedCheckpoint
    monkeypatch.setattr(gemm_launch, "_TMAPS", {})
    monkeypatch.setattr(gemm_launch, "_encode", lambda *key: (ctypes.c_uint64 * 16)())

    comm = FakeNcclComm(1)
    with load_checkpoint(FIX / fam) as ckpt:
        m = RankModel(ShardedCheckpoint(ckpt, 2, 1), comm, dtype="float16", **LOAD.get(fam, {}))
    with m:
        for T, want in ((7, "logits"), (1, "argmax")):
            g, _, _ = m.step_graph(T, want)
            plan = m.session._plan_for(g)
            comm.calls.clear()
            record_launches(g, plan)
            nodes = [n for n in plan.order if n.op == "all_reduce"]
            assert nodes and [c for _, _, c, _ in comm.calls] == [n.size for n in nodes]
            assert {d for _, _, _, d in comm.calls} == {"f16"}


# -- the NumPy backend across processes ---------------------------------------------------------------
_SOCK_RANK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tinygraph.distributed import DistEnv, SocketCommunicator
    env = DistEnv.from_env()
    c = SocketCommunicator(env, timeout=60)
    x = (np.arange(6, dtype=np.float32).reshape(2, 3) + 0.1) * (env.rank + 1)
    y = c.all_reduce(env.rank, x.astype(np.float16), tag="t")
    z = c.all_reduce(env.rank, np.full(4, 1e-3 * (env.rank + 1), np.float32), tag="u")
    bad = None
    try:
        c.all_reduce(env.rank, np.zeros(3 if env.rank == 1 else 2, np.float32), tag="v")
    except Exception as e:
        bad = type(e).__name__ + ": " + str(e)
    print(json.dumps({"rank": env.rank, "y": y.tolist(), "z": z.tolist(), "seed": c.seed_base, "bad": bad,
                      "rounds": c.rounds}))
""")


def test_socket_communicator_sums_in_rank_order_across_processes():
    port, world = free_port(), 3
    procs = [subprocess.Popen([sys.executable, "-c", _SOCK_RANK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(WORLD_SIZE=world, RANK=r, MASTER_PORT=port)) for r in (2, 0, 1)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    x = (np.arange(6, dtype=np.float32).reshape(2, 3) + 0.1)
    want_y = np.zeros((2, 3), np.float32)
    want_z = np.zeros(4, np.float32)
    for r in range(world):  # rank order, float32 (the in-process communicator's arithmetic)
        want_y += (x * (r + 1)).astype(np.float16)
        want_z += np.full(4, 1e-3 * (r + 1), np.float32)
    for o in outs:
        np.testing.assert_array_equal(np.array(o["y"], np.float32), want_y)
        np.testing.assert_array_equal(np.array(o["z"], np.float32), want_z)
        assert "ranks disagree" in o["bad"] and o["rounds"] == 2
    assert len({o["seed"] for o in outs}) == 1


_TP_RANK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tinygraph.models import load_model
    with load_model(sys.argv[1], backend="numpy", tensor_parallel=2) as m:
        logits = m.step([3, 14, 15, 92, 65], 0)
        ids = m.generate([3, 14, 15, 92, 65], max_new_tokens=6, temperature=0)
        sampled = m.generate([3, 14, 15], max_new_tokens=6, temperature=0.8)  # seed None: the shared seed
        print(json.dumps({"logits": np.asarray(logits, np.float32).tolist(), "ids": ids, "sampled": sampled,
                          "kind": type(m).__name__}))
""")


@pytest.mark.parametrize("fam", ["llama", "qwen3"])
def test_numpy_model_over_two_processes_equals_the_in_process_simulation(fam):
    from tinygraph.models import load_model
    path = str(ROOT / "tests" / "fixtures" / fam)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _TP_RANK, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(WORLD_SIZE=2, RANK=r, MASTER_PORT=port)) for r in (1, 0)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = [json.loads(o[0]) for o in outs]
    env = dict(os.environ)
    os.environ.pop("WORLD_SIZE", None)
    try:
        with load_model(path, backend="numpy", tensor_parallel=2) as m:
            want_logits = np.asarray(m.step([3, 14, 15, 92, 65], 0), np.float32)
            want_ids = m.generate([3, 14, 15, 92, 65], max_new_tokens=6, temperature=0)
    finally:
        os.environ.clear()
        os.environ.update(env)
    for g in got:
        assert g["kind"] == "RankModel"
        np.testing.assert_array_equal(np.array(g["logits"], np.float32), want_logits)  # bit for bit
        assert g["ids"] == want_ids
    assert got[0]["sampled"] == got[1]["sampled"]  # one shared seed: the ranks sample alike
