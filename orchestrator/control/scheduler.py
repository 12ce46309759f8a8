"""The scheduler: accepts submissions, dispatches attempts, and recovers runs from lost nodes.

Several schedulers may run at once. Every recovery decision is taken by an
atomic Redis script (:mod:`orchestrator.control.liveness`) that only one of them can
win, and every SQL transition is guarded by the run's epoch, so a node loss
is resubmitted exactly once. The tick also writes the workers' event stream
to SQL (:mod:`orchestrator.control.projection`) and finds crashed nodes by
their closed connections (:mod:`orchestrator.control.connections`).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from checkpoints import validate_run_id
from orchestrator.control.deployed import Resolved, resolve_submission
from orchestrator.control.liveness import Expired, LostDispatch
from orchestrator.control.messages import SubmitMessage, sign
from orchestrator.control.projection import Projector
from orchestrator.errors import InvalidInput, OrchestratorError, RunNotFound, SubmissionRefused
from orchestrator.observability.metrics import QUEUES, bounded, gauges, metrics, set_run_counts
from orchestrator.packages.model import Package
from orchestrator.runtime.broker import RECOVERY_QUEUE, RUN_QUEUE, RUN_TASK
from orchestrator.runtime.services import Services
from orchestrator.state.models import NodeState
from orchestrator.state.states import RunState

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 1.0
RECOVERY_BATCHES = 2
"""Event batches written before the tick's recoveries (the rest after them)."""
RECOVERY_THREADS = 8
"""Runs of one tick recovered side by side (a node lost with many runs: their SQL transitions
and dispatches do not wait for one another)."""


