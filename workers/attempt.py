"""One attempt of a run on a worker node: claim, keep the lease, execute, report.

:func:`run_attempt` is a plain function (the Celery task only decodes its
message and calls it), so it is tested without a broker. SQL is written twice
per attempt: the claim and the outcome. What happens in between goes through
the event stream (:mod:`workers.reporter`). Everything it records is fenced by
the attempt's epoch: the Redis claim, lease and event appends, the SQL row's
epoch, and the checkpoint store's epoch file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import SQLAlchemyError

from checkpoints import CheckpointError, Fenced, SecretBox, validate_run_id
from orchestrator.control.liveness import Claim, Liveness
from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.observability.logs import log_context
from orchestrator.observability.metrics import metrics
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.runtime.services import Services
from orchestrator.state.models import Run
from orchestrator.state.states import RunState
from workers.errors import AttemptFenced, CheckpointWriteFailed, StateUnavailable
from workers.executor import ExecutionHooks, ExecutionOptions, RunRequest, RunResult, execute
from workers.hooks import AllHooks, MetricsHooks
from workers.lease import LeaseKeeper
from workers.reporter import AttemptReporter
from workers.storewatch import StoreWatch
from workers.watch import AttemptFiles

log = logging.getLogger(__name__)


class AttemptMessage(BaseModel):
    """The body of an attempt message: ids and small numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    attempt: int = Field(ge=1)
    epoch: int = Field(ge=1)
    lost_at_ms: int | None = Field(default=None, ge=0)

    @field_validator("run_id")
    @classmethod
    def _safe(cls, value: str) -> str:
        return validate_run_id(value)


def run_attempt(
    services: Services,
    message: AttemptMessage,
    node: str,
    *,
    hooks: ExecutionHooks | None = None,
    on_lost: Callable[[], Callable[[], None] | None] | None = None,
    files: AttemptFiles | None = None,
) -> RunResult | None:
    """Run one attempt; return its result, or ``None`` when it did not own the run.

    ``files``, on a worker node, notes the attempt for the node's
    :class:`~workers.watch.PoolWatch`, which reports it at once if this process dies.
    """
    liveness = services.liveness
    claim = liveness.claim(message.run_id, message.epoch, node, message.attempt)
    if claim.status is not Claim.OK:
        _not_claimed(services, message, node, claim.status)
        return None
    if message.lost_at_ms is not None:  # a resubmission: from lease expiry to running again
        metrics().recovery_seconds.observe(max(0, claim.server_ms - message.lost_at_ms) / 1000)
    stop = threading.Event()
    watch = StoreWatch(services.settings.checkpoint_timeout)
    keeper = LeaseKeeper(
        liveness,
        run_id=message.run_id,
        epoch=message.epoch,
        attempt=message.attempt,
        node=node,
        interval=services.settings.heartbeat_interval,
        ttl=services.settings.lease_ttl,
        stop=stop,
        on_lost=on_lost,
        hung=watch.overdue,
    )
    keeper.start()
    reporter = AttemptReporter(services.events, message.run_id, message.epoch, message.attempt, node)
    with files.running(message.run_id, message.epoch) if files is not None else contextlib.nullcontext():
        outcome = _attempt(services, message, node, keeper, reporter, hooks, watch)
    keeper.stop()
    if not keeper.lost:
        # A lost lease is left to expire: if no scheduler fenced it yet, releasing it would
        # leave the run with neither a lease nor a pending claim, and nobody would recover it.
        _release(liveness, message)
    return outcome


def _release(liveness: Liveness, message: AttemptMessage) -> None:
    try:
        liveness.release(message.run_id, message.epoch)
    except redis.RedisError as exc:
        # The outcome is recorded: the lease expires, and the scheduler finds the run ended.
        log.warning("lease of run %s not released (it expires instead): %s", message.run_id, exc)


def _attempt(
    services: Services,
    message: AttemptMessage,
    node: str,
    keeper: LeaseKeeper,
    reporter: AttemptReporter,
    hooks: ExecutionHooks | None,
    watch: StoreWatch,
) -> RunResult | None:
    """The claimed attempt: the SQL claim, the run, the SQL outcome (see :func:`run_attempt`)."""
    repo, store = services.repository, watch.wrap(services.store)
    try:
        run = repo.mark_claimed(message.run_id, message.epoch, message.attempt, node)
        log.info("node %s claimed attempt %d of run %s", node, message.attempt, message.run_id)
        with log_context(run_id=message.run_id, attempt=message.attempt, node=node):
            outcome = _execute(services, message, run, keeper, reporter, hooks, watch)
        if keeper.lost:
            raise AttemptFenced(f"attempt {message.attempt} of run {message.run_id!r} lost its lease")
        _finish(services, message, node, outcome.state, outcome.error, outcome.tasks, reporter)
        if outcome.succeeded and not services.settings.keep_checkpoints:
            # Only once the outcome is recorded: a node dying before that must find the
            # checkpoint and finish the run from it, not run the package again.
            store.delete(outcome.package, message.run_id, epoch=message.epoch)
    except (AttemptFenced, Fenced) as exc:
        log.warning("attempt %d of run %s stops without reporting: %s", message.attempt, message.run_id, exc)
        return None
    except (StateUnavailable, SQLAlchemyError):
        _abandon(keeper, message)
        raise
    except (InvalidInput, CheckpointError, OrchestratorError) as exc:
        # Nothing ran (bad variables, a checkpoint that does not fit...): the run fails clearly.
        log.error("attempt %d of run %s cannot run: %s", message.attempt, message.run_id, exc)
        _finish(services, message, node, RunState.FAILED, str(exc), {}, reporter)
        return None
    except Exception:
        _abandon(keeper, message)
        raise
    return outcome


