"""The orchestrator: everything but the workers and the checkpoint store.

The folder listing is the architecture:

* :mod:`orchestrator.packages`: the package model, its validation, the builder;
* :mod:`orchestrator.control`: the scheduler, liveness in Redis, the submission client;
* :mod:`orchestrator.state`: run and task states, the SQL models and their repository;
* :mod:`orchestrator.cli`: the command line, the local cluster, the demo;
* :mod:`orchestrator.runtime`: settings, per-process connections, the broker and queues;
* :mod:`orchestrator.observability`: logs and metrics;
* :mod:`orchestrator.errors`: the exception family.

``orchestrator.builder`` and ``orchestrator.submission`` are the old import paths of
:class:`~orchestrator.packages.PackageBuilder` and :class:`~orchestrator.control.Client`,
kept for compatibility. The worker side is the top-level :mod:`workers` package; the
checkpoint store is :mod:`checkpoints`.
"""
