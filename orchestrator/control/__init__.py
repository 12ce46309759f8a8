"""The control plane: the scheduler, liveness in Redis, the submission client.

Modules (import from them; this package imports none of them, because the
per-process services of :mod:`orchestrator.runtime` build on its liveness):
:mod:`~orchestrator.control.scheduler` (dispatch and recovery),
:mod:`~orchestrator.control.liveness` (leases, heartbeats and fencing scripts),
:mod:`~orchestrator.control.client` (the Python client, :class:`~orchestrator.control.client.Client`),
:mod:`~orchestrator.control.messages` (the submission message),
:mod:`~orchestrator.control.tasks` (the schedulers' Celery tasks),
:mod:`~orchestrator.control.service` (a scheduler process),
:mod:`~orchestrator.control.deployed` (submissions of deployed packages),
:mod:`~orchestrator.control.slots` (cron and interval slots, catch-up),
:mod:`~orchestrator.control.schedules` (firing schedules once per slot),
:mod:`~orchestrator.control.retention` (the purge),
:mod:`~orchestrator.control.operations` (the schedulers' loop of schedules and daily purge).
"""

__all__: list[str] = []
