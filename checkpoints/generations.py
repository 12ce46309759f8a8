"""Reading a run's checkpoint from its generations: the newest readable snapshot plus journals.

A generation ``g`` is snapshot ``g`` (the whole checkpoint when the generation
began) and journal ``g`` (the changes since, in order). A store keeps the
newest generation and the one before it. Loading takes the newest snapshot
that decodes and replays its journal and the journals of every newer
generation on it: a record is absolute (:func:`~checkpoints.journal.apply`), so
the journal of a generation whose snapshot is damaged still applies on top of
the previous one, and nothing a later journal recorded is lost to the fallback.

Every backend reads through :func:`read_generations`, so they fall back, warn
and fail identically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from checkpoints.errors import CheckpointCorrupt
from checkpoints.format import Checkpoint, decode
from checkpoints.journal import apply, read_journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """How to read one generation's snapshot and journal (``None``: that part is missing).

    ``snapshot_name`` and ``journal_name`` name the parts in messages (paths or keys).
    """

    number: int
    snapshot: Callable[[], bytes] | None
    journal: Callable[[], bytes] | None
    snapshot_name: str
    journal_name: str


def read_generations(
    generations: Sequence[Generation],
    *,
    package: str,
    run_id: str,
    where: str,
    logger: logging.Logger = log,
) -> Checkpoint | None:
    """The run's checkpoint, or None when there is no generation at all.

    Raise :class:`CheckpointCorrupt` when no snapshot is readable (naming every
    failure). A fallback to an older snapshot and a damaged journal are logged
    as warnings on ``logger``; a torn last record is dropped silently (it is
    what a crash in the middle of an append leaves, and its save never returned).
    """
    ordered = sorted(generations, key=lambda g: g.number)
    if not ordered:
        return None
    failures: list[str] = []
    for position in range(len(ordered) - 1, -1, -1):
        base = _snapshot(ordered[position], package, run_id, failures)
        if base is None:
            continue
        damage = [d for g in ordered[position:] if (d := _replay(base, g)) is not None]
        if failures:
            logger.warning(
                "checkpoint %s unreadable (%s); using the previous generation",
                ordered[-1].snapshot_name,
                "; ".join(failures),
            )
        if damage:
            logger.warning("checkpoint journal damaged in %s: %s", where, "; ".join(damage))
        return base
    raise CheckpointCorrupt(
        f"no readable checkpoint generation is left in {where}: {'; '.join(failures)}"
        + ("" if len(failures) > 1 else "; there is no previous generation")
    )


def _snapshot(generation: Generation, package: str, run_id: str, failures: list[str]) -> Checkpoint | None:
    if generation.snapshot is None:
        failures.append(f"{generation.snapshot_name}: missing")
        return None
    try:
        checkpoint = decode(generation.snapshot(), source=generation.snapshot_name)
    except CheckpointCorrupt as exc:
        failures.append(str(exc))
        return None
    if (checkpoint.package, checkpoint.run_id) != (package, run_id):
        failures.append(f"{generation.snapshot_name}: belongs to {checkpoint.package}/{checkpoint.run_id}")
        return None
    return checkpoint


def _replay(checkpoint: Checkpoint, generation: Generation) -> str | None:
    """Apply the generation's journal; return a description of damage, if any."""
    if generation.journal is None:
        return None  # the generation's snapshot was written, its journal not yet created
    journal = read_journal(generation.journal(), source=generation.journal_name)
    for record in journal.records:
        apply(checkpoint, record)
    if journal.torn:
        log.info("%s: a torn last record was dropped (a save that never returned)", generation.journal_name)
    return journal.damage
