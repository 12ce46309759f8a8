"""The ``sql`` task: its statements in one transaction, values bound as parameters."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.packages.etl import SqlSpec
from workers.etl.connections import Connections
from workers.etl.values import jsonable

MAX_SQL_ROWS = 1000
"""Rows of the last statement kept in the task's output (outputs are small JSON)."""


def run_sql(spec: SqlSpec, params: dict[str, Any], connections: Connections) -> dict[str, Any]:
    """Run ``spec``'s statements in one transaction; return the last one's rows or row count.

    Output: ``{"rows": [...], "truncated": bool}`` when the last statement returns rows
    (at most :data:`MAX_SQL_ROWS`), else ``{"rowcount": n}``.
    """
    engine = connections.engine(spec.connection)
    output: dict[str, Any] = {}
    try:
        with engine.begin() as connection:
            for statement in spec.statements:
                clause = text(statement)
                # Only the parameters a statement names: one params mapping serves them all.
                bound = {name: params[name] for name in clause.compile().params if name in params}
                result = connection.execute(clause, bound)
                if result.returns_rows:
                    rows = result.mappings().fetchmany(MAX_SQL_ROWS + 1)
                    output = {
                        "rows": [{k: jsonable(v) for k, v in row.items()} for row in rows[:MAX_SQL_ROWS]],
                        "truncated": len(rows) > MAX_SQL_ROWS,
                    }
                    result.close()
                else:
                    output = {"rowcount": result.rowcount}
    except SQLAlchemyError as exc:
        raise connections.error(spec.connection, exc, "sql statement failed") from exc
    return output