def _finish(
    services: Services,
    message: AttemptMessage,
    node: str,
    state: RunState,
    error: str | None,
    tasks: dict[str, Any],
    reporter: AttemptReporter,
) -> None:
    """The outcome, with what the event stream has not brought to SQL yet, in one transaction."""
    try:
        services.repository.finish_attempt(
            message.run_id,
            message.epoch,
            message.attempt,
            node,
            state,
            error,
            tasks,
            records=reporter.unprojected(),
        )
    except SQLAlchemyError as exc:
        raise StateUnavailable(f"the run-state database failed: {exc}") from exc


def _abandon(keeper: LeaseKeeper, message: AttemptMessage) -> None:
    """Stop renewing but keep the lease: it expires and the scheduler resubmits the run
    from its checkpoint (the database went away, say)."""
    keeper.stop()
    log.exception(
        "attempt %d of run %s crashed; the run will be resubmitted when its lease expires",
        message.attempt,
        message.run_id,
    )


def _execute(
    services: Services,
    message: AttemptMessage,
    run: Run,
    keeper: LeaseKeeper,
    reporter: AttemptReporter,
    hooks: ExecutionHooks | None,
    watch: StoreWatch,
) -> RunResult:
    settings = services.settings
    package = _package(services, run.package, run.definition_hash)
    variables = decode_variables(run.variables, settings.secret())
    store = watch.wrap(services.store)
    # From here on, a checkpoint write by any older attempt is refused by the store itself.
    try:
        store.fence(package.name, message.run_id, message.epoch)
    except OSError as exc:  # storage full or read-only: a clear failure, not a crash (a "node loss")
        raise CheckpointWriteFailed(f"checkpoint write failed: {exc}") from exc
    request = RunRequest(package, message.run_id, variables, epoch=message.epoch, attempt=message.attempt)
    all_hooks = AllHooks(reporter, MetricsHooks(package.name), *([hooks] if hooks is not None else []))
    watch.on_timeout = functools.partial(all_hooks.checkpoint_failed, "timeout")
    options = ExecutionOptions(
        store=store,
        secret_key=settings.secret(),
        hooks=all_hooks,
        guard=keeper.check,
        stop=keeper.stop_run,
        keep_checkpoint=True,  # deleted by run_attempt once the outcome is recorded
        allowed_modules=settings.task_module_roots,
        allow_shell=settings.allow_shell,
    )
    return execute(request, options)


_PACKAGES: dict[tuple[str, str], Package] = {}
PACKAGES_CACHED = 64


def _package(services: Services, name: str, definition_hash: str) -> Package:
    """The run's package, parsed once per process (a definition never changes under its hash)."""
    key = (name, definition_hash)
    if key not in _PACKAGES:
        if len(_PACKAGES) >= PACKAGES_CACHED:
            _PACKAGES.clear()
        definition = services.repository.definition(name, definition_hash)
        _PACKAGES[key] = parse_package(definition, source=f"package {name}")
    return _PACKAGES[key]


def _not_claimed(services: Services, message: AttemptMessage, node: str, status: Claim) -> None:
    if status is Claim.CANCELLED:
        log.info("run %s was cancelled before attempt %d started", message.run_id, message.attempt)
        try:
            services.repository.finish_attempt(
                message.run_id,
                message.epoch,
                message.attempt,
                node,
                RunState.CANCELLED,
                "cancelled before it started; checkpoint kept",
                {},
            )
        except AttemptFenced as exc:
            log.info("run %s has a newer attempt; it handles the cancellation: %s", message.run_id, exc)
        services.liveness.drop_pending(message.run_id)
    else:
        log.info(
            "attempt %d of run %s (epoch %d) not claimed: %s",
            message.attempt,
            message.run_id,
            message.epoch,
            status.name.lower(),
        )


def decode_variables(stored: dict[str, Any], secret_key: str | None) -> dict[str, Any]:
    """The run's variables as given at submission, sensitive ones decrypted."""
    values = dict(stored.get("values", {}))
    secrets = stored.get("secrets", {})
    if secrets:
        if secret_key is None:
            raise InvalidInput(
                "the run's sensitive variables are encrypted but this node has no ORCHESTRATOR_SECRET_KEY"
            )
        box = SecretBox(secret_key)
        values.update({name: box.decrypt(name, token) for name, token in secrets.items()})
    return values
