"""The commands that need no cluster: ``validate`` and ``run`` (the dtexec equivalent)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from checkpoints import is_s3_url, open_store, validate_run_id
from orchestrator.cli.app import EXIT_FAILED, EXIT_OK, JsonOption, VarOption, app, err, exit_codes, fail, out
from orchestrator.cli.console import ProgressDisplay, print_result
from orchestrator.errors import PackageInvalid
from orchestrator.packages.flowcheck import HANDLER_SECTIONS
from orchestrator.packages.kinds import CheckpointUsage
from orchestrator.packages.model import Package
from orchestrator.packages.validation import load_package
from orchestrator.packages.variables import parse_assignments, resolve
from orchestrator.runtime.settings import get_settings
from workers.errors import AttemptFenced
from workers.etl import check_connected
from workers.executor import ExecutionOptions, RunRequest, RunResult, execute


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Package file (YAML or JSON).")],
    connect: Annotated[
        bool,
        typer.Option(
            "--connect",
            help="Also open each connection the package names and check its copy tasks read-only "
            "(tables, keys, NULL keys, columns); passwords from --var or ORCHESTRATOR_CONN_<NAME>_PASSWORD.",
        ),
    ] = False,
    var: VarOption = None,
) -> None:
    """Validate a package: exit 0, or 2 with every error listed."""
    with exit_codes():
        package = load_package(file)
        if connect:
            issues = check_connected(package, resolve(package, parse_assignments(var or [])))
            if issues:
                raise PackageInvalid(issues, source=f"{file} (--connect)")
    tasks = len(package.tasks)
    out.print(
        f"[green]ok[/]: package {package.name!r}, {tasks} task(s), definition {package.definition_hash[:12]}"
    )
    for line in flow_lines(package):
        out.print(escape(line), highlight=False)
    if connect:
        names = sorted(package.connections)
        out.print(escape(f"  connections checked: {', '.join(names) or 'none'}"), highlight=False)


def flow_lines(package: Package) -> list[str]:
    """The control flow ``validate`` shows: constraints other than plain success, modes,
    conditions, and event handlers (docs/control-flow.md)."""
    lines: list[str] = []
    for task in package.tasks:
        plain = all(c.on == "success" for c in task.constraints) and task.depends_on_mode == "all"
        if plain and task.when is None:
            continue
        after = ", ".join(f"{c.task} ({c.on.value})" for c in task.constraints) or "start"
        line = f"  {task.id}: after {after}" + (
            f" [{task.depends_on_mode.value}]" if len(task.constraints) > 1 else ""
        )
        lines.append(line + (f" when {task.when}" if task.when is not None else ""))
    for section in HANDLER_SECTIONS:
        handlers = package.handlers(section)
        if handlers:
            lines.append(f"  {section}: " + ", ".join(h.id for h in handlers))
    return lines


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def result_json(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "package": result.package,
        "state": result.state.value,
        "tasks": {task_id: state.value for task_id, state in result.tasks.items()},
        "error": result.error,
        "skipped": result.skipped,
        "handlers": {key: state.value for key, state in result.handlers.items()},
        "resumed": result.resumed,
        "checkpoint_kept": result.checkpoint_kept,
    }


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Package file (YAML or JSON).")],
    var: VarOption = None,
    checkpoint_dir: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-dir",
            help="A directory or s3://bucket/prefix [default: ORCHESTRATOR_CHECKPOINT_ROOT].",
        ),
    ] = None,
    restart: Annotated[
        CheckpointUsage | None,
        typer.Option("--restart", help="Override the package's checkpoint usage."),
    ] = None,
    run_id: Annotated[
        str, typer.Option("--run-id", help="Checkpoint identity; a rerun with it resumes.")
    ] = "local",
    json_output: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run a package in this process with checkpoints (the dtexec equivalent)."""
    settings = get_settings()
    with exit_codes():
        package = load_package(file)
        validate_run_id(run_id)
        variables = parse_assignments(var or [])
        root = checkpoint_dir or settings.checkpoint_root
        store = open_store(root, s3=settings.s3_options() if is_s3_url(root) else None)
        saving = package.checkpoint.save
        if saving:
            store.check()  # a root it cannot write: one clear line now, not a traceback later
        # Each local run is a new attempt: a newer epoch fences an older process still running.
        epoch = store.next_epoch(package.name, run_id) if saving else store.epoch(package.name, run_id) + 1
        request = RunRequest(package, run_id, variables, epoch=epoch, attempt=epoch, usage=restart)
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        signal.signal(signal.SIGTERM, _raise_interrupt)
        console = err if json_output else out
        display = ProgressDisplay(package, console, quiet=quiet)
        options = ExecutionOptions(
            store=store,
            secret_key=settings.secret(),
            hooks=display,
            keep_checkpoint=settings.keep_checkpoints,
            allowed_modules=settings.task_module_roots,
            allow_shell=settings.allow_shell,
        )
        try:
            with display:
                result = execute(request, options)
        except AttemptFenced as exc:
            fail(f"another run of {package.name!r} with run id {run_id!r} took over: {exc}")
    if json_output:
        out.print_json(json.dumps(result_json(result)))
    elif not quiet:
        print_result(out, result)
    raise typer.Exit(EXIT_OK if result.succeeded else EXIT_FAILED)
