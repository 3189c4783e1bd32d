"""A thin, checked wrapper over ``cuda.bindings.driver`` (the CUDA driver API).

Every driver call goes through :func:`check`, which raises :class:`CudaError` naming the
operation and the CUresult (``cuMemAlloc of 123 bytes while loading weights:
CUDA_ERROR_OUT_OF_MEMORY (free 1.2 GiB of 80.0 GiB)``).

Kernel parameters: :func:`launch` takes ``args`` as a list of ctypes instances (``c_uint64`` /
``c_void_p`` for device pointers, ``c_float``, ``c_int32``, ctypes Structures such as the ``TD``
descriptor) or :class:`DeviceBuffer` objects (passed as their pointer). It builds a ctypes array
of ``void*`` pointing at each value and hands its address to ``cuLaunchKernel`` as
``kernelParams`` -- the driver copies the values during the call, so nothing must outlive it
(this also holds while a stream is being captured into a CUDA graph). The first launch of each
function checks the number and sizes of the arguments against the kernel image
(``cuFuncGetParamInfo``).

Set ``TINYGRAPH_CUDA_SYNC=1`` to synchronise after every launch, so an asynchronous fault is
reported with the name of the kernel that caused it.

This module needs only the standard library, ``cuda.bindings`` and ``tinygraph.util``; it does
not import the rest of the package.
"""
from __future__ import annotations

import ctypes
import os
import threading
import weakref
from typing import Any, Iterable, Sequence

from ...util import format_bytes

__all__ = [
    "CudaError",
    "KernelArgumentError",
    "check",
    "driver_available",
    "driver_unavailable_reason",
    "Device",
    "get_device",
    "DeviceBuffer",
    "PinnedBuffer",
    "Stream",
    "Event",
    "Module",
    "Function",
    "launch",
    "PreparedLaunch",
    "memcpy_htod",
    "memcpy_dtoh",
    "memcpy_dtod",
    "memset_d8",
    "upload_staged",
    "mem_get_info",
    "Graph",
    "GraphExec",
    "capture",
    "format_bytes",
]


def _drv():
    from cuda.bindings import driver  # lazy: importing this module never needs the bindings

    return driver


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _error_base() -> type:
    """tinygraph's ``BackendError`` (a ``TinygraphError`` and a ``RuntimeError``) when the package
    is importable, else ``RuntimeError``, so this module still works on its own."""
    try:
        from tinygraph.errors import BackendError

        return BackendError
    except Exception:  # pragma: no cover - standalone use
        return RuntimeError


class CudaError(_error_base()):  # type: ignore[misc]
    """A CUDA driver call failed. ``result`` is the CUresult (or None), ``name`` its name,
    ``what`` the operation. A ``tinygraph.BackendError`` (hence ``RuntimeError``)."""

    def __init__(self, message: str, result: Any = None, what: str = ""):
        super().__init__(message)
        self.result = result
        self.name = _result_name(result) if result is not None else ""
        self.what = what

    @property
    def out_of_memory(self) -> bool:
        return self.name == "CUDA_ERROR_OUT_OF_MEMORY"


class KernelArgumentError(CudaError, TypeError):
    """The arguments given to :func:`launch` do not match the kernel's parameter list."""


def _result_name(res) -> str:
    try:
        return res.name  # CUresult enum
    except AttributeError:
        pass
    try:
        return _drv().CUresult(int(res)).name
    except Exception:
        return str(res)


def _mem_info_suffix() -> str:
    try:
        drv = _drv()
        err, free, total = drv.cuMemGetInfo()
        if err == drv.CUresult.CUDA_SUCCESS:
            return f" (free {format_bytes(free)} = {int(free)} bytes, of {format_bytes(total)})"
    except Exception:
        pass
    return ""


