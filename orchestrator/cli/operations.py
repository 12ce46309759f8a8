"""The operations commands: the package catalog (``deploy``), ``schedule`` and ``purge``.

``deploy`` takes either a file or a subcommand: ``orchestrator deploy FILE``
deploys, ``orchestrator deploy list|show|history`` read the catalog. A first
argument that names a subcommand is the subcommand; a file called ``list``
is deployed as ``orchestrator deploy ./list``.

They talk to the database only (``ORCHESTRATOR_DATABASE_URL``), except
``schedule run-now``, which submits through the queue like ``submit``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from checkpoints import validate_package_name
from orchestrator.cli.app import EXIT_FAILED, EXIT_OK, JsonOption, VarOption, app, err, exit_codes, out
from orchestrator.control.client import Client
from orchestrator.control.deployed import load_deployed, seal
from orchestrator.control.retention import Purger
from orchestrator.control.slots import Timing, parse_duration
from orchestrator.errors import ClusterUnavailable, InvalidInput, ScheduleInvalid
from orchestrator.packages.validation import load_package
from orchestrator.packages.variables import missing_required, parse_assignments, resolve
from orchestrator.runtime.services import Services
from orchestrator.runtime.settings import get_settings
from orchestrator.state.catalog import Catalog, Deployed
from orchestrator.state.models import Schedule
from orchestrator.state.retention import RetentionStore
from orchestrator.state.schedules import ScheduleSpec, ScheduleStore
from orchestrator.state.states import CatchUp, Overlap
from orchestrator.state.types import utcnow

DEPLOY_FILE = "file"  # the hidden subcommand that `deploy FILE` becomes


class DeployGroup(TyperGroup):
    """``deploy FILE`` or ``deploy list|show|history ...``: a first argument naming no
    subcommand is the file to deploy."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's own click Context
        first = next((arg for arg in args if not arg.startswith("-")), None)
        if first is not None and first not in self.commands:
            args = [DEPLOY_FILE, *args]
        return super().parse_args(ctx, args)


deploy_app = typer.Typer(
    cls=DeployGroup,
    help="orchestrator deploy FILE [--json]: validate a package file and deploy it as the next "
    "version of its name. The commands below read the catalog.",
    no_args_is_help=True,
)
schedule_app = typer.Typer(help="Schedules: deployed packages run by cron or interval.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")
app.add_typer(schedule_app, name="schedule")

NameArgument = Annotated[str, typer.Argument(help="A deployed package's name.")]
ScheduleArgument = Annotated[str, typer.Argument(help="The schedule's name.")]
VersionOption = Annotated[
    int | None, typer.Option("--version", min=1, help="A version [default: the latest].")
]


def _services() -> Services:
    return Services(get_settings())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


def _catalog() -> Catalog:
    return Catalog(_services().repository.sessions)


def _schedules() -> ScheduleStore:
    return ScheduleStore(_services().repository.sessions)


# -- deploy ----------------------------------------------------------------------------------------


@deploy_app.command(DEPLOY_FILE, hidden=True)
def deploy_file(
    file: Annotated[Path, typer.Argument(help="Package file (YAML or JSON).")],
    json_output: JsonOption = False,
) -> None:
    """Validate a package file and deploy it as the package's next version."""
    with exit_codes():
        package = load_package(file)
        deployed, created = _catalog().deploy(package)
    if json_output:
        _print_json({**deployed.as_dict(), "created": created})
    elif created:
        out.print(f"deployed [bold]{deployed.name}[/] v{deployed.version} ({deployed.definition_hash[:12]})")
    else:
        out.print(f"unchanged: {deployed.name} v{deployed.version} already has this definition")


@deploy_app.command("list")
def deploy_list(json_output: JsonOption = False) -> None:
    """Every deployed package with its latest version."""
    with exit_codes():
        found = _catalog().latest_versions()
    _versions(found, json_output, title=None)


@deploy_app.command("history")
def deploy_history(name: NameArgument, json_output: JsonOption = False) -> None:
    """Every version of a deployed package, newest first."""
    with exit_codes():
        found = _catalog().history(name)
    _versions(found, json_output, title=f"versions of {name}")


