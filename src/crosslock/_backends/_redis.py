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

# Every script but _RENEW gets the same keys: KEYS[1] the lock (its value:
# the holder's owner id), KEYS[2] the fencing counter, KEYS[3] the holder's
# details, KEYS[4] the set of lock names, KEYS[5] the queue of waiting owner
# ids, KEYS[6] the channel, KEYS[7] the caller's own queue entry; and the
# same arguments: ARGV[1] the caller's owner id, ARGV[2] its lease (ms),
# ARGV[3] its details (JSON without the closing brace), ARGV[4] the lock's
# name, ARGV[5] how long a queue entry lives unrefreshed (ms; "0": do not
# queue), ARGV[6] the prefix of queue entries' keys.
_FUNCTIONS = """
local function grant(owner, lease, info)
  redis.call('SET', KEYS[1], owner, 'PX', lease)
  local token = redis.call('INCR', KEYS[2])
  -- A server restarted without persistence forgot the counter: never go
  -- below the server's clock in microseconds, which only grows.
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if token < floor then
    token = floor
    redis.call('SET', KEYS[2], string.format('%d', token))
  end
  redis.call('SET', KEYS[3], info .. ',"token":' .. string.format('%d', token) .. '}', 'PX', lease)
  return token
end

-- The caller gives the lock up: hand it to the first live waiter in the
-- queue (one whose entry still exists), or free it when nobody waits.
local function pass_on()
  while true do
    local nxt = redis.call('LPOP', KEYS[5])
    if not nxt then
      redis.call('DEL', KEYS[1], KEYS[3])
      redis.call('PUBLISH', KEYS[6], 'released')
      return
    end
    local entry = ARGV[6] .. nxt
    local waiter = redis.call('GET', entry)
    if waiter then
      redis.call('DEL', entry)
      local sep = string.find(waiter, '|', 1, true)
      local token = grant(nxt, string.sub(waiter, 1, sep - 1), string.sub(waiter, sep + 1))
      redis.call('PUBLISH', KEYS[6], nxt .. ' ' .. string.format('%d', token))
      return
    end
  end
end
"""

_ACQUIRE = (
    _FUNCTIONS
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- handed over to us while we were not listening: the lease starts anew now
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  local info = redis.call('GET', KEYS[3]) or ''
  return tonumber(string.match(info, '"token":(%d+)}$') or '0')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local token = grant(ARGV[1], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[4])
  if ARGV[5] ~= '0' then
    redis.call('LREM', KEYS[5], 0, ARGV[1])
    redis.call('DEL', KEYS[7])
  end
  return token
end
if ARGV[5] ~= '0' then
  -- queue up (once), and say we are alive for ARGV[5] ms more
  if redis.call('EXISTS', KEYS[7]) == 0 then
    redis.call('RPUSH', KEYS[5], ARGV[1])
  end
  redis.call('SET', KEYS[7], ARGV[2] .. '|' .. ARGV[3], 'PX', ARGV[5])
  redis.call('SADD', KEYS[4], ARGV[4])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[5]) + tonumber(ARGV[2]))
end
return -1 - redis.call('PTTL', KEYS[1])
"""
)

_RELEASE = (
    _FUNCTIONS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
pass_on()
return 1
"""
)

# A waiter gives up: leave the queue; if the lock was handed to it meanwhile,
# pass it on at once.
_WITHDRAW = (
    _FUNCTIONS
    + """
redis.call('LREM', KEYS[5], 0, ARGV[1])
redis.call('DEL', KEYS[7])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  pass_on()
  return 1
end
return 0
"""
)

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


