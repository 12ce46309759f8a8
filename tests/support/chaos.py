"""The chaos harness: many packages on a cluster whose worker nodes keep dying.

:func:`run_chaos` starts schedulers and worker nodes as real processes (each
the leader of its own process group) on a real Redis and a SQL database,
submits N packages of several tasks, and lets a :class:`Killer` SIGKILL (then
restart) or SIGSTOP (past the lease TTL, then SIGCONT) a random worker node
every few seconds, always leaving one node up. Every task body (:func:`work`,
imported by the worker nodes as ``tests.support.chaos:work``) appends what it
does to a JSON-lines sink keyed by idempotency key and epoch. When every run
has ended, or the deadline passed, it stops the cluster and returns what it
observed (:class:`ChaosRun`): the runs' SQL history, the sink and the blows.

``bench/chaos.py`` judges a :class:`ChaosRun` into figures and is the
command; ``tests/integration/test_chaos.py`` runs both with 20 packages.
Nothing here imports pytest, so the bench runs without the test extras.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import ProcessCluster
from workers.context import TaskContext

TASK = "tests.support.chaos:work"
ITEMS = ("a", "b", "c")
LOAD_UNITS = 4
POLL = 0.25
ENDED = ("succeeded", "failed", "cancelled")


# -- the work: a task that records every execution in an idempotent sink ------------------------


def record(sink: Path, ctx: TaskContext, event: str, **extra: Any) -> None:
    """Append one record; a single O_APPEND write, so concurrent writers never interleave."""
    line = {
        "key": ctx.idempotency_key,
        "run": ctx.run_id,
        "task": ctx.task_id,
        "epoch": ctx.epoch,
        "attempt": ctx.attempt,
        "event": event,
        "t": time.time(),
        "pid": os.getpid(),
        **extra,
    }
    fd = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _busy(ctx: TaskContext, seconds: float) -> bool:
    """Simulated work for ``seconds``; ``False`` if the attempt was stopped meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if ctx.cancelled:
            return False
        time.sleep(min(left, 0.02))  # the work itself, polled for cancellation
    return True


def work(ctx: TaskContext) -> dict[str, Any] | None:
    """``units`` steps of ``step`` seconds; with ``save``, progress is saved after each step.

    Records ``start``, ``unit`` (a step begins), ``saved`` (its progress save
    returned) and ``end``; an attempt stopped mid-task records ``abandoned``.
    """
    sink = Path(ctx.params["sink"])
    record(sink, ctx, "start")
    saving = bool(ctx.params.get("save"))
    first = int((ctx.progress.get() or {"done": 0})["done"]) if saving else 0
    for unit in range(first, int(ctx.params.get("units", 1))):
        record(sink, ctx, "unit", unit=unit)
        if not _busy(ctx, float(ctx.params["step"])):
            record(sink, ctx, "abandoned", unit=unit)
            return None  # not recorded as done: the executor sees the stop
        if saving:
            ctx.progress.save({"done": unit + 1})
            record(sink, ctx, "saved", unit=unit)
    record(sink, ctx, "end")
    return {"epoch": ctx.epoch}


# -- configuration and the packages ----------------------------------------------------------------


@dataclass
class ChaosConfig:
    """One chaos run. Times in seconds; ``kill_every`` is the range of the killer's pause."""

    packages: int = 100
    nodes: int = 3
    schedulers: int = 2
    concurrency: int = 2
    task_seconds: float = 0.4
    kill_every: tuple[float, float] = (3.0, 6.0)
    stop_share: float = 0.4
    lease_ttl: float = 2.0
    heartbeat_interval: float = 0.5
    claim_timeout: float = 4.0
    max_restarts: int = 100
    deadline: float = 600.0
    seed: int = 1
    parallel_every: int = 3  # every third package runs units in parallel (0: none)

    def overrides(self) -> dict[str, str]:
        return {
            "ORCHESTRATOR_LEASE_TTL": str(self.lease_ttl),
            "ORCHESTRATOR_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
            "ORCHESTRATOR_CLAIM_TIMEOUT": str(self.claim_timeout),
            "ORCHESTRATOR_MAX_RESTARTS": str(self.max_restarts),
        }


def is_parallel(index: int, config: ChaosConfig) -> bool:
    return config.parallel_every > 0 and index % config.parallel_every == config.parallel_every - 1


def width(index: int, config: ChaosConfig) -> int:
    """How many units of package ``index`` may be in flight at once (what a lost attempt may cost)."""
    return 1 + len(ITEMS) if is_parallel(index, config) else 1


