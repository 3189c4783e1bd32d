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
not import the rest of the package. It holds errors, the device, streams and events; device
memory (``devmem.py``), modules and launches (``launch.py``) and CUDA graphs (``cugraphs.py``)
are their own modules, imported at the end of this one and re-exported, so every name is
``driver.<name>``.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

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


def _capture_begins() -> None:
    """A stream capture opened (``cugraphs.capture``): releases wait until the last one ends."""
    global _captures_open
    _captures_open += 1


def capturing() -> bool:
    """Whether a stream capture is open (synchronous copies and allocations would break it)."""
    return _captures_open > 0


def _capture_ends() -> None:
    global _captures_open
    _captures_open -= 1
    _flush_deferred()


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


# device memory, kernel launches and CUDA graphs live in their own modules (devmem.py, launch.py,
# cugraphs.py); their names are this module's too, so ``driver.DeviceBuffer``, ``driver.launch``,
# ``driver.capture`` ... keep working (import those modules through this one)
from .devmem import (DeviceBuffer, PinnedBuffer, _host_ptr_and_size, _ptr, _stream_handle,  # noqa: E402,F401
                     memcpy_dtod, memcpy_dtoh, memcpy_htod, memset_d8, upload_staged)
from .launch import (Function, Module, PreparedLaunch, _as_ctype, _check_args, _dim3,  # noqa: E402,F401
                     _launch_raw, _launch_stream, launch)
from .cugraphs import Graph, GraphExec, capture, graph_time_us  # noqa: E402,F401
