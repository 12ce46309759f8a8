"""The package model: what a package is, how it is read and validated, and how to build one.

Modules: :mod:`~orchestrator.packages.model` (the pydantic model),
:mod:`~orchestrator.packages.kinds` (its enumerations),
:mod:`~orchestrator.packages.validation` (reading YAML/JSON, every problem at once),
:mod:`~orchestrator.packages.graph` (checks of the task graph and its templates),
:mod:`~orchestrator.packages.builder` (the same model from Python),
:mod:`~orchestrator.packages.variables` (typed variable values),
:mod:`~orchestrator.packages.templating` (``{{ vars.x }}`` / ``{{ outputs.t.k }}``),
:mod:`~orchestrator.packages.flow` (precedence constraints and what they decide),
:mod:`~orchestrator.packages.conditions` (``when:`` conditions in CEL),
:mod:`~orchestrator.packages.flowcheck` (validation of the control flow).
"""

from orchestrator.packages.builder import PackageBuilder
from orchestrator.packages.kinds import CheckpointUsage, VariableType
from orchestrator.packages.model import CheckpointSettings, ForeachItem, Package, Task, Variable, item_key
from orchestrator.packages.validation import load_package, parse_package

# Grouped by role, as the house style asks; RUF022 would sort the groups together.
__all__ = [  # noqa: RUF022
    # the model
    "CheckpointSettings",
    "CheckpointUsage",
    "ForeachItem",
    "Package",
    "Task",
    "Variable",
    "VariableType",
    "item_key",
    # reading and building
    "PackageBuilder",
    "load_package",
    "parse_package",
]