def chaos_definition(index: int, config: ChaosConfig, sink: Path) -> dict[str, Any]:
    """extract -> clean -> transform (foreach a, b, c) -> load (saves progress) -> publish.

    A parallel package (every ``parallel_every``-th) runs clean beside transform, whose
    three items run at once: extract -> (clean | transform[a, b, c]) -> load -> publish.
    """
    step = config.task_seconds

    def task(task_id: str, after: str | None, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"id": task_id, "python": TASK, "params": {"sink": str(sink), **params}}
        if after is not None:
            body["depends_on"] = [after]
        return body

    parallel = is_parallel(index, config)
    transform = task("transform", "extract" if parallel else "clean", step=step / 2)
    transform["foreach"] = list(ITEMS)
    load = task("load", "transform", step=step / 2, units=LOAD_UNITS, save=True)
    if parallel:
        transform["concurrency"] = len(ITEMS)
        load["depends_on"] = ["clean", "transform"]
    return {
        "name": f"chaos_{index:03d}",
        "max_restarts": config.max_restarts,
        "max_concurrency": width(index, config),
        "tasks": [
            task("extract", None, step=step),
            task("clean", "extract", step=step),
            transform,
            load,
            task("publish", "load", step=step / 2),
        ],
    }


def expected_keys(run_id: str) -> list[str]:
    """The idempotency keys of one run of :func:`chaos_definition`."""
    keys = [f"{run_id}:{task}" for task in ("extract", "clean", "load", "publish")]
    return keys + [f"{run_id}:transform:{item}" for item in ITEMS]


# -- the cluster ------------------------------------------------------------------------------------


