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

from .._errors import AbandonedLockError, LockError
from ._base import Backend, Target, no_options

__all__ = ["MPBackend", "MPTarget"]

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