class _Keys:
    """The keys of one lock (in one hash slot) and its channel."""

    def __init__(self, name: str) -> None:
        base = f"crosslock:{{{name}}}"  # one hash slot for all keys of a lock
        self.lock, self.fence, self.info = f"{base}:lock", f"{base}:fence", f"{base}:info"
        self.queue, self.channel = f"{base}:queue", f"{base}:released"
        #: a waiter's queue entry is this prefix + its owner id
        self.entry = f"{base}:waiter:"

    def for_scripts(self, owner: str) -> list[str]:
        return [self.lock, self.fence, self.info, _NAMES, self.queue, self.channel, self.entry + owner]


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
        # A waiter re-checks (and says it is alive) this often, so a lost
        # message only delays it and a hand-over it hears of is fresh.
        self._recheck = min(SAFETY_RECHECK, target.lease / 4)
        # How long a waiter's queue entry lives unrefreshed: the releases
        # after that skip a waiter that died.
        self._entry_ms = max(1, int((2 * self._recheck + 0.5) * 1000))
        self._client: Any = None
        self._ensure()
        self._keys = _Keys(target.name)
        self._pubsub: Any = None
        self._owner: str | None = None
        self._waiter: str | None = None  # our owner id while queued
        self._token: int | None = None
        self._expires = 0.0
        self._lost = False

    def _ensure(self) -> Any:
        """The client, connected (again, in a forked child) with its scripts."""
        if self._client is None:
            client = _connect(self._target.url)
            self._acquire_script = client.register_script(_ACQUIRE)
            self._release_script = client.register_script(_RELEASE)
            self._withdraw_script = client.register_script(_WITHDRAW)
            self._renew_script = client.register_script(_RENEW)
            self._client = client
        return self._client

    def _unreachable(self, exc: BaseException, doing: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot reach redis at {redact(self._target.url)} to {doing} lock "
            f"{self._target.name!r} ({exc}); start the server or fix the URL"
        )

    def _run(self, script: Any, owner: str, queue: bool = False) -> int:
        """Run one of the scripts for ``owner`` (see the key layout above)."""
        info = ""
        if script is self._acquire_script:
            info = json.dumps({"pid": os.getpid(), "host": _record.host(), "since": time.time()})[:-1]
        args = [
            owner,
            self._lease_ms,
            info,
            self._target.name,
            self._entry_ms if queue else 0,
            self._keys.entry,
        ]
        return int(script(keys=self._keys.for_scripts(owner), args=args))

    def _granted(self, owner: str, token: int, started: float) -> None:
        """Hold from now on; the lease began no earlier than ``started``."""
        self._owner, self._token, self._lost = owner, token, False
        self._expires = started + self._target.lease
        renewer().add(id(self), started + self._target.lease / 3, self._renew_for(owner))

    # -- acquire ---------------------------------------------------------------

    def acquire(self, shared: bool, deadline: float | None) -> bool:
        redis = self._redis
        client = self._ensure()
        try:
            owner = uuid.uuid4().hex
            started = time.monotonic()
            token = self._run(self._acquire_script, owner)
            if token > 0:
                self._granted(owner, token, started)
                return True
            if deadline is not None and deadline <= time.monotonic():
                return False
            if self._pubsub is None:
                self._pubsub = client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self._keys.channel)
            while self._pubsub.get_message(timeout=0.0) is not None:
                pass  # stale messages
            self._waiter = owner
            try:
                granted = self._wait(owner, deadline)
            except BaseException:
                self._withdraw()
                raise
            if not granted:
                self._withdraw()  # gave up: leave the queue, pass on a late hand-over
            self._waiter = None
            return granted
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_pubsub()
            raise self._unreachable(exc, "acquire") from None

    def _wait(self, owner: str, deadline: float | None) -> bool:
        """Queue up and wait until a release hands the lock over (or frees it)."""
        mine = owner.encode() + b" "
        while True:
            checked = time.monotonic()
            result = self._run(self._acquire_script, owner, queue=True)  # subscribed first
            if result > 0:
                self._granted(owner, result, checked)
                return True
            lease_left = (-1 - result) / 1000 if result <= -1 else self._recheck
            recheck_at = checked + min(lease_left + 0.001, self._recheck)
            while True:
                now = time.monotonic()
                wait = recheck_at - now
                if deadline is not None:
                    if deadline <= now:
                        return False
                    wait = min(wait, deadline - now)
                if wait <= 0:
                    break
                message = self._pubsub.get_message(timeout=wait)
                if message is None:
                    continue
                data = message["data"]
                if data.startswith(mine):
                    # Handed over by the release, token and all: no round trip.
                    # The lease began after our last check of the queue.
                    if time.monotonic() - checked > self._target.lease / 2:
                        break  # we were stalled: ask the server instead
                    self._granted(owner, int(data[len(mine) :]), checked)
                    return True
                if data == b"released":
                    break  # freed with nobody queued: try again now
                # Handed to another waiter: keep waiting.

    def _withdraw(self) -> None:
        """Leave the queue; pass on a hand-over that came too late."""
        owner, self._waiter = self._waiter, None
        if owner is not None:
            with contextlib.suppress(Exception):  # unreachable: the entry expires by itself
                self._run(self._withdraw_script, owner)

    def cancel(self) -> None:
        self._withdraw()
        if self._owner is not None:  # interrupted right after a grant
            with contextlib.suppress(Exception):
                self.release()

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
                ok = self._renew_script(keys=[self._keys.lock, self._keys.info], args=[owner, self._lease_ms])
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
            assert owner is not None
            released = self._run(self._release_script, owner)
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
            return bool(self._ensure().exists(self._keys.lock))
        except (self._redis.RedisError, OSError) as exc:
            raise self._unreachable(exc, "query") from None

    def token(self, shared: bool, since: float) -> int:
        assert self._token is not None
        return self._token

    def publish(self, since: float, details: dict[str, Any]) -> None:
        try:
            raw = self._ensure().get(self._keys.info)
            info = json.loads(raw) if raw else {}
            info.update(details)
            self._client.set(self._keys.info, json.dumps(info), keepttl=True, xx=True)
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
        self._owner, self._token, self._lost, self._waiter = None, None, False, None

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
        keys = _Keys(name)
        lock_key = keys.lock
        raw = client.get(keys.info) if client.exists(lock_key) else None
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
