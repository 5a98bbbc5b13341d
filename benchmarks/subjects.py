"""The locks under test: one adapter per subject, ``make(path)`` -> an object
with ``acquire()`` and ``release()``.

Locks of subjects marked ``inherit`` are made once by the measuring process
and inherited by the worker processes it forks (crosslock locks and
``multiprocessing.Lock``: that is how they are meant to be shared). The other
subjects make one lock object per process, since an inherited descriptor
would share one open file description, and flock excludes nothing between
holders of the same description.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import importlib.metadata
import multiprocessing
import os
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import crosslock

__all__ = [
    "BASELINE",
    "FLOOR",
    "ROUND_TRIP",
    "SERVER_SUBJECTS",
    "SUBJECTS",
    "Handle",
    "ServerSubject",
    "Subject",
    "available",
    "available_servers",
    "missing",
    "versions",
]

#: Every ratio in the report is subject / this subject, measured in the same run.
BASELINE = "raw flock"

#: The least a lock written in Python does that keeps crosslock's file checks.
FLOOR = "Python floor"

#: The server tables' baseline: ratios there are subject / this row, measured in the same run.
ROUND_TRIP = "one Redis round trip"

#: Distributions whose versions the report records.
PACKAGES = ("crosslock", "filelock", "portalocker", "fasteners", "matplotlib")
#: ... and those of the server subjects, when they run.
SERVER_PACKAGES = ("redis", "pottery", "python-redis-lock", "psycopg")


class Handle(Protocol):
    """What a subject's ``make`` returns."""

    def acquire(self) -> object: ...

    def release(self) -> object: ...


@dataclass(frozen=True)
class Subject:
    """One lock implementation under test."""

    name: str
    make: Callable[[str], Handle]
    #: modules it needs beyond the standard library and crosslock
    requires: tuple[str, ...] = ()
    #: made once by the measuring process and inherited by forked workers
    inherit: bool = False
    note: str = ""
    linux_only: bool = False


