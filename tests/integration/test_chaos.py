"""Chaos with real processes: 20 packages while worker nodes are SIGKILLed and SIGSTOPped at random.

The same harness and judgement as ``python bench/chaos.py`` (see its docstring),
smaller: nothing is lost, every run succeeds, and the only work done twice is
work that was in flight when its node went down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import judge
from tests.support.chaos import ChaosConfig, run_chaos

pytestmark = [pytest.mark.timeout(170), pytest.mark.slow]

CONFIG = ChaosConfig(
    packages=20,
    task_seconds=0.5,
    kill_every=(1.5, 3.0),
    deadline=100.0,
    seed=20,
)


def test_twenty_packages_survive_killed_and_paused_nodes(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    run = run_chaos(CONFIG, broker_url=redis_url, database_url=database_url, workdir=tmp_path)
    report = judge(run)
    print(report.table())  # shown by pytest -rA or on failure

    assert report.kills >= 1 and report.stops >= 1, "the killer struck with both SIGKILL and SIGSTOP"
    assert report.parallel_packages == 6, "every third package runs four units at once"
    assert (report.submitted, report.succeeded, report.lost) == (20, 20, 0), report.table()
    assert report.finished_reexecuted == 0, report.table()
    assert report.units_redone == 0, report.table()
    assert report.never_completed == 0, report.table()
    assert report.unexplained_reexecutions == 0, report.table()
    assert report.lost_attempts >= 1, "some run was caught by a blow and recovered"
    assert len(report.recovery_seconds) == report.lost_attempts - report.unattributed_losses
    assert report.ok, report.table()
