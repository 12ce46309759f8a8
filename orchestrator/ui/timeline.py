"""A run's timeline grouped by attempt, each event said in words.

Each attempt is one group: where it was claimed, what its tasks did, whether
its node was lost and it was fenced, and how it ended. The resubmission that
starts an attempt opens its group, so the story reads top to bottom; events of
no attempt (the submission, a cancel request) join the group they happened in.
Checkpoint saves are counted per attempt rather than listed, and the items a
foreach task finished in one attempt make one line (a foreach of a thousand
items saves a thousand times), so neither retries nor loops drown the story.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.state.models import Attempt

ALERTS = {"node_lost", "fenced", "task_failed", "handler_failed", "refused"}
COUNTED = {"checkpoint_saved"}


@dataclass
class Entry:
    """One event of the timeline, ready to show."""

    id: int
    at: str
    kind: str
    node: str | None
    text: str
    error: str | None
    alert: bool
    items: list[Any] = field(default_factory=list)


@dataclass
class AttemptGroup:
    """An attempt (``number`` None: before the first dispatch) and its events."""

    number: int | None
    epoch: int | None = None
    node: str | None = None
    state: str | None = None
    claimed_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    checkpoints: int = 0
    entries: list[Entry] = field(default_factory=list)


def _task(detail: Mapping[str, Any]) -> str:
    return str(detail.get("task", "?"))


def _resumed(detail: Mapping[str, Any]) -> str:
    skipped = list(detail.get("tasks") or [])
    listed = f" ({', '.join(map(str, skipped))})" if skipped else ""
    count = detail.get("skipped", len(skipped))
    return f"resumed from the checkpoint: {count} finished task{'s' if count != 1 else ''} skipped{listed}"


_TEXTS: dict[str, Callable[[Mapping[str, Any], str | None], str]] = {
    "submitted": lambda d, n: f"submitted (package {d.get('package', '?')})",
    "dispatched": lambda d, n: f"dispatched under epoch {d.get('epoch', '?')}",
    "claimed": lambda d, n: f"claimed on {n or '?'}",
    "resumed": lambda d, n: _resumed(d),
    "task_done": lambda d, n: f"task {_task(d)} done in {d.get('seconds', '?')} s",
    "task_failed": lambda d, n: f"task {_task(d)} failed",
    "item_done": lambda d, n: f"task {_task(d)}: item {d.get('item')} done",
    "task_skipped": lambda d, n: f"task {_task(d)} skipped (constraints not met or condition false)",
    "handler_done": lambda d, n: f"handler {d.get('handler', '?')} done ({d.get('job', '?')})",
    "handler_failed": lambda d, n: f"handler {d.get('handler', '?')} failed ({d.get('job', '?')})",
    "handler_skipped": lambda d, n: f"handler {d.get('handler', '?')} skipped ({d.get('job', '?')})",
    "node_lost": lambda d, n: f"node {n or '?'} lost (its heartbeat expired)",
    "fenced": lambda d, n: f"attempt fenced: epoch raised to {d.get('epoch', '?')}, its writes are refused",
    "resubmitted": lambda d, n: f"resubmitted ({d.get('reason', '?')}) under epoch {d.get('epoch', '?')}",
    "finished": lambda d, n: f"finished: {d.get('state', '?')}",
    "cancel_requested": lambda d, n: "cancel requested",
    "resume_requested": lambda d, n: "resume requested",
    "refused": lambda d, n: f"submission refused: {d.get('reason', '?')}",
}


def describe(kind: str, detail: Mapping[str, Any], node: str | None) -> str:
    """The event in words; an unknown kind is shown with its details."""
    text = _TEXTS.get(kind)
    if text is not None:
        return text(detail, node)
    shown = " ".join(f"{k}={v}" for k, v in detail.items() if v is not None and k != "error")
    return f"{kind.replace('_', ' ')} {shown}".strip()


def _items_text(task: str, items: Sequence[Any]) -> str:
    if len(items) == 1:
        return f"task {task}: item {items[0]} done"
    shown = ", ".join(map(str, items)) if len(items) <= 4 else f"{items[0]}, {items[1]} … {items[-1]}"
    return f"task {task}: {len(items)} items done ({shown})"


def _add_item(group: AttemptGroup, event: Mapping[str, Any], open_items: dict[str, Entry]) -> None:
    """Fold an ``item_done`` into its task's line of the attempt (one line per task and attempt)."""
    task = _task(event.get("detail") or {})
    entry = open_items.get(task)
    if entry is None:
        entry = open_items[task] = _entry(event)
        group.entries.append(entry)
    else:
        entry.at, entry.id = str(event["at"]), int(event["id"])
    entry.items.append((event.get("detail") or {}).get("item"))
    entry.text = _items_text(task, entry.items)


def _entry(event: Mapping[str, Any]) -> Entry:
    detail = event.get("detail") or {}
    error = detail.get("error")
    return Entry(
        id=int(event["id"]),
        at=str(event["at"]),
        kind=str(event["kind"]),
        node=event.get("node"),
        text=describe(str(event["kind"]), detail, event.get("node")),
        error=str(error) if error else None,
        alert=event["kind"] in ALERTS or (event["kind"] == "finished" and detail.get("state") != "succeeded"),
    )


def group_by_attempt(attempts: Sequence[Attempt], events: Sequence[Mapping[str, Any]]) -> list[AttemptGroup]:
    """Events (as ``events --json`` rows, in order) grouped under the attempts they belong to."""
    groups: dict[int | None, AttemptGroup] = {None: AttemptGroup(None)}
    for attempt in attempts:
        groups[attempt.number] = AttemptGroup(
            attempt.number,
            epoch=attempt.epoch,
            node=attempt.node,
            state=attempt.state.value,
            claimed_at=attempt.claimed_at.isoformat() if attempt.claimed_at else None,
            ended_at=attempt.ended_at.isoformat() if attempt.ended_at else None,
            error=attempt.error,
        )
    current: int | None = None
    open_items: dict[int | None, dict[str, Entry]] = {}
    for event in events:
        number = event.get("attempt")
        if number is not None:
            current = number
        group = groups.setdefault(current, AttemptGroup(current))
        if event["kind"] in COUNTED:
            group.checkpoints += 1
        elif event["kind"] == "item_done":
            _add_item(group, event, open_items.setdefault(current, {}))
        else:
            group.entries.append(_entry(event))
    return [
        g
        for key, g in sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
        if g.entries or key is not None
    ]
