"""The ``orchestrator`` command line and what only it runs: the local cluster, its embedded
broker and the demo. The one part of the project that imports both the control plane and
the workers.

Modules: :mod:`~orchestrator.cli.app` (the Typer app, exit codes), :mod:`~orchestrator.cli.local`
(``validate``, ``run``), :mod:`~orchestrator.cli.cluster` (the cluster commands),
:mod:`~orchestrator.cli.console` (live progress), :mod:`~orchestrator.cli.localcluster`
(``orchestrator up``), :mod:`~orchestrator.cli.embedded` (the embedded broker),
:mod:`~orchestrator.cli.demo`, :mod:`~orchestrator.cli.web` (``orchestrator ui``),
:mod:`~orchestrator.cli.operations` (``deploy``, ``schedule``, ``purge``).
"""

# Importing a module registers its commands, in this order in --help.
# isort: off
from orchestrator.cli import local  # noqa: F401
from orchestrator.cli import cluster  # noqa: F401
from orchestrator.cli import web  # noqa: F401
from orchestrator.cli import operations  # noqa: F401
from orchestrator.cli.app import app

# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
