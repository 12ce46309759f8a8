"""ETL tasks on the worker: ``sql`` statements and the exactly-once ``copy`` (docs/etl.md).

Modules: :mod:`~workers.etl.connections` (the package's databases, pooled for an attempt),
:mod:`~workers.etl.sql` (the ``sql`` task), :mod:`~workers.etl.source` (keyset pages of a
table or query), :mod:`~workers.etl.state` (the copy's cursor, committed with its rows),
:mod:`~workers.etl.copy` (the copy loop), :mod:`~workers.etl.pgcopy` (PostgreSQL's fast
paths), :mod:`~workers.etl.values` (cursor values as JSON), :mod:`~workers.etl.checks` (the
checks of ``orchestrator validate --connect``).
"""

from workers.etl.checks import check_connected
from workers.etl.connections import Connections, EnginePool, EtlError
from workers.etl.copy import run_copy
from workers.etl.sql import MAX_SQL_ROWS, run_sql
from workers.etl.task import etl_function, run_etl

__all__ = [
    "MAX_SQL_ROWS",
    "Connections",
    "EnginePool",
    "EtlError",
    "check_connected",
    "etl_function",
    "run_copy",
    "run_etl",
    "run_sql",
]
