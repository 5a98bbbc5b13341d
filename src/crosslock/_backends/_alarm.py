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
import heapq
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["block"]

try:  # the C functions: signal's wrappers turn numbers into enums, slowly
    import _signal as _raw  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - not CPython
    _raw = signal

_SIGNAL = int(signal.SIGURG)
_monotonic = time.monotonic
_ARMED, _FIRED, _DONE = 0, 1, 2
_RESEND_FIRST_S = 0.001
_RESEND_MAX_S = 0.1
#: Sends of an alarm whose wait is not in its kernel call (not yet, or no
#: more: a Ctrl-C that landed in its set-up or tidy-up leaves it armed): a
#: wait gets there within microseconds, so after these the timer stops.
_MAX_SENDS = 20


class _Expired(BaseException):
    """The deadline of the main thread's current wait passed (never escapes :func:`block`)."""


class Alarm:
    """One deadline of the main thread's wait."""

    __slots__ = ("deadline", "queued", "resend", "sends", "state")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.state = _ARMED
        self.queued = False  # whether the timer's heap holds an entry for it
        self.resend = _RESEND_FIRST_S
        self.sends = 0


#: The alarm of the wait the main thread is in (set only around the kernel
#: call, read by the handler, which runs in the main thread too).
current: Alarm | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    alarm = current
    if alarm is not None and alarm.state == _FIRED:
        raise _Expired


class _Timer:
    """A thread that sends the main thread the signal at each armed deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = 0
        self._dead = 0  # entries of ended waits still in the heap
        self._target = threading.main_thread().ident or 0
        self._thread: threading.Thread | None = None

    def arm(self, alarm: Alarm) -> None:
        deadline = alarm.deadline
        lock = self._lock
        lock.acquire()
        try:
            heap = self._heap
            self._seq += 1
            earliest = not heap or deadline < heap[0][0]
            heapq.heappush(heap, (deadline, self._seq, alarm))
            alarm.queued = True
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="crosslock-timer", daemon=True)
                thread.start()
                self._thread = thread  # (not before: a start cut short is tried again)
            elif earliest:
                self._cond.notify()
        finally:
            lock.release()

    def disarm(self, alarm: Alarm) -> None:
        lock = self._lock
        lock.acquire()
        try:
            if alarm.state == _DONE:
                return
            alarm.state = _DONE
            if alarm.queued:
                self._dead += 1
            heap = self._heap
            if self._dead > 64 and self._dead * 2 > len(heap):
                # Ended waits pile up when deadlines are far: sweep them out.
                for entry in heap:
                    if entry[2].state == _DONE:
                        entry[2].queued = False
                heap[:] = [entry for entry in heap if entry[2].state != _DONE]
                heapq.heapify(heap)
                self._dead = 0
        finally:
            lock.release()

    def _run(self) -> None:
        with self._cond:
            heap = self._heap
            while True:
                now = _monotonic()
                while heap and heap[0][0] <= now:
                    alarm = heapq.heappop(heap)[2]
                    alarm.queued = False
                    if alarm.state == _DONE:
                        self._dead -= 1
                        continue
                    alarm.state = _FIRED
                    with contextlib.suppress(OSError):
                        signal.pthread_kill(self._target, _SIGNAL)
                    alarm.sends += 1
                    if current is alarm or alarm.sends < _MAX_SENDS:
                        # Sent again until the wait ends (see the module's text).
                        self._seq += 1
                        heapq.heappush(heap, (now + alarm.resend, self._seq, alarm))
                        alarm.queued = True
                        alarm.resend = min(alarm.resend * 2, _RESEND_MAX_S)
                self._cond.wait(min(heap[0][0] - now, threading.TIMEOUT_MAX) if heap else None)


_timer: _Timer | None = None


def block(
    deadline: float, call: Callable[[int, int], object], fd: int, op: int, undo: Callable[[int], object]
) -> bool | None:
    """Make the blocking kernel call ``call(fd, op)`` in the main thread, ended
    at ``deadline`` if it has not returned by then.

    Returns whether the call returned (``False``: the deadline ended it, and
    ``undo(fd)`` took back what a call that returned just then got), or
    ``None`` without calling: the calling thread cannot be interrupted this
    way (it is not the main thread, or the program handles or blocks ``SIGURG``).
    """
    global current
    alarm = Alarm(deadline)
    try:
        if not _arm(alarm):
            return None
        try:
            current = alarm  # from here, the handler may raise _Expired
            call(fd, op)
        finally:
            current = None
    except _Expired:
        # Raised out of the call, or (a deadline met by a grant) just after it.
        undo(fd)
        return False
    finally:
        if _timer is not None:
            _timer.disarm(alarm)
    return True


def _arm(alarm: Alarm) -> bool:
    """Have the timer end the main thread's wait at ``alarm``'s deadline
    (``False``: not possible, see :func:`block`)."""
    global _timer
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = _raw.getsignal(_SIGNAL)
    if handler is not _handler:
        if handler != signal.SIG_DFL:
            return False
        try:
            signal.signal(_SIGNAL, _handler)
        except (ValueError, OSError):  # a subinterpreter, say
            return False
    if _SIGNAL in _raw.pthread_sigmask(signal.SIG_BLOCK, ()):
        return False
    if _timer is None:
        _timer = _Timer()
    _timer.arm(alarm)
    return True


def _after_fork_in_child() -> None:
    global _timer, current
    _timer = None  # its thread does not exist here
    current = None


os.register_at_fork(after_in_child=_after_fork_in_child)
