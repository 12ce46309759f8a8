"""``orchestrator ui`` as a subprocess: its address, a taken port, and a prompt stop with a stream open."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.cli import run_cli, start_cli

pytestmark = pytest.mark.timeout(120)


def settings(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "ORCHESTRATOR_BROKER_URL": redis_url,
        "ORCHESTRATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "ORCHESTRATOR_UI_TOKEN": "",
    }


def test_a_taken_port_is_a_clear_error(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "ui", "--port", str(port), cwd=tmp_path, env=settings(redis_url, tmp_path), timeout=60
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot serve the UI on 127.0.0.1:{port}: is in use; choose another with --port" in result.stderr


def test_the_ui_prints_its_address_serves_and_stops_promptly_with_a_stream_open(
    redis_url: str, tmp_path: Path
) -> None:
    ui = start_cli("ui", "--port", "0", "--read-only", cwd=tmp_path, env=settings(redis_url, tmp_path))
    try:
        assert ui.stdout is not None
        line = ui.stdout.readline()
        assert line.startswith("web UI at http://127.0.0.1:") and "(read-only)" in line, line
        url = line.split()[3]
        with urllib.request.urlopen(url + "api/runs", timeout=30) as response:
            assert json.loads(response.read()) == {"runs": [], "total": 0, "older": None, "newer": None}
        opened = threading.Event()

        def listen() -> None:
            with urllib.request.urlopen(url + "api/stream", timeout=60) as stream:
                opened.set()
                while stream.readline():
                    pass

        threading.Thread(target=listen, daemon=True).start()
        assert opened.wait(30), "the stream did not open"
        ui.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = ui.wait(timeout=30)
        stopped = time.monotonic() - began
        _, errors = ui.communicate(timeout=30)
        assert code == 0, errors
        assert stopped < 15, "an open stream held the UI up"
        assert "timeout graceful shutdown exceeded" not in errors, errors
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.communicate(timeout=30)
    with pytest.raises(OSError):  # the port is closed: nothing is left serving
        urllib.request.urlopen(url, timeout=5)
