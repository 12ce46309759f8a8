"""Alembic migrations of the run-state schema, applied by :func:`orchestrator.state.upgrade`.

To add a revision after changing :mod:`orchestrator.state.models`, point
``ORCHESTRATOR_DATABASE_URL`` at a database migrated to head and run::

    alembic -c orchestrator/state/migrations/alembic.ini revision --autogenerate \\
        --rev-id 0002 -m "what changed"

then review the generated file: it must spell out its operations, never call
``metadata.create_all``.
"""
