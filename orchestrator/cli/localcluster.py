"""``orchestrator up``: a local cluster of separate processes on one machine.

An embedded Redis (unless ``ORCHESTRATOR_BROKER_URL`` names one), a scheduler,
N worker nodes and (with ``ui_port``) the web UI, each node in its own process group so that killing a
node (``kill -9 -<pgid>``) takes its Celery pool with it, as losing a machine
would. ``<state_dir>/nodes.json`` lists the processes for tools and tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.cli.embedded import EmbeddedRedis
from orchestrator.control.liveness import Liveness
from orchestrator.errors import ClusterUnavailable
from orchestrator.runtime.broker import discover
from orchestrator.runtime.settings import Settings
from orchestrator.ui.sockets import address, bind

log = logging.getLogger(__name__)

NODES_FILE = "nodes.json"
UI_HOST = "127.0.0.1"
STOP_GRACE = 10.0


@dataclass
class Member:
    """One process of the local cluster."""

    name: str
    role: str
    process: subprocess.Popen[bytes]
    metrics_port: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "pid": self.process.pid,
            "metrics_port": self.metrics_port,
        }


@dataclass
class LocalCluster:
    """Starts and stops the processes of a local cluster."""

    settings: Settings
    workers: int = 3
    concurrency: int = 2
    metrics_base_port: int | None = None
    members: list[Member] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    broker_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    ui_port: int | None = None
    ui_url: str | None = None
    _reported: set[str] = field(default_factory=set)

    def start(self) -> None:
        state_dir = self.settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.broker_url is not None:
            self.broker_url = self.settings.broker_url.get_secret_value()
        elif discover(state_dir) is not None:
            raise ClusterUnavailable(
                f"a local cluster is already running for {state_dir}; stop it first (Ctrl-C in its terminal)"
            )
        else:
            self.redis = EmbeddedRedis()
            self.broker_url = self.redis.start(state_dir)
        self.members.append(self._spawn("scheduler", "scheduler", ["scheduler"], self._scheduler_port()))
        for index in range(1, self.workers + 1):
            name = f"node-{index}"
            port = self._port(index)
            args = ["worker", "--node", name, "--concurrency", str(self.concurrency)]
            if port is not None:
                args += ["--metrics-port", str(port)]
            self.members.append(self._spawn(name, "worker", args, port))
        if self.ui_port is not None:
            self._start_ui(self.ui_port)
        self._write_nodes_file()

    def _start_ui(self, port: int) -> None:
        """The web UI on ``port`` or, when it is taken, on a free one (its address in ``ui_url``).

        The socket is bound here and handed over, so the address printed is the one served.
        """
        sock = bind(UI_HOST, port, fallback=True)
        try:
            self.ui_url = address(sock)
            fd = sock.fileno()
            self.members.append(self._spawn("ui", "ui", ["ui", "--fd", str(fd)], None, pass_fds=(fd,)))
        finally:
            sock.close()  # the UI process holds its own copy

    def _scheduler_port(self) -> int:
        """``metrics_base_port``, else ``ORCHESTRATOR_METRICS_PORT`` when set, else 0 (a free port).

        The default port (9808) is not taken blindly: a scheduler whose metrics port is taken
        exits at start, and two local clusters on one machine (or a production scheduler beside
        one) would leave one of them without a scheduler. Port 0 lets the kernel choose at bind
        time, with no window between a check and the bind; the scheduler logs the port.
        """
        if self.metrics_base_port is not None:
            return self.metrics_base_port
        if "metrics_port" in self.settings.model_fields_set:
            return self.settings.metrics_port
        return 0

    def _port(self, index: int) -> int | None:
        return None if self.metrics_base_port is None else self.metrics_base_port + index

    def _spawn(
        self, name: str, role: str, args: list[str], port: int | None, pass_fds: tuple[int, ...] = ()
    ) -> Member:
        env = {**os.environ, **self.env}
        env["ORCHESTRATOR_BROKER_URL"] = self.broker_url
        if role == "scheduler" and port is not None:
            env["ORCHESTRATOR_METRICS_PORT"] = str(port)
        command = [sys.executable, "-m", "orchestrator", *args]
        if self.log_dir is None:
            process = subprocess.Popen(command, env=env, start_new_session=True, pass_fds=pass_fds)
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / f"{name}.log").open("ab") as output:
                process = subprocess.Popen(
                    command,
                    env=env,
                    start_new_session=True,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=pass_fds,
                )
        log.info("started %s (pid %d)", name, process.pid)
        return Member(name, role, process, port or None)  # 0: a port the kernel chose

    def _write_nodes_file(self) -> None:
        path = self.settings.state_dir / NODES_FILE
        path.write_text(json.dumps([m.describe() for m in self.members], indent=2))

    def wait_ready(self, liveness: Liveness, timeout: float = 60.0) -> None:
        """Wait until every worker node reads the queues; fail if a member exits first."""
        wanted = {m.name for m in self.members if m.role == "worker"}
        deadline = time.monotonic() + timeout
        while not wanted <= liveness.ready_nodes():
            for member in self.members:
                if member.process.poll() is not None:
                    raise ClusterUnavailable(f"{member.name} exited with status {member.process.returncode}")
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"worker nodes not up after {timeout:g} s")
            time.sleep(0.1)  # poll; bounded by the deadline above

    def exited(self) -> list[Member]:
        """Members that exited since the last call (each reported once)."""
        gone = [m for m in self.members if m.process.poll() is not None and m.name not in self._reported]
        self._reported.update(m.name for m in gone)
        return gone

    def stop(self) -> None:
        """Stop the workers, then the scheduler, then Redis (TERM, then KILL after a grace)."""
        for member in sorted(self.members, key=lambda m: m.role == "scheduler"):
            _signal_group(member.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for member in self.members:
            try:
                member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %g s; killing it", member.name, STOP_GRACE)
                _signal_group(member.process, signal.SIGKILL)
                member.process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.settings.state_dir / NODES_FILE).unlink()
        if self.redis is not None:
            self.redis.stop()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
