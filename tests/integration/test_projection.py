"""The event stream's projection to SQL, against a real Redis and SQLite/PostgreSQL.

Records are appended as an attempt appends them (the fenced script of
:class:`~orchestrator.control.stream.EventStream`) and written to SQL by
:class:`~orchestrator.control.projection.Projector` s: in batches of one
transaction each; by two schedulers at once; with SQL failing, Redis
restarting and a scheduler SIGKILLed in the middle of a batch. Every test
ends with the same judgement: each appended record is in SQL exactly once,
each run's events in the order they were appended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError

from orchestrator.control.projection import Projector
from orchestrator.control.stream import ENTRY_RECORDS, EventStream, parse_id
from orchestrator.packages.validation import parse_package
from orchestrator.state import make_engine, upgrade
from orchestrator.state.models import Event
from orchestrator.state.models import Package as PackageRow
from orchestrator.state.projection import Projections
from orchestrator.state.records import Record, TaskChange
from orchestrator.state.repository import Repository
from orchestrator.state.states import RunState, TaskState
from tests.support.cli import wait_until
from tests.support.processes import ROOT
from tests.support.servers import PrivatePostgres, Unavailable

PACKAGE = parse_package({"name": "pkg", "tasks": [{"id": "a", "shell": "true"}]})
RUNS = ("run-a", "run-b", "run-c")


@dataclass
class Setup:
    """A namespace on the test's Redis, a migrated database with three running runs, and makers."""

    redis_url: str
    database_url: str
    namespace: str = field(default_factory=lambda: f"orch-{uuid.uuid4().hex[:12]}")
    engines: list[Engine] = field(default_factory=list)
    clients: list[redis.Redis] = field(default_factory=list)
    appended: dict[str, int] = field(default_factory=dict)  # run -> records appended
    entries: int = 0  # stream entries appended (one per append)

    def engine(self) -> Engine:
        engine = make_engine(self.database_url)
        self.engines.append(engine)
        return engine

    def client(self) -> redis.Redis:
        client = redis.Redis.from_url(self.redis_url)
        self.clients.append(client)
        return client

    def stream(self) -> EventStream:
        return EventStream(self.client(), prefix=self.namespace)

    def projector(self, batch: int = 500, engine: Engine | None = None) -> Projector:
        repository = Repository(engine or self.engine())
        return Projector(self.stream(), Projections(repository.sessions), batch=batch)

    @property
    def repository(self) -> Repository:
        if not hasattr(self, "_repository"):
            self._repository = Repository(self.engine())
        return self._repository

    def start(self) -> None:
        upgrade(self.engine())
        for run_id in RUNS:
            self.repository.create_run(run_id, PACKAGE, {}, max_restarts=1, epoch=1)
            self.client().set(f"{self.namespace}:epoch:{run_id}", 1)

    def append(self, count: int, stream: EventStream | None = None, chunk: int = 25) -> None:
        """``count`` records, spread over the runs, appended ``chunk`` at a time as an attempt does."""
        stream = stream or self.stream()
        for start in range(0, count, chunk):
            for run_id in RUNS:
                records = [self.record(run_id) for _ in range(min(chunk, count - start))]
                assert stream.append(run_id, 1, [r.encode() for r in records]) is not None
                self.entries += 1  # an append is one stream entry

    def record(self, run_id: str) -> Record:
        seq = self.appended[run_id] = self.appended.get(run_id, 0) + 1
        return Record("event", run_id, 1, 1, "n1", seq, time.time(), "item_done", {"task": "a", "item": seq})

    def judge(self) -> None:
        """Every appended record is in SQL once, each run's in the order appended."""
        for run_id in RUNS:
            rows = [e for e in self.repository.events(run_id) if e.source is not None]
            assert [e.source for e in rows] == [f"1-{n}" for n in range(1, self.appended.get(run_id, 0) + 1)]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def setup(redis_url: str, database_url: str) -> Iterator[Setup]:
    made = Setup(redis_url, database_url)
    made.start()
    yield made
    made.close()


def commits(engine: Engine) -> list[int]:
    counted: list[int] = []
    event.listen(engine, "commit", lambda _connection: counted.append(1))
    return counted


def test_batches_of_one_transaction_each_then_the_stream_is_trimmed(setup: Setup) -> None:
    setup.append(400)  # 1,200 records over three runs
    engine = setup.engine()
    counted = commits(engine)
    projector = setup.projector(batch=500, engine=engine)

    done = projector.run()

    assert (done.entries, done.written, done.batches, done.skipped) == (1200, 1200, 3, False)
    assert len(counted) == 3, "one transaction per batch"
    setup.judge()
    assert projector.stream.length() == 0, "what SQL holds is trimmed from Redis"
    assert projector.projections.position() == projector.stream.head()[1]
    assert 0 <= done.lag < 60
    assert projector.run().entries == 0, "nothing is written twice"
    setup.judge()


