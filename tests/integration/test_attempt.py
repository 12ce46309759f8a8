"""``run_attempt`` in process: the test plays the worker nodes, on a real Redis and SQLite/PostgreSQL.

Attempts run the task functions of :mod:`tests.support.tasks` against a
:class:`~checkpoints.FilesystemCheckpointStore` under ``tmp_path``. A node is
"lost" by cutting its lease renewals (:meth:`Node.cut_off`); a run is fenced
under a holding task by dispatching a newer attempt, as the scheduler does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.client import Client
from orchestrator.control.views import run_status, status_items
from orchestrator.state import AttemptState
from orchestrator.state.states import RunState, TaskState
from tests.integration.test_scheduler import (
    WAIT,
    Attempt,
    Harness,
    Node,
    checkpoint,
    events,
    kinds,
    make_harness,
    package,
    task,
)
from tests.support import tasks as T
from tests.support.cli import wait_until
from workers.executor import ExecutionHooks, RunResult


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


def started(harness: Harness, run_id: str, name: str = "n1", **settings: Any) -> tuple[Node, Attempt]:
    """Run the run's latest attempt on a new node in the background."""
    node = harness.node(name, **settings)
    attempt = node.start(harness.last(run_id))
    harness.attempts.append(attempt)
    return node, attempt


def task_states(harness: Harness, run_id: str) -> dict[str, TaskState]:
    return {task_id: row.state for task_id, row in harness.repo.task_states(run_id).items()}


def epoch_file(harness: Harness, run_id: str) -> Path:
    return harness.store.run_dir("pkg", run_id) / "epoch"


def checkpoint_files(harness: Harness, run_id: str) -> dict[str, bytes]:
    """Every snapshot and journal of the run, by name (format 2 keeps its checkpoint in both)."""
    directory = harness.store.run_dir("pkg", run_id)
    files = [*directory.glob("snapshot-*.json"), *directory.glob("journal-*.log")]
    return {path.name: path.read_bytes() for path in files}


# -- a whole run -----------------------------------------------------------------------------


def test_a_full_run_succeeds_and_reports_every_step(harness: Harness) -> None:
    definition = package(task("a"), task("b", "a"), task("c", "b", foreach=["x", "y"]))
    run_id = harness.submit(definition)

    result = harness.node("n1").run(harness.last(run_id))

    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.outputs["a"] == {"task": "a", "item": None, "epoch": 1}
    run = harness.repo.run_row(run_id)
    assert (run.state, run.node, run.attempt, run.error) == (RunState.SUCCEEDED, "n1", 1, None)
    assert run.started_at is not None and run.finished_at is not None
    assert task_states(harness, run_id) == {
        "a": TaskState.SUCCEEDED,
        "b": TaskState.SUCCEEDED,
        "c": TaskState.SUCCEEDED,
    }
    assert [(a.state, a.node) for a in harness.repo.attempts(run_id)] == [(AttemptState.SUCCEEDED, "n1")]
    assert kinds(harness, run_id) == [
        "submitted",
        "dispatched",
        "claimed",
        "task_done",
        "checkpoint_saved",
        "task_done",
        "checkpoint_saved",
        "item_done",
        "checkpoint_saved",
        "item_done",
        "checkpoint_saved",
        "task_done",
        "checkpoint_saved",
        "finished",
    ]
    assert [e.detail["task"] for e in events(harness, run_id, "task_done")] == ["a", "b", "c"]
    assert [e.detail["item"] for e in events(harness, run_id, "item_done")] == ["x", "y"]
    assert events(harness, run_id, "finished")[0].detail == {"state": "succeeded", "error": None}
    assert {e.node for e in harness.repo.events(run_id)} == {None, "n1"}
    assert T.count(harness.log(), "end", "a") == 1
    # The lease is released, and the checkpoint deleted (the run succeeded).
    assert harness.liveness.lease_owner(run_id) == {}
    assert harness.liveness.expired_leases() == []
    assert harness.liveness.overdue_dispatches() == []
    assert checkpoint(harness, run_id) is None