def _versions(found: list[Deployed], json_output: bool, title: str | None) -> None:
    if json_output:
        _print_json([d.as_dict() for d in found])
        return
    table = Table(title=title, show_edge=False)
    for column in ("package", "version", "definition", "deployed", "description"):
        table.add_column(column, no_wrap=column == "package")
    for d in found:
        when = d.deployed_at.isoformat()[:19]
        table.add_row(d.name, str(d.version), d.definition_hash[:12], when, escape(d.description))
    out.print(table)


@deploy_app.command("show")
def deploy_show(name: NameArgument, version: VersionOption = None, json_output: JsonOption = False) -> None:
    """A deployed version and its definition."""
    with exit_codes():
        catalog = _catalog()
        deployed = catalog.get(name, version)
        definition = catalog.definition(deployed)
    if json_output:
        _print_json({**deployed.as_dict(), "definition": definition})
        return
    out.print(
        f"[bold]{deployed.name}[/] v{deployed.version}, deployed {deployed.deployed_at.isoformat()[:19]}"
    )
    sys.stdout.write(yaml.safe_dump(definition, sort_keys=False))


# -- schedule --------------------------------------------------------------------------------------

CronOption = Annotated[str | None, typer.Option("--cron", help='A cron expression, e.g. "0 2 * * *".')]
EveryOption = Annotated[str | None, typer.Option("--every", help="An interval: 30s, 15m, 1h30m, 1d.")]
ZoneOption = Annotated[str | None, typer.Option("--timezone", help="Time zone of --cron [default: UTC].")]
CatchUpOption = Annotated[CatchUp | None, typer.Option("--catchup", help="Missed slots [default: latest].")]
OverlapOption = Annotated[
    Overlap | None, typer.Option("--overlap", help="While the previous run is active [default: skip].")
]


def _timing(cron: str | None, every: str | None, timezone: str | None) -> Timing:
    seconds = parse_duration(every) if every is not None else None
    return Timing(cron=cron, every=seconds, timezone=timezone or "UTC")


def _variables(package: str, version: int | None, assignments: list[str]) -> dict[str, Any]:
    """``--var`` values checked against the deployed version, stored as runs store them.

    Only the values given are kept (the defaults are the package's at each slot); this
    shell's ``ORCHESTRATOR_VAR_*`` do not count. ``sensitive`` names the values never shown.
    """
    _, found = load_deployed(_services().repository, package, version)
    given = parse_assignments(assignments)
    values = resolve(found, given, environ={})
    missing_required(found, values)
    stored = seal(found, {name: values[name] for name in given}, get_settings().secret())
    stored["sensitive"] = sorted(name for name in given if found.variables[name].sensitive)
    return stored


@schedule_app.command("add")
def schedule_add(
    name: ScheduleArgument,
    package: NameArgument,
    cron: CronOption = None,
    every: EveryOption = None,
    timezone: ZoneOption = None,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Pin a version [default: latest].")
    ] = None,
    var: VarOption = None,
    catchup: CatchUpOption = None,
    overlap: OverlapOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run a deployed package at every slot of a cron expression or an interval."""
    with exit_codes():
        _check_name(name)
        timing = _timing(cron, every, timezone)
        spec = ScheduleSpec(
            name=name,
            package=package,
            version=version,
            cron=timing.cron,
            every_seconds=timing.every,
            timezone=timing.timezone,
            variables=_variables(package, version, var or []),
            catchup=catchup or CatchUp.LATEST,
            overlap=overlap or Overlap.SKIP,
        )
        row = _schedules().add(spec)
    _show(row, json_output, verb="added")


def _check_name(name: str) -> None:
    try:
        validate_package_name(name)
    except ValueError:
        raise ScheduleInvalid(
            f"invalid schedule name {name!r}: expected [a-z0-9][a-z0-9_-]{{0,63}}"
        ) from None


@schedule_app.command("update")
def schedule_update(
    name: ScheduleArgument,
    package: Annotated[str | None, typer.Option("--package", help="Another deployed package.")] = None,
    cron: CronOption = None,
    every: EveryOption = None,
    timezone: ZoneOption = None,
    version: Annotated[int | None, typer.Option("--version", min=1, help="Pin a version.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Run the latest version (unpin).")] = False,
    var: VarOption = None,
    catchup: CatchUpOption = None,
    overlap: OverlapOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change a schedule; a new --cron, --every or --timezone restarts it from its next slot."""
    with exit_codes():
        store = _schedules()
        row = store.get(name)
        changes: dict[str, Any] = {"package": package or row.package}
        changes["version"] = None if latest else (version if version is not None else row.version)
        if cron is not None or every is not None or timezone is not None:
            timing = _new_timing(row, cron, every, timezone)
            changes.update(cron=timing.cron, every_seconds=timing.every, timezone=timing.timezone)
        if var or package is not None or version is not None or latest:
            changes["variables"] = _updated_variables(row, changes, var or [])
        changes.update({k: v for k, v in (("catchup", catchup), ("overlap", overlap)) if v is not None})
        row = store.update(name, **changes)
    _show(row, json_output, verb="updated")


