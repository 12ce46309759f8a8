"""The floor under issue 11's throughput target: a skeleton of the orchestrator's path
with nothing but the queue hops and the SQL the issue keeps synchronous.

Against raw Celery no-op tasks on the same Redis in the same run (rounds interleaved), a
"skeleton run" is:

* a submission sent to a control queue (one Celery message, as ``Client.submit``);
* a solo-pool Celery worker (the scheduler's shape) that records the run in one SQL
  transaction (one INSERT) and sends it to a run queue (a second Celery message);
* a prefork worker with concurrency 2 (the worker node's shape) that claims the run in one
  transaction (``UPDATE ... RETURNING``) and records its outcome in another (``UPDATE``),
  then counts it in Redis.

A second skeleton has one hop: the submitting process records the run itself and sends it
straight to the run queue (no control queue, no scheduler process), the least any design that
records a run before running it can do.

No package, checkpoint, lease, event or projection: whatever the orchestrator does beyond
this costs more, so the ratio printed here is the most any design that keeps those three
transactions and the two hops can reach on this machine.

Run: ``python bench/floor.py --database-url postgresql+psycopg://...`` (SQLite by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
import secrets
from typing import Any

import redis
import sqlalchemy as sa

from bench import common as C
from bench import throughput as T

CONTROL = "floor.control"
RUNS = "floor.runs"
BROKER_ENV = "FLOOR_BROKER_URL"
DATABASE_ENV = "FLOOR_DATABASE_URL"

app = C.plain_celery("bench_floor", os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/15"), CONTROL)
PACKAGE = '{"name": "floor", "tasks": [{"id": "only", "python": "bench.tasks:noop"}]}'
_state: dict[str, Any] = {}
metadata = sa.MetaData()
runs = sa.Table(
    "floor_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("package", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("counter", sa.String(64), nullable=False),
)


def _engine() -> sa.Engine:
    key = f"engine-{os.getpid()}"
    if key not in _state:
        _state[key] = sa.create_engine(os.environ[DATABASE_ENV])
    engine: sa.Engine = _state[key]
    return engine


@app.task(name="floor.submit", ignore_result=True)  # type: ignore[untyped-decorator]
def submit(run_id: str, package: str, counter: str) -> None:
    """The scheduler's share: one INSERT transaction, one message to the run queue."""
    with _engine().begin() as connection:
        connection.execute(
            runs.insert().values(run_id=run_id, package=package, state="queued", epoch=1, counter=counter)
        )
    run.apply_async((run_id,), queue=RUNS)


@app.task(name="floor.run", ignore_result=True)  # type: ignore[untyped-decorator]
def run(run_id: str) -> None:
    """The node's share: the claim and the outcome, one transaction each."""
    engine = _engine()
    with engine.begin() as connection:
        row = connection.execute(
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.state == "queued")
            .values(state="running", epoch=runs.c.epoch + 1)
            .returning(runs.c.epoch, runs.c.counter)
        ).one()
    with engine.begin() as connection:
        connection.execute(
            runs.update().where(runs.c.run_id == run_id, runs.c.epoch == row.epoch).values(state="succeeded")
        )
    key = f"redis-{os.getpid()}"
    if key not in _state:
        _state[key] = redis.Redis.from_url(os.environ[BROKER_ENV])
    _state[key].incr(row.counter)


def floor_round(url: str, count: int) -> float:
    """Skeleton runs per second, first submission to the last outcome's count."""

    def send(counter: str) -> None:
        with app.connection_for_write() as connection, app.producer_or_acquire() as producer:
            del connection
            for _ in range(count):
                submit.apply_async((secrets.token_hex(8), PACKAGE, counter), producer=producer)

    return C.counted_rate(url, count, send, timeout=60 + count / 20, what=f"{count} skeleton runs")


def one_hop_round(url: str, count: int, engine: sa.Engine) -> float:
    """One-hop skeleton runs per second: this process records each run and sends it to the node."""

    def send(counter: str) -> None:
        with app.connection_for_write() as connection, app.producer_or_acquire() as producer:
            del connection
            for _ in range(count):
                run_id = secrets.token_hex(8)
                with engine.begin() as transaction:
                    transaction.execute(
                        runs.insert().values(
                            run_id=run_id, package=PACKAGE, state="queued", epoch=1, counter=counter
                        )
                    )
                run.apply_async((run_id,), producer=producer, queue=RUNS)

    return C.counted_rate(url, count, send, timeout=60 + count / 20, what=f"{count} one-hop skeleton runs")


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    rounds = 1 if args.quick else 6
    count = 300 if args.quick else 2000
    with C.environment(args) as env:
        floor_url, celery_url = env.db(0), env.db(1)
        database_url = args.database_url or f"sqlite:///{env.tmp / 'floor.db'}"
        engine = sa.create_engine(database_url)
        metadata.drop_all(engine)
        metadata.create_all(engine)
        worker_env = {
            **os.environ,
            BROKER_ENV: floor_url,
            DATABASE_ENV: database_url,
            "PYTHONPATH": str(C.ROOT),
        }
        common = ["--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        celery = [sys.executable, "-m", "celery", "-A", "bench.floor:app", "worker"]
        env.processes.spawn(
            "floor-scheduler",
            [*celery, f"--queues={CONTROL}", "--pool=solo", "--hostname=fs@%h", *common],
            worker_env,
        )
        env.processes.spawn(
            "floor-node",
            [*celery, f"--queues={RUNS}", "--pool=prefork", "--concurrency=2", "--hostname=fn@%h", *common],
            worker_env,
        )
        T.start_baseline_worker(env, celery_url)
        app.conf.broker_url = floor_url
        T.baseline.conf.broker_url = celery_url
        kinds: dict[str, Any] = {
            "raw Celery no-op tasks": lambda n: T.celery_round(celery_url, n),
            "skeleton runs, two hops": lambda n: floor_round(floor_url, n),
            "skeleton runs, one hop": lambda n: one_hop_round(floor_url, n, engine),
        }
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for measure in kinds.values():
            measure(20)  # warm-up: pools forked, connections open
        names = list(kinds)
        for index in range(rounds):
            for name in names[index % 3 :] + names[: index % 3]:
                rates[name].append(kinds[name](count))
                print(f"round {index + 1} {name}: {rates[name][-1]:.1f}/s", flush=True)
        engine.dispose()
    celery_p50 = C.percentile(rates[names[0]], 50)
    rows = []
    for name, values in rates.items():
        p50 = C.percentile(values, 50)
        rows.append([name, count, rounds, p50, min(values), max(values), C.ratio(p50, celery_p50)])
    print(
        C.table(
            "the floor: queue hops and three SQL transactions per run, against raw Celery (same run)",
            ["what", "per round", "rounds", "p50 /s", "min /s", "max /s", "ratio"],
            rows,
        )
    )
    C.write_result(
        args,
        "floor",
        {
            "database": database_url.split(":")[0],
            "per_s": rates,
            "ratio": {name: C.ratio(C.percentile(v, 50), celery_p50) for name, v in rates.items()},
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
