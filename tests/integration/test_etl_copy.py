"""The copy task against real databases (SQLite, PostgreSQL, MariaDB): every row exactly once.

The copy is called directly with a task context (no broker): keyset edge cases
(composite keys with ties in the leading column, an empty source, text keys in
a case-insensitive collation, the last batch exactly full), a resume after a
crash mid-copy and after a kill between the commit and the checkpoint save,
a stale attempt that wakes after a newer one took over, and the clear errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from orchestrator.packages import parse_package
from orchestrator.packages.model import Package
from tests.support.etl import checksum, context, database, execute, rows
from workers.errors import AttemptFenced
from workers.etl import Connections, EtlError, run_copy

pytestmark = pytest.mark.timeout(120)

ORDERS = "CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, customer VARCHAR(40), amount NUMERIC(12, 2))"


def package(src: str, dst: str, copy: dict[str, Any]) -> Package:
    return parse_package(
        {
            "name": "etl",
            "connections": {"src": {"url": src}, "dst": {"url": dst}},
            "tasks": [{"id": "copy", "copy": copy}],
        }
    )


def orders_copy(batch_size: int, **extra: Any) -> dict[str, Any]:
    return {
        "source": {"connection": "src", "table": "orders", "key": ["id"]},
        "destination": {"connection": "dst", "table": "orders_copy"},
        "batch_size": batch_size,
        **extra,
    }


def fill_orders(url: str, count: int) -> None:
    execute(url, ORDERS.format(name="orders"), ORDERS.format(name="orders_copy"))
    if count:
        values = [{"id": n, "customer": f"c{n % 7}", "amount": f"{n}.25"} for n in range(1, count + 1)]
        execute(url, "INSERT INTO orders VALUES (:id, :customer, :amount)", params=values)


def copy(pkg: Package, **ctx_args: Any) -> tuple[dict[str, Any], list[Any]]:
    ctx, saves = context(pkg, **ctx_args)
    connections = Connections(pkg.connections, ctx.vars)
    try:
        task = pkg.task("copy")
        assert task.copy_ is not None
        return run_copy(task.copy_, ctx, connections), saves
    finally:
        connections.close()


def copy_with(pkg: Package, transform: Any = None, **ctx_args: Any) -> dict[str, Any]:
    """Run the copy as attempt ``epoch`` would, from the progress ``saved`` in its checkpoint;
    ``saves`` collects what it saves."""
    ctx, _ = context(pkg, **ctx_args)
    connections = Connections(pkg.connections, ctx.vars)
    try:
        task = pkg.task("copy")
        assert task.copy_ is not None
        return run_copy(task.copy_, ctx, connections, transform)
    finally:
        connections.close()


def same_rows(url: str, source: str = "orders", destination: str = "orders_copy", key: str = "id") -> None:
    expected = checksum(url, source, key)
    assert checksum(url, destination, key) == expected
    assert expected[0] == expected[1], "the destination has duplicate keys"


@pytest.mark.parametrize(("count", "batch"), [(100, 10), (101, 10), (7, 100), (1, 1)])
def test_copy_writes_every_row_once(etl_url: str, count: int, batch: int) -> None:
    """Including the last batch exactly full (100 by 10) and one row short of it."""
    fill_orders(etl_url, count)
    output, saves = copy(package(etl_url, etl_url, orders_copy(batch)))
    same_rows(etl_url)
    assert output["rows"] == count and output["batches"] == -(-count // batch)
    assert saves[-1]["rows"] == count, "the checkpoint's progress follows the destination"
    assert rows(etl_url, "SELECT rows_copied, batches FROM orchestrator_copy_state") == [
        (count, output["batches"])
    ]


def test_empty_source_copies_nothing(etl_url: str) -> None:
    fill_orders(etl_url, 0)
    output, saves = copy(package(etl_url, etl_url, orders_copy(10)))
    assert output["rows"] == 0 and rows(etl_url, "SELECT COUNT(*) FROM orders_copy") == [(0,)]
    assert saves == [{"upper": None, "cursor": None, "rows": 0, "batches": 0}]


def test_composite_key_with_ties_in_the_leading_column(etl_url: str) -> None:
    table = "CREATE TABLE {name} (region VARCHAR(10) NOT NULL, id INTEGER NOT NULL, v INTEGER, PRIMARY KEY (region, id))"
    execute(etl_url, table.format(name="sales"), table.format(name="sales_copy"))
    values = [{"r": r, "id": n, "v": n * 3} for r in ("apac", "eu", "us") for n in range(1, 24)]
    execute(etl_url, "INSERT INTO sales VALUES (:r, :id, :v)", params=values)
    spec = {
        "source": {"connection": "src", "table": "sales", "key": ["region", "id"]},
        "destination": {"connection": "dst", "table": "sales_copy"},
        "batch_size": 5,  # pages end inside a region: the row comparison must carry on within it
    }
    output, _ = copy(package(etl_url, etl_url, spec))
    assert output["rows"] == 69
    same_rows(etl_url, "sales", "sales_copy", "region, id")


COLLATED = {
    "sqlite": "VARCHAR(20) COLLATE NOCASE",
    "postgresql": 'VARCHAR(20) COLLATE "C"',
    "mariadb": "VARCHAR(20) COLLATE utf8mb4_general_ci",
}


def test_text_keys_in_their_collation(etl_url: str) -> None:
    """Keys compared by the database in the key's collation, the same in WHERE and ORDER BY."""
    backend = make_url(etl_url).get_backend_name().replace("mysql", "mariadb")
    table = f"CREATE TABLE {{name}} (code {COLLATED[backend]} NOT NULL PRIMARY KEY, n INTEGER)"
    execute(etl_url, table.format(name="codes"), table.format(name="codes_copy"))
    codes = ["alpha", "Bravo", "charlie", "Delta", "echo", "Zulu", "yankee", "_under", "0zero", "Éclair"]
    execute(
        etl_url, "INSERT INTO codes VALUES (:c, :n)", params=[{"c": c, "n": n} for n, c in enumerate(codes)]
    )
    spec = {
        "source": {"connection": "src", "table": "codes", "key": ["code"]},
        "destination": {"connection": "dst", "table": "codes_copy"},
        "batch_size": 3,
    }
    output, _ = copy(package(etl_url, etl_url, spec))
    assert output["rows"] == len(codes)
    assert sorted(rows(etl_url, "SELECT code, n FROM codes_copy")) == sorted(
        rows(etl_url, "SELECT code, n FROM codes")
    )


