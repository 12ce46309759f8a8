"""Column types shared by the models and the migrations.

Both types store plain portable SQL values (a ``TIMESTAMP WITH TIME ZONE`` or
``DATETIME``, a ``VARCHAR``) so the schema is the same on SQLite and
PostgreSQL and reads back the same Python values on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, DateTime, Dialect, String, any_, bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.types import TypeDecorator

E = TypeVar("E", bound=StrEnum)


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime (the only kind the database takes)."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Writing a naive datetime raises ``ValueError``: guessing its zone is how
    timestamps silently drift. Aware values of any zone are stored as UTC.
    SQLite has no zone-aware type, so the value is stored as naive UTC there
    and the zone is attached again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class EnumString(TypeDecorator[E]):
    """A ``StrEnum`` stored as its plain string value in a ``VARCHAR``.

    Unlike ``sqlalchemy.Enum`` this creates no native enum type and no CHECK
    constraint, so adding a state needs no migration; reading an unknown
    value raises ``ValueError``.
    """

    impl = String(32)
    cache_ok = True

    def __init__(self, enum_type: type[E], length: int = 32) -> None:
        super().__init__(length)
        self.enum_type = enum_type

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum_type(value).value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_type(value)


def among(
    session: Session, column: ColumnElement[Any] | QueryableAttribute[Any], values: Sequence[str]
) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(array)``, one statement text whatever
    the number of values (an expanding ``IN`` is a new text, converted anew by the driver, for
    every count: on the path of every attempt's outcome)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(String), unique=True))
    return column.in_(values)
