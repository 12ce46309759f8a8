"""Logging set-up: human lines by default, one JSON object per line with ``--log-json``.

Every record carries ``run_id``, ``attempt``, ``node`` and ``task`` when they
are known: from ``extra``, a :class:`logging.LoggerAdapter`, or the
:func:`log_context` the code around it entered (an attempt on a worker sets
run, attempt and node; the executor adds the task). Both formats show them.
Sensitive values are masked where they are produced (:mod:`orchestrator.observability.masking`)
and, as a last line, by the masker a run puts in its log context: every message
and traceback logged inside that context is masked before it is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("run_id", "attempt", "node", "task")
_context: ContextVar[dict[str, Any]] = ContextVar("orchestrator_log_context", default={})  # noqa: B039


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (run_id, attempt, node, task, or ``mask``: a callable) to records logged inside."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the log context onto each record and applies its masker."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        for name in CONTEXT_FIELDS:
            if name in fields and getattr(record, name, None) is None:
                setattr(record, name, fields[name])
        mask: Callable[[str], str] | None = fields.get("mask")
        if mask is not None:
            record.msg, record.args = mask(record.getMessage()), None
            if record.exc_info:
                record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ContextFormatter(logging.Formatter):
    """``time level logger [run=… attempt=… node=… task=…] message``."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        record.context = f"[{context}] " if context else ""
        return super().format(record)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Send log records to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)-7s %(name)s %(context)s%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Schema migrations announce themselves at INFO on every start: not news.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
