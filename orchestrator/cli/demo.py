"""``orchestrator demo``: a node dies mid-run and the package finishes elsewhere, live.

It starts a local cluster of three worker nodes in a temporary directory,
submits the example ETL, SIGKILLs the node running it once a region has been
loaded, and follows the recovery until the run ends. It then checks what a
user would: the run succeeded, nothing that had finished ran again, every row
was loaded exactly once; and says how long the recovery took.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from orchestrator.cli.embedded import find_server_binary
from orchestrator.cli.localcluster import LocalCluster
from orchestrator.cli.seaweed import EmbeddedSeaweed, weed_binary
from orchestrator.control.client import Client
from orchestrator.errors import OrchestratorError, RunNotFound
from orchestrator.packages.validation import load_package
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import Settings, get_settings
from orchestrator.state.models import Event
from orchestrator.state.states import RunState
from orchestrator.ui.sockets import DEFAULT_PORT

ROWS = 6000
PACE = 0.2
NODES = 3
TIMEOUT = 80.0


@dataclass
class DemoReport:
    """What the demo saw, and whether it proves the point."""

    run_id: str = ""
    state: str = "unknown"
    killed_node: str | None = None
    resumed_node: str | None = None
    killed_at: float | None = None
    lost_at: float | None = None
    resumed_at: float | None = None
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    distinct_rows: int = 0
    repeated: list[str] = field(default_factory=list)
    error: str | None = None
    expected: int = ROWS

    @property
    def recovery_seconds(self) -> float | None:
        if self.killed_at is None or self.resumed_at is None:
            return None
        return self.resumed_at - self.killed_at

    @property
    def ok(self) -> bool:
        return (
            self.state == RunState.SUCCEEDED.value
            and self.resumed_node is not None
            and self.rows == self.distinct_rows == self.expected
            and not self.repeated
        )


class Demo:
    """Drives the scenario; :meth:`run` returns the report."""

    title = "package orders_nightly"

    def __init__(
        self,
        console: Console,
        workdir: Path,
        broker_url: str | None = None,
        object_store: EmbeddedSeaweed | None = None,
    ) -> None:
        self.console = console
        self.workdir = workdir
        self.object_store = object_store
        s3 = object_store.settings_env(f"s3://{object_store.bucket}/demo") if object_store else {}
        values: dict[str, Any] = {
            "broker_url": broker_url,
            "database_url": f"sqlite:///{workdir / 'state.db'}",
            "checkpoint_root": workdir / "checkpoints",
            "state_dir": workdir / "state",
            "metrics_port": 0,
            **{key.removeprefix("ORCHESTRATOR_").lower(): value for key, value in s3.items()},
        }
        self.settings = Settings(**values)
        self.cluster = LocalCluster(
            self.settings,
            workers=NODES,
            concurrency=1,
            env={
                "ORCHESTRATOR_DATABASE_URL": self.settings.database_url.get_secret_value(),
                "ORCHESTRATOR_CHECKPOINT_ROOT": str(self.settings.checkpoint_root),
                "ORCHESTRATOR_STATE_DIR": str(self.settings.state_dir),
                "ORCHESTRATOR_METRICS_PORT": "0",
                **s3,
            },
            log_dir=workdir / "logs",
            ui_port=DEFAULT_PORT,
        )
        self.report = DemoReport()
        self.events: list[Event] = []

    def run(self) -> DemoReport:
        self.console.print(
            f"[bold]starting a local cluster[/]: embedded broker, a scheduler, {NODES} worker nodes"
        )
        if self.object_store is not None:
            self.console.print(
                f"checkpoints in [bold]{self.settings.checkpoint_root}[/] on an embedded SeaweedFS "
                f"at {self.object_store.endpoint} (fenced with If-Match / If-None-Match)",
                soft_wrap=True,
            )
        self.cluster.start()
        try:
            services = Services(self.settings, broker_url=self.cluster.broker_url)
            self.cluster.wait_ready(services.liveness)
            self._scenario(services, Client(services))
            services.close()
        finally:
            self.cluster.stop()
        return self.report

    def _scenario(self, services: Services, client: Client) -> None:
        self.report.run_id = self._submit(client)
        if self.cluster.ui_url:
            self.console.print(
                f"watch it in the web UI: {self.cluster.ui_url}runs/{self.report.run_id} "
                "(it stops with the demo)",
                soft_wrap=True,
            )
        deadline = time.monotonic() + TIMEOUT
        live = Live(console=self.console, refresh_per_second=8, transient=False)
        with live if self.console.is_terminal else _NoLive():
            while time.monotonic() < deadline:
                status = self._status(client)
                self.events = services.repository.events(self.report.run_id)
                if self.console.is_terminal:
                    live.update(self._view(status, services))
                else:
                    self._print_new_events()
                self._act(status)
                if status is not None and RunState(status["state"]).finished:
                    self.report.state = status["state"]
                    self.report.error = status["error"]
                    break
                time.sleep(0.2)  # poll interval; bounded by the deadline
            else:
                self.report.error = f"the run did not end within {TIMEOUT:g} s"
        self._check_warehouse()

    def _submit(self, client: Client) -> str:
        package = load_package(Path(str(resources.files("examples") / "orders_nightly.yaml")))
        variables = {"rows": ROWS, "pace": PACE, "workdir": str(self.workdir / "example")}
        run_id = client.submit(package, variables)
        self.console.print(f"submitted [bold]{run_id}[/] ({ROWS} orders, three regions)")
        return run_id

    def _status(self, client: Client) -> dict[str, Any] | None:
        try:
            return client.status(self.report.run_id)
        except RunNotFound:
            return None

    def _act(self, status: dict[str, Any] | None) -> None:
        """Kill the node running the package once one region is loaded; note the recovery."""
        if status is None:
            return
        kinds = [e.kind for e in self.events]
        if self.report.killed_node is None and "item_done" in kinds and status["state"] == "running":
            self._kill(status["node"])
        for event in self.events:
            if event.kind == "node_lost" and self.report.lost_at is None:
                self.report.lost_at = event.at.timestamp()
            if event.kind == "resumed" and self.report.resumed_at is None and self.report.killed_at:
                self.report.resumed_at = event.at.timestamp()
                self.report.resumed_node = event.node
                self.report.skipped = list(event.detail.get("tasks", []))

    def _kill(self, node: str) -> None:
        member = next(m for m in self.cluster.members if m.name == node)
        os.killpg(member.process.pid, signal.SIGKILL)
        self.report.killed_node, self.report.killed_at = node, time.time()
        self.console.print(
            f"[bold red]killed {node}[/] (SIGKILL to its whole process group) in the middle of the load"
        )

    def _finished_before_kill(self) -> set[tuple[str, str | None]]:
        done: set[tuple[str, str | None]] = set()
        for event in self.events:
            if self.report.killed_at is None or event.at.timestamp() > self.report.killed_at:
                continue
            if event.kind == "task_done" and event.detail.get("task") != "load_partition":
                done.add((event.detail["task"], None))
            elif event.kind == "item_done":
                done.add((event.detail["task"], str(event.detail["item"])))
        return done

    def _check_warehouse(self) -> None:
        database = self.workdir / "example" / "warehouse.db"
        if not database.exists():
            return
        with contextlib.closing(sqlite3.connect(database)) as db:
            self.report.rows, self.report.distinct_rows = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT order_id) FROM orders"
            ).fetchone()
            counts = {
                (task, item): n
                for task, item, n in db.execute(
                    "SELECT task, item, COUNT(*) FROM executions WHERE run_id = ? GROUP BY 1, 2",
                    (self.report.run_id,),
                )
            }
        self.report.repeated = sorted(
            f"{task}[{item}]" if item else task
            for task, item in self._finished_before_kill()
            if counts.get((task, item), 0) != 1
        )

    # -- display ---------------------------------------------------------------------

    def _print_new_events(self) -> None:
        shown = getattr(self, "_shown", 0)
        for event in self.events[shown:]:
            self.console.print(_event_line(event), highlight=False)
        self._shown = len(self.events)

    def _view(self, status: dict[str, Any] | None, services: Services) -> Group:
        alive = set(services.liveness.alive_nodes())
        nodes = Table.grid(padding=(0, 2))
        cells = []
        for member in self.cluster.members:
            if member.role != "worker":
                continue
            mark = "[green]● alive[/]" if member.name in alive else "[red]✗ lost[/]"
            running = " [bold](running the package)[/]" if status and status["node"] == member.name else ""
            cells.append(f"{member.name} {mark}{running}")
        nodes.add_row(*cells)
        tasks = Table(show_edge=False, expand=False)
        tasks.add_column("task")
        tasks.add_column("state")
        for task_id, state in (status or {}).get("tasks", {}).items():
            style = {"succeeded": "green", "running": "cyan", "failed": "red"}.get(state, "dim")
            tasks.add_row(task_id, f"[{style}]{state}[/]")
        timeline = "\n".join(_event_line(e) for e in self.events[-12:])
        header = (
            f"run {self.report.run_id}: [bold]{status['state'] if status else 'submitted'}[/], "
            f"attempt {status['attempt'] if status else '-'}, restarts {status['restarts'] if status else 0}"
        )
        return Group(
            Panel(nodes, title="worker nodes"),
            Panel(Group(header, tasks), title=self.title),
            Panel(timeline or "-", title="events"),
        )


class _NoLive:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _event_line(event: Event) -> str:
    detail = " ".join(
        f"{k}={v}" for k, v in event.detail.items() if k not in ("tasks", "error") and v is not None
    )
    node = f" on {event.node}" if event.node else ""
    return escape(f"{event.at.strftime('%H:%M:%S.%f')[:12]}  {event.kind:<17}{node}  {detail}".rstrip())


def print_summary(console: Console, report: DemoReport) -> None:
    table = Table(title="demo summary", show_header=False, show_edge=False)
    table.add_row("run", f"{report.run_id}: {report.state}")
    table.add_row("node killed", report.killed_node or "-")
    table.add_row("resumed on", report.resumed_node or "-")
    if report.recovery_seconds is not None:
        detected = (
            f"{report.lost_at - report.killed_at:.1f} s" if report.lost_at and report.killed_at else "-"
        )
        table.add_row(
            "recovery time",
            f"{report.recovery_seconds:.1f} s from the kill to the package running again "
            f"(loss detected after {detected})",
        )
    table.add_row("tasks skipped on resume", f"{len(report.skipped)} ({', '.join(report.skipped) or '-'})")
    table.add_row(
        "rows loaded once", f"{report.distinct_rows} of {report.expected} (rows in the table: {report.rows})"
    )
    table.add_row("finished work repeated", ", ".join(report.repeated) or "none")
    console.print(table)
    if report.ok:
        console.print("[bold green]the package survived the loss of its node[/]")
    else:
        console.print(f"[bold red]demo failed[/]: {escape(report.error or 'see the summary above')}")


def run_demo(
    console: Console, *, keep: bool = False, store: str = "filesystem", kind: type[Demo] = Demo
) -> DemoReport:
    """Run the demo in a fresh temporary directory (kept with ``keep`` for inspection).

    ``kind``: the scenario (the ETL copy's is :class:`orchestrator.cli.democopy.CopyDemo`).

    With ``ORCHESTRATOR_BROKER_URL`` set, the cluster uses that broker; otherwise an
    embedded one, and :class:`~orchestrator.errors.NoBrokerServer` is raised before
    anything is printed or started when there is no server binary for it.
    """
    given = get_settings().broker_url
    broker_url = given.get_secret_value() if given is not None else None
    if broker_url is None:
        find_server_binary()
    object_store = None
    if store == "s3":
        weed_binary()  # before anything is started: without the binary, a clear error
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    try:
        if store == "s3":
            (workdir / "s3").mkdir()
            object_store = EmbeddedSeaweed(workdir / "s3")
            object_store.start()
        report = kind(console, workdir, broker_url, object_store).run()
    except OrchestratorError as exc:
        report = DemoReport(error=str(exc))
    finally:
        if object_store is not None:
            object_store.stop()
    print_summary(console, report)
    if keep:
        console.print(f"files kept in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return report
