"""Leases, heartbeats and fencing epochs in Redis: the ephemeral half of cluster state.

Every decision is one Lua script, so it is atomic across schedulers and
workers, and every deadline is computed from the Redis server's clock, so no
host's clock is trusted. Keys (``<p>`` is the prefix)::

    <p>:epoch:<run>    the run's fencing epoch (only grows)
    <p>:lease:<run>    hash: node, epoch, attempt of the attempt that owns the run
    <p>:leases         sorted set run -> lease deadline (ms)
    <p>:pending        sorted set run -> claim deadline (ms) of a dispatched attempt
    <p>:nodes          sorted set node -> heartbeat deadline (ms)
    <p>:node:<name>    hash: what the node says about itself
    <p>:node-runs:<n>  set of the runs whose lease node n holds (for crash detection)
    <p>:cancel:<run>   present while a cancellation is requested
    <p>:marker         the run_id of the Redis server that last rebuilt these keys

A scheduler tick only reads the entries whose deadline passed
(``ZRANGEBYSCORE -inf now``), so its cost grows with what expired, not with
the number of healthy runs. If Redis loses its data the marker is gone and
the scheduler rebuilds these keys from SQL (:meth:`Liveness.restore_run`).
It does the same when the server changed under the same data (a restart, or
a Sentinel failover to a replica that may have missed the latest writes): the
marker then names another server. Rebuilding never undoes what is there (it
only adds a missing lease or claim deadline, and raises an epoch to SQL's).

Scripts that only know a node's name from a lease build its ``node-runs`` key
from the prefix: like Celery's Redis transport, this needs one Redis server
(standalone or behind Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: epoch, lease, leases, pending, cancel, node-runs   ARGV: run, epoch, node, attempt, ttl_ms
# The claim is also the attempt's first lease.
_CLAIM = (
    _NOW
    + """
local epoch = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > epoch then return {0, now} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {3, now} end
local owner = redis.call('HGET', KEYS[2], 'epoch')
if owner and tonumber(owner) == epoch then return {2, now} end
redis.call('SET', KEYS[1], epoch)
redis.call('HSET', KEYS[2], 'node', ARGV[3], 'epoch', epoch, 'attempt', ARGV[4])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[1])
return {1, now}
"""
)

# KEYS: epoch, lease, leases, cancel, pending, node-runs   ARGV: run, epoch, node, attempt, ttl_ms
# A missing epoch or lease (Redis lost its data, or a failover lost the claim) is re-created by
# the owner: an epoch only grows, so the highest claimant is the newest attempt and older ones
# stay fenced. A claim deadline left by a lost claim is dropped: the attempt is running.
_RENEW = (
    _NOW
    + """
local epoch = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > epoch then return 0 end
local owner = redis.call('HGET', KEYS[2], 'epoch')
if owner and tonumber(owner) ~= epoch then return 0 end
redis.call('SET', KEYS[1], epoch)
if not owner then
  redis.call('HSET', KEYS[2], 'node', ARGV[3], 'epoch', epoch, 'attempt', ARGV[4])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('SADD', KEYS[6], ARGV[1])
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then return 3 end
return 1
"""
)

# KEYS: lease, leases   ARGV: run, epoch, prefix
_RELEASE = """
local owner = redis.call('HMGET', KEYS[1], 'epoch', 'node')
if owner[1] and tonumber(owner[1]) == tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', ARGV[3] .. ':node-runs:' .. (owner[2] or ''), ARGV[1])
  return 1
end
return 0
"""

# KEYS: epoch, lease, leases, pending   ARGV: run, claim_timeout_ms, prefix
_FENCE_EXPIRED = (
    _NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not deadline or tonumber(deadline) > now then return false end
local node = redis.call('HGET', KEYS[2], 'node') or ''
local old = redis.call('HGET', KEYS[2], 'epoch') or '0'
redis.call('SREM', ARGV[3] .. ':node-runs:' .. node, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
local epoch = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[1])
return {epoch, node, tonumber(old), tonumber(deadline), now}
"""
)

