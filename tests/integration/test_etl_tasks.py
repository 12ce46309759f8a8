"""``sql`` and ``copy`` tasks run by the executor (no broker), on SQLite, PostgreSQL and MariaDB.

The executor dispatches them like any task: params templated, the output in
the run's outputs, the copy's progress in the checkpoint, rows counted in
``orchestrator_copy_rows_total``; connection passwords come from sensitive
variables or ``ORCHESTRATOR_CONN_<NAME>_PASSWORD`` and never show in errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import Pool

from checkpoints import InMemoryCheckpointStore
from orchestrator.packages import parse_package
from orchestrator.state.states import RunState
from tests.support.etl import checksum, execute, rows
from workers.etl import MAX_SQL_ROWS, Connections, EnginePool, EtlError
from workers.executor import ExecutionOptions, RunRequest
from workers.executor import execute as run_package

pytestmark = pytest.mark.timeout(120)


def nightly(url: str) -> dict[str, Any]:
    return {
        "name": "nightly",
        "variables": {"min_id": {"type": "int", "default": 3}, "db": {"type": "str", "default": url}},
        "connections": {"db": {"url": "{{ vars.db }}"}},
        "tasks": [
            {
                "id": "prepare",
                "sql": {
                    "connection": "db",
                    "statements": [
                        "CREATE TABLE src (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(20))",
                        "CREATE TABLE dst (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(20))",
                        "INSERT INTO src (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')",
                        "DELETE FROM src WHERE id < :min_id",
                    ],
                    "params": {"min_id": "{{ vars.min_id }}"},
                },
            },
            {
                "id": "copy",
                "copy": {
                    "source": {"connection": "db", "table": "src", "key": ["id"]},
                    "destination": {"connection": "db", "table": "dst"},
                    "batch_size": 2,
                },
                "depends_on": ["prepare"],
            },
            {
                "id": "report",
                "sql": {"connection": "db", "statements": ["SELECT id, name FROM dst ORDER BY id"]},
                "depends_on": ["copy"],
            },
        ],
    }


def copied_total(package: str, task: str) -> float:
    return (
        REGISTRY.get_sample_value("orchestrator_copy_rows_total", {"package": package, "task": task}) or 0.0
    )


def test_a_package_of_sql_and_copy_tasks(etl_url: str) -> None:
    before = copied_total("nightly", "copy")
    store = InMemoryCheckpointStore()
    result = run_package(RunRequest(parse_package(nightly(etl_url)), "r1"), ExecutionOptions(store=store))
    assert result.state is RunState.SUCCEEDED, result.error
    assert result.outputs["prepare"] == {"rowcount": 2}
    assert result.outputs["copy"]["rows"] == 3 and result.outputs["copy"]["batches"] == 2
    assert result.outputs["report"] == {
        "rows": [{"id": 3, "name": "c"}, {"id": 4, "name": "d"}, {"id": 5, "name": "e"}],
        "truncated": False,
    }
    assert copied_total("nightly", "copy") - before == 3
    assert checksum(etl_url, "dst", "id") == checksum(etl_url, "src", "id")


def test_sql_statements_are_one_transaction(etl_url: str) -> None:
    execute(etl_url, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    definition = {
        "name": "tx",
        "connections": {"db": {"url": etl_url}},
        "tasks": [
            {
                "id": "two",
                "sql": {
                    "connection": "db",
                    "statements": ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"],
                },
            }
        ],
    }
    result = run_package(RunRequest(parse_package(definition), "r1"))
    assert result.state is RunState.FAILED
    assert "connection 'db': sql statement failed: " in (result.error or "")
    assert rows(etl_url, "SELECT COUNT(*) FROM t") == [(0,)], "the first statement was not rolled back"


def test_sql_output_rows_are_limited(etl_url: str) -> None:
    execute(etl_url, "CREATE TABLE n (id INTEGER PRIMARY KEY)")
    execute(etl_url, "INSERT INTO n VALUES (:id)", params=[{"id": i} for i in range(MAX_SQL_ROWS + 5)])
    definition = {
        "name": "many",
        "connections": {"db": {"url": etl_url}},
        "tasks": [{"id": "all", "sql": {"connection": "db", "statements": ["SELECT id FROM n ORDER BY id"]}}],
    }
    result = run_package(RunRequest(parse_package(definition), "r1"))
    output = result.outputs["all"]
    assert len(output["rows"]) == MAX_SQL_ROWS and output["truncated"] is True


def test_passwords_stay_out_of_errors(etl_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong password: the error names the connection, never the password (variable or env)."""
    if make_url(etl_url).get_backend_name() == "sqlite":
        pytest.skip("SQLite has no passwords")
    url = make_url(etl_url).set(username="nobody_here", password=None).render_as_string(hide_password=False)
    definition = {
        "name": "secret",
        "variables": {"pw": {"type": "str", "sensitive": True}},
        "connections": {"a": {"url": url, "password": "{{ vars.pw }}"}, "b": {"url": url}},
        "tasks": [
            {"id": "one", "sql": {"connection": "a", "statements": ["SELECT 1"]}},
            {"id": "two", "sql": {"connection": "b", "statements": ["SELECT 1"]}},
        ],
    }
    monkeypatch.setenv("ORCHESTRATOR_CONN_B_PASSWORD", "env-secret-Zq9")
    result = run_package(RunRequest(parse_package(definition), "r1", {"pw": "var-secret-Xk7"}))
    assert result.state is RunState.FAILED
    assert "connection 'a'" in (result.error or "") or "connection 'b'" in (result.error or "")
    assert "var-secret-Xk7" not in repr(result) and "env-secret-Zq9" not in repr(result)


