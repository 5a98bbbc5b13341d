"""The public :class:`Lock`: one lock, whatever the backend underneath."""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast, final, overload

from . import _core, _registry
from ._backends._base import Target
from ._errors import Timeout

if TYPE_CHECKING:
    import asyncio

    from ._backends._file import FileCore

try:  # the file backend's paired system calls (Linux, when built)
    from ._speedups import LOCK_EX as _EX
    from ._speedups import LOCK_NB as _NB
    from ._speedups import drop as _drop
    from ._speedups import grab as _grab

    _TRY_EX = _EX | _NB
except ImportError:  # no file core is fast then (FileCore.fast)
    pass

__all__ = ["Lock"]

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Final[Any] = object()
_get_ident = threading.get_ident
_monotonic = time.monotonic
_time = time.time
_held = _core._held


def check_timeout(timeout: object, *, minus_one: bool = False) -> float | None:
    """Validate a timeout: ``None`` or seconds ``>= 0`` (``-1`` means None when
    allowed; so does a timeout too long for a thread to wait, infinity included).

    Raises:
        TypeError: not a number (a bool or str, say).
        ValueError: negative or NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
    value = float(timeout)
    if math.isnan(value):
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
    if value < 0:
        if minus_one and value == -1:
            return None
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
    # Beyond what a thread can wait for (about 292 years): no timeout at all.
    return None if value >= threading.TIMEOUT_MAX else value


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout == 0:
        return _core.TRY
    return _monotonic() + timeout


def _current_task() -> object | None:
    asyncio = sys.modules.get("asyncio")  # not imported: no task can be running
    if asyncio is None:
        return None
    try:
        task: object | None = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None
    return task


def run_under(func: Callable[P, Any], get_lock: Callable[[], Lock]) -> Callable[P, Any]:
    """Wrap ``func`` (sync or async) so that each call runs under ``get_lock()``:
    ``with`` for a plain function, ``async with`` for a coroutine function."""
    import inspect  # only decorating needs it: keeps `import crosslock` light

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            async with get_lock():
                return await func(*args, **kwargs)

        return run_async

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> Any:
        with get_lock():
            return func(*args, **kwargs)

    return run


@final
class Lock:
    """A lock that serializes threads and processes, over any backend.

    ``Lock("jobs")`` is a lock file ``jobs.lock`` in the default lock
    directory; ``Lock("/srv/app/jobs.lock")`` is that exact file. Every Lock
    object of one process on one target behaves as one lock; each holding
    thread (or asyncio task, inside ``async with``) may take it again and
    must release it as often.

    Use it as a context manager (``with lock:``), an async context manager
    (``async with lock:``), a decorator (``@lock``), or call
    :meth:`acquire` and :meth:`release` as with :class:`threading.Lock`.

    Args:
        name: a bare name (no path separator), a path, or ``None`` (only for
            the ``multiprocessing`` backend).
        backend: ``"file"`` (default, or ``$CROSSLOCK_BACKEND``),
            ``"filelock"``, ``"multiprocessing"``, or a server URL.
        timeout: the default wait of :meth:`acquire` and ``with``: ``None``
            waits forever, ``0`` tries once, a positive number is seconds.
        shared: take shared (read) holds: many at once, none during an
            exclusive hold.
        **options: backend options (``lease=`` for server backends).

    Raises:
        ValueError: unknown backend, negative or NaN timeout, a backend that
            cannot share asked for ``shared=True``.
        TypeError: a timeout or name of the wrong type, an unknown option.
        FileNotFoundError, IsADirectoryError, PermissionError, LockError: a
            lock path that cannot be used (naming the path).
        BackendUnavailable: the backend's package or server is missing.
    """

    __slots__ = ("__weakref__", "_core", "_fast", "_shared", "_timeout")

    def __init__(
        self,
        name: str | Any = None,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        shared: bool = False,
        **options: Any,
    ) -> None:
        self._timeout = check_timeout(timeout)
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be True or False, got {shared!r}")
        spec = _registry.backend_spec(backend)
        cls = _registry.target_class(spec)
        if shared and not cls.supports_shared:
            raise ValueError(
                f"the {cls.backend_name} backend cannot take shared locks; "
                "use shared=False, or a backend that can share: file or postgresql://"
            )
        self._shared = shared
        self._set_core(_core.get_core(cls.create(name, spec, options)))

    @classmethod
    def _from_target(cls, target: Target, timeout: float | None, shared: bool) -> Lock:
        self = cls.__new__(cls)
        self._timeout = timeout
        self._shared = shared
        self._set_core(_core.get_core(target))
        return self

    def _set_core(self, core: _core.AnyCore) -> None:
        self._core = core
        #: the core whose common path acquire() and release() take themselves
        fast = getattr(core, "fast", False) and not self._shared
        self._fast = cast("FileCore", core) if fast else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Lock._from_target, (self._core.target, self._timeout, self._shared))

    def __repr__(self) -> str:
        target = self._core.target
        state = "held" if self.held else "not held"
        extra = ", shared=True" if self._shared else ""
        return f"<crosslock.Lock {target.display!r} backend={target.backend_name!r}{extra} {state}>"

    # -- properties -----------------------------------------------------------

    @property
    def name(self) -> str:
        """The lock's target: the lock file's path, or the backend's name for it."""
        return self._core.target.display

    @property
    def backend(self) -> str:
        """The backend's name (``"file"``, ``"multiprocessing"``, ...)."""
        return self._core.target.backend_name

    @property
    def timeout(self) -> float | None:
        """The default wait of :meth:`acquire` and ``with`` (``None``: forever)."""
        return self._timeout

    @property
    def shared(self) -> bool:
        """Whether this Lock takes shared (read) holds."""
        return self._shared

    @property
    def held(self) -> bool:
        """Whether the calling thread (or task, inside ``async with``) holds the lock.

        Turns ``False`` as soon as a lost hold is known (the lock file was
        replaced, a lease ran out).
        """
        core = self._core
        task = _current_task()
        if task is not None and core.held_by(task):
            return True
        return core.held_by(_get_ident())

    @property
    def token(self) -> int | None:
        """The fencing token of the current hold, or ``None`` while not held.

        Larger than the token of every earlier hold of this lock, by any
        process; the same value for as long as this hold lasts. Computed on
        first read, so holds that never read it pay nothing for it.
        """
        core = self._core
        task = _current_task()
        if task is not None:
            token = core.token(task)
            if token is not None:
                return token
        return core.token(_get_ident())

    # -- threading's API --------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = _UNSET) -> bool:
        """Acquire the lock; return ``True`` once held, ``False`` when it was not.

        Args:
            blocking: ``False`` tries once and returns at once.
            timeout: seconds to wait; defaults to the lock's ``timeout``.
                As in :mod:`threading`, ``-1`` means no timeout.

        Raises:
            ValueError: a negative (other than ``-1``) or NaN timeout, or a
                timeout given with ``blocking=False``.
            AbandonedLockError: the holder died and the backend cannot free
                the lock (``multiprocessing``).
        """
        core = self._fast
        if core is not None and blocking and timeout is _UNSET:
            # The file backend's common call, in one frame: the process's gate,
            # then flock and the check that the file is still at its path in
            # one call (FileCore tells what each field means). Without a
            # timeout the first attempt is the blocking call itself; with one,
            # a try, and the wait goes on in the core.
            me = _get_ident()
            if core._owner == me:
                core._depth += 1
                return True
            wait = self._timeout
            deadline = None if wait is None else _deadline(wait)
            if not core._gate.acquire(False):
                return core._acquire(me, False, deadline)
            backend = core._backend
            try:
                core._busy = True
                try:
                    state = _grab(backend, _EX if wait is None else _TRY_EX)
                finally:
                    core._busy = False
                if state:  # held elsewhere, unchecked, no descriptor: the full path
                    return core.resume(me, state, deadline)
                core._owner = me
                core._depth = 1
                core._since = _time()
                _held.add(core)
                return True
            except BaseException:
                core._give_back(me)
                raise
        if timeout is _UNSET:
            if blocking:  # the common call, kept short
                wait = self._timeout
                return self._core.acquire(
                    _get_ident(), self._shared, None if wait is None else _deadline(wait)
                )
            wait = self._timeout
        else:
            wait = check_timeout(timeout, minus_one=True)
        if not blocking:
            if timeout is not _UNSET and timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            wait = 0.0
        return self._core.acquire(_get_ident(), self._shared, _deadline(wait))

    def release(self) -> None:
        """Release one hold of the calling thread.

        Raises:
            NotHeldError: the calling thread does not hold the lock.
            LockLost: the hold had been lost (the lock is released all the same).
        """
        core = self._fast
        if core is not None and core._owner == _get_ident():
            depth = core._depth - 1
            if depth:
                core._depth = depth
                return
            # The file backend's common call, in one frame (see acquire).
            backend = core._backend
            try:
                if not _drop(backend):
                    backend.release()  # checks the path first; raises LockLost
            except BaseException:
                backend.cancel()  # interrupted before the unlock, maybe: unlock
                raise
            finally:
                core._owner = None
                core._token = None
                _held.discard(core)
                core._gate.release()
            return
        self._core.release(_get_ident())

    def locked(self) -> bool:
        """Whether any thread of any process holds the lock now."""
        return self._core.locked()

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise self._timeout_error()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _timeout_error(self) -> Timeout:
        return Timeout(
            f"timed out after {self._timeout:g} s waiting for lock {self.name!r}"
            if self._timeout
            else f"lock {self.name!r} is held elsewhere (timeout=0)"
        )

    # -- asyncio ---------------------------------------------------------------

    async def __aenter__(self) -> Lock:
        await self._acquire_async(self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = _current_task()
        self._core.release(task if task is not None else _get_ident())

    async def _acquire_async(self, timeout: float | None) -> None:
        import asyncio

        task = asyncio.current_task()
        owner: object = task if task is not None else _get_ident()
        core, shared = self._core, self._shared
        deadline = _deadline(timeout)
        if core.acquire(owner, shared, _core.TRY):
            return
        if deadline == _core.TRY:
            raise self._timeout_error()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def deliver(granted: bool | None, error: BaseException | None) -> None:
            if future.cancelled():
                if granted:  # the task gave up meanwhile: hand the hold back
                    core.release(owner)
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(bool(granted))

        def wait() -> None:
            granted: bool | None = None
            error: BaseException | None = None
            try:
                granted = core.acquire(owner, shared, deadline)
            except BaseException as exc:  # delivered to the awaiting task
                error = exc
            try:
                loop.call_soon_threadsafe(deliver, granted, error)
            except RuntimeError:  # the loop is closed: nobody will take it
                if granted:
                    core.release(owner)

        threading.Thread(target=wait, name="crosslock-async-wait", daemon=True).start()
        if not await future:
            raise self._timeout_error()

    # -- decorator -------------------------------------------------------------

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``func`` (sync or async) so that each call runs under the lock.

        A call raises :class:`Timeout` when the lock's timeout passes.
        """
        return run_under(func, lambda: self)

    # -- extras used by the command line -----------------------------------------

    def _publish(self, **details: Any) -> None:
        """Record holder details (pid, host, since, ...) for ``crosslock status``."""
        self._core.publish(details)