# KEYS: epoch, pending, run queue, recovery queue   ARGV: run, claim_timeout_ms
# A dispatch is lost only if its claim deadline passed while the queues are empty:
# a message still waiting for a free worker is not lost, its deadline moves on.
_TAKE_LOST_DISPATCH = (
    _NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline or tonumber(deadline) > now then return false end
if redis.call('LLEN', KEYS[3]) + redis.call('LLEN', KEYS[4]) > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
  return false
end
local epoch = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return {epoch, tonumber(deadline), now}
"""
)

# KEYS: epoch, pending   ARGV: run, claim_timeout_ms, floor
_FENCE_FOR_DISPATCH = (
    _NOW
    + """
local floor = tonumber(ARGV[3] or '0')
if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then redis.call('SET', KEYS[1], floor) end
local epoch = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return {epoch, now}
"""
)

# KEYS: epoch, pending   ARGV: run, claim_timeout_ms
# The first epoch of a new run id, with its claim deadline; false if the id has an epoch already
# (a redelivered submission must not fence the attempt it dispatched).
_FIRST_EPOCH = (
    _NOW
    + """
if not redis.call('SET', KEYS[1], 1, 'NX') then return false end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: lease, leases   ARGV: run, epoch, node
# The lease of an attempt known to be dead (its process died) expires now, if it is still its.
_EXPIRE_LEASE = (
    _NOW
    + """
local owner = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if owner[1] ~= ARGV[3] or tonumber(owner[2]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 1
"""
)

# KEYS: epoch, lease, leases, pending   ARGV: run, prefix
_FENCE_RUN = """
local node = redis.call('HGET', KEYS[2], 'node')
if node then redis.call('SREM', ARGV[2] .. ':node-runs:' .. node, ARGV[1]) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[2])
return redis.call('INCR', KEYS[1])
"""

# KEYS: nodes, info   ARGV: node, ttl_ms, info-json
_HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[3])
return now
"""
)

# KEYS: nodes, info   ARGV: node
_TAKE_LOST_NODE = (
    _NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS: epoch, lease, leases, pending, node-runs   ARGV: run, epoch, node, attempt, mode, ttl_ms
_RESTORE = (
    _NOW
    + """
