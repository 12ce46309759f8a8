"""Schedules in process: slots fired once, catch-up and overlap policies, DST, crashes mid-fire.

The harness of ``test_scheduler.py`` (a real Redis, SQLite and PostgreSQL, a
recording Celery app). Each scheduler's operations are evaluated with a given
``now``, so downtime and daylight-saving nights are played without waiting;
``test_operations_processes.py`` does the same with real processes and time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.operations import Operations
from orchestrator.control.schedules import ScheduleRunner, slot_key, slot_run_id
from orchestrator.control.slots import Timing
from orchestrator.observability.metrics import metrics
from orchestrator.packages.validation import parse_package
from orchestrator.state.catalog import Catalog
from orchestrator.state.schedules import ScheduleSpec, ScheduleStore
from orchestrator.state.states import CatchUp, Overlap, RunState
from tests.integration.test_scheduler import Harness, make_harness, package, task

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
NIGHTLY = package(task("a"), name="nightly_pkg", variables={"day": {"type": "str", "default": "x"}})


class Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` survives it."""


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


def deploy(harness: Harness, definition: dict[str, Any] = NIGHTLY) -> int:
    deployed, _ = Catalog(harness.repo.sessions).deploy(parse_package(definition))
    return deployed.version


def add(harness: Harness, name: str = "every", **fields: Any) -> ScheduleStore:
    deploy(harness)
    fields.setdefault("every_seconds", 1)
    store = ScheduleStore(harness.repo.sessions)
    store.add(ScheduleSpec(name=name, package="nightly_pkg", **fields))
    return store


def operations(harness: Harness, owner: str, **settings: Any) -> Operations:
    """A scheduler's operations (its own connections, as another process would have)."""
    services = harness.services(schedule_grace=3.0, **settings)
    from orchestrator.control.scheduler import Scheduler

    return Operations(services, Scheduler(services).submit, owner=owner)


def runs(harness: Harness, schedule: str = "every") -> dict[str, Any]:
    return {r.id: r for r in harness.repo.list_runs(limit=10_000) if r.id.startswith(schedule + "-")}


def slots_fired(harness: Harness, schedule: str = "every") -> list[datetime]:
    return sorted(
        datetime.strptime(run_id.rsplit("-", 1)[1], "%Y%m%dT%H%M%S%z") for run_id in runs(harness, schedule)
    )


def dispatches(harness: Harness) -> dict[str, int]:
    counted: dict[str, int] = {}
    for message in harness.messages():
        counted[message.run_id] = counted.get(message.run_id, 0) + 1
    return counted


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start(ops: Operations, seconds: float = 0) -> None:
    """The first evaluation sets the cursor to the next slot after ``now``."""
    ops.schedules.tick(at(seconds))


# -- one run per slot ------------------------------------------------------------------------------


def test_a_slot_fires_one_run_with_the_schedule_key_and_the_deployed_version(harness: Harness) -> None:
    add(harness, variables={"values": {"day": "mon"}, "secrets": {}})
    ops = operations(harness, "s1")
    start(ops, -0.5)  # cursor: T0
    ops.schedules.tick(at(0.2))

    run_id = slot_run_id("every", T0)
    assert run_id == "every-20261125T120000Z"
    run = harness.repo.run_row(run_id)
    assert (run.state, run.package, run.package_version) == (RunState.QUEUED, "nightly_pkg", 1)
    assert run.idempotency_key == slot_key("every", T0) == "schedule:every:2026-11-25T12:00:00Z"
    assert run.variables["values"] == {"day": "mon"}
    assert dispatches(harness) == {run_id: 1}
    row = ScheduleStore(harness.repo.sessions).get("every")
    assert (row.next_slot_at, row.last_slot_at, row.last_run_id, row.claim_owner) == (at(1), T0, run_id, None)

    ops.schedules.tick(at(0.5))  # nothing new is due
    assert dispatches(harness) == {run_id: 1}


