"""Shared fixtures. Fixture families live in tests/support/ and are registered here."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.databases",
    "tests.support.redis",
    "tests.support.cluster",
    "tests.support.seaweed",
    "tests.support.moto",
    "tests.support.etl",
    "tests.support.executor",
]