def check(result, what: str):
    """Check a cuda-python return tuple ``(CUresult, *values)``.

    Returns None, the single value, or a tuple of values. Raises :class:`CudaError` with
    ``what`` and the CUresult's name; out-of-memory errors also say how much is free.
    """
    drv = _drv()
    if isinstance(result, tuple):
        err, vals = result[0], result[1:]
    else:
        err, vals = result, ()
    if err != drv.CUresult.CUDA_SUCCESS:
        name = _result_name(err)
        msg = f"{what}: {name}"
        if name == "CUDA_ERROR_OUT_OF_MEMORY":
            msg += _mem_info_suffix()
        raise CudaError(msg, err, what)
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0]
    return vals


# --------------------------------------------------------------------------------------------
# driver / device
# --------------------------------------------------------------------------------------------
_init_lock = threading.Lock()
_init_state: dict[str, Any] = {"done": False, "ok": False, "reason": ""}


def _init() -> None:
    with _init_lock:
        if _init_state["done"]:
            if not _init_state["ok"]:
                raise CudaError(f"CUDA driver unavailable: {_init_state['reason']}")
            return
        _init_state["done"] = True
        try:
            drv = _drv()
            check(drv.cuInit(0), "cuInit")
            n = check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
            if n < 1:
                raise CudaError("no CUDA device found (cuDeviceGetCount returned 0)")
        except CudaError as e:
            _init_state["reason"] = str(e)
            raise
        except Exception as e:  # missing libcuda.so, missing bindings, ...
            _init_state["reason"] = f"{type(e).__name__}: {e}"
            raise CudaError(f"CUDA driver unavailable: {_init_state['reason']}") from e
        _init_state["ok"] = True


def driver_available() -> bool:
    """True when the CUDA driver initialises and at least one device exists. Never raises."""
    try:
        _init()
        return True
    except Exception:
        return False


def driver_unavailable_reason() -> str:
    """Why :func:`driver_available` is False ('' when it is True)."""
    driver_available()
    return "" if _init_state["ok"] else str(_init_state["reason"])