def test_a_foreach_shows_as_running_while_its_items_run(harness: Harness) -> None:
    """``status`` (and the UI) read the task rows the projection writes: a foreach whose items
    are running is running there, not pending until its last item is done; ``status`` counts
    its items done."""
    gate = threading.Event()
    harness.gates.append(gate)

    def hold_item_y(ctx: Any) -> None:
        if ctx.item == "y":
            T.record(ctx, "holding")
            gate.wait(WAIT)

    T.HOOKS["c"] = hold_item_y
    run_id = harness.submit(package(task("a"), task("c", "a", foreach=["x", "y", "z"])))
    _, attempt = started(harness, run_id)
    harness.wait_log("holding", "c", epoch=1)

    harness.tick_until(
        lambda: (
            task_states(harness, run_id).get("c") is TaskState.RUNNING
            and harness.repo.items_done(run_id) == {"c": 1}
        ),
        "the running foreach to show as running in SQL, with item x done",
    )
    status = run_status(harness.repo, run_id)
    assert status["tasks"] == {"a": "succeeded", "c": "running"}
    assert harness.repo.task_states(run_id)["c"].started_at is not None
    assert status["items"] == {"c": {"done": 1, "total": 3}}
    assert status_items(status) == {"c": "1 of 3 items"}

    gate.set()
    result = attempt.outcome()
    assert result is not None and result.state is RunState.SUCCEEDED
    assert task_states(harness, run_id) == {"a": TaskState.SUCCEEDED, "c": TaskState.SUCCEEDED}
    assert harness.repo.items_done(run_id) == {"c": 3}
    status = run_status(harness.repo, run_id)
    assert status["items"] == {"c": {"done": 3, "total": 3}}
    assert status_items(status) == {"c": "3 of 3 items"}


def test_the_items_of_a_foreach_over_an_expression_are_counted_so_far() -> None:
    items = {"listed": {"done": 1, "total": 2}, "computed": {"done": 1200, "total": None}}
    assert status_items({"items": items, "tasks": {"computed": "running"}}) == {
        "listed": "1 of 2 items",
        "computed": "1,200 items so far",
    }
    done = {"computed": {"done": 1, "total": None}}
    assert status_items({"items": done, "tasks": {"computed": "succeeded"}})["computed"] == "1 item"


def test_a_failing_task_fails_the_run_with_its_error(harness: Harness) -> None:
    run_id = harness.submit(package(task("a", params={"fail": True}), task("b", "a")))
    result = harness.node("n1").run(harness.last(run_id))
    assert result is not None and result.state is RunState.FAILED
    run = harness.repo.run_row(run_id)
    assert run.state is RunState.FAILED
    assert run.error is not None and "a failed on purpose" in run.error
    assert task_states(harness, run_id) == {"a": TaskState.FAILED, "b": TaskState.UPSTREAM_FAILED}
    assert harness.liveness.lease_owner(run_id) == {}


# -- messages that must do nothing ---------------------------------------------------------------


def test_a_duplicate_delivery_while_the_attempt_runs_does_nothing(harness: Harness) -> None:
    gate = harness.hold("a")
    run_id = harness.submit(package(task("a")))
    _, attempt = started(harness, run_id, "n1")
    harness.wait_log("holding", "a", epoch=1)
    before = kinds(harness, run_id)

    assert harness.node("n2").run(harness.last(run_id)) is None
    assert kinds(harness, run_id) == before
    assert harness.liveness.lease_owner(run_id)["node"] == "n1"
    assert T.count(harness.log(), "start", "a") == 1

    gate.set()
    result = attempt.outcome()
    assert result is not None and result.state is RunState.SUCCEEDED


def test_a_message_delivered_again_after_the_run_finished_does_nothing(harness: Harness) -> None:
    run_id = harness.submit(package(task("a"), task("b", "a")))
    message = harness.last(run_id)
    node = harness.node("n1")
    assert node.run(message) is not None
    before = kinds(harness, run_id)

    assert harness.node("n2").run(message) is None
    assert node.run(message) is None
    assert T.count(harness.log(), "start", "a") == 1, "a finished run never executes again"
    assert kinds(harness, run_id) == before
    run = harness.repo.run_row(run_id)
    assert (run.state, run.node) == (RunState.SUCCEEDED, "n1")
    assert harness.liveness.lease_owner(run_id) == {}
    assert harness.liveness.expired_leases() == []


