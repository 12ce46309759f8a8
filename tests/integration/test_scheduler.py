"""The scheduler and the repository in process, on a real Redis and on SQLite and PostgreSQL.

No Celery worker runs: the services' Celery app is replaced by
:class:`RecordingApp`, which keeps every message the scheduler sends. A test
plays the workers itself by passing the recorded kwargs to
:func:`~workers.attempt.run_attempt` (or to its first steps, for a worker that
claims an attempt and dies). TTLs are half a second; every wait polls a
condition with a deadline.

The harness here is shared with ``test_attempt.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.exc import SQLAlchemyError

from checkpoints import Checkpoint, FilesystemCheckpointStore
from orchestrator.control.client import Client
from orchestrator.control.liveness import Claim, Liveness
from orchestrator.control.scheduler import Scheduler
from orchestrator.errors import RunStateConflict
from orchestrator.packages.validation import parse_package
from orchestrator.runtime.broker import RECOVERY_QUEUE, RUN_QUEUE, RUN_TASK, SUBMIT_TASK
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import Settings
from orchestrator.state import AttemptState
from orchestrator.state.repository import Repository
from orchestrator.state.states import RunState, TaskState
from tests.support import tasks as T
from tests.support.cli import wait_until
from workers.attempt import AttemptMessage, run_attempt
from workers.errors import AttemptFenced
from workers.executor import ExecutionHooks, RunResult

TTL = 0.5
WAIT = 10.0  # deadline of every wait; the conditions hold within a few TTLs
SLOW_CLAIM = 5 * TTL  # a claim deadline no tick overruns, even on a loaded machine

# -- the in-process harness ------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    name: str
    kwargs: dict[str, Any]
    queue: str | None


class RecordingApp:
    """Stands in for the Celery app: keeps the messages instead of sending them."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        with self._lock:
            self.sent.append(Sent(name, dict(kwargs or {}), options.get("queue")))


class Partitionable(Liveness):
    """A node's view of Redis that a test can cut: renewals then fail as on a lost network."""

    def __init__(self, client: redis.Redis, cut: threading.Event, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.cut = cut

    def renew(self, run_id: str, epoch: int, node: str, attempt: int) -> Claim:
        if self.cut.is_set():
            raise redis.ConnectionError("the test cut this node off from Redis")
        return super().renew(run_id, epoch, node, attempt)


class InProcessServices(Services):
    """One process's services, with a recording Celery app and a liveness the test can cut off.

    The liveness keys and the run queue are named per test (``namespace``), so tests sharing
    one Redis server (``ORCHESTRATOR_TEST_REDIS_URL``) cannot see each other's leases.
    """

    def __init__(self, settings: Settings, broker_url: str, namespace: str) -> None:
        super().__init__(settings, broker_url=broker_url)
        self.namespace = namespace
        self.recorder = RecordingApp()
        self.cut = threading.Event()

    @property
    def app(self) -> Any:
        return self.recorder

    @property
    def prefix(self) -> str:
        return self.namespace

    @property
    def liveness(self) -> Liveness:
        return self._get(
            "liveness",
            lambda: Partitionable(
                self.redis,
                self.cut,
                lease_ttl=self.settings.lease_ttl,
                claim_timeout=self.settings.claim_timeout,
                prefix=self.namespace,
                run_queue=f"{RUN_QUEUE}.{self.namespace}",
            ),
        )

    def close(self) -> None:
        if "repository" in self._cache:
            self.repository.engine.dispose()
        if "redis" in self._cache:
            self.redis.close()


class Attempt(threading.Thread):
    """``run_attempt`` on a background thread, as a worker process would run it."""

    def __init__(
        self, services: Services, message: AttemptMessage, node: str, hooks: ExecutionHooks | None = None
    ) -> None:
        super().__init__(name=f"attempt-{message.run_id}-{message.attempt}", daemon=True)
        self.services, self.message, self.node, self.hooks = services, message, node, hooks
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.lost = threading.Event()  # set by run_attempt's on_lost: the lease was lost

    def run(self) -> None:
        try:
            self.result = run_attempt(
                self.services, self.message, self.node, hooks=self.hooks, on_lost=self.lost.set
            )
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = WAIT) -> RunResult | None:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not end within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class Node:
    """A worker node: its own services (connections), so the test can cut it off alone."""

    name: str
    services: InProcessServices

    def run(self, message: AttemptMessage) -> RunResult | None:
        return run_attempt(self.services, message, self.name)

    def start(self, message: AttemptMessage, hooks: ExecutionHooks | None = None) -> Attempt:
        attempt = Attempt(self.services, message, self.name, hooks)
        attempt.start()
        return attempt

    def claim_and_die(self, message: AttemptMessage) -> None:
        """What ``run_attempt`` does first; then the process is killed (nothing renews the lease)."""
        claim = self.services.liveness.claim(message.run_id, message.epoch, self.name, message.attempt)
        assert claim.status is Claim.OK, claim
        self.services.repository.mark_claimed(message.run_id, message.epoch, message.attempt, self.name)

    def cut_off(self) -> None:
        self.services.cut.set()


