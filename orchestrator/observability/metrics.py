"""Prometheus metrics: the contract names, served on ``/metrics`` by schedulers and worker nodes.

The metric objects are made on first use (:func:`metrics`), not at import, so
that a worker node can switch prometheus-client to multiprocess mode first
(:func:`enable_multiprocess`): Celery's prefork pool runs packages in child
processes, each writes its samples to files in the node's metrics directory,
and the node's endpoint sums them. Nothing is lost when a child is replaced,
and nothing is counted twice: every event is observed by exactly one process.

Labels never carry run ids or variable values; package and task names are
capped (:data:`MAX_LABEL_VALUES` distinct values, then ``other``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

from orchestrator.state.states import RunState

log = logging.getLogger(__name__)

MAX_LABEL_VALUES = 500
QUEUES = ("orchestrator.control", "orchestrator.runs", "orchestrator.recovery")
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
_RECOVERY_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 60, float("inf"))
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf"))
_BYTES_BUCKETS = (512, 2048, 8192, 32768, 131072, 524288, 2097152, 8388608, float("inf"))
_LAG_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, float("inf"))
SCHEDULE_RESULTS = ("fired", "caught_up", "skipped_overlap", "queued", "missed")
PURGED_KINDS = ("runs", "attempts", "tasks", "events", "logs", "checkpoints")


@dataclass(frozen=True)
class Metrics:
    """Every metric of the design's contract (plus refused submissions)."""

    runs_submitted: Counter
    runs_finished: Counter
    run_restarts: Counter
    node_loss_detected: Counter
    recovery_seconds: Histogram
    task_duration: Histogram
    task_failures: Counter
    tasks_skipped: Counter
    checkpoint_writes: Counter
    checkpoint_write_seconds: Histogram
    checkpoint_bytes: Histogram
    submissions_refused: Counter
    schedule_runs: Counter
    schedule_lag: Histogram
    purged: Counter


@dataclass(frozen=True)
class Gauges:
    """Cluster-wide state, set by schedulers only (a worker node never exposes them)."""

    runs: Gauge
    worker_nodes_alive: Gauge
    queue_depth: Gauge
    event_lag: Gauge


_lock = threading.Lock()
_created: list[Metrics] = []  # the process's metrics once made (at most one)
_gauges: list[Gauges] = []
_label_values: dict[str, set[str]] = {}
_label_lock = threading.Lock()


def _create(registry: CollectorRegistry) -> Metrics:
    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, labels, registry=registry, buckets=buckets)

    return Metrics(
        runs_submitted=counter("orchestrator_runs_submitted", "Runs submitted.", ("package",)),
        runs_finished=counter("orchestrator_runs_finished", "Runs that ended.", ("package", "state")),
        run_restarts=counter("orchestrator_run_restarts", "Resubmissions of runs.", ("package", "reason")),
        node_loss_detected=counter("orchestrator_node_loss_detected", "Worker nodes found lost."),
        recovery_seconds=histogram(
            "orchestrator_recovery_seconds",
            "Lease expiry (or lost dispatch) to the new attempt running.",
            (),
            _RECOVERY_BUCKETS,
        ),
        task_duration=histogram(
            "orchestrator_task_duration_seconds",
            "Task durations (one observation per finished task).",
            ("package", "task"),
            _DURATION_BUCKETS,
        ),
        task_failures=counter("orchestrator_task_failures", "Failed task tries.", ("package", "task")),
        tasks_skipped=counter(
            "orchestrator_tasks_skipped", "Tasks skipped on resume (finished earlier).", ("package",)
        ),
        checkpoint_writes=counter(
            "orchestrator_checkpoint_writes", "Checkpoint writes by result.", ("result",)
        ),
        checkpoint_write_seconds=histogram(
            "orchestrator_checkpoint_write_seconds", "Checkpoint write latency.", (), _WRITE_BUCKETS
        ),
        checkpoint_bytes=histogram("orchestrator_checkpoint_bytes", "Checkpoint sizes.", (), _BYTES_BUCKETS),
        submissions_refused=counter(
            "orchestrator_submissions_refused", "Submissions refused at the trust boundary."
        ),
        schedule_runs=counter(
            "orchestrator_schedule_runs", "Schedule slots handled, by result.", ("schedule", "result")
        ),
        schedule_lag=histogram(
            "orchestrator_schedule_lag_seconds",
            "A schedule's slot time to its run submitted.",
            (),
            _LAG_BUCKETS,
        ),
        purged=counter("orchestrator_purged", "What the purge removed, by kind.", ("kind",)),
    )


def metrics() -> Metrics:
    """The process's metrics, created on first use in the default registry."""
    with _lock:
        if not _created:
            made = _create(prometheus_client.REGISTRY)
            for result in ("ok", "fenced", "error", "timeout"):
                made.checkpoint_writes.labels(result=result)
            for kind in PURGED_KINDS:
                made.purged.labels(kind=kind)
            _created.append(made)
        return _created[0]


def gauges() -> Gauges:
    """The scheduler's state gauges, created on first use."""
    with _lock:
        if not _gauges:
            _gauges.append(_create_gauges(prometheus_client.REGISTRY))
        return _gauges[0]


def _create_gauges(registry: CollectorRegistry) -> Gauges:
    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    return Gauges(
        runs=gauge("orchestrator_runs", "Runs by state.", ("state",)),
        worker_nodes_alive=gauge("orchestrator_worker_nodes_alive", "Worker nodes sending heartbeats."),
        queue_depth=gauge("orchestrator_queue_depth", "Messages waiting in a queue.", ("queue",)),
        event_lag=gauge(
            "orchestrator_event_lag_seconds",
            "Age (Redis clock) of the oldest worker event not yet written to SQL, or of the last "
            "batch's oldest when it was written.",
        ),
    )


def enable_multiprocess(directory: Path) -> None:
    """Switch this process (and the processes it forks) to multiprocess mode, in a clean directory.

    Must run before :func:`metrics` is first called in this process.
    """
    if _created:
        raise RuntimeError("metrics were created before multiprocess mode was enabled")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def serve(port: int, *, multiprocess_mode: bool = False) -> int:
    """Serve ``/metrics`` on ``port`` (0: any free port); return the port."""
    registry: CollectorRegistry = prometheus_client.REGISTRY
    if multiprocess_mode:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    metrics()
    server, _ = prometheus_client.start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104
    actual = int(server.server_address[1])
    log.info("serving /metrics on port %d", actual)
    return actual


def bounded(kind: str, value: str) -> str:
    """``value`` as a label, or ``other`` once ``kind`` has MAX_LABEL_VALUES distinct values."""
    with _label_lock:  # hooks of parallel units call this from several threads
        seen = _label_values.setdefault(kind, set())
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value


def set_run_counts(counts: dict[RunState, int]) -> None:
    gauge = gauges().runs
    for state in RunState:
        gauge.labels(state=state.value).set(counts.get(state, 0))