class Scheduler:
    """Submission handling, dispatch and the liveness tick (see the module docstring)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self._stop = threading.Event()
        self._gauges_at = -GAUGE_INTERVAL
        self._publish_lock = threading.Lock()  # one send at a time: the broker connection is shared
        self.projector = Projector(services.events, services.projections, services.liveness.server_ms)

    # -- control messages ----------------------------------------------------------------

    def submit(self, payload: Any) -> str | None:
        """Handle a submission; a refused one is recorded as a failed run with the reason."""
        run_id = payload.get("run_id") if isinstance(payload, dict) else None
        repo = self.services.repository
        try:
            message = SubmitMessage.model_validate(payload)
            self._check_signature(payload)
            resolved = resolve_submission(message, repo, self.settings)
            package = resolved.package
            self._check_policy(package)
        except (ValidationError, InvalidInput, ValueError) as exc:
            self._refuse(run_id, payload, exc)
            return None
        return self._create(message, resolved)

    def _create(self, message: SubmitMessage, resolved: Resolved) -> str:
        """Record the run and its first dispatch in one transaction, then send the attempt."""
        repo, liveness, package = self.services.repository, self.services.liveness, resolved.package
        epoch = liveness.first_epoch(message.run_id)
        if epoch is None:  # the run id has an epoch: a redelivered submission, or an earlier try failed
            if self._recorded(message.run_id):
                return message.run_id
            epoch = liveness.fence_for_dispatch(message.run_id)
        max_restarts = (
            package.max_restarts if package.max_restarts is not None else self.settings.max_restarts
        )
        run_id, created = repo.create_run(
            message.run_id,
            package,
            resolved.variables,
            max_restarts=max_restarts,
            idempotency_key=message.idempotency_key,
            version=resolved.version,
            epoch=epoch,
        )
        if not created:  # the same submission under another run id (its idempotency key)
            liveness.forget_run(message.run_id)
            log.info("submission of run %s was already recorded as %s; nothing to do", message.run_id, run_id)
            return run_id
        metrics().runs_submitted.labels(package=bounded("package", package.name)).inc()
        self._publish(run_id, 1, epoch, queue=RUN_QUEUE)
        return run_id

    def _recorded(self, run_id: str) -> bool:
        """Whether SQL has the run (dispatching it if it was recorded but never dispatched)."""
        try:
            run = self.services.repository.run_row(run_id)
        except RunNotFound:
            return False
        if run.attempt == 0 and run.state is RunState.QUEUED:
            self.dispatch(run_id)
        else:
            log.info("submission of run %s was already recorded; nothing to do", run_id)
        return True

    def _check_signature(self, payload: dict[str, Any]) -> None:
        key = self.settings.submit_key
        if key is None:
            return
        given = payload.get("signature")
        if not isinstance(given, str) or not given:
            raise SubmissionRefused("unsigned submission (ORCHESTRATOR_SUBMIT_KEY is set)")
        if not hmac.compare_digest(given, sign(payload, key.get_secret_value())):
            raise SubmissionRefused("bad submission signature")

    def _check_policy(self, package: Package) -> None:
        roots = self.settings.task_module_roots
        for task in package.tasks:
            if task.shell is not None and not self.settings.allow_shell:
                raise SubmissionRefused(f"task {task.id!r}: shell tasks are not allowed here")
            target = task.python or (task.copy_.transform if task.copy_ is not None else None)
            if target is not None and roots:
                module = target.partition(":")[0]
                if not any(module == r or module.startswith(r + ".") for r in roots):
                    raise SubmissionRefused(
                        f"task {task.id!r}: module {module!r} is outside ORCHESTRATOR_TASK_MODULES"
                    )

    def _refuse(self, run_id: Any, payload: Any, exc: Exception) -> None:
        reason = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else "malformed submission"
        if isinstance(exc, InvalidInput) and not isinstance(exc, SubmissionRefused):
            reason = str(exc)
        metrics().submissions_refused.inc()
        try:
            safe_id = validate_run_id(run_id)
        except ValueError:
            log.warning("submission %r refused: %s", run_id, reason)
            return  # no usable id: nothing to record a refusal under (the log line says it)
        definition = payload.get("package") if isinstance(payload, dict) else None
        name = definition.get("name", "?") if isinstance(definition, dict) else definition
        name = name if isinstance(name, str) else "?"
        # Recorded before it is logged: whoever reads the log finds the refusal in SQL.
        self.services.repository.record_refusal(safe_id, str(name), reason)
        log.warning("submission %r refused: %s", run_id, reason)

    def resume(self, run_id: str) -> None:
        """Resume a failed or cancelled run from its checkpoint (a manual restart)."""
        run = self.services.repository.prepare_resume(run_id)
        self.services.liveness.clear_cancel(run_id)
        # An ended run's epoch is not rebuilt after Redis lost its data: start above SQL's.
        self.dispatch(run_id, reason="manual", after=run.epoch)
        metrics().run_restarts.labels(package=bounded("package", run.package), reason="manual").inc()

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, run_id: str, *, reason: str | None = None, after: int = 0) -> None:
        epoch = self.services.liveness.fence_for_dispatch(run_id, after=after)
        self._send(run_id, epoch, reason=reason)

    def _send(self, run_id: str, epoch: int, *, reason: str | None, lost_at_ms: int | None = None) -> None:
        repo = self.services.repository
        dispatch = repo.record_dispatch(run_id, epoch, reason=reason)
        if dispatch is None and (epoch := self._above_sql(run_id, epoch)):
            dispatch = repo.record_dispatch(run_id, epoch, reason=reason)
        if dispatch is None:
            # The run ended, or a newer dispatch was recorded: its claim deadline is not ours to
            # drop (an ended run's entry is dropped when it comes due, in _resubmit).
            return
        # Every attempt after the first continues a run: it goes ahead of runs not started yet.
        queue = RUN_QUEUE if reason is None else RECOVERY_QUEUE
        self._publish(run_id, dispatch.attempt, dispatch.epoch, queue=queue, lost_at_ms=lost_at_ms)

    def _above_sql(self, run_id: str, epoch: int) -> int:
        """A new epoch when Redis is behind SQL (a failover lost recent writes), else 0.

        SQL refused ``epoch`` as already used; if Redis's epoch is not above SQL's either,
        Redis forgot epochs SQL has seen, and the next one must start above SQL's.
        """
        try:
            run = self.services.repository.run_row(run_id)
        except RunNotFound:
            return 0
        if run.state.finished or run.epoch < epoch or self.services.liveness.epoch(run_id) > run.epoch:
            return 0
        log.warning(
            "run %s: Redis is behind SQL (epoch %d, SQL %d): fencing above SQL", run_id, epoch, run.epoch
        )
        return self.services.liveness.fence_for_dispatch(run_id, after=run.epoch)

    def _publish(
        self, run_id: str, attempt: int, epoch: int, *, queue: str, lost_at_ms: int | None = None
    ) -> None:
        with self._publish_lock:
            self.services.app.send_task(
                RUN_TASK,
                kwargs={"run_id": run_id, "attempt": attempt, "epoch": epoch, "lost_at_ms": lost_at_ms},
                queue=queue,
            )
        log.info("dispatched attempt %d of run %s (epoch %d)", attempt, run_id, epoch)

    # -- the liveness tick -----------------------------------------------------------------------

    def tick(self) -> None:
        """One pass: rebuild after a Redis data loss, expire the leases of nodes whose connection
        closed, recover expired leases, write the event stream to SQL, recover lost dispatches,
        mark lost nodes. Its cost grows with what expired, not with the number of runs."""
        liveness = self.services.liveness
        marker, server = liveness.server_state()
        if marker != server:  # Redis lost its data, or is another server (restart, failover)
            self.rebuild(server)
        self._check_connections()
        fenced = [found for run_id in liveness.expired_leases() if (found := liveness.fence_expired(run_id))]
        # Fenced attempts can append nothing more: written now, their last events precede node_lost.
        # With a backlog (SQL was away) a few batches only: the recoveries must not wait for it all.
        self.project(RECOVERY_BATCHES if fenced else None)
        self._recover_all(fenced)
        if fenced:
            self.project()
        for run_id in liveness.overdue_dispatches():
            lost = liveness.take_lost_dispatch(run_id)
            if lost is not None:
                self._recover_dispatch(lost)
        for node in liveness.lost_nodes():
            if liveness.take_lost_node(node):
                self._node_lost(node)
        self._gauges()

    def _check_connections(self) -> None:
        """Expire at once the leases of nodes whose Redis connection closed (a crashed node)."""
        connections = self.services.connections
        for node, recorded in connections.gone():
            runs = connections.expire_node(node, recorded)
            log.warning("node %s closed its connection to Redis: %d run(s) to recover now", node, len(runs))

    def project(self, max_batches: int | None = None) -> None:
        """Write the workers' events to SQL (a failure is logged; recovery goes on regardless)."""
        try:
            self.projector.run(max_batches)
        except (SQLAlchemyError, redis.RedisError) as exc:
            log.error("writing worker events to SQL failed (they wait in Redis; retrying next tick): %s", exc)
        except Exception:
            log.exception("writing worker events to SQL failed (they wait in Redis; retrying next tick)")

    def _gauges(self) -> None:
        """Refresh the state gauges, at most once a second (one SQL count, a few Redis reads)."""
        now = time.monotonic()
        if now - self._gauges_at < GAUGE_INTERVAL:
            return
        self._gauges_at = now
        m = gauges()
        m.worker_nodes_alive.set(len(self.services.liveness.alive_nodes()))
        for queue in QUEUES:
            m.queue_depth.labels(queue=queue).set(self.services.liveness.queue_depth(queue))
        set_run_counts(self.services.repository.count_by_state())

    def rebuild(self, server: str | None = None) -> None:
        """Re-create missing leases and pending claims from SQL, and raise epochs to SQL's (Redis
        started empty, lost its data, or is another server that may have missed recent writes)."""
        liveness = self.services.liveness
        active = self.services.repository.active_runs()
        for run in active:
            liveness.restore_run(run.run_id, run.epoch, run.node or "", run.attempt, running=run.claimed)
        liveness.set_marker(server)
        log.warning("liveness rebuilt from SQL for %d active run(s)", len(active))

    def _recover_all(self, fenced: list[Expired]) -> None:
        """Recover the runs fenced in this tick, up to :data:`RECOVERY_THREADS` at once.

        Each recovery is independent (its own SQL transactions, guarded by the run's epoch);
        one that fails does not hold up the others, and the first failure is raised once all
        have been tried (the tick logs it; a run left behind is dispatched again when its
        claim deadline passes).
        """
        if len(fenced) <= 1:
            for expired in fenced:
                self._recover(expired)
            return
        threads = min(RECOVERY_THREADS, len(fenced))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recovery") as pool:
            futures = [pool.submit(self._recover, expired) for expired in fenced]
        errors = [error for future in futures if (error := future.exception()) is not None]
        for error in errors[1:]:
            log.error("recovering a run failed: %s", error)
        if errors:
            raise errors[0]

    def _recover(self, expired: Expired) -> None:
        log.warning(
            "lease of run %s on node %s expired; fenced epoch %d -> %d",
            expired.run_id,
            expired.node or "?",
            expired.old_epoch,
            expired.epoch,
        )
        self._resubmit(
            expired.run_id,
            expired.old_epoch,
            expired.epoch,
            expired.node,
            "node_lost",
            expired.deadline_ms,
        )

    def _recover_dispatch(self, lost: LostDispatch) -> None:
        log.warning(
            "attempt of run %s was never claimed; dispatching again (epoch %d)",
            lost.run_id,
            lost.epoch,
        )
        self._resubmit(lost.run_id, lost.epoch - 1, lost.epoch, "", "dispatch_lost", lost.deadline_ms)

    def _resubmit(
        self, run_id: str, old_epoch: int, epoch: int, node: str, reason: str, lost_at_ms: int
    ) -> None:
        repo = self.services.repository
        try:
            run = repo.record_lost(run_id, old_epoch, epoch, node, reason=reason)
        except RunNotFound:  # a submission whose transaction failed after its first fence
            log.warning("run %s was never recorded: its claim deadline is dropped", run_id)
            run = None
        if run is None:
            self.services.liveness.drop_pending(run_id)
            return
        package = bounded("package", run.package)
        if run.cancel_requested:
            repo.end_run(run_id, RunState.CANCELLED, "cancelled; checkpoint kept")
            metrics().runs_finished.labels(package=package, state=RunState.CANCELLED.value).inc()
        elif run.restarts > run.max_restarts:
            metrics().runs_finished.labels(package=package, state=RunState.FAILED.value).inc()
            repo.end_run(
                run_id,
                RunState.FAILED,
                f"gave up after {run.restarts - 1} restart(s): max_restarts ({run.max_restarts}) "
                f"exhausted ({reason.replace('_', ' ')}); the checkpoint is kept for "
                "`orchestrator resume`",
            )
        else:
            self._send(run_id, epoch, reason=reason, lost_at_ms=lost_at_ms)
            metrics().run_restarts.labels(package=package, reason=reason).inc()
            return
        self.services.liveness.drop_pending(run_id)

    def _node_lost(self, node: str) -> None:
        log.warning("node %s stopped sending heartbeats: marked lost", node)
        metrics().node_loss_detected.inc()
        self.services.repository.set_node_state(node, NodeState.LOST)

    # -- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Tick until :meth:`stop`; a failing tick is logged with its traceback and retried."""
        while not self._stop.wait(self.settings.scheduler_tick):
            try:
                self.tick()
            except (OrchestratorError, OSError, ConnectionError) as exc:
                log.error("scheduler tick failed (retrying): %s", exc)
            except Exception:
                log.exception("scheduler tick failed (retrying)")

    def stop(self) -> None:
        self._stop.set()
