"""POSIX primitives for the file backend: ``flock`` on a kept descriptor."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from .._errors import LockError
from .._paths import describe_kind

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


def open_lock_file(path: str) -> int:
    """Open (creating when missing) the lock file at ``path``.

    Never follows a symlink at ``path``, never truncates, never blocks on a
    FIFO. Falls back to read-only when the file exists but is not writable:
    ``flock`` works on any descriptor.

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError, LockError: with
            a message naming the path and what to do.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o666)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        raise FileNotFoundError(
            errno.ENOENT,
            f"cannot create lock file {path!r}: folder {parent!r} does not exist; create it first",
        ) from None
    except IsADirectoryError:
        raise IsADirectoryError(
            errno.EISDIR, f"lock path {path!r} is a directory; name a file inside it"
        ) from None
    except PermissionError:
        fd = _open_read_only(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink(path) from None
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket
            raise LockError(
                f"lock path {path!r} is a socket, not a regular file; choose another path"
            ) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = describe_kind(mode)
        raise LockError(f"lock path {path!r} is {kind}, not a regular file; choose another path")
    return fd


def _symlink(path: str) -> LockError:
    return LockError(
        f"lock path {path!r} is a symlink; crosslock does not follow symlinks at the "
        "lock path (someone may have planted it): remove it or choose another path"
    )


def _open_read_only(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        folder = os.path.dirname(path)
        raise PermissionError(
            errno.EACCES,
            f"cannot create lock file {path!r}: no permission to write in folder {folder!r}; "
            "choose a writable folder or set CROSSLOCK_DIR",
        ) from None
    except PermissionError:
        raise PermissionError(
            errno.EACCES,
            f"cannot open lock file {path!r}: permission denied; "
            "choose a lock file you may open, or set CROSSLOCK_DIR",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink(path) from None
        raise


#: ``flock(fd, op)``: the hot paths call it directly (no wrapper frame).
flock = _flock = fcntl.flock
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN
_TRY_SH = LOCK_SH | LOCK_NB
_TRY_EX = LOCK_EX | LOCK_NB
_UN = LOCK_UN


def try_lock(fd: int, shared: bool) -> bool:
    try:
        _flock(fd, _TRY_SH if shared else _TRY_EX)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    _flock(fd, _UN)


def record_lock(fd: int) -> None:
    """Exclude other shared holders while the record is rewritten.

    A byte-range lock far past the record: independent of ``flock`` on local
    file systems.
    """
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, 1 << 40)


def record_unlock(fd: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1 << 40)


def probe(path: str) -> str | None:
    """``"exclusive"``, ``"shared"`` or ``None`` (free) for the file at ``path``.

    Uses a fresh descriptor, so a hold by this very process counts too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if try_lock(fd, False):
            return None
        if try_lock(fd, True):
            return "shared"
        return "exclusive"
    finally:
        os.close(fd)  # drops any probe lock with the descriptor


def _flock_entries(path: str) -> list[tuple[int, str]]:
    """(pid, READ|WRITE) of each ``flock`` hold on the file at ``path``, from
    ``/proc/locks`` (Linux; empty elsewhere)."""
    try:
        st = os.stat(path, follow_symlinks=False)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    entries = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a blocked request, not a hold
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
            try:
                entries.append((int(parts[4]), parts[3]))
            except ValueError:
                continue
    return entries


def holder_pids(path: str) -> list[int]:
    """Pids holding a ``flock`` on the file at ``path`` (Linux; empty elsewhere)."""
    return [pid for pid, _ in _flock_entries(path)]


def holder_kinds(path: str) -> set[str]:
    """``{"READ"}``, ``{"WRITE"}`` or both, for the holds on the file at ``path``."""
    return {kind for _, kind in _flock_entries(path)}
