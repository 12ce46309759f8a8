"""A checkpoint store on S3-compatible object storage, fenced with conditional writes.

The run's objects are named in :mod:`checkpoints.s3layout` (``docs/s3.md``): a manifest,
one snapshot per generation, and the generation's journal as numbered batch objects.

Nothing is overwritten blindly. A snapshot and a journal batch are new objects created
with ``If-None-Match: *``; their names carry a random token drawn when the generation
begins, so no two writers ever create the same name. **An append is one request**: the
writer creates ``journal-<g>-<token>-<n>.log``, its ``n``-th batch, and the append is
acknowledged when that create succeeds. The manifest (the fence epoch and the
generations that count) changes only by compare-and-swap (``If-Match: <ETag>``): when an
epoch is raised (``fence``, ``next_epoch``, ``open`` with a higher epoch), when a
generation begins (``open``, ``compact``) and on ``delete``. A compacting writer records
in the manifest how many batches the generation it closes holds; the batches of an open
generation are found by listing its journal, taken in order up to the first gap or seal.

**Sealing** (as SlateDB's WAL and BookKeeper's ledgers are fenced): every operation that
raises the epoch, begins a generation or deletes, once its manifest swap succeeded,
creates the next free batch name of every open generation an older writer may still
append to with a seal body (``If-None-Match: *``; a batch that raced in before the
seal takes that name, counts, and the seal goes after it). That writer's next create
then fails (412); it re-reads the manifest and raises
:class:`~checkpoints.errors.Fenced`, or says the checkpoint was deleted or another
writer began a generation. So every append that returned is read by the next load
after the fence, and no append can succeed after it. A seal is idempotent: an
operation repeated after a failed seal finds the seal, or places it. A compaction is a
manifest swap from the ETag the writer last wrote, so a fenced writer's fails too.

A lost race answers 412 (or 404 from AWS for ``If-Match`` on a missing key):
the operation re-reads the manifest and decides again. A 409 (AWS's answer to
two conditional writes of one key in flight at once) is retried. Transient
network errors are retried by botocore with backoff (a bounded number of
times); what is left becomes :class:`~checkpoints.errors.CheckpointUnavailable`
naming the endpoint and the bucket, never the credentials.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointTooLarge,
    CheckpointUnavailable,
    Fenced,
)
from checkpoints.format import Checkpoint, encode, verify
from checkpoints.generations import Generation, read_generations
from checkpoints.ids import validate_package_name, validate_run_id
from checkpoints.memory import DEFAULT_MAX_BYTES
from checkpoints.s3config import S3Options, parse_url, shown_endpoint
from checkpoints.s3layout import (
    MANIFEST,
    Manifest,
    ManifestGeneration,
    batch_number,
    is_seal,
    journal_key,
    journal_prefix,
    seal,
    snapshot_key,
)
from checkpoints.s3writer import S3CheckpointWriter

log = logging.getLogger(__name__)

_LOST = {"PreconditionFailed", "412", "NoSuchKey", "404"}
"""A conditional write lost its race (AWS answers 404 for ``If-Match`` on a missing key)."""
_CONFLICT = {"ConditionalRequestConflict", "409", "OperationAborted"}
"""Two conditional writes of one key were in flight at once: try again."""
_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
"""Answers that mean "busy, try again later" whatever their status."""
_RETRIES = 100
"""Rounds of one compare-and-swap before giving up (each lost round means another writer won)."""
_SEAL_WINDOW = 64
"""The most journal names a seal tries at once (sixteen requests in flight, see _parallel)."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> str:
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _lost(exc: ClientError) -> bool:
    return _error_code(exc) in _LOST or _status(exc) in _LOST


def _conflict(exc: ClientError) -> bool:
    return _error_code(exc) in _CONFLICT or _status(exc) in _CONFLICT


