"""A Redis master, its replica and three sentinels, as real processes of one test.

Each is a ``redis-server`` (sentinels run it with ``--sentinel``, or
``redis-sentinel`` where that is installed) in its own process group, on free
ports, in a temporary directory. :func:`require_sentinel` raises
:class:`Unavailable` with the reason when no binary here runs as a sentinel,
so the test skips with that reason; any other failure to start fails it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.servers import Unavailable, free_port, redis_binaries

MASTER = "mymaster"


def require_sentinel(directory: Path) -> None:
    """Raise :class:`Unavailable` (the reason) unless a binary here runs in sentinel mode."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "probe.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor probe 127.0.0.1 1 1\n")
    command = sentinel_command(config)
    log = directory / "probe.log"
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                said = log.read_text(errors="replace")[-1000:]
                raise Unavailable(f"{command[0]} does not run as a sentinel:\n{said}")
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=1) as client:
                if client.execute_command("SENTINEL", "MASTERS") is not None:
                    return
            time.sleep(0.05)  # poll interval; the deadline bounds the wait
        raise Unavailable(f"{command[0]} in sentinel mode did not answer within 10 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def sentinel_command(config: Path) -> list[str]:
    """How to run a sentinel with ``config``: ``redis-sentinel`` if present, else ``redis-server --sentinel``."""
    found = shutil.which("redis-sentinel")
    if found:
        return [found, str(config)]
    binaries = redis_binaries()
    if not binaries:
        raise Unavailable("no redis-server or redis-sentinel binary (apt-get install redis-sentinel)")
    return [str(binaries[0]), str(config), "--sentinel"]


@dataclass
class SentinelGroup:
    """Master, replica and sentinels (``down-after`` 1 s, quorum 2)."""

    directory: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{self.ports[f'sentinel-{n}']}" for n in range(3))
        return f"sentinel://{hosts}/0?master={MASTER}"

    def start(self) -> SentinelGroup:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ports = {
            name: free_port() for name in ("master", "replica", *(f"sentinel-{n}" for n in range(3)))
        }
        binaries = redis_binaries()
        self._server("master", binaries[0], [])
        self._server("replica", binaries[0], [f"replicaof 127.0.0.1 {self.ports['master']}"])
        self._wait(self._replicated, "the replica to sync")
        for n in range(3):
            self._sentinel(f"sentinel-{n}")
        self._wait(lambda: all(self._sees_replica(n) for n in range(3)), "the sentinels to see the replica")
        return self

    def _server(self, name: str, binary: Path, extra: list[str]) -> None:
        lines = [f"port {self.ports[name]}", "bind 127.0.0.1", f'dir "{self.directory}"', 'save ""',
                 "appendonly no", f'dbfilename "{name}.rdb"', *extra]  # fmt: skip
        self._spawn(name, [str(binary), str(self._config(name, lines))])

    def _sentinel(self, name: str) -> None:
        lines = [
            f"port {self.ports[name]}",
            "bind 127.0.0.1",
            f'dir "{self.directory}"',
            f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['master']} 2",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 10000",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        self._spawn(name, sentinel_command(self._config(name, lines)))

    def _config(self, name: str, lines: list[str]) -> Path:
        config = self.directory / f"{name}.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.directory / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait(lambda: self._answers(name), f"{name} to answer")

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], socket_timeout=2, socket_connect_timeout=2)

    def _answers(self, name: str) -> bool:
        process = self.processes[name]
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log(name)}")
        try:
            with self.client(name) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _replicated(self) -> bool:
        with self.client("replica") as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sees_replica(self, n: int) -> bool:
        with self.client(f"sentinel-{n}") as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER)
        return len(replicas) >= 1

    def master_port(self) -> int:
        """The master's port as the sentinels say it now."""
        with self.client("sentinel-0") as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)

    def cut_replication(self) -> None:
        """Pause the replica and drop its link: what the master writes from now on, it never gets.

        (Pausing alone is not enough: the replica's kernel keeps receiving into its socket.)
        """
        self.signal("replica", signal.SIGSTOP)
        with self.client("master") as master:
            master.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def signal(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @staticmethod
    def _wait(condition: object, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)  # poll interval; the deadline bounds the wait

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