def test_two_schedulers_evaluating_at_once_start_each_slot_once(harness: Harness) -> None:
    add(harness, catchup=CatchUp.ALL, overlap=Overlap.ALLOW)
    schedulers = [operations(harness, f"s{n}") for n in range(2)]
    start(schedulers[0], -0.5)
    # One clock for both, as the Redis server's is: it moves on by 0.1 s after both evaluated.
    clock = {"tenths": 0}
    barrier = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []

    def evaluate(ops: Operations) -> None:
        try:
            while clock["tenths"] < 200:
                ops.schedules.tick(at(clock["tenths"] / 10))
                if barrier.wait() == 0:
                    clock["tenths"] += 1
                barrier.wait()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=evaluate, args=(ops,)) for ops in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == []
    assert slots_fired(harness) == [at(n) for n in range(20)]
    assert dispatches(harness) == {slot_run_id("every", at(n)): 1 for n in range(20)}, "each dispatched once"


# -- killed mid-fire -------------------------------------------------------------------------------


def killed(*args: Any, **kwargs: Any) -> Any:
    raise Killed


# Where the doomed scheduler dies, named after the last step it completed.
WINDOWS: dict[str, Callable[[Operations], None]] = {
    "claimed": lambda ops: setattr(ops.schedules, "submit", killed),
    # The run and its first dispatch are one SQL transaction; the message is sent after it.
    "run_recorded": lambda ops: setattr(ops.services.app, "send_task", killed),
    "dispatched": lambda ops: setattr(ops.schedules.store, "advance", killed),
}


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_a_scheduler_killed_mid_fire_is_covered_and_the_slot_starts_once(
    harness: Harness, window: str
) -> None:
    add(harness)
    doomed, survivor = operations(harness, "doomed"), operations(harness, "survivor")
    start(survivor, -0.5)
    WINDOWS[window](doomed)
    with pytest.raises(Killed):
        doomed.schedules.tick(at(0.1))
    row = ScheduleStore(harness.repo.sessions).get("every")
    assert (row.claim_owner, row.next_slot_at) == ("doomed", T0), "dead with the claim, the slot unhandled"

    survivor.schedules.tick(at(0.2))
    assert ScheduleStore(harness.repo.sessions).get("every").next_slot_at == T0, "the claim is still live"
    claim_expired = at(0.2 + survivor.schedules.claim_seconds + 0.1)
    survivor.schedules.tick(claim_expired)

    run_id = slot_run_id("every", T0)
    assert harness.repo.run_row(run_id).attempt == 1
    assert ScheduleStore(harness.repo.sessions).get("every").last_run_id == run_id
    assert [e.kind for e in harness.repo.events(run_id)] == ["submitted", "dispatched"]
    if window == "run_recorded":
        # Recorded with its dispatch, the message never sent: the run is not submitted again; its
        # claim deadline is set, so the liveness tick dispatches it again once that passes.
        assert dispatches(harness).get(run_id) is None
        assert harness.liveness.client.zscore(harness.liveness._key("pending"), run_id) is not None
    else:
        assert dispatches(harness).get(run_id) == 1, "dispatched exactly once, by whichever got that far"


# -- catch-up after downtime -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("catchup", "fired", "late"),
    [
        (CatchUp.NONE, [0, 1, *range(9, 13)], 0),  # 9, 10, 11 within the 3 s grace at 12.5; 12 on time
        (CatchUp.LATEST, [0, 1, *range(9, 13)], 0),
        (CatchUp.ALL, list(range(13)), 7),  # 2..8 late
    ],
)
def test_after_ten_seconds_of_downtime_the_catchup_policy_decides(
    harness: Harness, catchup: CatchUp, fired: list[int], late: int
) -> None:
    add(harness, catchup=catchup, overlap=Overlap.ALLOW)
    ops = operations(harness, "s1")
    start(ops, -0.5)
    ops.schedules.tick(at(0.1))
    ops.schedules.tick(at(1.1))
    before = {
        r: metrics().schedule_runs.labels(schedule="every", result=r)._value.get()
        for r in ("caught_up", "missed")
    }
    # Down from 1.1 s to 11.5 s: slots 2..11 pass unevaluated; 9, 10, 11 are still within the grace.
    ops.schedules.tick(at(11.5))
    ops.schedules.tick(at(12.2))
    assert slots_fired(harness) == [at(n) for n in fired]
    after = {
        r: metrics().schedule_runs.labels(schedule="every", result=r)._value.get()
        for r in ("caught_up", "missed")
    }
    assert after["caught_up"] - before["caught_up"] == late
    assert after["missed"] - before["missed"] == (0 if catchup is CatchUp.ALL else 7)


