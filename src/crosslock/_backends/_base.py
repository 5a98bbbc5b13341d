"""The contract every backend fulfils.

A backend is the per-process handle on one lock target (a file, a
semaphore, a server key). It knows nothing about threads, reentrancy or
timeouts as users see them: :mod:`crosslock._core` calls it only when the
whole process goes from holding nothing to holding the lock, or back, and
never from two threads at once for acquire/release.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable
from typing import Any, ClassVar


class Backend(abc.ABC):
    """One process's handle on one lock target."""

    #: The name shown in errors and ``status``.
    kind: ClassVar[str] = "?"

    @abc.abstractmethod
    def acquire(self, shared: bool, deadline: float | None) -> bool:
        """Take the lock for this process.

        ``deadline`` is a :func:`time.monotonic` instant; ``None`` waits
        forever and a deadline already past tries once. Returns whether the
        lock is now held. Must never leave the lock held when it returns
        ``False`` or raises, and must wake as soon as the lock frees.
        """

    def wait(self, shared: bool, deadline: float | None) -> bool:
        """Like :meth:`acquire`, called right after a try failed: a backend may
        go straight to waiting."""
        return self.acquire(shared, deadline)

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up. Raises :class:`~crosslock.LockLost` (after
        releasing whatever is left) when the hold was lost meanwhile."""

    def cancel(self) -> None:  # noqa: B027
        """An acquire was interrupted (Ctrl-C, say) at an unknown point: make
        sure this process holds nothing and no pending wait turns into a hold."""

    def lost(self) -> bool:
        """Whether the current hold is known to be lost (cheap check)."""
        return False

    @abc.abstractmethod
    def locked(self) -> bool:
        """Whether another process holds the lock (this one does not)."""

    @abc.abstractmethod
    def token(self, shared: bool, since: float) -> int:
        """A fencing token for the current hold (called at most once a hold)."""

    def publish(self, since: float, details: dict[str, Any]) -> None:  # noqa: B027
        """Record holder details for ``crosslock status`` (optional)."""

    def forget(self) -> None:  # noqa: B027
        """In a forked child: drop inherited resources without releasing the
        parent's hold."""

    def close(self) -> None:  # noqa: B027
        """Free resources; called when no Lock object refers to the target."""


class Target(abc.ABC):
    """A picklable description of what a Lock locks; builds its backend."""

    backend_name: ClassVar[str]
    #: Whether ``shared=True`` is supported.
    supports_shared: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def create(cls, name: object, spec: str, options: dict[str, Any]) -> Target:
        """Build the target for ``Lock(name, backend=spec, **options)``.

        Raises a clear error for a bad name or an unknown option.
        """

    @property
    @abc.abstractmethod
    def key(self) -> Hashable:
        """Equal for every Lock of one process that must behave as one lock."""

    @abc.abstractmethod
    def open(self) -> Backend:
        """Build this process's backend for the target (validates at once)."""

    @property
    def display(self) -> str:
        return str(self.key)

    def new_core(self) -> Any:
        """This process's core for the target, when the backend brings its own
        (one whose lock also excludes the threads of a process can do with
        less); ``None``: the generic :class:`crosslock._core.Core`."""
        return None


def no_options(backend: str, options: dict[str, Any]) -> None:
    """Reject options a backend does not take."""
    if options:
        names = ", ".join(sorted(options))
        raise TypeError(f"the {backend} backend takes no option {names}; remove it")