@dataclass
class Harness:
    """One test's cluster, in process: a scheduler, worker nodes and clients on shared Redis and SQL."""

    tmp: Path
    redis_url: str
    database_url: str
    overrides: dict[str, Any] = field(default_factory=dict)  # settings of the processes made after
    namespace: str = field(default_factory=lambda: f"orch-{uuid.uuid4().hex[:12]}")
    made: list[InProcessServices] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    gates: list[threading.Event] = field(default_factory=list)

    def settings(self, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "broker_url": self.redis_url,
            "database_url": self.database_url,
            "checkpoint_root": self.tmp / "checkpoints",
            "state_dir": self.tmp / "state",
            "lease_ttl": TTL,
            "claim_timeout": TTL,
            "heartbeat_interval": 0.1,
            "submit_key": None,
            "task_modules": "",
            "allow_shell": True,
            "keep_checkpoints": False,
            "secret_key": None,
            **self.overrides,
            **extra,
        }
        return Settings(**values)

    def services(self, **extra: Any) -> InProcessServices:
        """The services of a new process (its own Redis client and database engine)."""
        made = InProcessServices(self.settings(**extra), self.redis_url, self.namespace)
        self.made.append(made)
        return made

    def __post_init__(self) -> None:
        self.start_scheduler()

    def start_scheduler(self) -> None:
        """A scheduler process starting up: it rebuilds liveness if the marker is missing."""
        self.sched = self.services()
        self.scheduler = Scheduler(self.sched)
        if not self.liveness.marker_present():
            self.scheduler.rebuild()

    @property
    def repo(self) -> Repository:
        return self.sched.repository

    @property
    def liveness(self) -> Liveness:
        return self.sched.liveness

    def lose_redis_data(self) -> None:
        """What FLUSHALL does to this cluster: every liveness key and the queued messages are gone.

        Only this test's keys are deleted; other tests may share the server.
        """
        client = self.liveness.client
        keys = [*client.scan_iter(match=f"{self.namespace}:*"), self.liveness.run_queue]
        client.delete(*keys)
        assert not self.liveness.marker_present()

    @property
    def store(self) -> FilesystemCheckpointStore:
        return self.sched.store

    def node(self, name: str, **extra: Any) -> Node:
        return Node(name, self.services(**extra))

    # -- submission ---------------------------------------------------------------------------

    def payload(self, definition: dict[str, Any], client: Services | None = None, **kwargs: Any) -> Any:
        """The submission body a client sends (signed if that client has a submit key)."""
        sender = client or self.sched
        assert isinstance(sender.app, RecordingApp)
        Client(sender).submit(parse_package(definition), **kwargs)
        message = sender.app.sent.pop()
        assert message.name == SUBMIT_TASK
        return message.kwargs["payload"]

    def submit(self, definition: dict[str, Any], **kwargs: Any) -> str:
        run_id = self.scheduler.submit(self.payload(definition, **kwargs))
        assert run_id is not None, "the submission was refused"
        return run_id

    def messages(self, run_id: str | None = None) -> list[AttemptMessage]:
        """Every attempt message the scheduler sent (of one run, or of all)."""
        found = []
        for services in self.made:
            for sent in services.recorder.sent:
                if sent.name == RUN_TASK and run_id in (None, sent.kwargs["run_id"]):
                    # A first attempt waits behind nothing else; every later one continues a run
                    # and goes ahead of runs not started yet.
                    assert sent.queue == (RUN_QUEUE if sent.kwargs["attempt"] == 1 else RECOVERY_QUEUE)
                    found.append(AttemptMessage(**sent.kwargs))
        return found

    def last(self, run_id: str) -> AttemptMessage:
        return self.messages(run_id)[-1]

    # -- waiting ------------------------------------------------------------------------------

    def tick_until(self, condition: Callable[[], Any], what: str) -> Any:
        def ticked() -> Any:
            self.scheduler.tick()
            return condition()

        return wait_until(ticked, timeout=WAIT, what=what)

    def hold(self, task_id: str, *, epochs: tuple[int, ...] = (1,)) -> threading.Event:
        """Make ``task_id`` (a ``step`` task) wait in its body until the returned gate opens."""
        gate = threading.Event()
        self.gates.append(gate)

        def wait(ctx: Any) -> None:
            if ctx.epoch in epochs:
                T.record(ctx, "holding")
                gate.wait(WAIT)

        T.HOOKS[task_id] = wait
        return gate

    def wait_log(self, event: str, task: str, epoch: int) -> None:
        wait_until(
            lambda: any(
                e["event"] == event and e["task"] == task and e["epoch"] == epoch for e in self.log()
            ),
            timeout=WAIT,
            what=f"task {task} to log {event} at epoch {epoch}",
        )

    def log(self) -> list[dict[str, Any]]:
        return T.read_log(self.tmp / "executions.jsonl")

    def close(self) -> None:
        for gate in self.gates:
            gate.set()
        for attempt in self.attempts:
            attempt.join(WAIT)
        for services in self.made:
            services.close()