def test_a_stale_message_does_nothing(harness: Harness) -> None:
    run_id = harness.submit(package(task("a")))
    stale = harness.last(run_id)
    harness.scheduler.dispatch(run_id, reason="dispatch_lost")  # a newer attempt supersedes it
    before = kinds(harness, run_id)

    assert harness.node("n1").run(stale) is None
    assert harness.log() == []
    assert kinds(harness, run_id) == before
    assert harness.liveness.lease_owner(run_id) == {}

    result = harness.node("n2").run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED


# -- fencing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old_node",
    [
        pytest.param({}, id="keeper-sees-the-fence"),
        # Renews nothing and distrusts nothing for a minute: only the store and SQL stop it.
        pytest.param({"heartbeat_interval": 60.0, "lease_ttl": 60.0}, id="keeper-unaware"),
    ],
)
def test_an_attempt_fenced_mid_task_stops_and_writes_nothing(
    harness: Harness, old_node: dict[str, Any]
) -> None:
    """The old attempt holds inside a task that saves progress; a newer attempt takes the run
    over and finishes it; the old one, let go, must not write, record or report anything."""
    harness.overrides["keep_checkpoints"] = True
    gate = threading.Event()
    harness.gates.append(gate)

    def hold_at_unit_two(ctx: Any) -> None:
        if ctx.epoch == 1 and ctx.progress.get() == {"done": 2}:
            T.record(ctx, "holding")
            gate.wait(WAIT)

    T.HOOKS["u:unit"] = hold_at_unit_two
    definition = package(task("a"), task("u", "a", fn="units", params={"units": 4}), task("c", "u"))
    run_id = harness.submit(definition)
    _, attempt = started(harness, run_id, "n1", **old_node)
    harness.wait_log("holding", "u", epoch=1)
    saved = checkpoint(harness, run_id)
    assert saved is not None and saved.progress == {"u": {"done": 2}}

    harness.scheduler.dispatch(run_id, reason="node_lost")  # fences epoch 1
    if not old_node:
        wait_until(attempt.lost.is_set, timeout=WAIT, what="the old attempt's keeper to see the fence")
    newer = harness.node("n2").run(harness.last(run_id))
    assert newer is not None and newer.state is RunState.SUCCEEDED
    assert newer.skipped == ["a"]
    final = checkpoint_files(harness, run_id)
    assert any(name.startswith("snapshot-") for name in final)
    assert epoch_file(harness, run_id).read_text().strip() == "2"
    events_before = kinds(harness, run_id)

    gate.set()
    assert attempt.outcome() is None

    assert checkpoint_files(harness, run_id) == final, "no write by the fenced attempt"
    assert epoch_file(harness, run_id).read_text().strip() == "2"
    kept = checkpoint(harness, run_id)
    assert kept is not None and kept.epoch == 2 and set(kept.tasks) == {"a", "u", "c"}
    assert kinds(harness, run_id) == events_before, "the fenced attempt recorded nothing"
    run = harness.repo.run_row(run_id)
    assert (run.state, run.attempt, run.node) == (RunState.SUCCEEDED, 2, "n2")
    assert [a.state for a in harness.repo.attempts(run_id)] == [AttemptState.LOST, AttemptState.SUCCEEDED]
    old_saves = [e["unit"] for e in harness.log() if e["epoch"] == 1 and e["event"] == "saved"]
    assert old_saves == [0, 1], "the fenced attempt's later progress was refused"
    assert T.count([e for e in harness.log() if e["epoch"] == 1], "start", "c") == 0
    # The newer attempt resumed u where the old one left it.
    assert [e["unit"] for e in harness.log() if e["epoch"] == 2 and e["event"] == "unit"] == [2, 3]


def test_a_resubmitted_attempt_records_how_many_tasks_it_skipped(harness: Harness) -> None:
    gate = harness.hold("c")
    run_id = harness.submit(package(task("a"), task("b", "a"), task("c", "b")))
    n1, first = started(harness, run_id, "n1")
    harness.wait_log("holding", "c", epoch=1)
    n1.cut_off()  # n1 is partitioned away: its lease expires
    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the run to be resubmitted")

    result = harness.node("n2").run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.skipped == ["a", "b"]
    (resumed,) = events(harness, run_id, "resumed")
    assert (resumed.attempt, resumed.node) == (2, "n2")
    assert resumed.detail == {"skipped": 2, "tasks": ["a", "b"]}
    for finished in ("a", "b"):
        assert T.count(harness.log(), "start", finished) == 1, f"{finished} ran again"
    assert task_states(harness, run_id) == {
        "a": TaskState.SUCCEEDED,
        "b": TaskState.SUCCEEDED,
        "c": TaskState.SUCCEEDED,
    }
    run = harness.repo.run_row(run_id)
    assert (run.state, run.restarts, run.attempt, run.node) == (RunState.SUCCEEDED, 1, 2, "n2")

    gate.set()
    assert first.outcome() is None
    assert harness.repo.run_row(run_id).state is RunState.SUCCEEDED


