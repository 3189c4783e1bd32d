"""Kernel modules, functions and launches for the CUDA driver wrapper (``driver.py`` re-exports
every name; call them as ``driver.launch`` ...): loading a cubin, looking up functions and their
parameter layout, packing and checking launch arguments, launching (with programmatic dependent
launch where asked), prepared launches."""
from __future__ import annotations

import contextvars
import ctypes
import os
import warnings
import weakref
from typing import Any, Iterable

from .driver import DeviceBuffer, KernelArgumentError, Stream, _drv, _release, check

class Function:
    """A kernel of a loaded module. ``name`` is its (extern "C") name. ``pdl``: launches use
    programmatic dependent launch (see :func:`launch`); inherited from the module."""

    def __init__(self, handle, name: str, module: "Module"):
        self.handle = handle
        self.name = name
        self.module = module  # keeps the module loaded
        self.pdl = module.pdl
        self._pdl_configs: dict = {}  # (grid, block, shared_mem, stream) -> CUlaunchConfig
        self._param_sizes: list[int] | None = None
        self._checked_sizes: tuple | None = None

    def attribute(self, attr) -> int:
        return int(check(_drv().cuFuncGetAttribute(attr, self.handle),
                         f"cuFuncGetAttribute({attr}) of {self.name}"))

    @property
    def num_regs(self) -> int:
        return self.attribute(_drv().CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS)

    def set_max_dynamic_shared(self, nbytes: int) -> None:
        drv = _drv()
        check(drv.cuFuncSetAttribute(
            self.handle, drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            int(nbytes)), f"cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES={nbytes}) of {self.name}")

    def param_sizes(self) -> list[int] | None:
        """Byte size of each kernel parameter from the image (None if the driver cannot say)."""
        if self._param_sizes is None:
            drv = _drv()
            if not hasattr(drv, "cuFuncGetParamInfo"):
                return None
            sizes: list[int] = []
            for i in range(4096):
                try:
                    res = drv.cuFuncGetParamInfo(self.handle, i)
                except Exception:  # entry point missing in an old driver
                    return None
                if res[0] != drv.CUresult.CUDA_SUCCESS:
                    if i == 0 and res[0] != drv.CUresult.CUDA_ERROR_INVALID_VALUE:
                        return None  # unsupported by this driver
                    break
                sizes.append(int(res[2]))
            self._param_sizes = sizes
        return self._param_sizes

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None) -> None:
        launch(self, grid, block, args, shared_mem, stream)

    def __repr__(self) -> str:
        return f"Function({self.name})"


class Module:
    """A module loaded from CUBIN bytes (cuModuleLoadData). ``pdl=True``: its kernels are
    launched with programmatic dependent launch (they must call griddepcontrol.wait before
    touching memory an earlier kernel writes: cuda_src/common.cuh, tg_pdl_enter)."""

    def __init__(self, image: bytes, name: str = "", pdl: bool = False):
        drv = _drv()
        self.name = name
        self.pdl = bool(pdl)
        self._image = bytes(image)  # keep the image alive for the duration of the load
        self.handle = check(drv.cuModuleLoadData(self._image),
                            f"cuModuleLoadData({name or 'cubin'}, {len(self._image)} bytes)")
        self._functions: dict[str, Function] = {}
        self._finalizer = weakref.finalize(self, _release, Module._unload, self.handle)

    @staticmethod
    def _unload(h) -> None:
        try:
            _drv().cuModuleUnload(h)
        except Exception:
            pass

    def get_function(self, name: str) -> Function:
        f = self._functions.get(name)
        if f is None:
            h = check(_drv().cuModuleGetFunction(self.handle, name.encode()),
                      f"cuModuleGetFunction({name!r}) in module {self.name or '<cubin>'}")
            f = self._functions[name] = Function(h, name, self)
        return f

    def unload(self) -> None:
        if self._finalizer.alive:
            self._finalizer()


def _dim3(x) -> tuple[int, int, int]:
    if isinstance(x, int):
        return (x, 1, 1)
    t = tuple(int(v) for v in x)
    if not 1 <= len(t) <= 3:
        raise ValueError(f"grid/block must have 1..3 dimensions, got {x!r}")
    return t + (1,) * (3 - len(t))


_CTYPES_ARG = (ctypes._SimpleCData, ctypes.Structure, ctypes.Array)


