"""Overhead: a package of 100 tasks of 10 ms each, orchestrated, against the same callables in a loop.

* ``plain loop``: ``bench.tasks.sleep`` called 100 times in this process;
* ``executor in-process``: the package run by :func:`workers.executor.execute`
  (what ``orchestrator run`` does) with a filesystem checkpoint store: one fsynced
  checkpoint per task, no broker, no SQL;
* ``cluster``: the package submitted to a scheduler and a worker node (real
  processes, SQLite state, filesystem checkpoints), timed from the submit to
  the run's ``finished_at``: dispatch, claim, lease, a checkpoint and the SQL
  task records after every task.

The three alternate round by round; the ratio is median against median.

Then a foreach of 10,000 no-op items (500 quick), one item at a time: in the
cluster (submit to ``finished_at``: a journal record per item, the items'
events appended to Redis behind them) against the same package under
``orchestrator run`` (the in-process executor and filesystem store alone),
alternating; target at most 1.5 times.

Run: ``python -m bench.overhead [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import time
from types import SimpleNamespace
from typing import Any

from bench import common as C
from bench import tasks

TARGETS = {"executor in-process": 1.3, "cluster": 1.15}
"""Ratio to the plain loop: in-process as before; the cluster's from issue 11 (no SQL per task)."""
TASK_SECONDS = 0.01
FOREACH_TARGET = 1.5
"""A foreach in the cluster against the same package under ``orchestrator run`` (issue 11)."""


def package(name: str, count: int) -> Any:
    from orchestrator.packages.validation import parse_package

    chain = [
        {
            "id": f"t{n:03d}",
            "python": "bench.tasks:sleep",
            "params": {"seconds": TASK_SECONDS},
            "depends_on": [f"t{n - 1:03d}"] if n > 1 else [],
        }
        for n in range(1, count + 1)
    ]
    return parse_package({"name": name, "tasks": chain})


def foreach_package(name: str, items: int) -> Any:
    from orchestrator.packages.validation import parse_package

    task = {"id": "each", "python": "bench.tasks:noop", "foreach": list(range(items))}
    return parse_package({"name": name, "tasks": [task]})


def foreach_run(root: Path, items: int, index: int) -> float:
    """The package as ``orchestrator run`` runs it: the executor and a filesystem store, no broker."""
    return executed(root, foreach_package("foreach_local", items), f"foreach_local-{index:06d}")


def foreach_cluster(services: Any, items: int, index: int) -> float:
    return submitted(services, foreach_package(f"foreach_cluster_{index}", items), 120 + items / 100)


def plain(count: int) -> float:
    ctx = SimpleNamespace(params={"seconds": TASK_SECONDS})
    started = time.perf_counter()
    for _ in range(count):
        tasks.sleep(ctx)  # type: ignore[arg-type]
    return time.perf_counter() - started


def in_process(root: Path, count: int, index: int) -> float:
    return executed(root, package("overhead_local", count), f"overhead_local-{index:06d}")


def cluster(services: Any, count: int, index: int) -> float:
    return submitted(services, package(f"overhead_cluster_{index}", count), 120 + count)


def executed(root: Path, pkg: Any, run_id: str) -> float:
    """Seconds :func:`workers.executor.execute` takes to run ``pkg`` with a filesystem store."""
    from checkpoints import FilesystemCheckpointStore
    from workers.executor import ExecutionOptions, RunRequest, execute

    store = FilesystemCheckpointStore(root)
    started = time.perf_counter()
    result = execute(RunRequest(pkg, run_id), ExecutionOptions(store=store))
    seconds = time.perf_counter() - started
    if not result.succeeded:
        raise RuntimeError(f"in-process run {run_id} failed: {result.error}")
    return seconds


