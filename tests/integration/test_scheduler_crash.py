"""A scheduler killed while it resubmits a lost run: another scheduler finishes the recovery.

A recovery is three steps: fence the expired lease in Redis (which also sets a claim
deadline for the next attempt), record the loss and the new attempt in SQL, send the
attempt message. In process, a scheduler is "killed" deterministically in each window
between the steps (an exception nothing catches, then it is never used again) and a second
scheduler's ticks must recover the run through the claim deadline. With real processes,
one of two schedulers is SIGKILLed at a random moment of a real recovery; the run must
still finish exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.liveness import Claim
from orchestrator.control.scheduler import Scheduler
from orchestrator.state import AttemptState
from orchestrator.state.states import RunState
from tests.integration.test_failover import FAST, HOLD_AT, finished, holding, start, ten_tasks
from tests.integration.test_scheduler import TWO, Harness, kinds, make_harness
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(150)


class SchedulerKilled(BaseException):
    """Stands for SIGKILL: a BaseException, so no ``except Exception`` of the tick survives it."""


def killed(*args: Any, **kwargs: Any) -> Any:
    raise SchedulerKilled


# Where the doomed scheduler dies, named after the last step it completed.
WINDOWS: dict[str, Callable[[Scheduler], None]] = {
    "fenced_in_redis": lambda s: setattr(s.services.repository, "record_lost", killed),
    "loss_recorded_in_sql": lambda s: setattr(s, "_send", killed),
    "dispatch_recorded_in_sql": lambda s: setattr(s.services.app, "send_task", killed),
}


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_a_scheduler_killed_mid_resubmission_is_covered_by_another(harness: Harness, window: str) -> None:
    run_id = harness.submit(TWO)
    first = harness.last(run_id)
    harness.node("n1").claim_and_die(first)
    wait_until(lambda: run_id in harness.liveness.expired_leases(), timeout=10, what="the lease to expire")

    doomed = Scheduler(harness.services())
    WINDOWS[window](doomed)
    with pytest.raises(SchedulerKilled):
        doomed.tick()
    # Whatever the window, the lost attempt is already fenced in Redis: it can neither renew
    # nor claim again, and nobody holds the run.
    assert harness.liveness.epoch(run_id) == 2
    assert harness.liveness.renew(run_id, 1, "n1", 1) is Claim.STALE
    assert harness.liveness.claim(run_id, 1, "n1", 1).status is Claim.STALE
    assert harness.liveness.lease_owner(run_id) == {}
    assert harness.messages(run_id) == [first], "the dead scheduler sent nothing"

    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the survivor to resubmit the run")
    retry = harness.last(run_id)
    assert retry.epoch == 3, "the survivor fenced again, above the dead scheduler's epoch"
    for _ in range(3):
        harness.scheduler.tick()
    assert len(harness.messages(run_id)) == 2, "resubmitted once"

    assert harness.node("n1").run(first) is None, "the lost attempt's message is fenced"
    result = harness.node("n2").run(retry)
    assert result is not None and result.state is RunState.SUCCEEDED
    run = harness.repo.run_row(run_id)
    assert (run.state, run.epoch) == (RunState.SUCCEEDED, 3)
    states = [a.state for a in harness.repo.attempts(run_id)]
    assert states[-1] is AttemptState.SUCCEEDED and set(states[:-1]) == {AttemptState.LOST}, states
    assert kinds(harness, run_id).count("finished") == 1
    # Each attempt recorded after the first is a resubmission (one never sent, if the dead
    # scheduler recorded its dispatch): the history says what happened.
    assert kinds(harness, run_id).count("resubmitted") == len(states) - 1
    log = harness.log()
    assert T.count(log, "end", "a") == 1 and T.count(log, "end", "b") == 1


def lease_deadline(cluster: Cluster, run_id: str) -> float:
    """The run's lease deadline on the Redis clock (0 once it was fenced and removed)."""
    liveness = cluster.services.liveness
    return liveness.client.zscore(liveness._key("leases"), run_id) or 0


# Moments of the recovery, seen from outside, at which one scheduler is SIGKILLed. Each stays
# true once reached, so the wait cannot miss it.
MOMENTS: dict[str, Callable[[Cluster, str, float], bool]] = {
    "lease_expired": lambda c, run, deadline: c.services.liveness.server_ms() >= deadline,
    "fenced_in_redis": lambda c, run, deadline: c.services.liveness.epoch(run) >= 2,
    "resubmitted_in_sql": lambda c, run, deadline: c.client.status(run)["attempt"] >= 2,
}


def test_a_scheduler_sigkilled_at_a_random_moment_of_recovery(cluster: Cluster) -> None:
    seed = int(os.environ.get("ORCH_TEST_SEED") or time.time_ns())  # set it to replay a failure
    chance = random.Random(seed)
    moment = chance.choice(sorted(MOMENTS))
    victim = chance.choice(["scheduler-1", "scheduler-2"])
    print(f"seed {seed}: SIGKILL {victim} once {moment}")  # shown with the failure

    cluster.overrides.update(FAST)
    start(cluster, nodes=2, schedulers=2)
    hold = cluster.tmp / "release"
    run_id = cluster.client.submit(ten_tasks(hold))
    wait_until(lambda: holding(cluster, 1), timeout=60, what=f"t6 to hold\n{cluster.tail()}")
    cluster.kill(cluster.client.status(run_id)["node"])
    deadline = lease_deadline(cluster, run_id)
    hold.touch()
    wait_until(
        lambda: MOMENTS[moment](cluster, run_id, deadline), timeout=60, what=f"{moment}\n{cluster.tail()}"
    )
    cluster.signal(victim, signal.SIGKILL)

    final = finished(cluster, run_id, timeout=90)
    assert final["state"] == "succeeded", (seed, final)
    repo = cluster.services.repository
    attempts = repo.attempts(run_id)
    succeeded = [a for a in attempts if a.state is AttemptState.SUCCEEDED]
    assert len(succeeded) == 1 and attempts[-1] is not attempts[0], (seed, attempts)
    assert {a.state for a in attempts[:-1]} == {AttemptState.LOST}, (seed, attempts)
    events = [e.kind for e in repo.events(run_id)]
    assert events.count("finished") == 1 and events.count("resumed") == 1, (seed, events)
    entries = cluster.entries()
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 10):
        assert T.count(entries, "end", f"t{n}") == 1, (seed, f"t{n}")
    assert [e["unit"] for e in entries if e["event"] == "saved"] == list(range(8)), seed
    assert next(e["unit"] for e in entries if e["event"] == "unit" and e["epoch"] > 1) == HOLD_AT