def _as_ctype(a, func: Function, i: int):
    if isinstance(a, (ctypes._SimpleCData, ctypes.Structure, ctypes.Array)):
        return a
    if isinstance(a, DeviceBuffer):
        return ctypes.c_uint64(a.ptr)
    if a is None:
        return ctypes.c_uint64(0)
    raise KernelArgumentError(
        f"launch of {func.name}: argument {i} is a {type(a).__name__}; pass a ctypes value "
        "(c_uint64 for pointers, c_float, c_int32, a TD structure) or a DeviceBuffer")


_SYNC_EACH_LAUNCH = os.environ.get("TINYGRAPH_CUDA_SYNC", "") not in ("", "0")
#: a profiling aid (tools/profile_skip.py): kernels whose names start with one of these
#: (``TINYGRAPH_PROFILE_SKIP=attn,rope_store``) are not launched at all, so that a replayed
#: step can be timed without them. Every result is then wrong; a warning says so at import.
PROFILE_SKIP = tuple(p for p in os.environ.get("TINYGRAPH_PROFILE_SKIP", "").split(",") if p)
if PROFILE_SKIP:
    warnings.warn(f"TINYGRAPH_PROFILE_SKIP={','.join(PROFILE_SKIP)}: kernels named so are not launched; "
                  "every result is wrong (profiling only)", RuntimeWarning, stacklevel=2)
#: called with each launched kernel's name while set (the backend's record of which kernels a
#: graph node launched: ``Graph.kernels``)
LAUNCH_OBSERVER: contextvars.ContextVar = contextvars.ContextVar("tinygraph_launch_observer", default=None)


_DEFAULT_STREAM = None


def _launch_stream(stream):
    global _DEFAULT_STREAM
    if stream is None:
        if _DEFAULT_STREAM is None:
            _DEFAULT_STREAM = _drv().CUstream(0)
        return _DEFAULT_STREAM
    if isinstance(stream, Stream):
        return stream.handle
    return stream


def _check_args(func: Function, cargs: list) -> None:
    sizes = func.param_sizes()
    if sizes is None:
        return
    got = tuple(ctypes.sizeof(a) for a in cargs)
    if got == func._checked_sizes:
        return
    if len(sizes) != len(cargs):
        raise KernelArgumentError(
            f"launch of {func.name}: kernel takes {len(sizes)} parameters, got {len(cargs)}")
    for i, (sz, a) in enumerate(zip(sizes, cargs)):
        if ctypes.sizeof(a) != sz:
            raise KernelArgumentError(
                f"launch of {func.name}: parameter {i} is {sz} bytes, got {type(a).__name__} "
                f"of {ctypes.sizeof(a)} bytes")
    func._checked_sizes = got


def _launch_raw(func: Function, g, b, shared_mem: int, hs, kp: int, pdl: bool):
    """cuLaunchKernel, or cuLaunchKernelEx with programmatic stream serialization (``pdl``: the
    kernel may start before the previous one in the stream finishes; it waits in-kernel)."""
    drv = _drv()
    if not pdl:
        return drv.cuLaunchKernel(func.handle, g[0], g[1], g[2], b[0], b[1], b[2], shared_mem, hs, kp, 0)
    key = (g, b, shared_mem, int(hs))
    cfg = func._pdl_configs.get(key)
    if cfg is None:  # built once per shape: eager (prefill) launches are host-bound
        cfg = drv.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = g
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = b
        cfg.sharedMemBytes = shared_mem
        cfg.hStream = hs
        attr = drv.CUlaunchAttribute()
        attr.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attr.value.programmaticStreamSerializationAllowed = 1
        cfg.attrs = [attr]
        cfg.numAttrs = 1
        if len(func._pdl_configs) > 256:
            func._pdl_configs.clear()
        func._pdl_configs[key] = cfg
    return drv.cuLaunchKernelEx(cfg, func.handle, kp, 0)


