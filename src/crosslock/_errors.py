"""The exceptions crosslock raises.

Every error the library raises on purpose derives from :class:`LockError`, and
each also derives from the built-in exception a caller would naturally catch
(:class:`Timeout` is a :class:`TimeoutError`, :class:`NotHeldError` a
:class:`RuntimeError`), so code written for ``threading`` or ``filelock`` keeps
working.
"""

from __future__ import annotations

__all__ = [
    "AbandonedLockError",
    "BackendUnavailable",
    "LockError",
    "LockLost",
    "NotHeldError",
    "Timeout",
]


class LockError(Exception):
    """Base class of every error crosslock raises."""


class Timeout(LockError, TimeoutError):
    """The lock was not acquired before the timeout passed.

    Raised by ``with lock:``, ``async with lock:`` and functions decorated with
    a lock. ``acquire()`` returns ``False`` instead.
    """


class NotHeldError(LockError, RuntimeError):
    """``release()`` was called by a thread (or task) that does not hold the lock."""


class AbandonedLockError(LockError):
    """The holder died without releasing, and the backend cannot free the lock.

    Only the ``multiprocessing`` backend raises it: a semaphore has no owner
    the kernel could clean up after, so a waiter that finds the recorded
    holder dead raises this instead of waiting forever.
    """


class LockLost(LockError):
    """The hold ended without ``release()``: the lock file was removed or
    replaced by someone else, or a server lease could not be renewed.

    ``release()`` (and so the end of a ``with`` block) raises it; ``lock.held``
    turns ``False`` as soon as the loss is known.
    """


class BackendUnavailable(LockError):
    """A backend cannot be used here: its optional package is not installed,
    its server cannot be reached, or it does not exist on this platform.
    The message says what to install or start.
    """
