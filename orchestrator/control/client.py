"""The Python client: submit packages (inline or deployed, by name) through the queue, follow,
cancel and resume runs.

The client makes the run id, so it can return it at once; the idempotency key
(by default the run id) makes a retried submission create one run only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from checkpoints import validate_run_id
from orchestrator.control.deployed import load_deployed, seal
from orchestrator.control.messages import sign
from orchestrator.control.views import run_status
from orchestrator.errors import RunNotFound, RunStateConflict
from orchestrator.packages.model import Package
from orchestrator.packages.variables import missing_required, resolve
from orchestrator.runtime.broker import CONTROL_QUEUE, RESUME_TASK, SUBMIT_TASK
from orchestrator.runtime.services import Services
from orchestrator.state.schedules import ScheduleStore
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
        return self._send(package, package.to_dict(), None, variables, run_id, idempotency_key)

    def submit_deployed(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a deployed package by name: the latest version, or ``version``.

        The variables are checked here against the version the catalog holds
        now, and the message names that version, so the run is of the version checked.
        """
        deployed, package = load_deployed(self.services.repository, name, version)
        return self._send(package, deployed.name, deployed.version, variables, run_id, idempotency_key)

    def _send(
        self,
        package: Package,
        body_package: dict[str, Any] | str,
        version: int | None,
        variables: Mapping[str, Any] | None,
        run_id: str | None,
        idempotency_key: str | None,
    ) -> str:
        run_id = validate_run_id(run_id or new_run_id(package.name))
        values = resolve(package, variables or {})
        missing_required(package, values)  # a new run has no checkpoint to restore them from
        stored = seal(package, values, self.settings.secret())
        body: dict[str, Any] = {
            "run_id": run_id,
            "package": body_package,
            "variables": stored["values"],
            "secrets": stored["secrets"],
            "idempotency_key": idempotency_key or run_id,
        }
        if version is not None:
            body["version"] = version
        return self._post(body)

    def run_schedule(self, name: str) -> str:
        """Start a run of schedule ``name``'s package now, with its variables, outside its slots."""
        row = ScheduleStore(self.services.repository.sessions).get(name)
        run_id = new_run_id(f"{name[:40]}-now")
        body: dict[str, Any] = {
            "run_id": run_id,
            "package": row.package,
            "variables": dict(row.variables.get("values", {})),
            "secrets": dict(row.variables.get("secrets", {})),
            "idempotency_key": run_id,
        }
        if row.version is not None:
            body["version"] = row.version
        return self._post(body)

    def _post(self, body: dict[str, Any]) -> str:
        """Sign (with a submit key) and send a submission; return its run id."""
        if self.settings.submit_key is not None:
            body["signature"] = sign(body, self.settings.submit_key.get_secret_value())
        self.services.app.send_task(SUBMIT_TASK, kwargs={"payload": body}, queue=CONTROL_QUEUE)
        return str(body["run_id"])

    def status(self, run_id: str) -> dict[str, Any]:
        """The run as ``status --json`` prints it (:func:`~orchestrator.control.views.run_status`)."""
        return run_status(self.services.repository, run_id)

    def wait(self, run_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the run ends and return its status; raise ``TimeoutError`` after ``timeout``
        seconds. Each poll reads the run's row alone; the whole status is read once, at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        repository = self.services.repository
        while True:
            try:
                state: RunState | None = repository.run_row(run_id).state
            except RunNotFound:
                state = None  # the scheduler has not recorded the submission yet
            if state is not None and state.finished:
                return self.status(run_id)
            if deadline is not None and time.monotonic() > deadline:
                shown = state.value if state is not None else "not yet recorded"
                raise TimeoutError(f"run {run_id} still {shown} after {timeout:g} s")
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
