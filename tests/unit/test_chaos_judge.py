"""The chaos bench's judgement of recovery: which blow lost an attempt."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from bench.chaos import ChaosReport, check_recovery
from tests.support.chaos import Disruption, RunHistory

T0 = 1_800_000_000.0


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def event(kind: str, seconds: float, attempt: int, node: str | None = None, **detail: Any) -> Any:
    return SimpleNamespace(kind=kind, at=at(seconds), attempt=attempt, node=node, detail=detail)


def attempt(number: int, node: str, dispatched: float, claimed: float | None, ended: float | None) -> Any:
    return SimpleNamespace(
        number=number,
        node=node,
        epoch=number,
        state=SimpleNamespace(value="lost" if number == 1 else "succeeded"),
        dispatched_at=at(dispatched),
        claimed_at=at(claimed) if claimed is not None else None,
        ended_at=at(ended) if ended is not None else None,
    )


def history(first: Any, fenced: float, resumed: float) -> RunHistory:
    events = [
        event("fenced", fenced, 1, first.node),
        event("resubmitted", fenced, 2, reason="node_lost"),
        event("claimed", resumed - 0.01, 2, "n2"),
        event("resumed", resumed, 2, "n2"),
    ]
    return RunHistory("r", "succeeded", None, [first, attempt(2, "n2", fenced, resumed, None)], events)


BLOWS = [
    Disruption("stop", "n1", T0 + 5, T0 + 9),
    Disruption("kill", "n1", T0 + 10, T0 + 10.1),
    Disruption("stop", "n1", T0 + 21, T0 + 25),
]


def test_a_claimed_attempt_is_lost_to_its_nodes_first_blow_after_the_claim() -> None:
    report = ChaosReport()
    check_recovery(report, [history(attempt(1, "n1", 0, 9.5, 10.2), fenced=10.2, resumed=11)], BLOWS)
    assert report.lost_attempts == 1 and report.unattributed_losses == 0
    assert [round(s, 2) for s in report.detection_seconds] == [0.2]
    assert [round(s, 2) for s in report.recovery_seconds] == [1.0]


def test_an_attempt_claimed_in_redis_only_is_lost_to_the_last_blow_before_its_fence() -> None:
    """Dispatched at 0, it waited in the queue through the blows at 5 and 10; the node claimed it
    in Redis and was stopped at 21 before its SQL claim: fenced at the TTL, 23."""
    report = ChaosReport()
    check_recovery(report, [history(attempt(1, "n1", 0, None, 23), fenced=23, resumed=24)], BLOWS)
    assert [round(s, 2) for s in report.detection_seconds] == [2.0]
    assert [round(s, 2) for s in report.recovery_seconds] == [3.0]


def test_a_loss_with_no_blow_on_its_node_is_reported() -> None:
    report = ChaosReport()
    check_recovery(report, [history(attempt(1, "n3", 0, 1, 3), fenced=3, resumed=4)], BLOWS)
    assert report.unattributed_losses == 1 and report.problems
