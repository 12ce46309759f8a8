"""Recovery: kill-to-resumed latency when the node running a package is SIGKILLed, against plain Celery.

Orchestrator cases (real processes: a scheduler, three worker nodes, SQLite,
filesystem checkpoints), at the default ``LEASE_TTL`` (5 s) and at 2 s: a
package ``t1 -> t2`` runs until ``t2`` (a held task) has started; the whole
process group of its node is SIGKILLed; the figure is the time from the kill
to ``t2`` starting again on another node (the task's own side-effect record).
The killed node is restarted once the run has finished, before the next kill.
The same with SIGSTOP instead (the node's connection stays open, so only its
lease can tell: the figure is at the TTL), and once with 50 runs on one node
killed at once (the figure is when the last of them resumed).

Plain-Celery cases (a Celery app defined here: JSON, ``acks_late``,
``reject_on_worker_lost``, prefetch 1, otherwise defaults), run in the same
run, in the background: workers each take one held task, then each worker's
whole process group is SIGKILLed and a replacement worker is started at once
(as a supervisor would); the figure is the time from the kill to the task
starting again, capped (a task not seen again is "not redelivered"). With the
default visibility timeout (3600 s) the kills are simultaneous; with 10 s they
are staggered, since kombu restores unacknowledged messages only in sweeps.

Duplicates, for every case, from the side-effect file: a task started again
while an earlier execution of it was still running in a live process, or
started again after it had finished. A long held "probe" task on a node that
is never killed catches duplicates of healthy work.

Run: ``python -m bench.recovery [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: bench/ comes first on sys.path, and its copy.py would shadow the standard
    # library's copy module; the repository root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from bench import common as C
from bench.tasks import append_line

NODES = 3
QUEUE = "bench.recovery"
PROBE_QUEUE = "bench.recovery.probe"
BROKER_ENV = "BENCH_BROKER_URL"
VISIBILITY_ENV = "BENCH_VISIBILITY_TIMEOUT"
HOLD_LIMIT = 400.0


# -- the plain-Celery baseline ------------------------------------------------------------


def make_app(broker_url: str, visibility_timeout: float | None) -> Celery:
    """Plain Celery with the settings its documentation gives for surviving a lost worker."""
    app: Celery = C.plain_celery(
        "bench_recovery",
        broker_url,
        QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
    )
    if visibility_timeout is not None:
        app.conf.broker_transport_options = {"visibility_timeout": visibility_timeout}
    return app


baseline = make_app(
    os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/15"),
    float(os.environ[VISIBILITY_ENV]) if os.environ.get(VISIBILITY_ENV) else None,
)


@baseline.task(name="bench.hold", ignore_result=True)  # type: ignore[untyped-decorator]
def hold(key: str, log: str, release: str) -> None:
    """Record the start, wait until ``release`` exists, record the end.

    Only the first execution of a key holds: a second copy records itself and ends, so that
    duplicates are counted without tying up the workers that would run redelivered tasks.
    """
    first = not any(e["key"] == key for e in C.read_lines(Path(log)))
    append_line(log, {"key": key, "event": "start", "pid": os.getpid(), "t": time.time()})
    deadline = time.monotonic() + HOLD_LIMIT
    while first and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)  # poll; bounded by the deadline
    append_line(log, {"key": key, "event": "end", "pid": os.getpid(), "t": time.time()})


# -- side effects -------------------------------------------------------------------------------


def duplicates(entries: list[dict[str, Any]], killed_pids: set[int]) -> int:
    """Starts of a key while an earlier execution was running in a live process, or after it ended."""
    running: dict[str, list[int]] = {}
    ended: set[str] = set()
    found = 0
    for entry in sorted(entries, key=lambda e: e["t"]):
        key, pid = entry["key"], entry["pid"]
        if entry["event"] == "start":
            alive = [p for p in running.get(key, []) if p not in killed_pids]
            if alive or key in ended:
                found += 1
            running.setdefault(key, []).append(pid)
        elif entry["event"] == "end":
            ended.add(key)
            if pid in running.get(key, []):
                running[key].remove(pid)
    return found


def first_start_after(entries: list[dict[str, Any]], key: str, after: float) -> float | None:
    times = [e["t"] for e in entries if e["key"] == key and e["event"] == "start" and e["t"] > after]
    return min(times) if times else None


@dataclass
class CaseResult:
    name: str
    lease_ttl: float | None
    kills: int
    latencies: list[float] = field(default_factory=list)
    not_resumed: int = 0
    cap: float | None = None
    duplicates: int = 0
    note: str = ""
    mode: str = "celery"  # kill, stop or mass for the orchestrator
    runs: int = 1

    def summary(self) -> dict[str, Any]:
        stats = C.summary(self.latencies)
        body: dict[str, Any] = {**self.__dict__, "stats": stats}
        if self.lease_ttl:
            body["p50_over_ttl"] = stats["p50"] / self.lease_ttl
            body["p99_over_ttl"] = stats["p99"] / self.lease_ttl
            body["target"], met = TARGETS[self.mode](self.lease_ttl, stats)
            body["met"] = met and self.not_resumed == 0 and self.duplicates == 0
        return body


TICK = 0.25
TARGETS = {
    # A SIGKILLed node's connection closes at once: resumed well before any lease expires.
    "kill": lambda ttl, s: ("p50 < 1 s, p99 < 2 s", s["p50"] < 1 and s["p99"] < 2),
    # A paused node is only found by its lease: at the TTL plus one tick (plus the claim, 0.5 s).
    "stop": lambda ttl, s: (
        f"{ttl - 1:g} s <= all <= TTL + tick + 0.5 s",
        ttl - 1 <= s["min"] and s["max"] <= ttl + TICK + 0.5,
    ),
    "mass": lambda ttl, s: ("all resumed within 3 s", s["max"] < 3),
}


# -- plain Celery cases --------------------------------------------------------------------------


class CeleryCase:
    """K workers each holding a task are SIGKILLed; when (if ever) does each task run again?"""

    def __init__(
        self,
        env: C.Environment,
        name: str,
        db: int,
        visibility_timeout: float | None,
        victims: int,
        stagger: float,
        cap: float,
    ) -> None:
        self.env, self.name = env, name
        self.url = env.db(db)
        self.visibility_timeout = visibility_timeout
        self.victims, self.stagger, self.cap = victims, stagger, cap
        self.dir = env.tmp / name
        self.dir.mkdir()
        self.log = self.dir / "executions.jsonl"
        self.app = make_app(self.url, visibility_timeout)
        self.result = CaseResult(name, None, victims, cap=cap)
        self.workers: list[str] = []
        self.error: BaseException | None = None

    def _worker(self, name: str, queues: str) -> None:
        worker_env = {**os.environ, BROKER_ENV: self.url, "PYTHONPATH": str(C.ROOT)}
        if self.visibility_timeout is not None:
            worker_env[VISIBILITY_ENV] = str(self.visibility_timeout)
        command = [
            sys.executable, "-m", "celery", "-A", "bench.recovery:baseline", "worker",
            f"--queues={queues}", "--concurrency=1", "--pool=prefork", "--loglevel=WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat", f"--hostname={name}@%h",
        ]  # fmt: skip
        self.env.processes.spawn(name, command, worker_env)
        self.workers.append(name)

    def _send(self, key: str, queue: str) -> None:
        release = str(self.dir / f"release-{key}")
        self.app.send_task(
            "bench.hold", kwargs={"key": key, "log": str(self.log), "release": release}, queue=queue
        )

    def _started(self, key: str) -> dict[str, Any]:
        return C.wait_until(
            lambda: next((e for e in C.read_lines(self.log) if e["key"] == key), None),
            timeout=90,
            what=f"{self.name}: {key} to start",
        )

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
        finally:
            for name in self.workers:
                if name in self.env.processes.running:
                    self.env.processes.kill(name)

    def _run(self) -> None:
        self._worker(f"{self.name}-healthy", PROBE_QUEUE)
        self._send("probe", PROBE_QUEUE)
        self._started("probe")
        killed_pids: set[int] = set()
        kills: dict[str, float] = {}
        for index in range(self.victims):
            if index and self.stagger:
                time.sleep(self.stagger)
            key, worker = f"task-{index}", f"{self.name}-victim-{index}"
            queue = f"{QUEUE}.{index}"  # the victim's own: the task runs there, not on a replacement
            self._worker(worker, queue)
            self._send(key, queue)
            self._started(key)
            killed_pids.update(self.env.processes.pids(worker))
            kills[key] = self.env.processes.kill(worker)
            self.workers.remove(worker)
            (self.dir / f"release-{key}").touch()  # a redelivered copy ends at once
            # The queues of the killed victims only: a later victim's task must reach its victim.
            queues = ",".join([PROBE_QUEUE, *(f"{QUEUE}.{i}" for i in range(index + 1))])
            self._worker(f"{self.name}-replacement-{index}", queues)
        deadline = max(kills.values()) + self.cap

        def settled() -> bool:
            entries = C.read_lines(self.log)
            return all(first_start_after(entries, k, at) for k, at in kills.items())

        while time.time() < deadline and not settled():
            time.sleep(0.1)  # poll; bounded by the cap
        (self.dir / "release-probe").touch()
        entries = C.read_lines(self.log)
        for key, at in kills.items():
            seen = first_start_after(entries, key, at)
            if seen is None or seen - at > self.cap:
                self.result.not_resumed += 1
            else:
                self.result.latencies.append(seen - at)
        self.result.duplicates = duplicates(entries, killed_pids)
        vt = f"{self.visibility_timeout:g} s" if self.visibility_timeout else "default (3600 s)"
        self.result.note = (
            f"visibility timeout {vt}; {self.victims} kill(s), one worker at a time, each killed as soon "
            f"as its task started and replaced at once, {self.stagger:g} s between kills; cap {self.cap:g} s "
            "per kill (fewer kills than the orchestrator's: each may wait the whole cap)"
        )


# -- orchestrator cases ------------------------------------------------------------------------


def victim_package(name: str, log: Path, release: Path) -> Any:
    from orchestrator.packages.validation import parse_package

    return parse_package(
        {
            "name": name,
            "tasks": [
                {"id": "t1", "python": "bench.tasks:step", "params": {"log": str(log)}},
                {
                    "id": "t2",
                    "python": "bench.tasks:hold",
                    "params": {"log": str(log), "release": str(release)},
                    "depends_on": ["t1"],
                },
            ],
        }
    )


def probe_package(log: Path, release: Path) -> Any:
    from orchestrator.packages.validation import parse_package

    params = {"log": str(log), "release": str(release), "limit": HOLD_LIMIT}
    return parse_package(
        {"name": "probe", "tasks": [{"id": "probe", "python": "bench.tasks:hold", "params": params}]}
    )


def orchestrator_entries(log: Path) -> list[dict[str, Any]]:
    """The side-effect records keyed as ``run/task`` for :func:`duplicates`."""
    return [{**e, "key": f"{e['run']}/{e['task']}"} for e in C.read_lines(log)]


@dataclass
class Orchestrator:
    """One orchestrator cluster of the bench: a scheduler and worker nodes on their own Redis db."""

    env: C.Environment
    name: str
    root: Path
    node_env: dict[str, str]
    services: Any
    client: Any
    log: Path
    nodes: list[str] = field(default_factory=list)

    def start_node(self, node: str, concurrency: int = 2) -> None:
        command = C.orchestrator_command("worker", "--node", node, "--concurrency", str(concurrency))
        self.env.processes.spawn(node, command, self.node_env)
        if node not in self.nodes:
            self.nodes.append(node)

    def wait_alive(self, *nodes: str) -> None:
        """Until the nodes read the queues (alive comes first, while Celery forks the pool)."""
        C.wait_until(
            lambda: set(nodes) <= self.services.liveness.ready_nodes(),
            timeout=120,
            what=f"{nodes} ready",
        )

    def hold(self, index: int) -> tuple[str, Path]:
        """Submit a ``t1 -> t2`` package whose ``t2`` holds until its release file exists."""
        release = self.root / f"release-{index}"
        return self.client.submit(victim_package(f"victim-{index}", self.log, release)), release

    def holding(self, run_id: str) -> bool:
        return any(e["run"] == run_id and e["task"] == "t2" for e in C.read_lines(self.log))

    def resumed_at(self, run_id: str) -> float | None:
        entries = [e for e in C.read_lines(self.log) if e["run"] == run_id and e["task"] == "t2"]
        return next((e["t"] for e in entries if e["epoch"] > 1 and e["event"] == "start"), None)

    def close(self) -> None:
        for node in [*self.nodes, f"{self.name}-scheduler"]:
            if node in self.env.processes.running:
                self.env.processes.kill(node)
        self.services.close()


def orchestrator(env: C.Environment, db: int, name: str, lease_ttl: float | None) -> Orchestrator:
    """A scheduler (its tick at the default 0.25 s) on the environment's Redis database ``db``."""
    from orchestrator.control.client import Client

    url = env.db(db)
    settings = {"lease_ttl": str(lease_ttl)} if lease_ttl else {}
    root = env.tmp / name
    root.mkdir()
    node_env = env.orchestrator_env(url, checkpoint_root=str(root / "checkpoints"), **settings)
    node_env["ORCHESTRATOR_DATABASE_URL"] = env.database_url.replace("state.db", f"{name}.db")
    services = C.services(
        env,
        url,
        database_url=node_env["ORCHESTRATOR_DATABASE_URL"],
        checkpoint_root=root / "checkpoints",
        **({"lease_ttl": lease_ttl} if lease_ttl else {}),
    )
    env.processes.spawn(f"{name}-scheduler", C.orchestrator_command("scheduler"), node_env)
    return Orchestrator(env, name, root, node_env, services, Client(services), root / "executions.jsonl")


