"""The ``file`` backend: the operating system's own file lock.

flock on POSIX, LockFileEx on Windows, on one descriptor per lock file and
process, kept open across acquisitions. Waiting happens in the kernel, so a
waiter is woken by the release itself:

* without a timeout, the calling thread blocks in the kernel call (Ctrl-C
  still interrupts it);
* with a timeout, in the main thread (POSIX), the same: a timer thread ends
  the kernel call at the deadline with a signal (see ``_alarm``);
* with a timeout, in other threads, a helper thread blocks in the kernel call
  on the kept descriptor while the caller waits on a lock with the timeout;
  the helper's wake-up wakes the caller. If the caller gives up, it leaves
  that descriptor to the helper, still parked in the kernel, and opens a
  fresh one for itself. A grant that arrives after that is handed back at
  once (unlocked and closed), or taken over by the next caller of this
  process that wants the lock. A timed-out ``acquire`` therefore never turns
  into a hold later.

After each grant the descriptor is checked to still be the file at the path;
if the file was removed or replaced meanwhile, the lock is dropped and taken
again on the file now at the path, so all waiters converge on one file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from .. import _record
from .._errors import LockError, LockLost
from .._paths import lock_path
from . import _watch
from ._base import Backend, Target, no_options
from ._native import native as _os

if sys.platform != "win32":
    from . import _alarm

_flock = _os.flock
_TRY_SH = _os.LOCK_SH | _os.LOCK_NB
_TRY_EX = _os.LOCK_EX | _os.LOCK_NB
_UN = _os.LOCK_UN

__all__ = ["FileBackend", "FileTarget"]


class FileTarget(Target):
    """A lock file at an absolute path."""

    backend_name = "file"
    supports_shared = True

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, name: object, spec: str, options: dict[str, Any]) -> FileTarget:
        no_options(cls.backend_name, options)
        if name is None:
            raise TypeError(
                f"the {cls.backend_name} backend needs a lock name or path, "
                "e.g. Lock('jobs') or Lock('/srv/app/jobs.lock')"
            )
        return cls(lock_path(name))

    @property
    def key(self) -> Hashable:
        return (self.backend_name, self.path)

    @property
    def display(self) -> str:
        return self.path

    def open(self) -> Backend:
        return FileBackend(self.path)


def identity(fd: int, path: str, lock_file: bool = True) -> tuple[int, int]:
    """(device, inode) of the file open as ``fd``; a lock file must have one link.

    Raises:
        LockError: a lock file with more than one hard link.
    """
    st = os.fstat(fd)
    if lock_file and st.st_nlink > 1:
        raise LockError(
            f"lock file {path!r} has {st.st_nlink} hard links; a lock file must have one "
            "(someone may have linked it to another file): remove it or choose another path"
        )
    return st.st_dev, st.st_ino


class _Wait:
    """A blocking kernel wait that a helper thread runs for a caller with a timeout."""

    __slots__ = ("abandoned", "done", "error", "fd", "granted", "shared", "signal", "started")

    def __init__(self, fd: int, shared: bool) -> None:
        self.fd = fd
        self.shared = shared
        self.done = False
        self.granted = False
        self.abandoned = False
        self.started = False
        self.error: BaseException | None = None
        #: released by the helper when the wait ends; the caller blocks on it
        self.signal = threading.Lock()
        self.signal.acquire()


class _Helpers:
    """Helper threads for timed waits, kept for reuse (starting a thread per
    wait would cost more than the wait's wake-up)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], object] | None]] = queue.SimpleQueue()
        self._idle = 0
        self._guard = threading.Lock()

    def run(self, job: Callable[[], Callable[[], object] | None]) -> None:
        """Run ``job`` in a helper; what it returns, if anything, is called last,
        right before the helper waits for its next job (a wake-up to hand out:
        the woken thread then finds the helper out of its way)."""
        with self._guard:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            threading.Thread(target=self._work, args=(job,), name="crosslock-wait", daemon=True).start()
        else:
            self._jobs.put(job)

    def _work(self, job: Callable[[], Callable[[], object] | None]) -> None:
        while True:
            last = job()
            del job
            with self._guard:
                self._idle += 1
            if last is not None:
                last()
                del last
            job = self._jobs.get()


_helpers = _Helpers()


def _after_fork_in_child() -> None:
    global _helpers
    _helpers = _Helpers()  # the parent's helper threads do not exist here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FileBackend(Backend):
    kind = "file"

    def __init__(self, path: str, opener: Callable[[str], int] | None = None, lock_file: bool = True) -> None:
        """Open the lock file at ``path`` (or lock a data file, for ``crosslock.open``:
        then ``opener`` opens it and ``lock_file`` is false)."""
        self._path = path
        self._open = opener or _os.open_lock_file
        self._lock_file = lock_file
        # A lock file is never followed through a symlink; a user's data file is.
        self._stat = os.lstat if lock_file else os.stat
        self._wlock = threading.Lock()
        self._waits: dict[bool, _Wait] = {}
        self._watcher: _watch.Watcher | None = None
        self._wds = (-1, -1)
        self._dirty = True  # until a watch says otherwise, check with lstat
        self._fd = -1
        self._set_fd(self._open(path))

    def _set_fd(self, fd: int) -> None:
        """Make ``fd`` the kept descriptor (identity checked, watched where possible)."""
        try:
            ident = identity(fd, self._path, self._lock_file)
        except BaseException:
            os.close(fd)
            raise
        self._drop_fd()
        self._fd, self._ident = fd, ident
        self._watcher = _watch.get() if self._lock_file else None
        if self._watcher is not None:
            ref = weakref.ref(self)

            def mark() -> None:
                backend = ref()
                if backend is not None:
                    backend._dirty = True

            self._wds = self._watcher.add(fd, os.path.dirname(self._path), id(self), mark)
        # The watch starts now: whatever happened to the file before is only
        # seen by one full check, which the next _at_path makes.
        self._dirty = True

    def _abandon_fd(self) -> None:
        """Leave the kept descriptor to a helper still waiting on it; unwatch it."""
        if self._watcher is not None and self._wds[0] >= 0:
            for wd in self._wds:
                self._watcher.remove(wd, id(self))
            self._wds = (-1, -1)
        self._fd = -1

    def _drop_fd(self) -> None:
        """Close the kept descriptor (which must hold nothing) and its watches."""
        fd = self._fd
        self._abandon_fd()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- acquire / release -------------------------------------------------

    def acquire(self, shared: bool, deadline: float | None) -> bool:
        # The common case, inlined: free, and no watched file changed.
        fd = self._fd
        if fd >= 0:
            try:
                _flock(fd, _TRY_SH if shared else _TRY_EX)
            except BlockingIOError:
                if deadline is not None and deadline <= time.monotonic():
                    return False  # a try: the caller decides whether to wait
                return self._acquire(shared, deadline, tried=True)
            watcher = self._watcher
            if watcher is not None and not watcher.queued(0, 1) and not watcher.draining and not self._dirty:
                return True
            if self._at_path():
                return True
            # The file moved: let it go; _acquire opens the one at the path now.
            _os.unlock(fd)
            self._drop_fd()
        return self._acquire(shared, deadline)

    def wait(self, shared: bool, deadline: float | None) -> bool:
        return self._acquire(shared, deadline, tried=True)

    def _acquire(self, shared: bool, deadline: float | None, tried: bool = False) -> bool:
        while True:
            if self._fd < 0:
                self._set_fd(self._open(self._path))
                tried = False
            if tried or not _os.try_lock(self._fd, shared):
                tried = False
                if deadline is None:
                    _flock(self._fd, _os.LOCK_SH if shared else _os.LOCK_EX)
                elif deadline <= time.monotonic() or not self._wait_timed(shared, deadline):
                    return False
            if self._at_path():
                return True
            # The file was removed or replaced while we waited: let it go and
            # take the lock on the file that is at the path now.
            _os.unlock(self._fd)
            self._drop_fd()

    def _wait_timed(self, shared: bool, deadline: float) -> bool:
        """Wait for the lock on the kept descriptor until ``deadline``."""
        if sys.platform != "win32":
            # In the main thread, block in the kernel itself (see _alarm).
            mode = _os.LOCK_SH if shared else _os.LOCK_EX
            granted = _alarm.block(deadline, _flock, self._fd, mode, _os.unlock)
            if granted is not None:
                return granted
        return self._wait_in_helper(shared, deadline)

    def _wait_in_helper(self, shared: bool, deadline: float) -> bool:
        with self._wlock:
            wait = self._waits.get(shared)
            if wait is None:
                # The helper waits on the kept descriptor itself, so a grant
                # needs no hand-over; only a timeout costs a new descriptor.
                wait = self._waits[shared] = _Wait(self._fd, shared)
            else:
                wait.abandoned = False  # take over a wait an earlier caller gave up
        try:
            if not wait.started:
                _helpers.run(functools.partial(self._run_wait, wait))
                wait.started = True
            remaining = deadline - time.monotonic()
            if remaining > 0:
                wait.signal.acquire(True, remaining)
        finally:
            with self._wlock:
                if not wait.done:
                    # Timed out (or interrupted). The helper stays in the kernel
                    # with its descriptor and hands a late grant back at once;
                    # we open a fresh descriptor for the next try.
                    wait.abandoned = True
                    if wait.fd == self._fd:
                        self._abandon_fd()
                    if not wait.started and self._waits.get(shared) is wait:
                        # Interrupted while the helper was being started: it may
                        # or may not run, so nobody may take this wait over.
                        del self._waits[shared]
        if not wait.done:
            return False
        if wait.error is not None:
            if wait.fd != self._fd:
                os.close(wait.fd)
            raise wait.error
        if wait.fd != self._fd:
            # We took over a wait that an earlier caller gave up: its
            # descriptor holds the lock now; ours holds nothing.
            self._set_fd(wait.fd)
        return True

    def _run_wait(self, wait: _Wait) -> Callable[[], object] | None:
        try:
            _flock(wait.fd, _os.LOCK_SH if wait.shared else _os.LOCK_EX)
            wait.granted = True
        except BaseException as exc:  # handed to the waiter, if any
            wait.error = exc
        with self._wlock:
            wait.done = True
            if self._waits.get(wait.shared) is wait:
                del self._waits[wait.shared]
            if not wait.abandoned:
                return wait.signal.release  # wakes the caller: the helper's last act
        # Nobody wants this grant any more: give it back at once.
        if wait.granted:
            _os.unlock(wait.fd)
        os.close(wait.fd)
        return None

    def cancel(self) -> None:
        with self._wlock:
            for wait in self._waits.values():
                wait.abandoned = True  # a late grant is given back by the helper
                if wait.fd == self._fd:
                    self._abandon_fd()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                _os.unlock(self._fd)  # harmless when nothing is held

    def release(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            quiet = not watcher.queued(0, 1) and not watcher.draining and not self._dirty
            at_path = quiet or self._at_path()
        else:
            at_path = self._at_path()
        _flock(self._fd, _UN)
        if not at_path:
            self._drop_fd()
            raise LockLost(
                f"lock file {self._path!r} was removed or replaced while held, so others "
                "may have held the lock meanwhile"
            )

    def _at_path(self) -> bool:
        """Whether the kept descriptor is still the file at the path."""
        watcher = self._watcher
        if watcher is not None and self._wds[0] >= 0:
            # Is any event queued? One system call. Nothing queued, no drain
            # under way and not marked: no watched file changed.
            if not watcher.queued(0, 1):
                if not watcher.draining and not self._dirty:
                    return True
            else:
                watcher.drain()
                if not self._dirty:
                    return True
        self._dirty = self._wds[0] < 0  # cleared first: a later event marks it again
        try:
            st = self._stat(self._path)
        except FileNotFoundError:
            self._dirty = True
            return False
        if (st.st_dev, st.st_ino) != self._ident:
            self._dirty = True
            return False
        return True

    def lost(self) -> bool:
        return not self._at_path()

    def locked(self) -> bool:
        return _os.probe(self._path) is not None

    # -- record: token and holder details ----------------------------------

    def token(self, shared: bool, since: float) -> int:
        if not shared:
            return _record.next_token(self._fd, self._path, since)
        try:
            _os.record_lock(self._fd)
        except OSError as exc:
            raise PermissionError(
                exc.errno,
                f"cannot write the fencing token to lock file {self._path!r}: {exc.strerror}",
            ) from None
        try:
            return _record.next_token(self._fd, self._path, since)
        finally:
            _os.record_unlock(self._fd)

    def publish(self, since: float, details: dict[str, Any]) -> None:
        _record.publish(self._fd, self._path, since, details)

    # -- lifetime -----------------------------------------------------------

    def forget(self) -> None:
        fds = {self._fd, *(w.fd for w in self._waits.values())}
        self._fd = -1
        self._waits = {}
        self._wlock = threading.Lock()
        # The inherited watches belong to the parent's inotify instance: leave
        # them alone (removing them would remove the parent's).
        self._watcher = None  # a fresh instance is made when the file is reopened
        self._wds = (-1, -1)
        self._dirty = True
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent keeps its own descriptor and hold

    def close(self) -> None:
        self._drop_fd()

    @property
    def fd(self) -> int:
        """The descriptor that holds the lock (changes when a wait is adopted)."""
        return self._fd
