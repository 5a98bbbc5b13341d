"""Deadlines for a blocking kernel call in the main thread (POSIX).

A thread blocked in ``flock`` is woken by the release in the kernel; a
deadline must end that call too, without a poll and without a second thread
in the way of the hand-off. In the main thread that is possible: a timer
thread sends the main thread a signal when the deadline passes, the kernel
call fails with EINTR, and the signal's handler raises an exception out of
it (see :func:`block`). Other threads cannot be reached that way (Python
retries their interrupted calls and runs handlers only in the main thread),
so they wait in a helper thread instead (see ``_file``).

The signal is ``SIGURG``, whose default action is to ignore it. Its handler
is installed on the first timed wait in the main thread, only when nobody
handles ``SIGURG`` already, and stays installed: outside a wait it does
nothing (installing and restoring it around every wait would cost more
than the hand-off itself). A program that installs its own ``SIGURG``
handler simply makes later timed waits use the helper thread.

A signal can land just before the kernel call starts, when it cannot
interrupt it; so until the waiter ends its wait, the timer sends it again
(after 1 ms, then ever more rarely, at least every 100 ms). That only
happens after the deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final, TypeVar

from . import _watch

__all__ = ["block"]

T = TypeVar("T")

try:  # the C functions: signal's wrappers turn numbers into enums, slowly
    import _signal as _raw  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - not CPython
    _raw = signal

_SIGNAL = int(signal.SIGURG)


def _blocked_py(signum: int) -> bool:
    return signum in _raw.pthread_sigmask(signal.SIG_BLOCK, ())


#: whether the calling thread blocks a signal (the C module's check is one system call)
_blocked: Callable[[int], bool] = _watch.speedups.blocked if _watch.speedups is not None else _blocked_py
_monotonic = time.monotonic
_get_ident = threading.get_ident
#: the main thread (after fork(), the thread that forked)
_main = threading.main_thread().ident
_RESEND_FIRST_S = 0.001
_RESEND_MAX_S = 0.1
#: Sends of an alarm whose wait is not in its kernel call (not yet, or no
#: more: a Ctrl-C that landed in its set-up or tidy-up leaves it armed): a
#: wait gets there within microseconds, so after these the timer stops.
_MAX_SENDS = 20


class _Expired(BaseException):
    """The deadline of the main thread's current wait passed (never escapes :func:`block`)."""


class Alarm:
    """The deadline of one wait of the main thread.

    The waiter writes only ``done``, the timer only ``fired`` and its resend
    schedule: neither needs a lock to tell the other.
    """

    __slots__ = ("deadline", "done", "fired", "next", "resend", "sends")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = False  # the wait is over
        self.fired = False  # the timer sent the signal
        self.next = deadline  # when the timer sends it (again)
        self.resend = _RESEND_FIRST_S
        self.sends = 0


#: The alarm of the main thread's latest wait: the main thread waits once at a
#: time, so one slot is all the timer watches.
armed: Alarm | None = None
#: The alarm of the wait the main thread is in (set only around the kernel
#: call, read by the handler, which runs in the main thread too).
current: Alarm | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    alarm = current
    if alarm is not None and alarm.fired:
        raise _Expired


class _Timer:
    """A thread that sends the main thread the signal when the armed deadline passes.

    Arming costs the waiter no lock: it writes the slot, then reads when the
    timer will look next, and wakes it only if that is after the new deadline
    (the timer writes that time, then reads the slot again, so one of the two
    sees the other's write). Deadlines of back-to-back waits rarely come
    sooner than the one the timer sleeps towards, so it mostly sleeps on.
    """

    def __init__(self, target: int) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._target = target
        #: when the timer looks at the slot next (inf: when woken)
        self.wake_at = float("inf")
        thread = threading.Thread(target=self._run, name="crosslock-timer", daemon=True)
        thread.start()

    def poke(self) -> None:
        # The C lock's own `with`, not the condition's (Python code: a Ctrl-C
        # landing in it could leave the lock held and the timer stuck).
        with self._lock:
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                alarm = armed
                now = _monotonic()
                wake = float("inf")
                if alarm is not None and not alarm.done:
                    if alarm.next <= now:
                        self._send(alarm, now)
                    if not alarm.done and (current is alarm or alarm.sends < _MAX_SENDS):
                        wake = alarm.next
                self.wake_at = wake
                if armed is not alarm:
                    continue  # armed meanwhile: look again
                self._cond.wait(min(wake - now, threading.TIMEOUT_MAX) if wake != float("inf") else None)

    def _send(self, alarm: Alarm, now: float) -> None:
        alarm.fired = True
        with contextlib.suppress(OSError):
            signal.pthread_kill(self._target, _SIGNAL)
        # Sent again until the wait ends (see the module's text).
        alarm.sends += 1
        alarm.next = now + alarm.resend
        alarm.resend = min(alarm.resend * 2, _RESEND_MAX_S)


_timer: _Timer | None = None


#: What :func:`block` returns when the deadline ended the call.
EXPIRED: Final = -1


def block(
    deadline: float, call: Callable[[T, int], int], target: T, op: int, undo: Callable[[T], object]
) -> int | None:
    """Make the blocking kernel call ``call(target, op)`` in the main thread,
    ended at ``deadline`` if it has not returned by then.

    Returns what the call returned (a number >= 0), or :data:`EXPIRED`: the
    deadline ended it, and ``undo(target)`` took back what a call that
    returned just then got; or ``None`` without calling: the calling thread
    cannot be interrupted this way (it is not the main thread, or the program
    handles or blocks ``SIGURG``).
    """
    global current
    alarm = Alarm(deadline)
    try:
        if not _arm(alarm):
            return None
        try:
            current = alarm  # from here, the handler may raise _Expired
            result = call(target, op)
        finally:
            current = None
    except _Expired:
        # Raised out of the call, or (a deadline met by a grant) just after it.
        undo(target)
        return EXPIRED
    finally:
        alarm.done = True
    return result


def _arm(alarm: Alarm) -> bool:
    """Have the timer end the main thread's wait at ``alarm``'s deadline
    (``False``: not possible, see :func:`block`)."""
    global _timer, armed
    if _get_ident() != _main:
        return False
    handler = _raw.getsignal(_SIGNAL)
    if handler is not _handler:
        if handler != signal.SIG_DFL:
            return False
        try:
            signal.signal(_SIGNAL, _handler)
        except (ValueError, OSError):  # a subinterpreter, say
            return False
    if _blocked(_SIGNAL):
        return False
    armed = alarm
    timer = _timer
    if timer is None:
        _timer = _Timer(_main or 0)  # its first look finds the alarm
    elif alarm.deadline < timer.wake_at:
        timer.poke()
    return True


def _after_fork_in_child() -> None:
    global _timer, current, armed, _main
    _timer = None  # its thread does not exist here
    current = armed = None
    _main = _get_ident()


os.register_at_fork(after_in_child=_after_fork_in_child)
