"""Schedulers and worker nodes as real processes, each the leader of its own process group.

Free of pytest, so the chaos bench uses it as well as the tests. Signalling a
node's process group (SIGKILL, SIGSTOP) takes its Celery pool with it, as
losing a machine would. Each process writes one log file, quoted by
:meth:`ProcessCluster.tail` when a wait fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ProcessCluster:
    """The processes of one cluster on ``workdir``, the broker and the database given."""

    workdir: Path
    broker_url: str
    database_url: str
    overrides: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    concurrency: int = 2

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def checkpoint_root(self) -> Path:
        return self.workdir / "checkpoints"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ORCHESTRATOR_BROKER_URL=self.broker_url,
            ORCHESTRATOR_DATABASE_URL=self.database_url,
            ORCHESTRATOR_CHECKPOINT_ROOT=str(self.checkpoint_root),
            ORCHESTRATOR_STATE_DIR=str(self.workdir / "state"),
            ORCHESTRATOR_METRICS_PORT="0",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        env.update(self.overrides)
        return env

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *args],
                cwd=self.workdir,
                env=self.env(),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start_scheduler(self, name: str = "scheduler") -> None:
        self.spawn(name, ["scheduler"])

    def start_node(
        self, name: str, concurrency: int | None = None, metrics_port: int | None = None
    ) -> subprocess.Popen[bytes]:
        args = ["worker", "--node", name, "--concurrency", str(concurrency or self.concurrency)]
        if metrics_port is not None:
            args += ["--metrics-port", str(metrics_port)]
        return self.spawn(name, args)

    def signal(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def kill(self, name: str) -> None:
        """SIGKILL the node's whole process group and reap its leader."""
        self.signal(name, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        parts = []
        for name in self.processes:
            path = self.log_dir / f"{name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)
