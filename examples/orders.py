"""A realistic nightly ETL: generate orders as CSV, load them into SQLite by region.

The load writes in batches and saves its progress after each one, so a
resumed attempt continues at the next batch. Every write to the sink is
fenced with ``ctx.epoch``: a superseded attempt that wakes up late finds a
newer epoch recorded for its partition and writes nothing (the pattern to
copy for any external system).
"""

from __future__ import annotations

import contextlib
import csv
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from workers.context import TaskContext

REGIONS = ("eu", "us", "apac")
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY, region TEXT NOT NULL, customer TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, batch_date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partition_fence (region TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    task TEXT NOT NULL, item TEXT, run_id TEXT NOT NULL, attempt INTEGER, epoch INTEGER,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS region_totals (
    region TEXT PRIMARY KEY, orders INTEGER NOT NULL, amount_cents INTEGER NOT NULL
);
"""


class StaleAttempt(RuntimeError):
    """A newer attempt owns this partition: this one must not write."""


@contextlib.contextmanager
def _connect(ctx: TaskContext) -> Iterator[sqlite3.Connection]:
    """A connection to the sink, closed on exit (transactions are explicit: autocommit mode)."""
    path = Path(ctx.params["database"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        yield connection


def _record_execution(connection: sqlite3.Connection, ctx: TaskContext) -> None:
    item = None if ctx.item is None else str(ctx.item)
    connection.execute(
        "INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?)",
        (ctx.task_id, item, ctx.run_id, ctx.attempt, ctx.epoch, time.time()),
    )


def prepare(ctx: TaskContext) -> dict[str, Any]:
    """Create the sink's tables (idempotent)."""
    with _connect(ctx) as connection:
        connection.executescript(SCHEMA)
        _record_execution(connection, ctx)
    return {"database": ctx.params["database"]}


def generate(ctx: TaskContext) -> dict[str, Any]:
    """Write ``rows`` deterministic orders for the batch date to a CSV file."""
    rows, path = int(ctx.params["rows"]), Path(ctx.params["path"])
    seed = date.fromisoformat(ctx.vars["batch_date"]).toordinal()
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "region", "customer", "amount_cents"])
        for order_id in range(1, rows + 1):
            writer.writerow(
                [
                    order_id,
                    rng.choice(REGIONS),
                    f"c{rng.randrange(500):03d}",
                    rng.randrange(100, 50_000),
                ]
            )
    with _connect(ctx) as connection:
        _record_execution(connection, ctx)
    return {"path": str(path), "rows": rows, "partitions": list(REGIONS)}


def _claim_partition(connection: sqlite3.Connection, region: str, epoch: int) -> None:
    """Record ``epoch`` as the partition's owner unless a newer epoch already owns it."""
    cursor = connection.execute(
        "INSERT INTO partition_fence VALUES (?, ?) ON CONFLICT(region) DO UPDATE "
        "SET epoch = excluded.epoch WHERE excluded.epoch >= partition_fence.epoch",
        (region, epoch),
    )
    if cursor.rowcount == 0:
        raise StaleAttempt(f"partition {region!r} belongs to a newer attempt than epoch {epoch}")


def load_partition(ctx: TaskContext) -> dict[str, Any]:
    """Load one region's orders in batches; resume after the last saved batch."""
    region, batch_size = str(ctx.item), int(ctx.params["batch_size"])
    pace = float(ctx.params.get("pace", 0))
    with open(ctx.outputs["generate"]["path"], newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["region"] == region]
    saved = ctx.progress.get() or {"offset": 0}
    offset = int(saved["offset"])
    with _connect(ctx) as connection:
        _record_execution(connection, ctx)
        while offset < len(rows):
            batch = rows[offset : offset + batch_size]
            with connection:  # one transaction: the fence check and the batch commit together
                connection.execute("BEGIN IMMEDIATE")
                _claim_partition(connection, region, ctx.epoch)
                connection.executemany(
                    "INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            int(r["order_id"]),
                            region,
                            r["customer"],
                            int(r["amount_cents"]),
                            ctx.vars["batch_date"],
                        )
                        for r in batch
                    ],
                )
            offset += len(batch)
            ctx.vars["rows_loaded"] += len(batch)
            ctx.progress.save({"offset": offset})
            if pace:
                time.sleep(pace)
    return {"region": region, "rows": len(rows), "resumed_at": int(saved["offset"])}


def aggregate(ctx: TaskContext) -> dict[str, Any]:
    """Rebuild the per-region totals from the loaded orders."""
    with _connect(ctx) as connection:
        connection.execute("DELETE FROM region_totals")
        connection.execute(
            "INSERT INTO region_totals SELECT region, COUNT(*), SUM(amount_cents) FROM orders "
            "WHERE batch_date = ? GROUP BY region",
            (ctx.vars["batch_date"],),
        )
        totals = dict(connection.execute("SELECT region, orders FROM region_totals").fetchall())
        _record_execution(connection, ctx)
    return {"orders": sum(totals.values()), "by_region": totals}