def submitted(services: Any, pkg: Any, timeout: float) -> float:
    """Seconds from submitting ``pkg`` to the cluster to its run's ``finished_at``."""
    from orchestrator.control.client import Client

    client = Client(services)
    started = time.time()
    run_id = client.submit(pkg)
    status = client.wait(run_id, timeout=timeout)
    if status["state"] != "succeeded":
        raise RuntimeError(f"run {run_id} {status['state']}: {status['error']}")
    finished = services.repository.run_row(run_id).finished_at
    return float(finished.timestamp() - started)


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    count = 20 if args.quick else 100
    rounds = 1 if args.quick else 5
    samples: dict[str, list[float]] = {"plain loop": [], "executor in-process": [], "cluster": []}
    with C.environment(args) as env:
        url = env.db(0)
        services = C.services(env, url)
        orch_env = env.orchestrator_env(url)
        env.processes.spawn("scheduler", C.orchestrator_command("scheduler"), orch_env)
        env.processes.spawn(
            "node-1", C.orchestrator_command("worker", "--node", "node-1", "--concurrency", "1"), orch_env
        )
        C.wait_until(lambda: "node-1" in services.liveness.alive_nodes(), timeout=60, what="node-1")
        cluster(services, 2, 0)  # warm-up: imports, migrations, the pool process
        in_process(env.tmp / "local", 2, 0)
        runners = {
            "plain loop": lambda i: plain(count),
            "executor in-process": lambda i: in_process(env.tmp / "local", count, i),
            "cluster": lambda i: cluster(services, count, i),
        }
        order = list(runners)
        for index in range(1, rounds + 1):
            for name in order[index % 3 :] + order[: index % 3]:
                samples[name].append(runners[name](index))
        items = 500 if args.quick else 10_000
        foreach_rounds = 1 if args.quick else 3
        loops: dict[str, list[float]] = {"orchestrator run": [], "cluster": []}
        for index in range(1, foreach_rounds + 1):
            pair = [
                ("orchestrator run", lambda i=index: foreach_run(env.tmp / "foreach", items, i)),
                ("cluster", lambda i=index: foreach_cluster(services, items, i)),
            ]
            for name, call in pair if index % 2 else reversed(pair):
                loops[name].append(call())
        services.close()
    base = C.percentile(samples["plain loop"], 50)
    rows = []
    result: dict[str, Any] = {
        "tasks": count,
        "task_seconds": TASK_SECONDS,
        "rounds": rounds,
        "targets": TARGETS,
    }
    for name, values in samples.items():
        p50 = C.percentile(values, 50)
        value = C.ratio(p50, base)
        per_task = (p50 - base) / count * 1000
        target = TARGETS.get(name)
        verdict = "-" if target is None else f"{'met' if value <= target else 'NOT met'} (<= {target})"
        rows.append([name, p50, min(values), max(values), per_task, value, verdict])
        result[name] = {"seconds": values, "p50": p50, "ratio": value, "overhead_ms_per_task": per_task}
    result["met"] = all(result[name]["ratio"] <= target for name, target in TARGETS.items())
    print(
        C.table(
            f"{count} tasks of {TASK_SECONDS * 1000:g} ms: wall seconds (median of {rounds} rounds)",
            ["how", "p50 s", "min s", "max s", "overhead ms/task", "ratio", "target"],
            rows,
        )
    )
    local, remote = (C.percentile(loops[name], 50) for name in ("orchestrator run", "cluster"))
    foreach_ratio = C.ratio(remote, local)
    foreach_met = foreach_ratio <= FOREACH_TARGET
    result["foreach"] = {
        "items": items,
        "rounds": foreach_rounds,
        "seconds": loops,
        "ratio": foreach_ratio,
        "target": FOREACH_TARGET,
        "met": foreach_met,
    }
    result["met"] = result["met"] and foreach_met
    verdict = f"{'met' if foreach_met else 'NOT met'} (<= {FOREACH_TARGET})"
    print(
        C.table(
            f"a foreach of {items:,} no-op items, one at a time: wall seconds (median of {foreach_rounds})",
            ["how", "p50 s", "per item us", "ratio", "target"],
            [
                ["orchestrator run", local, local / items * 1e6, 1.0, "-"],
                ["cluster", remote, remote / items * 1e6, foreach_ratio, verdict],
            ],
        )
    )
    C.write_result(args, "overhead", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
