"""Schedules with real scheduler processes, real time, SIGKILL: one run per slot, catch-up after downtime.

Each schedule fires every second. Slots are read back from the runs' ids
(``<schedule>-<slot>``); ``submitted_at`` tells how late a slot fired.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.packages.validation import parse_package
from orchestrator.state.catalog import Catalog
from orchestrator.state.models import Run
from orchestrator.state.schedules import ScheduleSpec, ScheduleStore
from orchestrator.state.states import CatchUp, Overlap, RunState
from tests.integration.test_failover import FAST
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(240)

PKG = {"name": "tick", "tasks": [{"id": "a", "python": "tests.support.tasks:step"}]}


def schedule(cluster: Cluster, name: str, catchup: CatchUp, overlap: Overlap = Overlap.ALLOW) -> None:
    sessions = cluster.services.repository.sessions
    Catalog(sessions).deploy(parse_package(PKG))
    ScheduleStore(sessions).add(
        ScheduleSpec(name=name, package="tick", every_seconds=1, catchup=catchup, overlap=overlap)
    )


def fired(cluster: Cluster, name: str) -> dict[datetime, Run]:
    runs = cluster.services.repository.list_runs(limit=100_000)
    return {
        datetime.strptime(r.id.rsplit("-", 1)[1], "%Y%m%dT%H%M%S%z"): r
        for r in runs
        if r.id.startswith(name + "-")
    }


def contiguous(slots: list[datetime]) -> bool:
    return all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(slots))


def redis_now(cluster: Cluster) -> datetime:
    seconds, micros = cluster.services.redis.time()
    return datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, UTC)


def wait_slots(cluster: Cluster, name: str, count: int, timeout: float = 90) -> None:
    wait_until(
        lambda: len(fired(cluster, name)) >= count, timeout=timeout, what=f"{count} slots\n{cluster.tail()}"
    )


def dispatched_once(cluster: Cluster, runs: dict[datetime, Run]) -> None:
    """Every run is dispatched (the newest may still be on its way), and only once."""
    repo = cluster.services.repository

    def counts() -> dict[datetime, int]:
        return {slot: [e.kind for e in repo.events(run.id)].count("dispatched") for slot, run in runs.items()}

    wait_until(lambda: 0 not in counts().values(), timeout=30, what=f"every run dispatched\n{cluster.tail()}")
    assert set(counts().values()) == {1}, counts()


def test_two_schedulers_and_a_schedule_every_second_for_20_seconds(cluster: Cluster) -> None:
    cluster.overrides.update(FAST)
    cluster.start_scheduler("scheduler-1")
    cluster.start_scheduler("scheduler-2")
    cluster.start_node("node-1")
    cluster.wait_nodes("node-1")
    schedule(cluster, "every", CatchUp.ALL)
    wait_slots(cluster, "every", 21)
    ScheduleStore(cluster.services.repository.sessions).set_paused("every", True)
    runs = fired(cluster, "every")
    slots = sorted(runs)
    assert contiguous(slots), slots
    assert len({r.idempotency_key for r in runs.values()}) == len(runs)
    dispatched_once(cluster, runs)
    wait_until(
        lambda: all(cluster.client.status(r.id)["state"] == "succeeded" for r in runs.values()),
        timeout=90,
        what=f"every run to succeed\n{cluster.tail()}",
    )
    assert T.count(cluster.entries(), "end", "a") == len(runs), "each slot's run ran once"


def test_a_scheduler_sigkilled_while_it_fires(cluster: Cluster) -> None:
    seed = int(os.environ.get("ORCH_TEST_SEED") or time.time_ns())
    chance = random.Random(seed)
    print(f"seed {seed}")  # shown with a failure, to replay it
    cluster.overrides.update(FAST)
    cluster.start_scheduler("scheduler-1")
    cluster.start_scheduler("scheduler-2")
    schedule(cluster, "every", CatchUp.ALL)
    wait_slots(cluster, "every", 3)
    time.sleep(chance.random())  # not a wait: a random moment within the second of firing
    victim = chance.choice(["scheduler-1", "scheduler-2"])
    cluster.signal(victim, signal.SIGKILL)
    killed_at = len(fired(cluster, "every"))
    wait_slots(cluster, "every", killed_at + 12)  # the claim expires (3 x lease TTL), the survivor goes on
    ScheduleStore(cluster.services.repository.sessions).set_paused("every", True)
    runs = fired(cluster, "every")
    assert contiguous(sorted(runs)), (seed, sorted(runs))
    dispatched_once(cluster, runs)
    assert all(r.state is RunState.QUEUED for r in runs.values()), "no node: dispatched, waiting"


def test_catchup_after_ten_seconds_of_downtime_under_each_policy(cluster: Cluster) -> None:
    grace = 2.0
    cluster.overrides.update({**FAST, "ORCHESTRATOR_SCHEDULE_GRACE": str(grace)})
    cluster.start_scheduler("scheduler-1")
    for policy in CatchUp:
        schedule(cluster, policy.value, policy)
    for policy in CatchUp:
        wait_slots(cluster, policy.value, 2)
    cluster.kill("scheduler-1")
    down_from = redis_now(cluster)
    wait_until(
        lambda: redis_now(cluster) >= down_from + timedelta(seconds=10), timeout=30, what="10 s of downtime"
    )
    cluster.start_scheduler("scheduler-2")
    back = redis_now(cluster)
    for policy in CatchUp:
        wait_until(
            lambda p=policy: max(fired(cluster, p.value)) > back + timedelta(seconds=2),
            timeout=90,
            what=f"{policy} to fire again\n{cluster.tail()}",
        )
    # Late for any evaluation after the restart: missed under none and latest.
    downtime = _seconds(down_from + timedelta(seconds=1), back - timedelta(seconds=grace))
    for policy in CatchUp:
        runs = fired(cluster, policy.value)
        late = [s for s, r in runs.items() if (r.submitted_at - s).total_seconds() > grace + 1]
        if policy is CatchUp.ALL:
            assert contiguous(sorted(runs)), sorted(runs)
            assert len(late) >= 8, "the downtime's slots fired when the scheduler came back"
        else:
            assert [s for s in downtime if s in runs] == [], (policy, "missed slots never run")
            assert late == [], policy
            assert contiguous(sorted(s for s in runs if s > back)), "on time again"


def _seconds(start: datetime, end: datetime) -> list[datetime]:
    """The whole seconds strictly between ``start`` and ``end``."""
    first = start.replace(microsecond=0) + timedelta(seconds=1)
    return [first + timedelta(seconds=n) for n in range(int((end - first).total_seconds()))]
