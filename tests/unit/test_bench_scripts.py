"""Every bench script starts both ways the docs give: ``python -m bench.<name>`` and
``python bench/<name>.py`` from anywhere (as a file, bench/ is first on ``sys.path``, and its
``copy.py`` must not shadow the standard library's ``copy``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common", "tasks")
)


def test_the_benches_are_all_found() -> None:
    assert {"chaos", "checkpoint", "copy", "foreach", "overhead", "recovery", "throughput"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bench_script_runs_as_a_file_from_another_directory(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