local epoch = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') < epoch then redis.call('SET', KEYS[1], epoch) end
if ARGV[5] == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], 'node', ARGV[3], 'epoch', epoch, 'attempt', ARGV[4])
    redis.call('SADD', KEYS[5], ARGV[1])
  end
  redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[6]), ARGV[1])
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZADD', KEYS[4], 'NX', now, ARGV[1])
end
return 1
"""
)


class Claim(IntEnum):
    """Outcome of a claim or a renewal."""

    STALE = 0  # a newer epoch exists: this attempt was fenced
    OK = 1
    DUPLICATE = 2  # the attempt is already claimed (a redelivered message)
    CANCELLED = 3  # a cancellation is requested


@dataclass(frozen=True)
class ClaimResult:
    status: Claim
    server_ms: int


@dataclass(frozen=True)
class Expired:
    """A lease that expired and was fenced: the run now has ``epoch``."""

    run_id: str
    epoch: int
    node: str
    old_epoch: int
    deadline_ms: int
    server_ms: int


@dataclass(frozen=True)
class LostDispatch:
    run_id: str
    epoch: int
    deadline_ms: int
    server_ms: int


def node_ready(info: dict[str, Any]) -> bool:
    """Whether an alive node (its heartbeat's ``info``) reads the queues: a node is alive as soon
    as it starts, and ready once Celery has forked its pool (a node that does not say counts
    as ready)."""
    return bool(info.get("ready", True))


class Liveness:
    """The Redis side of leases, heartbeats and epochs (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        lease_ttl: float,
        claim_timeout: float,
        prefix: str = "orch",
        run_queue: str = "orchestrator.runs",
        recovery_queue: str = "orchestrator.recovery",
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self.claim_timeout_ms = int(claim_timeout * 1000)
        self.run_queue = run_queue
        self.recovery_queue = recovery_queue
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._fence_expired = client.register_script(_FENCE_EXPIRED)
        self._take_lost_dispatch = client.register_script(_TAKE_LOST_DISPATCH)
        self._fence_for_dispatch = client.register_script(_FENCE_FOR_DISPATCH)
        self._fence_run = client.register_script(_FENCE_RUN)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._take_lost_node = client.register_script(_TAKE_LOST_NODE)
        self._restore = client.register_script(_RESTORE)
        self._first_epoch = client.register_script(_FIRST_EPOCH)
        self._expire_lease = client.register_script(_EXPIRE_LEASE)

    # -- keys --------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _run_keys(self, run_id: str) -> list[str]:
        return [
            self._key("epoch", run_id),
            self._key("lease", run_id),
            self._key("leases"),
            self._key("pending"),
        ]

    # -- workers -----------------------------------------------------------------------

    def claim(self, run_id: str, epoch: int, node: str, attempt: int) -> ClaimResult:
        """Take the run for this attempt if its epoch is current and nobody holds it: its first lease."""
        keys = [*self._run_keys(run_id), self._key("cancel", run_id), self._key("node-runs", node)]
        status, now = self._claim(keys, [run_id, epoch, node, attempt, self.lease_ttl_ms])
        return ClaimResult(Claim(int(status)), int(now))

    def renew(self, run_id: str, epoch: int, node: str, attempt: int) -> Claim:
        """Extend the lease; STALE means the attempt was fenced and must stop."""
        keys = [
            *self._run_keys(run_id)[:3],
            self._key("cancel", run_id),
            self._key("pending"),
            self._key("node-runs", node),
        ]
        return Claim(int(self._renew(keys, [run_id, epoch, node, attempt, self.lease_ttl_ms])))

    def release(self, run_id: str, epoch: int) -> bool:
        keys = [self._key("lease", run_id), self._key("leases")]
        return bool(self._release(keys, [run_id, epoch, self.prefix]))

    def expire_lease(self, run_id: str, epoch: int, node: str) -> bool:
        """The attempt's process is known dead: its lease expires now (if it still holds it)."""
        keys = [self._key("lease", run_id), self._key("leases")]
        return bool(self._expire_lease(keys, [run_id, epoch, node]))

    def heartbeat(self, node: str, info: dict[str, Any]) -> int:
        keys = [self._key("nodes"), self._key("node", node)]
        return int(self._heartbeat(keys, [node, self.lease_ttl_ms, json.dumps(info)]))

    def node_gone(self, node: str) -> None:
        """A node stopping cleanly leaves at once instead of expiring."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self._key("nodes"), node)
        pipe.delete(self._key("node", node))
        pipe.hdel(self._key("conns"), node)
        pipe.execute()

    # -- schedulers --------------------------------------------------------------------

    def server_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def expired_leases(self, limit: int = 100) -> list[str]:
        now = self.server_ms()
        raw: list[Any] = self.client.zrangebyscore(self._key("leases"), "-inf", now, start=0, num=limit)
        return [_text(r) for r in raw]

    def fence_expired(self, run_id: str) -> Expired | None:
        """Fence an expired lease (epoch + 1); ``None`` if it was renewed or taken meanwhile."""
        found = self._fence_expired(self._run_keys(run_id), [run_id, self.claim_timeout_ms, self.prefix])
        if not found:
            return None
        epoch, node, old, deadline, now = found
        return Expired(run_id, int(epoch), _text(node), int(old), int(deadline), int(now))

    def overdue_dispatches(self, limit: int = 100) -> list[str]:
        now = self.server_ms()
        raw: list[Any] = self.client.zrangebyscore(self._key("pending"), "-inf", now, start=0, num=limit)
        return [_text(r) for r in raw]

    def take_lost_dispatch(self, run_id: str) -> LostDispatch | None:
        keys = [self._key("epoch", run_id), self._key("pending"), self.run_queue, self.recovery_queue]
        found = self._take_lost_dispatch(keys, [run_id, self.claim_timeout_ms])
        if not found:
            return None
        epoch, deadline, now = found
        return LostDispatch(run_id, int(epoch), int(deadline), int(now))

    def fence_for_dispatch(self, run_id: str, *, after: int = 0) -> int:
        """A new epoch for a dispatch, with a claim deadline (a crash before the send is noticed).

        The epoch is above ``after`` (the epoch SQL recorded) even if Redis lost the run's key.
        """
        keys = [self._key("epoch", run_id), self._key("pending")]
        epoch, _ = self._fence_for_dispatch(keys, [run_id, self.claim_timeout_ms, after])
        return int(epoch)

    def first_epoch(self, run_id: str) -> int | None:
        """Epoch 1 for a run id new to Redis, with its claim deadline; ``None`` if it has one already."""
        keys = [self._key("epoch", run_id), self._key("pending")]
        return 1 if self._first_epoch(keys, [run_id, self.claim_timeout_ms]) else None

    def forget_run(self, run_id: str) -> None:
        """Drop what :meth:`first_epoch` made for a run id that turned out not to be a new run."""
        self.client.zrem(self._key("pending"), run_id)
        self.client.delete(self._key("epoch", run_id))

    def fence_run(self, run_id: str) -> int:
        """Fence whatever attempt holds the run and forget it (cancel, give up)."""
        return int(self._fence_run(self._run_keys(run_id), [run_id, self.prefix]))

    def drop_pending(self, run_id: str) -> None:
        self.client.zrem(self._key("pending"), run_id)

    def lost_nodes(self, limit: int = 100) -> list[str]:
        now = self.server_ms()
        raw: list[Any] = self.client.zrangebyscore(self._key("nodes"), "-inf", now, start=0, num=limit)
        return [_text(r) for r in raw]

    def take_lost_node(self, node: str) -> bool:
        return bool(self._take_lost_node([self._key("nodes"), self._key("node", node)], [node]))

    def alive_nodes(self) -> dict[str, dict[str, Any]]:
        """Nodes whose heartbeat has not expired, with what they said about themselves."""
        # Exclusive: a deadline equal to now has passed (the scripts' rule), so that node is lost.
        scored: list[Any] = self.client.zrangebyscore(
            self._key("nodes"), f"({self.server_ms()}", "+inf", withscores=True
        )
        deadlines = {_text(name): int(deadline) for name, deadline in scored}
        keys = [self._key("node", name) for name in deadlines]
        infos: list[Any] = self.client.mget(keys) if keys else []
        return {
            name: {**(json.loads(info) if info else {}), "deadline_ms": deadline}
            for (name, deadline), info in zip(deadlines.items(), infos, strict=True)
        }

    def ready_nodes(self) -> set[str]:
        """Alive nodes that read the queues (:func:`node_ready`)."""
        return {name for name, info in self.alive_nodes().items() if node_ready(info)}

    def epoch(self, run_id: str) -> int:
        return int(self.client.get(self._key("epoch", run_id)) or 0)

    def lease_owner(self, run_id: str) -> dict[str, str]:
        raw: dict[Any, Any] = self.client.hgetall(self._key("lease", run_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def queue_depth(self, queue: str) -> int:
        return int(self.client.llen(queue))

    # -- cancellation ----------------------------------------------------------------------

    def request_cancel(self, run_id: str) -> None:
        self.client.set(self._key("cancel", run_id), "1", ex=7 * 24 * 3600)

    def clear_cancel(self, run_id: str) -> None:
        self.client.delete(self._key("cancel", run_id))

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.client.exists(self._key("cancel", run_id)))

    # -- recovery from a Redis that lost its data -------------------------------------------

    def marker_present(self) -> bool:
        return bool(self.client.exists(self._key("marker")))

    def set_marker(self, server: str | None = None) -> None:
        """Mark the keys as rebuilt on ``server`` (this server's run_id if not given)."""
        self.client.set(self._key("marker"), server or self.server_state()[1])

    def server_state(self) -> tuple[str | None, str]:
        """The marker (``None``: missing) and this server's run_id, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._key("marker"))
        pipe.info("server")
        marker, info = pipe.execute()
        return (_text(marker) if marker else None), str(info["run_id"])

    def restore_run(self, run_id: str, epoch: int, node: str, attempt: int, *, running: bool) -> None:
        """Re-create a run's liveness from SQL: a running run gets a fresh lease that its
        worker renews if it is alive; a dispatched one becomes immediately overdue."""
        mode = "running" if running else "pending"
        keys = [*self._run_keys(run_id), self._key("node-runs", node)]
        self._restore(keys, [run_id, epoch, node, attempt, mode, self.lease_ttl_ms])

    # -- retention ---------------------------------------------------------------------------

    def forget(self, run_ids: list[str]) -> int:
        """Delete what Redis keeps of purged runs (their epoch and cancel keys); the keys deleted.

        Only for runs that ended long ago and were deleted from SQL: a run's epoch only
        grows while the run can still be written to.
        """
        keys = [self._key(kind, run_id) for run_id in run_ids for kind in ("epoch", "cancel")]
        return int(self.client.delete(*keys)) if keys else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
