"""crosslock: one lock for threads and processes, whatever the lock underneath.

    import crosslock

    with crosslock.Lock("reports"):
        append_row("reports.csv", row)

``python -m crosslock --help`` shows the command line.
"""

from __future__ import annotations

from ._errors import (
    AbandonedLockError,
    BackendUnavailable,
    LockError,
    LockLost,
    NotHeldError,
    Timeout,
)
from ._lock import Lock
from ._output import open, print, synchronized  # noqa: A004 - crosslock.open/print on purpose

__all__ = [
    "AbandonedLockError",
    "BackendUnavailable",
    "Lock",
    "LockError",
    "LockLost",
    "NotHeldError",
    "Timeout",
    "open",
    "print",
    "synchronized",
]

__version__ = "0.1.0"
