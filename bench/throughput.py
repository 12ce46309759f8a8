"""Throughput: one-task packages through the whole orchestrator against raw Celery no-op tasks.

Both on the same Redis server in the same run, rounds interleaved (A B, B A...):

* ``celery``: a plain Celery app defined here (JSON serializer, otherwise Celery's
  defaults), one prefork worker process group with concurrency 2; N no-op tasks
  sent at once, timed from the first send until the N-th task has run (each
  task increments a Redis counter, which the bench polls);
* ``orchestrator``: a scheduler and one worker node (concurrency 2) as real
  processes, SQLite state, filesystem checkpoints; N packages of one no-op task
  submitted with the Python client, timed from the first submit until the last
  run's ``finished_at`` (submit -> scheduler -> worker -> checkpoint -> SQL).

During the orchestrator rounds a sampler reads, every 0.2 s, the age (Redis
clock) of the oldest worker event not yet written to SQL: what the
scheduler's ``orchestrator_event_lag_seconds`` reports. Its maximum over the
rounds is the projection's lag at this load (target: under 1 s).

Around every round the bench also reads the CPU time (``/proc``) of each process set
that round uses: the Celery worker (its main process and pool), the scheduler, the node's
main process, its pool, this process (submits and polls), the Redis server and the
PostgreSQL server when they run on this machine. Divided by the round's count, that is
the CPU each item costs: where the time goes, and the ratio of the two sides' totals,
which bounds the throughput ratio on a machine whose cores they all share.

Run: ``python -m bench.throughput [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from bench import common as C

TARGET = 0.5
BASELINE_QUEUE = "bench.noop"
BROKER_ENV = "BENCH_BROKER_URL"


def make_app(broker_url: str) -> Celery:
    """Plain Celery: JSON only, no result backend, every other setting Celery's default."""
    app: Celery = C.plain_celery("bench_throughput", broker_url, BASELINE_QUEUE)
    return app


