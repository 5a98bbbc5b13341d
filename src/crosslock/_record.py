"""The holder record kept at the start of a lock file.

A lock file is otherwise empty; crosslock writes a fixed-size record into it
only when someone asks for something that needs it: a fencing token
(``lock.token``), or holder details published by ``crosslock run``. Plain
holds never touch the file's contents, so they cost nothing extra.

The record is one line of JSON padded with spaces to :data:`SIZE` bytes, so
rewriting it never needs a truncate. A file with other contents is left
alone: crosslock never overwrites data it did not write.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
from typing import Any

from ._errors import LockError

MAGIC = b'{"crosslock":1,'
_TOKEN = re.compile(rb'"token":(\d+)')
SIZE = 512

_HOST = socket.gethostname()


if sys.platform != "win32":
    _pread = os.pread
    _pwrite = os.pwrite
else:

    def _pread(fd: int, size: int, offset: int) -> bytes:
        os.lseek(fd, offset, os.SEEK_SET)  # the descriptor's offset is ours alone
        return os.read(fd, size)

    def _pwrite(fd: int, data: bytes, offset: int) -> int:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def host() -> str:
    return _HOST


def read(fd: int, path: str) -> dict[str, Any]:
    """Return the record in ``fd`` (``{}`` for an empty file).

    Raises:
        LockError: the file holds data that crosslock did not write.
    """
    data = _pread(fd, SIZE, 0)
    if not data.strip(b"\0 \n"):
        return {}
    if not data.startswith(MAGIC):
        raise LockError(
            f"lock file {path!r} holds data crosslock did not write; crosslock keeps the "
            "fencing token in the lock file and will not overwrite it: use a dedicated lock file"
        )
    try:
        rec = json.loads(data.decode("utf-8", "replace").strip("\0 \n"))
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        # A torn or damaged record: keep at least the counter, so tokens never go back.
        found = _TOKEN.search(data)
        return {"token": int(found.group(1))} if found else {}
    return rec


def peek(path: str) -> dict[str, Any]:
    """Read the record of the lock file at ``path`` without locking (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        return read(fd, path)
    except (LockError, OSError):
        return {}
    finally:
        os.close(fd)


def write(fd: int, rec: dict[str, Any]) -> None:
    """Overwrite the record in ``fd`` with ``rec`` (one ``pwrite``).

    Text fields are shortened until the record fits, so it is always whole
    JSON with the token first.
    """
    limit = 200
    while True:
        fields = {k: (v[:limit] if isinstance(v, str) else v) for k, v in rec.items()}
        body = json.dumps({"crosslock": 1, **fields}, separators=(",", ":")).encode()
        if len(body) <= SIZE - 1:
            break
        limit //= 2
    _pwrite(fd, body.ljust(SIZE - 1) + b"\n", 0)


def next_token(fd: int, path: str, since: float) -> int:
    """Increment the token counter in ``fd`` and return the new value.

    The caller must hold the lock in a way that excludes other writers of
    the record (an exclusive hold, or the record lock for shared holds).

    Raises:
        PermissionError: the lock file cannot be written.
        LockError: the lock file holds data crosslock did not write.
    """
    try:
        token = int(read(fd, path).get("token", 0)) + 1
        write(fd, {"token": token, "pid": os.getpid(), "host": _HOST, "since": since})
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionError(
                exc.errno,
                f"cannot write the fencing token to lock file {path!r}: it is not writable "
                "by you; use a lock file you own",
            ) from None
        raise
    return token


def publish(fd: int, path: str, since: float, details: dict[str, Any]) -> None:
    """Record holder details (keeping the token); best effort, never raises."""
    try:
        rec = read(fd, path)
        rec.pop("crosslock", None)
        rec.update(pid=os.getpid(), host=_HOST, since=since, **details)
        write(fd, rec)
    except (OSError, LockError):
        pass  # holder details are a courtesy; the hold itself is fine
