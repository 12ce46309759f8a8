"""Chaos bench: ``python bench/chaos.py --packages 100``.

Runs the chaos harness (:mod:`tests.support.chaos`: two schedulers and three
worker nodes as real processes on a real Redis and SQLite, a killer that
SIGKILLs or SIGSTOPs a random node every few seconds), then judges what it
observed: runs submitted, succeeded, failed and lost; task executions beyond
one per finished task, which must all be units interrupted in flight (one per
lost attempt of a sequential package, up to four of a parallel one);
re-executions of tasks whose completion had been recorded (must be 0); saved
progress redone (must be 0); blows survived; p50/p95 recovery time. It prints
a table, writes ``bench/results/chaos.json`` and exits 1 if a run was lost or
failed or finished work ran again.

:func:`judge` is also what ``tests/integration/test_chaos.py`` asserts on.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (from anywhere): the harness lives in tests/support, and bench/, first on
    # sys.path, has a copy.py that would shadow the standard library's copy module.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import json
import math
import os
import platform
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from tests.support.chaos import (  # noqa: E402
    ChaosConfig,
    ChaosRun,
    Disruption,
    RunHistory,
    expected_keys,
    run_chaos,
)

REDIS_URL_VARIABLE = "ORCHESTRATOR_TEST_REDIS_URL"
RESULTS = ROOT / "bench" / "results" / "chaos.json"


# -- the judgement ------------------------------------------------------------------------------------


def completions(history: RunHistory) -> dict[str, int]:
    """Idempotency key -> lowest epoch that recorded the task (or foreach item) done."""
    from orchestrator.packages.model import item_key

    done: dict[str, int] = {}
    for event in history.events:
        if event.kind not in ("task_done", "item_done"):
            continue
        key = f"{history.run_id}:{event.detail['task']}"
        if event.kind == "item_done":
            key += f":{item_key(event.detail['item'])}"
        epoch = history.epoch_of(event.attempt)
        if epoch is not None:
            done[key] = min(epoch, done.get(key, epoch))
    return done


@dataclass
class Executions:
    """The sink's records, deduplicated by (idempotency key, epoch): the sink is idempotent."""

    starts: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    ends: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    units: dict[tuple[str, int], set[int]] = field(default_factory=lambda: defaultdict(set))
    saved: dict[tuple[str, int], set[int]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]]) -> Executions:
        found = cls()
        for r in records:
            if r["event"] == "start":
                found.starts[r["key"]].add(r["epoch"])
            elif r["event"] == "end":
                found.ends[r["key"]].add(r["epoch"])
            elif r["event"] == "unit":
                found.units[(r["key"], r["unit"])].add(r["epoch"])
            elif r["event"] == "saved":
                found.saved[(r["key"], r["unit"])].add(r["epoch"])
        return found


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile, ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


RECOVERY_MARGIN = 2.0


