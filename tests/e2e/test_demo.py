"""``orchestrator demo`` from a fresh directory: the showcase must run to success, quickly."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli


@pytest.mark.timeout(150)
def test_demo_survives_the_loss_of_its_node(tmp_path: Path) -> None:
    env = {"ORCHESTRATOR_BROKER_URL": "", "ORCHESTRATOR_DATABASE_URL": ""}
    started = time.monotonic()
    result = run_cli("demo", cwd=tmp_path, env=env, timeout=140)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 90, f"the demo took {elapsed:.0f} s"
    out = result.stdout
    assert "recovery time" in out and "s from the kill to the package running again" in out
    assert "tasks skipped on resume │ 2 (prepare, generate)" in out
    assert "rows loaded once        │ 6000 of 6000" in out
    assert "finished work repeated  │ none" in out
    assert "killed node-" in out and "resumed" in out
    assert re.search(
        r"^watch it in the web UI: http://127\.0\.0\.1:\d+/runs/orders_nightly-", out, re.MULTILINE
    )
    assert list(tmp_path.iterdir()) == [], "the demo works in a temporary directory of its own"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_on_an_embedded_s3_store(tmp_path: Path) -> None:
    env = {"ORCHESTRATOR_BROKER_URL": "", "ORCHESTRATOR_DATABASE_URL": ""}
    result = run_cli("demo", "--store", "s3", cwd=tmp_path, env=env, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(
        r"checkpoints in s3://[\w-]+/demo on an embedded SeaweedFS at http://127\.0\.0\.1:\d+", out
    ), out
    assert "rows loaded once        │ 6000 of 6000" in out
    assert "finished work repeated  │ none" in out
    assert list(tmp_path.iterdir()) == [], "the demo works in a temporary directory of its own"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_copy_demo_ends_with_every_row_once(tmp_path: Path) -> None:
    """``demo --copy``: the node running the table copy is killed mid-copy; every row lands once."""
    env = {"ORCHESTRATOR_BROKER_URL": "", "ORCHESTRATOR_DATABASE_URL": ""}
    started = time.monotonic()
    result = run_cli("demo", "--copy", cwd=tmp_path, env=env, timeout=140)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 90, f"the copy demo took {elapsed:.0f} s"
    out = result.stdout
    assert "rows copied and committed so far" in out and "killed node-" in out
    assert "rows loaded once        │ 40000 of 40000 (rows in the table: 40000)" in out
    assert "the package survived the loss of its node" in out