class RawFlock:
    """``fcntl.flock(LOCK_EX)`` / ``LOCK_UN`` on a descriptor kept open: the baseline.

    ``acquire`` and ``release`` are bound C calls, so the baseline carries no
    Python frame of its own.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self.acquire = functools.partial(fcntl.flock, self.fd, fcntl.LOCK_EX)
        self.release = functools.partial(fcntl.flock, self.fd, fcntl.LOCK_UN)


class PythonFloor:
    """The least a Python lock can do that keeps crosslock's checks of a lock file.

    crosslock must learn, after each grant and before each release, whether
    the locked file is still the one at the path; the cheapest way is a
    zero-timeout ``epoll_wait`` on an inotify instance watching the file. This
    lock does that and nothing else: a method call, ``flock`` and that check
    (no threads, no reentrancy, no bookkeeping). Its ratios to raw flock are
    the lowest a Python lock with those checks can reach on this machine.
    """

    def __init__(self, path: str) -> None:
        import ctypes
        import select

        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        libc = ctypes.CDLL(None, use_errno=True)
        watch = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        # IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF, as crosslock watches a lock file
        if watch < 0 or libc.inotify_add_watch(watch, os.fsencode(path), 0x004 | 0x400 | 0x800) < 0:
            raise OSError(ctypes.get_errno(), "inotify is not available")
        self._epoll = select.epoll(1)
        self._epoll.register(watch, select.EPOLLIN)
        self._queued = self._epoll.poll

    def acquire(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        if self._queued(0, 1):
            raise RuntimeError("the lock file changed while the lock was taken")

    def release(self) -> None:
        if self._queued(0, 1):
            raise RuntimeError("the lock file changed while the lock was held")
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class PortalockerCall:
    """``portalocker.lock(f, LOCK_EX)`` / ``portalocker.unlock(f)`` on a file kept open."""

    def __init__(self, path: str) -> None:
        portalocker = importlib.import_module("portalocker")
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open on purpose
        self.acquire = functools.partial(portalocker.lock, self.file, portalocker.LOCK_EX)
        self.release = functools.partial(portalocker.unlock, self.file)


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _mp_lock(path: str) -> Handle:
    lock: Handle = multiprocessing.get_context("fork").Lock()
    return lock


def _crosslock_file(path: str) -> Handle:
    return crosslock.Lock(path)


def _crosslock_pure(path: str) -> Handle:
    lock = crosslock.Lock(path)
    lock._fast = None  # its core's own path, as without the C module
    return lock


def _crosslock_timeout(path: str) -> Handle:
    return crosslock.Lock(path, timeout=60)


def _crosslock_mp(path: str) -> Handle:
    return crosslock.Lock(backend="multiprocessing")


def _crosslock_filelock(path: str) -> Handle:
    return crosslock.Lock(path, backend="filelock")


def _filelock(path: str) -> Handle:
    lock: Handle = _module("filelock").FileLock(path)
    return lock


def _portalocker_lock(path: str) -> Handle:
    lock: Handle = _module("portalocker").Lock(path, fail_when_locked=False, timeout=60)
    return lock


def _fasteners(path: str) -> Handle:
    lock: Handle = _module("fasteners").InterProcessLock(path)
    return lock


SUBJECTS: tuple[Subject, ...] = (
    Subject(BASELINE, RawFlock, note="fcntl.flock on a kept descriptor"),
    Subject(
        FLOOR,
        PythonFloor,
        note="flock plus crosslock's check of the file after each grant and before each release, "
        "in a minimal Python class",
        linux_only=True,
    ),
    Subject("multiprocessing.Lock", _mp_lock, inherit=True, note="a fork-context semaphore"),
    Subject("crosslock file", _crosslock_file, inherit=True, note="crosslock.Lock(path)"),
    Subject(
        "crosslock file, pure Python",
        _crosslock_pure,
        inherit=True,
        note="crosslock.Lock(path) without its optional C module (as with CROSSLOCK_NO_SPEEDUPS=1)",
        linux_only=True,
    ),
    Subject(
        "crosslock file timeout",
        _crosslock_timeout,
        inherit=True,
        note="crosslock.Lock(path, timeout=60): waits in flock, ended at the deadline by a signal",
    ),
    Subject(
        "crosslock multiprocessing",
        _crosslock_mp,
        inherit=True,
        note='crosslock.Lock(backend="multiprocessing")',
    ),
    Subject(
        "crosslock filelock",
        _crosslock_filelock,
        requires=("filelock",),
        inherit=True,
        note='crosslock.Lock(path, backend="filelock")',
    ),
    Subject("filelock", _filelock, requires=("filelock",), note="filelock.FileLock(path)"),
    Subject(
        "portalocker Lock",
        _portalocker_lock,
        requires=("portalocker",),
        note="portalocker.Lock(path, fail_when_locked=False, timeout=60)",
    ),
    Subject(
        "portalocker lock()",
        PortalockerCall,
        requires=("portalocker",),
        note="portalocker.lock(f, LOCK_EX) / unlock(f) on a kept file",
    ),
    Subject("fasteners", _fasteners, requires=("fasteners",), note="fasteners.InterProcessLock(path)"),
)


# -- server subjects: made from the server's URL and a lock name -----------------------


@dataclass(frozen=True)
class ServerSubject:
    """A lock kept in a server; :meth:`bind` makes it a :class:`Subject` for one server."""

    name: str
    #: "redis" or "postgres"
    server: str
    #: (server URL, lock name) -> the lock
    connect: Callable[[str, str], Handle]
    requires: tuple[str, ...] = ()
    inherit: bool = False
    note: str = ""

    def bind(self, url: str) -> Subject:
        """The subject on the server at ``url``; its lock is named after the path it is given."""
        make = functools.partial(_named, self.connect, url)
        return Subject(self.name, make, self.requires, self.inherit, self.note)


def _named(connect: Callable[[str, str], Handle], url: str, path: str) -> Handle:
    return connect(url, "bench-" + os.path.basename(path))


def _crosslock_redis(url: str, name: str) -> Handle:
    return crosslock.Lock(name, backend=url, lease=10)


def _crosslock_postgres(url: str, name: str) -> Handle:
    return crosslock.Lock(name, backend=url)


def _redis_client(url: str) -> Any:
    return _module("redis").Redis.from_url(url)


def _redis_py(url: str, name: str) -> Handle:
    lock: Handle = _redis_client(url).lock(name)
    return lock


def _pottery(url: str, name: str) -> Handle:
    lock: Handle = _module("pottery").Redlock(key=name, masters={_redis_client(url)})
    return lock


def _python_redis_lock(url: str, name: str) -> Handle:
    lock: Handle = _module("redis_lock").Lock(_redis_client(url), name)
    return lock


def _portalocker_redis(url: str, name: str) -> Handle:
    where = urllib.parse.urlsplit(url)
    kwargs = {"host": where.hostname, "port": where.port}
    lock: Handle = _module("portalocker.redis").RedisLock(name, redis_kwargs=kwargs, timeout=60)
    return lock


SERVER_SUBJECTS: tuple[ServerSubject, ...] = (
    ServerSubject(
        "crosslock redis",
        "redis",
        _crosslock_redis,
        requires=("redis",),
        inherit=True,
        note='crosslock.Lock(name, backend="redis://...", lease=10)',
    ),
    ServerSubject(
        "crosslock postgres",
        "postgres",
        _crosslock_postgres,
        requires=("psycopg",),
        inherit=True,
        note='crosslock.Lock(name, backend="postgresql://...")',
    ),
    ServerSubject(
        "redis-py Lock",
        "redis",
        _redis_py,
        requires=("redis",),
        note="redis.Redis(...).lock(name): redis.lock.Lock, polls every 0.1 s",
    ),
    ServerSubject(
        "pottery Redlock",
        "redis",
        _pottery,
        requires=("redis", "pottery"),
        note="pottery.Redlock(key=name, masters={redis}): one master, retries after 0-0.2 s",
    ),
    ServerSubject(
        "python-redis-lock",
        "redis",
        _python_redis_lock,
        requires=("redis", "redis_lock"),
        note="redis_lock.Lock(redis, name): waits in BLPOP on a signal list",
    ),
    ServerSubject(
        "portalocker RedisLock",
        "redis",
        _portalocker_redis,
        requires=("redis", "portalocker.redis"),
        note="portalocker.redis.RedisLock(name, timeout=60): a pub/sub subscription, polls every 0.25 s",
    ),
)


def missing(subject: Subject) -> str | None:
    """Why ``subject`` cannot run here (a module it needs does not import), or ``None``.

    Importing here, in the parent, also spares every forked child the import.
    """
    if subject.linux_only and not sys.platform.startswith("linux"):
        return "Linux only"
    for name in subject.requires:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{name} not installed"
    return None


def available(wanted: list[str] | None = None) -> list[tuple[Subject, str | None]]:
    """Each subject (filtered by case-insensitive substrings in ``wanted``;
    the baseline always runs) with the reason it is skipped, if it is."""
    chosen = []
    for subject in SUBJECTS:
        picked = not wanted or any(w.lower() in subject.name.lower() for w in wanted)
        if not picked and subject.name != BASELINE:
            continue
        chosen.append((subject, missing(subject)))
    return chosen


def available_servers(
    urls: dict[str, str | None], wanted: list[str] | None = None
) -> list[tuple[Subject, str | None]]:
    """Each server subject (filtered as in :func:`available`) bound to its
    server's URL in ``urls`` (``None``: the server is not running, and the
    subject is skipped), with the reason it is skipped, if it is."""
    chosen: list[tuple[Subject, str | None]] = []
    for server_subject in SERVER_SUBJECTS:
        if wanted and not any(w.lower() in server_subject.name.lower() for w in wanted):
            continue
        url = urls.get(server_subject.server)
        subject = server_subject.bind(url or "")
        why = missing(subject) or (None if url else f"no {server_subject.server} server")
        chosen.append((subject, why))
    return chosen


def versions(servers: bool = False) -> dict[str, str | None]:
    """Installed version of each package of interest (``None``: not installed);
    with ``servers``, those of the server subjects' packages too."""
    found: dict[str, str | None] = {}
    for name in PACKAGES + (SERVER_PACKAGES if servers else ()):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