def test_two_schedulers_write_every_event_once_and_in_order(setup: Setup) -> None:
    projectors = [setup.projector(batch=50), setup.projector(batch=50)]
    stop = threading.Event()
    errors: list[BaseException] = []
    skipped: list[bool] = []

    def project(projector: Projector) -> None:
        try:
            while not stop.is_set():
                skipped.append(projector.run().skipped)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=project, args=(p,)) for p in projectors]
    for thread in threads:
        thread.start()
    try:
        setup.append(300, chunk=10)  # 900 records while both project
        wait_until(lambda: projectors[0].stream.length() == 0, timeout=60, what="the stream to drain")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    setup.judge()
    with setup.repository.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event).where(Event.source.is_not(None))) == 900


def test_sql_failing_mid_batch_leaves_the_events_in_redis(setup: Setup) -> None:
    setup.append(100)
    engine = setup.engine()
    failures = [OperationalError("COMMIT", {}, Exception("the server closed the connection"))]

    def fail_once(_connection: Any) -> None:
        if failures:
            raise failures.pop()

    event.listen(engine, "commit", fail_once)
    projector = setup.projector(engine=engine)

    with pytest.raises(OperationalError):
        projector.run()
    assert setup.repository.events("run-a")[-1].source is None, "nothing of the batch was written"
    assert projector.stream.length() == setup.entries, "the events wait in Redis"
    assert projector.projections.position() == "0-0"

    assert projector.run().written == 300
    setup.judge()