@dataclass
class ChaosReport:
    """The figures of one chaos run; :attr:`ok` is the verdict."""

    packages: int = 0
    parallel_packages: int = 0
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    task_executions: int = 0
    finished_tasks: int = 0
    extra_executions: int = 0
    ended_unrecorded: int = 0
    finished_reexecuted: int = 0
    unexplained_reexecutions: int = 0
    units_redone: int = 0
    never_completed: int = 0
    kills: int = 0
    stops: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    lost_attempts: int = 0
    unattributed_losses: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    detection_seconds: list[float] = field(default_factory=list)
    queued_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.failed
            or self.cancelled
            or self.finished_reexecuted
            or self.unexplained_reexecutions
            or self.units_redone
            or self.never_completed
            or self.submitted != self.packages
        )

    @property
    def recovery_target_met(self) -> bool | None:
        """Blow to resumed p95 at most the detection p95 plus 2 s (issue 11); None without samples."""
        recovery, detection = (
            percentile(self.recovery_seconds, 0.95),
            percentile(self.detection_seconds, 0.95),
        )
        if recovery is None or detection is None:
            return None
        return recovery <= detection + RECOVERY_MARGIN

    def summary(self) -> dict[str, Any]:
        figures = asdict(self)
        del figures["recovery_seconds"], figures["detection_seconds"], figures["queued_seconds"]
        for name, values in (
            ("recovery", self.recovery_seconds),
            ("detection", self.detection_seconds),
            ("queued", self.queued_seconds),
        ):
            for label, share in (("p50", 0.5), ("p95", 0.95), ("max", 1.0)):
                value = percentile(values, share)
                figures[f"{name}_{label}_seconds"] = None if value is None else round(value, 2)
        figures["recovery_samples"] = len(self.recovery_seconds)
        figures["recovery_target_met"] = self.recovery_target_met
        figures["ok"] = self.ok
        return figures

    def table(self) -> str:
        s = self.summary()

        def secs(name: str) -> str:
            value = s[f"{name}_seconds"]
            return "-" if value is None else f"{value:.2f} s"

        restarts = ", ".join(f"{k} {v}" for k, v in sorted(self.restarts.items())) or "none"
        rows = [
            ("runs submitted", f"{self.submitted} of {self.packages}"),
            ("  of which parallel (4 units at once)", str(self.parallel_packages)),
            ("runs succeeded", str(self.succeeded)),
            ("runs failed / cancelled", f"{self.failed} / {self.cancelled}"),
            ("runs lost (unfinished at deadline)", str(self.lost)),
            ("task executions", f"{self.task_executions} for {self.finished_tasks} finished tasks"),
            (
                "executions beyond one per task",
                f"{self.extra_executions} (all interrupted in flight: "
                f"{'NO' if self.finished_reexecuted or self.unexplained_reexecutions else 'yes'})",
            ),
            ("  of which body ended, completion unrecorded", str(self.ended_unrecorded)),
            ("re-executions of finished tasks", str(self.finished_reexecuted)),
            ("re-executions not in flight in a lost attempt", str(self.unexplained_reexecutions)),
            ("saved progress units redone", str(self.units_redone)),
            ("tasks of succeeded runs never completed", str(self.never_completed)),
            ("node kills survived (SIGKILL + restart)", str(self.kills)),
            ("node stops survived (SIGSTOP > lease TTL)", str(self.stops)),
            ("attempts lost / not caused by a blow", f"{self.lost_attempts} / {self.unattributed_losses}"),
            ("resubmissions by reason", restarts),
            (
                "recovery, blow to resumed: p50 / p95 / max",
                f"{secs('recovery_p50')} / {secs('recovery_p95')} / {secs('recovery_max')} "
                f"({s['recovery_samples']} runs)",
            ),
            (
                "  loss detected (blow to fenced): p50 / p95",
                f"{secs('detection_p50')} / {secs('detection_p95')}",
            ),
            ("  resubmitted, queued: p50 / p95", f"{secs('queued_p50')} / {secs('queued_p95')}"),
            (
                f"recovery p95 <= detection p95 + {RECOVERY_MARGIN:g} s",
                {None: "-", True: "met", False: "NOT met"}[self.recovery_target_met],
            ),
            ("chaos duration", f"{self.seconds:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)} | {value}" for name, value in rows]
        lines.append("verdict".ljust(width) + " | " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines + [f"problem: {p}" for p in self.problems[:20]])


def check_executions(
    report: ChaosReport,
    histories: list[RunHistory],
    executions: Executions,
    widths: dict[str, int] | None = None,
) -> None:
    """Extra executions, re-executions of recorded completions, redone progress, missing work.

    ``widths``: how many units each run may have in flight at once (1 when not given).
    """
    done: dict[str, int] = {}
    for history in histories:
        done.update(completions(history))
    report.task_executions = sum(len(epochs) for epochs in executions.starts.values())
    report.extra_executions = sum(len(epochs) - 1 for epochs in executions.starts.values() if epochs)
    for key, epochs in executions.ends.items():
        # The body returned but no completion was recorded at that epoch: the attempt was
        # killed or fenced between the return and its record, so the task was still in flight.
        report.ended_unrecorded += sum(1 for epoch in epochs if done.get(key) != epoch)
    _check_reexecutions(report, executions, done, _lost_epochs(histories), widths or {})
    _check_progress(report, executions)
    _check_completed(report, histories, executions)


def _lost_epochs(histories: list[RunHistory]) -> dict[str, set[int]]:
    return {h.run_id: {a.epoch for a in h.attempts if a.state.value == "lost"} for h in histories}


def _check_reexecutions(
    report: ChaosReport,
    executions: Executions,
    done: dict[str, int],
    lost: dict[str, set[int]],
    widths: dict[str, int],
) -> None:
    """A unit may run again only if it had not been recorded done, and the execution before was
    in flight in an attempt that was lost: at most as many units per lost attempt as the run
    may have in flight at once (one for a sequential package)."""
    in_flight: dict[tuple[str, int], list[str]] = defaultdict(list)
    for key, epochs in executions.starts.items():
        ordered = sorted(epochs)
        for epoch in ordered:
            if key in done and epoch > done[key]:
                report.finished_reexecuted += 1
                report.problems.append(f"{key} recorded done at epoch {done[key]} ran again at epoch {epoch}")
        for epoch in ordered[:-1]:  # an execution another one followed
            in_flight[(key.partition(":")[0], epoch)].append(key)
    for (run_id, epoch), keys in in_flight.items():
        if epoch not in lost.get(run_id, set()) or len(keys) > widths.get(run_id, 1):
            report.unexplained_reexecutions += len(keys)
            report.problems.append(f"{run_id} epoch {epoch} was followed by re-executions of {keys}")


def _check_progress(report: ChaosReport, executions: Executions) -> None:
    """A progress unit whose save returned is never worked on by a later attempt."""
    for (key, unit), epochs in executions.units.items():
        saved = executions.saved.get((key, unit))
        if saved and max(epochs) > min(saved):
            report.units_redone += 1
            report.problems.append(f"{key} unit {unit} saved at epoch {min(saved)} redone at {max(epochs)}")


def _check_completed(report: ChaosReport, histories: list[RunHistory], executions: Executions) -> None:
    """Every task (and foreach item) of a succeeded run ran to its end at least once."""
    for history in histories:
        if history.state != "succeeded":
            continue
        report.finished_tasks += len(expected_keys(history.run_id))
        for key in expected_keys(history.run_id):
            if not executions.ends.get(key):
                report.never_completed += 1
                report.problems.append(f"{key}: run succeeded but the task never completed")


def check_recovery(report: ChaosReport, histories: list[RunHistory], blows: list[Disruption]) -> None:
    """Attribute every lost attempt to the first blow its node took after the attempt began.

    Recovery is the time from that blow to the run's next ``resumed`` event (or,
    failing that, the next attempt's ``claimed``); detection, to its ``fenced``.
    """
    by_node: dict[str, list[Disruption]] = defaultdict(list)
    for each in sorted(blows, key=lambda b: b.at):
        by_node[each.node].append(each)
    for history in histories:
        for event in history.events:
            if event.kind == "resubmitted":
                reason = str(event.detail.get("reason"))
                report.restarts[reason] = report.restarts.get(reason, 0) + 1
        for attempt in history.attempts:
            node = attempt.node or _fenced_node(history, attempt.number)
            if attempt.state.value != "lost" or not node:
                continue  # not lost, or a dispatch no node ever claimed (counted by reason)
            report.lost_attempts += 1
            fenced = _first(history, ("fenced",), attempt.number, same=True)
            blow = _blow(attempt, by_node[node], fenced)
            if blow is None:
                report.unattributed_losses += 1
                report.problems.append(
                    f"{history.run_id} attempt {attempt.number} on {node} lost with no blow"
                )
                continue
            if fenced is not None:
                report.detection_seconds.append(fenced.at.timestamp() - blow.at)
            back = _first(history, ("resumed",), attempt.number) or _first(
                history, ("claimed",), attempt.number
            )
            if back is not None:
                report.recovery_seconds.append(back.at.timestamp() - blow.at)
            if back is not None and fenced is not None:
                report.queued_seconds.append(back.at.timestamp() - fenced.at.timestamp())


def _blow(attempt: Any, blows: list[Disruption], fenced: Any) -> Disruption | None:
    """The blow that lost ``attempt`` (its node's blows in time order), ``None`` if none did.

    A claimed attempt: its node's first blow after the claim. An attempt its node claimed in
    Redis but not yet in SQL (a blow fell between the two) has no claim time, and may have
    waited in the queue through earlier blows to its node: its node's last blow before the
    attempt was fenced (or ended).
    """
    ended = attempt.ended_at.timestamp() if attempt.ended_at else math.inf
    if attempt.claimed_at is not None:
        blow = next((b for b in blows if b.at >= attempt.claimed_at.timestamp()), None)
        return blow if blow is not None and blow.at <= ended else None
    until = min(ended, fenced.at.timestamp() if fenced is not None else math.inf)
    began = attempt.dispatched_at.timestamp()
    return next((b for b in reversed(blows) if began <= b.at <= until), None)


def _fenced_node(history: RunHistory, number: int) -> str | None:
    event = _first(history, ("fenced",), number, same=True)
    return event.node if event is not None else None


def _first(history: RunHistory, kinds: tuple[str, ...], number: int, *, same: bool = False) -> Any:
    """The first event of ``kinds`` of attempt ``number`` (``same``) or of a later attempt."""
    for event in history.events:
        if event.kind not in kinds or event.attempt is None:
            continue
        if (event.attempt == number) if same else (event.attempt > number):
            return event
    return None


def judge(run: ChaosRun) -> ChaosReport:
    """The figures and the verdict of one chaos run."""
    states = {h.run_id: h.state for h in run.histories}
    report = ChaosReport(packages=run.config.packages, seconds=run.seconds, problems=list(run.errors))
    report.submitted = len(states)
    report.parallel_packages = sum(1 for width in run.widths.values() if width > 1)
    report.succeeded = sum(1 for s in states.values() if s == "succeeded")
    report.failed = sum(1 for s in states.values() if s == "failed")
    report.cancelled = sum(1 for s in states.values() if s == "cancelled")
    report.lost = len(run.run_ids) - report.succeeded - report.failed - report.cancelled
    report.kills = sum(1 for b in run.blows if b.kind == "kill")
    report.stops = sum(1 for b in run.blows if b.kind == "stop")
    for run_id in run.run_ids:
        if states.get(run_id) not in ("succeeded", "failed", "cancelled"):
            report.problems.append(f"{run_id} lost: {states.get(run_id, 'never recorded')} at the deadline")
    report.problems += [
        f"{h.run_id} {h.state}: {h.error}" for h in run.histories if h.state in ("failed", "cancelled")
    ]
    check_executions(report, run.histories, Executions.of(run.records), run.widths)
    check_recovery(report, run.histories, run.blows)
    return report


# -- the command ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=defaults.packages)
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument("--schedulers", type=int, default=defaults.schedulers)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--task-seconds", type=float, default=defaults.task_seconds)
    parser.add_argument(
        "--kill-every",
        type=float,
        nargs=2,
        default=list(defaults.kill_every),
        metavar=("MIN", "MAX"),
        help="seconds between blows, drawn uniformly",
    )
    parser.add_argument("--stop-share", type=float, default=defaults.stop_share)
    parser.add_argument("--lease-ttl", type=float, default=defaults.lease_ttl)
    parser.add_argument(
        "--deadline",
        type=float,
        default=defaults.deadline,
        help="seconds for every run to end; unfinished runs count as lost",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_VARIABLE, "").strip() or None,
        help=f"an existing Redis (default ${REDIS_URL_VARIABLE}, else an embedded one)",
    )
    parser.add_argument(
        "--flush-redis",
        action="store_true",
        help="empty the --redis-url database first (refused if not empty otherwise)",
    )
    parser.add_argument("--database-url", default=None, help="default: SQLite in the work directory")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> ChaosConfig:
    return ChaosConfig(
        packages=args.packages,
        nodes=args.nodes,
        schedulers=args.schedulers,
        concurrency=args.concurrency,
        task_seconds=args.task_seconds,
        kill_every=(args.kill_every[0], args.kill_every[1]),
        stop_share=args.stop_share,
        lease_ttl=args.lease_ttl,
        deadline=args.deadline,
        seed=args.seed,
    )


@contextlib.contextmanager
def _redis(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    if args.redis_url is None:
        from orchestrator.cli.embedded import EmbeddedRedis

        with EmbeddedRedis() as server:
            yield server.start(workdir / "redis")
        return
    import redis

    with redis.Redis.from_url(args.redis_url) as client:
        if args.flush_redis:
            client.flushdb()
        elif client.dbsize():
            raise SystemExit(f"{args.redis_url} is not empty; pass --flush-redis to empty it first")
    yield args.redis_url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = _config(args)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))).resolve()
    database_url = args.database_url or f"sqlite:///{workdir / 'state.db'}"
    print(
        f"chaos run in {workdir}: {config.packages} packages, {config.nodes} nodes, "
        f"{config.schedulers} schedulers, lease TTL {config.lease_ttl:g} s"
    )
    with _redis(args, workdir) as broker_url:
        run = run_chaos(config, broker_url=broker_url, database_url=database_url, workdir=workdir)
    report = judge(run)
    print(report.table())
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/chaos.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "database": database_url.split(":", 1)[0],
        "workdir": str(workdir),
        "config": asdict(config),
        "figures": report.summary(),
        "recovery_seconds": [round(v, 3) for v in report.recovery_seconds],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {args.output}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
