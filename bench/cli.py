"""CLI start: how long ``orchestrator status RUN_ID`` takes as a whole process.

Four commands, each a new process, rounds interleaved (A B C D, A B C D...):

* ``status``: ``python -m orchestrator status RUN_ID`` of a finished run in a SQLite state
  directory made by the bench (the run is recorded in process first, no broker);
* ``status, CEL built at start``: the same command in a process that builds the condition
  language's parser once the command line is imported, as every command did (while importing
  it) before the parser was built on first use;
* ``status, as before``: the same command in a process that first does what every command
  did at start until Alembic and CEL were imported only when needed: import CEL's modules, and
  migrate through Alembic (its modules, its reading of the migration scripts, its version check)
  although the database is at head. It then runs the command as it is now, whose own check of
  the version row is left in (a few milliseconds more than before);
* ``python -c pass``: the interpreter's own start, the floor under any command.

The figure is the median wall time of each; the ratios are against the first. Bytecode caches
are used as an installed package would (``PYTHONDONTWRITEBYTECODE`` is cleared).

Run: ``python -m bench.cli [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
import subprocess
import tempfile
import time

from bench import common as C

EAGER = (
    "import sys; from orchestrator.cli import main; from orchestrator.packages import conditions; "
    "conditions.warm(); sys.argv = ['orchestrator', *sys.argv[1:]]; main()"
)

AS_BEFORE = """
import os, sys
import celpy
from alembic import command
from orchestrator.state.engine import make_engine
from orchestrator.state.migrate import alembic_config
engine = make_engine(os.environ["ORCHESTRATOR_DATABASE_URL"])
with engine.begin() as connection:
    command.upgrade(alembic_config(connection), "head")
engine.dispose()
from orchestrator.cli import main
sys.argv = ["orchestrator", *sys.argv[1:]]
main()
"""


def record_run(state: Path) -> str:
    """A finished run in the state directory's SQLite database, as ``status`` reads it."""
    from orchestrator.packages.validation import parse_package
    from orchestrator.state.engine import make_engine
    from orchestrator.state.migrate import upgrade
    from orchestrator.state.repository import Repository
    from orchestrator.state.states import RunState

    engine = make_engine(f"sqlite:///{state / 'state.db'}")
    upgrade(engine)
    repository = Repository(engine)
    package = parse_package({"name": "cli", "tasks": [{"id": "only", "python": "bench.tasks:noop"}]})
    run_id, _ = repository.create_run("cli-000001", package, {}, max_restarts=0, epoch=1)
    repository.end_run(run_id, RunState.SUCCEEDED, None)
    engine.dispose()
    return run_id


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    args = C.parser(__doc__.splitlines()[0]).parse_args()
    rounds = 3 if args.quick else 15
    with tempfile.TemporaryDirectory(prefix="orch-bench-cli-") as tmp:
        workdir = Path(tmp)
        state = workdir / ".orchestrator"
        state.mkdir()
        run_id = record_run(state)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(C.ROOT), env.get("PYTHONPATH")]))
        env["ORCHESTRATOR_DATABASE_URL"] = f"sqlite:///{state / 'state.db'}"
        commands = {
            "status": [sys.executable, "-m", "orchestrator", "status", run_id],
            "status, as before": [sys.executable, "-c", AS_BEFORE, "status", run_id],
            "status, CEL built at start": [sys.executable, "-c", EAGER, "status", run_id],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        for command in commands.values():  # warm-up: bytecode caches written, files in the page cache
            timed(command, env, workdir)
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, command in commands.items():
                seconds[name].append(timed(command, env, workdir))
    base = C.percentile(seconds["status"], 50)
    rows = []
    for name, values in seconds.items():
        p50 = C.percentile(values, 50)
        rows.append([name, rounds, p50, min(values), max(values), C.ratio(p50, base)])
    print(
        C.table(
            "whole-process wall seconds, rounds interleaved (median)",
            ["command", "rounds", "p50 s", "min s", "max s", "ratio to status"],
            rows,
        )
    )
    C.write_result(args, "cli", {"seconds": seconds, "rounds": rounds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