def orchestrator_case(env: C.Environment, db: int, lease_ttl: float | None, kills: int) -> CaseResult:
    """SIGKILL of the node running a package, ``kills`` times (the node restarted in between)."""
    ttl = lease_ttl or 5.0
    cluster = orchestrator(env, db, f"orchestrator-ttl{ttl:g}", lease_ttl)
    for n in range(1, NODES + 1):
        cluster.start_node(f"{cluster.name}-node-{n}")
    cluster.wait_alive(*cluster.nodes)
    probe = cluster.client.submit(probe_package(cluster.log, cluster.root / "release-probe"))
    C.wait_until(lambda: any(e["run"] == probe for e in C.read_lines(cluster.log)), timeout=60, what="probe")
    result = CaseResult(cluster.name, ttl, kills, mode="kill")
    killed_pids: set[int] = set()
    try:
        for index in range(kills):
            run_id, release = cluster.hold(index)
            C.wait_until(lambda r=run_id: cluster.holding(r), timeout=60, what=f"{run_id} t2 to start")
            victim = cluster.client.status(run_id)["node"]
            killed_pids.update(env.processes.pids(victim))
            killed_at = env.processes.kill(victim)
            release.touch()  # the resumed t2 ends at once
            started = C.wait_until(
                lambda r=run_id: cluster.resumed_at(r), timeout=60 + 4 * ttl, what="resume"
            )
            result.latencies.append(started - killed_at)
            _succeeded(cluster, run_id)
            cluster.start_node(victim)
            cluster.wait_alive(victim)
            print(
                f"  {cluster.name}: kill {index + 1}/{kills}: resumed after {started - killed_at:.2f} s",
                flush=True,
            )
    finally:
        (cluster.root / "release-probe").touch()
        result.duplicates = duplicates(orchestrator_entries(cluster.log), killed_pids)
        cluster.close()
    result.note = (
        f"LEASE_TTL {ttl:g} s{'' if lease_ttl else ' (default)'}, heartbeat 1 s; {NODES} nodes; "
        "the killed node is restarted after each recovery"
    )
    return result


