"""The package executor: runs a package's DAG with checkpoints, usable without any broker.

:func:`execute` is what ``orchestrator run`` calls in-process and what a
worker node calls for one attempt of a run. It

* loads the run's checkpoint (per ``checkpoint.usage``), skips finished tasks
  and foreach items, and restores variables, outputs and in-task progress;
* runs units (a task, or one foreach item) in worker threads, each as soon as
  its dependencies allow, at most ``max_concurrency`` at once and at most a
  foreach's ``concurrency`` of its items (ready-set scheduling,
  :mod:`workers.plan`); a shell unit runs as a subprocess of its thread;
* writes the checkpoint (fenced by the attempt's epoch): a new snapshot when
  the attempt starts, then one journal record per finished task or item and per
  ``ctx.progress.save``, records finishing together sharing one write
  (:mod:`workers.commit`), and a new snapshot when the journal outgrows it;
* retries failed units, enforces timeouts, records non-fatal failures and
  lets independent branches go on when one branch fails;
* follows precedence constraints and conditions (success, failure, completion;
  ``depends_on_mode``; ``when``), records skipped tasks and failures handled by a
  failure constraint, and runs event handlers (:mod:`workers.handlers`), each
  recorded once it ended (docs/control-flow.md);
* deletes the checkpoint when the run succeeded (unless told to keep it).

The rule for variables written by units that run at the same time is in
:meth:`_Run.publish` (README, "Variables and parallel units").
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from checkpoints import (
    Change,
    Checkpoint,
    CheckpointError,
    CheckpointNotFound,
    CheckpointWriter,
    Fenced,
    SecretBox,
    TaskRecord,
    apply,
)
from checkpoints.format import utcnow
from orchestrator.observability.logs import log_context
from orchestrator.observability.masking import Masker
from orchestrator.packages.flow import Outcome
from orchestrator.packages.kinds import CheckpointUsage
from orchestrator.packages.model import ForeachItem, Task, item_key
from orchestrator.packages.templating import TemplateError, render
from orchestrator.packages.variables import missing_required, resolve
from orchestrator.state.states import RunState, TaskState
from workers.commit import GroupCommit, Ticket
from workers.errors import (
    AttemptFenced,
    CheckpointWriteFailed,
    RunCancelled,
    RunInterrupted,
    TaskError,
    VariableConflict,
)
from workers.etl.connections import EnginePool
from workers.execution import ExecutionHooks, ExecutionOptions, RunRequest, RunResult, SerialHooks
from workers.flowrun import FlowRun
from workers.handlers import HandlerRunner
from workers.plan import HandlerJob, Plan, Unit, task_of
from workers.units import UnitRunner, describe

__all__ = ["ExecutionHooks", "ExecutionOptions", "RunRequest", "RunResult", "execute"]

log = logging.getLogger(__name__)

POLL = 0.1
STOP_GRACE = 5.0


def execute(request: RunRequest, options: ExecutionOptions | None = None) -> RunResult:
    """Run (or resume) one attempt of a package.

    Raises ``InvalidInput`` subclasses and checkpoint errors (mismatch, not
    found, corrupt) before any task runs; raises :class:`AttemptFenced` when a
    newer attempt took the run over. Every other outcome is a :class:`RunResult`.
    """
    run = _Run(request, options or ExecutionOptions())
    run.prepare()
    return run.run()


@dataclass
class _Report:
    """What to tell the hooks once the record of a finished unit is durable."""

    unit: Unit
    state: TaskState
    seconds: float
    error: str | None = None
    reason: str = "task"


class _Run(FlowRun):
    """The state of one attempt; see :func:`execute`. ``lock`` guards every field below it.

    Its control flow (skipped tasks, conditions, event handlers) is :class:`~workers.flowrun.FlowRun`'s."""

    def __init__(self, request: RunRequest, options: ExecutionOptions) -> None:
        self.request, self.package, self.options = request, request.package, options
        self.hooks = SerialHooks(options.hooks)
        self.stop = options.stop
        self.store = options.store
        self.box = SecretBox(options.secret_key) if options.secret_key else None
        self.saving = self.store is not None and (
            request.save if request.save is not None else self.package.checkpoint.save
        )
        self.sensitive = {n for n, v in self.package.variables.items() if v.sensitive}
        self.masker = Masker()
        self.writer: CheckpointWriter | None = None
        self.commits: GroupCommit | None = None
        self.lock = threading.Condition()
        self.state = Checkpoint(
            package=self.package.name,
            definition_hash=self.package.definition_hash,
            run_id=request.run_id,
            epoch=request.epoch,
            attempt=request.attempt,
        )
        self.variables: dict[str, Any] = {}
        self.states = {task.id: TaskState.PENDING for task in self.package.tasks}
        self.plan = Plan(self.package)
        self.items: dict[str, list[ForeachItem]] = {}
        self.item_errors: dict[str, Exception] = {}
        self.started: dict[str, float] = {}
        self.failures: list[str] = []
        self.skipped: list[str] = []
        self.resumed = False
        self.interrupted: BaseException | None = None
        self.idle = 0  # worker threads waiting for a unit
        self.workers = 0  # worker threads alive
        self.over = threading.Event()  # set when the run is over or interrupted: the main thread waits on it
        self.context = contextvars.copy_context()
        self.engines = EnginePool()  # the package's connections, shared by this attempt's units
        self.units = UnitRunner(self)
        self.handler_runner = HandlerRunner(self, self.units)
        self.handler_states: dict[str, TaskState] = {}
        self.queued: set[str] = set()  # on_error jobs queued by this attempt
        self.final_stage = 0  # on_success, then on_finish: queued once the graph is over

    # -- start ---------------------------------------------------------------

    def prepare(self) -> None:
        """Resolve variables and restore the checkpoint; then write the claiming snapshot."""
        given = resolve(self.package, self.request.variables)
        checkpoint = self._load()
        self.variables = dict(given)
        if checkpoint is not None:
            self._restore(checkpoint, given)
        missing_required(self.package, self.variables)
        self.masker = Masker(v for n, v in self.variables.items() if n in self.sensitive)
        finished_items = {task: list(done) for task, done in self.state.items.items()}
        recorded = {task_id: Outcome(record.state) for task_id, record in self.state.tasks.items()}
        self.plan = Plan(self.package, set(self.state.tasks), finished_items, recorded)
        self._requeue_events()
        self._open()  # the first write carries the new epoch: older attempts are fenced from here

    def _load(self) -> Checkpoint | None:
        usage = CheckpointUsage(self.request.usage or self.package.checkpoint.usage)
        if usage is CheckpointUsage.NEVER or self.store is None:
            if usage is CheckpointUsage.ALWAYS:
                raise CheckpointNotFound("checkpoint usage 'always' needs a checkpoint store")
            return None
        checkpoint = self.store.load(
            self.package.name, self.request.run_id, definition_hash=self.package.definition_hash
        )
        if checkpoint is None and usage is CheckpointUsage.ALWAYS:
            raise CheckpointNotFound(
                f"checkpoint usage is 'always' but run {self.request.run_id!r} of package "
                f"{self.package.name!r} has no checkpoint in {self.store!r}"
            )
        return checkpoint

    def _restore(self, checkpoint: Checkpoint, given: Mapping[str, Any]) -> None:
        self.resumed = True
        restored = dict(checkpoint.variables)
        if self.box is not None:
            restored.update({n: self.box.decrypt(n, t) for n, t in checkpoint.secrets.items()})
        for name, value in restored.items():
            if name in self.request.variables and given.get(name) != value:
                log.warning("variable %r restored from the checkpoint; the given value is ignored", name)
        self.variables.update(restored)
        for task in self.package.tasks:
            if task.always_rerun and task.id in checkpoint.tasks:
                del checkpoint.tasks[task.id]
                checkpoint.items.pop(task.id, None)
        checkpoint.epoch, checkpoint.attempt = self.request.epoch, self.request.attempt
        self.state = checkpoint
        for task_id, record in checkpoint.tasks.items():
            self.states[task_id] = TaskState(record.state)
        self.handler_states = {key: TaskState(record.state) for key, record in checkpoint.handlers.items()}
        self.skipped = [t.id for t in self.package.tasks if t.id in checkpoint.tasks]

    def _open(self) -> None:
        self.state.variables = {n: v for n, v in self.variables.items() if n not in self.sensitive}
        self.state.secrets = self._encrypted(self.variables) if self.box else {}
        if not self.saving or self.store is None:
            return
        self._guard()
        started = time.perf_counter()
        try:
            self.writer = self.store.open(self._snapshot())
        except Fenced as exc:
            self.hooks.checkpoint_failed("fenced", str(exc))
            raise AttemptFenced(str(exc)) from exc
        except (CheckpointError, OSError) as exc:
            self.hooks.checkpoint_failed("error", str(exc))
            raise CheckpointWriteFailed(f"checkpoint write failed: {exc}") from exc
        self.commits = GroupCommit(self.writer, self._writable)
        self.hooks.checkpoint_saved(self.writer.snapshot_bytes, time.perf_counter() - started, "start")

    # -- the run ---------------------------------------------------------------

    def run(self) -> RunResult:
        with log_context(run_id=self.request.run_id, attempt=self.request.attempt, mask=self.masker):
            self.context = contextvars.copy_context()  # worker threads log with the run's context
            try:
                return self._run()
            finally:
                # Whatever ended the attempt (success, failure, fenced, cancelled): its
                # database connections close with it.
                self.engines.close()
                if self.writer is not None:
                    self.writer.close()

    def _run(self) -> RunResult:
        self.hooks.run_started(self.request.run_id, self.resumed, self.skipped)
        try:
            self._drive()
            result = self._result()
        except AttemptFenced:
            self.stop.set()
            raise
        except (KeyboardInterrupt, RunCancelled) as exc:
            self.stop.set()
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            result = self._result(RunState.CANCELLED, f"run cancelled ({reason}); checkpoint kept")
        except CheckpointWriteFailed as exc:
            self.stop.set()
            result = self._result(RunState.FAILED, str(exc))
        if result.state is RunState.SUCCEEDED:
            self._delete_checkpoint()
        result.checkpoint_kept = self.saving and (
            result.state is not RunState.SUCCEEDED or self.options.keep_checkpoint
        )
        self.hooks.run_finished(result)
        return result

    def _drive(self) -> None:
        """Let worker threads run the units; watch for a stop; re-raise what interrupted the run.

        The workers drive the plan themselves (a worker that ends a unit takes the next
        one); this thread only starts them and looks for a stop request every ``POLL``.
        """
        try:
            with self.lock:
                self._expand()
                self._check_over()
                self._wake()
            while not self.over.wait(POLL):
                with self.lock:
                    self._watch()
        except KeyboardInterrupt as exc:
            self.interrupt(exc)
        if self.interrupted is not None:
            self._wait_for_units(STOP_GRACE)
            raise self.interrupted

    def _check_over(self) -> bool:
        """If nothing runs and nothing can start any more, say so to everyone (under the lock)."""
        if not self.plan.over():
            return False
        if self._queue_final():
            return False
        self.over.set()
        self.lock.notify_all()  # idle workers leave
        return True

    def _watch(self) -> None:
        """Turn a stop request or a lost lease into an interruption (the caller holds the lock)."""
        try:
            self.check_stop()
        except RunInterrupted as exc:
            self.interrupt(exc)

    def _wait_for_units(self, grace: float) -> None:
        """Give the units in flight ``grace`` seconds to see the stop; then leave them."""
        deadline = time.monotonic() + grace
        with self.lock:
            self.lock.notify_all()
            while self.plan.running and time.monotonic() < deadline:
                self.lock.wait(POLL)
            if self.plan.running:
                log.warning("%d unit(s) did not stop within %g s; abandoned", self.plan.running, grace)

    def _result(self, state: RunState | None = None, error: str | None = None) -> RunResult:
        if state is None:
            state = RunState.FAILED if self.failures else RunState.SUCCEEDED
            error = "; ".join(self.failures) or None
        with self.lock:
            for task_id, task_state in self.states.items():
                if task_state in (TaskState.PENDING, TaskState.RUNNING) and state is RunState.CANCELLED:
                    self.states[task_id] = TaskState.CANCELLED
            public = {n: ("***" if n in self.sensitive else v) for n, v in self.variables.items()}
            return RunResult(
                run_id=self.request.run_id,
                package=self.package.name,
                state=state,
                tasks=dict(self.states),
                error=error,
                outputs={k: r.output for k, r in self.state.tasks.items()},
                variables=public,
                skipped=list(self.skipped),
                handlers=dict(self.handler_states),
                resumed=self.resumed,
            )

    # -- worker threads ---------------------------------------------------------

    def _wake(self, spare: int = 0) -> None:
        """Wake or start as many workers as units could start now, less ``spare`` (under the lock).

        ``spare``: workers about to look for a unit anyway (the caller, when it is one
        that just ended its unit), so that a sequential run keeps to one thread.
        """
        wanted = self.plan.available() - spare
        if wanted > 0 and self.idle:
            self.lock.notify(min(wanted, self.idle))
            wanted -= self.idle
        while wanted > 0 and self.workers < self.package.max_concurrency:
            self.workers += 1
            wanted -= 1
            name = f"unit-{self.request.run_id}-{self.workers}"
            run_in_context = self.context.copy().run
            threading.Thread(target=run_in_context, args=(self._work,), name=name, daemon=True).start()

    def _work(self) -> None:
        try:
            while (unit := self._next_unit()) is not None:
                if isinstance(unit, HandlerJob):
                    self.handler_runner.run(unit)
                else:
                    self.units.execute(unit)
        except BaseException as exc:  # a defect here must stop the run, not leave it waiting
            self.interrupt(exc)
            raise
        finally:
            with self.lock:
                self.workers -= 1

    def _next_unit(self) -> Unit | HandlerJob | None:
        with self.lock:
            while self.interrupted is None and not self.stop.is_set():
                self._expand()
                unit = self.plan.take()
                if isinstance(unit, Unit):
                    self.states[unit.task.id] = TaskState.RUNNING
                    self.started.setdefault(unit.task.id, time.monotonic())
                if unit is not None:
                    self._wake()
                    return unit
                if self._check_over():
                    return None
                if self.plan.available():  # the end's handlers were just queued
                    continue
                self.idle += 1
                try:
                    self.lock.wait()
                finally:
                    self.idle -= 1
            return None

    def _expand(self) -> None:
        """Settle what was decided and list the items of each foreach that became ready, until
        neither changes anything (under the lock): a failed listing or an empty foreach decides
        more tasks, which must be settled before anyone concludes the run is over."""
        while True:
            self._settle()
            tasks = self.plan.expansions()
            if not tasks:
                return
            task = tasks[0]
            try:
                items = self._foreach_items(task)
            except TaskError as exc:
                self.plan.drop(task.id)
                self.task_failed(task, exc, 0.0)
                continue
            self.items[task.id] = items
            finished = len(self.state.items.get(task.id, {}))
            self.hooks.foreach_started(task.id, len(items), finished)
            if self.plan.set_items(task.id, items):  # nothing left to run: the foreach is done
                self._commit(self._task_done(task), [_Report(Unit(task), TaskState.SUCCEEDED, 0.0)])

    def _foreach_items(self, task: Task) -> list[ForeachItem]:
        if isinstance(task.foreach, list):
            return task.foreach
        try:
            items = render(task.foreach, self.variables, self.outputs())
        except TemplateError as exc:
            raise TaskError(f"foreach: {exc}") from exc
        if not isinstance(items, list) or not all(isinstance(i, str | int | float | bool) for i in items):
            raise TaskError(f"foreach expression gave {type(items).__name__}, not a list of scalars")
        if len({item_key(i) for i in items}) != len(items):
            raise TaskError("foreach expression gave repeated items")
        return items

    # -- what the units report (called by workers.units) --------------------------------

    def outputs(self) -> dict[str, Any]:
        """The outputs of the tasks that succeeded (a skipped or failed task has none)."""
        return {t: record.output for t, record in self.state.tasks.items() if record.state == "succeeded"}

    def unit_succeeded(self, unit: Unit, output: Any, writes: dict[str, Any], seconds: float) -> None:
        """Record a unit's success and its variable writes, in one record; report it once durable.

        Raises :class:`VariableConflict` (nothing recorded) when its writes break the
        variable rule; anything raised after that is an interruption of the run.
        """
        with self.lock:
            try:
                self.check_stop()  # a unit that returned after a stop did not finish its work
                parts = self.publish(unit, writes)
            except VariableConflict:
                raise
            except BaseException:
                self.plan.ended(unit)
                raise
            if unit.item is None:
                record = TaskRecord(state="succeeded", output=output)
                ticket = self._submit([Change(tasks={unit.task.id: record}, **parts)])
            else:
                ticket = self._submit([Change(items={unit.task.id: {item_key(unit.item): output}}, **parts)])
        reason = "task" if unit.item is None else "item"
        try:
            self._durable(ticket, [_Report(unit, TaskState.SUCCEEDED, seconds, reason=reason)])
        finally:
            with self.lock:
                self._ended(unit)

    def _ended(self, unit: Unit) -> None:
        """A unit's record is durable (or will never be): free its place; finish its foreach if last."""
        last = self.plan.ended(unit)
        if self.interrupted is None and last and unit.task.id in self.item_errors:
            self._foreach_failed(unit.task)
        elif self.interrupted is None and last:
            report = _Report(Unit(unit.task), TaskState.SUCCEEDED, self._elapsed(unit.task))
            self._commit(self._task_done(unit.task), [report])
        self._wake(spare=1)

    def unit_failed(self, unit: Unit, exc: Exception, seconds: float) -> None:
        """A unit failed for good (retries spent): fail its task, or note the item's failure."""
        with self.lock:
            last = self.plan.ended(unit, failed=True)
            if unit.item is None:
                self.task_failed(unit.task, exc, seconds)
            else:
                self.item_errors.setdefault(unit.task.id, exc)
                self._on_error(unit.task.id, unit.item, self.masker(describe(exc)))
                if last:
                    self._foreach_failed(unit.task)
            self._wake(spare=1)

    def unit_abandoned(self, unit: Unit) -> None:
        """A unit stopped by an interruption: nothing is recorded."""
        with self.lock:
            self.plan.ended(unit)
            self.lock.notify_all()

    def save_progress(self, unit: Unit, value: Any, writes: dict[str, Any]) -> None:
        """``ctx.progress.save``: the value and the unit's variable writes, durable before returning."""
        with self.lock:
            self.check_stop()
            change = Change(progress={unit.key: value}, **self.publish(unit, writes))
            ticket = self._submit([change])
        self._durable(ticket, [], reason="progress")

    def publish(self, unit: Unit, writes: dict[str, Any]) -> dict[str, Any]:
        """Make a unit's variable writes the run's; return them as parts of its record.

        The rule: a unit sees the variables as they were when it started plus its
        own writes; its writes become the run's when its progress save or its
        completion is recorded, atomically with that record. Two units that may
        run at the same time (neither task depends on the other, or two items of
        a foreach with ``concurrency`` above 1) must not write the same variable:
        validation refuses it when both declare ``writes``, and otherwise the
        second to record it fails here, naming the variable and both units (the
        ``writers`` kept in the checkpoint make this hold across attempts too).
        """
        for name in writes:
            last = self.state.writers.get(name)
            overlap = last is not None and self.package.may_overlap(task_of(last), unit.task.id)
            if last is not None and last != unit.label and overlap:
                raise VariableConflict(
                    f"variable {name!r} is written by {unit.label!r} and by {last!r}, which may run at "
                    "the same time; make one task depend on the other, or return an output instead"
                )
        self.variables.update(writes)
        return {
            "variables": {n: v for n, v in writes.items() if n not in self.sensitive},
            "secrets": self._encrypted(writes) if self.box else {},
            "writers": dict.fromkeys(writes, unit.label),
        }

    def task_failed(self, task: Task, exc: Exception, seconds: float, *, event: bool = True) -> None:
        """The task failed (under the lock): its on_error event first (recorded before the failure,
        so a crash between the two cannot lose it), then the package fails, or the failure is
        recorded (``fail_package_on_failure: false``, or a failure constraint handles it)."""
        error = self.masker(f"task {task.id!r} failed: {describe(exc)}")
        self.states[task.id] = TaskState.FAILED
        if task.foreach is not None:
            self.hooks.task_finished(task.id, None, TaskState.FAILED, seconds, error)
        if event:
            self._on_error(task.id, None, self.masker(describe(exc)))
        if self.plan.fails_package(task):
            self.failures.append(error)
            self.plan.task_failed(task.id, recorded=False)
            return
        why = (
            "handled by a failure constraint"
            if task.fail_package_on_failure
            else "fail_package_on_failure is false"
        )
        log.warning("%s (%s: the package goes on)", error, why)
        self._commit([Change(tasks={task.id: TaskRecord(state="failed", error=error)})], [])
        self.plan.task_failed(task.id, recorded=True)

    def _foreach_failed(self, task: Task) -> None:
        self.task_failed(task, self.item_errors.pop(task.id), self._elapsed(task), event=False)

    def _skip(self, task: Task, final: bool) -> None:
        if not final:  # blocked by a failure that a resumed run retries
            self.states[task.id] = TaskState.UPSTREAM_FAILED
            return
        self.states[task.id] = TaskState.SKIPPED
        change = Change(tasks={task.id: TaskRecord(state="skipped")})
        self._commit([change], [_Report(Unit(task), TaskState.SKIPPED, 0.0)])

    def _task_done(self, task: Task) -> list[Change]:
        """The record of a foreach that finished: its output is every item's, in item order."""
        done = self.state.items.get(task.id, {})
        output = {item_key(item): done.get(item_key(item)) for item in self.items[task.id]}
        return [Change(tasks={task.id: TaskRecord(state="succeeded", output=output)})]

    def _elapsed(self, task: Task) -> float:
        return time.monotonic() - self.started.get(task.id, time.monotonic())

    # -- checkpoint writes -------------------------------------------------------

    def _submit(self, changes: list[Change]) -> Ticket | None:
        """Apply ``changes`` to the state and queue them for the journal (under the lock)."""
        for change in changes:
            apply(self.state, change)
        return self.commits.submit(changes) if self.commits is not None else None

    def _commit(self, changes: list[Change], reports: list[_Report]) -> None:
        """Submit and wait, under the lock (rare paths: failures recorded, skips, events, empty foreach)."""
        ticket = self._submit(changes)
        self._durable(ticket, reports)

    def _durable(self, ticket: Ticket | None, reports: list[_Report], reason: str = "") -> None:
        """Wait until ``ticket`` is durable, then report; release what finished; compact if due."""
        try:
            if ticket is not None and self.commits is not None:
                self.commits.wait(ticket)
        except Fenced as exc:
            self.hooks.checkpoint_failed("fenced", str(exc))
            self.raise_interrupt(AttemptFenced(str(exc)))
        except (CheckpointError, OSError) as exc:
            self.hooks.checkpoint_failed("error", str(exc))
            self.raise_interrupt(CheckpointWriteFailed(f"checkpoint write failed: {exc}"))
        size, seconds = (ticket.size, ticket.seconds) if ticket is not None else (0, 0.0)
        with self.hooks.together():
            for report in reports:
                unit = report.unit
                self.hooks.task_finished(unit.task.id, unit.item, report.state, report.seconds, report.error)
                if self.saving:
                    self.hooks.checkpoint_saved(size, seconds, report.reason)
            if reason and self.saving:
                self.hooks.checkpoint_saved(size, seconds, reason)
        with self.lock:
            for report in reports:
                if report.unit.item is None and report.state is TaskState.SUCCEEDED:
                    self.states[report.unit.task.id] = TaskState.SUCCEEDED
                    self.plan.task_finished(report.unit.task.id)
            self._compact_if_due()
            self._wake(spare=1)

    def _compact_if_due(self) -> None:
        if self.commits is None or not self.commits.compaction_due():
            return
        try:
            ticket = self.commits.compact(self._snapshot)
        except Fenced as exc:
            self.hooks.checkpoint_failed("fenced", str(exc))
            self.raise_interrupt(AttemptFenced(str(exc)))
        except (CheckpointError, OSError) as exc:
            self.hooks.checkpoint_failed("error", str(exc))
            self.raise_interrupt(CheckpointWriteFailed(f"checkpoint write failed: {exc}"))
        self.hooks.checkpoint_saved(ticket.size, ticket.seconds, "compaction")

    def _snapshot(self) -> Checkpoint:
        self.state.updated_at = utcnow()
        return self.state

    def _encrypted(self, values: Mapping[str, Any]) -> dict[str, str]:
        assert self.box is not None
        return {n: self.box.encrypt(v) for n, v in values.items() if n in self.sensitive}

    def _delete_checkpoint(self) -> None:
        if not self.saving or self.store is None or self.options.keep_checkpoint:
            return
        self._guard()
        try:
            self.store.delete(self.package.name, self.request.run_id, epoch=self.request.epoch)
        except Fenced as exc:
            raise AttemptFenced(str(exc)) from exc

    # -- stopping ----------------------------------------------------------------

    def _writable(self) -> None:
        """Raise unless this attempt may still write (checked right before every write)."""
        if self.interrupted is not None:
            raise self.interrupted
        self._guard()

    def _guard(self) -> None:
        if self.options.guard is not None:
            try:
                self.options.guard()
            except AttemptFenced as exc:
                self.raise_interrupt(exc)

    def interrupt(self, exc: BaseException) -> None:
        """Stop the run: remember why (the first reason wins), stop every unit, wake everyone."""
        with self.lock:
            if self.interrupted is None:
                self.interrupted = exc
            self.stop.set()
            self.over.set()
            self.lock.notify_all()

    def raise_interrupt(self, exc: RunInterrupted) -> None:
        """Interrupt the run and raise (so a task swallowing the error cannot hide it)."""
        self.interrupt(exc)
        raise exc

    def check_stop(self) -> None:
        if self.interrupted is not None:
            raise self.interrupted
        self._guard()
        if self.stop.is_set():
            self.raise_interrupt(RunCancelled("stop requested"))