def make_harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    monkeypatch.setenv(T.LOG_ENV, str(tmp_path / "executions.jsonl"))
    T.HOOKS.clear()
    harness = Harness(tmp_path, redis_url, database_url)
    try:
        yield harness
    finally:
        harness.close()
        T.HOOKS.clear()


@pytest.fixture
def harness(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from make_harness(tmp_path, redis_url, database_url, monkeypatch)


def package(*tasks: dict[str, Any], name: str = "pkg", **extra: Any) -> dict[str, Any]:
    return {"name": name, "tasks": list(tasks), **extra}


def task(task_id: str, *deps: str, fn: str = "step", **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "python": f"tests.support.tasks:{fn}", "depends_on": list(deps), **fields}


def kinds(harness: Harness, run_id: str) -> list[str]:
    return [event.kind for event in harness.repo.events(run_id)]


def events(harness: Harness, run_id: str, kind: str) -> list[Any]:
    return [event for event in harness.repo.events(run_id) if event.kind == kind]


def checkpoint(harness: Harness, run_id: str, name: str = "pkg") -> Checkpoint | None:
    return harness.store.load(name, run_id)


TWO = package(task("a"), task("b", "a"))


# -- submission ------------------------------------------------------------------------------


def test_submit_records_the_run_and_dispatches_attempt_one(harness: Harness) -> None:
    definition = package(task("a"), max_restarts=3, variables={"n": {"type": "int", "default": 1}})
    run_id = harness.submit(definition, run_id="orders-1", variables={"n": 5})

    run = harness.repo.run_row(run_id)
    assert (run.state, run.attempt, run.epoch, run.restarts, run.max_restarts) == (
        RunState.QUEUED,
        1,
        1,
        0,
        3,
    )
    assert run.variables["values"] == {"n": 5}
    registered = harness.repo.definition("pkg", run.definition_hash)
    assert registered["tasks"][0]["python"] == "tests.support.tasks:step"
    assert kinds(harness, run_id) == ["submitted", "dispatched"]
    assert [(a.number, a.epoch, a.state) for a in harness.repo.attempts(run_id)] == [
        (1, 1, AttemptState.DISPATCHED)
    ]
    assert harness.messages() == [AttemptMessage(run_id="orders-1", attempt=1, epoch=1)]
    assert harness.liveness.epoch(run_id) == 1
    assert harness.liveness.client.zscore(harness.liveness._key("pending"), run_id) is not None


def test_max_restarts_defaults_to_the_setting(harness: Harness) -> None:
    harness.overrides["max_restarts"] = 7
    harness.start_scheduler()
    run_id = harness.submit(TWO)
    assert harness.repo.run_row(run_id).max_restarts == 7


def test_a_retried_submission_creates_one_run(harness: Harness) -> None:
    payload = harness.payload(TWO, run_id="r-1")
    assert harness.scheduler.submit(payload) == "r-1"
    assert harness.scheduler.submit(payload) == "r-1", "a redelivered control message"
    # Another run id with the same idempotency key is the same submission, retried by the client.
    again = harness.payload(TWO, run_id="r-2", idempotency_key="r-1")
    assert harness.scheduler.submit(again) == "r-1"

    assert [run.id for run in harness.repo.list_runs()] == ["r-1"]
    assert len(harness.messages()) == 1
    assert kinds(harness, "r-1") == ["submitted", "dispatched"]
    assert harness.liveness.epoch("r-1") == 1


def assert_refused(harness: Harness, run_id: str, reason: str) -> None:
    run = harness.repo.run_row(run_id)
    assert run.state is RunState.FAILED
    assert run.error is not None and run.error.startswith("submission refused: ")
    assert reason in run.error
    refused = events(harness, run_id, "refused")
    assert kinds(harness, run_id) == ["refused"]
    assert reason in refused[0].detail["reason"]
    assert harness.messages() == [], "a refused submission dispatches nothing"
    assert harness.liveness.epoch(run_id) == 0
    # Only this run: a run the test dispatched before it is overdue once no node claims it in time.
    assert run_id not in harness.liveness.overdue_dispatches()
    with pytest.raises(RunStateConflict, match="refused at submission"):
        harness.scheduler.resume(run_id)


def test_a_badly_signed_submission_is_refused(harness: Harness) -> None:
    harness.overrides["submit_key"] = "the-right-key"
    harness.start_scheduler()

    wrong = harness.services(submit_key="a-wrong-key")
    harness.scheduler.submit(harness.payload(TWO, client=wrong, run_id="wrong-key"))
    assert_refused(harness, "wrong-key", "bad submission signature")

    # Signed with the right key, then altered on the way: the signature no longer matches.
    tampered = harness.payload(TWO, run_id="tampered")
    tampered["package"]["tasks"][0]["params"] = {"fail": True}
    assert harness.scheduler.submit(tampered) is None
    assert_refused(harness, "tampered", "bad submission signature")

    unsigned = harness.services(submit_key=None)
    assert harness.scheduler.submit(harness.payload(TWO, client=unsigned, run_id="unsigned")) is None
    assert_refused(harness, "unsigned", "unsigned submission")

    # The same submission, properly signed, is accepted: the check is not refusing everything.
    assert harness.submit(TWO, run_id="signed") == "signed"
    assert harness.repo.run_row("signed").state is RunState.QUEUED
    assert len(harness.messages("signed")) == 1


@pytest.mark.parametrize(
    ("settings", "definition", "reason"),
    [
        pytest.param(
            {"task_modules": "tests.support"},
            package(task("a"), {"id": "b", "python": "examples.orders:extract"}),
            "module 'examples.orders' is outside ORCHESTRATOR_TASK_MODULES",
            id="python-module",
        ),
        pytest.param(
            {"allow_shell": False},
            package(task("a"), {"id": "b", "shell": "echo hi"}),
            "task 'b': shell tasks are not allowed here",
            id="shell",
        ),
    ],
)
def test_a_submission_against_the_task_policy_is_refused(
    harness: Harness, settings: dict[str, Any], definition: dict[str, Any], reason: str
) -> None:
    harness.overrides.update(settings)
    harness.start_scheduler()
    allowed = package(task("a"))
    assert harness.submit(allowed, run_id="allowed") == "allowed"
    harness.sched.recorder.sent.clear()

    client = harness.services(task_modules="", allow_shell=True)
    assert harness.scheduler.submit(harness.payload(definition, client=client, run_id="refused")) is None
    assert_refused(harness, "refused", reason)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        pytest.param(lambda p: p.update(unexpected=1), "malformed submission", id="unknown-field"),
        pytest.param(lambda p: p.update(package="not a mapping"), "malformed submission", id="package-type"),
        pytest.param(lambda p: p.pop("package"), "malformed submission", id="no-package"),
        pytest.param(
            lambda p: p["package"]["tasks"][1].update(depends_on=["nope"]),
            "unknown task 'nope'",
            id="invalid-package",
        ),
    ],
)
def test_a_malformed_submission_is_refused(
    harness: Harness, mangle: Callable[[dict[str, Any]], Any], reason: str
) -> None:
    payload = harness.payload(TWO, run_id="bad-1")
    mangle(payload)
    assert harness.scheduler.submit(payload) is None
    assert_refused(harness, "bad-1", reason)


