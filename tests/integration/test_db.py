"""The run-state database on SQLite and PostgreSQL: migrations, round trips, constraints.

Every test taking ``database_url`` or ``database_engine`` runs once per
backend (``sqlite`` / ``postgresql``; see tests/support/databases.py).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, delete, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from orchestrator.errors import ClusterUnavailable
from orchestrator.state import (
    Attempt,
    AttemptState,
    Base,
    Event,
    Node,
    NodeState,
    Package,
    Run,
    TaskRun,
    current_revision,
    head_revision,
    make_engine,
    session_factory,
    upgrade,
)
from orchestrator.state.migrate import HEAD
from orchestrator.state.states import RunState, TaskState

HASH = "a" * 64
TABLES = {"packages", "runs", "attempts", "task_runs", "events", "nodes", "projections"}
TABLES |= {"package_versions", "schedules", "maintenance", "task_logs", "task_log_trims"}

# Run by each child process: wait at a barrier so all children hit the
# database at the same moment, then upgrade, or bump a counter many times.
CHILD = """
import sys, time
from pathlib import Path
from sqlalchemy import select
from orchestrator.state import Run, make_engine, session_factory, upgrade

mode, url, sync, name, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
(sync / f"ready-{name}").touch()
deadline = time.monotonic() + 60
while not (sync / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal within 60 s")
    time.sleep(0.002)  # poll; bounded by the deadline above
engine = make_engine(url)
if mode == "upgrade":
    upgrade(engine)
else:
    sessions = session_factory(engine)
    for _ in range(count):
        with sessions.begin() as session:
            query = select(Run).where(Run.id == "counter").with_for_update()
            session.execute(query).scalar_one().restarts += 1
engine.dispose()
"""


def run_together(
    sync: Path, mode: str, url: str, *, children: int, count: int = 0, timeout: float = 90
) -> None:
    """Run ``children`` child processes released together; fail on any non-zero exit."""
    sync.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, url, str(sync), str(index), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(children)
    ]
    deadline = time.monotonic() + timeout
    while len(list(sync.glob("ready-*"))) < children:
        assert all(child.poll() is None for child in processes), "a child died before the barrier"
        assert time.monotonic() < deadline, "children did not start in time"
        time.sleep(0.01)  # poll; bounded by the deadline above
    (sync / "go").touch()
    for child in processes:
        _, stderr = child.communicate(timeout=max(deadline - time.monotonic(), 1))
        assert child.returncode == 0, stderr


def new_run(run_id: str = "run-1", **fields: object) -> Run:
    return Run(id=run_id, package="orders_nightly", definition_hash=HASH, max_restarts=5, **fields)


# --- engines -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_urls_use_psycopg(scheme: str) -> None:
    engine = make_engine(f"{scheme}://user:pw@db.example/state")

    assert engine.url.drivername == "postgresql+psycopg"
    engine.dispose()


def test_the_password_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator")
    engine = make_engine("postgresql://user:s3cr3t-pw@127.0.0.1:1/state", connect_args={"connect_timeout": 2})

    with pytest.raises(ClusterUnavailable) as caught:
        upgrade(engine)

    assert "127.0.0.1" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "127.0.0.1" in caplog.text
    assert "s3cr3t-pw" not in caplog.text
    engine.dispose()


def test_sqlite_engine_is_set_up_for_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "state.db"
    engine = make_engine(f"sqlite:///{path}")

    with engine.connect() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
    assert path.exists()
    assert pragmas == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1}
    engine.dispose()


def test_sessions_keep_objects_readable_after_commit(database_engine: Engine) -> None:
    sessions = session_factory(database_engine)
    with sessions.begin() as session:
        run = new_run()
        session.add(run)

    assert run.state is RunState.QUEUED  # no reload needed, no DetachedInstanceError


# --- migrations ----------------------------------------------------------------------------


def test_upgrade_creates_the_schema_of_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None

    upgrade(engine)

    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_the_head_constant_is_the_newest_packaged_migration() -> None:
    assert HEAD == head_revision()


def test_a_database_at_head_is_read_without_alembic(database_engine: Engine) -> None:
    """Every command calls upgrade(); at head it reads the version row, and Alembic (about 0.05 s
    of imports) stays unloaded: a new process checks it."""
    url = database_engine.url.render_as_string(hide_password=False)
    code = (
        "import sys\n"
        "from orchestrator.state import make_engine, upgrade\n"
        f"upgrade(make_engine({url!r}))\n"
        "assert 'alembic' not in sys.modules, 'alembic imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_database_behind_head_is_migrated_by_the_full_path(database_engine: Engine) -> None:
    from alembic import command

    from orchestrator.state.migrate import alembic_config

    with database_engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0004")
    assert "task_logs" not in inspect(database_engine).get_table_names()
    upgrade(database_engine)
    assert current_revision(database_engine) == HEAD
    assert {"task_logs", "task_log_trims"} <= set(inspect(database_engine).get_table_names())


def test_upgrade_twice_is_a_noop(database_engine: Engine) -> None:
    with session_factory(database_engine).begin() as session:
        session.add(new_run())

    upgrade(database_engine)

    assert current_revision(database_engine) == head_revision()
    assert set(inspect(database_engine).get_table_names()) == TABLES | {"alembic_version"}
    with session_factory(database_engine)() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 1


def test_concurrent_upgrades_from_two_processes(database_url: str, tmp_path: Path) -> None:
    run_together(tmp_path / "sync", "upgrade", database_url, children=2)

    engine = make_engine(database_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT count(*) FROM alembic_version")).scalar()
    assert versions == 1
    engine.dispose()


def test_concurrent_writers_lose_no_update(database_engine: Engine, tmp_path: Path) -> None:
    with session_factory(database_engine).begin() as session:
        session.add(new_run("counter"))
    url = database_engine.url.render_as_string(hide_password=False)

    run_together(tmp_path / "sync", "increment", url, children=4, count=25)

    with session_factory(database_engine)() as session:
        counter = session.get(Run, "counter")
        assert counter is not None
        assert counter.restarts == 100


# --- round trips ---------------------------------------------------------------------------


def test_a_run_and_its_history_round_trip(database_engine: Engine) -> None:
    local = timezone(timedelta(hours=2))
    submitted = datetime(2026, 11, 24, 23, 30, 15, 123456, tzinfo=local)
    variables = {"batch_date": "2026-11-24", "rows": 3, "ratio": 0.5, "nested": {"ü": [1, None]}}
    sessions = session_factory(database_engine)
    with sessions.begin() as session:
        session.add(Package(name="orders_nightly", definition_hash=HASH, definition={"a": [1]}))
        session.add(new_run(variables=variables, submitted_at=submitted, idempotency_key="k"))
        session.flush()
        session.add_all(
            [
                Attempt(run_id="run-1", number=2, epoch=2, state=AttemptState.RUNNING),
                Attempt(run_id="run-1", number=1, epoch=1, state=AttemptState.LOST, node="n1"),
                TaskRun(run_id="run-1", task_id="extract", state=TaskState.SUCCEEDED,
                        attempt=1, tries=2, duration_seconds=1.25),
                Event(run_id="run-1", kind="submitted"),
                Event(run_id="run-1", kind="node_lost", node="n1", attempt=1,
                      detail={"lease_ttl": 5.0, "tasks": ["extract"]}),
            ]
        )  # fmt: skip

    with sessions() as session:
        run = session.get(Run, "run-1")
        assert run is not None
        assert run.submitted_at == submitted
        assert run.submitted_at.tzinfo is UTC
        assert run.submitted_at.hour == 21
        assert run.variables == variables
        assert (run.state, run.attempt, run.epoch, run.restarts) == (RunState.QUEUED, 0, 0, 0)
        assert isinstance(run.state, RunState)
        assert run.cancel_requested is False
        assert run.started_at is None
        assert run.updated_at.tzinfo is UTC
        assert [(a.number, a.state) for a in run.attempts] == [
            (1, AttemptState.LOST),
            (2, AttemptState.RUNNING),
        ]
        assert run.attempts[0].dispatched_at.tzinfo is UTC
        task = run.tasks[0]
        assert (task.state, task.tries, task.duration_seconds) == (TaskState.SUCCEEDED, 2, 1.25)
        assert [(e.kind, e.detail) for e in run.events] == [
            ("submitted", {}),
            ("node_lost", {"lease_ttl": 5.0, "tasks": ["extract"]}),
        ]
        package = session.get(Package, ("orders_nightly", HASH))
        assert package is not None
        assert package.definition == {"a": [1]}


def test_a_node_round_trips(database_engine: Engine) -> None:
    seen = datetime.now(UTC)
    sessions = session_factory(database_engine)
    with sessions.begin() as session:
        session.add(Node(name="node-a", hostname="host", pid=42, concurrency=2, last_seen=seen))

    with sessions() as session:
        node = session.get(Node, "node-a")
        assert node is not None
        assert (node.state, node.metrics_port, node.last_seen) == (NodeState.ALIVE, None, seen)
        assert node.started_at.tzinfo is UTC


def test_naive_timestamps_are_refused(database_engine: Engine) -> None:
    with session_factory(database_engine)() as session:
        session.add(new_run(submitted_at=datetime(2026, 11, 24, 12, 0)))

        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()


def test_unknown_states_are_refused(database_engine: Engine) -> None:
    with session_factory(database_engine)() as session:
        session.add(new_run(state="exploded"))

        with pytest.raises(StatementError, match="'exploded' is not a valid RunState"):
            session.flush()


# --- constraints ---------------------------------------------------------------------------


def insert_twice(engine: Engine, first: Base, second: Base, *setup: Base) -> None:
    """Commit ``setup`` and ``first``; assert that adding ``second`` violates a constraint."""
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add_all([*setup, first])
    with sessions() as session, pytest.raises(IntegrityError):
        session.add(second)
        session.flush()


def test_a_package_definition_is_registered_once(database_engine: Engine) -> None:
    insert_twice(
        database_engine,
        Package(name="p", definition_hash=HASH, definition={}),
        Package(name="p", definition_hash=HASH, definition={"other": True}),
    )


def test_run_ids_are_unique(database_engine: Engine) -> None:
    insert_twice(database_engine, new_run(), new_run())


def test_idempotency_keys_are_unique(database_engine: Engine) -> None:
    insert_twice(
        database_engine,
        new_run("run-1", idempotency_key="key"),
        new_run("run-2", idempotency_key="key"),
    )


def test_runs_without_idempotency_key_coexist(database_engine: Engine) -> None:
    with session_factory(database_engine).begin() as session:
        session.add_all([new_run("run-1"), new_run("run-2")])

    with session_factory(database_engine)() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 2


def test_an_attempt_number_is_used_once_per_run(database_engine: Engine) -> None:
    insert_twice(
        database_engine,
        Attempt(run_id="run-1", number=1, epoch=1),
        Attempt(run_id="run-1", number=1, epoch=2),
        new_run(),
    )


def test_a_task_has_one_row_per_run(database_engine: Engine) -> None:
    insert_twice(
        database_engine,
        TaskRun(run_id="run-1", task_id="extract"),
        TaskRun(run_id="run-1", task_id="extract"),
        new_run(),
    )


def test_history_needs_an_existing_run(database_engine: Engine) -> None:
    with session_factory(database_engine)() as session, pytest.raises(IntegrityError):
        session.add(Event(run_id="no-such-run", kind="submitted"))
        session.flush()


def test_deleting_a_run_deletes_its_history(database_engine: Engine) -> None:
    sessions = session_factory(database_engine)
    with sessions.begin() as session:
        session.add(new_run())
        session.flush()
        session.add_all(
            [
                Attempt(run_id="run-1", number=1, epoch=1),
                TaskRun(run_id="run-1", task_id="extract"),
                Event(run_id="run-1", kind="submitted"),
            ]
        )

    with sessions.begin() as session:
        session.execute(delete(Run).where(Run.id == "run-1"))

    with sessions() as session:
        for model in (Attempt, TaskRun, Event):
            assert session.scalar(select(func.count()).select_from(model)) == 0


def test_the_catalog_migration_goes_down_and_up_again(database_engine: Engine) -> None:
    from alembic import command

    from orchestrator.state.migrate import alembic_config

    with database_engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
    assert current_revision(database_engine) == "0001"
    assert set(inspect(database_engine).get_table_names()) == TABLES - {
        "package_versions",
        "schedules",
        "maintenance",
        "projections",
        "task_logs",
        "task_log_trims",
    } | {"alembic_version"}
    assert "package_version" not in {c["name"] for c in inspect(database_engine).get_columns("runs")}
    upgrade(database_engine)
    assert current_revision(database_engine) == head_revision()
    with database_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_items_done_counts_each_item_once_across_attempts(database_engine: Engine) -> None:
    """``status`` and the web UI show a foreach's items done from this count: an item an earlier
    attempt finished and a later one finished again (``always_rerun``) is one item."""
    from orchestrator.state import Repository

    with session_factory(database_engine).begin() as session:
        session.add(new_run())
        session.add_all(
            Event(run_id="run-1", kind="item_done", attempt=attempt, detail={"task": task, "item": item})
            for attempt, task, item in [
                (1, "load", "eu"),
                (2, "load", "eu"),
                (2, "load", "us"),
                (2, "files", "a.csv"),
            ]
        )
        session.add(Event(run_id="run-1", kind="checkpoint_saved", attempt=2, detail={"bytes": 200}))
    assert Repository(database_engine).items_done("run-1") == {"load": 2, "files": 1}
    assert Repository(database_engine).items_done("no-such-run") == {}
