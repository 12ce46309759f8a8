"""A network partition between hosts, with real processes and a real link cut.

One worker node runs in its own network namespace ("the far host") and reaches a private,
password-protected Redis over a veth pair; the scheduler and the other node run on this
host. The test cuts the far host's link while it runs a package, waits for the run to be
resubmitted and to run on the near node, then heals the link: the partitioned attempt
comes back to find itself fenced and writes nothing more.

Only Redis crosses the "network": SQL state (SQLite) and checkpoints are on the shared
filesystem, as on an NFS mount. The database is SQLite only, because the PostgreSQL of
``ORCHESTRATOR_TEST_DATABASE_URL`` listens on this host's loopback, which the namespace
does not share. Skipped, with the reason, where a network namespace cannot be created.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_failover import FAST, HOLD_AT, finished, holding, ten_tasks
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.cluster import Cluster
from tests.support.netns import NetworkNamespace
from tests.support.nodes import start_node
from tests.support.servers import PrivateRedis, Unavailable

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def namespace() -> Iterator[NetworkNamespace]:
    with contextlib.ExitStack() as stack:
        try:
            ns = stack.enter_context(NetworkNamespace.create())
        except Unavailable as exc:
            pytest.skip(f"cannot create a network namespace here: {exc}")
        yield ns


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_partitioned_node_is_fenced_and_the_run_finishes_on_the_other_side(
    tmp_path: Path, database_url: str, namespace: NetworkNamespace
) -> None:
    with PrivateRedis(tmp_path / "redis", binds=("127.0.0.1", namespace.host)) as server:
        cluster = Cluster(tmp_path, server.url("127.0.0.1"), database_url)
        cluster.overrides.update(FAST)
        try:
            cluster.start_scheduler()
            far = {"ORCHESTRATOR_BROKER_URL": server.url(namespace.host)}
            start_node(cluster, "node-far", prefix=namespace.exec_prefix(), env=far)
            cluster.wait_nodes("node-far")
            hold = tmp_path / "release"
            run_id = cluster.client.submit(ten_tasks(hold))
            wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
            assert cluster.client.status(run_id)["node"] == "node-far"
            cluster.start_node("node-near")
            cluster.wait_nodes("node-near")

            cut_at = time.time()
            namespace.cut()
            wait_until(
                lambda: holding(cluster, 2),
                timeout=60,
                what=f"the run to be resubmitted to node-near\n{cluster.tail()}",
            )
            assert cluster.processes["node-far"].poll() is None, "the far node lives on, cut off"
            namespace.heal()
            cluster.wait_nodes("node-far", timeout=60)  # back on the network, a node again
            hold.touch()  # both attempts may go on: only the new one may write anything

            final = finished(cluster, run_id)
            assert final["state"] == "succeeded" and final["node"] == "node-near", final
            assert final["restarts"] == 1 and final["attempt"] == 2
            wait_until(
                lambda: "lost its lease" in (tmp_path / "node-far.log").read_text(errors="replace"),
                timeout=60,
                what=f"the partitioned attempt to find itself fenced\n{cluster.tail()}",
            )
        finally:
            cluster.stop()

    entries = cluster.entries()
    stale = [e for e in entries if e["epoch"] == 1 and e["event"] == "saved" and e["unit"] >= HOLD_AT]
    assert stale == [], "the partitioned attempt saved progress after it was fenced"
    assert not [e for e in entries if e["epoch"] == 1 and e["task"] in {f"t{n}" for n in range(7, 11)}]
    for n in range(1, 6):
        assert T.count(entries, "start", f"t{n}") == 1, f"t{n} ran again"
    assert [e["unit"] for e in entries if e["event"] == "saved"] == list(range(8)), "no unit saved twice"
    repo = cluster.services.repository
    assert [a.state.value for a in repo.attempts(run_id)] == ["lost", "succeeded"]
    kinds = [e.kind for e in repo.events(run_id)]
    assert kinds.count("finished") == 1 and kinds.count("resubmitted") == 1
    (lost,) = [e for e in repo.events(run_id) if e.kind == "node_lost"]
    assert lost.node == "node-far"
    # The cut connection stays open on Redis's side: no early suspicion, the lease decides. Its
    # last renewal was at most one heartbeat (0.5 s) before the cut; the lease TTL is 2 s.
    detected = lost.at.timestamp() - cut_at
    assert 1.5 - 0.1 <= detected < 2 + 3, f"node loss recorded {detected:.2f} s after the cut"