def stop_case(env: C.Environment, db: int, stops: int) -> CaseResult:
    """SIGSTOP of the node running a package: its connection stays open, the lease decides."""
    cluster = orchestrator(env, db, "orchestrator-stop", None)
    for n in range(1, NODES + 1):
        cluster.start_node(f"{cluster.name}-node-{n}")
    cluster.wait_alive(*cluster.nodes)
    result = CaseResult(cluster.name, 5.0, stops, mode="stop")
    try:
        for index in range(stops):
            run_id, release = cluster.hold(index)
            C.wait_until(lambda r=run_id: cluster.holding(r), timeout=60, what=f"{run_id} t2 to start")
            victim = cluster.client.status(run_id)["node"]
            group = env.processes.running[victim].pid
            stopped_at = time.time()
            os.killpg(group, signal.SIGSTOP)
            release.touch()
            started = C.wait_until(
                lambda r=run_id: cluster.resumed_at(r), timeout=90, what=f"{run_id} to resume"
            )
            os.killpg(group, signal.SIGCONT)
            result.latencies.append(started - stopped_at)
            _succeeded(cluster, run_id)
            cluster.wait_alive(victim)
            print(
                f"  {cluster.name}: stop {index + 1}/{stops}: resumed after {started - stopped_at:.2f} s",
                flush=True,
            )
    finally:
        cluster.close()
    result.note = (
        "LEASE_TTL 5 s (default), heartbeat 1 s, tick 0.25 s; the node is SIGCONTed once the run resumed"
    )
    return result