def test_a_submission_without_a_usable_run_id_records_nothing(harness: Harness) -> None:
    payload = harness.payload(TWO, run_id="fine")
    payload["run_id"] = "../../etc"
    assert harness.scheduler.submit(payload) is None
    assert harness.repo.list_runs() == []
    assert harness.messages() == []


def test_sql_records_each_dispatch_epoch_once(harness: Harness) -> None:
    """The SQL guard behind the Redis fence: an epoch already recorded (or older) is refused."""
    run_id = harness.submit(TWO)
    repo = harness.repo
    assert repo.record_dispatch(run_id, 1) is None, "a second scheduler with the same epoch"
    assert repo.record_dispatch(run_id, 1, reason="node_lost") is None
    dispatch = repo.record_dispatch(run_id, 2, reason="node_lost")
    assert dispatch is not None and (dispatch.attempt, dispatch.epoch) == (2, 2)
    assert repo.record_dispatch(run_id, 2, reason="dispatch_lost") is None
    assert repo.record_dispatch(run_id, 1, reason="dispatch_lost") is None
    assert [(a.number, a.epoch) for a in repo.attempts(run_id)] == [(1, 1), (2, 2)]
    assert len(events(harness, run_id, "resubmitted")) == 1


# -- node loss ----------------------------------------------------------------------------------


