"""A Redis master failed over by Sentinel while runs are in flight, with real processes.

The cluster (a scheduler, two worker nodes of two pool processes) reaches
Redis through a ``sentinel://`` URL only. With three runs holding mid-task,
the replica is paused and its link dropped, so it misses what follows: two more submissions, their
dispatches, the claim of the one a free pool process takes (the other waits
in the queue, every pool process busy), lease renewals, events. Then the
master is SIGKILLed and the replica resumed; the sentinels promote it. The
queued run exists only in SQL now: only the scheduler's rebuild (it sees
another server) can bring it back. No run may be lost, no finished task or
saved unit may run again, SQL must end with every run succeeded, and no
epoch may be used twice for a run although Redis forgot some.

Skipped, with the reason, where no binary runs as a sentinel
(``apt-get install redis-sentinel``, or any ``redis-server``, which has a
sentinel mode).
"""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import RunNotFound
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from tests.integration.test_failover import finished, start, status
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.cluster import Cluster
from tests.support.sentinel import SentinelGroup, require_sentinel
from tests.support.servers import Unavailable

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
UNITS, HOLD_AT = 6, 3


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    try:
        require_sentinel(tmp_path / "probe")
    except Unavailable as exc:
        pytest.skip(f"no Redis Sentinel here: {exc}")
    with SentinelGroup(tmp_path / "sentinel") as made:
        yield made


def chain(name: str, log: Path, hold: Path | None) -> Package:
    """a -> b -> u (units, saving progress, holding before unit HOLD_AT) -> c, logging to ``log``."""
    step = "tests.support.tasks:step"
    units: dict[str, Any] = {"units": UNITS, "log": str(log)}
    if hold is not None:
        units.update(hold_at=HOLD_AT, hold=str(hold))
    tasks = [
        {"id": "a", "python": step, "params": {"log": str(log)}},
        {"id": "b", "python": step, "params": {"log": str(log)}, "depends_on": ["a"]},
        {"id": "u", "python": "tests.support.tasks:units", "params": units, "depends_on": ["b"]},
        {"id": "c", "python": step, "params": {"log": str(log)}, "depends_on": ["u"]},
    ]
    return parse_package({"name": name, "max_restarts": 10, "tasks": tasks})


def holding(log: Path) -> bool:
    return any(e["event"] == "holding" for e in T.read_log(log))


def state(cluster: Cluster, run_id: str) -> str | None:
    try:
        return str(status(cluster, run_id)["state"])
    except RunNotFound:
        return None


def test_a_master_failover_with_runs_in_flight_loses_nothing(
    tmp_path: Path, database_url: str, group: SentinelGroup
) -> None:
    cluster = Cluster(tmp_path, group.url, database_url)
    try:
        start(cluster, nodes=2)
        hold = tmp_path / "release"
        logs = {cluster.client.submit(chain(f"r{n}", tmp_path / f"r{n}.jsonl", hold)): tmp_path / f"r{n}.jsonl"
                for n in range(3)}  # fmt: skip
        for log in logs.values():
            wait_until(lambda log=log: holding(log), timeout=60, what=f"{log.name} to hold\n{cluster.tail()}")

        group.cut_replication()  # from here on, the master's writes are not replicated
        late = {cluster.client.submit(chain(f"late{n}", tmp_path / f"late{n}.jsonl", hold)): tmp_path / f"late{n}.jsonl"
                for n in range(2)}  # fmt: skip
        wait_until(
            lambda: sorted(str(state(cluster, run_id)) for run_id in late) == ["queued", "running"],
            timeout=60,
            what=f"one late run to start, the other to wait\n{cluster.tail()}",
        )
        logs.update(late)
        group.signal("master", signal.SIGKILL)
        group.signal("replica", signal.SIGCONT)
        wait_until(
            lambda: group.master_port() == group.ports["replica"],
            timeout=60,
            what=f"the sentinels to promote the replica\n{group.log('sentinel-0')}",
        )
        hold.touch()

        for run_id in logs:
            final = finished(cluster, run_id, timeout=120)
            assert final["state"] == "succeeded", final
        # The promoted replica is another server: the scheduler rebuilt what it may have missed (the
        # queued late run at least, which could not have finished otherwise).
        log = (tmp_path / "scheduler-1.log").read_text(errors="replace")
        rebuilt = re.findall(r"liveness rebuilt from SQL for (\d+) active", log)
        assert rebuilt[0] == "0" and any(int(n) >= 1 for n in rebuilt[1:]), rebuilt
        reasons = [
            e.detail.get("reason") for run_id in late for e in cluster.services.repository.events(run_id)
        ]
        assert "dispatch_lost" in reasons, reasons
        judge(cluster, logs)
    finally:
        cluster.stop()


def judge(cluster: Cluster, logs: dict[str, Path]) -> None:
    """No finished work repeated, no epoch used twice, one outcome per run."""
    repo = cluster.services.repository
    for run_id, log in logs.items():
        entries = T.read_log(log)
        for task in ("a", "b", "c"):
            assert T.count(entries, "end", task) == 1, f"{run_id}: {task} ran to its end again"
        assert [e["unit"] for e in entries if e["event"] == "saved"] == list(range(UNITS)), run_id
        epochs = [a.epoch for a in repo.attempts(run_id)]
        assert all(a < b for a, b in itertools.pairwise(epochs)), f"{run_id}: epochs {epochs}"
        assert repo.run_row(run_id).epoch == epochs[-1]
        kinds = [e.kind for e in repo.events(run_id)]
        assert kinds.count("finished") == 1 and kinds[-1] == "finished", (run_id, kinds)
