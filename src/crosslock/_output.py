"""Helpers built on Lock: ``synchronized``, ``print`` and ``open``."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar, overload

from ._core import TRY
from ._errors import Timeout
from ._lock import Lock, check_timeout, run_under

__all__ = ["open", "print", "synchronized"]

F = TypeVar("F", bound=Callable[..., Any])


# -- synchronized ---------------------------------------------------------------


@overload
def synchronized(name: F) -> F: ...


@overload
def synchronized(name: str | os.PathLike[str] | None = None, **lock_options: Any) -> Callable[[F], F]: ...


def synchronized(name: Any = None, **lock_options: Any) -> Any:
    """Decorate a function (sync or async) so that each call runs under a lock.

    ``@crosslock.synchronized()`` uses a lock named after the function's
    module and qualified name, so every process that imports the module
    shares it; ``@crosslock.synchronized("cache")`` names it. Other keyword
    arguments go to :class:`Lock` (``timeout=``, ``backend=``, ...). The lock
    is created on the first call, so importing the module touches nothing.

    Raises (from a call):
        Timeout: the lock's ``timeout`` passed before the lock was acquired.
    """
    if callable(name) and not isinstance(name, (str, os.PathLike)):
        return synchronized()(name)

    def decorate(func: F) -> F:
        lock_name = name
        if lock_name is None:
            qualified = f"{func.__module__}.{func.__qualname__}"
            lock_name = re.sub(r"[^A-Za-z0-9._-]", "_", qualified)
        created: list[Lock] = []
        guard = threading.Lock()

        def get_lock() -> Lock:
            if not created:
                with guard:
                    if not created:
                        created.append(Lock(lock_name, **lock_options))
            return created[0]

        return run_under(func, get_lock)  # type: ignore[return-value]

    return decorate


# -- print ------------------------------------------------------------------------

_stream_locks: dict[tuple[int, int], Lock | None] = {}
_stream_locks_guard = threading.Lock()
#: Streams without a file descriptor can only be shared by threads.
_local_lock = threading.RLock()


def _stream_lock(stream: Any) -> Any:
    try:
        fd = stream.fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return _local_lock
    key = (st.st_dev, st.st_ino)
    lock = _stream_locks.get(key)
    if lock is None and key not in _stream_locks:
        with _stream_locks_guard:
            try:
                lock = Lock(f".print-{st.st_dev}-{st.st_ino}", backend="file")
            except OSError:
                lock = None  # no usable lock directory: still print, threads serialized
            _stream_locks[key] = lock
    return lock if lock is not None else _local_lock


def print(  # noqa: A001 - mirrors the built-in on purpose
    *objects: object,
    sep: str | None = " ",
    end: str | None = "\n",
    file: Any = None,
    flush: bool = True,
) -> None:
    """:func:`print`, but the whole output of one call reaches the stream in one
    piece, never interleaved with another thread's or process's
    ``crosslock.print`` to the same stream.

    Works for any text stream: a terminal, pipe or file (serialized across
    processes by a lock named after the stream's device and inode), or one
    without a descriptor such as :class:`io.StringIO` (serialized across
    threads).
    """
    if sep is not None and not isinstance(sep, str):
        raise TypeError(f"sep must be None or a string, not {type(sep).__name__}")
    if end is not None and not isinstance(end, str):
        raise TypeError(f"end must be None or a string, not {type(end).__name__}")
    stream = sys.stdout if file is None else file
    if stream is None:
        return
    text = (" " if sep is None else sep).join(map(str, objects)) + ("\n" if end is None else end)
    with _stream_lock(stream):
        stream.write(text)
        if flush:
            stream.flush()


# -- open --------------------------------------------------------------------------

_MODE = re.compile(r"^(?=[^rwax]*[rwax][^rwax]*$)(?!.*(.).*\1)[rwaxbt+]+$")


def _flags(mode: str) -> tuple[int, bool]:
    """``os.open`` flags for ``mode`` (never ``O_TRUNC``) and whether it only reads."""
    if not isinstance(mode, str) or not _MODE.match(mode) or ("b" in mode and "t" in mode):
        raise ValueError(f"invalid mode {mode!r}; use one of 'r', 'w', 'a', 'x', with '+', 'b' or 't'")
    plus = "+" in mode
    if "r" in mode:
        flags = os.O_RDWR if plus else os.O_RDONLY
    else:
        flags = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT
        if "a" in mode:
            flags |= os.O_APPEND
        if "x" in mode:
            flags |= os.O_EXCL
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
    return flags, mode.replace("b", "").replace("t", "") == "r"


def open(  # noqa: A001 - mirrors the built-in on purpose
    file: str | os.PathLike[str],
    mode: str = "r",
    *,
    timeout: float | None = None,
    **open_kwargs: Any,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Open ``file`` while holding a lock on that file itself.

    A shared lock for read-only modes (``"r"``, ``"rb"``), an exclusive one
    otherwise. ``"w"`` truncates only once the lock is held, and data is
    flushed before the lock is released. Other keyword arguments go to
    :func:`open` (``encoding=``, ``newline=``, ...). Use it in a ``with``
    statement::

        with crosslock.open("counter.txt", "r+") as f:
            ...

    Raises:
        ValueError, TypeError: a bad mode, timeout or path (at once).
        Timeout: the lock was not acquired within ``timeout`` seconds.
        FileNotFoundError, PermissionError, IsADirectoryError: as :func:`open`.
    """
    wait = check_timeout(timeout)
    flags, read_only = _flags(mode)
    path = os.fspath(file)
    if not isinstance(path, str):
        raise TypeError(f"file must be a text path, got {file!r}")
    return _locked_open(path, mode, flags, read_only, wait, open_kwargs)


@contextlib.contextmanager
def _locked_open(
    path: str, mode: str, flags: int, read_only: bool, wait: float | None, open_kwargs: dict[str, Any]
) -> Iterator[IO[Any]]:
    from ._backends._file import FileBackend

    def opener(p: str) -> int:
        nonlocal flags
        fd = os.open(p, flags, 0o666)
        flags &= ~os.O_EXCL  # "x" created the file; a second descriptor opens it
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, f"{p!r} is a directory, not a file")
        return fd

    pid = os.getpid()
    backend = FileBackend(path, opener=opener, lock_file=False)
    try:
        if wait is None:
            deadline = None
        elif wait == 0:
            deadline = TRY
        else:
            deadline = time.monotonic() + wait
        if not backend.acquire(read_only, deadline):
            raise Timeout(f"timed out after {wait:g} s waiting to lock file {path!r}")
        try:
            if "w" in mode:
                os.ftruncate(backend.fd, 0)
            stream = builtins.open(  # noqa: SIM115 - closed below, before the release
                backend.fd, mode.replace("x", "w"), closefd=False, **open_kwargs
            )
            try:
                yield stream
            finally:
                stream.close()  # flushes while the lock is still held
        finally:
            if os.getpid() == pid:  # a forked child must not release its parent's lock
                backend.release()
    finally:
        backend.close()
