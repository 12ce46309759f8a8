"""The ``orchestrator`` command line: the Typer app, its shared options and exit codes.

Exit codes everywhere: 0 success, 1 the run failed (or was cancelled),
2 bad input (an invalid package, a bad variable, a checkpoint that does not
fit); nothing ran in the last case.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Annotated, NoReturn

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
    InvalidIdentifier,
)
from orchestrator.errors import InvalidInput, NoBrokerServer, OrchestratorError
from orchestrator.observability.logs import configure_logging
from orchestrator.runtime.settings import get_settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

app = typer.Typer(
    name="orchestrator",
    help="Checkpoint-based package restart orchestrator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
PIPED_WIDTH = 200
"""The width of what is written to a pipe or a file, unless ``COLUMNS`` says otherwise: Rich would
take 80 columns there and cut run ids short in tables, where a script or a log needs them whole."""


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPED_WIDTH
    return console


out = _console()
err = _console(stderr=True)

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
    except (InvalidInput, NoBrokerServer, InvalidIdentifier, CheckpointMismatch, CheckpointNotFound) as exc:
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
