"""The ETL keys of the package model: connections, sql and copy tasks, and their validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.packages import load_package, parse_package

ROOT = Path(__file__).resolve().parents[2]


def etl_package() -> dict[str, Any]:
    return {
        "name": "etl",
        "variables": {
            "src_password": {"type": "str", "sensitive": True},
            "dwh_url": {"type": "str", "default": "sqlite:///dwh.db"},
        },
        "connections": {
            "src": {"url": "postgresql+psycopg://etl@db1/oltp", "password": "{{ vars.src_password }}"},
            "dwh": {"url": "{{ vars.dwh_url }}"},
        },
        "tasks": [
            {"id": "stage", "sql": {"connection": "dwh", "statements": ["DELETE FROM stage"], "params": {}}},
            {
                "id": "copy_orders",
                "copy": {
                    "source": {"connection": "src", "table": "public.orders", "key": ["order_id"]},
                    "destination": {"connection": "dwh", "table": "stage_orders"},
                    "batch_size": 500,
                    "transform": "examples.warehouse:clean",
                },
                "depends_on": ["stage"],
            },
        ],
    }


def issues_of(data: dict[str, Any]) -> list[Issue]:
    with pytest.raises(PackageInvalid) as raised:
        parse_package(data)
    return raised.value.issues


def test_an_etl_package_round_trips_with_its_copy_key() -> None:
    package = parse_package(etl_package())
    task = package.task("copy_orders")
    assert task.kind == "copy" and task.copy_ is not None and task.copy_.batch_size == 500
    assert package.task("stage").kind == "sql"
    dumped = package.to_dict()
    assert "copy" in dumped["tasks"][1] and "copy_" not in dumped["tasks"][1]
    again = parse_package(dumped)
    assert again == package and again.definition_hash == package.definition_hash


def test_packages_without_etl_keys_keep_their_definition_hash() -> None:
    """The hash of examples/orders_nightly.yaml before the ETL keys existed (main at issue 10)."""
    package = load_package(ROOT / "examples" / "orders_nightly.yaml")
    assert package.definition_hash == "f201794ebfbc9624daf135e117e5a9484765bac9a6f1bf6cfbde3af822bc1730"


def test_the_copy_definition_counts_in_the_hash() -> None:
    changed = etl_package()
    changed["tasks"][1]["copy"]["batch_size"] = 501
    assert parse_package(changed).definition_hash != parse_package(etl_package()).definition_hash


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["tasks"][0]["sql"].update(connection="warehouse"),
            Issue("tasks[0].sql.connection", "unknown connection 'warehouse' (dwh, src)"),
        ),
        (
            lambda d: d["tasks"][1]["copy"]["destination"].update(connection="dhw"),
            Issue(
                "tasks[1].copy.destination.connection",
                "unknown connection 'dhw' (dwh, src) (did you mean 'dwh'?)",
            ),
        ),
        (
            lambda d: d["tasks"][1]["copy"]["source"].pop("key"),
            Issue("tasks[1].copy.source.key", "required key 'key' is missing"),
        ),
        (
            lambda d: d["tasks"][1]["copy"]["source"].pop("table"),
            Issue("tasks[1].copy.source", "a copy source needs exactly one of 'table' and 'query'"),
        ),
        (
            lambda d: d["tasks"][1]["copy"]["destination"].pop("table"),
            Issue("tasks[1].copy.destination.table", "required key 'table' is missing"),
        ),
        (
            lambda d: d["tasks"][1]["copy"]["source"].update(key=[]),
            Issue("tasks[1].copy.source.key", "List should have at least 1 item after validation, not 0"),
        ),
        (
            lambda d: d["tasks"][1]["copy"]["source"].update(query="SELECT 1"),
            Issue("tasks[1].copy.source", "a copy source needs exactly one of 'table' and 'query'"),
        ),
        (
            lambda d: d["tasks"][1]["copy"].update(batch_size=0),
            Issue("tasks[1].copy.batch_size", "0 should be greater than or equal to 1"),
        ),
        (
            lambda d: d["tasks"][1]["copy"].update(bacth_size=10),
            Issue("tasks[1].copy.bacth_size", "unknown key 'bacth_size' (did you mean 'batch_size'?)"),
        ),
        (
            lambda d: d["connections"]["src"].update(password="hunter2"),
            Issue(
                "connections.src.password",
                "a password is '{{ vars.NAME }}' naming a sensitive variable (or is left out and read "
                "from ORCHESTRATOR_CONN_SRC_PASSWORD), never written in the package",
            ),
        ),
        (
            lambda d: d["variables"]["src_password"].update(sensitive=False),
            Issue(
                "connections.src.password",
                "variable 'src_password' holds a password: declare it 'sensitive: true'",
            ),
        ),
        (
            lambda d: d["connections"]["dwh"].update(url="postgresql://etl:hunter2@db2/dwh"),
            Issue(
                "connections.dwh.url",
                "the URL holds a password in clear: give it as 'password' from a sensitive variable "
                "or in ORCHESTRATOR_CONN_DWH_PASSWORD",
            ),
        ),
        (
            lambda d: d["connections"]["dwh"].update(url="{{ vars.dwh_ulr }}"),
            Issue("connections.dwh.url", "unknown variable 'dwh_ulr' (did you mean 'dwh_url'?)"),
        ),
        (
            lambda d: d["tasks"][0].update(python="examples.orders:extract"),
            Issue("tasks[0]", "a task has both 'python' and 'sql'; give exactly one"),
        ),
    ],
)
def test_etl_errors_with_their_paths(change: Any, expected: Issue) -> None:
    data = copy.deepcopy(etl_package())
    change(data)
    assert issues_of(data) == [expected]


def test_every_etl_problem_is_reported_at_once() -> None:
    data = etl_package()
    data["tasks"][0]["sql"]["connection"] = "nope"
    data["tasks"][1]["copy"]["source"]["connection"] = "nada"
    data["tasks"][1]["copy"]["batch_size"] = "big"
    paths = [issue.path for issue in issues_of(data)]
    assert paths == ["tasks[1].copy.batch_size", "tasks[0].sql.connection", "tasks[1].copy.source.connection"]
