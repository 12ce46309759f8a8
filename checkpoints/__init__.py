"""Checkpoint storage: the format, the store protocol and its implementations."""

from checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointTooLarge,
    CheckpointUnavailable,
    Fenced,
    InvalidIdentifier,
)
from checkpoints.factory import is_s3_url, open_store
from checkpoints.filesystem import FilesystemCheckpointStore
from checkpoints.format import FORMAT_VERSION, LEGACY_FORMAT_VERSION, Checkpoint, TaskRecord, decode, encode
from checkpoints.ids import validate_package_name, validate_run_id
from checkpoints.journal import Change, Record, apply, read_journal
from checkpoints.memory import InMemoryCheckpointStore
from checkpoints.s3config import S3Options
from checkpoints.secrets import SecretBox
from checkpoints.store import CheckpointStore, CheckpointWriter, needs_compaction

# Grouped by role, as the house style asks; RUF022 would sort the groups together.
__all__ = [  # noqa: RUF022
    # format: snapshots and journal records
    "FORMAT_VERSION",
    "LEGACY_FORMAT_VERSION",
    "Change",
    "Checkpoint",
    "Record",
    "TaskRecord",
    "apply",
    "decode",
    "encode",
    "read_journal",
    # stores
    "CheckpointStore",
    "CheckpointWriter",
    "FilesystemCheckpointStore",
    "InMemoryCheckpointStore",
    "S3Options",
    "is_s3_url",
    "open_store",
    "SecretBox",
    "needs_compaction",
    # errors
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "CheckpointTooLarge",
    "CheckpointUnavailable",
    "Fenced",
    "InvalidIdentifier",
    # identifiers
    "validate_package_name",
    "validate_run_id",
]
