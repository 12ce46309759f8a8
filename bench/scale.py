"""Scale: the scheduler's liveness tick against many healthy runs, and a worker node's memory.

Tick: leases of N running runs and 200 worker nodes are written straight into
a real Redis (the keys :mod:`orchestrator.control.liveness` uses, deadlines an hour
ahead), and the N runs into SQL; :meth:`Scheduler.tick` is then timed with nothing expired, and with
E of the leases expired (those runs exist in SQL, so each is fenced, recorded
lost and dispatched again, as after a node loss). N grows 10x and more; the
tick must not. Baseline in the same run: one Redis PING round trip. The
state gauges (refreshed at most once a second by the tick) are timed apart.
Each of the 200 nodes holds a real, named and recorded Redis connection, as
a worker node does, so every tick includes the crash check
(:mod:`orchestrator.control.connections`: ``HGETALL`` of the recorded ids and
one ``CLIENT LIST ID`` of all of them), which is also timed on its own.

Memory: a worker node (``orchestrator worker --concurrency 8``, a real process
group) at rest and while 8 runs hold, against a plain Celery prefork worker
with concurrency 8 at rest and with 8 held tasks, all in the same run. PSS
(proportional set size) shares pages the pool's forked processes have in
common; the RSS sum counts them 9 times.

Run: ``python -m bench.scale [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json
import logging
import os
import time
from typing import Any

from bench import common as C

NODES = 200
CONCURRENCY = 8
HOUR_MS = 3_600_000


# -- the tick ----------------------------------------------------------------------------------


def populate(services: Any, runs: int, prefix: str) -> list[str]:
    """Leases of ``runs`` healthy runs and NODES live nodes, as worker nodes would leave them."""
    liveness = services.liveness
    client = liveness.client
    now = liveness.server_ms()
    ids = [f"{prefix}-{i:07d}" for i in range(runs)]
    pipe = client.pipeline(transaction=False)
    for index, run_id in enumerate(ids):
        node = f"node-{index % NODES:03d}"
        pipe.set(liveness._key("epoch", run_id), 1)
        pipe.hset(liveness._key("lease", run_id), mapping={"node": node, "epoch": 1, "attempt": 1})
        pipe.zadd(liveness._key("leases"), {run_id: now + HOUR_MS})
        if len(pipe) >= 3000:
            pipe.execute()
    for n in range(NODES):
        node = f"node-{n:03d}"
        pipe.zadd(liveness._key("nodes"), {node: now + HOUR_MS})
        pipe.set(liveness._key("node", node), json.dumps({"pid": n, "host": "bench", "concurrency": 8}))
    pipe.execute()
    liveness.set_marker()
    insert_running(services, ids)
    return ids


def insert_running(services: Any, ids: list[str]) -> None:
    """The healthy runs in SQL as well (the gauges count runs by state there)."""
    from sqlalchemy import insert

    from orchestrator.state import Run
    from orchestrator.state.states import RunState

    rows = [
        {
            "id": run_id,
            "package": "scale",
            "definition_hash": "0" * 64,
            "state": RunState.RUNNING,
            "attempt": 1,
            "epoch": 1,
            "max_restarts": 5,
            "node": f"node-{index % NODES:03d}",
            "variables": {},
        }
        for index, run_id in enumerate(ids)
    ]
    with services.repository.sessions.begin() as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(Run), rows[start : start + 5000])


def make_expired(services: Any, count: int, prefix: str) -> list[str]:
    """``count`` running runs recorded in SQL whose leases expired a second ago."""
    from orchestrator.packages.validation import parse_package

    repo, liveness = services.repository, services.liveness
    package = parse_package({"name": "scale", "tasks": [{"id": "t", "python": "bench.tasks:noop"}]})
    repo.register_package(package)
    now = liveness.server_ms()
    ids = []
    for index in range(count):
        run_id = f"{prefix}-{index:05d}"
        repo.create_run(run_id, package, {}, max_restarts=5)
        repo.record_dispatch(run_id, 1)
        repo.mark_claimed(run_id, 1, 1, "node-000")
        liveness.client.set(liveness._key("epoch", run_id), 1)
        liveness.client.hset(
            liveness._key("lease", run_id), mapping={"node": "node-000", "epoch": 1, "attempt": 1}
        )
        liveness.client.zadd(liveness._key("leases"), {run_id: now - 1000})
        ids.append(run_id)
    return ids


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


class TickCase:
    """One population (N healthy leases, NODES nodes) in its own Redis database and SQL file."""

    def __init__(self, env: C.Environment, db: int, runs: int) -> None:
        from orchestrator.control.scheduler import Scheduler

        self.runs = runs
        url = env.db(db)
        self.services = C.services(
            env, url, database_url=env.database_url.replace("state.db", f"scale-{db}.db")
        )
        before = self.services.redis.info("memory")["used_memory"]
        populate(self.services, runs, "healthy")
        # Each node's own named connection, recorded as it connects (what the crash check reads).
        self.node_clients = [self.services.node_redis(f"node-{n:03d}") for n in range(NODES)]
        for client in self.node_clients:
            client.ping()
        self.redis_mb = (self.services.redis.info("memory")["used_memory"] - before) / 1e6
        self.scheduler = Scheduler(self.services)
        self.scheduler.tick()  # warm-up: scripts loaded, SQL connection open
        self.idle: list[float] = []
        self.ping: list[float] = []
        self.gauges: list[float] = []
        self.per_expired: list[float] = []
        self.check: list[float] = []
        self.expired = self.recovered = 0

    def tick_once(self) -> None:
        """One idle tick, and one PING right before it (the round-trip baseline of the moment)."""
        self.ping.append(timed(self.services.redis.ping))
        self.scheduler._gauges_at = time.monotonic()  # the gauges are timed apart (once a second)
        self.idle.append(timed(self.scheduler.tick))
        gone: list[Any] = []
        self.check.append(timed(lambda: gone.extend(self.services.connections.gone())))
        if gone:
            raise RuntimeError(f"healthy nodes taken for lost: {gone}")

    def gauges_once(self) -> None:
        self.scheduler._gauges_at = -1.0
        self.gauges.append(timed(self.scheduler._gauges))

    def recover(self, count: int, batch: int) -> None:
        """A tick that finds ``count`` expired leases: fence, record lost, dispatch each."""
        lost = make_expired(self.services, count, f"lost{batch}")
        self.scheduler._gauges_at = time.monotonic()
        self.per_expired.append(timed(self.scheduler.tick) / count)
        self.expired += count
        self.recovered += sum(1 for run_id in lost if self.services.liveness.epoch(run_id) == 2)

    def result(self) -> dict[str, Any]:
        pairs = [tick / ping for tick, ping in zip(self.idle, self.ping, strict=True)]
        return {
            "healthy_runs": self.runs,
            "nodes": NODES,
            "tick_idle_ms": C.summary(self.idle),
            "ping_ms": C.summary(self.ping),
            "tick_in_round_trips_p50": C.percentile(pairs, 50),
            "gauges_ms": C.summary(self.gauges),
            "connection_check_ms": C.summary(self.check),
            "connection_check_in_round_trips_p50": C.percentile(
                [c / p for c, p in zip(self.check, self.ping, strict=True)], 50
            ),
            "expired": self.expired,
            "recovered": self.recovered,
            "per_expired_ms": C.summary(self.per_expired),
            "redis_mb_for_leases": self.redis_mb,
        }


def tick_cases(env: C.Environment, sizes: tuple[int, ...], expired: int, ticks: int) -> list[dict[str, Any]]:
    """Every population is built first; then their ticks alternate, so drift hits them alike."""
    cases = [TickCase(env, index, runs) for index, runs in enumerate(sizes)]
    try:
        for round_ in range(ticks):
            for case in cases:
                case.tick_once()
                if round_ % 20 == 0:
                    case.gauges_once()
        for batch in range(3):
            for case in cases:
                case.recover(expired, batch)
        return [case.result() for case in cases]
    finally:
        for case in cases:
            for client in case.node_clients:
                client.close()
            case.services.close()


# -- memory --------------------------------------------------------------------------------------


def group_memory(env: C.Environment, name: str) -> dict[str, float]:
    pids = env.processes.pids(name)
    rss, pss = zip(*(C.memory_kib(pid) for pid in pids), strict=True)
    return {"processes": len(pids), "rss_mb": sum(rss) / 1024, "pss_mb": sum(pss) / 1024}


def settle(env: C.Environment, name: str, seconds: float) -> dict[str, float]:
    """Memory of a process group once it stopped changing much (max of a few readings)."""
    readings = []
    for _ in range(3):
        time.sleep(seconds / 3)
        readings.append(group_memory(env, name))
    return max(readings, key=lambda r: r["pss_mb"])


def node_memory(env: C.Environment, db: int, quick: bool) -> dict[str, Any]:
    from orchestrator.control.client import Client
    from orchestrator.packages.validation import parse_package

    url = env.db(db)
    node_env = env.orchestrator_env(url)
    services = C.services(env, url)
    env.processes.spawn("mem-scheduler", C.orchestrator_command("scheduler"), node_env)
    env.processes.spawn(
        "mem-node",
        C.orchestrator_command("worker", "--node", "mem-node", "--concurrency", str(CONCURRENCY)),
        node_env,
    )
    C.wait_until(lambda: "mem-node" in services.liveness.alive_nodes(), timeout=90, what="mem-node")
    log, release = env.tmp / "mem.jsonl", env.tmp / "mem-release"
    client = Client(services)
    warm = parse_package({"name": "warm", "tasks": [{"id": "t", "python": "bench.tasks:noop"}]})
    for run_id in [client.submit(warm) for _ in range(CONCURRENCY)]:
        client.wait(run_id, timeout=60)  # every pool process has imported what a run needs
    at_rest = settle(env, "mem-node", 1.0 if quick else 3.0)
    params = {"log": str(log), "release": str(release)}
    package = parse_package(
        {"name": "held", "tasks": [{"id": "t", "python": "bench.tasks:hold", "params": params}]}
    )
    runs = [client.submit(package) for _ in range(CONCURRENCY)]
    C.wait_until(lambda: len(C.read_lines(log)) >= CONCURRENCY, timeout=90, what="8 runs to hold")
    busy = settle(env, "mem-node", 1.0 if quick else 3.0)
    release.touch()
    for run_id in runs:
        client.wait(run_id, timeout=60)
    env.processes.kill("mem-node")
    env.processes.kill("mem-scheduler")
    services.close()
    return {"at_rest": at_rest, "with_runs": busy}


def celery_memory(env: C.Environment, db: int, quick: bool) -> dict[str, Any]:
    """A plain Celery prefork worker (the recovery bench's app) at rest and with 8 held tasks."""
    from bench.recovery import BROKER_ENV, QUEUE, make_app

    url = env.db(db)
    worker_env = {**os.environ, BROKER_ENV: url, "PYTHONPATH": str(C.ROOT)}
    command = [
        sys.executable, "-m", "celery", "-A", "bench.recovery:baseline", "worker", f"--queues={QUEUE}",
        f"--concurrency={CONCURRENCY}", "--pool=prefork", "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname=mem-celery@%h",
    ]  # fmt: skip
    env.processes.spawn("mem-celery", command, worker_env)
    app = make_app(url, None)
    log, release = env.tmp / "celery-mem.jsonl", env.tmp / "celery-release"
    warm = env.tmp / "celery-warm"
    warm.touch()
    for index in range(CONCURRENCY):  # warm-up: the pool has run a task in every process
        app.send_task(
            "bench.hold", kwargs={"key": f"w{index}", "log": str(log), "release": str(warm)}, queue=QUEUE
        )
    C.wait_until(lambda: len(C.read_lines(log)) >= 2 * CONCURRENCY, timeout=90, what="celery warm-up")
    at_rest = settle(env, "mem-celery", 1.0 if quick else 3.0)
    for index in range(CONCURRENCY):
        app.send_task(
            "bench.hold", kwargs={"key": f"h{index}", "log": str(log), "release": str(release)}, queue=QUEUE
        )
    C.wait_until(
        lambda: sum(1 for e in C.read_lines(log) if e["key"].startswith("h")) >= CONCURRENCY,
        timeout=90,
        what="8 held Celery tasks",
    )
    busy = settle(env, "mem-celery", 1.0 if quick else 3.0)
    release.touch()
    env.processes.kill("mem-celery")
    return {"at_rest": at_rest, "with_runs": busy}


# -- the report ------------------------------------------------------------------------------------


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    logging.getLogger("orchestrator").setLevel(logging.ERROR)  # one warning per recovered lease
    sizes = (100, 1_000) if args.quick else (1_000, 10_000, 50_000)
    expired = 10 if args.quick else 100
    ticks = 20 if args.quick else 200
    with C.environment(args) as env:
        cases = tick_cases(env, sizes, expired, ticks)
        node = node_memory(env, 3, args.quick)
        celery = celery_memory(env, 4, args.quick)
    base = cases[0]
    rows = []
    for case in cases:
        idle = case["tick_idle_ms"]
        rows.append(
            [
                case["healthy_runs"],
                idle["p50"],
                idle["p99"],
                C.ratio(idle["p50"], base["tick_idle_ms"]["p50"]),
                case["tick_in_round_trips_p50"],
                f"{case['recovered']} of {case['expired']}",
                case["per_expired_ms"]["p50"],
                C.ratio(case["per_expired_ms"]["p50"], base["per_expired_ms"]["p50"]),
                case["gauges_ms"]["p50"],
                case["redis_mb_for_leases"],
            ]
        )
    print(
        C.table(
            f"Scheduler.tick with {NODES} live nodes and N healthy leases in a real Redis (ms; same run)",
            [
                "healthy runs N",
                "idle tick p50",
                "idle tick p99",
                f"ratio to N={base['healthy_runs']}",
                "in PING round trips (p50)",
                "expired recovered",
                "ms per expired lease (p50 of 3)",
                f"ratio to N={base['healthy_runs']}",
                "gauges p50",
                "Redis MB for N leases",
            ],
            rows,
        )
    )
    print(
        C.table(
            f"crash check: recorded connections of {NODES} live nodes, one CLIENT LIST ID (ms; same run)",
            [
                "healthy runs N",
                "check p50",
                "check p99",
                "in PING round trips (p50)",
                "ratio to the idle tick",
            ],
            [
                [
                    case["healthy_runs"],
                    case["connection_check_ms"]["p50"],
                    case["connection_check_ms"]["p99"],
                    case["connection_check_in_round_trips_p50"],
                    C.ratio(case["connection_check_ms"]["p50"], case["tick_idle_ms"]["p50"]),
                ]
                for case in cases
            ],
        )
    )
    memory_rows = []
    for state in ("at_rest", "with_runs"):
        n, c = node[state], celery[state]
        memory_rows.append(
            [
                state.replace("_", " ").replace("with runs", f"{CONCURRENCY} running"),
                n["processes"],
                n["pss_mb"],
                n["rss_mb"],
                c["pss_mb"],
                c["rss_mb"],
                C.ratio(n["pss_mb"], c["pss_mb"]),
            ]
        )
    print(
        C.table(
            f"worker node memory, concurrency {CONCURRENCY} (MB; the whole process group)",
            ["state", "processes", "node PSS", "node RSS sum", "Celery PSS", "Celery RSS sum", "ratio PSS"],
            memory_rows,
        )
    )
    idle_ratio = C.ratio(cases[-1]["tick_idle_ms"]["p50"], base["tick_idle_ms"]["p50"])
    C.write_result(
        args,
        "scale",
        {
            "ticks": cases,
            "idle_tick_ratio_largest_to_smallest": idle_ratio,
            "node_memory": node,
            "celery_memory": celery,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
