"""A worker's clock is not trusted: lease and heartbeat deadlines are taken on the Redis server.

In process, the wall clock of the test process is moved by an hour either way around
claims, renewals, heartbeats and fencing: every deadline is the Redis server's time plus
the TTL, and expiry is decided on that clock. With real processes, one worker node runs an
hour ahead and another an hour behind (``tests/support/skewed_clock``: every wall-clock read
of the process is moved): the ahead node's lease is not held for an hour, the behind
node's is not expired at once, and a kill of the ahead node is noticed within the TTL.
"""

from __future__ import annotations

import datetime
import time
import uuid

import pytest
import redis

from orchestrator.control.liveness import Claim, Liveness
from tests.integration.test_failover import FAST, finished, holding, ten_tasks
from tests.support import tasks as T
from tests.support.cli import ROOT, wait_until
from tests.support.cluster import Cluster
from tests.support.nodes import start_node

pytestmark = pytest.mark.timeout(150)

HOUR = 3600.0
TTL_MS = int(float(FAST["ORCHESTRATOR_LEASE_TTL"]) * 1000)
SKEWED_CLOCK = ROOT / "tests" / "support" / "skewed_clock"


@pytest.mark.parametrize("skew", [-HOUR, HOUR], ids=["behind", "ahead"])
def test_lease_decisions_ignore_the_local_clock(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    with redis.Redis.from_url(redis_url) as client:
        namespace = f"clock-{uuid.uuid4().hex[:12]}"
        liveness = Liveness(
            client, lease_ttl=0.5, claim_timeout=0.5, prefix=namespace, run_queue=f"{namespace}:runs"
        )
        real_time, real_time_ns = time.time, time.time_ns
        monkeypatch.setattr(time, "time", lambda: real_time() + skew)
        monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(skew * 1e9))

        claimed = liveness.claim("run-1", 1, "n1", 1)
        assert claimed.status is Claim.OK
        assert abs(claimed.server_ms - real_time() * 1000) < 0.5 * abs(skew) * 1000, "Redis time"
        deadline = client.zscore(f"{namespace}:leases", "run-1")
        assert deadline == claimed.server_ms + 500, "deadline = Redis time + TTL"
        beat = liveness.heartbeat("n1", {})
        assert liveness.alive_nodes()["n1"]["deadline_ms"] == beat + 500
        assert liveness.fence_expired("run-1") is None, "a fresh lease is not expired"
        assert liveness.expired_leases() == []

        assert liveness.renew("run-1", 1, "n1", 1) is Claim.OK
        renewed = client.zscore(f"{namespace}:leases", "run-1")
        assert renewed is not None and claimed.server_ms + 500 <= renewed <= liveness.server_ms() + 500
        wait_until(lambda: liveness.server_ms() > renewed, timeout=10, what="the lease to pass its deadline")
        assert liveness.expired_leases() == ["run-1"]
        expired = liveness.fence_expired("run-1")
        assert expired is not None and (expired.epoch, expired.node) == (2, "n1")
        assert liveness.lost_nodes() == ["n1"]
        client.delete(*client.keys(f"{namespace}:*"))


def start_skewed(cluster: Cluster, name: str, skew: float) -> None:
    env = {
        "PYTHONPATH": f"{SKEWED_CLOCK}:{cluster.env()['PYTHONPATH']}",
        "ORCH_TEST_CLOCK_SKEW": str(skew),
    }
    start_node(cluster, name, env=env)


def logged_clock(cluster: Cluster, name: str) -> datetime.datetime:
    """The time of the node's first log line (its own clock's, as its logging wrote it)."""
    for line in (cluster.tmp / f"{name}.log").read_text(errors="replace").splitlines():
        try:
            return datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
    raise AssertionError(f"no timestamped line in {name}'s log\n{cluster.tail()}")


def deadlines_on_redis_time(cluster: Cluster, run_id: str) -> bool:
    """The run's lease and every node's heartbeat expire within a TTL of Redis's now.

    A renewal late by up to a TTL (a loaded machine starves the renewing thread) is let pass:
    what this checks is that no deadline is on a node's clock, an hour away.
    """
    liveness = cluster.services.liveness
    before = liveness.server_ms()
    lease = liveness.client.zscore(liveness._key("leases"), run_id)
    nodes = [info["deadline_ms"] for info in liveness.alive_nodes().values()]
    # A renewal between the two clock reads sets a deadline up to a TTL after the second one.
    near = range(int(before) - TTL_MS, int(liveness.server_ms()) + TTL_MS + 1)
    return lease is not None and int(lease) in near and all(int(d) in near for d in nodes)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_nodes_with_wrong_clocks_keep_and_lose_leases_on_time(cluster: Cluster) -> None:
    cluster.overrides.update(FAST)
    cluster.start_scheduler()
    start_skewed(cluster, "node-ahead", HOUR)
    cluster.wait_nodes("node-ahead")
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    assert cluster.client.status(run_id)["node"] == "node-ahead"
    start_skewed(cluster, "node-behind", -HOUR)
    cluster.wait_nodes("node-behind")
    now = datetime.datetime.now()
    for name, skew in (("node-ahead", HOUR), ("node-behind", -HOUR)):
        off = (logged_clock(cluster, name) - now).total_seconds()
        assert abs(off - skew) < 300, f"{name}'s clock is {off:+.0f} s off, not {skew:+.0f}"

    # Three lease TTLs on the ahead node: renewed on time, never expired, never an hour long.
    liveness = cluster.services.liveness
    until = liveness.server_ms() + 3 * TTL_MS
    while liveness.server_ms() < until:
        assert deadlines_on_redis_time(cluster, run_id), cluster.tail()
        time.sleep(0.1)  # sampling interval of the check; the loop is bounded by Redis time
    assert (liveness.epoch(run_id), cluster.client.status(run_id)["restarts"]) == (1, 0)

    killed_at = time.monotonic()
    cluster.kill("node-ahead")
    wait_until(lambda: holding(cluster, 2), timeout=30, what=f"the run to resume\n{cluster.tail()}")
    recovery = time.monotonic() - killed_at
    assert recovery < 2 * TTL_MS / 1000 + 3, f"loss noticed after {recovery:.1f} s (lease TTL 2 s)"
    assert cluster.client.status(run_id)["node"] == "node-behind"
    until = liveness.server_ms() + 3 * TTL_MS
    while liveness.server_ms() < until:  # the behind node's lease is not expired at once either
        assert deadlines_on_redis_time(cluster, run_id), cluster.tail()
        time.sleep(0.1)  # sampling interval of the check; the loop is bounded by Redis time
    hold.touch()
    final = finished(cluster, run_id)
    assert final["state"] == "succeeded" and final["restarts"] == 1, final
    assert T.count(cluster.entries(), "start", "t1") == 1
    kinds = [e.kind for e in cluster.services.repository.events(run_id)]
    assert kinds.count("resubmitted") == 1 and kinds.count("finished") == 1