def test_a_copy_per_foreach_item(etl_url: str) -> None:
    """One partition per item: ``:item`` in the source query is the item; one state row each."""
    table = "CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, region VARCHAR(8) NOT NULL)"
    execute(etl_url, table.format(name="src"), table.format(name="dst"))
    values = [{"id": n, "region": ("eu", "us", "apac")[n % 3]} for n in range(1, 31)]
    execute(etl_url, "INSERT INTO src VALUES (:id, :region)", params=values)
    definition = {
        "name": "parts",
        "connections": {"db": {"url": etl_url}},
        "tasks": [
            {
                "id": "copy",
                "foreach": ["eu", "us"],
                "copy": {
                    "source": {
                        "connection": "db",
                        "query": "SELECT id, region FROM src WHERE region = :item",
                        "key": ["id"],
                    },
                    "destination": {"connection": "db", "table": "dst"},
                    "batch_size": 3,
                },
            }
        ],
    }
    result = run_package(
        RunRequest(parse_package(definition), "r1"), ExecutionOptions(store=InMemoryCheckpointStore())
    )
    assert result.state is RunState.SUCCEEDED, result.error
    assert rows(etl_url, "SELECT region, COUNT(*) FROM dst GROUP BY region ORDER BY region") == [
        ("eu", 10),
        ("us", 10),
    ]
    assert rows(etl_url, "SELECT item, rows_copied FROM orchestrator_copy_state ORDER BY item") == [
        ("eu", 10),
        ("us", 10),
    ]


class _Pools:
    """The engines that connect during a run and the database connections they open and close."""

    def __init__(self) -> None:
        self.engines: set[int] = set()
        self.opened: set[int] = set()
        self.closed: set[int] = set()

    def __enter__(self) -> _Pools:
        event.listen(Engine, "engine_connect", self._used)
        event.listen(Pool, "connect", self._opened)
        event.listen(Pool, "close", self._closed)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "engine_connect", self._used)
        event.remove(Pool, "connect", self._opened)
        event.remove(Pool, "close", self._closed)

    def _used(self, connection: Any) -> None:
        self.engines.add(id(connection.engine))

    def _opened(self, dbapi_connection: Any, record: Any) -> None:
        self.opened.add(id(dbapi_connection))

    def _closed(self, dbapi_connection: Any, record: Any) -> None:
        self.closed.add(id(dbapi_connection))


def pooled(url: str, failing: bool = False) -> dict[str, Any]:
    sql = {"connection": "db", "statements": ["SELECT 1"]}
    last = {"connection": "db", "statements": ["SELECT * FROM no_such_table" if failing else "SELECT 2"]}
    return {
        "name": "pooled",
        "connections": {"db": {"url": url}},
        "tasks": [
            {"id": "a", "sql": sql},
            {"id": "b", "sql": sql, "depends_on": ["a"]},
            {"id": "items", "sql": sql, "foreach": list(range(8)), "concurrency": 2, "depends_on": ["b"]},
            {"id": "last", "sql": last, "depends_on": ["items"]},
        ],
    }


@pytest.mark.parametrize("failing", [False, True], ids=["succeeded", "failed"])
def test_connections_are_pooled_for_the_attempt_and_closed_when_it_ends(etl_url: str, failing: bool) -> None:
    """Eleven units (two tasks, eight foreach items two at a time, a last task) share one engine
    and reuse its connections; every connection is closed when the attempt ends, failed or not."""
    with _Pools() as pools:
        result = run_package(RunRequest(parse_package(pooled(etl_url, failing)), "r1"))
    assert result.state is (RunState.FAILED if failing else RunState.SUCCEEDED), result.error
    assert len(pools.engines) == 1, "one engine per connection for the whole attempt"
    assert 1 <= len(pools.opened) <= 2, f"{len(pools.opened)} connections for 11 units, 2 at a time"
    assert pools.opened <= pools.closed, "a connection outlived its attempt"


def test_an_engine_pool_refuses_engines_once_closed() -> None:
    pool = EnginePool()
    connections = Connections(parse_package(pooled("sqlite://")).connections, {}, pool)
    engine = connections.engine("db")
    assert Connections(parse_package(pooled("sqlite://")).connections, {}, pool).engine("db") is engine
    connections.close()
    assert pool.open == 1, "a unit's close leaves the attempt's engines open"
    pool.close()
    assert pool.open == 0
    with pytest.raises(EtlError, match="the attempt is over"):
        Connections(parse_package(pooled("sqlite://")).connections, {}, pool).engine("db")


def test_a_unit_that_outlives_its_attempt_closes_what_it_opened(tmp_path: Path) -> None:
    """A unit still running when its attempt ended (abandoned after the stop grace) closes the
    connections it opened since, when it ends."""
    pool = EnginePool()
    connections = Connections(
        parse_package(pooled(f"sqlite:///{tmp_path / 'db.sqlite'}")).connections, {}, pool
    )
    engine = connections.engine("db")
    pool.close()
    with _Pools() as pools:
        with engine.connect() as connection:  # the unit goes on after the attempt's end
            connection.exec_driver_sql("SELECT 1")
        connections.close()
    assert pools.opened and pools.opened <= pools.closed