def test_postgresql_down_mid_batch_loses_and_doubles_nothing(redis_url: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(PrivatePostgres())
        except Unavailable as exc:
            pytest.skip(f"cannot run a private PostgreSQL here: {exc}")
        setup = Setup(redis_url, server.url)
        setup.start()
        stack.callback(setup.close)
        setup.append(100)
        projector = setup.projector(batch=120)
        real = projector.stream.read_after
        downed: list[bool] = []

        def read_then_go_down(position: str, count: int) -> Any:
            found = real(position, count)
            if not downed:  # the server goes away with the batch half done
                downed.append(True)
                server.down()
            return found

        projector.stream.read_after = read_then_go_down  # type: ignore[method-assign]
        with pytest.raises(OperationalError):
            projector.run()
        assert projector.stream.length() == setup.entries, "the events wait in Redis"
        server.up()
        wait_until(lambda: _runs(projector), timeout=60, what="PostgreSQL to take the batch")
        setup.judge()


def _runs(projector: Projector) -> bool:
    try:
        projector.run()
    except OperationalError:
        return False  # the pool's connections are reopened on the next try
    return projector.stream.length() == 0


def test_redis_restarted_mid_batch_loses_and_doubles_nothing(
    restartable_redis: Any, database_url: str
) -> None:
    with redis.Redis.from_url(restartable_redis.url) as client:
        client.flushdb()
    setup = Setup(restartable_redis.url, database_url)
    setup.start()
    try:
        setup.append(100)
        projector = setup.projector(batch=120)
        real = projector.stream.read_after
        restarted: list[bool] = []

        def read_then_restart(position: str, count: int) -> Any:
            found = real(position, count)
            if not restarted:
                restarted.append(True)
                restartable_redis.restart()  # data kept (append-only file)
            return found

        projector.stream.read_after = read_then_restart  # type: ignore[method-assign]
        with contextlib.suppress(redis.ConnectionError):  # the trim after the commit may fail
            projector.run()
        wait_until(lambda: projector.run().entries == 0 and projector.stream.length() == 0, timeout=30,
                   what="the projection to catch up")  # fmt: skip
        setup.judge()
    finally:
        setup.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import orchestrator.state.projection as projection
    from tests.integration.test_projection import Setup

    redis_url, database_url, namespace, marker = sys.argv[1:5]
    real = projection.write_records

    def write_then_hang(session, records, **options):
        written = real(session, records, **options)
        session.flush()  # the rows are sent; the transaction is still open
        Path(marker).touch()
        time.sleep(120)
        return written

    projection.write_records = write_then_hang
    setup = Setup(redis_url, database_url, namespace=namespace)
    setup.projector(batch=1000).run()
    """
)


def test_a_scheduler_killed_mid_batch_loses_and_doubles_nothing(setup: Setup, tmp_path: Path) -> None:
    setup.append(100)
    marker = tmp_path / "in-the-batch"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, setup.redis_url, setup.database_url, setup.namespace, str(marker)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        wait_until(marker.exists, timeout=60, what="the other scheduler to be in the middle of its batch")
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)

    projector = setup.projector()
    # SQLite's lock, PostgreSQL's row lock: both die with the process.
    wait_until(lambda: projector.run().written == 300, timeout=60, what="the batch to be written again")
    setup.judge()
    assert projector.stream.length() == 0


def test_an_outcome_and_the_projection_write_each_event_once(setup: Setup) -> None:
    setup.repository.mark_claimed("run-a", 1, 1, "n1")
    stream = setup.stream()
    records = [setup.record("run-a") for _ in range(5)]
    appended = stream.append("run-a", 1, [r.encode() for r in records])
    assert appended is not None
    projector = setup.projector()
    projector.run()  # the first five are in SQL
    later = [setup.record("run-a") for _ in range(5)]
    assert stream.append("run-a", 1, [r.encode() for r in later]) is not None

    # The attempt ends: its outcome carries what it cannot know is in SQL (all ten, say).
    setup.repository.finish_attempt(
        "run-a", 1, 1, "n1", RunState.SUCCEEDED, None, {}, records=records + later
    )
    assert projector.run().written == 0, "the projection finds them written"
    setup.judge()
    kinds = [e.kind for e in setup.repository.events("run-a")]
    assert kinds == ["submitted", "dispatched", "claimed", *["item_done"] * 10, "finished"]


def test_a_fenced_attempt_appends_nothing(setup: Setup) -> None:
    stream = setup.stream()
    setup.client().set(f"{setup.namespace}:epoch:run-a", 2)  # a newer attempt took the run over
    assert stream.append("run-a", 1, [setup.record("run-a").encode()]) is None
    assert stream.length() == 0
    assert stream.append("run-a", 2, [setup.record("run-a").encode()]) is not None


def test_an_append_is_one_entry_of_at_most_entry_records_and_a_batch_is_whole_entries(setup: Setup) -> None:
    stream = setup.stream()
    records = [setup.record("run-a") for _ in range(ENTRY_RECORDS + 30)]
    appended = stream.append("run-a", 1, [r.encode() for r in records])

    assert appended is not None
    assert stream.length() == 2, "a full entry, then the rest"
    assert len(appended.ids) == len(records), "every record has its entry's id"
    assert len(set(appended.ids)) == 2
    assert appended.ids == sorted(appended.ids, key=parse_id)
    projector = setup.projector(batch=40)
    done = projector.run()
    # The first batch takes the whole first entry (past its size), the second the rest.
    assert (done.entries, done.written, done.batches) == (len(records), len(records), 2)
    setup.judge()
    assert stream.length() == 0


def test_an_entry_of_one_record_as_older_workers_wrote_it_is_still_read(setup: Setup) -> None:
    client, stream = setup.client(), setup.stream()
    client.xadd(stream.key, {"r": setup.record("run-a").encode()})
    client.xadd(stream.key, {"r": "[" + setup.record("run-a").encode() + ', {"not": "a record"}]'})
    client.xadd(stream.key, {"r": "not json"})
    assert stream.append("run-a", 1, [setup.record("run-a").encode()]) is not None

    done = setup.projector().run()

    assert done.written == 3, "the unreadable item and entry are skipped, nothing else"
    setup.judge()
    assert stream.length() == 0


def test_an_outcome_reads_its_task_rows_once_and_writes_each_changed_row_once(setup: Setup) -> None:
    engine = setup.engine()
    repository = Repository(engine)
    repository.mark_claimed("run-a", 1, 1, "n1")
    started = Record(
        "task",
        "run-a",
        1,
        1,
        "n1",
        1,
        time.time(),
        None,
        {},
        (TaskChange("a", state="running", tries=1, started=True),),
    )
    done = Record(
        "event",
        "run-a",
        1,
        1,
        "n1",
        2,
        time.time(),
        "task_done",
        {"task": "a"},
        (TaskChange("a", state="succeeded", seconds=0.5),),
    )
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    repository.finish_attempt(
        "run-a", 1, 1, "n1", RunState.SUCCEEDED, None,
        {"a": TaskState.SUCCEEDED, "b": TaskState.SKIPPED}, records=[started, done],
    )  # fmt: skip

    on_tasks = [s.split()[0] for s in statements if "task_runs" in s]
    assert on_tasks == ["SELECT", "INSERT"], statements
    rows = repository.task_states("run-a")
    assert (rows["a"].state, rows["a"].tries, rows["a"].duration_seconds) == (TaskState.SUCCEEDED, 1, 0.5)
    assert rows["a"].started_at is not None and rows["a"].finished_at is not None
    assert (rows["b"].state, rows["b"].attempt, rows["b"].tries) == (TaskState.SKIPPED, 1, 0)
    kinds = [e.kind for e in repository.events("run-a")]
    assert kinds == ["submitted", "dispatched", "claimed", "task_done", "finished"]


def test_a_run_of_a_new_package_is_created_with_its_definition_in_one_transaction(setup: Setup) -> None:
    """The definition is registered by the run's creation; a second scheduler that has not seen
    it either creates its run of the same package too (the row is there once)."""
    package = parse_package(
        {"name": "fresh", "tasks": [{"id": "a", "shell": "true"}, {"id": "b", "shell": "true"}]}
    )
    engines = [setup.engine(), setup.engine()]
    first, second = (Repository(engine) for engine in engines)
    transactions = commits(engines[0])

    assert first.create_run("fresh-1", package, {}, max_restarts=1, epoch=1) == ("fresh-1", True)
    assert len(transactions) == 1
    assert second.create_run("fresh-2", package, {}, max_restarts=1, epoch=1) == ("fresh-2", True)
    assert first.create_run("fresh-3", package, {}, max_restarts=1, epoch=1) == ("fresh-3", True)
    assert len(transactions) == 2, "a definition this process registered is not written again"

    reader = Repository(setup.engine())
    assert parse_package(reader.definition("fresh", package.definition_hash)) == package
    with reader.sessions() as session:
        rows = session.execute(select(func.count()).select_from(PackageRow).where(PackageRow.name == "fresh"))
        assert rows.scalar_one() == 1


def test_a_claim_brings_the_package_definition_that_the_attempt_reads_next(setup: Setup) -> None:
    """A process that has not seen the package yet (a pool process's first attempt) reads its
    definition in the claim's transaction: the attempt's read of it is no statement of its own."""
    setup.repository.register_package(PACKAGE)
    engine = setup.engine()
    repository = Repository(engine)  # a new process's: nothing remembered
    transactions = commits(engine)
    run = repository.mark_claimed("run-a", 1, 1, "n1")
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    definition = repository.definition(run.package, run.definition_hash)

    assert statements == []
    assert len(transactions) == 1, "the claim is one transaction"
    assert parse_package(definition) == PACKAGE
    definition["tasks"].clear()  # a caller's copy: what is remembered stays whole
    assert parse_package(repository.definition(run.package, run.definition_hash)) == PACKAGE


def test_a_batch_looks_up_no_events_of_a_running_attempt_and_stores_a_repeated_append_once(
    setup: Setup,
) -> None:
    """A retried append (the first reached Redis, its reply did not) repeats records; the batch
    writing them has not looked them up (the run's current attempt, still going), yet stores
    each once, and its later records still count."""
    setup.repository.mark_claimed("run-a", 1, 1, "n1")
    stream = setup.stream()
    first = [setup.record("run-a") for _ in range(5)]
    assert stream.append("run-a", 1, [r.encode() for r in first]) is not None
    projector = setup.projector()
    assert projector.run().written == 5
    later = [setup.record("run-a") for _ in range(3)]
    assert stream.append("run-a", 1, [r.encode() for r in first[3:] + later]) is not None
    engine = setup.engine()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    done = setup.projector(engine=engine).run()

    assert done.entries == 5
    assert not [s for s in statements if s.lstrip().startswith("SELECT") and "FROM events" in s], statements
    setup.judge()  # the two repeated records are stored once, in their first place


def test_a_batch_after_the_outcome_finds_the_records_written_and_counts_none(setup: Setup) -> None:
    setup.repository.mark_claimed("run-a", 1, 1, "n1")
    stream = setup.stream()
    records = [setup.record("run-a") for _ in range(4)]
    assert stream.append("run-a", 1, [r.encode() for r in records]) is not None
    setup.repository.finish_attempt("run-a", 1, 1, "n1", RunState.SUCCEEDED, None, {}, records=records)
    engine = setup.engine()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    assert setup.projector(engine=engine).run().written == 0, "the run ended: its records are looked up"
    assert [s for s in statements if s.lstrip().startswith("SELECT") and "FROM events" in s]
    setup.judge()


def test_the_outcome_looks_its_records_up_with_one_statement_text_whatever_their_count(setup: Setup) -> None:
    """On PostgreSQL the lookup is ``= ANY(array)``: the driver converts its text once per process,
    not once per count of records (an expanding ``IN`` is a new text for every count)."""
    engine = setup.engine()
    repository = Repository(engine)
    lookups: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda *args: lookups.append(args[2]) if "FROM events" in args[2] else None,
    )
    for run_id, count in (("run-a", 1), ("run-b", 4)):
        repository.mark_claimed(run_id, 1, 1, "n1")
        records = [setup.record(run_id) for _ in range(count)]
        repository.finish_attempt(run_id, 1, 1, "n1", RunState.SUCCEEDED, None, {}, records=records)

    assert len(lookups) == 2
    if engine.dialect.name == "postgresql":
        assert lookups[0] == lookups[1]
    setup.judge()
