"""The objects of one run in an S3 checkpoint store: their names, the manifest, the seal.

Layout of one run, under ``s3://<bucket>/<prefix><package>/<run_id>/`` (``docs/s3.md``)::

    manifest                       the fence epoch and the generations that count (JSON)
    snapshot-<g>-<token>.json      the snapshot of generation g
    journal-<g>-<token>-<n>.log    the n-th batch of records appended to generation g,
                                   or the journal's seal (a body no record can have)

A generation is *open* while its writer may append (its batches are found by listing
its journal, up to the first gap or the seal) and *closed* once the writer that
compacted it recorded how many batches it holds.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from checkpoints.errors import CheckpointCorrupt

MANIFEST = "manifest"
MANIFEST_FORMAT = 2
"""Format 2: one request per append, generations open or closed, seals (format 1: the
manifest counted every batch; still read, as closed generations)."""
SEAL_PREFIX = b'{"sealed":'
"""How a seal begins; a journal record begins ``{"crc32":`` (:mod:`checkpoints.journal`)."""


@dataclass(frozen=True)
class ManifestGeneration:
    """One generation the manifest names.

    ``batches`` is None while the generation is open; ``epoch`` is the epoch of the
    writer that began it (0 in a format-1 manifest, whose generations are all closed).
    """

    number: int
    token: str
    batches: int | None = None
    epoch: int = 0

    @property
    def open(self) -> bool:
        return self.batches is None

    def encoded(self) -> list[Any]:
        return [self.number, self.token, self.batches, self.epoch]


@dataclass(frozen=True)
class Manifest:
    """What the run's manifest object says; ``etag`` is None when there is none yet.

    ``retired`` are the open generations of a deleted checkpoint: their seals stay, and a
    retried delete or a fence seals them again.
    """

    epoch: int = 0
    version: int = 0
    generations: tuple[ManifestGeneration, ...] = ()
    etag: str | None = None
    nonce: str = field(default="", compare=False)
    retired: tuple[ManifestGeneration, ...] = ()

    def encoded(self) -> bytes:
        body = {
            "format": MANIFEST_FORMAT,
            "epoch": self.epoch,
            "version": self.version,
            "generations": [g.encoded() for g in self.generations],
            "retired": [g.encoded() for g in self.retired],
            "nonce": self.nonce,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def next(self, **changes: Any) -> Manifest:
        """The manifest that replaces this one (a new version and nonce, so a new ETag)."""
        return replace(self, version=self.version + 1, nonce=secrets.token_hex(8), etag=None, **changes)

    @staticmethod
    def decode(data: bytes, etag: str, where: str) -> Manifest:
        try:
            body = json.loads(data)
            if body["format"] == 1:
                generations = tuple(
                    ManifestGeneration(int(n), str(t), int(b)) for n, t, b in body["generations"]
                )
                return Manifest(
                    int(body["epoch"]), int(body["version"]), generations, etag, str(body["nonce"])
                )
            if body["format"] != MANIFEST_FORMAT:
                raise ValueError(f"unknown manifest format {body['format']!r}")
            return Manifest(
                int(body["epoch"]),
                int(body["version"]),
                tuple(_generation(g) for g in body["generations"]),
                etag,
                str(body["nonce"]),
                tuple(_generation(g) for g in body["retired"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorrupt(f"{where}: not a checkpoint manifest ({exc})") from exc


def _generation(value: list[Any]) -> ManifestGeneration:
    number, token, batches, epoch = value
    return ManifestGeneration(int(number), str(token), None if batches is None else int(batches), int(epoch))


def snapshot_key(run: str, generation: ManifestGeneration) -> str:
    return f"{run}snapshot-{generation.number}-{generation.token}.json"


def journal_prefix(run: str, generation: ManifestGeneration) -> str:
    return f"{run}journal-{generation.number}-{generation.token}-"


def journal_key(run: str, generation: ManifestGeneration, batch: int) -> str:
    return f"{journal_prefix(run, generation)}{batch}.log"


def batch_number(key: str, prefix: str) -> int | None:
    """The batch number of a journal key listed under ``prefix`` (None for anything else)."""
    number = key[len(prefix) : -len(".log")]
    if not key.startswith(prefix) or not key.endswith(".log") or not number.isdigit():
        return None
    return int(number)


def seal(epoch: int) -> bytes:
    """The body of a seal, left by an operation that recorded ``epoch``."""
    return SEAL_PREFIX + b'{"epoch":%d}}\n' % epoch


def is_seal(data: bytes) -> bool:
    return data.startswith(SEAL_PREFIX)
