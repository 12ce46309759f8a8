"""Copy task throughput against a raw copy of the same rows in the same run (issue 14).

Cases (each: the copy task run by the executor in a child process, with its
checkpoint on disk, its cursor committed per batch; then the baseline in this
process; the destination emptied between them):

* ``pg -> pg``: against a raw ``COPY (SELECT ...) TO STDOUT`` piped into
  ``COPY ... FROM STDIN`` (psycopg, one transaction). Target: at most 1.5 times.
* ``pg -> pg, transform``: the same with a Python transform (one column
  changed per row) against the same raw baseline. Target: at most 3 times.
* ``sqlite -> pg`` and ``pg -> mariadb``: reported, against a plain SQLAlchemy
  copy (one SELECT streamed, executemany INSERT per batch).
* ``sqlite -> sqlite``: reported (the only case without servers).

Peak RSS of the copy's process (``ru_maxrss``): target at most 300 MB.
PostgreSQL: ``--database-url`` or ``ORCHESTRATOR_TEST_DATABASE_URL`` (scratch databases
are created and dropped through it); MariaDB: ``ORCHESTRATOR_TEST_MYSQL_URL``.
Cases whose server is not configured are left out.

Run: ``python -m bench.copy [--quick] [--rows N]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import contextlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench import common as C

TARGETS = {"pg -> pg": 1.5, "pg -> pg, transform": 3.0}
RSS_TARGET_MB = 300
TABLE = (
    "CREATE TABLE {name} (id BIGINT NOT NULL PRIMARY KEY, customer VARCHAR(40) NOT NULL, "
    "amount NUMERIC(12, 2) NOT NULL, note VARCHAR(80))"
)


def transform(ctx: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bench's Python transform: one column changed per row."""
    return [{**row, "customer": row["customer"].upper()} for row in rows]


