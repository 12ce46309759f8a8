"""What the orchestrator tells its operators: logs (masked) and Prometheus metrics.

Modules: :mod:`~orchestrator.observability.logs` (formats and the log context),
:mod:`~orchestrator.observability.masking` (secrets out of text),
:mod:`~orchestrator.observability.metrics` (the contract's metrics and ``/metrics``).
"""

from orchestrator.observability.logs import configure_logging, log_context
from orchestrator.observability.masking import MASK, Masker
from orchestrator.observability.metrics import gauges, metrics, serve

# Grouped by role, as the house style asks; RUF022 would sort the groups together.
__all__ = [  # noqa: RUF022
    # logs
    "configure_logging",
    "log_context",
    "MASK",
    "Masker",
    # metrics
    "gauges",
    "metrics",
    "serve",
]
