"""Opening files at the loading boundary without surprises.

A path handed to a loader may name a FIFO (``open()`` would block forever waiting for a
writer), a device such as ``/dev/zero`` (endless data), a socket, a directory, a dangling
symlink or something the process may not read. Every helper here turns those into a
:class:`LoadError` that names the path and says which it is, *before* anything blocks: the
path is ``stat``-ed first, then opened with ``O_NONBLOCK`` (so a FIFO swapped in after the
``stat`` still cannot block) and ``fstat``-ed again on the open descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import LoadError

# O_NONBLOCK makes opening a FIFO return at once; O_NOCTTY keeps a terminal device from becoming
# the controlling terminal. Neither changes reads of a regular file. (Windows has neither.)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _os_error(path: Path, what: str, exc: OSError) -> LoadError:
    """A LoadError naming ``path`` for an OSError met while looking at or opening it."""
    if isinstance(exc, PermissionError):
        return LoadError(f"{path}: cannot read {what}: permission denied")
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return LoadError(f"{path}: cannot read {what}: a symlink whose target does not exist "
                             f"({os.readlink(path)!r})")
        return LoadError(f"{path}: {what}: no such file or directory")
    if exc.errno == errno.ELOOP:
        return LoadError(f"{path}: cannot read {what}: too many levels of symbolic links")
    return LoadError(f"{path}: cannot read {what}: {exc.strerror or exc}")


def check_regular_file(path: str | os.PathLike[str], what: str = "file") -> os.stat_result:
    """``stat`` of ``path``, which must be a readable regular file (symlinks followed).

    ``what`` names the file's role in messages ("config", "tokenizer", ...). Raises LoadError
    "not a regular file" for directories, FIFOs, devices and sockets, and LoadError naming the
    path for a missing file, a dangling symlink or a permission error.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise _os_error(p, what, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise LoadError(f"{p}: {what} is not a regular file (it is {_kind(st.st_mode)})")
    return st


def optional_file(path: str | os.PathLike[str], what: str = "file") -> bool:
    """True when ``path`` is a regular file, False when nothing is there at all.

    For optional files next to the weights (config.json, tokenizer.json, ...): a name that
    exists but is not a usable regular file (a FIFO, a directory, a dangling symlink, no
    permission) raises LoadError instead of being silently taken as absent.
    """
    p = Path(path)
    try:
        os.lstat(p)
    except FileNotFoundError:
        return False
    except OSError as exc:  # e.g. the directory holding it is not searchable
        raise _os_error(p, what, exc) from None
    check_regular_file(p, what)
    return True


def open_regular(path: str | os.PathLike[str], what: str = "file") -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file without blocking."""
    p = Path(path)
    check_regular_file(p, what)
    try:
        fd = os.open(p, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(p, what, exc) from None
    try:
        st = os.fstat(fd)  # the file opened may not be the one stat-ed (a swap in between)
        if not stat.S_ISREG(st.st_mode):
            raise LoadError(f"{p}: {what} is not a regular file (it is {_kind(st.st_mode)})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike[str], what: str = "file") -> bytes:
    """The whole content of the regular file ``path``."""
    with open_regular(path, what) as f:
        try:
            return f.read()
        except OSError as exc:
            raise _os_error(Path(path), what, exc) from None


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The whole content of the regular file ``path`` as UTF-8 text."""
    try:
        return read_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(f"{path}: {what} is not valid UTF-8: {exc}") from None


def check_directory(path: str | os.PathLike[str], what: str = "model directory") -> None:
    """Raise LoadError naming ``path`` when the directory cannot be listed (e.g. no permission),
    so a later glob does not silently find nothing in it."""
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise _os_error(Path(path), what, exc) from None


__all__ = ["check_regular_file", "optional_file", "open_regular", "read_bytes", "read_text", "check_directory"]
