"""The one place a checkpoint root becomes a store: a directory, or ``s3://bucket/prefix``."""

from __future__ import annotations

import os

from checkpoints.filesystem import FilesystemCheckpointStore
from checkpoints.memory import DEFAULT_MAX_BYTES
from checkpoints.s3config import S3Options
from checkpoints.store import CheckpointStore


def is_s3_url(root: str | os.PathLike[str]) -> bool:
    """True for a root that names a bucket (``s3://...``) rather than a directory."""
    return os.fspath(root).startswith("s3://")


def open_store(
    root: str | os.PathLike[str], *, s3: S3Options | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> CheckpointStore:
    """The store for ``root``: :class:`~checkpoints.s3.S3CheckpointStore` for ``s3://bucket/prefix``
    (reached with ``s3``, or boto3's own AWS settings), else a directory.

    boto3 is imported only when an S3 root is asked for: a filesystem deployment never pays for it.
    """
    if is_s3_url(root):
        from checkpoints.s3 import S3CheckpointStore

        return S3CheckpointStore(os.fspath(root), options=s3, max_bytes=max_bytes)
    return FilesystemCheckpointStore(root, max_bytes=max_bytes)
