"""The ``multiprocessing`` backend: a semaphore shared with child processes.

The lock is a :mod:`multiprocessing` semaphore, so only processes that
inherit it (``Process(args=(lock,))``, a ``Pool`` initializer) share it. A
waiter sleeps in the semaphore's own timed wait, woken by the release, and
every half second checks the holder's pid recorded in shared memory: a
holder that died makes it raise :class:`~crosslock.AbandonedLockError`
instead of waiting forever, since nobody can free a semaphore for the dead.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import time
import uuid
from collections.abc import Hashable
from typing import Any

from .._core import not_held_message
from .._errors import AbandonedLockError, LockError, NotHeldError
from ._base import Backend, Target, no_options

__all__ = ["MPBackend", "MPCore", "MPTarget"]

#: How often a waiter looks whether the holder is still alive (seconds).
CHECK_INTERVAL = 0.5

_PID, _TOKEN = 0, 1

#: Named multiprocessing locks of this process: name -> target.
_named: dict[str, MPTarget] = {}
_named_lock = threading.Lock()


def _context() -> Any:
    # A semaphore made in the spawn context can be handed to children of
    # every start method (fork children inherit it, spawn children unpickle it).
    if sys.platform == "win32":
        return multiprocessing.get_context()
    return multiprocessing.get_context("spawn")


class MPTarget(Target):
    """A semaphore plus a small shared array: [holder pid, token counter]."""

    backend_name = "multiprocessing"
    supports_shared = False

    def __init__(self, name: str | None, uid: str, sem: Any, state: Any) -> None:
        self.name = name
        self.uid = uid
        self.sem = sem
        self.state = state

    @classmethod
    def create(cls, name: object, spec: str, options: dict[str, Any]) -> MPTarget:
        no_options(cls.backend_name, options)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a multiprocessing lock's name must be a str or None, got {name!r}")
        with _named_lock:
            if name is not None and name in _named:
                return _named[name]
            ctx = _context()
            target = cls(name, uuid.uuid4().hex, ctx.Lock(), ctx.RawArray("q", 2))
            if name is not None:
                _named[name] = target
            return target

    @property
    def key(self) -> Hashable:
        return ("multiprocessing", self.uid)

    @property
    def display(self) -> str:
        return self.name if self.name is not None else f"multiprocessing-{self.uid[:8]}"

    def open(self) -> MPBackend:
        return MPBackend(self.sem, self.state)

    def new_core(self) -> MPCore:
        core = MPCore(self)
        # Kept alive by the target, not only by Lock objects: a hold must
        # outlive them (the name's target lives as long as the process).
        self.core = core
        return core

    def __reduce__(self) -> tuple[Any, ...]:
        if multiprocessing.context.get_spawning_popen() is None:
            raise LockError(
                f"multiprocessing lock {self.display!r} can only be passed to a child process "
                "when it starts: give it as Process(target=f, args=(lock,)) or "
                "Pool(initializer=f, initargs=(lock,)), not as an argument of a Pool task "
                "or through a queue; or use a file lock, Lock('name'), which pickles anywhere"
            )
        return (_rebuild, (self.name, self.uid, self.sem, self.state))


def _rebuild(name: str | None, uid: str, sem: Any, state: Any) -> MPTarget:
    """A target handed down by the parent: it is *the* lock of that name here from now on."""
    with _named_lock:
        known = _named.get(name) if name is not None else None
        if known is not None and known.uid == uid:
            return known
        target = MPTarget(name, uid, sem, state)
        if name is not None:
            _named[name] = target
        return target


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as dead)."""
    if sys.platform == "win32":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return bool(code.value == 259)  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


