"""An example resource that checks fencing tokens: what a lock's ``token`` is for.

A holder sends its lock's token along with each write; the store remembers the
highest token it has seen and rejects a write that carries a smaller one. A
holder that was paused (or whose lease ran out) while someone else took the
lock and wrote cannot then overwrite the newer data: its late write fails with
:class:`StaleToken`.

``FencedStore()`` keeps its state in memory (one process); ``FencedStore(path)``
keeps it in a small JSON file, so that several processes share one store. Each
write is atomic: the check and the update happen under the store's own lock
(a thread lock, and for a file also ``flock`` on the file itself).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from typing import Any

__all__ = ["FencedStore", "StaleToken"]


class StaleToken(Exception):
    """A write carried a fencing token smaller than one the store has seen."""

    def __init__(self, token: int, highest: int) -> None:
        super().__init__(
            f"stale fencing token {token}: the store has already seen token {highest}; "
            "the writer's lock hold was lost (it was paused, or its lease ran out)"
        )
        self.token = token
        self.highest = highest


class FencedStore:
    """One value guarded by fencing tokens, in memory or in a file at ``path``."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = None if path is None else os.fspath(path)
        self._mutex = threading.Lock()
        self._state: dict[str, Any] = {"highest": None, "data": None}

    # -- state ------------------------------------------------------------------

    def _load(self, fd: int) -> dict[str, Any]:
        raw = b""
        while chunk := os.pread(fd, 65536, len(raw)):
            raw += chunk
        if not raw:
            return {"highest": None, "data": None}
        state: dict[str, Any] = json.loads(raw)
        return state

    def _store(self, fd: int, state: dict[str, Any]) -> None:
        raw = json.dumps(state).encode()
        os.ftruncate(fd, 0)
        written = 0
        while written < len(raw):
            written += os.pwrite(fd, raw[written:], written)

    def _update(self, token: int | None, data: str | None) -> dict[str, Any]:
        """Return the state; with a ``token``, check it and store ``data`` first."""
        with self._mutex:
            if self._path is None:
                if token is not None:
                    self._state = self._checked(self._state, token, data)
                return dict(self._state)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = self._load(fd)
                if token is not None:
                    state = self._checked(state, token, data)
                    self._store(fd, state)
                return state
            finally:
                os.close(fd)

    @staticmethod
    def _checked(state: dict[str, Any], token: int, data: str | None) -> dict[str, Any]:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"a fencing token is an int, got {token!r}")
        highest = state["highest"]
        if highest is not None and token < highest:
            raise StaleToken(token, highest)
        return {"highest": token, "data": data}

    # -- the resource's API ------------------------------------------------------------

    def write(self, token: int, data: str) -> None:
        """Store ``data`` written under fencing token ``token``.

        Raises:
            StaleToken: ``token`` is smaller than the highest token seen so far
                (the same token again is fine: one hold may write many times).
        """
        self._update(token, data)

    def read(self) -> str | None:
        """The data of the last accepted write (``None`` before the first)."""
        data: str | None = self._update(None, None)["data"]
        return data

    @property
    def highest(self) -> int | None:
        """The highest token accepted so far (``None`` before the first write)."""
        highest: int | None = self._update(None, None)["highest"]
        return highest
