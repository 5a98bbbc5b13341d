"""Learning cheaply that a lock file was removed, renamed or re-linked (Linux).

crosslock must check, after each grant and at each release, that the
descriptor it locked is still the file at the lock path. ``lstat`` does that
but costs more than the lock itself. On Linux one inotify instance per
process watches every lock file in use (and its folder): the kernel queues an
event *during* the unlink, rename or link that changes the file, so one
zero-timeout ``epoll_wait`` on the inotify descriptor -- is anything queued?
-- tells whether any watched file may have changed (the cheapest such system
call from Python: about a third less than a ``FIONREAD`` ioctl; with the
optional C module ``crosslock._speedups``, the same call made together with
the ``flock``). Only then does crosslock read the events and ``lstat`` the
affected paths. Where inotify is missing or out of watches, every check is an
``lstat``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

__all__ = ["Watcher", "get", "speedups"]


def _load_speedups() -> Any:
    if os.environ.get("CROSSLOCK_NO_SPEEDUPS"):
        return None
    try:
        from .. import _speedups
    except ImportError:  # not built here: the same in Python
        return None
    return _speedups


#: The C module pairing flock with the quick check, or ``None`` (pure Python).
speedups: Final = _load_speedups()


def _uncounted(delta: int) -> int:
    return 0


_drains: Callable[[int], int] = speedups.drains if speedups is not None else _uncounted

_IN_ATTRIB: Final = 0x004  # link count (and metadata) changed
_IN_MOVE_SELF: Final = 0x800
_IN_DELETE_SELF: Final = 0x400
_IN_IGNORED: Final = 0x8000
_FILE_MASK: Final = _IN_ATTRIB | _IN_MOVE_SELF | _IN_DELETE_SELF
_DIR_MASK: Final = _IN_MOVE_SELF | _IN_DELETE_SELF | 0x01000000  # IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


class Watcher:
    """One inotify instance: a watch per lock file and per folder."""

    def __init__(self, libc: ctypes.CDLL, fd: int, epoll: Any) -> None:
        self._libc = libc
        self.fd = fd
        self._epoll = epoll
        #: ``queued(0, 1)`` is a non-empty list when events are queued
        self.queued: Callable[[float, int], list[tuple[int, int]]] = epoll.poll
        #: the same check's descriptor, for the C module
        self.quick = epoll.fileno()
        #: drains under way: a quiet queue proves nothing while one runs
        #: (the C module keeps its own count, for its own checks)
        self.draining = 0
        #: wd -> callbacks marking the affected backends dirty
        self._targets: dict[int, dict[int, Callable[[], None]]] = {}
        self._guard = threading.Lock()

    def add(self, fd: int, folder: str, key: int, mark: Callable[[], None]) -> tuple[int, int]:
        """Watch the file open as ``fd`` and its folder; return both watch ids (-1: none)."""
        file_wd = self._libc.inotify_add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), _FILE_MASK)
        if file_wd < 0:
            return -1, -1
        dir_wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), _DIR_MASK)
        if dir_wd < 0:
            self.remove(file_wd, key)
            return -1, -1
        with self._guard:
            self._targets.setdefault(file_wd, {})[key] = mark
            self._targets.setdefault(dir_wd, {})[key] = mark
        return file_wd, dir_wd

    def remove(self, wd: int, key: int) -> None:
        with self._guard:
            marks = self._targets.get(wd)
            if marks is not None:
                marks.pop(key, None)
                if marks:
                    return  # the folder is still watched for other locks
                del self._targets[wd]
        self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if already gone

    def drain(self) -> None:
        """Read every queued event and mark the backends it concerns."""
        with self._guard:
            self.draining += 1
            _drains(1)
        try:
            self._drain()
        finally:
            with self._guard:
                self.draining -= 1
                _drains(-1)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            with self._guard:
                while offset + _EVENT.size <= len(data):
                    wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size + length
                    marks = self._targets.get(wd)
                    if marks:
                        for mark in list(marks.values()):
                            mark()
                    if mask & _IN_IGNORED:
                        self._targets.pop(wd, None)


_watcher: Watcher | None = None
_tried = False
_lock = threading.Lock()


def get() -> Watcher | None:
    """This process's watcher, or ``None`` where inotify cannot be had."""
    global _watcher, _tried
    if _tried:
        return _watcher
    with _lock:
        if not _tried:
            _watcher = _create()
            _tried = True
    return _watcher


def _create() -> Watcher | None:
    if not sys.platform.startswith("linux") or os.environ.get("CROSSLOCK_NO_INOTIFY"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None  # e.g. max_user_instances reached: fall back to lstat
    try:
        # Level-triggered: ready for as long as any event is queued.
        epoll = select.epoll(1)
        epoll.register(fd, select.EPOLLIN)
    except OSError:
        os.close(fd)
        return None
    return Watcher(libc, fd, epoll)


def _after_fork_in_child() -> None:
    # The inherited instance is shared with the parent: reading it would steal
    # the parent's events. Start afresh (backends re-watch when they reopen).
    global _watcher, _tried, _lock
    if _watcher is not None:
        with contextlib.suppress(OSError):
            _watcher._epoll.close()
        with contextlib.suppress(OSError):
            os.close(_watcher.fd)
    _watcher, _tried, _lock = None, False, threading.Lock()
    _drains(-_drains(0))  # a drain in another thread of the parent is not under way here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