def launch(func: Function, grid, block, args: Iterable[Any], shared_mem: int = 0, stream=None,
           pdl: bool | None = None) -> None:
    """Launch ``func`` on ``grid`` x ``block`` with ``args`` (ctypes values / DeviceBuffers).

    ``grid``/``block``: int or tuple of 1..3 ints. ``pdl``: programmatic dependent launch
    (None: ``func.pdl``; False for a kernel that reads, before its griddepcontrol.wait, memory
    the previous kernels may still write). Raises CudaError naming the kernel when the driver
    refuses the launch, KernelArgumentError when the arguments do not match the kernel.
    """
    if PROFILE_SKIP and func.name.startswith(PROFILE_SKIP):
        return
    drv = _drv()
    g = (grid, 1, 1) if isinstance(grid, int) else _dim3(grid)
    b = (block, 1, 1) if isinstance(block, int) else _dim3(block)
    cargs = [a if isinstance(a, _CTYPES_ARG) else _as_ctype(a, func, i) for i, a in enumerate(args)]
    _check_args(func, cargs)
    n = len(cargs)
    ptrs = (ctypes.c_void_p * max(n, 1))(*[ctypes.addressof(a) for a in cargs])
    hs = _launch_stream(stream)
    pdl = func.pdl if pdl is None else pdl
    (err,) = _launch_raw(func, g, b, shared_mem, hs, ctypes.addressof(ptrs) if n else 0, pdl)
    if err != drv.CUresult.CUDA_SUCCESS or _SYNC_EACH_LAUNCH:
        desc = f"cuLaunchKernel{'Ex' if pdl else ''}({func.name}, grid={g}, block={b}, shared_mem={shared_mem})"
        check((err,), desc)
        if stream is None:
            check(drv.cuCtxSynchronize(), f"synchronize after {desc}")
        else:
            check(drv.cuStreamSynchronize(hs), f"synchronize after {desc}")
    obs = LAUNCH_OBSERVER.get()
    if obs is not None:
        obs(func.name)


class PreparedLaunch:
    """A launch whose arguments are converted, checked and packed once; calling it launches
    (``pl(stream)``). The argument values are owned copies: ``set_arg(i, value)`` changes one
    (e.g. a pointer) in place for the next call."""

    __slots__ = ("func", "grid", "block", "shared_mem", "args", "pdl", "_ptrs", "_kp")

    def __init__(self, func: Function, grid, block, args: Iterable[Any], shared_mem: int = 0,
                 pdl: bool | None = None):
        self.func = func
        self.pdl = func.pdl if pdl is None else bool(pdl)
        self.grid = (grid, 1, 1) if isinstance(grid, int) else _dim3(grid)
        self.block = (block, 1, 1) if isinstance(block, int) else _dim3(block)
        self.shared_mem = int(shared_mem)
        cargs = [_as_ctype(a, func, i) for i, a in enumerate(args)]
        _check_args(func, cargs)
        # own copies, so later changes to the caller's ctypes objects do not leak in
        self.args = [type(a).from_buffer_copy(a) for a in cargs]
        self._ptrs = (ctypes.c_void_p * max(len(self.args), 1))(*[ctypes.addressof(a) for a in self.args])
        self._kp = ctypes.addressof(self._ptrs) if self.args else 0

    def set_arg(self, i: int, value) -> None:
        a = self.args[i]
        if isinstance(value, (int, float)) and isinstance(a, ctypes._SimpleCData):
            v = type(a)(value)  # a plain number for a scalar / pointer slot takes the slot's type
        else:
            v = _as_ctype(value, self.func, i)
        if ctypes.sizeof(v) != ctypes.sizeof(a):
            raise KernelArgumentError(f"{self.func.name}: parameter {i} is {ctypes.sizeof(a)} bytes, "
                                      f"got {ctypes.sizeof(v)}")
        ctypes.memmove(ctypes.addressof(a), ctypes.addressof(v), ctypes.sizeof(a))

    def __call__(self, stream=None) -> None:
        if PROFILE_SKIP and self.func.name.startswith(PROFILE_SKIP):
            return
        drv = _drv()
        g, b = self.grid, self.block
        hs = _launch_stream(stream)
        (err,) = _launch_raw(self.func, g, b, self.shared_mem, hs, self._kp, self.pdl)
        if err != drv.CUresult.CUDA_SUCCESS or _SYNC_EACH_LAUNCH:
            desc = (f"cuLaunchKernel{'Ex' if self.pdl else ''}({self.func.name}, grid={g}, block={b}, "
                    f"shared_mem={self.shared_mem})")
            check((err,), desc)
            check(drv.cuStreamSynchronize(hs), f"synchronize after {desc}")

    def __repr__(self) -> str:
        return f"PreparedLaunch({self.func.name}, grid={self.grid}, block={self.block})"