@pytest.mark.parametrize("how", ["partitioned", "renewals-stalled"])
def test_an_attempt_that_lost_its_lease_leaves_the_run_to_the_scheduler(harness: Harness, how: str) -> None:
    """The node cannot prove its lease for a whole TTL (renewals fail, or its renewal thread never
    ran) and stops writing; the scheduler, slow to tick, must still find the expired lease and
    resubmit the run, not lose it."""
    gate = harness.hold("b")
    run_id = harness.submit(package(task("a"), task("b", "a")))
    stalled = {"heartbeat_interval": 60.0} if how == "renewals-stalled" else {}
    n1, first = started(harness, run_id, "n1", **stalled)
    harness.wait_log("holding", "b", epoch=1)
    if not stalled:
        n1.cut_off()
        wait_until(first.lost.is_set, timeout=WAIT, what="the attempt to give its lease up")
    wait_until(lambda: run_id in harness.liveness.expired_leases(), timeout=WAIT, what="the lease to expire")
    n1.services.cut.clear()  # the network is back; the attempt must still stop on its own
    gate.set()
    assert first.outcome() is None

    saved = checkpoint(harness, run_id)
    assert saved is not None and set(saved.tasks) == {"a"}, "the lost attempt's checkpoint write was refused"
    assert harness.repo.run_row(run_id).state is RunState.RUNNING, "and it reported nothing"
    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the run to be resubmitted")
    result = harness.node("n2").run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.skipped == ["a"]
    assert [e.detail["reason"] for e in events(harness, run_id, "resubmitted")] == ["node_lost"]


def test_an_attempt_that_loses_its_lease_after_its_last_task_reports_nothing(harness: Harness) -> None:
    harness.overrides["keep_checkpoints"] = True
    run_id = harness.submit(package(task("a"), task("b", "a")))
    node = harness.node("n1")

    class LoseTheLeaseAtTheEnd(ExecutionHooks):
        def run_finished(self, result: RunResult) -> None:
            node.cut_off()
            wait_until(attempt.lost.is_set, timeout=WAIT, what="the lease to be lost")

    attempt = node.start(harness.last(run_id), hooks=LoseTheLeaseAtTheEnd())
    harness.attempts.append(attempt)
    assert attempt.outcome() is None
    assert harness.repo.run_row(run_id).state is RunState.RUNNING, "a lost attempt reports nothing"
    assert "finished" not in kinds(harness, run_id)

    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the run to be resubmitted")
    result = harness.node("n2").run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.skipped == ["a", "b"], "every finished task is in the checkpoint"
    assert T.count(harness.log(), "start", "a") == T.count(harness.log(), "start", "b") == 1


# -- cancellation --------------------------------------------------------------------------------


def test_a_cancel_during_the_run_ends_it_cancelled_and_keeps_the_checkpoint(harness: Harness) -> None:
    def until_cancelled(ctx: Any) -> None:
        if ctx.epoch == 1:
            T.record(ctx, "waiting")
            wait_until(lambda: ctx.cancelled, timeout=WAIT, what="the cancellation to reach the task")

    T.HOOKS["b"] = until_cancelled
    run_id = harness.submit(package(task("a"), task("b", "a"), task("c", "b")))
    _, attempt = started(harness, run_id, "n1")
    harness.wait_log("waiting", "b", epoch=1)

    status = Client(harness.sched).cancel(run_id)
    assert status["state"] == "running"
    result = attempt.outcome()

    assert result is not None and result.state is RunState.CANCELLED
    run = harness.repo.run_row(run_id)
    assert run.state is RunState.CANCELLED
    assert run.error is not None and "cancelled" in run.error and "checkpoint kept" in run.error
    assert events(harness, run_id, "finished")[0].detail["state"] == "cancelled"
    assert task_states(harness, run_id) == {
        "a": TaskState.SUCCEEDED,
        "b": TaskState.CANCELLED,
        "c": TaskState.CANCELLED,
    }
    assert T.count(harness.log(), "start", "c") == 0
    kept = checkpoint(harness, run_id)
    assert kept is not None and set(kept.tasks) == {"a"}, "b was stopped, not finished"
    assert harness.liveness.lease_owner(run_id) == {}
    assert harness.liveness.expired_leases() == []

    # The kept checkpoint is what a resume continues from.
    harness.scheduler.resume(run_id)
    resumed = harness.node("n2").run(harness.last(run_id))
    assert resumed is not None and resumed.state is RunState.SUCCEEDED
    assert resumed.skipped == ["a"]
    assert T.count(harness.log(), "start", "a") == 1


