"""A checkpoint store that stops answering does not hold a run forever.

A write that hangs (a hard NFS mount, a stalled disk) cannot be interrupted;
what bounds it is ``ORCHESTRATOR_CHECKPOINT_TIMEOUT``: past it the attempt's
lease keeper stops renewing and gives the attempt up, the scheduler fences the
run when the lease expires, and the run resumes from its checkpoint elsewhere;
``orchestrator_checkpoint_writes_total{result="timeout"}`` counts it. In
process first (a store that blocks on demand), then with real worker processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from checkpoints import Change
from checkpoints.filesystem import FilesystemCheckpointWriter
from orchestrator.packages.validation import parse_package
from orchestrator.state import AttemptState
from orchestrator.state.states import RunState
from tests.integration.test_failover import finished, start
from tests.integration.test_scheduler import WAIT, Harness, events, make_harness, package, task
from tests.support import tasks as T
from tests.support.cli import ROOT, wait_until
from tests.support.cluster import Cluster
from tests.support.nodes import start_node

HUNG_STORE = ROOT / "tests" / "support" / "hung_store"


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


def timeouts() -> float:
    return (
        prometheus_client.REGISTRY.get_sample_value(
            "orchestrator_checkpoint_writes_total", {"result": "timeout"}
        )
        or 0.0
    )


def test_a_hung_write_gives_the_attempt_up_and_the_run_resumes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang, release = threading.Event(), threading.Event()
    append = FilesystemCheckpointWriter.append

    def stalled(self: FilesystemCheckpointWriter, changes: Sequence[Change]) -> int:
        if self.epoch == 1 and hang.is_set():
            release.wait(WAIT)  # the disk stalls: the write returns only when the test says so
        return append(self, changes)

    monkeypatch.setattr(FilesystemCheckpointWriter, "append", stalled)
    T.HOOKS["b"] = lambda ctx: hang.set() if ctx.epoch == 1 else None
    harness.overrides["checkpoint_timeout"] = 0.5
    run_id = harness.submit(package(task("a"), task("b", "a"), task("c", "b")))
    before = timeouts()
    first = harness.node("n1").start(harness.last(run_id))
    harness.attempts.append(first)
    try:
        wait_until(first.lost.is_set, timeout=WAIT, what="the attempt to be given up")
        assert timeouts() == before + 1
        assert first.is_alive(), "its write still hangs: only the lease says the attempt is over"
        harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the run to be resubmitted")
        result = harness.node("n2").run(harness.last(run_id))  # while n1's write still hangs
    finally:
        release.set()
    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.skipped == ["a"], "b's completion never became durable: b runs again, a does not"
    assert first.outcome() is None, "the late write was refused (fenced), and the attempt reports nothing"
    assert [e["epoch"] for e in harness.log() if e["task"] == "b" and e["event"] == "end"] == [1, 2]
    assert [e.detail["reason"] for e in events(harness, run_id, "resubmitted")] == ["node_lost"]
    assert [a.state for a in harness.repo.attempts(run_id)] == [AttemptState.LOST, AttemptState.SUCCEEDED]


def hold_package(hold: Path) -> Any:
    """a -> b (holds until the test releases it) -> c, parallel branch d beside them."""
    tasks: list[dict[str, Any]] = [
        {"id": "a", "python": "tests.support.tasks:step"},
        {"id": "b", "python": "tests.support.tasks:step", "params": {"hold": str(hold)}, "depends_on": ["a"]},
        {"id": "c", "python": "tests.support.tasks:step", "depends_on": ["b"]},
        {"id": "d", "python": "tests.support.tasks:step", "depends_on": ["a"]},
    ]
    return parse_package({"name": "hung", "max_restarts": 3, "tasks": tasks})


def test_a_worker_whose_store_hangs_loses_the_run_to_another_node(cluster: Cluster) -> None:
    cluster.overrides.update(
        ORCHESTRATOR_LEASE_TTL="2", ORCHESTRATOR_HEARTBEAT_INTERVAL="0.5", ORCHESTRATOR_CLAIM_TIMEOUT="4"
    )
    hang, hold = cluster.tmp / "hang", cluster.tmp / "release-b"
    start(cluster, nodes=0)
    hung_env = {
        "PYTHONPATH": f"{HUNG_STORE}:{cluster.env()['PYTHONPATH']}",
        "ORCH_TEST_HANG_FILE": str(hang),
        "ORCHESTRATOR_CHECKPOINT_TIMEOUT": "1",
    }
    start_node(cluster, "node-1", env=hung_env)
    cluster.wait_nodes("node-1")
    run_id = cluster.client.submit(hold_package(hold))
    wait_until(
        lambda: any(e["event"] == "holding" and e["task"] == "b" for e in cluster.entries()),
        timeout=60,
        what=f"b to hold on node-1\n{cluster.tail()}",
    )
    cluster.start_node("node-2")
    cluster.wait_nodes("node-2")
    hang.touch()  # node-1's next checkpoint write does not return
    hold.touch()
    final = finished(cluster, run_id, timeout=90)
    assert final["state"] == "succeeded", final
    attempts = cluster.services.repository.attempts(run_id)
    assert (attempts[0].state.value, attempts[0].node) == ("lost", "node-1")
    assert [a.state.value for a in attempts] == ["lost", "succeeded"]  # on a free pool process, anywhere
    log = (cluster.tmp / "node-1.log").read_text(errors="replace")
    assert "checkpoint store operation append has not returned" in log
    entries = cluster.entries()
    assert T.count(entries, "start", "a") == 1, "a's completion was durable before the hang"
    assert [e["epoch"] for e in entries if e["task"] == "c" and e["event"] == "end"] == [2]