class Crash(Exception):
    """A simulated crash inside a batch (after the rows of earlier batches were committed)."""


def crash_after(batches: int) -> Any:
    seen = [0]

    def transform(ctx: Any, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen[0] += 1
        if seen[0] > batches:
            raise Crash(f"crash in batch {seen[0]}")
        return page

    return transform


def test_resume_continues_from_the_destination_cursor(etl_url: str) -> None:
    fill_orders(etl_url, 95)
    pkg = package(etl_url, etl_url, orders_copy(10))
    ctx, saves = context(pkg, epoch=1)
    connections = Connections(pkg.connections, ctx.vars)
    assert pkg.task("copy").copy_ is not None
    with pytest.raises(Crash):
        run_copy(pkg.task("copy").copy_, ctx, connections, crash_after(3))  # type: ignore[arg-type]
    connections.close()
    assert rows(etl_url, "SELECT COUNT(*) FROM orders_copy") == [(30,)]
    # The kill came between the third commit and its checkpoint save: the checkpoint is a batch behind.
    behind = saves[-2]
    assert behind["rows"] == 20
    output = copy_with(pkg, epoch=2, saved=behind)
    assert output["rows"] == 95 and output["rows_this_attempt"] == 65
    same_rows(etl_url)


def test_upper_bound_is_frozen_at_the_first_attempt(etl_url: str) -> None:
    """Rows added above the first attempt's upper bound are not copied by a resumed attempt."""
    fill_orders(etl_url, 40)
    pkg = package(etl_url, etl_url, orders_copy(10))
    saves: list[Any] = []
    with pytest.raises(Crash):
        copy_with(pkg, crash_after(2), epoch=1, saves=saves)
    execute(etl_url, "INSERT INTO orders VALUES (41, 'late', 1.00)")
    output = copy_with(pkg, epoch=2, saved=saves[-1])
    assert output["rows"] == 40
    assert rows(etl_url, "SELECT MAX(id) FROM orders_copy") == [(40,)]


def test_a_stale_attempt_writes_nothing(etl_url: str) -> None:
    """Attempt 1 pauses inside a batch; attempt 2 takes the copy over and finishes; attempt 1 wakes:
    its batch is refused and rolled back."""
    fill_orders(etl_url, 50)
    pkg = package(etl_url, etl_url, orders_copy(10))
    woke: list[str] = []
    saves: list[Any] = []

    def pause_then_wake(ctx: Any, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if page[0]["id"] == 21 and not woke:  # the third batch: the newer attempt runs in the pause
            woke.append("newer ran")
            assert copy_with(pkg, epoch=2, saved=saves[-1])["rows"] == 50
        return page

    with pytest.raises(AttemptFenced, match="refused"):
        copy_with(pkg, pause_then_wake, epoch=1, saves=saves)
    same_rows(etl_url)
    assert rows(etl_url, "SELECT epoch, rows_copied FROM orchestrator_copy_state") == [(2, 50)]
    with pytest.raises(AttemptFenced, match="taken over by epoch 2"):
        copy_with(pkg, epoch=1, saved=saves[-1])


def test_query_source_and_transform(etl_url: str) -> None:
    fill_orders(etl_url, 30)
    spec = {
        "source": {
            "connection": "src",
            "query": "SELECT id, customer, amount FROM orders WHERE id > 5",
            "key": ["id"],
        },
        "destination": {"connection": "dst", "table": "orders_copy"},
        "batch_size": 4,
    }

    def upper(ctx: Any, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "customer": row["customer"].upper()} for row in page]

    output = copy_with(package(etl_url, etl_url, spec), upper)
    assert output["rows"] == 25
    assert rows(etl_url, "SELECT MIN(id), COUNT(*) FROM orders_copy") == [(6, 25)]
    assert rows(etl_url, "SELECT customer FROM orders_copy WHERE id = 7") == [("C0",)]


def test_transform_rows_of_any_shape(etl_url: str) -> None:
    """A transform may drop columns, give a generator, or give rows that differ in their columns;
    its input rows are plain dicts keyed by plain str (untracked by the garbage collector)."""
    import gc

    fill_orders(etl_url, 12)
    seen: list[bool] = []

    def reshape(ctx: Any, page: list[dict[str, Any]]) -> Any:
        seen.extend(type(name) is str and not gc.is_tracked(row) for row in page for name in row)
        for row in page:
            if row["id"] % 2:
                yield {"id": row["id"], "customer": row["customer"] + "!"}  # amount left to its default
            else:
                yield {**row, "amount": 0}

    output = copy_with(package(etl_url, etl_url, orders_copy(5)), reshape)
    assert output["rows"] == 12 and seen and all(seen)
    assert rows(etl_url, "SELECT customer, amount FROM orders_copy WHERE id IN (3, 4) ORDER BY id") == [
        ("c3!", None),
        ("c4", 0),
    ]

    execute(etl_url, "DELETE FROM orders_copy", "DELETE FROM orchestrator_copy_state")
    with pytest.raises(EtlError, match="must give dicts"):
        copy_with(
            package(etl_url, etl_url, orders_copy(5)), lambda ctx, page: [tuple(r.values()) for r in page]
        )
    with pytest.raises(EtlError, match="columns that do not match: 'extra'"):
        copy_with(
            package(etl_url, etl_url, orders_copy(5)), lambda ctx, page: [{**r, "extra": 1} for r in page]
        )
    assert rows(etl_url, "SELECT COUNT(*) FROM orders_copy") == [(0,)]


def test_copy_between_databases(etl_url: str, tmp_path: Path) -> None:
    """SQLite into the parametrised database (and so from one engine's types into another's)."""
    with database("sqlite", tmp_path, "source") as source:
        fill_orders(source, 33)
        execute(etl_url, ORDERS.format(name="orders_copy"))
        output = copy_with(package(source, etl_url, orders_copy(8)))
        assert output["rows"] == 33
        assert rows(etl_url, "SELECT COUNT(*), SUM(id) FROM orders_copy") == [(33, 33 * 34 // 2)]


@pytest.mark.parametrize(
    ("setup", "spec", "message"),
    [
        ("", {"source": {"table": "nowhere"}}, "table 'nowhere' not found on connection 'src'"),
        ("", {"destination": {"table": "nowhere"}}, "table 'nowhere' not found on connection 'dst'"),
        ("", {"source": {"key": ["customer"]}}, "is not unique"),
        ("", {"source": {"key": ["missing"]}}, "no key column(s) 'missing'"),
        ("ALTER TABLE orders_copy DROP COLUMN amount", {}, "columns that do not match: 'amount'"),
        (
            "CREATE TABLE nulls (id INTEGER, customer VARCHAR(40), amount NUMERIC(12, 2))",
            {"source": {"query": "SELECT * FROM nulls", "table": None}},
            "NULLs in key column",
        ),
    ],
)
def test_clear_errors(etl_url: str, setup: str, spec: dict[str, Any], message: str) -> None:
    fill_orders(etl_url, 3)
    if setup:
        execute(etl_url, setup)
    if "nulls" in setup:
        execute(etl_url, "INSERT INTO nulls VALUES (NULL, 'x', 1)")
    base = orders_copy(10)
    for part, values in spec.items():
        base[part] = {k: v for k, v in {**base[part], **values}.items() if v is not None}
    with pytest.raises(EtlError) as raised:
        copy_with(package(etl_url, etl_url, base))
    assert message in str(raised.value)


def test_a_new_run_under_the_same_run_id_copies_again(etl_url: str) -> None:
    """``orchestrator run`` reuses its run id: without progress in the checkpoint the copy starts over."""
    fill_orders(etl_url, 12)
    pkg = package(etl_url, etl_url, orders_copy(5))
    assert copy_with(pkg, epoch=1)["rows"] == 12
    execute(etl_url, "DELETE FROM orders_copy")
    output = copy_with(pkg, epoch=2)
    assert output["rows"] == 12 and output["rows_this_attempt"] == 12
    same_rows(etl_url)


@pytest.mark.parametrize("amount", ["NUMERIC(12, 2)", "NUMERIC(14, 4)"])
def test_postgresql_fast_path_binary_or_text(tmp_path: Path, amount: str) -> None:
    """PostgreSQL to PostgreSQL streams COPY out into COPY in: binary when the column types match,
    text (the server converts) when they differ."""
    from sqlalchemy import create_engine

    from workers.etl.pgcopy import copy_format
    from workers.etl.source import open_source, reflect

    with database("postgresql", tmp_path) as url:
        execute(
            url,
            ORDERS.format(name="orders"),
            ORDERS.format(name="orders_copy").replace("NUMERIC(12, 2)", amount),
        )
        execute(url, "INSERT INTO orders SELECT g, 'c' || g, g / 4.0 FROM generate_series(1, 1001) g")
        engine = create_engine(url)
        with engine.connect() as reading, engine.connect() as writing:
            pkg = package(url, url, orders_copy(100))
            spec = pkg.task("copy").copy_
            assert spec is not None
            source, table = open_source(reading, spec.source, "src", None)
            form = copy_format(reading, writing, source, table, reflect(writing, "orders_copy", "dst"))
        engine.dispose()
        assert form == ("BINARY" if amount == "NUMERIC(12, 2)" else "TEXT")
        output = copy_with(pkg)
        assert output["rows"] == 1001 and output["batches"] == 11
        same_rows(url)