def mass_case(env: C.Environment, db: int, runs: int) -> CaseResult:
    """One node runs ``runs`` packages at once and is SIGKILLed: when has the last one resumed?"""
    cluster = orchestrator(env, db, "orchestrator-mass", None)
    victim = f"{cluster.name}-victim"
    cluster.start_node(victim, concurrency=runs)
    cluster.wait_alive(victim)
    result = CaseResult(cluster.name, 5.0, runs, mode="mass", runs=runs)
    try:
        held = [cluster.hold(index) for index in range(runs)]
        for run_id, _ in held:
            C.wait_until(lambda r=run_id: cluster.holding(r), timeout=180, what=f"{run_id} t2 to start")
        survivors = [f"{cluster.name}-node-{n}" for n in (1, 2)]
        for node in survivors:
            cluster.start_node(node, concurrency=(runs + 1) // 2)
        cluster.wait_alive(*survivors)
        killed_at = env.processes.kill(victim)
        for _, release in held:
            release.touch()
        for run_id, _ in held:
            started = C.wait_until(
                lambda r=run_id: cluster.resumed_at(r), timeout=120, what=f"{run_id} to resume"
            )
            result.latencies.append(started - killed_at)
        for run_id, _ in held:
            _succeeded(cluster, run_id)
        print(f"  {cluster.name}: {runs} runs resumed, the last {max(result.latencies):.2f} s after the kill")
    finally:
        cluster.close()
    result.note = (
        f"{runs} runs on one node (concurrency {runs}) SIGKILLed at once; two idle nodes of concurrency "
        f"{(runs + 1) // 2}; default LEASE_TTL"
    )
    return result


def _succeeded(cluster: Orchestrator, run_id: str) -> None:
    status = cluster.client.wait(run_id, timeout=120)
    if status["state"] != "succeeded":
        raise RuntimeError(f"run {run_id} ended {status['state']}: {status['error']}")


# -- the report ------------------------------------------------------------------------------------


def report(results: list[CaseResult]) -> list[list[Any]]:
    rows = []
    for r in results:
        s = r.summary()
        stats = s["stats"]
        redelivered = f"{len(r.latencies)} of {r.kills}"
        if r.not_resumed:
            redelivered += f" ({r.not_resumed} not within {r.cap:g} s)"
        target = "-"
        if r.lease_ttl:
            target = f"{'met' if s['met'] else 'NOT met'} ({s['target']}, 0 dup)"
        rows.append(
            [
                r.name,
                redelivered,
                stats["p50"],
                stats["p99"],
                stats["max"],
                s.get("p50_over_ttl", float("nan")),
                s.get("p99_over_ttl", float("nan")),
                r.duplicates,
                target,
            ]
        )
    return rows


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    kills = 1 if args.quick else 10
    cap = 5.0 if args.quick else 120.0
    with C.environment(args) as env:
        celery_cases = [
            CeleryCase(env, "celery-default", 5, None, 1 if args.quick else 3, 0.0, cap),
            CeleryCase(env, "celery-vt10", 6, 10.0, 1 if args.quick else 4, 0.0 if args.quick else 8.0, cap),
        ]
        threads = [threading.Thread(target=case.run, name=case.name) for case in celery_cases]
        for thread in threads:
            thread.start()
        results = [orchestrator_case(env, 0, None, kills)]
        if not args.quick:
            results.append(orchestrator_case(env, 1, 2.0, kills))
        results.append(stop_case(env, 2, 1 if args.quick else 5))
        results.append(mass_case(env, 3, 4 if args.quick else 50))
        for thread in threads:
            thread.join()
        for case in celery_cases:
            if case.error is not None:
                raise case.error
            results.append(case.result)
    print(
        C.table(
            "kill-to-resumed (stop-to-resumed) seconds after SIGKILL (SIGSTOP) of the node running the task",
            [
                "case",
                "resumed",
                "p50 s",
                "p99 s",
                "max s",
                "ratio p50/TTL",
                "ratio p99/TTL",
                "duplicates",
                "target",
            ],
            report(results),
        )
    )
    for r in results:
        print(f"  {r.name}: {r.note}")
    C.write_result(args, "recovery", {"cases": [r.summary() for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
