"""Node loss detected from the node's closed Redis connection, with real processes and signals.

A node's process group SIGKILLed is fenced in under a second at the default
5 s lease TTL; a pool process killed alone is reported by its own node; a
healthy node whose connection is dropped (``CLIENT KILL``) loses at most the
attempt in flight, reconnects and keeps serving; a paused node, whose
connection stays open, is still found by its lease, at the TTL and not
before. And the attempt that continues a lost run is taken ahead of runs
that have not started.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import RunNotFound
from orchestrator.packages.validation import parse_package
from tests.integration.test_failover import FAST, HOLD_AT, finished, holding, start, status, ten_tasks
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)


def first_event(cluster: Cluster, run_id: str, kind: str, timeout: float = 30) -> Any:
    return wait_until(
        lambda: next((e for e in cluster.services.repository.events(run_id) if e.kind == kind), None),
        timeout=timeout,
        what=f"a {kind} event of run {run_id}\n{cluster.tail()}",
    )


def assert_finished_work_not_repeated(cluster: Cluster) -> None:
    entries = cluster.entries()
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 10):
        assert T.count(entries, "end", f"t{n}") == 1, f"t{n} ran to its end twice"
    assert [e["unit"] for e in entries if e["event"] == "saved"] == list(range(8)), "a saved unit ran again"


def test_a_killed_node_is_fenced_within_a_second(cluster: Cluster) -> None:
    """At the default lease TTL (5 s): only the closed connection can explain a fence this fast."""
    start(cluster, nodes=2)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    victim = status(cluster, run_id)["node"]
    killed_at = time.time()
    cluster.kill(victim)

    fenced = first_event(cluster, run_id, "fenced")
    assert fenced.at.timestamp() - killed_at < 1.0, (
        f"fenced {fenced.at.timestamp() - killed_at:.2f} s after the kill"
    )
    assert fenced.node == victim
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["restarts"] == 1 and final["node"] != victim, final
    assert_finished_work_not_repeated(cluster)


def pool_process_of(cluster: Cluster, node: str, run_id: str) -> int:
    """The pid of the pool process running ``run_id`` on ``node`` (from the node's attempt files)."""
    pattern = f"orchestrator-{node}-*/*.json"
    for path in Path(tempfile.gettempdir()).glob(pattern):
        try:
            noted = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if noted["run_id"] == run_id:
            return int(path.stem)
    raise AssertionError(f"no attempt file of {run_id} on {node}\n{cluster.tail()}")


def test_a_pool_process_killed_alone_is_reported_by_its_node(cluster: Cluster) -> None:
    start(cluster, nodes=1)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    pid = pool_process_of(cluster, "node-1", run_id)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)  # one process, not the group: the OOM killer's way

    fenced = first_event(cluster, run_id, "fenced")
    assert fenced.at.timestamp() - killed_at < 1.0, (
        f"fenced {fenced.at.timestamp() - killed_at:.2f} s after the kill"
    )
    assert "node-1" in cluster.services.liveness.alive_nodes(), "the node itself lives on"
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["restarts"] == 1 and final["node"] == "node-1", final
    assert_finished_work_not_repeated(cluster)


def test_a_false_suspicion_costs_at_most_the_attempt_in_flight(cluster: Cluster) -> None:
    """A healthy node's connection dropped (``CLIENT KILL``): its attempt is fenced and resumed from
    its checkpoint, nothing finished runs again, and the node reconnects and keeps serving."""
    start(cluster, nodes=1)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    connections = cluster.services.connections
    recorded = cluster.services.redis.hget(connections.key, "node-1")
    assert recorded is not None
    old_id = recorded.decode().partition(":")[0]
    cluster.services.redis.execute_command("CLIENT", "KILL", "ID", old_id)

    first_event(cluster, run_id, "fenced")
    wait_until(lambda: holding(cluster, 2), timeout=60, what=f"the run to resume\n{cluster.tail()}")
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["restarts"] == 1 and final["node"] == "node-1", final
    assert_finished_work_not_repeated(cluster)
    assert [e["unit"] for e in cluster.entries() if e["event"] == "unit" and e["epoch"] == 2] == list(
        range(HOLD_AT, 8)
    ), "t6 resumed from its saved progress"

    def reconnected() -> bool:
        now = cluster.services.redis.hget(connections.key, "node-1")
        return now is not None and now.decode().partition(":")[0] != old_id

    wait_until(reconnected, timeout=30, what=f"the node to record its new connection\n{cluster.tail()}")
    cluster.wait_nodes("node-1")
    one = parse_package({"name": "after", "tasks": [{"id": "a", "python": "tests.support.tasks:step"}]})
    after = finished(cluster, cluster.client.submit(one))
    assert after["state"] == "succeeded" and after["node"] == "node-1" and after["restarts"] == 0, after


def test_a_paused_node_is_found_by_its_lease_at_the_ttl(cluster: Cluster) -> None:
    """SIGSTOP leaves the connection open: no fast detection, the lease decides (TTL 2 s here)."""
    cluster.overrides.update(FAST)
    start(cluster, nodes=2)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    victim = status(cluster, run_id)["node"]
    stopped_at = time.time()
    cluster.signal(victim, signal.SIGSTOP)
    try:
        fenced = first_event(cluster, run_id, "fenced")
        after = fenced.at.timestamp() - stopped_at
        # The last renewal was at most one heartbeat (0.5 s) before the stop.
        assert 1.5 - 0.1 <= after < 2 + 2.0, f"fenced {after:.2f} s after the stop (TTL 2 s)"
    finally:
        cluster.signal(victim, signal.SIGCONT)
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["restarts"] == 1, final


def test_a_resubmitted_run_goes_ahead_of_runs_not_started(cluster: Cluster) -> None:
    cluster.concurrency = 1
    start(cluster, nodes=2)
    hold_x, hold_y = cluster.tmp / "release-x", cluster.tmp / "release-y"
    x = cluster.client.submit(ten_tasks(hold_x, name="x"))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"x to hold\n{cluster.tail()}")
    blocker = parse_package(
        {
            "name": "y",
            "tasks": [{"id": "y", "python": "tests.support.tasks:step", "params": {"hold": str(hold_y)}}],
        }
    )
    y = cluster.client.submit(blocker)
    wait_until(lambda: _state(cluster, y) == "running", timeout=60, what=f"y to run\n{cluster.tail()}")
    one = parse_package({"name": "queued", "tasks": [{"id": "q", "python": "tests.support.tasks:step"}]})
    queued = [cluster.client.submit(one) for _ in range(4)]
    wait_until(
        lambda: all(_state(cluster, q) == "queued" for q in queued),
        timeout=60,
        what="the new runs to be queued",
    )

    cluster.kill(status(cluster, x)["node"])  # every pool process of the cluster is now busy or dead
    first_event(cluster, x, "resubmitted")
    hold_x.touch()
    hold_y.touch()  # y ends: its node's one pool process takes the next message
    for run_id in (x, *queued):
        assert finished(cluster, run_id)["state"] == "succeeded"
    repo = cluster.services.repository
    resumed = next(a for a in repo.attempts(x) if a.number == 2).claimed_at
    claimed = [repo.attempts(q)[0].claimed_at for q in queued]
    assert resumed is not None and all(c is not None and resumed < c for c in claimed), (resumed, claimed)


def _state(cluster: Cluster, run_id: str) -> str | None:
    """The run's state, None while its submission is not recorded yet."""
    try:
        return str(status(cluster, run_id)["state"])
    except RunNotFound:
        return None
