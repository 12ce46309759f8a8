"""Retention: finished runs removed with their attempts, tasks, events, task logs and checkpoint directories.

``orchestrator purge`` and the schedulers' daily purge
(``ORCHESTRATOR_RETENTION_DAYS``) both run :meth:`Purger.purge`:

* only runs that ended (succeeded, failed, cancelled) before the cutoff, never
  a queued, running or recovering one (checked again, under lock, in the
  transaction that deletes them);
* a failed or cancelled run whose checkpoint is kept (for ``orchestrator
  resume``) stays, run and checkpoint, unless ``include_failed``;
* in batches of :data:`BATCH` runs, one short transaction each, the SQL rows
  first, then each run's checkpoint directory, fence (epoch file) included,
  then its epoch key in Redis (when given a ``forget``).

A purge killed between a batch's transaction and its directories leaves those
directories behind (their runs are gone from SQL, so nothing resumes them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from checkpoints import CheckpointError, CheckpointStore, validate_package_name
from orchestrator.observability.metrics import metrics
from orchestrator.state.retention import Candidate, RetentionStore
from orchestrator.state.states import RunState
from orchestrator.state.types import utcnow

log = logging.getLogger(__name__)

BATCH = 100


@dataclass
class PurgeReport:
    """What a purge removed (or, with ``dry_run``, would remove)."""

    cutoff: str
    dry_run: bool
    runs: int = 0
    attempts: int = 0
    tasks: int = 0
    events: int = 0
    logs: int = 0  # task log lines
    checkpoints: int = 0
    redis_keys: int = 0  # epoch and cancel keys of purged runs
    kept: int = 0  # failed or cancelled runs left for their checkpoint
    errors: int = 0  # checkpoint directories that could not be removed (logged)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Purger:
    """Removes old finished runs from SQL and their directories from the checkpoint store."""

    def __init__(
        self,
        retention: RetentionStore,
        store: CheckpointStore,
        *,
        batch: int = BATCH,
        forget: Callable[[list[str]], int] | None = None,
    ) -> None:
        self.retention = retention
        self.store = store
        self.batch = batch
        # Removes what Redis keeps of the purged runs (their epoch keys); None: left there.
        self.forget = forget

    def purge(
        self,
        older_than: timedelta,
        *,
        include_failed: bool = False,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PurgeReport:
        """Remove the runs that finished more than ``older_than`` before ``now``."""
        cutoff = (now or utcnow()) - older_than
        report = PurgeReport(cutoff=cutoff.isoformat(), dry_run=dry_run)
        after: Candidate | None = None
        while batch := self.retention.candidates(cutoff, after, self.batch):
            after = batch[-1]
            chosen = [c for c in batch if include_failed or not self._kept(c)]
            report.kept += len(batch) - len(chosen)
            if chosen:
                self._batch(chosen, cutoff, report)
        if report.errors:
            log.error("purge: %d checkpoint directorie(s) could not be removed (see above)", report.errors)
        return report

    def _kept(self, run: Candidate) -> bool:
        """A failed or cancelled run keeps its checkpoint for ``orchestrator resume``."""
        if run.state is RunState.SUCCEEDED or not run.definition_hash:  # refused: nothing ever ran
            return False
        try:
            return self.store.load(run.package, run.run_id) is not None
        except CheckpointError as exc:  # damaged or unreadable: a person decides, not the purge
            log.warning("purge: keeping run %s, its checkpoint cannot be read: %s", run.run_id, exc)
            return True

    def _batch(self, chosen: list[Candidate], cutoff: datetime, report: PurgeReport) -> None:
        ids = [c.run_id for c in chosen]
        if report.dry_run:
            counted = self.retention.count_history(ids)
            report.runs += len(chosen)
            report.checkpoints += sum(1 for c in chosen if self._stored(c))
        else:
            counted = self.retention.delete(ids, cutoff)
            report.runs += len(counted.runs)
            for package, run_id in counted.runs:
                report.checkpoints += self._remove_directory(package, run_id, report)
            if self.forget is not None and counted.runs:
                report.redis_keys += self.forget([run_id for _, run_id in counted.runs])
            self._count(len(counted.runs), counted.attempts, counted.tasks, counted.events, counted.logs)
        report.attempts += counted.attempts
        report.tasks += counted.tasks
        report.events += counted.events
        report.logs += counted.logs

    def _stored(self, run: Candidate) -> bool:
        """Whether the store holds anything of the run (``--dry-run``: its directory would go)."""
        try:
            return self.store.epoch(validate_package_name(run.package), run.run_id) > 0
        except (CheckpointError, OSError):
            return False

    def _remove_directory(self, package: str, run_id: str, report: PurgeReport) -> int:
        try:
            validate_package_name(package)
        except CheckpointError:
            return 0  # a refused submission's made-up name: no directory was ever made for it
        try:
            removed = self.store.purge(package, run_id)
        except (OSError, CheckpointError) as exc:
            report.errors += 1
            log.error("purge: the checkpoint directory of run %s (%s) stays: %s", run_id, package, exc)
            return 0
        if removed:
            metrics().purged.labels(kind="checkpoints").inc()
        return int(removed)

    @staticmethod
    def _count(runs: int, attempts: int, tasks: int, events: int, logs: int) -> None:
        purged = metrics().purged
        counted = {"runs": runs, "attempts": attempts, "tasks": tasks, "events": events, "logs": logs}
        for kind, amount in counted.items():
            purged.labels(kind=kind).inc(amount)
