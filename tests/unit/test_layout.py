"""The folder listing is the architecture: the import rules between its rooms, checked.

The import graph is built by grimp (import-linter's engine) from the source,
every import counted, including those inside functions:

* ``checkpoints`` imports nothing of the orchestrator or the workers;
* the orchestrator's core (everything under ``orchestrator`` but its command
  line) never imports the workers or the command line;
* the workers never import the command line: only it imports both sides;
* no module imports another that imports it back, directly or through others.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from functools import cache
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("checkpoints", "orchestrator", "workers")


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def imports_of(module: str) -> set[str]:
    return {m for m in graph().find_modules_directly_imported_by(module) if under(m, *PACKAGES)}


def test_checkpoints_import_nothing_of_the_others() -> None:
    modules = {m for m in graph().modules if under(m, "checkpoints")}
    assert [
        f"{source} -> {target}"
        for source in sorted(modules)
        for target in imports_of(source)
        if not under(target, "checkpoints")
    ] == []


def test_the_orchestrator_core_imports_neither_the_workers_nor_the_command_line() -> None:
    core = {m for m in graph().modules if under(m, "orchestrator") and not under(m, "orchestrator.cli")}
    core.discard("orchestrator.__main__")  # `python -m orchestrator` is the command line
    forbidden = [
        f"{source} -> {target}"
        for source in sorted(core)
        for target in imports_of(source)
        if under(target, "workers", "orchestrator.cli")
    ]
    assert forbidden == []


def test_only_the_command_line_imports_both_sides() -> None:
    workers = {m for m in graph().modules if under(m, "workers")}
    assert [
        f"{source} -> {target}"
        for source in sorted(workers)
        for target in imports_of(source)
        if under(target, "orchestrator.cli")
    ] == []


def test_no_module_imports_another_that_imports_it_back() -> None:
    cycles = []
    for module in sorted(graph().modules):
        for imported in sorted(imports_of(module)):
            chain = graph().find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                cycles.append(" -> ".join((module, *chain)))
    assert cycles == []


def test_the_top_of_the_orchestrator_holds_at_most_a_dozen_entries() -> None:
    entries = sorted(p.name for p in (ROOT / "orchestrator").iterdir() if p.name != "__pycache__")
    assert len(entries) <= 12, entries


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("workers.context", "TaskContext"),
        ("orchestrator.builder", "PackageBuilder"),
        ("orchestrator.submission", "Client"),
        ("orchestrator.packages", "PackageBuilder"),
        ("orchestrator.control.client", "Client"),
    ],
)
def test_the_public_names_keep_their_import_paths(module: str, name: str) -> None:
    assert isinstance(getattr(importlib.import_module(module), name), type)


def test_the_old_paths_re_export_the_same_objects() -> None:
    from orchestrator.builder import PackageBuilder as OldBuilder
    from orchestrator.control.client import Client
    from orchestrator.packages.builder import PackageBuilder
    from orchestrator.submission import Client as OldClient

    assert OldBuilder is PackageBuilder
    assert OldClient is Client


def test_a_command_that_evaluates_no_condition_does_not_build_the_cel_parser() -> None:
    """Building CEL's parser costs about 0.1 s: ``status`` and the other commands import
    everything but build it only for a condition (the scheduler and the worker nodes build it
    when they start)."""
    code = (
        "import orchestrator.cli, orchestrator.cli.app\n"
        "from orchestrator.packages import conditions\n"
        "assert conditions._environment.cache_info().currsize == 0, 'built at import'\n"
        "import sys\n"
        "assert 'celpy' not in sys.modules and 'lark' not in sys.modules, 'CEL imported'\n"
        "conditions.warm()\n"
        "assert conditions._environment.cache_info().currsize == 1\n"
        "assert conditions.evaluate('vars.x > 1', {'x': 2}, {}) is True\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
