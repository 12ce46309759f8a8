"""The local cluster's scheduler metrics port: a taken port must not leave ``up`` without a scheduler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.cli.localcluster import LocalCluster
from orchestrator.runtime.settings import Settings


def test_the_default_port_is_not_taken_blindly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clusters started at once would both find 9808 free, and one scheduler would exit."""
    monkeypatch.delenv("ORCHESTRATOR_METRICS_PORT", raising=False)
    cluster = LocalCluster(Settings(state_dir=tmp_path))
    assert cluster.settings.metrics_port == 9808
    assert cluster._scheduler_port() == 0  # the kernel picks a free port at bind time


def test_a_port_the_user_set_is_used_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_METRICS_PORT", "9911")
    assert os.environ["ORCHESTRATOR_METRICS_PORT"] == "9911"
    assert LocalCluster(Settings(state_dir=tmp_path))._scheduler_port() == 9911


def test_an_explicit_base_port_is_used_as_given(tmp_path: Path) -> None:
    cluster = LocalCluster(Settings(state_dir=tmp_path), metrics_base_port=9950)
    assert cluster._scheduler_port() == 9950
