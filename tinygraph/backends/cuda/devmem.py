"""Device memory for the CUDA driver wrapper (``driver.py`` re-exports every name): device and
page-locked host buffers, copies between them, memset, and chunked staged uploads."""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Sequence

from .driver import Device, Event, Stream, _drv, _release, check

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