ChaosCluster = ProcessCluster  # logs in <workdir>/logs, one process group per node


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = POLL) -> Any:
    """Poll ``condition`` until it returns something truthy; raise ``TimeoutError`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # poll interval; the deadline bounds the wait
    return value


# -- the killer --------------------------------------------------------------------------------------


@dataclass
class Disruption:
    """One blow: ``kill`` (SIGKILL of the node's group, then a restart) or ``stop`` (SIGSTOP..SIGCONT)."""

    kind: str
    node: str
    at: float
    until: float | None = None


class Killer(threading.Thread):
    """Every ``kill_every`` seconds, disrupts a random worker node that is up, if another stays up.

    The first blow is a kill and the second a stop, so a short run sees both;
    later ones are stops with probability ``stop_share``. A node is up unless
    it is stopped, or was restarted and its new process has not yet sent a
    heartbeat.
    """

    def __init__(
        self, cluster: ChaosCluster, alive: Callable[[], dict[str, Any]], config: ChaosConfig
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.cluster, self.alive, self.config = cluster, alive, config
        self.nodes = [f"node-{n}" for n in range(1, config.nodes + 1)]
        self.rng = random.Random(config.seed)
        self.disruptions: list[Disruption] = []
        self.error: BaseException | None = None
        self._stopped: dict[str, tuple[float, Disruption]] = {}  # node -> (SIGCONT due, blow)
        self._restarted: dict[str, int] = {}  # node -> pid of the process restarted after a kill
        self._done = threading.Event()

    def finish(self) -> None:
        self._done.set()
        self.join(60)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by run_chaos
            self.error = exc
        finally:
            self._wake(all_nodes=True)

    def _loop(self) -> None:
        next_blow = time.monotonic() + self.rng.uniform(*self.config.kill_every)
        while not self._done.is_set():
            self._wake()
            if time.monotonic() >= next_blow:
                self._blow()
                next_blow = time.monotonic() + self.rng.uniform(*self.config.kill_every)
            wake_at = min([next_blow, *(due for due, _ in self._stopped.values())])
            self._done.wait(max(0.0, wake_at - time.monotonic()))  # pacing, bounded by wake_at

    def _up(self) -> list[str]:
        alive = self.alive()
        up = []
        for node in self.nodes:
            pid = self._restarted.get(node)
            if node not in self._stopped and (pid is None or alive.get(node, {}).get("pid") == pid):
                up.append(node)
        return up

    def _blow(self) -> None:
        up = self._up()
        if len(up) < 2:
            return  # one node always stays up
        node = self.rng.choice(up)
        number = len(self.disruptions)
        stop = number == 1 or (number > 1 and self.rng.random() < self.config.stop_share)
        if stop:
            blow = Disruption("stop", node, time.time())
            self.cluster.signal(node, signal.SIGSTOP)
            pause = self.config.lease_ttl + self.rng.uniform(1.0, 2.0)
            self._stopped[node] = (time.monotonic() + pause, blow)
        else:
            blow = Disruption("kill", node, time.time())
            self.cluster.kill(node)
            self._restarted[node] = self.cluster.start_node(node).pid
            blow.until = time.time()
        self.disruptions.append(blow)

    def _wake(self, *, all_nodes: bool = False) -> None:
        now = time.monotonic()
        for node, (due, blow) in list(self._stopped.items()):
            if all_nodes or due <= now:
                with contextlib.suppress(ProcessLookupError):
                    self.cluster.signal(node, signal.SIGCONT)
                blow.until = time.time()
                del self._stopped[node]


# -- what a run observed --------------------------------------------------------------------------


def read_sink(path: Path) -> list[dict[str, Any]]:
    """The sink's records; a line cut short by a SIGKILL is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


@dataclass
class RunHistory:
    """What SQL says about one run: its state and error, attempts and events (ORM rows)."""

    run_id: str
    state: str
    error: str | None
    attempts: list[Any]
    events: list[Any]

    def epoch_of(self, attempt: int | None) -> int | None:
        return next((a.epoch for a in self.attempts if a.number == attempt), None)


@dataclass
class ChaosRun:
    """Everything one chaos run observed, for :mod:`bench.chaos` to judge."""

    config: ChaosConfig
    run_ids: list[str]
    histories: list[RunHistory]
    records: list[dict[str, Any]]
    blows: list[Disruption]
    seconds: float
    errors: list[str] = field(default_factory=list)
    widths: dict[str, int] = field(default_factory=dict)  # run id -> units it may have in flight


# -- the run ----------------------------------------------------------------------------------------


def run_chaos(
    config: ChaosConfig,
    *,
    broker_url: str,
    database_url: str,
    workdir: Path,
    say: Callable[[str], None] = print,
) -> ChaosRun:
    """Start the cluster, submit the packages, unleash the killer until every run ended."""
    from orchestrator.runtime.services import Services
    from orchestrator.runtime.settings import Settings

    workdir.mkdir(parents=True, exist_ok=True)
    cluster = ChaosCluster(
        workdir, broker_url, database_url, config.overrides(), concurrency=config.concurrency
    )
    settings = Settings(
        broker_url=broker_url,
        database_url=database_url,
        checkpoint_root=workdir / "checkpoints",
        state_dir=workdir / "state",
        lease_ttl=config.lease_ttl,
        claim_timeout=config.claim_timeout,
    )
    services = Services(settings, broker_url=broker_url)
    killer = Killer(cluster, services.liveness.alive_nodes, config)
    sink = workdir / "sink.jsonl"
    try:
        _start(cluster, services, config)
        run_ids = _submit(services, config, sink)
        say(f"submitted {len(run_ids)} packages; the killer starts")
        started = time.monotonic()
        killer.start()
        _wait_ended(services, run_ids, config.deadline, killer, say)
        seconds = time.monotonic() - started
    finally:
        if killer.is_alive():
            killer.finish()
        cluster.stop()
    try:
        histories = _histories(services, run_ids)
    finally:
        services.close()
    (workdir / "blows.json").write_text(json.dumps([asdict(b) for b in killer.disruptions], indent=1))
    errors = [f"the killer failed: {killer.error!r}"] if killer.error is not None else []
    widths = {run_id: width(index, config) for index, run_id in enumerate(run_ids)}
    return ChaosRun(config, run_ids, histories, read_sink(sink), killer.disruptions, seconds, errors, widths)


def _start(cluster: ChaosCluster, services: Any, config: ChaosConfig) -> None:
    services.repository  # migrate the database before the processes race to do it
    for index in range(1, config.schedulers + 1):
        cluster.start_scheduler(f"scheduler-{index}")
    nodes = [f"node-{n}" for n in range(1, config.nodes + 1)]
    for node in nodes:
        cluster.start_node(node)
    try:
        wait_for(lambda: set(nodes) <= set(services.liveness.alive_nodes()), 120, "the worker nodes")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{cluster.tail()}") from exc


def _submit(services: Any, config: ChaosConfig, sink: Path) -> list[str]:
    from orchestrator.control.client import Client
    from orchestrator.packages.validation import parse_package

    client = Client(services)
    return [client.submit(parse_package(chaos_definition(i, config, sink))) for i in range(config.packages)]


def run_states(services: Any, run_ids: list[str]) -> dict[str, str]:
    """State of each run SQL has recorded (a submission not yet handled is absent)."""
    from sqlalchemy import select

    from orchestrator.state import Run

    with services.repository.sessions() as session:
        rows = session.execute(select(Run.id, Run.state).where(Run.id.in_(run_ids))).all()
    return {run_id: state.value for run_id, state in rows}


def _wait_ended(
    services: Any, run_ids: list[str], timeout: float, killer: Killer, say: Callable[[str], None]
) -> None:
    """Poll until every run ended, the deadline passed or the killer failed; a note every 10 s."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 10
    while time.monotonic() < deadline and killer.error is None:
        ended = sum(1 for s in run_states(services, run_ids).values() if s in ENDED)
        if ended == len(run_ids):
            return
        if time.monotonic() >= next_note:
            kills = sum(1 for b in killer.disruptions if b.kind == "kill")
            stops = len(killer.disruptions) - kills
            say(f"  {ended}/{len(run_ids)} runs ended; {kills} kills, {stops} stops so far")
            next_note += 10
        time.sleep(0.5)  # poll interval; the deadline bounds the wait


def _histories(services: Any, run_ids: list[str]) -> list[RunHistory]:
    repo = services.repository
    return [
        RunHistory(run_id, state, repo.run_row(run_id).error, repo.attempts(run_id), repo.events(run_id))
        for run_id, state in run_states(services, run_ids).items()
    ]