def test_latest_runs_the_most_recent_missed_slot_when_nothing_is_on_time(harness: Harness) -> None:
    for catchup in CatchUp:
        add(harness, name=f"c-{catchup.value}", every_seconds=60, catchup=catchup, overlap=Overlap.ALLOW)
    ops = operations(harness, "s1")
    start(ops, -30)  # cursor: T0
    ops.schedules.tick(at(600 + 30))  # down for ten minutes: slots 0..10 min, the last 30 s late
    fired = {c: slots_fired(harness, f"c-{c.value}") for c in CatchUp}
    assert fired[CatchUp.NONE] == []
    assert fired[CatchUp.LATEST] == [at(600)]
    assert fired[CatchUp.ALL] == [at(60 * n) for n in range(11)]
    for catchup in CatchUp:
        assert ScheduleStore(harness.repo.sessions).get(f"c-{catchup.value}").next_slot_at == at(660)


def test_every_schedules_on_time_slots_fire_before_any_catch_up(harness: Harness) -> None:
    """A schedule catching up on downtime does not make another's on-time slots wait behind it."""
    add(harness, name="a-all", catchup=CatchUp.ALL, overlap=Overlap.ALLOW)
    add(harness, name="b-latest", every_seconds=60, catchup=CatchUp.LATEST, overlap=Overlap.ALLOW)
    add(harness, name="z-none", catchup=CatchUp.NONE, overlap=Overlap.ALLOW)
    ops = operations(harness, "s1")
    start(ops, -0.5)  # cursors: T0 (every second), T0 (every minute)
    ops.schedules.tick(at(0.1))
    before = metrics().schedule_runs.labels(schedule="b-latest", result="missed")._value.get()
    # Down from 0.1 s to 125.5 s: slots up to 122 are late, 123..125 on time (grace 3 s).
    ops.schedules.tick(at(125.5))
    order = [m.run_id for m in harness.messages()][3:]  # after the slots of T0
    on_time = [slot_run_id(name, at(n)) for name in ("a-all", "z-none") for n in (123, 124, 125)]
    late = [r for r in order if r not in on_time]
    assert order.index(slot_run_id("z-none", at(123))) < order.index(late[0]), order[:10]
    assert slots_fired(harness, "z-none") == [T0, at(123), at(124), at(125)]
    assert slots_fired(harness, "a-all") == [at(n) for n in range(101)], "all, FIRE_LIMIT a tick"
    assert slots_fired(harness, "b-latest") == [T0, at(120)]  # the latest late slot, once
    missed = metrics().schedule_runs.labels(schedule="b-latest", result="missed")._value.get() - before
    assert missed == 1, "the minute at 60 s, counted once though planned twice"


# -- overlap ------------------------------------------------------------------------------------------


def finish(harness: Harness, run_id: str) -> None:
    harness.repo.end_run(run_id, RunState.SUCCEEDED, None)