baseline = make_app(os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/15"))
_client: dict[int, redis.Redis] = {}


@baseline.task(name="bench.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop(counter: str) -> None:
    """Count the execution (one INCR), nothing else."""
    pid = os.getpid()
    if pid not in _client:
        _client[pid] = redis.Redis.from_url(os.environ[BROKER_ENV])
    _client[pid].incr(counter)


def start_baseline_worker(env: C.Environment, url: str) -> None:
    worker_env = {**os.environ, BROKER_ENV: url, "PYTHONPATH": str(C.ROOT)}
    command = [
        sys.executable, "-m", "celery", "-A", "bench.throughput:baseline", "worker",
        f"--queues={BASELINE_QUEUE}", "--concurrency=2", "--pool=prefork", "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname=baseline@%h",
    ]  # fmt: skip
    env.processes.spawn("celery-worker", command, worker_env)


def celery_round(url: str, count: int) -> float:
    """Tasks per second for ``count`` no-op tasks, first send to last execution."""

    def send(counter: str) -> None:
        with baseline.connection_for_write() as connection, baseline.producer_or_acquire() as producer:
            del connection
            for _ in range(count):
                noop.apply_async((counter,), producer=producer)

    return C.counted_rate(url, count, send, timeout=60 + count / 50, what=f"{count} Celery tasks")


def one_task_package(name: str) -> Any:
    from orchestrator.packages.validation import parse_package

    return parse_package({"name": name, "tasks": [{"id": "only", "python": "bench.tasks:noop"}]})


def orchestrator_round(services: Any, count: int) -> dict[str, float]:
    """Packages per second for ``count`` one-task packages, first submit to last finished run."""
    from sqlalchemy import select

    from orchestrator.control.client import Client
    from orchestrator.state import Run

    name = f"tp_{secrets.token_hex(4)}"
    package = one_task_package(name)
    client = Client(services)
    started_wall = time.time()
    started = time.perf_counter()
    for _ in range(count):
        client.submit(package)
    submitted = time.perf_counter() - started
    repo = services.repository

    def finished() -> list[Any] | None:
        with repo.sessions() as session:
            rows = session.execute(select(Run.state, Run.finished_at).where(Run.package == name)).all()
        done = [r for r in rows if r[1] is not None]
        return done if len(done) >= count else None

    done = C.wait_until(finished, timeout=60 + count, what=f"{count} packages", interval=0.5)
    failed = sum(1 for state, _ in done if state.value != "succeeded")
    last = max(at.timestamp() for _, at in done)
    return {
        "rate": count / (last - started_wall),
        "failed": failed,
        "submit_rate": count / submitted,
    }


LAG_TARGET = 1.0


class LagSampler(threading.Thread):
    """Samples the age of the oldest event not yet in SQL while the rounds run."""

    def __init__(self, services: Any) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.services = services
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        from orchestrator.control.stream import parse_id

        events = self.services.events
        while not self.done.wait(0.2):
            _, projected = events.head()
            waiting = events.first_after(projected)
            age = 0.0
            if waiting is not None:
                age = max(0, self.services.liveness.server_ms() - parse_id(waiting)[0]) / 1000
            self.samples.append(age)


def redis_commands(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


CELERY_SETS = ("Celery worker", "bench process", "Redis server")
"""What a raw Celery round uses: the worker (main process and pool), this process (it sends
and polls), Redis."""
ORCHESTRATOR_SETS = (
    "scheduler",
    "node main process",
    "node pool processes",
    "bench process",
    "Redis server",
    "PostgreSQL server",
)
"""What an orchestrator round uses (this process submits and polls)."""


def cpu_meter(env: C.Environment, url: str) -> C.CpuMeter:
    """The process sets whose CPU each round reads (see the module docstring)."""
    node = env.processes.running["node-1"].pid
    with redis.Redis.from_url(url) as client:
        redis_pid = int(client.info("server").get("process_id", 0))
    local_redis = any(name in C.command_name(redis_pid) for name in ("redis", "valkey"))
    postgres = (env.database_url or "").startswith("postgresql") and any(
        host in (env.database_url or "") for host in ("@127.0.0.1", "@localhost", "@/", "@:")
    )
    groups: dict[str, Callable[[], list[int]]] = {
        "Celery worker": lambda: env.processes.pids("celery-worker"),
        "scheduler": lambda: env.processes.pids("scheduler"),
        "node main process": lambda: [node],
        "node pool processes": lambda: [p for p in env.processes.pids("node-1") if p != node],
        "bench process": lambda: [os.getpid()],
    }
    if local_redis:
        groups["Redis server"] = lambda: [redis_pid]
    if postgres:
        groups["PostgreSQL server"] = lambda: C.pids_named("postgres")
    return C.CpuMeter(groups)


def cpu_table(cpu: dict[str, dict[str, list[float]]]) -> tuple[str, dict[str, float]]:
    """Median CPU ms per item of each process set on each side, and each side's total."""

    def ms(side: str, name: str) -> float:
        values = cpu[side].get(name, [])
        return C.percentile(values, 50) * 1000 if values else math.nan

    sides = {"celery": CELERY_SETS, "orchestrator": ORCHESTRATOR_SETS}
    rows: list[list[Any]] = [
        [name, *(ms(side, name) if name in sets else math.nan for side, sets in sides.items())]
        for name in dict.fromkeys((*CELERY_SETS, *ORCHESTRATOR_SETS))
    ]
    totals = {
        side: sum(value for name in sets if not math.isnan(value := ms(side, name)))
        for side, sets in sides.items()
    }
    rows.append(["total", totals["celery"], totals["orchestrator"]])
    rows.append(["Celery's total / this total", 1.0, C.ratio(totals["celery"], totals["orchestrator"])])
    text = C.table(
        "CPU ms per item by process set, median of rounds ('-': not on that side, or not on this machine)",
        ["process set", "raw Celery no-op task", "orchestrator one-task package"],
        rows,
    )
    return text, totals


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    rounds = 1 if args.quick else 6
    celery_n = 300 if args.quick else 2000
    orch_n = 20 if args.quick else 150
    with C.environment(args) as env:
        orch_url, celery_url = env.db(0), env.db(1)
        services = C.services(env, orch_url)
        orch_env = env.orchestrator_env(orch_url)
        env.processes.spawn("scheduler", C.orchestrator_command("scheduler"), orch_env)
        env.processes.spawn(
            "node-1", C.orchestrator_command("worker", "--node", "node-1", "--concurrency", "2"), orch_env
        )
        start_baseline_worker(env, celery_url)
        C.wait_until(lambda: "node-1" in services.liveness.alive_nodes(), timeout=60, what="node-1")
        baseline.conf.broker_url = celery_url
        celery_round(celery_url, 20)  # warm-up: the worker is up and its pool forked
        orchestrator_round(services, 5)  # warm-up: scheduler consuming, migrations done, imports
        celery_rates: list[float] = []
        orch: list[dict[str, float]] = []
        commands: dict[str, list[float]] = {"celery": [], "orchestrator": []}
        sampler = LagSampler(services)
        sampler.start()
        meter = cpu_meter(env, orch_url)
        cpu: dict[str, dict[str, list[float]]] = {"celery": {}, "orchestrator": {}}
        for index in range(rounds):
            for which in ("celery", "orchestrator") if index % 2 == 0 else ("orchestrator", "celery"):
                # Server-wide count: it includes the idle side's few polls (a small overcount).
                before = redis_commands(orch_url)
                cpu_before = meter.read()
                if which == "celery":
                    celery_rates.append(celery_round(celery_url, celery_n))
                else:
                    orch.append(orchestrator_round(services, orch_n))
                count = celery_n if which == "celery" else orch_n
                for name, seconds in C.CpuMeter.spent(cpu_before, meter.read()).items():
                    cpu[which].setdefault(name, []).append(seconds / count)
                commands[which].append((redis_commands(orch_url) - before) / count)
                rate = celery_rates[-1] if which == "celery" else orch[-1]["rate"]
                print(f"round {index + 1} {which}: {rate:.1f}/s", flush=True)
        sampler.done.set()
        sampler.join()
        services.close()
    celery_p50 = C.percentile(celery_rates, 50)
    orch_p50 = C.percentile([o["rate"] for o in orch], 50)
    value = C.ratio(orch_p50, celery_p50)
    rows = [
        [
            "raw Celery no-op tasks",
            celery_n,
            rounds,
            celery_p50,
            min(celery_rates),
            max(celery_rates),
            C.percentile(commands["celery"], 50),
            1.0,
            "-",
        ],
        [
            "orchestrator one-task packages",
            orch_n,
            rounds,
            orch_p50,
            min(o["rate"] for o in orch),
            max(o["rate"] for o in orch),
            C.percentile(commands["orchestrator"], 50),
            value,
            f"{'met' if value >= TARGET else 'NOT met'} (>= {TARGET})",
        ],
    ]
    print(
        C.table(
            "throughput per second, same Redis server, same run (median of rounds)",
            [
                "what",
                "per round",
                "rounds",
                "p50 /s",
                "min /s",
                "max /s",
                "Redis cmds each",
                "ratio",
                "target",
            ],
            rows,
        )
    )
    cpu_text, cpu_totals = cpu_table(cpu)
    print(cpu_text)
    lag = max(sampler.samples, default=0.0)
    print(
        C.table(
            "event projection lag during the orchestrator rounds (age of the oldest event not in SQL)",
            ["samples", "p50 s", "p99 s", "max s", "ratio max/target", "target"],
            [
                [
                    len(sampler.samples),
                    C.percentile(sampler.samples, 50) if sampler.samples else 0.0,
                    C.percentile(sampler.samples, 99) if sampler.samples else 0.0,
                    lag,
                    lag / LAG_TARGET,
                    f"{'met' if lag < LAG_TARGET else 'NOT met'} (< {LAG_TARGET:g} s)",
                ]
            ],
        )
    )
    C.write_result(
        args,
        "throughput",
        {
            "celery_tasks_per_s": celery_rates,
            "orchestrator": orch,
            "celery_p50": celery_p50,
            "orchestrator_p50": orch_p50,
            "ratio": value,
            "redis_commands_per_item": commands,
            "failed_runs": sum(o["failed"] for o in orch),
            "cpu_seconds_per_item": cpu,
            "cpu_ms_per_item_total": cpu_totals,
            "event_lag_max_s": lag,
            "event_lag_samples": len(sampler.samples),
            "target_ratio": TARGET,
            "met": value >= TARGET,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
