"""A pool process that dies alone (the OOM killer, a crash in a C extension) is reported by its node.

Celery's prefork pool replaces a dead pool process, but the attempt that
process was running would otherwise hold its lease until the lease TTL. So
each attempt notes itself in a file named after its process id
(:class:`AttemptFiles`), and the node's main process checks those processes a
few times a second (:class:`PoolWatch`): for one that is gone, it expires the
attempt's lease on the spot (only if that attempt still holds it), and the
next scheduler tick fences and resubmits the run.

The files are local (a directory per node process under the system's
temporary directory): they cost no Redis call, and die with the node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import redis

from orchestrator.control.liveness import Liveness

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.1


class AttemptFiles:
    """The directory where a node's pool processes note the attempt each is running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls, node: str) -> AttemptFiles:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node)
        return cls(Path(tempfile.mkdtemp(prefix=f"orchestrator-{safe}-")))

    @contextlib.contextmanager
    def running(self, run_id: str, epoch: int) -> Iterator[None]:
        """Note the attempt under this process's id while it runs."""
        path = self.directory / f"{os.getpid()}.json"
        path.write_text(json.dumps({"run_id": run_id, "epoch": epoch}), encoding="utf-8")
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class PoolWatch(threading.Thread):
    """In a node's main process: expire the leases of attempts whose process died (module docstring)."""

    def __init__(
        self, files: AttemptFiles, liveness: Liveness, node: str, interval: float = WATCH_INTERVAL
    ) -> None:
        super().__init__(name=f"pool-watch-{node}", daemon=True)
        self.files, self.liveness, self.node, self.interval = files, liveness, node, interval
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.check()
            except (OSError, ValueError, redis.RedisError) as exc:
                log.warning("pool watch of node %s failed, retrying: %s", self.node, exc)

    def check(self) -> list[str]:
        """Report the attempts of dead pool processes; return their run ids."""
        reported = []
        for path in self.files.directory.glob("*.json"):
            pid = int(path.stem)
            if _alive(pid):
                continue
            try:
                noted = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # the attempt ended meanwhile
            if self.liveness.expire_lease(noted["run_id"], int(noted["epoch"]), self.node):
                log.warning(
                    "pool process %d of node %s died running run %s: its lease expired now",
                    pid,
                    self.node,
                    noted["run_id"],
                )
                reported.append(noted["run_id"])
            path.unlink(missing_ok=True)
        return reported

    def stop(self) -> None:
        self._done.set()


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by the pool, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the pool reaps its dead children within moments anyway
    return stat.rpartition(")")[2].split()[0] != "Z"
