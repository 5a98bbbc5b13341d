"""What the server backends share: URL and option checks, lease renewal.

A lease-based hold (Redis) must be renewed while its holder lives. One daemon
thread per process renews every such hold a third of a lease before it runs
out; a renewal that fails, or finds the hold gone, marks the hold lost.
"""

from __future__ import annotations

import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Hashable
from typing import Any

from ._base import Target

__all__ = ["Renewer", "ServerTarget", "check_lease", "check_name", "redact", "renewer"]


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class ServerTarget(Target):
    """A named lock on a server at a URL."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name

    @property
    def key(self) -> Hashable:
        return (self.backend_name, self.url, self.name)

    @property
    def display(self) -> str:
        return f"{self.name} at {redact(self.url)}"


def check_name(backend: str, name: object) -> str:
    if not isinstance(name, str) or not name or "\0" in name:
        raise TypeError(f"the {backend} backend needs a lock name (a non-empty str), got {name!r}")
    return name


def check_lease(lease: object, default: float) -> float:
    if lease is None:
        return default
    if isinstance(lease, bool) or not isinstance(lease, (int, float)):
        raise TypeError(f"lease must be a number of seconds, got {lease!r}")
    if math.isnan(lease) or lease <= 0 or math.isinf(lease):
        raise ValueError(f"lease must be a finite number of seconds > 0, got {lease!r}")
    return float(lease)


class Renewer:
    """A daemon thread that calls each registered hold's renew function on time."""

    def __init__(self) -> None:
        # Callers take the plain lock (`with self._lock`), never the condition:
        # Condition.__enter__ is Python code, and a Ctrl-C landing in it just
        # after the lock was taken would leave the lock held for good.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: key -> [due (monotonic), renew function]; renew returns the next due or None
        self._items: dict[int, list[Any]] = {}
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def add(self, key: int, due: float, renew: Callable[[], float | None]) -> None:
        with self._lock:
            self._items[key] = [due, renew]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="crosslock-renew", daemon=True)
                self._thread.start()
            if due < self._wake_at:
                self._cond.notify()

    def remove(self, key: int) -> None:
        with self._lock:
            self._items.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = min((item[0] for item in self._items.values()), default=math.inf)
                if due > now:
                    self._wake_at = due
                    self._cond.wait(None if due == math.inf else due - now)
                    self._wake_at = math.inf
                    continue
                batch = [(key, item[1]) for key, item in self._items.items() if item[0] <= now]
            for key, renew in batch:
                try:
                    nxt = renew()
                except Exception:  # a renew function reports its own failures
                    nxt = None
                with self._lock:
                    item = self._items.get(key)
                    if item is not None and item[1] is renew:
                        if nxt is None:
                            del self._items[key]
                        else:
                            item[0] = nxt


_renewer: Renewer | None = None
_renewer_lock = threading.Lock()


def renewer() -> Renewer:
    global _renewer
    with _renewer_lock:
        if _renewer is None:
            _renewer = Renewer()
        return _renewer


def _after_fork_in_child() -> None:
    global _renewer, _renewer_lock
    _renewer, _renewer_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
