"""The local cluster's scheduler metrics port: a taken port must not leave ``up`` without a scheduler."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli.localcluster import LocalCluster
from orchestrator.runtime.settings import Settings


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on, as a second local cluster's scheduler would."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def cluster(tmp_path: Path, metrics_port: int, base: int | None = None) -> LocalCluster:
    settings = Settings(state_dir=tmp_path, metrics_port=metrics_port)
    return LocalCluster(settings, metrics_base_port=base)


def test_a_taken_metrics_port_gives_the_scheduler_a_free_one(tmp_path: Path, taken_port: int) -> None:
    port = cluster(tmp_path, taken_port)._scheduler_port()
    assert port not in (taken_port, 0)
    with socket.socket() as sock:  # free: the scheduler will be able to bind it
        sock.bind(("0.0.0.0", port))


def test_a_free_metrics_port_is_kept(tmp_path: Path, taken_port: int) -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        free = int(sock.getsockname()[1])
    assert cluster(tmp_path, free)._scheduler_port() == free


def test_an_explicit_base_port_is_used_as_given(tmp_path: Path, taken_port: int) -> None:
    assert cluster(tmp_path, 9808, base=taken_port)._scheduler_port() == taken_port
