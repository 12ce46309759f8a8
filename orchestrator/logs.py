"""Logging set-up: human lines by default, one JSON object per line with ``--log-json``.

Every record may carry ``run_id``, ``attempt``, ``node`` and ``task`` (passed as
``extra`` or through a :class:`logging.LoggerAdapter`); both formats show them.
Sensitive values are masked where they are produced (see
:mod:`orchestrator.masking`), not here: a formatter cannot know them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("run_id", "attempt", "node", "task")


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
            entry["exception"] = self.formatException(record.exc_info)
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
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)-7s %(name)s %(context)s%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Schema migrations announce themselves at INFO on every start: not news.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
