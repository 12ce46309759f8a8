"""The web UI with 50,000 runs in SQL: the runs page and the API list, timed server side.

50,000 finished and running runs (three packages, every state) are written
straight into a fresh database migrated to head; the UI's ASGI application is
then called in this process, with no network in between, and each request is
timed from its first byte in to its last byte out (middleware, SQL, templates,
JSON included). Cases, interleaved round by round:

* ``/`` and ``/api/runs``: the newest page (50 runs) and the count of all runs;
* a page deep in the list (``before`` = a cursor 49,900 runs down), by keyset;
* ``/?state=failed&package=beta`` and ``/api/runs?since=..&until=..``: filters.

Baseline in the same run: ``/login``, a page of the same stack that reads no
SQL (the floor of a request). For comparison only, the deep page the way the
UI does *not* fetch it: SQL ``OFFSET`` 49,900 (the query alone). Target: every
case at most 200 ms at p50 and p99.

Run: ``python -m bench.ui [--quick]`` (quick: 10,000 runs, fewer rounds).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import common as C

TARGET_MS = 200.0
PAGE = 50


def insert_runs(repo: Any, count: int) -> datetime:
    """``count`` runs one second apart: packages alpha, beta, gamma; every run state in turn."""
    from sqlalchemy import insert

    from orchestrator.state.models import Run
    from orchestrator.state.states import RunState

    start = datetime(2026, 1, 1, tzinfo=UTC)
    states = list(RunState)
    rows = []
    for n in range(count):
        at = start + timedelta(seconds=n)
        state = states[n % len(states)]
        rows.append(
            {
                "id": f"bench-{n:07d}",
                "package": ("alpha", "beta", "gamma")[n % 3],
                "definition_hash": "0" * 64,
                "state": state,
                "attempt": 1 + n % 2,
                "epoch": 1 + n % 2,
                "restarts": n % 2,
                "max_restarts": 5,
                "node": f"node-{n % 7 + 1}",
                "variables": {"batch_date": "2026-11-24", "rows": n},
                "error": "task load failed: RuntimeError: bad row" if state is RunState.FAILED else None,
                "submitted_at": at,
                "started_at": at + timedelta(milliseconds=150),
                "finished_at": at + timedelta(seconds=40) if state.finished else None,
                "updated_at": at + timedelta(seconds=40),
                "cancel_requested": False,
            }
        )
    with repo.sessions.begin() as session:
        for first in range(0, count, 5000):
            session.execute(insert(Run), rows[first : first + 5000])
    return start


async def call(app: Any, path: str) -> tuple[float, int, int]:
    """One GET through the ASGI app: (milliseconds, status, body bytes)."""
    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8808")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8808),
    }
    status, size = 0, 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    began = time.perf_counter()
    await app(scope, receive, send)
    return (time.perf_counter() - began) * 1000, status, size


async def rounds(app: Any, cases: dict[str, str], count: int) -> dict[str, list[float]]:
    """``count`` rounds, each case once per round in turn; the first round warms up and is dropped."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for number in range(count + 1):
        for name, path in cases.items():
            ms, status, size = await call(app, path)
            if status != 200 or size == 0:
                raise RuntimeError(f"{path} answered {status} with {size} bytes")
            if number:
                samples[name].append(ms)
    return samples


def offset_page(reader: Any, offset: int, count: int) -> list[float]:
    """The deep page by OFFSET (what the UI avoids), the SQL alone, ``count`` times."""
    from sqlalchemy import select

    from orchestrator.state.models import Run

    query = select(Run).order_by(Run.submitted_at.desc(), Run.id.desc()).offset(offset).limit(PAGE)
    found = []
    for _ in range(count):
        began = time.perf_counter()
        with reader.sessions() as session:
            rows = list(session.execute(query).scalars())
        found.append((time.perf_counter() - began) * 1000)
        assert len(rows) == PAGE
    return found


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    total = 10_000 if args.quick else 50_000
    count = 10 if args.quick else 60
    from orchestrator.state.listing import Cursor
    from orchestrator.ui.app import create_app
    from orchestrator.ui.context import UiContext

    with C.environment(args) as env:
        services = C.services(env, env.db(0))
        began = time.perf_counter()
        start = insert_runs(services.repository, total)
        inserted = time.perf_counter() - began
        ctx = UiContext.open(services)
        app = create_app(ctx)
        deep = total - 100
        cursor = Cursor(start + timedelta(seconds=100), f"bench-{100:07d}")
        since, until = (
            (start + timedelta(seconds=deep // 2)).isoformat(),
            (start + timedelta(seconds=deep // 2 + 3600)).isoformat(),
        )
        cases = {
            "floor: /login (no SQL)": "/login",
            "runs page /": "/",
            "API /api/runs": "/api/runs",
            f"runs page, {deep:,} runs down (keyset)": f"/?before={cursor}",
            f"API, {deep:,} runs down (keyset)": f"/api/runs?before={cursor}",
            "runs page ?state=failed&package=beta": "/?state=failed&package=beta",
            "API ?since&until (one hour)": f"/api/runs?since={since}&until={until}".replace("+", "%2B"),
        }
        samples = asyncio.run(rounds(app, cases, count))
        offset = offset_page(ctx.reader, deep, count)
        ctx.reader.engine.dispose()
        services.close()
    floor = C.summary(samples["floor: /login (no SQL)"])["p50"]
    rows, results = [], {}
    for name, values in [*samples.items(), (f"(SQL only) OFFSET {deep:,}, not used", offset)]:
        stats = C.summary(values)
        judged = not name.startswith(("floor", "(SQL"))
        met = stats["p50"] <= TARGET_MS and stats["p99"] <= TARGET_MS
        rows.append(
            [
                name,
                stats["p50"],
                stats["p99"],
                C.ratio(stats["p50"], floor),
                TARGET_MS if judged else "-",
                ("yes" if met else "NO") if judged else "-",
            ]
        )
        results[name] = {"ms": stats, "samples": values}
    print(
        C.table(
            f"Web UI with {total:,} runs in SQL ({env.database_url.split(':', 1)[0]}), "
            f"in-process requests, {count} rounds (ms)",
            ["case", "p50 ms", "p99 ms", "ratio p50 to floor", "target ms", "met"],
            rows,
        )
    )
    C.write_result(
        args,
        "ui",
        {
            "runs": total,
            "rounds": count,
            "insert_seconds": inserted,
            "target_ms": TARGET_MS,
            "cases": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