def test_a_cancel_before_the_claim_ends_the_run_without_running_it(harness: Harness) -> None:
    run_id = harness.submit(package(task("a")))
    Client(harness.sched).cancel(run_id)

    assert harness.node("n1").run(harness.last(run_id)) is None
    run = harness.repo.run_row(run_id)
    assert run.state is RunState.CANCELLED
    assert run.error == "cancelled before it started; checkpoint kept"
    assert harness.log() == []
    assert harness.liveness.overdue_dispatches() == []
    assert harness.liveness.lease_owner(run_id) == {}
    for _ in range(3):
        harness.scheduler.tick()
    assert len(harness.messages(run_id)) == 1


def test_a_database_failure_at_the_outcome_is_not_a_run_failure(harness: Harness) -> None:
    """SQL is only written at the claim and the outcome now (tasks report through Redis). The
    database failing when the outcome is written must not fail the run: the attempt stops and
    keeps its lease, which expires, and the run is resubmitted and finishes from its checkpoint."""
    from sqlalchemy.exc import OperationalError

    run_id = harness.submit(package(task("a"), task("b", "a"), task("c", "b")))
    n1 = harness.node("n1")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE runs", {}, Exception("server closed the connection"))

    n1.services.repository.finish_attempt = broken  # type: ignore[method-assign]
    with pytest.raises(Exception, match="run-state database failed"):
        n1.run(harness.last(run_id))
    run = harness.repo.run_row(run_id)
    assert run.state is RunState.RUNNING and run.error is None, "nothing was reported as failed"
    assert harness.liveness.lease_owner(run_id) != {}, "the lease is left to expire"
    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the run to be resubmitted")
    result = harness.node("n2").run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED and result.skipped == ["a", "b", "c"]
    for name in ("a", "b", "c"):
        assert T.count(harness.log(), "start", name) == 1, f"{name} ran again"


def test_events_that_cannot_reach_redis_during_a_task_are_not_a_task_failure(harness: Harness) -> None:
    """Appending the attempt's events failing (Redis unreachable for a while) fails nothing: the
    events are kept, and the outcome transaction writes them, in order, before ``finished``."""
    import redis

    run_id = harness.submit(package(task("a"), task("b", "a"), task("c", "b")))
    n1 = harness.node("n1")
    real = n1.services.events.append
    calls: list[int] = []

    def flaky(run: str, epoch: int, records: Any) -> Any:
        calls.append(len(records))
        if len(calls) <= 2:
            raise redis.ConnectionError("the test cut Redis off for the events")
        return real(run, epoch, records)

    n1.services.events.append = flaky  # type: ignore[method-assign]
    # Fast tasks' records share appends (they wait a few ms for company): b waits for the first
    # append, so that a's records are tried once while the run still has records to send.
    T.HOOKS["b"] = lambda ctx: wait_until(lambda: calls, timeout=WAIT, what="a's records to be appended")
    result = n1.run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED
    # At least the two failed appends, and the second carried the first's records again.
    assert len(calls) >= 2 and calls[1] >= calls[0], "the failed appends were retried with the next one"
    assert kinds(harness, run_id) == [
        "submitted",
        "dispatched",
        "claimed",
        *["task_done", "checkpoint_saved"] * 3,
        "finished",
    ]
    assert task_states(harness, run_id) == dict.fromkeys("abc", TaskState.SUCCEEDED)
