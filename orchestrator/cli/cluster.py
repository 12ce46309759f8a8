"""The cluster commands of the ``orchestrator`` CLI: processes, submission and run queries.

They find a local cluster started by ``orchestrator up`` in the same directory
without flags (``.orchestrator/cluster.json``), or use ``ORCHESTRATOR_BROKER_URL``
and ``ORCHESTRATOR_DATABASE_URL``.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from checkpoints import validate_package_name
from orchestrator.cli.app import EXIT_FAILED, EXIT_OK, JsonOption, VarOption, app, err, exit_codes, fail, out
from orchestrator.cli.localcluster import LocalCluster
from orchestrator.control.client import Client
from orchestrator.control.views import event_rows, log_rows, node_rows, run_row, status_items
from orchestrator.errors import InvalidInput
from orchestrator.packages.validation import load_package
from orchestrator.packages.variables import parse_assignments
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import get_settings
from orchestrator.state.states import RunState
from orchestrator.ui.sockets import DEFAULT_PORT

RunIdArgument = Annotated[str, typer.Argument(help="The run id (printed by submit).")]


def _services() -> Services:
    return Services(get_settings())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


class DemoStore(StrEnum):
    """Where ``orchestrator demo`` keeps its checkpoints."""

    FILESYSTEM = "filesystem"
    S3 = "s3"


@app.command()
def scheduler() -> None:
    """Run a scheduler (several may run at once)."""
    from orchestrator.control.service import serve_scheduler

    with exit_codes():
        services = _services()
        services.check_store()
        serve_scheduler(services)


@app.command()
def worker(
    node: Annotated[str | None, typer.Option("--node", help="Node name [default: host-pid].")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Runs at once.")] = 2,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Serve /metrics here.")] = None,
) -> None:
    """Run a worker node."""
    from workers.node import default_node_name, serve_worker

    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    with exit_codes():
        services = _services()
        services.check_store()
        serve_worker(services, node or default_node_name(), concurrency, metrics_port)


@app.command()
def up(
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker nodes to start.")] = 3,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Runs per node.")] = 2,
    ui_port: Annotated[
        int, typer.Option("--ui-port", min=0, max=65535, help="Web UI port (a free one if taken).")
    ] = DEFAULT_PORT,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not start the web UI.")] = False,
) -> None:
    """Start a local cluster (embedded Redis, a scheduler, N worker nodes, the web UI) until Ctrl-C."""
    settings = get_settings()
    cluster = LocalCluster(
        settings, workers=workers, concurrency=concurrency, ui_port=None if no_ui else ui_port
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops the cluster even when the parent ignored SIGINT (a background job of a
    # script, a pytest-xdist worker): Python keeps an inherited SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with exit_codes():
        try:
            cluster.start()
            cluster.wait_ready(Services(settings, broker_url=cluster.broker_url).liveness)
            out.print(
                f"[green]local cluster up[/]: scheduler + {workers} worker node(s). "
                "Submit with `orchestrator submit FILE`; Ctrl-C stops it."
            )
            if cluster.ui_url:
                out.print(f"web UI at {cluster.ui_url}", soft_wrap=True)
            while True:  # a lost node is the cluster's business, not a reason to stop it
                for gone in cluster.exited():
                    err.print(f"[yellow]{gone.name} exited[/] (status {gone.process.returncode})")
                signal.sigtimedwait([signal.SIGCHLD], 1.0)
        except KeyboardInterrupt:
            out.print("stopping the local cluster")
        finally:
            cluster.stop()


@app.command()
def submit(
    target: Annotated[
        str, typer.Argument(help="A package file (YAML or JSON), or a deployed package's name.")
    ],
    var: VarOption = None,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Of a deployed package [default: the latest].")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to end.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds to wait at most.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Choose the run id.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Submit a package through the queue; print its run id (with --wait, its final status).

    An existing file is submitted inline; anything else is a deployed package's name.
    """
    with exit_codes():
        client = Client(_services())
        variables = parse_assignments(var or [])
        if Path(target).is_file():
            if version is not None:
                raise InvalidInput(f"--version is for a deployed package's name; {target!r} is a file")
            package = load_package(Path(target))
            name, run_id = package.name, client.submit(package, variables, run_id=run_id)
        else:
            name = target
            run_id = client.submit_deployed(_deployed_name(target), variables, version=version, run_id=run_id)
        if not wait:
            _print_json({"run_id": run_id, "package": name}) if json_output else out.print(run_id)
            return
        err.print(f"submitted {run_id}; waiting for it to end")
        try:
            status = client.wait(run_id, timeout=timeout)
        except TimeoutError as exc:
            fail(str(exc))
    if json_output:
        _print_json(status)
    else:
        _print_status(status)
    raise typer.Exit(EXIT_OK if status["state"] == RunState.SUCCEEDED else EXIT_FAILED)


