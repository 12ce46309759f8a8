"""``orchestrator validate --connect``'s checks against real databases (SQLite, PostgreSQL, MariaDB).

One package holds a copy for each problem only a database can show: every
problem is reported at once with its task's id, nothing is written, and no
password shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from orchestrator.packages import parse_package
from tests.support.etl import execute, rows
from workers.etl.checks import check_connected

pytestmark = pytest.mark.timeout(120)

ORDERS = "CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, customer VARCHAR(40), amount NUMERIC(12, 2))"
SECRET = "pw-Never-Shown-7q"


def copy(
    task: str, source: dict[str, Any], destination: str = "orders_copy", foreach: Any = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": task,
        "copy": {
            "source": {"connection": "db", "key": ["id"], **source},
            "destination": {"connection": "db", "table": destination},
            **extra,
        },
        **({"foreach": foreach} if foreach is not None else {}),
    }


def problems_package(url: str, unreachable: str) -> dict[str, Any]:
    return {
        "name": "checked",
        "variables": {"db": {"type": "str", "default": url}},
        "connections": {"db": {"url": "{{ vars.db }}"}, "gone": {"url": unreachable}},
        "tasks": [
            copy("fine", {"table": "orders"}),
            copy("no_table", {"table": "nowhere"}),
            copy("no_destination", {"table": "orders"}, destination="nowhere_copy"),
            copy("tied_key", {"table": "orders", "key": ["customer"]}),
            copy("no_key_column", {"table": "orders", "key": ["missing"]}),
            copy("null_keys", {"query": "SELECT id, customer, amount FROM nulls"}),
            copy("columns", {"table": "orders"}, destination="narrow"),
            copy("columns_with_transform", {"table": "orders"}, destination="narrow", transform="m:f"),
            copy(
                "per_item",
                {"query": "SELECT id, customer, amount FROM nulls WHERE customer = :item"},
                foreach=["a", "b"],
            ),
            {"id": "remote", "sql": {"connection": "gone", "statements": ["SELECT 1"]}},
        ],
    }


def unreachable_url(url: str, tmp_path: Path) -> str:
    """A connection that cannot open: a wrong user (password from the environment), or for
    SQLite a file in a directory that does not exist."""
    if make_url(url).get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    return make_url(url).set(username="nobody_here", password=None).render_as_string(hide_password=False)


def test_every_problem_is_reported_with_its_task(
    etl_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute(
        etl_url,
        ORDERS.format(name="orders"),
        ORDERS.format(name="orders_copy"),
        "CREATE TABLE narrow (id INTEGER NOT NULL PRIMARY KEY, customer VARCHAR(40))",
        "CREATE TABLE nulls (id INTEGER, customer VARCHAR(40), amount NUMERIC(12, 2))",
        "INSERT INTO orders VALUES (1, 'x', 1.5)",
        "INSERT INTO nulls VALUES (NULL, 'b', 1)",
        "INSERT INTO nulls VALUES (2, 'a', 1)",
    )
    monkeypatch.setenv("ORCHESTRATOR_CONN_GONE_PASSWORD", SECRET)
    package = parse_package(problems_package(etl_url, unreachable_url(etl_url, tmp_path)))

    issues = check_connected(package, {"db": etl_url})

    found = {(issue.path, _fragment(issue.message)) for issue in issues}
    assert found == {
        ("connections.gone", "(used by remote)"),
        ("task 'no_table': copy.source", "table 'nowhere' not found on connection 'db'"),
        ("task 'no_destination': copy.destination", "table 'nowhere_copy' not found on connection 'db'"),
        ("task 'tied_key': copy.source", "is not unique"),
        ("task 'no_key_column': copy.source", "no key column(s) 'missing'"),
        ("task 'null_keys': copy.source", "NULLs in key column(s) ['id']"),
        ("task 'columns': copy.source", "columns that do not match: 'amount'"),
        ("task 'per_item' item 'b': copy.source", "NULLs in key column(s) ['id']"),
    }, "\n".join(map(str, issues))
    assert SECRET not in "\n".join(map(str, issues))
    assert rows(etl_url, "SELECT COUNT(*) FROM orders_copy") == [(0,)]
    assert "orchestrator_copy_state" not in _tables(etl_url), "the checks wrote nothing"


def test_a_sound_package_has_no_problem(etl_url: str) -> None:
    execute(etl_url, ORDERS.format(name="orders"), ORDERS.format(name="orders_copy"))
    package = parse_package(
        {
            "name": "sound",
            "connections": {"db": {"url": etl_url}},
            "tasks": [copy("fine", {"table": "orders"}), copy("query", {"query": "SELECT * FROM orders"})],
        }
    )
    assert check_connected(package, {}) == []


def _fragment(message: str) -> str:
    for fragment in (
        "(used by remote)",
        "not found on connection 'db'",
        "is not unique",
        "no key column(s) 'missing'",
        "NULLs in key column(s) ['id']",
        "columns that do not match: 'amount'",
    ):
        if fragment in message:
            return message[message.index("table '") :] if "not found" in message else fragment
    return message


def _tables(url: str) -> list[str]:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()