@pytest.mark.parametrize("overlap", list(Overlap))
def test_the_overlap_policy_decides_while_the_previous_run_is_active(
    harness: Harness, overlap: Overlap
) -> None:
    add(harness, every_seconds=10, overlap=overlap, catchup=CatchUp.ALL)
    ops = operations(harness, "s1")
    start(ops, -5)
    for second in (0.1, 10.1, 20.1):  # the run of slot 0 never ends meanwhile
        ops.schedules.tick(at(second))
    expected = {Overlap.SKIP: [0], Overlap.QUEUE: [0], Overlap.ALLOW: [0, 10, 20]}[overlap]
    assert slots_fired(harness) == [at(s) for s in expected]
    row = ScheduleStore(harness.repo.sessions).get("every")
    assert row.queued_slot_at == (at(10) if overlap is Overlap.QUEUE else None), "one slot waits, no more"

    finish(harness, slot_run_id("every", T0))
    ops.schedules.tick(at(25))
    expected += {Overlap.SKIP: [], Overlap.QUEUE: [10], Overlap.ALLOW: []}[overlap]
    assert slots_fired(harness) == [at(s) for s in expected], "a waiting slot starts when the run ends"
    ops.schedules.tick(at(30.1))  # slot 30: the queued run of slot 10 is still active
    expected += {Overlap.SKIP: [30], Overlap.QUEUE: [], Overlap.ALLOW: [30]}[overlap]
    assert slots_fired(harness) == [at(s) for s in expected]


# -- time zones and daylight saving ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("night", "expected"),
    [
        # Clocks go from 02:00 to 03:00: 02:30 does not exist, the slot fires at 03:00 CEST.
        (datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        # Clocks go from 03:00 back to 02:00: 02:30 happens twice, the slot fires once (CEST).
        (datetime(2026, 10, 25, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_a_0230_slot_fires_once_on_a_daylight_saving_night(
    harness: Harness, night: datetime, expected: datetime
) -> None:
    add(harness, name="berlin", every_seconds=None, cron="30 2 * * *", timezone="Europe/Berlin")
    ops = operations(harness, "s1")
    ops.schedules.tick(night - timedelta(hours=12))
    for minutes in range(0, 24 * 60 + 1, 10):  # evaluated every ten minutes through the night and day
        ops.schedules.tick(night - timedelta(hours=3) + timedelta(minutes=minutes))
    assert slots_fired(harness, "berlin") == [expected]
    following = ScheduleStore(harness.repo.sessions).get("berlin").next_slot_at
    assert following == Timing(cron="30 2 * * *", timezone="Europe/Berlin").next_after(expected)
    assert following is not None and following - expected > timedelta(hours=23)


# -- pause, resume, removal, refusals --------------------------------------------------------------


def test_a_paused_schedule_fires_nothing_and_resumes_at_its_next_slot(harness: Harness) -> None:
    store = add(harness)
    ops = operations(harness, "s1")
    start(ops, -0.5)
    store.set_paused("every", True)
    for second in range(1, 5):
        ops.schedules.tick(at(second + 0.1))
    assert slots_fired(harness) == []
    store.set_paused("every", False)
    ops.schedules.tick(at(5.1))  # resumed: the next slot after now
    ops.schedules.tick(at(6.1))
    assert slots_fired(harness) == [at(6)]


def test_a_slot_of_a_package_no_longer_valid_is_a_refused_run(harness: Harness) -> None:
    add(harness, version=7)  # no such version
    ops = operations(harness, "s1")
    start(ops, -0.5)
    ops.schedules.tick(at(0.1))
    run = harness.repo.run_row(slot_run_id("every", T0))
    assert run.state is RunState.FAILED
    assert run.error is not None and "has no version 7" in run.error
    assert [e.kind for e in harness.repo.events(run.id)] == ["refused"]
    assert ScheduleStore(harness.repo.sessions).get("every").next_slot_at == at(1), "it moves on"


def test_a_signed_cluster_fires_signed_submissions(harness: Harness) -> None:
    harness.overrides["submit_key"] = "k"
    add(harness)
    ops = operations(harness, "s1")
    start(ops, -0.5)
    ops.schedules.tick(at(0.1))
    assert harness.repo.run_row(slot_run_id("every", T0)).state is RunState.QUEUED


def test_runner_claims_expire(harness: Harness) -> None:
    add(harness)
    runner: ScheduleRunner = operations(harness, "s1").schedules
    assert runner.claim_seconds >= 2.0
