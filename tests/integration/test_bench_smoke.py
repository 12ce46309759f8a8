"""The benchmark scripts in their CI smoke mode (``--quick``), so that they cannot rot.

Each runs as a subprocess for a few seconds: it must exit 0, print its table
with a ratio, and write its JSON result. The figures themselves are not
judged here (these machines are noisy); ``docs/benchmarks.md`` quotes full runs.
Each script starts an embedded Redis of its own here, even when
``ORCHESTRATOR_TEST_REDIS_URL`` is set: a script flushes the URL's database and
up to six after it, which are the other pytest-xdist workers' databases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, cli_env
from tests.support.redis import REDIS_URL_VARIABLE

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SCRIPTS = [
    "checkpoint",
    "foreach",
    "overhead",
    "throughput",
    "floor",
    "scale",
    "recovery",
    "ui",
    "s3",
    "copy",
    "cli",
]


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_quick_mode(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env={k: v for k, v in cli_env().items() if k != REDIS_URL_VARIABLE},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    output = f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    assert result.returncode == 0, output
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table, f"no table printed\n{output}"
    assert "ratio" in table[0].lower(), f"the table has no ratio column\n{output}"
    written = json.loads((tmp_path / f"{name}-quick.json").read_text())
    assert written["bench"] == name
    assert written["quick"] is True
    assert written["machine"]["cores"]


def test_run_all_runs_every_script() -> None:
    text = (ROOT / "bench" / "run_all.sh").read_text()
    for name in SCRIPTS:
        assert f"{name}" in text.split("for bench in", 1)[1].splitlines()[0], name
