"""A cluster of real processes for integration tests: schedulers and worker nodes.

Each process runs ``python -m orchestrator ...`` in its own session (so its
process group is the "node": SIGKILL or SIGSTOP of the group takes the Celery
pool with it), against the test's Redis and database. Output goes to one log
file per process, quoted when a wait fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.client import Client
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import Settings
from tests.support import tasks as T
from tests.support.cli import wait_until
from tests.support.processes import ProcessCluster


@dataclass
class Cluster(ProcessCluster):
    """Processes of one test's cluster (logs beside the test's files) and an in-process client."""

    @property
    def tmp(self) -> Path:
        return self.workdir

    @property
    def log_dir(self) -> Path:
        return self.workdir

    @property
    def log(self) -> Path:
        return self.workdir / "executions.jsonl"

    def env(self) -> dict[str, str]:
        return {**super().env(), T.LOG_ENV: str(self.log), **self.overrides}

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            "broker_url": self.broker_url,
            "database_url": self.database_url,
            "checkpoint_root": self.checkpoint_root,
            "state_dir": self.workdir / "state",
        }
        for key, value in self.overrides.items():
            name = key.removeprefix("ORCHESTRATOR_").lower()
            if name in Settings.model_fields:
                values[name] = value
        return Settings(**values)

    @property
    def services(self) -> Services:
        if not hasattr(self, "_services"):
            self._services = Services(self.settings(), broker_url=self.broker_url)
        return self._services

    @property
    def client(self) -> Client:
        return Client(self.services)

    def wait_nodes(self, *names: str, timeout: float = 60) -> None:
        wait_until(
            lambda: set(names) <= set(self.services.liveness.alive_nodes()),
            timeout=timeout,
            what=f"nodes {names} to send heartbeats\n{self.tail()}",
        )

    def stop(self) -> None:
        super().stop()
        if hasattr(self, "_services"):
            self._services.close()

    def entries(self) -> list[dict[str, Any]]:
        return T.read_log(self.log)


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, database_url: str) -> Iterator[Cluster]:
    """An empty cluster on the session's Redis (flushed) and a fresh database; add processes."""
    harness = Cluster(tmp_path, redis_url, database_url)
    yield harness
    harness.stop()
