"""``orchestrator demo --copy``: a table copy loses its node mid-flow and ends with every row once.

The same local cluster as the main demo runs examples/warehouse_nightly.yaml:
an OLTP SQLite file's orders copied into a warehouse SQLite file in batches,
each committed with the copy's cursor. Once a few batches are in, the node
running the copy is SIGKILLed; the run resumes on another node from the last
committed batch, and the demo checks that the warehouse holds every order
exactly once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.cli.demo import Demo
from orchestrator.control.client import Client
from orchestrator.packages.validation import load_package
from orchestrator.runtime.services import Services

COPY_ROWS = 40_000
COPY_PACE = 0.1
KILL_AFTER_ROWS = 5_000


class CopyDemo(Demo):
    """The copy scenario; the cluster, the live view and the summary are the main demo's."""

    title = "package warehouse_nightly"

    def _scenario(self, services: Services, client: Client) -> None:
        self.report.expected = COPY_ROWS
        super()._scenario(services, client)

    def _submit(self, client: Client) -> str:
        package = load_package(Path(str(resources.files("examples") / "warehouse_nightly.yaml")))
        variables = {"rows": COPY_ROWS, "pace": COPY_PACE, "workdir": str(self.example)}
        run_id = client.submit(package, variables)
        self.console.print(f"submitted [bold]{run_id}[/] (copy {COPY_ROWS} orders in batches of 1000)")
        return run_id

    @property
    def example(self) -> Path:
        return self.workdir / "example"

    def _act(self, status: dict[str, Any] | None) -> None:
        if status is not None and self.report.killed_node is None and status["state"] == "running":
            copied = self._copied()
            if copied >= KILL_AFTER_ROWS:
                self.console.print(f"{copied} rows copied and committed so far")
                self._kill(status["node"])
                return
        super()._act(status)

    def _copied(self) -> int:
        database = self.example / "warehouse.db"
        if not database.exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=1)) as db:
                found = db.execute("SELECT SUM(rows_copied) FROM orchestrator_copy_state").fetchone()
        except sqlite3.Error:  # the copy has not made its state table yet
            return 0
        return int(found[0] or 0)

    def _check_warehouse(self) -> None:
        database = self.example / "warehouse.db"
        if not database.exists():
            return
        with contextlib.closing(sqlite3.connect(database)) as db:
            self.report.rows, self.report.distinct_rows = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT order_id) FROM stage_orders"
            ).fetchone()
