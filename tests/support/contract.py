"""The metric contract of the design: every name the orchestrator exposes, with its type.

Names are Prometheus family names (a counter's samples carry ``_total``, a
histogram's ``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

METRICS = {
    "orchestrator_runs_submitted": "counter",
    "orchestrator_runs_finished": "counter",
    "orchestrator_run_restarts": "counter",
    "orchestrator_node_loss_detected": "counter",
    "orchestrator_recovery_seconds": "histogram",
    "orchestrator_runs": "gauge",
    "orchestrator_worker_nodes_alive": "gauge",
    "orchestrator_queue_depth": "gauge",
    "orchestrator_task_duration_seconds": "histogram",
    "orchestrator_task_failures": "counter",
    "orchestrator_tasks_skipped": "counter",
    "orchestrator_checkpoint_writes": "counter",
    "orchestrator_checkpoint_write_seconds": "histogram",
    "orchestrator_checkpoint_bytes": "histogram",
    "orchestrator_submissions_refused": "counter",
    "orchestrator_schedule_runs": "counter",
    "orchestrator_schedule_lag_seconds": "histogram",
    "orchestrator_purged": "counter",
    "orchestrator_event_lag_seconds": "gauge",
    "orchestrator_copy_rows": "counter",
}
