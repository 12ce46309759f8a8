"""A cluster of real processes for integration tests: schedulers and worker nodes.

Each process runs ``python -m orchestrator ...`` in its own session (so its
process group is the "node": SIGKILL or SIGSTOP of the group takes the Celery
pool with it), against the test's Redis and database. Output goes to one log
file per process, quoted when a wait fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.submission import Client
from tests.support import tasks as T
from tests.support.cli import ROOT, wait_until


@dataclass
class Cluster:
    """Processes of one test's cluster and an in-process client on the same services."""

    tmp: Path
    broker_url: str
    database_url: str
    overrides: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.tmp / "executions.jsonl"

    @property
    def checkpoint_root(self) -> Path:
        return self.tmp / "checkpoints"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ORCHESTRATOR_BROKER_URL=self.broker_url,
            ORCHESTRATOR_DATABASE_URL=self.database_url,
            ORCHESTRATOR_CHECKPOINT_ROOT=str(self.checkpoint_root),
            ORCHESTRATOR_STATE_DIR=str(self.tmp / "state"),
            ORCHESTRATOR_METRICS_PORT="0",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            **{T.LOG_ENV: str(self.log)},
        )
        env.update(self.overrides)
        return env

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            "broker_url": self.broker_url,
            "database_url": self.database_url,
            "checkpoint_root": self.checkpoint_root,
            "state_dir": self.tmp / "state",
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

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        output = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=self.tmp,
            env=self.env(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()
        self.processes[name] = process
        return process

    def start_scheduler(self, name: str = "scheduler") -> None:
        self._spawn(name, ["scheduler"])

    def start_node(self, name: str, concurrency: int = 2, metrics_port: int | None = None) -> None:
        args = ["worker", "--node", name, "--concurrency", str(concurrency)]
        if metrics_port is not None:
            args += ["--metrics-port", str(metrics_port)]
        self._spawn(name, args)

    def wait_nodes(self, *names: str, timeout: float = 60) -> None:
        wait_until(
            lambda: set(names) <= set(self.services.liveness.alive_nodes()),
            timeout=timeout,
            what=f"nodes {names} to send heartbeats\n{self.tail()}",
        )

    def signal(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        parts = []
        for name in self.processes:
            path = self.tmp / f"{name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)
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


def flush(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
