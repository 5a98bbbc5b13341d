"""One process's state for one lock target, shared by every Lock object on it.

A :class:`Core` owns everything that is the same whatever the backend: which
threads (or asyncio tasks) hold the lock and how often, shared holds, waiting
threads of this process, and the process-wide registry that makes all Lock
objects of one target one lock. The backend is asked for the lock only when
the process goes from holding nothing to holding it, and told when it holds
nothing again.

Threads of one process wait for each other on a condition variable (woken by
the release); the first waiter asks the backend, which waits in the kernel or
the server. After ``fork()`` the child starts with every core free and its
backends' inherited resources dropped without releasing the parent's holds.

A backend may bring a core of its own that does the same with less
(:meth:`Target.new_core`): the file backend's ``FileCore`` (a gate lock that
wakes one waiting thread) and the multiprocessing backend's ``MPCore``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Hashable
from typing import Any, Protocol, cast

from ._backends._base import Backend, Target
from ._errors import LockError, NotHeldError

__all__ = [
    "TRY",
    "AnyCore",
    "Core",
    "get_core",
    "hold_shared_again",
    "leave_shared",
    "not_held_message",
    "upgrade_error",
]

_monotonic = time.monotonic
_time = time.time

#: A deadline that is always past: try once, never wait.
TRY = float("-inf")

_FREE, _SHARED, _EXCLUSIVE = 0, 1, 2


class AnyCore(Protocol):
    """What :class:`crosslock.Lock` asks of a core (:class:`Core`, or a backend's own)."""

    target: Target
    _backend: Backend
    #: threads (or tasks) of this process waiting for the lock
    _waiting: int

    @property
    def _busy(self) -> bool:
        """Whether a thread of this process waits for the lock in the backend."""

    def acquire(self, owner: object, shared: bool, deadline: float | None) -> bool: ...
    def release(self, owner: object) -> None: ...
    def held_by(self, owner: object) -> bool: ...
    def locked(self) -> bool: ...
    def token(self, owner: object) -> int | None: ...
    def publish(self, details: dict[str, Any]) -> None: ...
    def _after_fork_in_child(self) -> None: ...


class Core:
    """The per-process state of one lock target."""

    __slots__ = (
        "__weakref__",
        "_backend",
        "_busy",
        "_cond",
        "_depth",
        "_mode",
        "_mutex",
        "_owner",
        "_readers",
        "_since",
        "_token",
        "_waiting",
        "target",
    )

    def __init__(self, target: Target) -> None:
        self.target = target
        self._backend: Backend = target.open()
        self._reset()

    def _reset(self) -> None:
        # Code that runs in the caller's thread takes the plain mutex, never
        # `with self._cond`: Condition.__enter__ is Python code, and a Ctrl-C
        # landing in it just after the lock was taken would leave it held.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._mode = _FREE
        self._owner: object = None
        self._depth = 0
        self._readers: dict[object, int] = {}
        self._busy = False
        self._waiting = 0
        self._since = 0.0
        self._token: int | None = None

    # -- acquire -------------------------------------------------------------

    def acquire(self, owner: object, shared: bool, deadline: float | None) -> bool:
        """Take the lock for ``owner``; ``deadline`` as in :meth:`Backend.acquire`."""
        # The common case first: the process holds nothing and nobody of it
        # waits; one try of the backend, under the mutex. (acquire/release in
        # try/finally: half the cost of ``with`` on a lock.)
        mutex = self._mutex
        mutex.acquire()
        try:
            common = self._mode == _FREE and not self._busy and not shared
            if common:
                try:  # self._try(False), inlined
                    granted = self._backend.acquire(False, TRY)
                except BaseException:
                    self._backend.cancel()
                    raise
                if granted:
                    # _grant(owner, False), inlined: this is the hot path.
                    self._mode = _EXCLUSIVE
                    self._owner = owner
                    self._depth = 1
                    self._since = _time()
                    self._token = None
                    _held.add(self)
                    return True
                if deadline is not None and deadline <= _monotonic():
                    return False
                # Held elsewhere: this thread waits in the backend for the process.
                self._busy = True
        finally:
            mutex.release()
        if common:
            return self._wait_in_backend(owner, shared, deadline)
        return self._acquire(owner, shared, deadline)

    def _acquire(self, owner: object, shared: bool, deadline: float | None) -> bool:
        with self._mutex:
            if self._owner == owner:
                self._depth += 1
                return True
            if self._readers and hold_shared_again(self._readers, owner, shared, self.target.display):
                return True
            while self._busy or self._mode != _FREE:
                if shared and self._mode == _SHARED and not self._busy:
                    self._readers[owner] = 1
                    return True
                if not self._wait(deadline):
                    return False
            # The process holds nothing: one quick try, still under the mutex.
            if self._try(shared):
                self._grant(owner, shared)
                return True
            if deadline is not None and deadline <= time.monotonic():
                return False
            self._busy = True
        return self._wait_in_backend(owner, shared, deadline)

    def _wait_in_backend(self, owner: object, shared: bool, deadline: float | None) -> bool:
        """Wait for the lock in the backend, for the whole process (``_busy`` is set)."""
        granted = False
        try:
            granted = self._backend.wait(shared, deadline)
        except BaseException:
            # Interrupted somewhere in the wait, maybe just after a grant.
            self._backend.cancel()
            raise
        finally:
            mutex = self._mutex
            mutex.acquire()
            try:
                self._busy = False
                if granted:
                    self._grant(owner, shared)
                if self._waiting:
                    self._cond.notify_all()
            finally:
                mutex.release()
        return granted

    def _try(self, shared: bool) -> bool:
        """One try of the backend; an interrupted try leaves nothing held."""
        try:
            return self._backend.acquire(shared, TRY)
        except BaseException:
            self._backend.cancel()
            raise

    def _wait(self, deadline: float | None) -> bool:
        if deadline is None:
            remaining = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
        self._waiting += 1
        try:
            self._cond.wait(remaining)
        finally:
            self._waiting -= 1
        return True

    def _grant(self, owner: object, shared: bool) -> None:
        if shared:
            self._mode = _SHARED
            self._readers[owner] = 1
        else:
            self._mode = _EXCLUSIVE
            self._owner = owner
            self._depth = 1
        self._since = _time()
        self._token = None
        _held.add(self)

    # -- release -------------------------------------------------------------

    def release(self, owner: object) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            if self._mode == _EXCLUSIVE and self._owner == owner:
                self._depth -= 1
                if self._depth:
                    return
                self._owner = None
            else:
                last = leave_shared(self._readers, owner)
                if last is None:
                    raise NotHeldError(self._not_held_message())
                if not last:
                    return
            # Give the lock up first (the others wait for that), then tidy up:
            # nobody of this process sees the state in between (mutex).
            try:
                self._backend.release()
            finally:
                self._mode = _FREE
                self._token = None
                _held.discard(self)
                if self._waiting:
                    self._cond.notify_all()
        finally:
            mutex.release()

    def _not_held_message(self) -> str:
        return not_held_message(self.target.display, self._mode == _FREE)

    # -- queries -------------------------------------------------------------

    def held_by(self, owner: object) -> bool:
        if self._owner == owner or owner in self._readers:
            return not self._backend.lost()
        return False

    def locked(self) -> bool:
        if self._mode != _FREE:
            return True
        return self._backend.locked()

    def token(self, owner: object) -> int | None:
        with self._mutex:  # not the condition (see _reset)
            if not (self._owner == owner or owner in self._readers) or self._backend.lost():
                return None
            if self._token is None:
                self._token = self._backend.token(self._mode == _SHARED, self._since)
            return self._token

    def publish(self, details: dict[str, Any]) -> None:
        with self._mutex:  # not the condition (see _reset)
            if self._mode != _FREE:
                self._backend.publish(self._since, details)

    def _after_fork_in_child(self) -> None:
        self._reset()
        self._backend.forget()


def not_held_message(name: str, free: bool) -> str:
    """What :class:`NotHeldError` says for lock ``name`` (``free``: nobody of
    this process holds it)."""
    if free:
        return f"cannot release un-acquired lock {name!r}"
    return f"cannot release lock {name!r}: it is held by another thread or task, not this one"


def hold_shared_again(readers: dict[object, int], owner: object, shared: bool, name: str) -> bool:
    """Count one more hold of ``owner`` if it holds lock ``name`` shared
    (``False``: it holds no shared hold). Raises the upgrade error if it asks
    for an exclusive hold instead."""
    n = readers.get(owner)
    if n is None:
        return False
    if not shared:
        raise upgrade_error(name)
    readers[owner] = n + 1
    return True


def leave_shared(readers: dict[object, int], owner: object) -> bool | None:
    """Take one shared hold of ``owner`` off ``readers``: ``True`` if that was
    the process's last shared hold, ``False`` if holds remain, ``None`` if
    ``owner`` holds none."""
    n = readers.get(owner)
    if n is None:
        return None
    if n > 1:
        readers[owner] = n - 1
        return False
    del readers[owner]
    return not readers


def upgrade_error(name: str) -> LockError:
    """What a thread that holds lock ``name`` shared gets for asking it exclusively."""
    return LockError(
        f"cannot take lock {name!r} exclusively while this thread holds it shared; "
        "release the shared hold first"
    )


# -- the process-wide registry ------------------------------------------------

_registry: weakref.WeakValueDictionary[Hashable, AnyCore] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
#: Cores held by this process: kept alive even if every Lock object is gone.
_held: set[object] = set()


#: Backends of cores that were garbage-collected, closed by the next get_core().
#: A finalizer runs in whatever thread allocates when the collector strikes,
#: maybe one that holds a lock that close() takes (the lease renewer's, the
#: inotify watcher's): so it only queues the backend, which takes no lock.
_closing: collections.deque[Backend] = collections.deque()


def _close_pending() -> None:
    while _closing:
        try:
            backend = _closing.popleft()
        except IndexError:  # taken by another thread meanwhile
            return
        with contextlib.suppress(Exception):
            backend.close()


def get_core(target: Target) -> AnyCore:
    """Return this process's core for ``target``, creating it on first use."""
    _close_pending()
    key = target.key
    with _registry_lock:
        core = _registry.get(key)
        if core is None:
            core = cast("AnyCore | None", target.new_core()) or Core(target)
            _registry[key] = core
            weakref.finalize(core, _closing.append, core._backend)
        return core


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    _held.clear()
    while _closing:  # the parent closes these; here they are only dropped
        with contextlib.suppress(Exception):
            _closing.popleft().forget()
    for core in list(_registry.values()):
        core._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
