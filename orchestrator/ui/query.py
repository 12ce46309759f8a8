"""The run list's query string: filters (state, package, time) and the page cursor.

The filters live in the URL, so a link, a reload or the back button keeps them;
the pagination links carry them on. Times are ISO 8601 (a date, or a date and
time); one without a zone is taken as UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlencode

from orchestrator.errors import InvalidInput
from orchestrator.state.listing import Cursor, RunFilter
from orchestrator.state.states import RunState
from orchestrator.ui.security import Refused

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def parse_time(name: str, text: str | None) -> datetime | None:
    """``text`` as an aware UTC datetime, ``None`` when empty; :class:`Refused` (400) when not a time."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Refused(400, f"{name}: {text[:40]!r} is not a date or time (use ISO 8601)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cursor(name: str, text: str | None) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.parse(text)
    except InvalidInput as exc:
        raise Refused(400, f"{name}: {exc}") from None


@dataclass(frozen=True)
class RunQuery:
    """A validated run-list query."""

    state: RunState | None = None
    package: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: Cursor | None = None
    after: Cursor | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def of(
        cls,
        *,
        state: str | None = None,
        package: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before: str | None = None,
        after: str | None = None,
        limit: int | str | None = None,
    ) -> RunQuery:
        """Validate raw values (from a form or the API); :class:`Refused` (400) names the bad one."""
        try:
            run_state = RunState(state) if state else None
        except ValueError:
            raise Refused(400, f"state: {str(state)[:40]!r} is not one of {', '.join(RunState)}") from None
        try:
            size = int(limit) if limit not in (None, "") else DEFAULT_LIMIT
        except ValueError:
            raise Refused(400, f"limit: {str(limit)[:20]!r} is not a number") from None
        if not 1 <= size <= MAX_LIMIT:
            raise Refused(400, f"limit: {size} is not between 1 and {MAX_LIMIT}")
        return cls(
            state=run_state,
            package=(package or "").strip() or None,
            since=parse_time("since", since),
            until=parse_time("until", until),
            before=_cursor("before", before),
            after=_cursor("after", after),
            limit=size,
        )

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RunQuery:
        return cls.of(
            **{k: params.get(k) for k in ("state", "package", "since", "until", "before", "after", "limit")}
        )

    @property
    def filter(self) -> RunFilter:
        return RunFilter(self.state, self.package, self.since, self.until)

    def params(self) -> dict[str, str]:
        """The query string's values, without empty ones."""
        values = {
            "state": self.state.value if self.state else "",
            "package": self.package or "",
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "before": str(self.before) if self.before else "",
            "after": str(self.after) if self.after else "",
            "limit": str(self.limit) if self.limit != DEFAULT_LIMIT else "",
        }
        return {k: v for k, v in values.items() if v}

    def link(self, path: str = "/", **cursor: Cursor | None) -> str:
        """``path`` with this query's filters and the cursor given (none: the first page)."""
        moved = replace(self, before=cursor.get("before"), after=cursor.get("after"))
        query = urlencode(moved.params())
        return f"{path}?{query}" if query else path

    def local_input(self, name: str) -> str:
        """The value of a ``datetime-local`` input (UTC, no zone) for ``since`` or ``until``."""
        value = self.since if name == "since" else self.until
        return value.strftime("%Y-%m-%dT%H:%M:%S") if value else ""
