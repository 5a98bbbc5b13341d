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
from typing import Any, Final

from .. import _record
from .._core import TRY, _held, hold_shared_again, leave_shared, not_held_message
from .._errors import LockError, LockLost, NotHeldError
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
_EX = _os.LOCK_EX
_time = time.time
if _watch.speedups is not None:
    from .._speedups import BUSY as _BUSY
    from .._speedups import GRANTED as _GRANTED
    from .._speedups import NO_FD as _NO_FD
    from .._speedups import UNCHECKED as _UNCHECKED
    from .._speedups import grab as _grab
else:
    _GRANTED, _BUSY, _UNCHECKED, _NO_FD = 0, 1, 2, 3

    def _grab(backend: Any, op: int, /) -> int:
        """The C module's ``grab`` for a blocking ``op``, in Python: the lock,
        without the quick check (the caller makes it)."""
        _flock(backend._fd, op)
        return _UNCHECKED


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

    def new_core(self) -> FileCore | None:
        return FileCore(self)


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
        #: the watcher's quick-check descriptor while no event marks this file;
        #: -1 (check with lstat) until a watch and a full check say otherwise
        self._quick = -1
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
                    backend._quick = -1

            self._wds = self._watcher.add(fd, os.path.dirname(self._path), id(self), mark)
        # The watch starts now: whatever happened to the file before is only
        # seen by one full check, which the next _at_path makes.
        self._quick = -1

    def _abandon_fd(self) -> None:
        """Leave the kept descriptor to a helper still waiting on it; unwatch it."""
        if self._watcher is not None and self._wds[0] >= 0:
            for wd in self._wds:
                self._watcher.remove(wd, id(self))
            self._wds = (-1, -1)
        self._quick = -1
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
        # The common case first: a try on the kept descriptor, then the check.
        fd = self._fd
        if fd >= 0:
            try:
                _flock(fd, _TRY_SH if shared else _TRY_EX)
            except BlockingIOError:
                if deadline is not None and deadline <= time.monotonic():
                    return False  # a try: the caller decides whether to wait
                return self._acquire(shared, deadline, tried=True)
            if self._kept(fd):
                return True
        return self._acquire(shared, deadline)

    def wait(self, shared: bool, deadline: float | None) -> bool:
        fd = self._fd
        if fd >= 0:
            # The wait in this thread, inlined: it is the hand-off's path.
            mode = _os.LOCK_SH if shared else _os.LOCK_EX
            if deadline is None:
                state: int | None = _grab(self, mode)
            else:
                state = None
                if sys.platform != "win32":
                    state = _alarm.block(deadline, _grab, self, mode, FileBackend._unlock)
                    if state == _alarm.EXPIRED:
                        return False
                if state is None:  # not in this thread: in a helper
                    if deadline <= time.monotonic() or not self._wait_in_helper(shared, deadline):
                        return False
                    fd = self._fd  # a wait taken over brings its own descriptor
                    state = _UNCHECKED
            if state == _GRANTED:  # the C module found nothing changed
                return True
            if state == _NO_FD:
                return self._acquire(shared, deadline)
            watcher = self._watcher  # _kept's first check, inlined: the hand-off's path
            if watcher is not None and not watcher.queued(0, 1) and not watcher.draining and self._quick >= 0:
                return True
            if self._kept(fd):
                return True
            return self._acquire(shared, deadline)
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
            if self._kept(self._fd):
                return True

    def _wait_timed(self, shared: bool, deadline: float) -> bool:
        """Wait for the lock on the kept descriptor until ``deadline``."""
        if sys.platform != "win32":
            # In the main thread, block in the kernel itself (see _alarm).
            mode = _os.LOCK_SH if shared else _os.LOCK_EX
            state = _alarm.block(deadline, _grab, self, mode, FileBackend._unlock)
            if state is not None:
                return state != _alarm.EXPIRED  # the caller checks the path
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

    def _unlock(self) -> None:
        _os.unlock(self._fd)

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
            quiet = not watcher.queued(0, 1) and not watcher.draining and self._quick >= 0
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

    def _kept(self, fd: int) -> bool:
        """After a grant on ``fd``: whether it is still the file at the path.
        If not (removed or replaced meanwhile), let it go and drop it, so the
        next attempt takes the lock on the file that is at the path now and
        all waiters converge on one file."""
        if self._at_path():
            return True
        _os.unlock(fd)
        self._drop_fd()
        return False

    def _at_path(self) -> bool:
        """Whether the kept descriptor is still the file at the path."""
        watcher = self._watcher
        if watcher is not None and self._wds[0] >= 0:
            # Is any event queued? One system call. Nothing queued, no drain
            # under way and not marked: no watched file changed.
            if not watcher.queued(0, 1):
                if not watcher.draining and self._quick >= 0:
                    return True
            else:
                watcher.drain()
                if self._quick >= 0:
                    return True
        # Cleared first: a later event marks it again.
        self._quick = watcher.quick if watcher is not None and self._wds[0] >= 0 else -1
        try:
            st = self._stat(self._path)
        except FileNotFoundError:
            self._quick = -1
            return False
        if (st.st_dev, st.st_ino) != self._ident:
            self._quick = -1
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
        self._quick = -1
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