class S3CheckpointStore:
    """:class:`~checkpoints.store.CheckpointStore` on a bucket of an S3-compatible server."""

    def __init__(
        self, url: str, *, options: S3Options | None = None, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.options = options or S3Options()
        self.max_bytes = max_bytes
        session = boto3.session.Session(profile_name=self.options.profile)
        self.client = session.client(
            "s3",
            endpoint_url=self.options.endpoint_url,
            region_name=self.options.region,
            aws_access_key_id=self.options.access_key_id,
            aws_secret_access_key=self.options.secret_access_key,
            config=Config(
                connect_timeout=self.options.connect_timeout,
                read_timeout=self.options.read_timeout,
                retries=_retries(self.options.max_attempts),
                s3={"addressing_style": "path" if self.options.endpoint_url else "auto"},
                max_pool_connections=32,
            ),
        )
        self.client.meta.events.register("before-sign.s3.PutObject", _no_expect_continue)
        self.endpoint = shown_endpoint(self.client.meta.endpoint_url)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"S3CheckpointStore({self.url!r}, endpoint={self.endpoint!r})"

    def run_prefix(self, package: str, run_id: str) -> str:
        """The key prefix of the run's objects; both ids are validated before they touch a key."""
        return f"{self.prefix}{validate_package_name(package)}/{validate_run_id(run_id)}/"

    def check(self) -> None:
        """Raise :class:`CheckpointUnavailable` unless the bucket can be reached and listed."""
        self._call("reach the bucket", self.client.list_objects_v2, Bucket=self.bucket, MaxKeys=1)

    # -- the protocol --------------------------------------------------------------

    def load(self, package: str, run_id: str, *, definition_hash: str | None = None) -> Checkpoint | None:
        run = self.run_prefix(package, run_id)
        checkpoint = None
        for _ in range(_RETRIES):
            manifest = self._manifest(run)
            if not manifest.generations:
                return None
            missing: list[str] = []
            try:
                checkpoint = read_generations(
                    self._generations(run, manifest, missing),
                    package=package,
                    run_id=run_id,
                    where=f"s3://{self.bucket}/{run}",
                    logger=log,
                )
            except CheckpointCorrupt:
                if not missing or self._manifest(run).etag == manifest.etag:
                    raise
                continue
            # A compaction removes old generations after its manifest was written: an object
            # that went missing under a manifest that changed since is a race, not damage.
            if not missing or self._manifest(run).etag == manifest.etag:
                break
        else:
            raise self._contended(run)
        stale = checkpoint is not None and checkpoint.definition_hash != definition_hash
        if checkpoint is not None and definition_hash is not None and stale:
            raise CheckpointMismatch(package, checkpoint.definition_hash, definition_hash)
        return checkpoint

    def open(self, checkpoint: Checkpoint) -> S3CheckpointWriter:
        run = self.run_prefix(checkpoint.package, checkpoint.run_id)
        data = self.encoded(checkpoint)
        for _ in range(_RETRIES):
            manifest = self._manifest(run)
            if checkpoint.epoch < manifest.epoch:
                raise Fenced(checkpoint.run_id, checkpoint.epoch, manifest.epoch)
            new, written = self._new_generation(run, manifest, data, epoch=checkpoint.epoch)
            if written is not None:
                return S3CheckpointWriter(
                    self, run, checkpoint.run_id, checkpoint.epoch, new, written, len(data)
                )
        raise self._contended(run)

    def save(self, checkpoint: Checkpoint) -> int:
        writer = self.open(checkpoint)
        writer.close()
        return writer.snapshot_bytes

    def delete(self, package: str, run_id: str, *, epoch: int) -> None:
        """Swap in a manifest without generations (the epoch stays), seal the journals its
        writers may still append to, then remove the data objects (the seals stay)."""
        run = self.run_prefix(package, run_id)
        for _ in range(_RETRIES):
            manifest = self._manifest(run)
            if manifest.etag is None:
                return
            if epoch < manifest.epoch:
                raise Fenced(run_id, epoch, manifest.epoch)
            if not manifest.generations:
                self._seal(run, manifest.retired)  # a delete repeated after a failed seal
                return
            retired = (*manifest.retired, *(g for g in manifest.generations if g.open))
            if self._swap(run, manifest, manifest.next(generations=(), retired=retired)) is not None:
                self._seal(run, retired)
                self._remove_generations(run, manifest.generations)
                return
        raise self._contended(run)

    def purge(self, package: str, run_id: str) -> bool:
        """Remove every object of the run, its manifest (the fence) last (finished runs only)."""
        run = self.run_prefix(package, run_id)
        keys = self._list(run)
        if not keys:
            return False
        self._remove([k for k in keys if k != run + MANIFEST])
        self._remove([k for k in keys if k == run + MANIFEST])
        return True

    def fence(self, package: str, run_id: str, epoch: int) -> int:
        """Raise the epoch, then seal the journals of older epochs' writers (again, when a
        fence at this epoch was already recorded: it may have failed before sealing)."""
        run = self.run_prefix(package, run_id)
        for _ in range(_RETRIES):
            manifest = self._manifest(run)
            if epoch > manifest.epoch:
                raised = manifest.next(epoch=epoch)
                if self._swap(run, manifest, raised) is None:
                    continue
                manifest = raised
            self._seal_older(run, manifest)
            return manifest.epoch
        raise self._contended(run)

    def next_epoch(self, package: str, run_id: str) -> int:
        run = self.run_prefix(package, run_id)
        for _ in range(_RETRIES):
            manifest = self._manifest(run)
            raised = manifest.next(epoch=manifest.epoch + 1)
            if self._swap(run, manifest, raised) is not None:
                self._seal_older(run, raised)
                return raised.epoch
        raise self._contended(run)

    def epoch(self, package: str, run_id: str) -> int:
        return self._manifest(self.run_prefix(package, run_id)).epoch

    # -- for the writer ------------------------------------------------------------

    def encoded(self, checkpoint: Checkpoint) -> bytes:
        """The snapshot bytes of ``checkpoint``; ``CheckpointTooLarge`` over ``max_bytes``."""
        data = encode(checkpoint)
        if len(data) > self.max_bytes:
            raise CheckpointTooLarge(
                f"checkpoint of run {checkpoint.run_id!r} is {len(data)} bytes, "
                f"over the limit of {self.max_bytes}"
            )
        return data

    def _new_generation(
        self,
        run: str,
        manifest: Manifest,
        data: bytes,
        *,
        epoch: int,
        closing: ManifestGeneration | None = None,
    ) -> tuple[ManifestGeneration, Manifest | None]:
        """Write ``data`` as a new generation and swap it into the manifest.

        Return the generation and the manifest written, or ``None`` for the manifest when
        the swap lost its race (the snapshot written is removed again: nothing names it).
        The generations before the newest intact one older than the new one are dropped.
        A compaction passes the generation it ``closing`` (with its batch count); a new
        writer (``open``) seals every open generation instead, once its swap succeeded.
        """
        number = max((g.number for g in manifest.generations), default=0) + 1
        new = ManifestGeneration(number, secrets.token_hex(6), None, epoch)
        self._create(snapshot_key(run, new), data)
        current = tuple(
            closing if closing is not None and g.number == closing.number else g for g in manifest.generations
        )
        keep = self._kept(run, current)
        written = manifest.next(epoch=max(epoch, manifest.epoch), generations=(*keep, new))
        etag = self._swap(run, manifest, written)
        if etag is None:
            self._remove([snapshot_key(run, new)])
            return new, None
        if closing is None:
            self._seal(run, manifest.generations)
        self._remove_generations(run, [g for g in current if g not in keep])
        return new, replace(written, etag=etag)

    def _kept(self, run: str, generations: Sequence[ManifestGeneration]) -> tuple[ManifestGeneration, ...]:
        """The older generations to keep beside a new one: back to the newest intact snapshot."""
        ordered = sorted(generations, key=lambda g: g.number, reverse=True)
        for position, generation in enumerate(ordered):
            data = self._get(snapshot_key(run, generation))
            if data is not None and verify(data):
                return tuple(reversed(ordered[: position + 1]))
        return tuple(reversed(ordered[:1]))

    def _generations(self, run: str, manifest: Manifest, missing: list[str]) -> list[Generation]:
        where = f"s3://{self.bucket}/"
        generations = []
        for g in manifest.generations:
            snapshot, journal = snapshot_key(run, g), f"{run}journal-{g.number}-{g.token}-*.log"
            generations.append(
                Generation(
                    g.number,
                    self._reader(snapshot, missing),
                    self._journal_reader(run, g, missing),
                    where + snapshot,
                    where + journal,
                )
            )
        return generations

    def _reader(self, key: str, missing: list[str]) -> Callable[[], bytes]:
        def read() -> bytes:
            data = self._get(key)
            if data is None:
                missing.append(key)
                raise CheckpointCorrupt(f"s3://{self.bucket}/{key}: missing")
            return data

        return read

    def _journal_reader(
        self, run: str, generation: ManifestGeneration, missing: list[str]
    ) -> Callable[[], bytes]:
        def read() -> bytes:
            numbers = self._batches(run, generation)
            parts = self._parallel(self._get, [journal_key(run, generation, n) for n in numbers])
            taken: list[bytes] = []
            for position, (number, part) in enumerate(zip(numbers, parts, strict=True)):
                if part is not None and is_seal(part):
                    break  # nothing is created after a seal
                if part is None or number != position + 1:
                    # A gap (a batch missing, or one that vanished since the listing): the
                    # replay stops there, as at a damaged record in a journal file.
                    if part is None:
                        missing.append(journal_key(run, generation, number))
                    after = len(numbers) - position - (part is None)
                    self._gap(run, generation, f"batch {position + 1} is missing", after)
                    break
                if not part.endswith(b"\n") and position + 1 < len(numbers):
                    # Torn (not whole records) with batches after it: damage, not a torn tail.
                    self._gap(run, generation, f"batch {number} is torn", len(numbers) - position - 1)
                    break
                taken.append(part)
            return b"".join(taken)

        return read

    def _gap(self, run: str, generation: ManifestGeneration, why: str, after: int) -> None:
        if after > 0:
            log.warning(
                "checkpoint journal damaged in s3://%s/%s: %s; %d batch(es) after it are ignored",
                self.bucket,
                journal_prefix(run, generation) + "*",
                why,
                after,
            )

    @staticmethod
    def _parallel(call: Callable[[str], Any], keys: Sequence[str]) -> list[Any]:
        """``call`` on each key, several requests in flight at once."""
        if len(keys) < 2:
            return [call(k) for k in keys]
        with ThreadPoolExecutor(max_workers=min(16, len(keys))) as pool:
            return list(pool.map(call, keys))

    def _batches(self, run: str, generation: ManifestGeneration) -> list[int]:
        """The batch numbers of the generation's journal: counted if closed, else listed."""
        if generation.batches is not None:
            return list(range(1, generation.batches + 1))
        prefix = journal_prefix(run, generation)
        return sorted(n for key in self._list(prefix) if (n := batch_number(key, prefix)) is not None)

    # -- sealing -------------------------------------------------------------------

    def _seal_older(self, run: str, manifest: Manifest) -> None:
        """Seal every open generation begun by a writer of an epoch older than the manifest's."""
        self._seal(run, [g for g in (*manifest.generations, *manifest.retired) if g.epoch < manifest.epoch])

    def _seal(self, run: str, generations: Iterable[ManifestGeneration]) -> None:
        for generation in generations:
            if generation.open:
                self._seal_journal(run, generation)

    def _seal_journal(self, run: str, generation: ManifestGeneration) -> str:
        """Create a seal at the next free batch name of the generation's journal; return its key.

        Its writer creates batch n only after n - 1, so the next free name is one past the
        highest listed, and every name a seal takes must follow a taken one: a seal past a
        gap would let the writer fill the gap after the fence returned. A writer appending
        back to back is caught by trying a growing window of names at once, one conditional
        PUT each and nothing else while every name is taken (the sealer covers names many
        times faster than one writer's sequential PUTs). The writer takes a prefix of the
        window; the names taken before this seal's first are its batches, or seals of
        another operation sealing the same journal, found by reading back from the seal
        until a batch. The first seal stays; this operation's others are removed. A seal
        found at the end of the journal is this one, repeated.
        """
        numbers = self._batches(run, generation)
        if numbers:
            last = self._get(journal_key(run, generation, numbers[-1]))
            if last is not None and is_seal(last):
                return journal_key(run, generation, numbers[-1])
        start = (numbers[-1] if numbers else 0) + 1
        number, width, body = start, 1, seal(generation.epoch)
        for _ in range(_RETRIES):
            names = range(number, number + width)
            keys = [journal_key(run, generation, n) for n in names]
            won: list[bool] = self._parallel(lambda key: self._create_unless_taken(key, body), keys)
            mine = [n for n, created in zip(names, won, strict=True) if created]
            if mine:
                first = mine[0]
                while first > start and self._holds_seal(journal_key(run, generation, first - 1)):
                    first -= 1
                self._remove([journal_key(run, generation, n) for n in mine if n != first])
                return journal_key(run, generation, first)
            number, width = number + width, min(2 * width, _SEAL_WINDOW)
        where = f"s3://{self.bucket}/{journal_prefix(run, generation)}*"
        raise CheckpointError(f"{where}: cannot seal the journal (a new batch won every try)")

    def _holds_seal(self, key: str) -> bool:
        data = self._get(key)
        return data is not None and is_seal(data)

    def _create_unless_taken(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent; False when it exists, whatever it holds, without reading it.

        A retried request whose first try created the object also answers 412: a caller that
        must tell reads the key (:meth:`_try_create`); for a seal it is harmless, the object
        is a seal all the same, found by the backward read.
        """
        for _ in range(_RETRIES):
            try:
                self._call(
                    "write", self.client.put_object, Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*"
                )
                return True
            except _Conflict:
                _backoff()
            except _Lost:
                return False
        raise CheckpointError(f"s3://{self.bucket}/{key}: the server kept answering 409 Conflict")

    def _remove_generations(self, run: str, generations: Sequence[ManifestGeneration]) -> None:
        """Remove the generations' snapshots and batches; an open generation's seal (its
        highest batch name: nothing is created after it) stays, to refuse its writer."""
        keys: list[str] = []
        for generation in generations:
            numbers = self._batches(run, generation)
            kept = numbers[:-1] if generation.open else numbers
            keys += [snapshot_key(run, generation)] + [journal_key(run, generation, n) for n in kept]
        self._remove(keys)

    # -- requests ------------------------------------------------------------------

    def _manifest(self, run: str) -> Manifest:
        key = run + MANIFEST
        try:
            response = self._call("read the manifest", self.client.get_object, Bucket=self.bucket, Key=key)
        except _Missing:
            return Manifest()
        data = self._read_body(response, key)
        return Manifest.decode(data, response["ETag"], f"s3://{self.bucket}/{key}")

    def _swap(self, run: str, old: Manifest, new: Manifest) -> str | None:
        """Replace the manifest ``old`` by ``new`` (compare-and-swap); return the new ETag,
        or None when the race was lost."""
        key = run + MANIFEST
        data = new.encoded()
        condition = {"IfMatch": old.etag} if old.etag is not None else {"IfNoneMatch": "*"}
        for _ in range(_RETRIES):
            try:
                put = self._call(
                    "write the manifest",
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    **condition,
                )
                return str(put["ETag"])
            except _Conflict:
                _backoff()
            except _Lost:
                # A retried request whose first try succeeded also answers 412: it won if the
                # manifest now is the one it wrote (the nonce makes each manifest unique).
                current = self._get_tagged(key)
                if current is None or current[0] != data:
                    _backoff()
                    return None
                return current[1]
        raise self._contended(run)

    def _create(self, key: str, data: bytes) -> None:
        """Create ``key`` only if absent (``If-None-Match: *``); refuse other content there."""
        if not self._try_create(key, data):
            raise CheckpointError(f"s3://{self.bucket}/{key} exists already with other content")

    def _try_create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent; False when it holds other content (never overwritten)."""
        # A retried request whose first try succeeded also answers 412: the same bytes there
        # are this very write.
        return self._create_unless_taken(key, data) or self._get(key) == data

    def _get(self, key: str) -> bytes | None:
        tagged = self._get_tagged(key)
        return None if tagged is None else tagged[0]

    def _get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is no such object."""
        try:
            response = self._call("read", self.client.get_object, Bucket=self.bucket, Key=key)
        except _Missing:
            return None
        return self._read_body(response, key), str(response["ETag"])

    def _read_body(self, response: dict[str, Any], key: str) -> bytes:
        try:
            data: bytes = response["Body"].read()
        except (BotoCoreError, OSError) as exc:
            raise self._unavailable(f"read s3://{self.bucket}/{key}", exc) from exc
        return data

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, **token)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _remove(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            if not batch:
                continue
            result = self._call(
                "delete",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            errors = [e for e in result.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                shown = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:3])
                raise CheckpointError(f"s3://{self.bucket}: {len(errors)} object(s) not deleted ({shown})")

    def _call(self, what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One request; a lost race, a conflict and a missing key become the exceptions above.

        A server that cannot be reached or answers 5xx (restarting, overloaded) is tried again
        with backoff until ``retry_timeout`` has passed since the first try; then, or at once
        for any other error (credentials, no such bucket), :class:`CheckpointUnavailable`.
        """
        deadline = time.monotonic() + self.options.retry_timeout
        pause = 0.1
        while True:
            try:
                return self._request(what, method, **kwargs)
            except _Transient as transient:
                if time.monotonic() + pause > deadline:
                    raise transient.error from transient.__cause__
                log.warning("%s; retrying in %.1f s", transient.error, pause)
                time.sleep(pause)  # backoff between tries of an unreachable store, bounded above
                pause = min(pause * 2, 2.0)

    def _request(self, what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except ClientError as exc:
            if "IfMatch" in kwargs or "IfNoneMatch" in kwargs:
                if _conflict(exc):
                    raise _Conflict from exc
                if _lost(exc):
                    raise _Lost from exc
            bucket_missing = _error_code(exc) == "NoSuchBucket"
            if (
                "Key" in kwargs
                and not bucket_missing
                and (_error_code(exc) == "NoSuchKey" or _status(exc) == "404")
            ):
                raise _Missing from exc
            if _status(exc).startswith("5") or _error_code(exc) in _BUSY:
                raise _Transient(self._unavailable(what, exc)) from exc
            raise self._unavailable(what, exc) from exc
        except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError) as exc:
            raise _Transient(self._unavailable(what, exc)) from exc
        except BotoCoreError as exc:
            raise self._unavailable(what, exc) from exc

    def _unavailable(self, what: str, exc: Exception) -> CheckpointUnavailable:
        return CheckpointUnavailable(
            f"checkpoint store s3://{self.bucket}/{self.prefix} at {self.endpoint}: cannot {what}: {exc}"
        )

    def _contended(self, run: str) -> CheckpointError:
        return CheckpointError(
            f"s3://{self.bucket}/{run}{MANIFEST}: gave up after {_RETRIES} lost compare-and-swap rounds"
        )


class _Lost(Exception):
    """A conditional write found its condition false: another writer won."""


class _Conflict(Exception):
    """409: a concurrent conditional write of the same key; the request may be repeated."""


class _Transient(Exception):
    """The store could not be reached or was busy: the request may succeed if tried again."""

    def __init__(self, error: CheckpointUnavailable) -> None:
        super().__init__(str(error))
        self.error = error


class _Missing(Exception):
    """404 on a read: no such object."""


def _retries(max_attempts: int | None) -> Any:
    """botocore's standard retries; its attempts from ``AWS_MAX_ATTEMPTS`` (default 3) unless given."""
    return {"mode": "standard", **({"max_attempts": max_attempts} if max_attempts else {})}


def _no_expect_continue(request: Any, **_: Any) -> None:
    """Drop ``Expect: 100-continue``: checkpoint objects are small, and waiting for a server's
    ``100 Continue`` (which some S3 servers never send under load) costs up to a second."""
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _backoff() -> None:
    """A short random pause after a lost race, so that racing writers spread out."""
    time.sleep(random.uniform(0.001, 0.02))  # noqa: S311 - jitter, not a secret
