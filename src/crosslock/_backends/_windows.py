"""Windows primitives for the file backend: ``LockFileEx`` on a kept handle.

Same functions as :mod:`._posix`. The lock covers one byte far past the end
of any record, so the record at the start of the file stays readable and
writable while the lock is held (Windows byte-range locks are mandatory).
"""

from __future__ import annotations

import ctypes
import errno
import msvcrt  # type: ignore[import-not-found,unused-ignore]
import os
import stat
from ctypes import wintypes

from .._errors import LockError
from .._paths import describe_kind

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]

_LOCKFILE_FAIL_IMMEDIATELY = 0x1
_LOCKFILE_EXCLUSIVE_LOCK = 0x2
_ERROR_LOCK_VIOLATION = 33
_ERROR_IO_PENDING = 997
_LOCK_OFFSET_HIGH = 0x7FFFFFFF  # the lock byte: far past any record
_RECORD_OFFSET_HIGH = 0x7FFFFFFE


class _Overlapped(ctypes.Structure):
    _fields_ = [
        ("Internal", ctypes.c_void_p),
        ("InternalHigh", ctypes.c_void_p),
        ("Offset", wintypes.DWORD),
        ("OffsetHigh", wintypes.DWORD),
        ("hEvent", wintypes.HANDLE),
    ]


_LockFileEx = _kernel32.LockFileEx
_LockFileEx.argtypes = [
    wintypes.HANDLE,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.DWORD,
    ctypes.POINTER(_Overlapped),
]
_LockFileEx.restype = wintypes.BOOL
_UnlockFileEx = _kernel32.UnlockFileEx
_UnlockFileEx.argtypes = [
    wintypes.HANDLE,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.DWORD,
    ctypes.POINTER(_Overlapped),
]
_UnlockFileEx.restype = wintypes.BOOL


def _handle(fd: int) -> int:
    return int(msvcrt.get_osfhandle(fd))


def _lock_byte(fd: int, flags: int, high: int = _LOCK_OFFSET_HIGH) -> bool:
    ov = _Overlapped(0, 0, 0, high, None)
    if _LockFileEx(_handle(fd), flags, 0, 1, 0, ctypes.byref(ov)):
        return True
    err = ctypes.get_last_error()
    if err == _ERROR_LOCK_VIOLATION:
        return False
    raise ctypes.WinError(err)  # type: ignore[attr-defined,unused-ignore]


def _unlock_byte(fd: int, high: int = _LOCK_OFFSET_HIGH) -> None:
    ov = _Overlapped(0, 0, 0, high, None)
    if not _UnlockFileEx(_handle(fd), 0, 1, 0, ctypes.byref(ov)):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined,unused-ignore]


def open_lock_file(path: str) -> int:
    """Open (creating when missing) the lock file at ``path``; never truncates."""
    if os.path.islink(path):
        raise LockError(
            f"lock path {path!r} is a symlink; crosslock does not follow symlinks at the "
            "lock path (someone may have planted it): remove it or choose another path"
        )
    flags = os.O_RDWR | os.O_CREAT | os.O_BINARY | os.O_NOINHERIT  # type: ignore[attr-defined,unused-ignore]
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            f"cannot create lock file {path!r}: folder {os.path.dirname(path)!r} does not exist; "
            "create it first",
        ) from None
    except PermissionError:
        if os.path.isdir(path):
            raise IsADirectoryError(
                errno.EISDIR, f"lock path {path!r} is a directory; name a file inside it"
            ) from None
        raise PermissionError(
            errno.EACCES, f"cannot open lock file {path!r}: permission denied; choose another path"
        ) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise LockError(f"lock path {path!r} is {describe_kind(mode)}, not a regular file")
    return fd


#: flock(2)'s operations, for :func:`flock`.
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8


def flock(fd: int, op: int) -> None:
    """flock(2) on the lock byte: raises BlockingIOError when ``LOCK_NB`` cannot lock."""
    if op & LOCK_UN:
        _unlock_byte(fd)
        return
    flags = (0 if op & LOCK_SH else _LOCKFILE_EXCLUSIVE_LOCK) | (
        _LOCKFILE_FAIL_IMMEDIATELY if op & LOCK_NB else 0
    )
    if not _lock_byte(fd, flags):
        raise BlockingIOError(errno.EWOULDBLOCK, "the lock is held")


def try_lock(fd: int, shared: bool) -> bool:
    flags = _LOCKFILE_FAIL_IMMEDIATELY | (0 if shared else _LOCKFILE_EXCLUSIVE_LOCK)
    return _lock_byte(fd, flags)


def unlock(fd: int) -> None:
    _unlock_byte(fd)


def record_lock(fd: int) -> None:
    _lock_byte(fd, _LOCKFILE_EXCLUSIVE_LOCK, _RECORD_OFFSET_HIGH)


def record_unlock(fd: int) -> None:
    _unlock_byte(fd, _RECORD_OFFSET_HIGH)


def probe(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_BINARY | os.O_NOINHERIT)  # type: ignore[attr-defined,unused-ignore]
    except OSError:
        return None
    try:
        if try_lock(fd, False):
            unlock(fd)
            return None
        if try_lock(fd, True):
            unlock(fd)
            return "shared"
        return "exclusive"
    finally:
        os.close(fd)


def holder_pids(path: str) -> list[int]:
    return []  # Windows does not say who holds a byte-range lock


def holder_kinds(path: str) -> set[str]:
    return set()
