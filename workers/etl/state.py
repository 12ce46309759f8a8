"""The copy's cursor in the destination, committed in the same transaction as its rows.

``orchestrator_copy_state`` holds one row per (run, task, foreach item): the
epoch of the attempt that last wrote it, the key of the last row copied, the
frozen upper bound, the rows and batches copied so far. A batch's transaction
first moves this row on, only if its epoch is not newer than the attempt's
and its batch count is the one the attempt read, then inserts its rows: a
stale attempt (fenced by a newer epoch) or a second writer of the same batch
updates nothing, raises :class:`~workers.errors.AttemptFenced`, and its
transaction rolls back. The update locks the row until the commit, so two
writers of one copy never interleave. The destination is therefore the truth about how far a copy got;
the checkpoint follows it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from workers.errors import AttemptFenced

STATE_TABLE = "orchestrator_copy_state"

_metadata = MetaData()
copy_state = Table(
    STATE_TABLE,
    _metadata,
    Column("run_id", String(64), primary_key=True),
    Column("task", String(64), primary_key=True),
    Column("item", String(191), primary_key=True),  # 191: MySQL's utf8mb4 index limit, with room
    Column("epoch", BigInteger, nullable=False),
    Column("batches", BigInteger, nullable=False),
    Column("rows_copied", BigInteger, nullable=False),
    Column("cursor", Text, nullable=True),
    Column("upper", Text, nullable=True),
    Column("updated_at", DateTime, nullable=False),
)


@dataclass
class CopyState:
    """Where one copy stands, as read from (and written to) the destination."""

    run_id: str
    task: str
    item: str
    epoch: int
    batches: int = 0
    rows: int = 0
    cursor: str | None = None
    upper: str | None = None


def ensure_table(engine: Engine) -> None:
    """Create the state table if it is missing (two workers may race to: the loser re-checks)."""
    try:
        with engine.begin() as connection:
            copy_state.create(connection, checkfirst=True)
    except SQLAlchemyError:
        if not inspect(engine).has_table(STATE_TABLE):
            raise


def claim(connection: Connection, wanted: CopyState, *, fresh: bool) -> CopyState:
    """Take the copy over for ``wanted.epoch``: the stored state (made from ``wanted`` if none).

    ``fresh``: the run's checkpoint has no progress of this copy, so the copy starts over
    (a new run under the same run id, ``orchestrator run`` say) and the stored state is
    replaced by ``wanted``. Raises :class:`AttemptFenced` when a newer attempt already wrote it.
    """
    where = _key(wanted)
    row = connection.execute(select(copy_state).where(*where).with_for_update()).mappings().first()
    if row is None:
        connection.execute(insert(copy_state).values(**_values(wanted)))
        return wanted
    if row["epoch"] > wanted.epoch:
        raise AttemptFenced(
            f"copy {wanted.task!r} of run {wanted.run_id!r} was taken over by epoch {row['epoch']} "
            f"(this attempt's is {wanted.epoch})"
        )
    if fresh:
        connection.execute(update(copy_state).where(*where).values(**_values(wanted)))
        return wanted
    connection.execute(update(copy_state).where(*where).values(epoch=wanted.epoch, updated_at=_now()))
    kept = {k: row[k] for k in ("run_id", "task", "item", "batches", "cursor", "upper")}
    return CopyState(**kept, rows=row["rows_copied"], epoch=wanted.epoch)


def advance(connection: Connection, state: CopyState, rows: int, cursor: str | None) -> CopyState:
    """Move the cursor past a batch in the batch's transaction; :class:`AttemptFenced` if stale."""
    moved = connection.execute(
        update(copy_state)
        .where(*_key(state), copy_state.c.epoch <= state.epoch, copy_state.c.batches == state.batches)
        .values(
            epoch=state.epoch,
            batches=state.batches + 1,
            rows_copied=copy_state.c.rows_copied + rows,
            cursor=cursor,
            updated_at=_now(),
        )
    )
    if moved.rowcount != 1:
        raise AttemptFenced(
            f"copy {state.task!r} of run {state.run_id!r}: batch {state.batches + 1} refused "
            f"(a newer attempt moved the copy on); its rows are rolled back"
        )
    return CopyState(
        state.run_id,
        state.task,
        state.item,
        state.epoch,
        state.batches + 1,
        state.rows + rows,
        cursor,
        state.upper,
    )


def _key(state: CopyState) -> list[Any]:
    return [
        copy_state.c.run_id == state.run_id,
        copy_state.c.task == state.task,
        copy_state.c.item == state.item,
    ]


def _values(state: CopyState) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "task": state.task,
        "item": state.item,
        "epoch": state.epoch,
        "batches": state.batches,
        "rows_copied": state.rows,
        "cursor": state.cursor,
        "upper": state.upper,
        "updated_at": _now(),
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
