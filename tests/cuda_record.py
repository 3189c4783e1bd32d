"""Record the kernel launches the CUDA backend makes for a planned graph, without a GPU.

The CUDA backend's lowering (``CudaBackend._run_all`` over a plan: which kernel, grid, block,
shared memory, PDL flag and arguments each node launches) is plain Python over a driver and a
kernel library. :func:`record_launches` runs it with the driver faked: modules are not compiled,
launches are recorded instead of made, buffers get deterministic fake addresses (each storage
the k-th it meets, in plan order). The record is a list of plain tuples, so a refactor of the
lowering can be checked to launch exactly what it did before (``tests/test_cuda_launches.py``
against ``tests/fixtures/cuda_launches.json``); whether those launches compute the right thing
is the GPU tests' job.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
from typing import Any, Iterator

from tinygraph.backends.cuda import backend as cb
from tinygraph.backends.cuda import compiler, driver, kernels
from tinygraph.backends.cuda import launch as launch_mod
from tinygraph.graph import Graph
from tinygraph.graph import ExecPlan

SCRATCH, WORK = 0x7F0000000000, 0x7E0000000000


class FakeFunction:
    def __init__(self, name: str) -> None:
        self.name, self.handle, self.pdl = name, 0, True

    def set_max_dynamic_shared(self, nbytes: int) -> None:
        self.max_dynamic_shared = nbytes


class FakeModule:
    def __init__(self, cubin, name: str = "", pdl: bool = True) -> None:
        self.name = name

    def get_function(self, name: str) -> FakeFunction:
        return FakeFunction(name)


class FakeBuffer:
    _next = [0x7D0000000000]
    #: buffers given contents (a persistent kernel's tables): their launches record the contents
    uploaded: list["FakeBuffer"] = []

    def __init__(self, nbytes: int, what: str = "", device=None) -> None:
        self.nbytes, self.ptr = int(nbytes), self._next[0]
        self._next[0] += 1 << 36
        self.data: bytes | None = None

    def upload(self, host, offset: int = 0, stream=None) -> None:
        self.data = bytes(memoryview(host).cast("B"))
        FakeBuffer.uploaded.append(self)

    def free(self) -> None:
        pass


def _table_ref(v: int) -> Any:
    """A pointer into an uploaded buffer as (digest of its contents, offset), else itself."""
    for b in FakeBuffer.uploaded:
        if b.ptr <= v < b.ptr + b.nbytes:
            return ["table", hashlib.sha256(b.data).hexdigest()[:16], v - b.ptr]
    return v


class FakeDevice:
    arch, sm_count, max_shared_per_block_optin = "sm_90", 132, 227 * 1024

    def make_current(self) -> None:
        pass


class FakeStream:
    handle = 0

    def synchronize(self, what: str = "") -> None:
        pass


def _plain(a: Any) -> Any:
    """A launch argument as plain data (ctypes scalars and structures by value)."""
    if isinstance(a, ctypes.Structure):
        return [_plain(getattr(a, f)) for f, _ in a._fields_]
    if isinstance(a, ctypes.Array):
        return [_plain(x) for x in a]
    if isinstance(a, ctypes._SimpleCData):
        v = a.value
        return round(v, 7) if isinstance(v, float) else _table_ref(v) if isinstance(v, int) else v
    if isinstance(a, (FakeBuffer,)):
        return a.ptr
    return a


@contextlib.contextmanager
def fake_driver() -> Iterator[list]:
    """Patch the driver and compiler so that kernel launches are recorded; yields the record."""
    rec: list = []

    def launch(func, grid, block, args, shared_mem=0, stream=None, pdl=None):
        g = (grid, 1, 1) if isinstance(grid, int) else tuple(grid) + (1,) * (3 - len(tuple(grid)))
        b = (block, 1, 1) if isinstance(block, int) else tuple(block) + (1,) * (3 - len(tuple(block)))
        rec.append((func.name, list(g), list(b), int(shared_mem), bool(func.pdl if pdl is None else pdl),
                    [_plain(a) for a in args]))
        obs = launch_mod.LAUNCH_OBSERVER.get()  # as the real launch does
        if obs is not None:
            obs(func.name)

    saved = {}
    patches = [(driver, "launch", launch), (driver, "Module", FakeModule), (driver, "DeviceBuffer", FakeBuffer),
               (driver, "memset_d8", lambda *a, **k: None),
               (compiler, "compile_source", lambda *a, **k: b"")]
    for mod, name, new in patches:
        saved[(mod, name)] = getattr(mod, name)
        setattr(mod, name, new)
    try:
        yield rec
    finally:
        for (mod, name), old in saved.items():
            setattr(mod, name, old)


def fake_backend() -> cb.CudaBackend:
    """A CudaBackend whose device, stream and library need no GPU (use inside :func:`fake_driver`)."""
    be = cb.CudaBackend.__new__(cb.CudaBackend)
    be.device = FakeDevice()
    be.lib = kernels.KernelLibrary(be.device, cache=False)
    be.stream = FakeStream()
    be.buffers = {}
    be._arena = be._inputs = be._pin = None
    be._scratch = FakeBuffer(1 << 30)
    be._scratch.ptr = SCRATCH
    be._work = FakeBuffer(1 << 30)
    be._work.ptr = WORK
    be._rings, be._written, be._owner, be.launches = [], set(), None, 0
    be._scratch_used = 0
    be._klog = None
    be._persist = {}
    be._persist_stamps = None
    return be


@contextlib.contextmanager
def cuda_graph_rules(session) -> Iterator[None]:
    """Build graphs in ``session`` (a NumPy one) as a CUDA session would where the two differ:
    ``Backend.paged_attention_ok`` (a paged decode step's attention fused only where attn_gqa
    has a kernel)."""
    with fake_driver():
        rule = fake_backend().paged_attention_ok
    session.backend.paged_attention_ok = rule
    try:
        yield
    finally:
        del session.backend.paged_attention_ok


def record_launches(graph: Graph, plan: ExecPlan, kernels: dict | None = None, timeline: bool = False) -> list:
    """The launches the CUDA backend makes to run ``plan`` of ``graph`` once, eagerly: a list of
    (kernel name, grid, block, shared bytes, pdl, arguments as plain data). ``kernels``: a dict the
    backend fills as for ``Graph.kernels`` (node id -> kernel names); ``timeline``: with
    ``persistent.record_timeline`` on."""
    from tinygraph.backends.cuda import persistent
    with fake_driver() as rec:
        be = fake_backend()
        be._klog = kernels
        if timeline:
            persistent.record_timeline(be)
        base: dict[int, int] = {}
        for n in plan.order:
            for t in (n,) + tuple(n.srcs):
                if t.storage.id not in base:
                    base[t.storage.id] = (len(base) + 1) << 32
        be._written = {n.storage.id for n in plan.order}
        be.lib.pdl_active = cb._decode_like(plan)
        be._run_all(plan, base)
    return rec