# -- databases -------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch(kind: str, tmp: Path, admin: str | None) -> Iterator[str]:
    """A new empty database of ``kind`` (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'{uuid.uuid4().hex[:8]}.db'}"
        return
    assert admin is not None
    name = f"bench_copy_{uuid.uuid4().hex[:12]}"
    url = make_url(admin)
    quote = '"' if kind == "pg" else "`"
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if kind == "pg" else ""
        with engine.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
        engine.dispose()


def fill(url: str, rows: int) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(TABLE.format(name="src")))
        if engine.dialect.name == "postgresql":
            connection.execute(
                text(
                    "INSERT INTO src SELECT g, 'customer ' || (g % 1000), (g % 100000) / 100.0, "
                    "'a note of some length for row ' || g FROM generate_series(1, :n) g"
                ),
                {"n": rows},
            )
            # A production table has statistics (autovacuum analyzes after a bulk load); without
            # them the planner reads every row after the cursor for each keyset page.
            connection.execute(text("ANALYZE src"))
        else:
            step = 50_000
            for start in range(1, rows + 1, step):
                connection.execute(
                    text("INSERT INTO src VALUES (:id, :customer, :amount, :note)"),
                    [
                        {
                            "id": g,
                            "customer": f"customer {g % 1000}",
                            "amount": (g % 100000) / 100,
                            "note": f"a note of some length for row {g}",
                        }
                        for g in range(start, min(start + step, rows + 1))
                    ],
                )
    engine.dispose()


def reset_destination(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS dst"))
        connection.execute(text("DROP TABLE IF EXISTS orchestrator_copy_state"))
        connection.execute(text(TABLE.format(name="dst")))
    engine.dispose()


def count(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = int(connection.execute(text("SELECT COUNT(*) FROM dst")).scalar_one())
    engine.dispose()
    return found


# -- the copy task (child process) and the baselines ------------------------------------------------


def child(spec: dict[str, Any]) -> None:
    """Run the copy task through the executor; print seconds, rows and peak RSS as JSON."""
    from checkpoints import FilesystemCheckpointStore
    from orchestrator.packages import parse_package
    from workers.executor import ExecutionOptions, RunRequest, execute

    copy: dict[str, Any] = {
        "source": {"connection": "src", "table": "src", "key": ["id"]},
        "destination": {"connection": "dst", "table": "dst"},
        "batch_size": spec["batch"],
    }
    if spec["transform"]:
        copy["transform"] = "bench.copy:transform"
    package = parse_package(
        {
            "name": "bench_copy",
            "connections": {"src": {"url": spec["source"]}, "dst": {"url": spec["destination"]}},
            "tasks": [{"id": "copy", "copy": copy}],
        }
    )
    store = FilesystemCheckpointStore(Path(spec["checkpoints"]))
    started = time.perf_counter()
    result = execute(RunRequest(package, "bench-copy-1"), ExecutionOptions(store=store))
    seconds = time.perf_counter() - started
    if not result.succeeded:
        raise SystemExit(f"copy failed: {result.error}")
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rows": result.outputs["copy"]["rows"], "rss_kib": rss_kib}))


def run_task(source: str, destination: str, batch: int, with_transform: bool, tmp: Path) -> dict[str, Any]:
    spec = {
        "source": source,
        "destination": destination,
        "batch": batch,
        "transform": with_transform,
        "checkpoints": str(tmp / f"checkpoints-{uuid.uuid4().hex[:8]}"),
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(C.ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.copy", "--child", json.dumps(spec)],
        cwd=C.ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the copy task failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def raw_pg_copy(source: str, destination: str) -> float:
    """COPY TO STDOUT from the source piped into COPY FROM STDIN of the destination (psycopg)."""
    import psycopg

    def dsn(url: str) -> str:
        return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    started = time.perf_counter()
    with psycopg.connect(dsn(source)) as reading, psycopg.connect(dsn(destination)) as writing:
        with (
            reading.cursor().copy("COPY (SELECT * FROM src ORDER BY id) TO STDOUT") as out,
            writing.cursor().copy("COPY dst FROM STDIN") as into,
        ):
            for data in out:
                into.write(data)
        writing.commit()
    return time.perf_counter() - started


def plain_sqlalchemy_copy(source: str, destination: str, batch: int) -> float:
    """One streamed SELECT, an executemany INSERT per batch, one transaction."""
    reading_engine = create_engine(source, poolclass=NullPool)
    writing_engine = create_engine(destination, poolclass=NullPool)
    started = time.perf_counter()
    with reading_engine.connect() as reading, writing_engine.begin() as writing:
        result = reading.execution_options(stream_results=True, yield_per=batch).execute(
            text("SELECT id, customer, amount, note FROM src ORDER BY id")
        )
        insert = text("INSERT INTO dst (id, customer, amount, note) VALUES (:id, :customer, :amount, :note)")
        for part in result.mappings().partitions(batch):
            writing.execute(insert, [dict(row) for row in part])
    seconds = time.perf_counter() - started
    reading_engine.dispose()
    writing_engine.dispose()
    return seconds


# -- the cases ---------------------------------------------------------------------------------------


def case(
    label: str, source: str, destination: str, rows: int, batch: int, tmp: Path, with_transform: bool = False
) -> dict[str, Any]:
    reset_destination(destination)
    task = run_task(source, destination, batch, with_transform, tmp)
    assert count(destination) == rows == task["rows"], f"{label}: rows copied differ"
    reset_destination(destination)
    pg_both = source.startswith("postgresql") and destination.startswith("postgresql")
    if pg_both:
        baseline, baseline_name = raw_pg_copy(source, destination), "raw COPY TO STDOUT into COPY FROM STDIN"
    else:
        baseline, baseline_name = plain_sqlalchemy_copy(source, destination, batch), "plain SQLAlchemy copy"
    assert count(destination) == rows, f"{label}: the baseline copied {count(destination)} rows"
    ratio = C.ratio(task["seconds"], baseline)
    target = TARGETS.get(label)
    rss_mb = task["rss_kib"] / 1024
    return {
        "case": label,
        "rows": rows,
        "batch_size": batch,
        "task_seconds": task["seconds"],
        "task_rows_per_second": rows / task["seconds"],
        "baseline": baseline_name,
        "baseline_seconds": baseline,
        "baseline_rows_per_second": rows / baseline,
        "ratio": ratio,
        "target": target,
        "met": None if target is None else ratio <= target,
        "peak_rss_mb": rss_mb,
        "rss_met": rss_mb <= RSS_TARGET_MB,
    }


def main() -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows per case (default 1,000,000; quick 20,000)")
    p.add_argument("--only", default="", help="run only the cases whose label contains this text")
    p.add_argument("--child", default=None, help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    batch = 5_000 if args.quick else 50_000
    pg_admin = args.database_url or os.environ.get(C.DATABASE_ENV) or None
    if pg_admin and not pg_admin.startswith("postgresql"):
        pg_admin = None
    mysql_admin = os.environ.get("ORCHESTRATOR_TEST_MYSQL_URL") or None
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-copy-"))
    results: list[dict[str, Any]] = []

    def measure(label: str, *given: Any) -> None:
        if args.only in label:
            results.append(case(label, *given))

    try:
        with contextlib.ExitStack() as stack:
            lite_src = stack.enter_context(scratch("sqlite", tmp, None))
            fill(lite_src, rows)
            lite_dst = stack.enter_context(scratch("sqlite", tmp, None))
            measure("sqlite -> sqlite", lite_src, lite_dst, rows, batch, tmp)
            if pg_admin:
                pg_src = stack.enter_context(scratch("pg", tmp, pg_admin))
                fill(pg_src, rows)
                pg_dst = stack.enter_context(scratch("pg", tmp, pg_admin))
                measure("pg -> pg", pg_src, pg_dst, rows, batch, tmp)
                measure("pg -> pg, transform", pg_src, pg_dst, rows, batch, tmp, True)
                measure("sqlite -> pg", lite_src, pg_dst, rows, batch, tmp)
                if mysql_admin:
                    my_dst = stack.enter_context(scratch("mysql", tmp, mysql_admin))
                    measure("pg -> mariadb", pg_src, my_dst, rows, batch, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        C.table(
            f"copy task vs a raw copy of the same rows ({rows} rows, batches of {batch})",
            ["case", "task rows/s", "baseline rows/s", "ratio", "target", "met", "peak RSS MB", "baseline"],
            [
                [
                    r["case"],
                    round(r["task_rows_per_second"]),
                    round(r["baseline_rows_per_second"]),
                    r["ratio"],
                    r["target"] or "-",
                    "-" if r["met"] is None else ("yes" if r["met"] else "no"),
                    round(r["peak_rss_mb"]),
                    r["baseline"],
                ]
                for r in results
            ],
        )
    )
    C.write_result(args, "copy", {"rows": rows, "batch_size": batch, "cases": results})
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
