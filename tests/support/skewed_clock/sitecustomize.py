"""Skews this process's wall clock by ``ORCH_TEST_CLOCK_SKEW`` seconds (a node whose clock is wrong).

Put this directory first on ``PYTHONPATH`` of one process: Python imports ``sitecustomize`` at
start-up, before any module of the program, so every later read of the wall clock through
``time.time``, ``time.time_ns`` or ``datetime.now/utcnow/today`` is off by the skew (logging
timestamps, Celery and kombu, SQL timestamps written by the node). ``time.monotonic`` is left
alone: it measures intervals, not the time of day, and no clock setting moves it.

Not a package module: no test imports it.
"""

from __future__ import annotations

import datetime as _datetime
import os
import time

SKEW = float(os.environ.get("ORCH_TEST_CLOCK_SKEW", "0"))

if SKEW:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + SKEW
    time.time_ns = lambda: _time_ns() + int(SKEW * 1e9)

    class _SkewedDatetime(_datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return super().now(tz) + _datetime.timedelta(seconds=SKEW)

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def]
            return cls.now(_datetime.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def]
            return cls.now()

    _datetime.datetime = _SkewedDatetime  # type: ignore[misc]
