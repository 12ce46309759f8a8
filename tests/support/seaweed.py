"""The tests' real S3 server: the embedded SeaweedFS (``orchestrator/cli/seaweed.py``), per session.

Tests share it and each takes its own key prefix (:meth:`SeaweedServer.root`), so they never see
each other's objects; a test that stops and starts a server starts one of its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoints.s3 import S3CheckpointStore
from orchestrator.cli.seaweed import EmbeddedSeaweed, SeaweedUnavailable

SeaweedServer = EmbeddedSeaweed
__all__ = ["SeaweedServer", "SeaweedUnavailable", "objects", "seaweed"]


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """The session's SeaweedFS S3 server (skipped, with the reason, where weed cannot run)."""
    with tempfile.TemporaryDirectory(prefix="weed-") as directory:
        try:
            server = SeaweedServer(Path(directory))
            server.start()
        except SeaweedUnavailable as exc:
            if os.environ.get("CI"):  # CI installs the dev extra: weed must run there
                pytest.fail(f"SeaweedFS S3 server unavailable: {exc}")
            pytest.skip(f"SeaweedFS S3 server unavailable: {exc}")
        try:
            yield server
        finally:
            server.stop()


def objects(store: S3CheckpointStore) -> dict[str, bytes]:
    """Every object under the store's prefix, key (relative to the prefix) to bytes."""
    found: dict[str, bytes] = {}
    for page in store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=store.prefix
    ):
        for item in page.get("Contents", []):
            body = store.client.get_object(Bucket=store.bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(store.prefix) :]] = body
    return found