def _deployed_name(target: str) -> str:
    try:
        return validate_package_name(target)
    except ValueError:
        raise InvalidInput(f"{target!r} is no file, nor a deployed package's name") from None


@app.command()
def status(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """State, attempt, restarts, node, per-task state and error of a run."""
    with exit_codes():
        found = Client(_services()).status(run_id)
    _print_json(found) if json_output else _print_status(found)


def _print_status(found: dict[str, Any]) -> None:
    """The status table of a ``status --json`` object; a foreach's progress is its items done."""
    items = status_items(found)
    style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(found["state"], "cyan")
    out.print(f"run [bold]{found['run_id']}[/] of {found['package']}: [{style}]{found['state']}[/]")
    out.print(
        f"attempt {found['attempt']} (epoch {found['epoch']}), restarts {found['restarts']}"
        f"/{found['max_restarts']}, node {found['node'] or '-'}"
    )
    table = Table(show_edge=False)
    table.add_column("task")
    table.add_column("state")
    table.add_column("progress")
    progress = found.get("progress", {})
    flow = found.get("flow") or {}
    for task_id, state in found["tasks"].items():
        shown = _progress_text(progress.get(task_id)) or items.get(task_id, "")
        table.add_row(escape(task_id + _flow_note(flow.get(task_id))), state, shown)
    for handler_id, state in (found.get("handlers") or {}).items():
        table.add_row(escape(f"{handler_id} (handler)"), state, "")
    out.print(table)
    if found["error"]:
        out.print(f"[red]error[/]: {escape(found['error'])}")


def _progress_text(detail: dict[str, Any] | None) -> str:
    """A copy's progress: "12000 rows, 5400 rows/s"."""
    if not detail or "rows" not in detail:
        return ""
    rate = detail.get("rows_per_second")
    return f"{detail['rows']} rows" + (f", {rate:g} rows/s" if rate else "")


def _flow_note(flow: dict[str, Any] | None) -> str:
    """`` (after load: failure [any] when ...)`` for a task whose flow is more than success dependencies."""
    if not flow:
        return ""
    after = ", ".join(f"{c['task']}: {c.get('on', 'success')}" for c in flow.get("depends_on") or [])
    mode = " [any]" if flow.get("mode") == "any" else ""
    when = f" when {flow['when']}" if flow.get("when") else ""
    return f" (after {after or '-'}{mode}{when})"


@app.command()
def runs(
    state: Annotated[RunState | None, typer.Option("--state", help="Only runs in this state.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List runs, newest first."""
    with exit_codes():
        found = _services().repository.list_runs(state)
    rows = [run_row(r) for r in found]
    if json_output:
        _print_json(rows)
        return
    table = Table(show_edge=False)
    for column in ("run", "package", "state", "attempt", "restarts", "node", "submitted"):
        # Ids are never cut: in a narrow terminal the other columns give way.
        table.add_column(column, no_wrap=column in ("run", "package"))
    for row in rows:
        table.add_row(
            *(
                "-" if row[k] is None else str(row[k])
                for k in ("run_id", "package", "state", "attempt", "restarts", "node")
            ),
            row["submitted_at"][:19],
        )
    out.print(table)


@app.command()
def events(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """The timeline of a run."""
    with exit_codes():
        rows = event_rows(_services().repository, run_id)
    if json_output:
        _print_json(rows)
        return
    table = Table(show_edge=False)
    for column in ("time", "event", "attempt", "node", "detail"):
        table.add_column(column)
    for row in rows:
        detail = " ".join(f"{k}={v}" for k, v in row["detail"].items() if k != "tasks" and v is not None)
        table.add_row(
            _clock(row["at"]),
            row["kind"],
            str(row["attempt"] or "-"),
            row["node"] or "-",
            escape(detail),
        )
    out.print(table)


@app.command()
def logs(
    run_id: RunIdArgument,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's lines.")] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, help="Only this attempt's lines.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print new lines until the run ends.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (JSON Lines).")
    ] = False,
) -> None:
    """The lines a run's tasks logged (ctx.log, shell output), masked, in order.

    With --follow, waits for new lines until the run ends, then exits like
    `submit --wait`: 0 if the run succeeded, 1 if it failed or was cancelled.
    """
    with exit_codes():
        repository = _services().repository
        rows = log_rows(repository, run_id, task=task, attempt=attempt)
        _print_logs(rows, json_output)
        if not follow:
            return
        last = max((row["id"] for row in rows if row["id"] is not None), default=0)
        while True:
            state = repository.run_row(run_id).state  # read first: the lines that ended the run come next
            rows = log_rows(repository, run_id, task=task, attempt=attempt, after=last)
            _print_logs(rows, json_output)
            last = max((row["id"] for row in rows), default=last)
            if state.finished:
                break
            time.sleep(FOLLOW_POLL_SECONDS)
    raise typer.Exit(EXIT_OK if state is RunState.SUCCEEDED else EXIT_FAILED)


FOLLOW_POLL_SECONDS = 0.5
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _print_logs(rows: list[dict[str, Any]], json_output: bool) -> None:
    for row in rows:
        if json_output:
            line = json.dumps(row, default=str)
        else:
            where = row["task"] + (f"[{row['item']}]" if row["item"] is not None else "")
            if row["attempt"] is not None:
                where += f" #{row['attempt']}"
            # A task's output may carry terminal escapes: shown, not obeyed.
            text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", row["message"])
            line = f"{_clock(row['at'])} {where} {row['level']:<7} {text}"
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


@app.command()
def cancel(run_id: RunIdArgument) -> None:
    """Cancel a run: the running attempt stops, the checkpoint is kept."""
    with exit_codes():
        found = Client(_services()).cancel(run_id)
    out.print(f"cancellation of {run_id} requested (state {found['state']})")


@app.command()
def resume(run_id: RunIdArgument) -> None:
    """Resume a failed or cancelled run from its checkpoint."""
    with exit_codes():
        Client(_services()).resume(run_id)
    out.print(f"resume of {run_id} requested")


@app.command()
def nodes(json_output: JsonOption = False) -> None:
    """Live worker nodes, their runs, last heartbeat and whether they read the queues yet."""
    with exit_codes():
        services = _services()
        rows = node_rows(services.repository, services.liveness, services.settings.lease_ttl)
    if json_output:
        _print_json(rows)
        return
    table = Table(show_edge=False)
    for column in ("node", "state", "concurrency", "last heartbeat", "runs", "ready"):
        table.add_column(column, no_wrap=column == "node")
    for row in rows:
        table.add_row(
            row["node"],
            row["state"],
            str(row["concurrency"] or "-"),
            _clock(row["last_heartbeat"]),
            ", ".join(row["runs"]) or "-",
            {True: "yes", False: "starting"}.get(row["ready"], "-"),
        )
    out.print(table)


def _clock(iso: str | None) -> str:
    """``HH:MM:SS.mmm`` of an ISO timestamp, ``-`` for none."""
    return datetime.fromisoformat(iso).strftime("%H:%M:%S.%f")[:12] if iso else "-"


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo's files for a look.")] = False,
    store: Annotated[
        DemoStore,
        typer.Option(
            "--store", help="Checkpoints in a directory, or in an embedded SeaweedFS bucket (the s3 extra)."
        ),
    ] = DemoStore.FILESYSTEM,
    copy: Annotated[
        bool, typer.Option("--copy", help="The ETL copy demo: a table copy resumes mid-flow, rows once.")
    ] = False,
) -> None:
    """The showcase: a node dies mid-run and the package finishes on another node."""
    from orchestrator.cli.demo import Demo, run_demo
    from orchestrator.cli.democopy import CopyDemo

    with exit_codes():
        report = run_demo(out, keep=keep, store=store.value, kind=CopyDemo if copy else Demo)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)
