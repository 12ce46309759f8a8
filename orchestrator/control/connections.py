"""Crash detection from the Redis connection each worker node keeps open for its whole life.

A worker node sends its heartbeats over one connection of its own, named
with ``CLIENT SETNAME``, and records that connection's client id (with the
Redis server's ``run_id``) every time it connects. When the node's process
group dies (SIGKILL, a crash, the OOM killer taking the node process), its
kernel closes the connection at once and Redis drops the client. Every tick a
scheduler asks Redis which of the recorded client ids still exist (one
``CLIENT LIST ID ...``); a node whose connection is gone has its runs' leases
expired on the spot, so the tick's usual recovery fences and resubmits them
without waiting for the lease TTL.

What this cannot see (a paused process, a frozen VM, a network partition, a
host that lost power: the connection stays open on the Redis side until TCP
gives up) is still caught by the lease TTL. A healthy node whose connection
is dropped (``CLIENT KILL``, a proxy restart) is suspected wrongly: its
running attempts lose their leases (the attempt in flight is run again from
its checkpoint; finished work is not), and the node reconnects, records its
new connection and keeps serving.

A Redis restart or a Sentinel failover drops every connection: a node
recorded under another server ``run_id`` is left to its lease until it
reconnects and records itself again, so a restart is not taken for the loss
of every node. Keys (``<p>`` is the liveness prefix)::

    <p>:conns             hash node -> "<client id>:<server run_id>"
    <p>:node-runs:<node>  set of the runs whose lease the node holds (kept by the lease scripts)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import AbstractConnection

log = logging.getLogger(__name__)

# KEYS: conns, nodes, leases, node-runs   ARGV: node, registered, prefix
_EXPIRE_NODE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then redis.call('ZADD', KEYS[2], now, ARGV[1]) end
local runs = {}
for _, run in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if redis.call('HGET', ARGV[3] .. ':lease:' .. run, 'node') == ARGV[1] then
    redis.call('ZADD', KEYS[3], now, run)
    runs[#runs + 1] = run
  else
    redis.call('SREM', KEYS[4], run)
  end
end
return runs
"""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def client_name(node: str) -> str:
    """The connection name of a node (``CLIENT LIST`` shows it); no spaces allowed there."""
    return "orchestrator-node:" + _UNSAFE.sub("_", node)


class NodeConnections:
    """Both sides of the connection check (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "orch") -> None:
        self.client = client
        self.prefix = prefix
        self.key = f"{prefix}:conns"
        self._expire_node = client.register_script(_EXPIRE_NODE)
        self.available = True
        # The listing is read for its ids only: skip redis-py's parsing of every field of every line.
        client.set_response_callback("CLIENT LIST", lambda response, **_: response)

    # -- a worker node -------------------------------------------------------------------

    def on_connect(self, node: str) -> Callable[[AbstractConnection], None]:
        """The ``redis_connect_func`` of a node's connection: name it and record its client id.

        Runs on every (re)connection, before any other command on it, so the id
        recorded is always the live connection's.
        """
        name = client_name(node)

        def connected(connection: AbstractConnection) -> None:
            connection.on_connect()  # type: ignore[no-untyped-call]
            client_id = _call(connection, "CLIENT", "ID")
            _call(connection, "CLIENT", "SETNAME", name)
            run_id = _run_id(_call(connection, "INFO", "server"))
            _call(connection, "HSET", self.key, node, f"{int(client_id)}:{run_id}")
            log.info("node %s connected to Redis as client %s", node, client_id)

        return connected

    def forget(self, node: str) -> None:
        """A node stopping cleanly: its connection is not a sign of anything any more."""
        self.client.hdel(self.key, node)

    # -- a scheduler -----------------------------------------------------------------------

    def gone(self) -> list[tuple[str, str]]:
        """Nodes whose recorded connection no longer exists on this server: ``(node, recorded)``."""
        if not self.available:
            return []
        recorded = {_text(k): _text(v) for k, v in self.client.hgetall(self.key).items()}
        ids = {node: value.partition(":")[0] for node, value in recorded.items()}
        if not ids:
            return []
        try:
            present = self._present(sorted(set(ids.values())))
        except redis.ResponseError as exc:
            # CLIENT LIST may be renamed or forbidden (managed Redis, ACLs): leases alone then.
            log.warning("CLIENT LIST is refused (%s): node crashes are detected by lease expiry only", exc)
            self.available = False
            return []
        missing = [(node, recorded[node]) for node, client_id in ids.items() if client_id not in present]
        if not missing:
            return []
        server = self.server_run_id()
        return [(node, value) for node, value in missing if value.partition(":")[2] == server]

    def _present(self, ids: list[str]) -> set[str]:
        listing: Any = self.client.execute_command("CLIENT", "LIST", "ID", *ids)  # type: ignore[no-untyped-call]
        return set(re.findall(r"(?m)^id=(\d+) ", _text(listing)))

    def server_run_id(self) -> str:
        return str(self.client.info("server")["run_id"])

    def expire_node(self, node: str, recorded: str) -> list[str]:
        """Expire the leases the node holds and its heartbeat, unless it reconnected meanwhile."""
        keys = [self.key, f"{self.prefix}:nodes", f"{self.prefix}:leases", f"{self.prefix}:node-runs:{node}"]
        runs: Any = self._expire_node(keys, [node, recorded, self.prefix])
        return [_text(run) for run in runs or []]


def _call(connection: AbstractConnection, *args: str) -> Any:
    connection.send_command(*args)  # type: ignore[no-untyped-call]
    return connection.read_response()


def _run_id(info: Any) -> str:
    text = _text(info) if isinstance(info, bytes | str) else ""
    found = re.search(r"(?m)^run_id:(\w+)", text)
    if found is None:
        raise redis.ResponseError("INFO server gave no run_id")
    return found.group(1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
