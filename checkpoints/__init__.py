"""Checkpoint storage: the format, the store protocol and its implementations."""

from checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointTooLarge,
    Fenced,
    InvalidIdentifier,
)
from checkpoints.filesystem import FilesystemCheckpointStore
from checkpoints.format import FORMAT_VERSION, Checkpoint, TaskRecord, decode, encode
from checkpoints.ids import validate_package_name, validate_run_id
from checkpoints.memory import InMemoryCheckpointStore
from checkpoints.secrets import SecretBox
from checkpoints.store import CheckpointStore

__all__ = [
    # format
    "FORMAT_VERSION",
    "Checkpoint",
    # errors
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointNotFound",
    # stores
    "CheckpointStore",
    "CheckpointTooLarge",
    "Fenced",
    "FilesystemCheckpointStore",
    "InMemoryCheckpointStore",
    "InvalidIdentifier",
    "SecretBox",
    "TaskRecord",
    "decode",
    "encode",
    # identifiers
    "validate_package_name",
    "validate_run_id",
]