class MPBackend(Backend):
    kind = "multiprocessing"

    def __init__(self, sem: Any, state: Any) -> None:
        self._sem = sem
        self._state = state
        self._pid = os.getpid()  # a system call: read once (again after fork)

    def acquire(self, shared: bool, deadline: float | None) -> bool:
        sem, state = self._sem, self._state
        if sem.acquire(False):
            state[_PID] = self._pid
            return True
        while True:
            if deadline is None:
                wait = CHECK_INTERVAL
            else:
                wait = min(deadline - time.monotonic(), CHECK_INTERVAL)
                if wait <= 0:
                    return False
            if sem.acquire(True, wait):
                state[_PID] = self._pid
                return True
            holder = state[_PID]
            if holder and not _alive(holder):
                raise AbandonedLockError(
                    f"the holder of multiprocessing lock (pid {holder}) died without releasing "
                    "it, and a semaphore cannot be freed for the dead; use the file backend, "
                    "whose locks the kernel frees when the holder dies"
                )

    def release(self) -> None:
        self._state[_PID] = 0
        self._sem.release()

    def cancel(self) -> None:
        if self._state[_PID] == self._pid:  # interrupted right after the grant
            self.release()

    def forget(self) -> None:
        self._pid = os.getpid()  # the semaphore is shared; this process is new

    def locked(self) -> bool:
        if self._sem.acquire(False):
            self._sem.release()
            return False
        return True

    def token(self, shared: bool, since: float) -> int:
        token: int = self._state[_TOKEN] + 1
        self._state[_TOKEN] = token
        return token


class MPCore:
    """This process's state for one multiprocessing lock: who holds it, how often.

    The generic :class:`crosslock._core.Core` guards its state with a mutex and
    lets one thread of a process at a time ask the backend. Here the semaphore
    itself excludes the threads of this process as well as other processes, so
    each thread goes to the semaphore directly and the state needs no guard:
    only the holding thread (or task) writes it. A hold and a release are one
    semaphore call, one write of the holder's pid and a few attributes.
    """

    __slots__ = (
        "__weakref__",
        "_acquire",
        "_backend",
        "_counting",
        "_depth",
        "_owner",
        "_pid",
        "_release",
        "_state",
        "_token",
        "_waiting",
        "target",
    )

    def __init__(self, target: MPTarget) -> None:
        self.target = target
        self._backend = target.open()
        self._acquire = target.sem.acquire
        self._release = target.sem.release
        self._state = target.state
        self._reset()

    def _reset(self) -> None:
        self._owner: object = None
        self._depth = 0
        self._token: int | None = None
        self._pid = os.getpid()
        self._waiting = 0  # threads of this process waiting on the semaphore
        self._counting = threading.Lock()

    @property
    def _busy(self) -> bool:
        """Whether a thread of this process waits for the lock."""
        return self._waiting > 0

    def acquire(self, owner: object, shared: bool, deadline: float | None) -> bool:
        if self._owner == owner:
            self._depth += 1
            return True
        if self._acquire(False):
            self._state[_PID] = self._pid
            self._owner, self._depth, self._token = owner, 1, None
            return True
        if deadline is not None and deadline <= time.monotonic():
            return False
        with self._counting:
            self._waiting += 1
        try:
            granted = self._backend.wait(False, deadline)
        except BaseException:
            # Interrupted right after the semaphore was granted to this thread?
            # Then nobody of this process owns it yet: give it back.
            if self._owner is None:
                self._backend.cancel()
            raise
        finally:
            with self._counting:
                self._waiting -= 1
        if granted:
            self._owner, self._depth, self._token = owner, 1, None
        return granted

    def release(self, owner: object) -> None:
        if self._owner != owner:
            raise NotHeldError(not_held_message(self.target.display, self._owner is None))
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        self._state[_PID] = 0
        self._release()

    def held_by(self, owner: object) -> bool:
        return self._owner == owner

    def locked(self) -> bool:
        return self._owner is not None or self._backend.locked()

    def token(self, owner: object) -> int | None:
        if self._owner != owner:
            return None
        if self._token is None:
            self._token = self._backend.token(False, 0.0)
        return self._token

    def publish(self, details: dict[str, Any]) -> None:
        pass  # no holder details for multiprocessing locks

    def _after_fork_in_child(self) -> None:
        # The parent's holds stay the parent's: this process holds nothing.
        self._reset()
        self._backend.forget()