class Device:
    """A CUDA device with its primary context made current on construction.

    Attributes: ``ordinal``, ``name``, ``compute_capability`` (major, minor), ``arch``
    ('sm_90'), ``total_memory`` (bytes), ``sm_count``, ``max_shared_per_block_optin``.
    """

    def __init__(self, ordinal: int = 0):
        _init()
        drv = _drv()
        self.ordinal = int(ordinal)
        self.handle = check(drv.cuDeviceGet(self.ordinal), f"cuDeviceGet({ordinal})")
        self.context = check(drv.cuDevicePrimaryCtxRetain(self.handle),
                             f"cuDevicePrimaryCtxRetain(device {ordinal})")
        self._released = False
        self.make_current()
        raw = check(drv.cuDeviceGetName(256, self.handle), "cuDeviceGetName")
        self.name = bytes(raw).split(b"\x00", 1)[0].decode(errors="replace")
        A = drv.CUdevice_attribute
        self.compute_capability = (
            self.attribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            self.attribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        )
        self.sm_count = self.attribute(A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.max_shared_per_block_optin = self.attribute(
            A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        self.total_memory = int(check(drv.cuDeviceTotalMem(self.handle), "cuDeviceTotalMem"))

    @property
    def arch(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def attribute(self, attr) -> int:
        return int(check(_drv().cuDeviceGetAttribute(attr, self.handle),
                         f"cuDeviceGetAttribute({attr})"))

    def make_current(self) -> None:
        check(_drv().cuCtxSetCurrent(self.context), f"cuCtxSetCurrent(device {self.ordinal})")

    def synchronize(self, what: str = "") -> None:
        check(_drv().cuCtxSynchronize(), "cuCtxSynchronize" + (f" after {what}" if what else ""))

    def mem_get_info(self) -> tuple[int, int]:
        return mem_get_info()

    def release(self) -> None:
        """Release the primary context (allocations made in it should be freed first)."""
        if not self._released:
            self._released = True
            try:
                check(_drv().cuDevicePrimaryCtxRelease(self.handle), "cuDevicePrimaryCtxRelease")
            except Exception:
                pass

    def __repr__(self) -> str:
        return (f"Device({self.ordinal}: {self.name}, {self.arch}, {self.sm_count} SMs, "
                f"{format_bytes(self.total_memory)})")


_devices: dict[int, Device] = {}


def get_device(ordinal: int = 0) -> Device:
    """Process-wide Device object for ``ordinal`` (created once, primary context made current)."""
    dev = _devices.get(ordinal)
    if dev is None:
        dev = _devices[ordinal] = Device(ordinal)
    else:
        dev.make_current()
    return dev


def mem_get_info() -> tuple[int, int]:
    """(free, total) bytes of the current context's device."""
    free, total = check(_drv().cuMemGetInfo(), "cuMemGetInfo")
    return int(free), int(total)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------
def _ptr(x) -> int:
    """Device pointer of a DeviceBuffer / CUdeviceptr / int."""
    if isinstance(x, DeviceBuffer):
        return x.ptr
    if isinstance(x, int):
        return x
    return int(x)


def _stream_handle(stream) -> Any:
    if stream is None:
        return _drv().CUstream(0)  # the legacy default stream
    if isinstance(stream, Stream):
        return stream.handle
    return stream


def _host_ptr_and_size(host) -> tuple[int, int, Any]:
    """Address and byte size of a host buffer (NumPy array, bytes, bytearray, memoryview,
    PinnedBuffer, ctypes object). Returns (addr, nbytes, keepalive)."""
    if isinstance(host, PinnedBuffer):
        return host.ptr, host.nbytes, host
    try:
        import numpy as np

        if isinstance(host, np.ndarray):
            if not host.flags.c_contiguous:
                raise ValueError("host array must be C-contiguous")
            return int(host.ctypes.data), int(host.nbytes), host
    except ImportError:  # pragma: no cover
        pass
    if isinstance(host, ctypes.Array) or isinstance(host, ctypes.Structure):
        return ctypes.addressof(host), ctypes.sizeof(host), host
    mv = memoryview(host)
    if not mv.c_contiguous:
        raise ValueError("host buffer must be contiguous")
    mv = mv.cast("B")
    if mv.readonly:
        # read-only buffers (bytes, mmap opened read-only): address via a ctypes view of a copy
        # would defeat zero-copy, so go through numpy which accepts read-only buffers.
        import numpy as np

        arr = np.frombuffer(mv, dtype=np.uint8)
        return int(arr.ctypes.data), int(arr.nbytes), (arr, mv)
    buf = (ctypes.c_char * mv.nbytes).from_buffer(mv)
    return ctypes.addressof(buf), mv.nbytes, (buf, mv)


# Objects collected while a stream capture is open must not free or destroy their driver
# resources then: cuMemFree and friends are not allowed during capture and would invalidate it
# (e.g. a dropped model's buffers collected while another model's step is being captured). Their
# finalizers queue the release until the last open capture ends.
_captures_open = 0
_deferred: list = []


def _release(fn, *args) -> None:
    if _captures_open:
        _deferred.append((fn, args))
    else:
        fn(*args)


def _flush_deferred() -> None:
    while _deferred and not _captures_open:
        fn, args = _deferred.pop()
        fn(*args)


class DeviceBuffer:
    """``nbytes`` of device memory from cuMemAlloc; ``ptr`` is its address (int).

    ``what`` says what the memory is for, and appears in an out-of-memory message.
    Freed by :meth:`free` or when garbage collected.
    """

    def __init__(self, nbytes: int, what: str = "", device: Device | None = None):
        drv = _drv()
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"negative allocation size {nbytes}")
        self.nbytes = nbytes
        self.device = device
        self._ptr = 0
        if device is not None:
            device.make_current()
        if nbytes > 0:
            desc = f"cuMemAlloc of {nbytes} bytes" + (f" while {what}" if what else "")
            self._ptr = int(check(drv.cuMemAlloc(nbytes), desc))
        self._finalizer = weakref.finalize(self, _release, DeviceBuffer._free_ptr, self._ptr)

    @staticmethod
    def _free_ptr(ptr: int) -> None:
        if ptr:
            try:
                _drv().cuMemFree(ptr)
            except Exception:
                pass

    @property
    def ptr(self) -> int:
        return self._ptr

    def free(self) -> None:
        if self._finalizer.alive:
            self._finalizer.detach()
            if self._ptr:
                check(_drv().cuMemFree(self._ptr), f"cuMemFree({self.nbytes} bytes)")
        self._ptr = 0

    # convenience copies ---------------------------------------------------------------------
    def upload(self, host, offset: int = 0, stream: Stream | None = None) -> None:
        """Copy a host buffer into this buffer at byte ``offset`` (synchronous unless a stream is
        given; with a stream the host memory must stay alive until the stream reaches it)."""
        addr, n, _keep = _host_ptr_and_size(host)
        if offset < 0 or offset + n > self.nbytes:
            raise ValueError(f"upload of {n} bytes at offset {offset} overflows a {self.nbytes}-byte buffer")
        memcpy_htod(self.ptr + offset, addr, n, stream)

    def download(self, host=None, offset: int = 0, nbytes: int | None = None,
                 stream: Stream | None = None):
        """Copy into ``host`` (a writable buffer) or, when None, into a new bytearray returned."""
        if host is None:
            n = self.nbytes - offset if nbytes is None else int(nbytes)
            host = bytearray(n)
        addr, n, _keep = _host_ptr_and_size(host)
        if nbytes is not None:
            n = min(n, int(nbytes))
        if offset < 0 or offset + n > self.nbytes:
            raise ValueError(f"download of {n} bytes at offset {offset} overflows a {self.nbytes}-byte buffer")
        memcpy_dtoh(addr, self.ptr + offset, n, stream)
        return host

    def copy_from(self, src, nbytes: int | None = None, stream: Stream | None = None) -> None:
        n = self.nbytes if nbytes is None else int(nbytes)
        memcpy_dtod(self.ptr, _ptr(src), n, stream)

    @classmethod
    def from_array(cls, arr, what: str = "", device: Device | None = None) -> "DeviceBuffer":
        import numpy as np

        arr = np.ascontiguousarray(arr)
        buf = cls(arr.nbytes, what=what, device=device)
        if arr.nbytes:
            buf.upload(arr)
        return buf

    def to_array(self, dtype, shape, offset: int = 0):
        import numpy as np

        out = np.empty(shape, dtype=dtype)
        if out.nbytes:
            self.download(out, offset=offset)
        return out

    def __int__(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"DeviceBuffer(0x{self.ptr:x}, {self.nbytes} bytes)"


class PinnedBuffer:
    """Page-locked host memory (cuMemHostAlloc); ``array(dtype)`` views it as NumPy."""

    def __init__(self, nbytes: int, what: str = "", portable: bool = True):
        drv = _drv()
        self.nbytes = int(nbytes)
        flags = drv.CU_MEMHOSTALLOC_PORTABLE if portable else 0
        desc = f"cuMemHostAlloc of {self.nbytes} bytes" + (f" while {what}" if what else "")
        self.ptr = int(check(drv.cuMemHostAlloc(max(self.nbytes, 1), flags), desc))
        self._finalizer = weakref.finalize(self, _release, PinnedBuffer._free, self.ptr)

    @staticmethod
    def _free(ptr: int) -> None:
        try:
            _drv().cuMemFreeHost(ptr)
        except Exception:
            pass

    def free(self) -> None:
        if self._finalizer.alive:
            self._finalizer()
        self.ptr = 0

    def array(self, dtype="uint8", count: int | None = None):
        import numpy as np

        dt = np.dtype(dtype)
        n = self.nbytes // dt.itemsize if count is None else int(count)
        raw = (ctypes.c_char * (n * dt.itemsize)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dt, count=n)


def memcpy_htod(dst, src_host, nbytes: int | None = None, stream: Stream | None = None) -> None:
    """Host -> device. ``src_host`` is a host address (int) or a buffer object."""
    drv = _drv()
    if isinstance(src_host, int):
        addr, n = src_host, int(nbytes)
    else:
        addr, n, _keep = _host_ptr_and_size(src_host)
        if nbytes is not None:
            n = int(nbytes)
    if n == 0:
        return
    if stream is None:
        check(drv.cuMemcpyHtoD(_ptr(dst), addr, n), f"cuMemcpyHtoD of {n} bytes")
        # A pageable-source cuMemcpyHtoD may return before the DMA lands; make it final so that
        # work on other (non-blocking) streams sees the data.
        check(drv.cuStreamSynchronize(_stream_handle(None)), f"cuMemcpyHtoD of {n} bytes (sync)")
    else:
        check(drv.cuMemcpyHtoDAsync(_ptr(dst), addr, n, _stream_handle(stream)),
              f"cuMemcpyHtoDAsync of {n} bytes")


def memcpy_dtoh(dst_host, src, nbytes: int | None = None, stream: Stream | None = None) -> None:
    """Device -> host. ``dst_host`` is a host address (int) or a writable buffer object."""
    drv = _drv()
    if isinstance(dst_host, int):
        addr, n = dst_host, int(nbytes)
    else:
        addr, n, _keep = _host_ptr_and_size(dst_host)
        if nbytes is not None:
            n = int(nbytes)
    if n == 0:
        return
    if stream is None:
        check(drv.cuMemcpyDtoH(addr, _ptr(src), n), f"cuMemcpyDtoH of {n} bytes")
    else:
        check(drv.cuMemcpyDtoHAsync(addr, _ptr(src), n, _stream_handle(stream)),
              f"cuMemcpyDtoHAsync of {n} bytes")


def memcpy_dtod(dst, src, nbytes: int, stream: Stream | None = None) -> None:
    drv = _drv()
    n = int(nbytes)
    if n == 0:
        return
    if stream is None:
        check(drv.cuMemcpyDtoD(_ptr(dst), _ptr(src), n), f"cuMemcpyDtoD of {n} bytes")
        check(drv.cuStreamSynchronize(_stream_handle(None)), f"cuMemcpyDtoD of {n} bytes (sync)")
    else:
        check(drv.cuMemcpyDtoDAsync(_ptr(dst), _ptr(src), n, _stream_handle(stream)),
              f"cuMemcpyDtoDAsync of {n} bytes")


def memset_d8(dst, value: int, nbytes: int, stream: Stream | None = None) -> None:
    drv = _drv()
    if nbytes == 0:
        return
    if stream is None:
        check(drv.cuMemsetD8(_ptr(dst), int(value) & 0xFF, int(nbytes)), f"cuMemsetD8 of {nbytes} bytes")
        check(drv.cuStreamSynchronize(_stream_handle(None)), f"cuMemsetD8 of {nbytes} bytes (sync)")
    else:
        check(drv.cuMemsetD8Async(_ptr(dst), int(value) & 0xFF, int(nbytes), _stream_handle(stream)),
              f"cuMemsetD8Async of {nbytes} bytes")


def upload_staged(dst, host, stream: Stream | None = None, chunk_bytes: int = 32 << 20,
                  staging: Sequence[PinnedBuffer] | None = None) -> None:
    """Upload a (possibly memory-mapped, pageable) host buffer through two pinned staging
    buffers, overlapping the host-side copy of one chunk with the DMA of the other. Returns
    when the data is on the device. ``dst`` is a DeviceBuffer or device address."""
    import numpy as np

    addr, n, keep = _host_ptr_and_size(host)
    if n == 0:
        return
    src = np.ctypeslib.as_array((ctypes.c_ubyte * n).from_address(addr)) if n else None
    own_stream = stream is None
    s = Stream() if own_stream else stream
    bufs = list(staging) if staging else [PinnedBuffer(min(chunk_bytes, n), "staging an upload")
                                          for _ in range(2 if n > chunk_bytes else 1)]
    chunk = min(b.nbytes for b in bufs)
    events = [Event(timing=False) for _ in bufs]
    used = [False] * len(bufs)
    base = _ptr(dst)
    try:
        for i, off in enumerate(range(0, n, chunk)):
            k = i % len(bufs)
            m = min(chunk, n - off)
            if used[k]:
                events[k].synchronize()  # previous DMA out of this staging buffer is done
            bufs[k].array("uint8", m)[:] = src[off:off + m]
            memcpy_htod(base + off, bufs[k].ptr, m, s)
            events[k].record(s)
            used[k] = True
        s.synchronize()
    finally:
        del keep
        if own_stream:
            s.destroy()


# --------------------------------------------------------------------------------------------
# streams and events
# --------------------------------------------------------------------------------------------
class Stream:
    """A non-blocking CUDA stream (it does not synchronise with the legacy default stream)."""

    def __init__(self, non_blocking: bool = True):
        drv = _drv()
        flags = drv.CUstream_flags.CU_STREAM_NON_BLOCKING if non_blocking else drv.CUstream_flags.CU_STREAM_DEFAULT
        self.handle = check(drv.cuStreamCreate(int(flags)), "cuStreamCreate")
        self._finalizer = weakref.finalize(self, _release, Stream._destroy, self.handle)

    @staticmethod
    def _destroy(h) -> None:
        try:
            _drv().cuStreamDestroy(h)
        except Exception:
            pass

    @property
    def alive(self) -> bool:
        """False once destroyed (a destroyed stream's handle must not reach the driver)."""
        return self._finalizer.alive

    def synchronize(self, what: str = "") -> None:
        if not self._finalizer.alive:
            raise CudaError("cuStreamSynchronize on a destroyed stream" + (f" ({what})" if what else ""))
        check(_drv().cuStreamSynchronize(self.handle),
              "cuStreamSynchronize" + (f" after {what}" if what else ""))

    def wait_event(self, event: "Event") -> None:
        check(_drv().cuStreamWaitEvent(self.handle, event.handle, 0), "cuStreamWaitEvent")

    def destroy(self) -> None:
        if self._finalizer.alive:
            self._finalizer()

    def __int__(self) -> int:
        return int(self.handle)


class Event:
    """A CUDA event; ``Event.elapsed_ms(start, end)`` times the work between two records."""

    def __init__(self, timing: bool = True):
        drv = _drv()
        flags = drv.CUevent_flags.CU_EVENT_DEFAULT if timing else drv.CUevent_flags.CU_EVENT_DISABLE_TIMING
        self.handle = check(drv.cuEventCreate(int(flags)), "cuEventCreate")
        self._finalizer = weakref.finalize(self, _release, Event._destroy, self.handle)

    @staticmethod
    def _destroy(h) -> None:
        try:
            _drv().cuEventDestroy(h)
        except Exception:
            pass

    def record(self, stream: Stream | None = None) -> "Event":
        check(_drv().cuEventRecord(self.handle, _stream_handle(stream)), "cuEventRecord")
        return self

    def synchronize(self) -> None:
        check(_drv().cuEventSynchronize(self.handle), "cuEventSynchronize")

    def query(self) -> bool:
        drv = _drv()
        (err,) = drv.cuEventQuery(self.handle)
        if err == drv.CUresult.CUDA_ERROR_NOT_READY:
            return False
        check((err,), "cuEventQuery")
        return True

    @staticmethod
    def elapsed_ms(start: "Event", end: "Event") -> float:
        return float(check(_drv().cuEventElapsedTime(start.handle, end.handle), "cuEventElapsedTime"))


# --------------------------------------------------------------------------------------------
# modules, functions, launches
# --------------------------------------------------------------------------------------------
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

    @property
    def max_threads_per_block(self) -> int:
        return self.attribute(_drv().CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)

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


# --------------------------------------------------------------------------------------------
# CUDA graphs
# --------------------------------------------------------------------------------------------
class GraphExec:
    """An instantiated CUDA graph; ``launch(stream)`` replays it."""

    def __init__(self, handle):
        self.handle = handle
        self._finalizer = weakref.finalize(self, _release, GraphExec._destroy, handle)

    @staticmethod
    def _destroy(h) -> None:
        try:
            _drv().cuGraphExecDestroy(h)
        except Exception:
            pass

    def launch(self, stream: Stream | None = None) -> None:
        check(_drv().cuGraphLaunch(self.handle, _stream_handle(stream)), "cuGraphLaunch")

    def destroy(self) -> None:
        if self._finalizer.alive:
            self._finalizer()


class Graph:
    """A captured CUDA graph (from :func:`capture`)."""

    def __init__(self, handle=None):
        self.handle = handle
        self._finalizer = None

    def _set(self, handle) -> None:
        self.handle = handle
        self._finalizer = weakref.finalize(self, _release, Graph._destroy, handle)

    @staticmethod
    def _destroy(h) -> None:
        try:
            _drv().cuGraphDestroy(h)
        except Exception:
            pass

    def num_nodes(self) -> int:
        drv = _drv()
        res = drv.cuGraphGetNodes(self.handle, 0)
        check(res[:1], "cuGraphGetNodes")
        return int(res[-1])

    def instantiate(self) -> GraphExec:
        if self.handle is None:
            raise CudaError("graph capture has not finished")
        return GraphExec(check(_drv().cuGraphInstantiate(self.handle, 0), "cuGraphInstantiate"))


class capture:
    """Context manager capturing the work issued to ``stream`` into a :class:`Graph`::

        g = Graph()
        with capture(stream, g):
            launch(f, grid, block, args, stream=stream)
        exe = g.instantiate(); exe.launch(stream)

    ``mode`` is 'thread_local' (default), 'global' or 'relaxed'.
    """

    def __init__(self, stream: Stream, graph: Graph | None = None, mode: str = "thread_local"):
        if not isinstance(stream, Stream):
            raise TypeError("capture needs a Stream (the legacy default stream cannot be captured)")
        self.stream = stream
        self.graph = graph if graph is not None else Graph()
        self.mode = mode

    def __enter__(self) -> Graph:
        drv = _drv()
        M = drv.CUstreamCaptureMode
        mode = {"global": M.CU_STREAM_CAPTURE_MODE_GLOBAL,
                "thread_local": M.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                "relaxed": M.CU_STREAM_CAPTURE_MODE_RELAXED}[self.mode]
        global _captures_open
        check(drv.cuStreamBeginCapture(self.stream.handle, mode), "cuStreamBeginCapture")
        _captures_open += 1
        return self.graph

    def __exit__(self, exc_type, exc, tb) -> None:
        global _captures_open
        drv = _drv()
        res = drv.cuStreamEndCapture(self.stream.handle)
        _captures_open -= 1
        _flush_deferred()
        if exc_type is not None:
            if res[0] == drv.CUresult.CUDA_SUCCESS and res[1] is not None:
                try:
                    drv.cuGraphDestroy(res[1])
                except Exception:
                    pass
            return None  # propagate the original exception
        self.graph._set(check(res, "cuStreamEndCapture"))
        return None


def graph_time_us(fn, stream: Stream, n_inner: int = 20, reps: int = 15) -> float:
    """Median microseconds per ``fn(i)`` call, timed as replays of a CUDA graph holding
    ``n_inner`` calls (so host-side launch cost stays out of the number). ``fn(0)`` runs once
    outside the capture first (module and function loading)."""
    import numpy as np

    fn(0)
    stream.synchronize()
    g = Graph()
    with capture(stream, g):
        for i in range(n_inner):
            fn(i)
    exe = g.instantiate()
    exe.launch(stream)
    stream.synchronize()
    e0, e1 = Event(), Event()
    ts = []
    for _ in range(reps):
        e0.record(stream)
        exe.launch(stream)
        e1.record(stream)
        stream.synchronize()
        ts.append(Event.elapsed_ms(e0, e1))
    return float(np.median(ts)) * 1e3 / n_inner