def test_an_expired_lease_is_fenced_and_the_run_resubmitted(harness: Harness) -> None:
    run_id = harness.submit(TWO)
    first = harness.last(run_id)
    claimed = time.monotonic()
    harness.node("n1").claim_and_die(first)
    harness.scheduler.tick()
    if time.monotonic() - claimed < TTL:  # a loaded machine can take longer than the TTL to get here
        assert harness.messages() == [first], "a live lease is not recovered"
    assert harness.repo.run_row(run_id).state is RunState.RUNNING

    harness.tick_until(lambda: len(harness.messages()) == 2, "the lost attempt to be resubmitted")
    second = harness.last(run_id)
    assert (second.attempt, second.epoch) == (2, 2)
    assert second.lost_at_ms is not None and second.lost_at_ms > 0
    assert harness.liveness.epoch(run_id) == 2
    assert harness.liveness.lease_owner(run_id) == {}

    run = harness.repo.run_row(run_id)
    assert (run.state, run.attempt, run.epoch, run.restarts) == (RunState.RECOVERING, 2, 2, 1)
    assert kinds(harness, run_id) == [
        "submitted",
        "dispatched",
        "claimed",
        "node_lost",
        "fenced",
        "resubmitted",
        "dispatched",
    ]
    (lost,) = events(harness, run_id, "node_lost")
    assert (lost.node, lost.attempt) == ("n1", 1)
    assert events(harness, run_id, "fenced")[0].detail["epoch"] == 2
    assert events(harness, run_id, "resubmitted")[0].detail == {"reason": "node_lost", "epoch": 2}
    assert [(a.number, a.state) for a in harness.repo.attempts(run_id)] == [
        (1, AttemptState.LOST),
        (2, AttemptState.DISPATCHED),
    ]

    # The lost attempt is fenced everywhere: in Redis and in SQL.
    assert harness.liveness.claim(run_id, 1, "n1", 1).status is Claim.STALE
    with pytest.raises(AttemptFenced, match="fenced"):
        harness.repo.mark_claimed(run_id, 1, 1, "n1")
    for _ in range(3):
        harness.scheduler.tick()
    assert len(harness.messages()) == 2, "recovered once"

    # The new attempt runs to the end on another node.
    result = harness.node("n2").run(second)
    assert result is not None and result.state is RunState.SUCCEEDED
    assert harness.repo.run_row(run_id).state is RunState.SUCCEEDED


