"""The Python client: submit packages through the queue, follow, cancel and resume runs.

The client makes the run id, so it can return it at once; the idempotency key
(by default the run id) makes a retried submission create one run only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from checkpoints import SecretBox, validate_run_id
from orchestrator.control.messages import sign
from orchestrator.control.views import run_status
from orchestrator.errors import RunNotFound, RunStateConflict
from orchestrator.packages.model import Package
from orchestrator.packages.variables import missing_required, resolve
from orchestrator.runtime.broker import CONTROL_QUEUE, RESUME_TASK, SUBMIT_TASK
from orchestrator.runtime.services import Services
from orchestrator.state.states import RunState

POLL_INTERVAL = 0.2


def new_run_id(package: str) -> str:
    return f"{package[:48]}-{secrets.token_hex(6)}"


class Client:
    """Submission and run queries for scripts and the CLI."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    def submit(
        self,
        package: Package,
        variables: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Validate the variables here (bad input never reaches the queue) and send the run."""
        run_id = validate_run_id(run_id or new_run_id(package.name))
        values = resolve(package, variables or {})
        missing_required(package, values)  # a new run has no checkpoint to restore them from
        sensitive = {n for n, v in package.variables.items() if v.sensitive}
        secret_key = self.settings.secret()
        encrypted: dict[str, str] = {}
        if secret_key is not None:
            box = SecretBox(secret_key)
            encrypted = {n: box.encrypt(values.pop(n)) for n in sensitive if n in values}
        body: dict[str, Any] = {
            "run_id": run_id,
            "package": package.model_dump(mode="json"),
            "variables": values,
            "secrets": encrypted,
            "idempotency_key": idempotency_key or run_id,
        }
        if self.settings.submit_key is not None:
            body["signature"] = sign(body, self.settings.submit_key.get_secret_value())
        self.services.app.send_task(SUBMIT_TASK, kwargs={"payload": body}, queue=CONTROL_QUEUE)
        return run_id

    def status(self, run_id: str) -> dict[str, Any]:
        """The run as ``status --json`` prints it (:func:`~orchestrator.control.views.run_status`)."""
        return run_status(self.services.repository, run_id)

    def wait(self, run_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the run ends; raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                status = self.status(run_id)
            except RunNotFound:
                status = None  # the scheduler has not recorded the submission yet
            if status is not None and RunState(status["state"]).finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                state = status["state"] if status else "not yet recorded"
                raise TimeoutError(f"run {run_id} still {state} after {timeout:g} s")
            time.sleep(POLL_INTERVAL)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Ask the run to stop; its checkpoint is kept. Returns the run's status."""
        run = self.services.repository.request_cancel(validate_run_id(run_id))
        if not run.state.finished:
            self.services.liveness.request_cancel(run_id)
        return self.status(run_id)

    def resume(self, run_id: str) -> None:
        """Send a failed or cancelled run back to the scheduler, to continue from its checkpoint."""
        run = self.services.repository.run_row(validate_run_id(run_id))
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise RunStateConflict(
                f"run {run_id!r} is {run.state.value}: only failed or cancelled runs can be resumed"
            )
        self.services.app.send_task(RESUME_TASK, kwargs={"run_id": run_id}, queue=CONTROL_QUEUE)
