"""The ``orchestrator`` command line.

Exit codes everywhere: 0 success, 1 the run failed (or was cancelled),
2 bad input (an invalid package, a bad variable, a checkpoint that does not
fit); nothing ran in the last case.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import kombu.exceptions
import redis
import typer
from rich.console import Console
from rich.markup import escape

from checkpoints import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    FilesystemCheckpointStore,
    InvalidIdentifier,
    validate_run_id,
)
from orchestrator.console import ProgressDisplay, print_result
from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.logs import configure_logging
from orchestrator.package import CheckpointUsage, load_package
from orchestrator.settings import get_settings
from orchestrator.variables import parse_assignments
from workers.errors import AttemptFenced
from workers.executor import ExecutionOptions, RunRequest, RunResult, execute

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

app = typer.Typer(
    name="orchestrator",
    help="Checkpoint-based package restart orchestrator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

VarOption = Annotated[
    list[str] | None,
    typer.Option("--var", help="Set a variable: NAME=VALUE (repeatable)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Turn the orchestrator's errors into a clear message and the documented exit code."""
    try:
        yield
    except (InvalidInput, InvalidIdentifier, CheckpointMismatch, CheckpointNotFound) as exc:
        fail(str(exc), EXIT_INVALID)
    except CheckpointCorrupt as exc:
        fail(f"checkpoint unusable: {exc}")
    except (OrchestratorError, CheckpointError) as exc:
        fail(str(exc))
    except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
        # Wrong password, TLS refused, server down: say so, not a traceback (never the URL).
        fail(f"cannot use the broker (ORCHESTRATOR_BROKER_URL): {exc}")


@app.callback()
def _setup(
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON log lines.")] = False,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO...")] = None,
) -> None:
    settings = get_settings()
    configure_logging(log_level or settings.log_level, json_lines=log_json or settings.log_json)


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="Package file (YAML or JSON).")]) -> None:
    """Validate a package: exit 0, or 2 with every error listed."""
    with exit_codes():
        package = load_package(file)
    tasks = len(package.tasks)
    out.print(
        f"[green]ok[/]: package {package.name!r}, {tasks} task(s), definition {package.definition_hash[:12]}"
    )


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
        "resumed": result.resumed,
        "checkpoint_kept": result.checkpoint_kept,
    }


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Package file (YAML or JSON).")],
    var: VarOption = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option("--checkpoint-dir", help="Checkpoint root [default: ORCHESTRATOR_CHECKPOINT_ROOT]."),
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
        store = FilesystemCheckpointStore(checkpoint_dir or settings.checkpoint_root)
        saving = package.checkpoint.save
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


def main() -> None:
    """Console-script entry point."""
    from orchestrator import cluster_cli  # noqa: F401 - registers the cluster commands

    app()
