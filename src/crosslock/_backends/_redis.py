"""The ``redis://`` backend: a lease in one Redis server, woken by the release.

A hold is a key set with ``SET key owner NX PX lease`` by a Lua script that,
in the same atomic step, increments the lock's fencing counter and records
the holder (pid, host, since, token). Release is a compare-and-delete script
(the key is deleted only if it still holds our owner id) that also publishes
on the lock's channel. A waiter subscribes to that channel *before* trying,
then waits for a message, for the holder's lease to run out (the acquire
script returns the remaining lease when it fails), or at most
:data:`SAFETY_RECHECK` seconds -- so a lost message can only delay a waiter,
never strand it, and nobody polls on a timer.

A background thread renews each hold every third of its lease. If a renewal
finds the key gone or taken, or the server cannot be reached until the lease
has run out, the hold is lost: ``held`` turns False and ``release()`` raises
:class:`~crosslock.LockLost`. A single Redis server is not a consensus
system; fencing tokens are what protect a resource from a holder that lost
its lease without knowing (see the docs).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from typing import Any

from .. import _record
from .._errors import BackendUnavailable, LockLost
from ._base import Backend
from ._server import ServerTarget, check_lease, check_name, redact, renewer

__all__ = ["RedisBackend", "RedisTarget", "status"]

#: Default lease (seconds): how long a dead holder keeps the lock.
DEFAULT_LEASE = 10.0
#: Longest a waiter waits without trying again, should a release message be lost.
SAFETY_RECHECK = 1.0
#: Longest a single command may take before the server counts as unreachable.
SOCKET_TIMEOUT = 5.0

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  -- A server restarted without persistence forgot the counter: never go
  -- below the server's clock in microseconds, which only grows.
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if token < floor then
    token = floor
    redis.call('SET', KEYS[2], token)
  end
  redis.call('SET', KEYS[3], ARGV[3] .. ',"token":' .. string.format('%d', token) .. '}', 'PX', ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[4])
  return token
end
return -1 - redis.call('PTTL', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', KEYS[3], 'released')
  return 1
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

_NAMES = "crosslock:names"


def _module() -> Any:
    try:
        import redis
    except ImportError:
        raise BackendUnavailable(
            "the redis backend needs the redis package: pip install 'crosslock[redis]'"
        ) from None
    return redis


def _keys(name: str) -> tuple[str, str, str, str]:
    base = f"crosslock:{{{name}}}"  # one hash slot for all keys of a lock
    return f"{base}:lock", f"{base}:fence", f"{base}:info", f"{base}:released"


def _connect(url: str) -> Any:
    redis = _module()
    try:
        # A server that stops answering must not hang anyone: commands give up
        # after SOCKET_TIMEOUT (waits for a release use their own timeouts).
        client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT, health_check_interval=30
        )
        client.ping()
    except redis.AuthenticationError as exc:
        raise BackendUnavailable(
            f"redis at {redact(url)} refused the credentials ({exc}); fix the user or password in the URL"
        ) from None
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"cannot reach redis at {redact(url)} ({exc}); start the server or fix the URL"
        ) from None
    return client


class RedisTarget(ServerTarget):
    backend_name = "redis"
    supports_shared = False

    def __init__(self, url: str, name: str, lease: float) -> None:
        super().__init__(url, name)
        self.lease = lease

    @classmethod
    def create(cls, name: object, spec: str, options: dict[str, Any]) -> RedisTarget:
        options = dict(options)
        lease = check_lease(options.pop("lease", None), DEFAULT_LEASE)
        if options:
            raise TypeError(f"the redis backend takes only lease=, not {', '.join(sorted(options))}")
        _module()
        return cls(spec, check_name(cls.backend_name, name), lease)

    def open(self) -> RedisBackend:
        return RedisBackend(self)


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, target: RedisTarget) -> None:
        self._redis = _module()
        self._target = target
        self._lease_ms = max(1, int(target.lease * 1000))
        self._client: Any = None
        self._ensure()
        self._lock_key, self._fence_key, self._info_key, self._channel = _keys(target.name)
        self._pubsub: Any = None
        self._owner: str | None = None
        self._token: int | None = None
        self._expires = 0.0
        self._lost = False

    def _ensure(self) -> Any:
        """The client, connected (again, in a forked child) with its scripts."""
        if self._client is None:
            client = _connect(self._target.url)
            self._acquire_script = client.register_script(_ACQUIRE)
            self._release_script = client.register_script(_RELEASE)
            self._renew_script = client.register_script(_RENEW)
            self._client = client
        return self._client

    def _unreachable(self, exc: BaseException, doing: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot reach redis at {redact(self._target.url)} to {doing} lock "
            f"{self._target.name!r} ({exc}); start the server or fix the URL"
        )

    # -- acquire ---------------------------------------------------------------

    def _try(self) -> float:
        """One atomic attempt: 0.0 when granted, else the holder's remaining lease (s)."""
        owner = uuid.uuid4().hex
        info = json.dumps({"pid": os.getpid(), "host": _record.host(), "since": time.time()})[:-1]
        started = time.monotonic()
        result = int(
            self._acquire_script(
                keys=[self._lock_key, self._fence_key, self._info_key, _NAMES],
                args=[owner, self._lease_ms, info, self._target.name],
            )
        )
        if result > 0:
            self._owner, self._token, self._lost = owner, result, False
            self._expires = started + self._target.lease
            renewer().add(id(self), started + self._target.lease / 3, self._renew_for(owner))
            return 0.0
        remaining_ms = -1 - result  # the holder's PTTL: -1 none, -2 gone
        return remaining_ms / 1000 if remaining_ms >= 0 else SAFETY_RECHECK

    def acquire(self, shared: bool, deadline: float | None) -> bool:
        redis = self._redis
        client = self._ensure()
        try:
            if not self._try():
                return True
            if deadline is not None and deadline <= time.monotonic():
                return False
            if self._pubsub is None:
                self._pubsub = client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self._channel)
            while self._pubsub.get_message(timeout=0.0) is not None:
                pass  # stale releases
            while True:
                lease_left = self._try()  # subscribed first: no release is missed
                if not lease_left:
                    return True
                wait = min(lease_left + 0.001, SAFETY_RECHECK)
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    wait = min(wait, remaining)
                self._pubsub.get_message(timeout=wait)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_pubsub()
            raise self._unreachable(exc, "acquire") from None

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):  # the connection is broken anyway
                self._pubsub.close()
            self._pubsub = None

    # -- lease -----------------------------------------------------------------

    def _renew_for(self, owner: str) -> Any:
        def renew() -> float | None:
            if self._owner != owner:
                return None  # released meanwhile
            started = time.monotonic()
            try:
                ok = self._renew_script(keys=[self._lock_key, self._info_key], args=[owner, self._lease_ms])
            except Exception:
                if self._owner == owner and time.monotonic() >= self._expires:
                    self._lost = True  # could not renew before the lease ran out
                    return None
                return time.monotonic() + min(0.5, self._target.lease / 10)  # try again soon
            if self._owner != owner:
                return None
            if not ok:
                self._lost = True  # the key is gone or someone else's: the hold is lost
                return None
            self._expires = started + self._target.lease
            return started + self._target.lease / 3

        return renew

    def lost(self) -> bool:
        return self._owner is not None and (self._lost or time.monotonic() >= self._expires)

    # -- release ---------------------------------------------------------------

    def release(self) -> None:
        owner, lost = self._owner, self.lost()
        self._owner, self._token = None, None
        renewer().remove(id(self))
        try:
            released = self._release_script(
                keys=[self._lock_key, self._info_key, self._channel], args=[owner]
            )
        except (self._redis.RedisError, OSError) as exc:
            if lost:
                raise self._lost_error() from None
            raise BackendUnavailable(
                f"cannot reach redis at {redact(self._target.url)} to release lock "
                f"{self._target.name!r} ({exc}); it frees itself when its lease of "
                f"{self._target.lease:g} s runs out"
            ) from None
        if lost or not released:
            raise self._lost_error()

    def _lost_error(self) -> LockLost:
        return LockLost(
            f"lock {self._target.name!r} at {redact(self._target.url)} was lost before its release: "
            f"its lease of {self._target.lease:g} s could not be renewed in time (or the server "
            "lost the key), so others may have held it since"
        )

    # -- queries ---------------------------------------------------------------

    def locked(self) -> bool:
        try:
            return bool(self._ensure().exists(self._lock_key))
        except (self._redis.RedisError, OSError) as exc:
            raise self._unreachable(exc, "query") from None

    def token(self, shared: bool, since: float) -> int:
        assert self._token is not None
        return self._token

    def publish(self, since: float, details: dict[str, Any]) -> None:
        try:
            raw = self._ensure().get(self._info_key)
            info = json.loads(raw) if raw else {}
            info.update(details)
            self._client.set(self._info_key, json.dumps(info), keepttl=True, xx=True)
        except (self._redis.RedisError, OSError, ValueError):
            pass  # holder details are a courtesy

    # -- lifetime --------------------------------------------------------------

    def forget(self) -> None:
        # In a forked child the inherited client and pub/sub objects may hold
        # locks taken by parent threads at the fork, and their finalizers would
        # wait on them: keep them alive, untouched, and connect afresh.
        _orphans.extend(x for x in (self._pubsub, self._client) if x is not None)
        self._pubsub = None
        self._client = None
        self._owner, self._token, self._lost = None, None, False

    def close(self) -> None:
        self._drop_pubsub()
        renewer().remove(id(self))
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


#: Objects inherited across fork, kept so that no finalizer runs on them.
_orphans: list[Any] = []


def status(url: str, names: list[str]) -> list[dict[str, Any]]:
    """Rows for ``crosslock status --backend redis://...``."""
    client = _connect(url)
    if not names:
        names = sorted(n.decode() if isinstance(n, bytes) else n for n in client.smembers(_NAMES))
    rows = []
    for name in names:
        lock_key, _fence, info_key, _channel = _keys(name)
        raw = client.get(info_key) if client.exists(lock_key) else None
        info = json.loads(raw) if raw else {}
        rows.append(
            {
                "name": name,
                "path": None,
                "state": "held" if raw is not None or client.exists(lock_key) else "free",
                "pids": [info["pid"]] if "pid" in info else [],
                "host": info.get("host"),
                "since": info.get("since"),
                "token": info.get("token"),
                "command": info.get("command"),
            }
        )
    client.close()
    return rows
