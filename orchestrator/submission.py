"""Kept for compatibility: the Python client lives in :mod:`orchestrator.control.client`.

``from orchestrator.submission import Client`` keeps working; new code
imports it from :mod:`orchestrator.control.client`.
"""

from orchestrator.control.client import POLL_INTERVAL, Client, new_run_id

__all__ = ["POLL_INTERVAL", "Client", "new_run_id"]
