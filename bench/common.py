"""Shared pieces of the benchmark scripts: options, a Redis, processes, statistics, output.

Every script measures its figure and its baseline in the same run (these
machines are shared and noisy), prints a table with the ratio, and writes the
same figures as JSON to ``bench/results/<name>.json`` (or ``--out DIR``).
Only the project's own dependencies are used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REDIS_ENV = "ORCHESTRATOR_TEST_REDIS_URL"
DATABASE_ENV = "ORCHESTRATOR_TEST_DATABASE_URL"
T = TypeVar("T")


# -- options ---------------------------------------------------------------------------


def plain_celery(name: str, broker_url: str, queue: str, **settings: Any) -> Any:
    """A plain Celery app for a baseline: JSON only, no results, Celery's defaults but ``settings``."""
    from celery import Celery

    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=queue,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        **settings,
    )
    return app


def parser(description: str) -> argparse.ArgumentParser:
    """The options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="CI smoke mode: a few seconds, same table")
    p.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_ENV) or None,
        help=f"a Redis whose databases the bench may flush (default ${REDIS_ENV}, else an embedded one)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL of a scratch database (default: SQLite in a temporary directory)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the two nearest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, min, max of ``values``."""
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


# -- output ----------------------------------------------------------------------------------


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (Markdown-compatible, so docs can quote it as is)."""
    cells = [[str(h) for h in headers], *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [f"\n{title}\n", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in load],
    }


def write_result(args: argparse.Namespace, name: str, result: dict[str, Any]) -> Path:
    """Write ``<out>/<name>.json`` (``-quick`` added in quick mode) and return its path."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}{'-quick' if args.quick else ''}.json"
    body = {
        "bench": name,
        "quick": args.quick,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "machine": machine(),
        **result,
    }
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(f"\nresult written to {path}")
    return path


# -- waiting ---------------------------------------------------------------------------------


def counted_rate(url: str, count: int, send: Callable[[str], None], *, timeout: float, what: str) -> float:
    """Executions per second: ``send(counter)`` sends ``count`` tasks that each increment the Redis
    key ``counter`` (on ``url``) once; timed from the first send until the counter reaches ``count``."""
    import secrets

    import redis

    counter = f"bench:count:{secrets.token_hex(4)}"
    client = redis.Redis.from_url(url)
    try:
        started = time.perf_counter()
        send(counter)
        wait_until(lambda: int(client.get(counter) or 0) >= count, timeout=timeout, what=what, interval=0.005)
        return count / (time.perf_counter() - started)
    finally:
        client.close()


def wait_until(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``condition`` until it is truthy; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Processes:
    """Child processes, each in its own session (its group is killed as one node)."""

    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, command: Sequence[str], env: dict[str, str], cwd: Path = ROOT) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as output:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[name] = process
        return process.pid

    def kill(self, name: str) -> float:
        """SIGKILL the whole process group of ``name``; return the time of the kill."""
        process = self.running.pop(name)
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        return at

    def pids(self, name: str) -> list[int]:
        """Every process in the group of ``name`` (the node and its pool)."""
        group = self.running[name].pid
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = proc_stat(int(entry.name))
                if len(fields) > 2 and int(fields[2]) == group:
                    found.append(int(entry.name))
        return found

    def stop_all(self) -> None:
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running.clear()

    def tail(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.stem} ---\n" + "\n".join(text))
        return "\n".join(parts)


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or ``[]`` once the
    process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one live process so far (0 once it is gone)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def command_name(pid: int) -> str:
    """The command name of a live process (``/proc/PID/comm``), or ``""``."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pids_named(command: str) -> list[int]:
    """The live processes whose command name (``/proc/PID/comm``) is ``command``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and command_name(int(entry.name)) == command:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds that named sets of processes spend between two readings (Linux ``/proc``).

    Each set is a function returning its pids at the time of a reading: a process started
    in between counts from zero, one that exited in between is missed (its last share lost).
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def read(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}

    @staticmethod
    def spent(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds of each set from ``before`` to ``after``."""
        return {
            name: sum(max(0.0, t - before.get(name, {}).get(pid, 0.0)) for pid, t in now.items())
            for name, now in after.items()
        }


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS shares pages common to forked processes fairly."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for text in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if text.startswith("Rss:"):
                rss = int(text.split()[1])
            elif text.startswith("Pss:"):
                pss = int(text.split()[1])
    return rss, pss


# -- the environment of one bench run --------------------------------------------------------


def with_db(url: str, db: int) -> str:
    """``url`` with its Redis database number replaced by ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def url_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


@dataclass
class Environment:
    """A temporary directory, a Redis and a database for one bench run."""

    args: argparse.Namespace
    tmp: Path = field(init=False)
    redis_url: str = field(init=False)
    database_url: str = field(init=False)
    processes: Processes = field(init=False)
    _redis: Any = None

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="orch-bench-"))
        self.processes = Processes(self.tmp / "logs")
        self.database_url = self.args.database_url or f"sqlite:///{self.tmp / 'state.db'}"
        if self.args.redis_url:
            self.redis_url = self.args.redis_url
        else:
            from orchestrator.cli.embedded import EmbeddedRedis

            self._redis = EmbeddedRedis()
            self.redis_url = self._redis.start(self.tmp / "redis")

    def db(self, offset: int) -> str:
        """The Redis URL of database ``base + offset``, flushed (the bench owns it)."""
        import redis

        url = with_db(self.redis_url, url_db(self.redis_url) + offset)
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    def orchestrator_env(self, broker_url: str, **settings: str) -> dict[str, str]:
        """The environment of an orchestrator process of this run."""
        env = dict(os.environ)
        env.update(
            ORCHESTRATOR_BROKER_URL=broker_url,
            ORCHESTRATOR_DATABASE_URL=self.database_url,
            ORCHESTRATOR_CHECKPOINT_ROOT=str(self.tmp / "checkpoints"),
            ORCHESTRATOR_STATE_DIR=str(self.tmp / "state"),
            ORCHESTRATOR_METRICS_PORT="0",
            ORCHESTRATOR_LOG_LEVEL="WARNING",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        env.update({f"ORCHESTRATOR_{k.upper()}": v for k, v in settings.items()})
        return env

    def close(self) -> None:
        self.processes.stop_all()
        if self._redis is not None:
            self._redis.stop()
        if self.args.keep:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[Environment]:
    env = Environment(args)
    try:
        yield env
    except BaseException:
        print(env.processes.tail(), file=sys.stderr)
        raise
    finally:
        env.close()


def orchestrator_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def services(env: Environment, broker_url: str, **settings: Any) -> Any:
    """In-process :class:`~orchestrator.runtime.services.Services` on the run's Redis and database."""
    from orchestrator.runtime.services import Services
    from orchestrator.runtime.settings import Settings

    values: dict[str, Any] = {
        "broker_url": broker_url,
        "database_url": env.database_url,
        "checkpoint_root": env.tmp / "checkpoints",
        "state_dir": env.tmp / "state",
        **settings,
    }
    return Services(Settings(**values), broker_url=broker_url)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a side-effect file: a last line without its newline is an append
    still in progress (a reader can see part of a concurrent write) and is left for later."""
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