def _new_timing(row: Schedule, cron: str | None, every: str | None, timezone: str | None) -> Timing:
    """The timing an update gives: a new --every or --cron replaces the old one; --timezone alone
    re-reads the schedule's cron expression."""
    if every is not None:
        return _timing(None, every, timezone)
    if cron is not None:
        return _timing(cron, None, timezone or row.timezone)
    return _timing(row.cron, None if row.cron else str(row.every_seconds), timezone)


def _updated_variables(row: Schedule, changes: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """The schedule's values with ``--var`` over them, checked against the package it will run."""
    kept = {
        k: json.dumps(v) if not isinstance(v, str) else v for k, v in row.variables.get("values", {}).items()
    }
    given = {**kept, **parse_assignments(assignments)}
    merged = _variables(changes["package"], changes["version"], [f"{k}={v}" for k, v in given.items()])
    merged["secrets"] = {**row.variables.get("secrets", {}), **merged["secrets"]}
    merged["sensitive"] = sorted({*row.variables.get("sensitive", []), *merged["sensitive"]})
    return merged


@schedule_app.command("list")
def schedule_list(json_output: JsonOption = False) -> None:
    """Every schedule, its next slot and its last run."""
    with exit_codes():
        rows = _schedules().all()
    if json_output:
        _print_json([_schedule_json(row) for row in rows])
        return
    table = Table(show_edge=False)
    for column in ("schedule", "package", "when", "next slot", "last run", "state"):
        table.add_column(column, no_wrap=column in ("schedule", "package", "last run"))
    for row in rows:
        shown = _schedule_json(row)
        table.add_row(
            row.name,
            f"{row.package}" + (f" v{row.version}" if row.version else ""),
            escape(shown["timing"]),
            (shown["next_slot_at"] or "-")[:19],
            row.last_run_id or "-",
            "paused" if row.paused else "active",
        )
    out.print(table)


@schedule_app.command("show")
def schedule_show(name: ScheduleArgument, json_output: JsonOption = False) -> None:
    """A schedule in full."""
    with exit_codes():
        row = _schedules().get(name)
    _show(row, json_output, verb=None)


@schedule_app.command("pause")
def schedule_pause(name: ScheduleArgument, json_output: JsonOption = False) -> None:
    """Stop firing the schedule (its slots while paused never run)."""
    with exit_codes():
        row = _schedules().set_paused(name, True)
    _show(row, json_output, verb="paused")


@schedule_app.command("resume")
def schedule_resume(name: ScheduleArgument, json_output: JsonOption = False) -> None:
    """Fire the schedule again, from its next slot."""
    with exit_codes():
        row = _schedules().set_paused(name, False)
    _show(row, json_output, verb="resumed")


@schedule_app.command("remove")
def schedule_remove(name: ScheduleArgument, json_output: JsonOption = False) -> None:
    """Delete the schedule (its runs stay)."""
    with exit_codes():
        _schedules().remove(name)
    _print_json({"removed": name}) if json_output else out.print(f"removed schedule {name}")


@schedule_app.command("run-now")
def schedule_run_now(name: ScheduleArgument, json_output: JsonOption = False) -> None:
    """Start a run of the schedule's package now, outside its slots and its overlap policy."""
    with exit_codes():
        run_id = Client(_services()).run_schedule(name)
    _print_json({"run_id": run_id, "schedule": name}) if json_output else out.print(run_id)


def _schedule_json(row: Schedule) -> dict[str, Any]:
    timing = Timing(row.cron, row.every_seconds, row.timezone)
    upcoming = row.next_slot_at or timing.next_after(utcnow())
    hidden = set(row.variables.get("sensitive", [])) | set(row.variables.get("secrets", {}))
    values = {k: "(sensitive)" if k in hidden else v for k, v in row.variables.get("values", {}).items()}
    return {
        "name": row.name,
        "package": row.package,
        "version": row.version,
        "timing": timing.describe(),
        "cron": row.cron,
        "every_seconds": row.every_seconds,
        "timezone": row.timezone,
        "catchup": row.catchup.value,
        "overlap": row.overlap.value,
        "paused": row.paused,
        "next_slot_at": None if row.paused else upcoming.isoformat(),
        "queued_slot_at": row.queued_slot_at.isoformat() if row.queued_slot_at else None,
        "last_slot_at": row.last_slot_at.isoformat() if row.last_slot_at else None,
        "last_run_id": row.last_run_id,
        "variables": {**values, **dict.fromkeys(row.variables.get("secrets", {}), "(sensitive)")},
    }


def _show(row: Schedule, json_output: bool, *, verb: str | None) -> None:
    shown = _schedule_json(row)
    if json_output:
        _print_json(shown)
        return
    if verb:
        out.print(f"{verb} schedule [bold]{row.name}[/]")
    for key in (
        "package",
        "version",
        "timing",
        "catchup",
        "overlap",
        "paused",
        "next_slot_at",
        "last_run_id",
    ):
        value = shown[key]
        out.print(f"  {key:<13} {escape('-' if value is None else str(value))}")


# -- purge -----------------------------------------------------------------------------------------


def _redis_forget(services: Services) -> tuple[Callable[[list[str]], int] | None, str | None]:
    """The purged runs' Redis keys go too when a broker is configured or a local cluster runs."""
    try:
        return services.liveness.forget, None
    except ClusterUnavailable as exc:
        return None, f"note: the purged runs' epoch keys stay in Redis ({exc})"


@app.command()
def purge(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Runs finished longer ago [default: ORCHESTRATOR_RETENTION_DAYS]."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
    include_failed: Annotated[
        bool,
        typer.Option("--include-failed", help="Failed and cancelled runs too, kept checkpoints included."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Remove finished runs (attempts, events, task logs, checkpoint directories); never an active run."""
    settings = get_settings()
    with exit_codes():
        if older_than is not None:
            age = timedelta(seconds=parse_duration(older_than))
        elif settings.retention_days > 0:
            age = timedelta(days=settings.retention_days)
        else:
            raise InvalidInput("ORCHESTRATOR_RETENTION_DAYS is 0 (no retention): give --older-than")
        services = _services()
        forget, note = _redis_forget(services)
        purger = Purger(RetentionStore(services.repository.sessions), services.store, forget=forget)
        report = purger.purge(age, include_failed=include_failed, dry_run=dry_run)
    if json_output:
        _print_json(report.as_dict())
    else:
        verb = "would remove" if dry_run else "removed"
        out.print(
            f"{verb} {report.runs} run(s) finished before {report.cutoff[:19]}: "
            f"{report.attempts} attempt(s), {report.tasks} task record(s), {report.events} event(s), "
            f"{report.logs} task log line(s), "
            f"{report.checkpoints} checkpoint "
            f"director(ies); kept {report.kept} failed or cancelled run(s) with a checkpoint"
        )
        if report.errors:
            out.print(f"[red]{report.errors} checkpoint director(ies) could not be removed[/] (see the log)")
    if note and report.runs and not dry_run:
        err.print(note)
    raise typer.Exit(EXIT_FAILED if report.errors else EXIT_OK)
