"""Control flow as SSIS has it: precedence constraints, their logical mode, and what they decide.

A task's ``depends_on`` entries are precedence constraints: a plain id means
``{task: id, on: success}``; ``on`` may be ``success``, ``failure`` or
``completion``. ``depends_on_mode`` combines them: ``all`` (SSIS logical AND,
the default) or ``any`` (logical OR). Whether a task may run is decided here,
from the outcomes of the tasks it names (:func:`decide`), without any I/O:

* a constraint is *met* when its task ended as it asks: ``success`` by
  succeeding, ``failure`` by failing, ``completion`` by either. A task that did
  not run (skipped, or blocked by an upstream failure) meets no constraint,
  whatever its kind (SSIS evaluates a constraint only once its task executed);
* ``all``: the task runs once every constraint is met, and is skipped as soon
  as one can no longer be; ``any``: it runs as soon as one is met, and is
  skipped once none can be;
* ``fail_package_on_failure`` never makes a success constraint met.

See docs/control-flow.md for the whole contract (conditions, handlers, the run's state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, StringConstraints, Tag, model_validator

TaskId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,64}$")]


class On(StrEnum):
    """The kind of a precedence constraint (SSIS: Success, Failure, Completion)."""

    SUCCESS = "success"
    FAILURE = "failure"
    COMPLETION = "completion"


class DependsMode(StrEnum):
    """How several constraints of one task combine (SSIS: logical AND, logical OR)."""

    ALL = "all"
    ANY = "any"


class Outcome(StrEnum):
    """How an upstream task ended, as its constraints see it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # did not run: skipped, or blocked by an upstream failure


class Decision(StrEnum):
    WAIT = "wait"  # some outcome it needs is not known yet
    RUN = "run"
    SKIP = "skip"  # its constraints can no longer be met


class Constraint(BaseModel):
    """``{task: id, on: success|failure|completion}`` in ``depends_on``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskId
    on: On = On.SUCCESS

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the key `on` as the boolean true: take it back as "on".
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data


def _entry_kind(value: Any) -> str:
    return "id" if isinstance(value, str) else "constraint"


# One branch per entry, chosen by its type: a plain id, or a constraint mapping (so a bad
# mapping is reported once, not also as "expected a string").
DependsOnEntry = Annotated[
    Annotated[TaskId, Tag("id")] | Annotated[Constraint, Tag("constraint")],
    Discriminator(_entry_kind),
]


def constraint_of(entry: str | Constraint) -> Constraint:
    """The constraint a ``depends_on`` entry stands for (a plain id is a success constraint)."""
    return Constraint(task=entry) if isinstance(entry, str) else entry


def met(constraint: Constraint, outcome: Outcome) -> bool:
    """True if ``outcome`` of the constraint's task satisfies it."""
    if outcome is Outcome.SKIPPED:
        return False
    if constraint.on is On.COMPLETION:
        return True
    return (constraint.on is On.SUCCESS) == (outcome is Outcome.SUCCEEDED)


def decide(constraints: Sequence[Constraint], mode: DependsMode, outcomes: Mapping[str, Outcome]) -> Decision:
    """Whether a task with these constraints runs, is skipped, or must wait.

    ``outcomes`` holds the tasks that ended so far; a task without constraints runs.
    """
    if not constraints:
        return Decision.RUN
    known = [(c, outcomes[c.task]) for c in constraints if c.task in outcomes]
    results = [met(c, outcome) for c, outcome in known]
    if mode is DependsMode.ALL:
        if not all(results):
            return Decision.SKIP
        return Decision.RUN if len(known) == len(constraints) else Decision.WAIT
    if any(results):
        return Decision.RUN
    return Decision.SKIP if len(known) == len(constraints) else Decision.WAIT


def handled_failures(constraints: Iterable[Sequence[Constraint]]) -> set[str]:
    """The tasks that some ``failure`` constraint among these names: their failures are handled."""
    return {c.task for group in constraints for c in group if c.on is On.FAILURE}
