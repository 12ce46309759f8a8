"""Every bench script starts both ways the docs give: ``python -m bench.<name>`` and
``python bench/<name>.py`` from anywhere (as a file, bench/ is first on ``sys.path``, and its
``copy.py`` must not shadow the standard library's ``copy``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import wait_until

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


def test_the_cpu_meter_charges_each_set_with_its_own_processes_cpu() -> None:
    """What the throughput bench's CPU table is made of: a spinning process is charged its CPU,
    a sleeping one nothing, and a process started between two readings counts from zero."""
    from bench.common import CpuMeter, cpu_seconds

    spin = "while True: pass"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        meter = CpuMeter({"spinning": lambda: [p.pid for p in spinners], "sleeping": lambda: [sleeper.pid]})
        before = meter.read()
        spinners.append(subprocess.Popen([sys.executable, "-c", spin]))
        wait_until(lambda: cpu_seconds(spinners[0].pid) >= 0.3, timeout=30, what="0.3 s of CPU spun")
        spent = CpuMeter.spent(before, meter.read())
    finally:
        for process in (sleeper, *spinners):
            process.kill()
            process.wait()
    assert spent["spinning"] >= 0.3
    assert spent["sleeping"] < 0.1
    assert cpu_seconds(sleeper.pid) == 0.0  # gone: nothing to read
