"""Key values as JSON (the copy's cursor and upper bound) and row values as JSON (``sql`` output).

A cursor must come back as the same Python value the database gave, so the
types JSON lacks are tagged: ``{"$decimal": "1.50"}``, ``{"$datetime": ...}``...
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

_TAGGED: dict[type, tuple[str, Callable[[Any], Any]]] = {
    decimal.Decimal: ("$decimal", str),
    dt.datetime: ("$datetime", dt.datetime.isoformat),
    dt.date: ("$date", dt.date.isoformat),
    dt.time: ("$time", dt.time.isoformat),
    uuid.UUID: ("$uuid", str),
    bytes: ("$bytes", lambda v: base64.b64encode(v).decode()),
    memoryview: ("$bytes", lambda v: base64.b64encode(bytes(v)).decode()),
}
_DECODE: dict[str, Callable[[Any], Any]] = {
    "$decimal": decimal.Decimal,
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$uuid": uuid.UUID,
    "$bytes": base64.b64decode,
}


def encode_key(values: Sequence[Any] | None) -> str | None:
    """A key tuple as JSON text (``None`` stays ``None``)."""
    return None if values is None else json.dumps([_tag(v) for v in values])


def decode_key(text: str | None) -> tuple[Any, ...] | None:
    return None if text is None else tuple(_untag(v) for v in json.loads(text))


def _tag(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    for kind, (tag, convert) in _TAGGED.items():
        if isinstance(value, kind):
            return {tag: convert(value)}
    raise TypeError(f"a key value of type {type(value).__name__} cannot be kept in a cursor")


def _untag(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        return _DECODE[tag](text)
    return value


def jsonable(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """A row value as plain JSON: numbers, strings, ISO dates, base64 bytes."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)