def lost_runs(harness: Harness, run_ids: list[str]) -> list[str]:
    """Submit ``run_ids``, let node n1 claim each and die; return once every lease has expired."""
    runs = [harness.submit(TWO, run_id=run_id) for run_id in run_ids]
    node = harness.node("n1")
    for run_id in runs:
        node.claim_and_die(harness.last(run_id))
    wait_until(
        lambda: set(runs) <= set(harness.liveness.expired_leases()), timeout=WAIT, what="leases to expire"
    )
    return runs


def test_concurrent_schedulers_resubmit_each_lost_run_once(harness: Harness) -> None:
    runs = lost_runs(harness, [f"race-{i}" for i in range(4)])

    # Claim deadlines of a few TTLs: a tick slowed down by a loaded machine must not find the
    # recovered attempts unclaimed already (that is another test's redispatch).
    schedulers = [Scheduler(harness.services(claim_timeout=SLOW_CLAIM)) for _ in range(3)]
    barrier = threading.Barrier(len(schedulers))
    errors: list[BaseException] = []

    def tick(scheduler: Scheduler) -> None:
        try:
            barrier.wait(WAIT)
            scheduler.tick()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []

    for run_id in runs:
        messages = harness.messages(run_id)
        assert [(m.attempt, m.epoch) for m in messages] == [(1, 1), (2, 2)], run_id
        run = harness.repo.run_row(run_id)
        assert (run.restarts, run.attempt, run.epoch) == (1, 2, 2)
        assert len(events(harness, run_id, "resubmitted")) == 1
        assert len(events(harness, run_id, "node_lost")) == 1
        assert harness.liveness.epoch(run_id) == 2


