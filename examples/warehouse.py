"""Task code of examples/warehouse_nightly.yaml: an OLTP stand-in and the copy's transform."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workers.context import TaskContext

REGIONS = ("eu", "us", "apac")


def seed_oltp(ctx: TaskContext) -> dict[str, Any]:
    """Create the OLTP database with ``rows`` orders, once (a resumed run finds it made)."""
    path = Path(ctx.params["database"])
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = int(ctx.params["rows"])
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id INTEGER PRIMARY KEY, email TEXT NOT NULL, "
            "region TEXT NOT NULL, amount_cents INTEGER NOT NULL, ordered_at TEXT NOT NULL)"
        )
        have = db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
        if have == 0:
            generator = random.Random(7)  # sample data, not security
            db.executemany(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                (
                    (
                        n,
                        f"  Customer{n % 997}@Example.COM ",
                        REGIONS[n % 3],
                        generator.randint(100, 99_999),
                        f"2026-11-24T{n % 24:02d}:00:00",
                    )
                    for n in range(1, rows + 1)
                ),
            )
    return {"orders": rows}


def clean(ctx: TaskContext, rows: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """OLTP rows to warehouse rows: a normalised customer, cents to an amount, the day only."""
    pace = float(ctx.params.get("pace") or 0)
    if pace:
        time.sleep(pace)  # the demo slows the copy down so that a node can be killed in the middle
    return [
        {
            "order_id": row["order_id"],
            "customer": row["email"].strip().lower(),
            "region": row["region"],
            "amount": row["amount_cents"] / 100,
            "ordered_on": row["ordered_at"][:10],
        }
        for row in rows
    ]
