"""``sql`` and ``copy`` tasks run by the executor (no broker), on SQLite, PostgreSQL and MariaDB.

The executor dispatches them like any task: params templated, the output in
the run's outputs, the copy's progress in the checkpoint, rows counted in
``orchestrator_copy_rows_total``; connection passwords come from sensitive
variables or ``ORCHESTRATOR_CONN_<NAME>_PASSWORD`` and never show in errors.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from checkpoints import InMemoryCheckpointStore
from orchestrator.packages import parse_package
from orchestrator.state.states import RunState
from tests.support.etl import checksum, execute, rows
from workers.etl import MAX_SQL_ROWS
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