def test_a_node_lost_with_many_runs_has_them_all_resubmitted_in_one_tick(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = lost_runs(harness, [f"many-{i:02d}" for i in range(20)])
    harness.overrides["claim_timeout"] = SLOW_CLAIM  # as in the test above
    harness.start_scheduler()
    record_lost = harness.scheduler.services.repository.record_lost
    broken = "many-07"

    def failing_for_one(run_id: str, *args: Any, **kwargs: Any) -> Any:
        if run_id == broken:
            raise SQLAlchemyError("the test broke this run's transition")
        return record_lost(run_id, *args, **kwargs)

    monkeypatch.setattr(harness.scheduler.services.repository, "record_lost", failing_for_one)
    with pytest.raises(SQLAlchemyError, match="the test broke"):
        harness.scheduler.tick()  # recoveries run side by side; one failing stops none of the others

    for run_id in runs:
        if run_id == broken:
            continue
        assert [(m.attempt, m.epoch) for m in harness.messages(run_id)] == [(1, 1), (2, 2)], run_id
        assert len(events(harness, run_id, "resubmitted")) == 1
    monkeypatch.undo()
    harness.tick_until(
        lambda: len(harness.messages(broken)) >= 2, "the run whose recovery failed to be dispatched again"
    )


def test_exhausted_restarts_fail_the_run_and_keep_the_checkpoint(harness: Harness) -> None:
    gate = harness.hold("b", epochs=(1, 2))
    run_id = harness.submit(package(task("a"), task("b", "a"), max_restarts=1))

    for number, name in ((1, "n1"), (2, "n2")):
        node = harness.node(name)
        attempt = node.start(harness.last(run_id))
        harness.attempts.append(attempt)
        harness.wait_log("holding", "b", epoch=number)
        node.cut_off()  # the node stops renewing its lease: lost, as if paused or partitioned
        harness.tick_until(
            lambda number=number: harness.repo.run_row(run_id).restarts == number,
            f"loss {number} to be noticed",
        )

    run = harness.repo.run_row(run_id)
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "max_restarts (1)" in run.error
    assert "checkpoint is kept" in run.error
    assert len(harness.messages(run_id)) == 2, "no third attempt"
    assert kinds(harness, run_id)[-1] == "finished"
    assert harness.liveness.overdue_dispatches() == []
    assert harness.liveness.lease_owner(run_id) == {}

    gate.set()
    assert [attempt.outcome() for attempt in harness.attempts] == [None, None]
    saved = checkpoint(harness, run_id)
    assert saved is not None, "the checkpoint is kept for a resume"
    assert set(saved.tasks) == {"a"}
    assert saved.epoch == 2
    assert harness.repo.run_row(run_id).state is RunState.FAILED, "the lost attempts reported nothing"
    assert events(harness, run_id, "task_done")[-1].detail["task"] == "a"


# -- lost dispatches -------------------------------------------------------------------------------


def test_a_dispatch_never_claimed_is_redispatched(harness: Harness) -> None:
    run_id = harness.submit(TWO)
    first = harness.last(run_id)

    # While messages wait in the run queue (every worker busy), nothing is lost.
    harness.liveness.client.lpush(harness.liveness.run_queue, b"{}")
    wait_until(lambda: harness.liveness.server_ms() > first_deadline(harness, run_id), what="claim deadline")
    for _ in range(3):
        harness.scheduler.tick()
    assert harness.messages(run_id) == [first]
    harness.liveness.client.delete(harness.liveness.run_queue)

    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the lost dispatch to be resent")
    second = harness.last(run_id)
    assert (second.attempt, second.epoch) == (2, 2)
    run = harness.repo.run_row(run_id)
    assert (run.state, run.restarts) == (RunState.RECOVERING, 1)
    assert events(harness, run_id, "resubmitted")[0].detail["reason"] == "dispatch_lost"
    assert events(harness, run_id, "node_lost") == []

    # The first message turns up late: it is fenced and does nothing.
    node = harness.node("n1")
    assert node.run(first) is None
    assert T.read_log(harness.tmp / "executions.jsonl") == []
    result = node.run(second)
    assert result is not None and result.state is RunState.SUCCEEDED


def first_deadline(harness: Harness, run_id: str) -> float:
    score = harness.liveness.client.zscore(harness.liveness._key("pending"), run_id)
    assert score is not None
    return score


def test_a_cancelled_run_that_was_never_claimed_ends_cancelled(harness: Harness) -> None:
    run_id = harness.submit(TWO)
    Client(harness.sched).cancel(run_id)
    assert harness.repo.run_row(run_id).state is RunState.QUEUED

    harness.tick_until(lambda: harness.repo.run_row(run_id).state.finished, "the cancellation")
    run = harness.repo.run_row(run_id)
    assert run.state is RunState.CANCELLED
    assert len(harness.messages(run_id)) == 1, "a cancelled run is not dispatched again"
    assert harness.liveness.overdue_dispatches() == []
    assert "cancel_requested" in kinds(harness, run_id)
    assert kinds(harness, run_id)[-1] == "finished"

    assert harness.node("n1").run(harness.last(run_id)) is None
    assert harness.log() == []


# -- Redis lost its data -------------------------------------------------------------------------


def test_redis_data_loss_is_rebuilt_from_sql_and_the_run_finishes(harness: Harness) -> None:
    gate = harness.hold("b")
    running = harness.submit(TWO, run_id="running")
    waiting = harness.submit(TWO, run_id="waiting")
    attempt = harness.node("n1").start(harness.last(running))
    harness.attempts.append(attempt)
    harness.wait_log("holding", "b", epoch=1)

    harness.lose_redis_data()  # FLUSHALL: the queue and every lease are gone
    harness.scheduler.tick()

    assert harness.liveness.marker_present()
    assert harness.liveness.epoch("running") == 1
    assert harness.liveness.lease_owner("running") == {"node": "n1", "epoch": "1", "attempt": "1"}
    # The unclaimed run's message went with the data: it is sent again at once.
    assert [(m.attempt, m.epoch) for m in harness.messages(waiting)] == [(1, 1), (2, 2)]
    assert events(harness, waiting, "resubmitted")[0].detail["reason"] == "dispatch_lost"

    gate.set()
    result = attempt.outcome()
    assert result is not None and result.state is RunState.SUCCEEDED
    run = harness.repo.run_row(running)
    assert (run.state, run.attempt, run.restarts) == (RunState.SUCCEEDED, 1, 0)
    assert len(harness.messages(running)) == 1
    assert harness.liveness.lease_owner(running) == {}


def test_after_redis_data_loss_a_dead_node_is_still_recovered(harness: Harness) -> None:
    run_id = harness.submit(TWO)
    harness.node("n1").claim_and_die(harness.last(run_id))

    harness.lose_redis_data()
    harness.scheduler.tick()  # rebuilds a lease from SQL; nobody renews it
    assert harness.liveness.lease_owner(run_id)["node"] == "n1"

    harness.tick_until(lambda: len(harness.messages(run_id)) == 2, "the dead node's run to be resubmitted")
    assert (harness.last(run_id).attempt, harness.last(run_id).epoch) == (2, 2)
    (lost,) = events(harness, run_id, "node_lost")
    assert lost.node == "n1"
    result = harness.node("n2").run(harness.last(run_id))
    assert result is not None and result.state is RunState.SUCCEEDED


# -- resume ----------------------------------------------------------------------------------------


def test_resume_of_a_failed_run_continues_from_its_checkpoint(harness: Harness) -> None:
    definition = package(task("a"), task("b", "a", fn="fail_times", params={"times": 1}), task("c", "b"))
    run_id = harness.submit(definition)
    with pytest.raises(RunStateConflict, match="only failed or cancelled"):
        harness.scheduler.resume(run_id)

    node = harness.node("n1")
    failed = node.run(harness.last(run_id))
    assert failed is not None and failed.state is RunState.FAILED
    assert harness.repo.run_row(run_id).state is RunState.FAILED
    assert checkpoint(harness, run_id) is not None

    harness.scheduler.resume(run_id)
    message = harness.last(run_id)
    assert (message.attempt, message.epoch) == (2, 2)
    run = harness.repo.run_row(run_id)
    assert (run.state, run.error) == (RunState.QUEUED, None)
    assert events(harness, run_id, "resubmitted")[-1].detail == {"reason": "manual", "epoch": 2}

    result = node.run(message)
    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.skipped == ["a"]
    (resumed,) = events(harness, run_id, "resumed")
    assert resumed.detail["skipped"] == 1
    assert resumed.attempt == 2
    assert T.count(harness.log(), "start", "a") == 1, "a finished task never runs again"
    assert {k: v.state for k, v in harness.repo.task_states(run_id).items()} == {
        "a": TaskState.SUCCEEDED,
        "b": TaskState.SUCCEEDED,
        "c": TaskState.SUCCEEDED,
    }
    assert [a.state for a in harness.repo.attempts(run_id)] == [AttemptState.FAILED, AttemptState.SUCCEEDED]


def test_resume_after_redis_lost_its_data(harness: Harness) -> None:
    """A failed run's epoch is not rebuilt (it is not active); a resume must still dispatch."""
    definition = package(task("a"), task("b", "a", fn="fail_times", params={"times": 1}))
    run_id = harness.submit(definition)
    node = harness.node("n1")
    assert node.run(harness.last(run_id)) is not None
    assert harness.repo.run_row(run_id).state is RunState.FAILED

    harness.lose_redis_data()
    harness.scheduler.tick()
    harness.scheduler.resume(run_id)

    message = harness.last(run_id)
    assert (message.attempt, message.epoch) == (2, 2)
    assert harness.repo.run_row(run_id).state is RunState.QUEUED
    result = node.run(message)
    assert result is not None and result.state is RunState.SUCCEEDED
    assert result.skipped == ["a"]
