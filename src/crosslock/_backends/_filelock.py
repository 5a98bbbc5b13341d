"""The ``filelock`` backend: the `filelock <https://pypi.org/project/filelock/>`_
package's ``FileLock`` behind crosslock's interface.

For projects that already use filelock and want crosslock's interface, or
to share a lock with programs that use filelock. filelock polls while it
waits; this backend asks it to poll every millisecond. The fencing token and
holder details live in the lock file's record, as with the ``file`` backend.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import _record
from .._errors import BackendUnavailable, LockError, LockLost
from ._base import Backend
from ._file import FileTarget, identity
from ._native import native as _os

__all__ = ["FilelockBackend", "FilelockTarget"]

#: How often filelock retries while waiting (seconds).
POLL_INTERVAL = 0.001


def _filelock() -> Any:
    try:
        import filelock
    except ImportError:
        raise BackendUnavailable(
            "the filelock backend needs the filelock package: pip install 'crosslock[filelock]'"
        ) from None
    return filelock


class FilelockTarget(FileTarget):
    """A lock file locked through the filelock package."""

    backend_name = "filelock"
    supports_shared = False

    @classmethod
    def create(cls, name: object, spec: str, options: dict[str, Any]) -> FileTarget:
        _filelock()  # the install hint first
        return super().create(name, spec, options)

    def open(self) -> Backend:
        return FilelockBackend(self.path)

    def new_core(self) -> None:
        return None  # the generic core: the file backend's own is for flock


class FilelockBackend(Backend):
    kind = "filelock"

    def __init__(self, path: str) -> None:
        self._path = path
        # Our own descriptor validates the path (no symlink, no directory,
        # no FIFO) and carries the record; filelock locks with its own.
        self._fd = _os.open_lock_file(path)
        self._module = _filelock()
        self._lock = self._new_lock()
        self._ident: tuple[int, int] | None = None  # the file held, while held

    def _new_lock(self) -> Any:
        return self._module.FileLock(self._path, thread_local=False)

    def acquire(self, shared: bool, deadline: float | None) -> bool:
        # filelock opens the path itself at each acquisition (and creates
        # missing folders): check first that the path is still a lock file we
        # may use -- no symlink, hard link, FIFO or missing folder.
        self._check_path()
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            self._lock.acquire(timeout=timeout, poll_interval=POLL_INTERVAL)
        except self._module.Timeout:
            return False
        self._ident = self._at_path()
        return True

    def _at_path(self) -> tuple[int, int] | None:
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def lost(self) -> bool:
        return self._ident is not None and self._at_path() != self._ident

    def release(self) -> None:
        lost = self.lost()
        self._ident = None
        self._lock.release()
        if lost:
            raise LockLost(
                f"lock file {self._path!r} was removed or replaced while held, so others "
                "may have held the lock meanwhile"
            )

    def _check_path(self) -> None:
        """Keep our descriptor on the lock file now at the path, validated."""
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == identity(self._fd, self._path):
            return  # still the file at the path, with one link
        fd = _os.open_lock_file(self._path)  # refuses symlinks, FIFOs, missing folders
        try:
            identity(fd, self._path)  # and hard links
        except LockError:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd

    def _record_fd(self) -> int:
        """Our descriptor on the file held now (checked again before writing to it)."""
        self._check_path()
        return self._fd

    def locked(self) -> bool:
        probe = self._new_lock()
        try:
            probe.acquire(timeout=0)
        except self._module.Timeout:
            return True
        probe.release()
        return False

    def token(self, shared: bool, since: float) -> int:
        return _record.next_token(self._record_fd(), self._path, since)

    def publish(self, since: float, details: dict[str, Any]) -> None:
        _record.publish(self._record_fd(), self._path, since, details)

    def forget(self) -> None:
        # filelock resets its own instances in a forked child; a fresh one
        # is needed there all the same.
        self._lock = self._new_lock()
        self._ident = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
