"""Retention: the purge on SQLite and PostgreSQL with a real checkpoint directory.

Runs are made through the real paths (the scheduler's submission, the
repository's transitions, the filesystem store's writes), then aged by moving
their ``finished_at`` back. The purge must remove old finished runs with
their history and directories (fence files included), and never an active
run or a kept checkpoint unless asked to.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from checkpoints import Checkpoint
from orchestrator.control.operations import Operations
from orchestrator.control.retention import Purger
from orchestrator.control.scheduler import Scheduler
from orchestrator.state.models import Attempt, Event, Run, TaskLog, TaskLogTrim, TaskRun
from orchestrator.state.retention import RetentionStore
from orchestrator.state.states import RunState, TaskState
from orchestrator.state.tasklogs import TaskLogs, trim
from orchestrator.state.types import utcnow
from tests.integration.test_scheduler import Harness, make_harness, package, task
from tests.support.ui import attempt_reporter

PKG = package(task("a"), task("b", "a"))
OLD = timedelta(days=40)


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


def purger(harness: Harness, batch: int = 100) -> Purger:
    return Purger(RetentionStore(harness.repo.sessions), harness.store, batch=batch)


def make_run(harness: Harness, run_id: str, state: RunState | None, *, checkpoint: bool = False) -> str:
    """A submitted run taken to ``state`` (None: left running), with history and a fence file."""
    harness.submit(PKG, run_id=run_id)
    repo = harness.repo
    repo.mark_claimed(run_id, 1, 1, "n1")
    reporter = attempt_reporter(repo, run_id, 1, "n1")
    reporter.task_started("a", None, 1)  # a task row, written as the cluster writes it
    reporter.task_log("a", None, 1, "info", "first line of a")  # log lines, with a drop note
    reporter.task_log("a", None, 1, "info", "second line of a")
    with repo.sessions.begin() as session:
        trim(session, {(run_id, "a")}, limit=1)
    reporter.flush()
    harness.store.fence("pkg", run_id, 1)
    if checkpoint:
        harness.store.save(Checkpoint(package="pkg", definition_hash="h", run_id=run_id, epoch=1))
    if state is not None:
        repo.finish_attempt(run_id, 1, 1, "n1", state, None, {"a": TaskState.SUCCEEDED})
    return run_id


def age(harness: Harness, *run_ids: str, by: timedelta = OLD) -> None:
    with harness.repo.sessions.begin() as session:
        session.execute(update(Run).where(Run.id.in_(run_ids)).values(finished_at=utcnow() - by))


def rows(harness: Harness, model: Any, run_id: str) -> int:
    column = model.id if model is Run else model.run_id
    with harness.repo.sessions() as session:
        return int(
            session.execute(select(func.count()).select_from(model).where(column == run_id)).scalar_one()
        )


def directory(harness: Harness, run_id: str) -> Path:
    return harness.store.run_dir("pkg", run_id)


def test_old_finished_runs_go_with_their_history_and_directories(harness: Harness) -> None:
    done = make_run(harness, "done", RunState.SUCCEEDED)
    recent = make_run(harness, "recent", RunState.SUCCEEDED)
    age(harness, done)
    assert (directory(harness, done) / "epoch").exists()
    history = (Run, Attempt, TaskRun, Event, TaskLog, TaskLogTrim)
    assert all(rows(harness, model, done) for model in history)

    report = purger(harness).purge(timedelta(days=30))

    assert (report.runs, report.checkpoints, report.errors) == (1, 1, 0)
    assert report.attempts == 1 and report.tasks == 1 and report.events >= 3 and report.logs == 1
    assert [rows(harness, model, done) for model in history] == [0] * len(history)
    assert TaskLogs(harness.repo.sessions).lines(done) == [], "neither lines nor the drop note stay"
    assert [line.message for line in TaskLogs(harness.repo.sessions).lines(recent)][1:] == [
        "second line of a"
    ]
    assert not directory(harness, done).exists(), "the directory goes, fence file included"
    assert directory(harness, done).parent.is_dir(), "the package's directory stays for its other runs"
    assert rows(harness, Run, recent) == 1 and directory(harness, recent).exists()


def test_active_runs_and_kept_checkpoints_are_never_touched(harness: Harness) -> None:
    running = make_run(harness, "running", None, checkpoint=True)
    queued = harness.submit(PKG, run_id="queued")
    failed = make_run(harness, "failed", RunState.FAILED, checkpoint=True)
    cancelled = make_run(harness, "cancelled", RunState.CANCELLED, checkpoint=True)
    failed_bare = make_run(harness, "failed-bare", RunState.FAILED)  # no checkpoint was kept
    # An active run with an old finished_at (resumed after it failed long ago) is still active.
    with harness.repo.sessions.begin() as session:
        session.execute(update(Run).values(finished_at=utcnow() - OLD))

    report = purger(harness).purge(timedelta(days=30))
    assert (report.runs, report.kept) == (1, 2)
    assert rows(harness, Run, failed_bare) == 0
    for run_id in (running, queued, failed, cancelled):
        assert rows(harness, Run, run_id) == 1, run_id
    for run_id in (running, failed, cancelled):
        assert harness.store.load("pkg", run_id) is not None, run_id

    report = purger(harness).purge(timedelta(days=30), include_failed=True)
    assert (report.runs, report.kept) == (2, 0)
    assert rows(harness, Run, failed) == rows(harness, Run, cancelled) == 0
    assert not directory(harness, failed).exists() and not directory(harness, cancelled).exists()
    assert rows(harness, Run, running) == rows(harness, Run, queued) == 1
    assert harness.store.load("pkg", running) is not None


def test_the_purged_runs_epoch_keys_leave_redis(harness: Harness) -> None:
    done, active = make_run(harness, "done", RunState.SUCCEEDED), make_run(harness, "active", None)
    age(harness, done)
    assert harness.liveness.epoch(done) == harness.liveness.epoch(active) == 1
    forgetting = Purger(RetentionStore(harness.repo.sessions), harness.store, forget=harness.liveness.forget)
    assert forgetting.purge(timedelta(days=30)).redis_keys == 1
    assert harness.liveness.epoch(done) == 0
    assert harness.liveness.epoch(active) == 1, "an active run keeps its fence"


def test_a_dry_run_counts_and_deletes_nothing(harness: Harness) -> None:
    for n in range(3):
        age(harness, make_run(harness, f"old-{n}", RunState.SUCCEEDED))
    report = purger(harness).purge(timedelta(days=30), dry_run=True)
    assert (report.runs, report.attempts, report.checkpoints, report.dry_run) == (3, 3, 3, True)
    assert report.logs == 3
    assert all(rows(harness, TaskLog, f"old-{n}") == 1 for n in range(3))
    assert all(rows(harness, Run, f"old-{n}") == 1 for n in range(3))
    assert all(directory(harness, f"old-{n}").exists() for n in range(3))


def test_refused_submissions_go_too(harness: Harness) -> None:
    payload = harness.payload(PKG, run_id="refused")
    payload["package"]["tasks"][1]["depends_on"] = ["nope"]
    assert harness.scheduler.submit(payload) is None
    age(harness, "refused")
    assert purger(harness).purge(timedelta(days=30)).runs == 1
    assert rows(harness, Run, "refused") == 0


def test_a_purge_in_small_batches_while_runs_are_created_and_finished(harness: Harness) -> None:
    for n in range(25):
        age(harness, make_run(harness, f"old-{n}", RunState.SUCCEEDED))
    stop, errors, made = threading.Event(), [], []
    writer = harness.services()
    scheduler = Scheduler(writer)

    def busy() -> None:
        """Another process keeps submitting runs and finishing half of them."""
        try:
            n = 0
            while not stop.is_set() and n < 200:
                run_id = f"new-{n}"
                payload = harness.payload(PKG, client=writer, run_id=run_id)
                scheduler.submit(payload)
                if n % 2:
                    writer.repository.mark_claimed(run_id, 1, 1, "n2")
                    writer.repository.finish_attempt(run_id, 1, 1, "n2", RunState.SUCCEEDED, None, {})
                made.append(run_id)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        # A cutoff of "now": runs finishing during the purge are fair game, active ones never.
        reports = [purger(harness, batch=4).purge(timedelta(0)) for _ in range(3)]
    finally:
        stop.set()
        thread.join(60)
    assert errors == []
    assert sum(r.errors for r in reports) == 0
    assert all(rows(harness, Run, f"old-{n}") == 0 for n in range(25))
    for n, run_id in enumerate(made):
        if n % 2 == 0:  # submitted, never finished: still there, queued
            assert harness.repo.run_row(run_id).state is RunState.QUEUED, run_id
    purged = sum(r.runs for r in reports)
    assert purged >= 25
    with harness.repo.sessions() as session:
        left = session.execute(select(func.count()).select_from(Run)).scalar_one()
    assert left == 25 + len(made) - purged


def test_the_daily_purge_runs_once_among_all_schedulers(harness: Harness) -> None:
    age(harness, make_run(harness, "old", RunState.SUCCEEDED))
    schedulers = [
        Operations(harness.services(retention_days=30), lambda p: None, owner=f"s{n}") for n in range(3)
    ]
    now = schedulers[0].now()
    started = [ops.maybe_purge(now) for ops in schedulers]
    assert started.count(True) == 1
    runner = schedulers[started.index(True)]
    assert runner.purging is not None
    runner.purging.join(30)
    job = RetentionStore(harness.repo.sessions).job("purge")
    assert job is not None and job.owner == runner.owner and job.result["runs"] == 1
    assert rows(harness, Run, "old") == 0

    later = now + timedelta(hours=23)
    assert [ops.maybe_purge(later) for ops in schedulers] == [False, False, False], "not before a day"
    next_day = now + timedelta(days=1, seconds=1)
    assert sorted(ops.maybe_purge(next_day) for ops in schedulers) == [False, False, True]
    for ops in schedulers:
        if ops.purging is not None:
            ops.purging.join(30)


def test_no_daily_purge_with_zero_retention(harness: Harness) -> None:
    ops = Operations(harness.services(retention_days=0), lambda p: None, owner="s0")
    assert ops.maybe_purge(ops.now()) is False
    assert RetentionStore(harness.repo.sessions).job("purge") is None