# -- the file backend's core -------------------------------------------------


class FileCore:
    """This process's state for one lock file: who holds it, how often.

    What :class:`crosslock._core.Core` does for every backend, done here with
    less for the file backend, whose hand-off and uncontended pair are the
    measured hot paths. A *gate* (a plain lock) admits one thread of the
    process at a time to the lock file: the holding thread keeps it for its
    whole hold (a shared hold: the first reader takes it, the last one gives
    it back), and so does a thread waiting in the kernel for the process.
    Other threads of the process wait on the gate itself, woken by the
    release. Only the gate's holder writes the exclusive state, so that needs
    no guard of its own; a mutex guards the readers and what holders may ask
    concurrently (token, details). Holding: ``_owner`` set (exclusive), or
    ``_readers`` not empty (shared).
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_busy",
        "_depth",
        "_gate",
        "_mutex",
        "_owner",
        "_readers",
        "_since",
        "_token",
        "_waiting",
        "target",
    )

    #: :class:`crosslock.Lock` may take this core's common path itself (in one
    #: frame, with the C module's paired calls) for exclusive locks.
    fast: Final = _watch.speedups is not None

    def __init__(self, target: FileTarget) -> None:
        self.target = target
        self._backend = FileBackend(target.path)
        self._reset()

    def _reset(self) -> None:
        self._gate = threading.Lock()
        self._mutex = threading.Lock()
        self._owner: object = None
        self._depth = 0
        self._readers: dict[object, int] = {}
        self._since = 0.0
        self._token: int | None = None
        self._busy = False  # a thread of this process waits in the kernel
        self._waiting = 0  # threads of this process waiting for the gate

    # -- acquire -------------------------------------------------------------
    #
    # A Ctrl-C (KeyboardInterrupt) can land at any call or function entry: from
    # the gate's acquisition on, everything runs in one try whose handler gives
    # back what may be held -- the lock file, the state, the gate.

    def acquire(self, owner: object, shared: bool, deadline: float | None) -> bool:
        if self._owner == owner:
            self._depth += 1
            return True
        gate = self._gate
        if not gate.acquire(False):
            return self._acquire(owner, shared, deadline)
        backend = self._backend
        tried = False
        try:
            if not shared:
                # The common case, inlined: the process held nothing, the file
                # is free, and no watched file changed.
                try:
                    if deadline is None:
                        # No timeout: block at once. A free file is granted as
                        # fast as by a try, and a held one costs no failed try
                        # (a third of a waiter's CPU per hand-off).
                        self._busy = True
                        try:
                            _flock(backend._fd, _EX)
                        finally:
                            self._busy = False
                    else:
                        _flock(backend._fd, _TRY_EX)
                except BlockingIOError:  # held by another process: wait for it
                    tried = True
                except (OSError, ValueError):  # no descriptor kept (-1), say: the full path
                    pass
                else:
                    watcher = backend._watcher
                    if (
                        watcher is not None
                        and not watcher.queued(0, 1)
                        and not watcher.draining
                        and backend._quick >= 0
                    ) or backend._kept(backend._fd):
                        self._owner = owner
                        self._depth = 1
                        self._since = _time()
                        _held.add(self)
                        return True
                    # Not kept (the file moved): _take locks the one there now.
            if self._take(shared, deadline, tried):
                self._grant(owner, shared)
                return True
        except BaseException:
            self._give_back(owner)
            raise
        gate.release()
        return False

    def resume(self, owner: object, state: int, deadline: float | None) -> bool:
        """Go on with an exclusive acquisition whose first ``_speedups.grab``
        (made by :class:`crosslock.Lock` with the gate held) did not end in a
        checked grant. The caller's handler gives everything back if this raises."""
        backend = self._backend
        kept = state == _UNCHECKED and backend._kept(backend._fd)
        if kept or self._take(False, deadline, tried=state == _BUSY):
            self._grant(owner, False)
            return True
        self._gate.release()
        return False

    def _acquire(self, owner: object, shared: bool, deadline: float | None) -> bool:
        """Another thread of this process holds the lock or waits for it."""
        with self._mutex:
            if hold_shared_again(self._readers, owner, shared, self.target.display):
                return True
            if shared and self._readers and not self._waiting:
                self._readers[owner] = 1  # join the process's shared hold
                return True
            if deadline is None:
                remaining = -1.0
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            self._waiting += 1
        try:
            got = self._gate.acquire(True, remaining)
        finally:
            with self._mutex:
                self._waiting -= 1
        if not got:
            return False
        try:
            if self._take(shared, deadline):
                self._grant(owner, shared)
                return True
        except BaseException:
            self._give_back(owner)
            raise
        self._gate.release()
        return False

    def _take(self, shared: bool, deadline: float | None, tried: bool = False) -> bool:
        """Take the lock file for the process (this thread holds the gate;
        ``tried``: a try just failed, so go straight to waiting)."""
        backend = self._backend
        if not tried and backend.acquire(shared, TRY):
            return True
        if deadline is not None and deadline <= time.monotonic():
            return False
        self._busy = True
        try:
            return backend.wait(shared, deadline)
        finally:
            self._busy = False

    def _grant(self, owner: object, shared: bool) -> None:
        if shared:
            with self._mutex:
                self._readers[owner] = 1
        else:
            self._owner = owner
            self._depth = 1
        self._since = _time()
        _held.add(self)

    def _give_back(self, owner: object) -> None:
        """An acquisition by ``owner`` was interrupted at an unknown point, with
        the gate held: hold nothing, and let the gate go."""
        try:
            self._backend.cancel()
        finally:
            if self._owner == owner:
                self._owner = None
            with self._mutex:
                self._readers.pop(owner, None)
            _held.discard(self)
            self._gate.release()

    # -- release -------------------------------------------------------------

    def release(self, owner: object) -> None:
        if self._owner == owner:
            depth = self._depth - 1
            if depth:
                self._depth = depth
                return
            # Give the lock up first (the others wait for that), then tidy up.
            backend = self._backend
            try:
                watcher = backend._watcher
                if watcher is None or watcher.queued(0, 1) or watcher.draining or backend._quick < 0:
                    backend.release()  # checks the path; raises LockLost
                else:
                    _flock(backend._fd, _UN)
            except BaseException:
                backend.cancel()  # interrupted before the unlock, maybe: unlock
                raise
            finally:
                self._owner = None
                self._token = None
                _held.discard(self)
                self._gate.release()
            return
        with self._mutex:
            last = leave_shared(self._readers, owner)
            if last is None:
                free = self._owner is None and not self._readers
                raise NotHeldError(not_held_message(self.target.display, free))
            if not last:
                return
            try:
                self._backend.release()
            except BaseException:
                self._backend.cancel()
                raise
            finally:
                self._token = None
                _held.discard(self)
                self._gate.release()

    # -- queries -------------------------------------------------------------

    def held_by(self, owner: object) -> bool:
        if self._owner == owner or owner in self._readers:
            return not self._backend.lost()
        return False

    def locked(self) -> bool:
        if self._owner is not None or self._readers:
            return True
        return self._backend.locked()

    def token(self, owner: object) -> int | None:
        with self._mutex:
            if not (self._owner == owner or owner in self._readers) or self._backend.lost():
                return None
            if self._token is None:
                self._token = self._backend.token(bool(self._readers), self._since)
            return self._token

    def publish(self, details: dict[str, Any]) -> None:
        with self._mutex:
            if self._owner is not None or self._readers:
                self._backend.publish(self._since, details)

    def _after_fork_in_child(self) -> None:
        # The parent's holds stay the parent's: this process holds nothing.
        self._reset()
        self._backend.forget()
